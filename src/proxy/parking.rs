//! Idle keep-alive connections without a task. A connection quiet for a while ends its task
//! (freeing the task, its buffers and its posted read) and leaves only a small record here: the
//! socket, the peer and its connection slot, about 100 bytes. One epoll set per worker watches
//! all parked sockets; one task waits on that set (through the worker's own driver, io_uring or
//! epoll) and hands a socket that becomes readable back to a fresh connection task. This is
//! what keeps 10,000 idle clients as cheap as in nginx, which frees everything but its
//! connection struct between requests; a task and a posted read per idle connection cost ~4 KiB.

use crate::net::io::dup_fd;
use monoio::net::TcpStream;
use slab::Slab;
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// Parked sockets taken from the epoll set per wake-up.
const EVENTS_PER_WAIT: usize = 64;
/// How often expired parked connections are looked for when nothing else wakes the lot.
pub const EXPIRY_CHECK: Duration = Duration::from_millis(100);
/// When returning freed memory to the OS is worth a heap walk (about 2 ms at 25 MiB of heap):
/// once the worker has no busy connection, after a few new parkings, at most every second;
/// while connections are busy (the walk delays them), after many, at most every 10 seconds.
const TRIM_QUIET: (usize, Duration) = (64, Duration::from_secs(1));
const TRIM_BUSY: (usize, Duration) = (1024, Duration::from_secs(10));

/// `T` travels with the connection (the worker's connection-count slot).
struct Parked<T> {
    fd: OwnedFd,
    peer: SocketAddr,
    slot: T,
    /// Tells this parking from an earlier one that used the same entry (stale events, expiries).
    ticket: u32,
}

/// A socket handed back for serving: readable (a request, or EOF) when it comes from `wake`.
pub struct Unparked<T> {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub slot: T,
}

pub struct ParkingLot<T> {
    epoll: OwnedFd,
    entries: Slab<Parked<T>>,
    /// Park order is expiry order (one idle timeout per config generation).
    expiry: VecDeque<(Instant, u32, u32)>,
    next_ticket: u32,
}

impl<T> ParkingLot<T> {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the result is checked before it is owned.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(ParkingLot {
            // SAFETY: a fresh descriptor nothing else owns.
            epoll: unsafe { OwnedFd::from_raw_fd(fd) },
            entries: Slab::new(),
            expiry: VecDeque::new(),
            next_ticket: 0,
        })
    }

    /// A handle the lot's task waits on for "some parked socket is readable". It is a duplicate
    /// of the epoll descriptor wrapped as a monoio stream only to reach the driver's readiness
    /// wait (a poll op under io_uring, a registration under epoll); nothing else is called on it.
    pub fn waker(&self) -> io::Result<TcpStream> {
        let dup = self.epoll.try_clone()?;
        TcpStream::from_std(std::net::TcpStream::from(dup))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Parks `stream` until it turns readable or `idle_left` passes. The stream's own
    /// descriptor is closed by monoio as usual; the lot keeps a duplicate, so an I/O operation
    /// still being cancelled on the original can never touch the parked socket.
    pub fn park(
        &mut self,
        stream: TcpStream,
        peer: SocketAddr,
        slot: T,
        idle_left: Duration,
    ) -> io::Result<()> {
        let fd = dup_fd(&stream)?;
        drop(stream);
        let ticket = self.next_ticket;
        self.next_ticket = self.next_ticket.wrapping_add(1);
        let entry = self.entries.vacant_entry();
        let key = entry.key() as u32;
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
            u64: u64::from(key) | (u64::from(ticket) << 32),
        };
        // SAFETY: both descriptors are open; `event` outlives the call.
        let added = unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                fd.as_raw_fd(),
                &mut event,
            )
        };
        if added < 0 {
            return Err(io::Error::last_os_error());
        }
        entry.insert(Parked {
            fd,
            peer,
            slot,
            ticket,
        });
        self.expiry
            .push_back((Instant::now() + idle_left, key, ticket));
        Ok(())
    }

    /// Takes the parked sockets that became readable (without waiting).
    pub fn wake(&mut self) -> Vec<Unparked<T>> {
        let mut woken = Vec::new();
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; EVENTS_PER_WAIT];
        loop {
            // SAFETY: `events` has room for EVENTS_PER_WAIT entries; timeout 0 never blocks.
            let n = unsafe {
                libc::epoll_wait(
                    self.epoll.as_raw_fd(),
                    events.as_mut_ptr(),
                    EVENTS_PER_WAIT as i32,
                    0,
                )
            };
            if n <= 0 {
                return woken;
            }
            for event in &events[..n as usize] {
                let (key, ticket) = (event.u64 as u32, (event.u64 >> 32) as u32);
                if let Some(parked) = self.take(key, ticket) {
                    match TcpStream::from_std(std::net::TcpStream::from(parked.fd)) {
                        Ok(stream) => woken.push(Unparked {
                            stream,
                            peer: parked.peer,
                            slot: parked.slot,
                        }),
                        Err(e) => tracing::warn!(error = %e, "cannot resume a parked connection"),
                    }
                }
            }
            if (n as usize) < EVENTS_PER_WAIT {
                return woken;
            }
        }
    }

    /// Closes parked connections whose idle timeout has passed.
    pub fn expire(&mut self, now: Instant) {
        while let Some(&(deadline, key, ticket)) = self.expiry.front() {
            if deadline > now {
                break;
            }
            self.expiry.pop_front();
            drop(self.take(key, ticket));
        }
        // Connections that resumed leave their expiry behind until it comes due; when they
        // outnumber the parked ones (busy clients pausing often), drop them now.
        if self.expiry.len() > 2 * self.entries.len() + 1024 {
            let entries = &self.entries;
            self.expiry.retain(|&(_, key, ticket)| {
                entries
                    .get(key as usize)
                    .is_some_and(|p| p.ticket == ticket)
            });
        }
    }

    /// Shutdown: closes every parked connection.
    pub fn close_all(&mut self) {
        for parked in self.entries.drain() {
            deregister(&self.epoll, parked.fd.as_raw_fd());
        }
        self.expiry.clear();
    }

    /// Removes an entry if it still holds the parking `ticket` names.
    fn take(&mut self, key: u32, ticket: u32) -> Option<Parked<T>> {
        if self.entries.get(key as usize)?.ticket != ticket {
            return None;
        }
        let parked = self.entries.remove(key as usize);
        deregister(&self.epoll, parked.fd.as_raw_fd());
        Some(parked)
    }
}

fn deregister(epoll: &OwnedFd, fd: RawFd) {
    // SAFETY: both descriptors are open; DEL ignores the event argument.
    unsafe {
        libc::epoll_ctl(
            epoll.as_raw_fd(),
            libc::EPOLL_CTL_DEL,
            fd,
            std::ptr::null_mut(),
        )
    };
}

/// Gives memory back after many connections have parked. Their tasks and buffers were freed,
/// but glibc keeps freed memory below the heap top in its free lists (held there by scattered
/// long-lived allocations), so RSS would stay at the busy peak; `malloc_trim` returns the whole
/// free pages (HAProxy trims for the same reason). The walk stalls the worker, hence
/// `TRIM_QUIET` and `TRIM_BUSY`.
#[derive(Default)]
pub struct TrimPolicy {
    parked_at_last_trim: usize,
    last_trim: Option<Instant>,
}

impl TrimPolicy {
    pub fn after_parking(&mut self, parked: usize, busy: usize, now: Instant) {
        if !self.due(parked, busy, now) {
            return;
        }
        #[cfg(target_env = "gnu")]
        {
            // SAFETY: glibc's malloc_trim only releases free pages; it is thread-safe.
            unsafe { libc::malloc_trim(0) };
            tracing::debug!(
                parked,
                took_us = now.elapsed().as_micros() as u64,
                "returned freed heap pages"
            );
        }
    }

    /// Whether to trim now, given the parked and busy connection counts; records it if so.
    fn due(&mut self, parked: usize, busy: usize, now: Instant) -> bool {
        self.parked_at_last_trim = self.parked_at_last_trim.min(parked);
        let (new_parkings, interval) = if busy == 0 { TRIM_QUIET } else { TRIM_BUSY };
        let recent = self
            .last_trim
            .is_some_and(|t| now.duration_since(t) < interval);
        if recent || parked - self.parked_at_last_trim < new_parkings {
            return false;
        }
        self.parked_at_last_trim = parked;
        self.last_trim = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A connected pair: the proxy side as a monoio stream, the client side as a std stream.
    fn pair() -> (TcpStream, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let client =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        (TcpStream::from_std(server).expect("monoio stream"), client)
    }

    /// Lets the runtime run the close operations that dropped streams queued.
    async fn settle() {
        monoio::time::sleep(Duration::from_millis(20)).await;
    }

    fn peer() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 1))
    }

    #[monoio::test(enable_timer = true)]
    async fn readable_connections_come_back_with_their_slot_and_others_stay() {
        let mut lot = ParkingLot::new().expect("lot");
        let (a, mut client_a) = pair();
        let (b, _client_b) = pair();
        lot.park(a, peer(), "a", Duration::from_secs(60))
            .expect("park a");
        lot.park(b, peer(), "b", Duration::from_secs(60))
            .expect("park b");
        assert!(lot.wake().is_empty(), "nothing was readable");
        client_a.write_all(b"GET").expect("write");
        let woken = lot.wake();
        assert_eq!(woken.iter().map(|u| u.slot).collect::<Vec<_>>(), ["a"]);
        assert_eq!(lot.len(), 1);
        // The resumed socket is the same connection: the request bytes are there.
        let mut buf = [0u8; 3];
        let fd = woken[0].stream.as_raw_fd();
        // SAFETY: reading into a stack buffer from a descriptor the stream keeps open.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), 3) };
        assert_eq!((n, &buf), (3, b"GET"));
    }

    #[monoio::test(enable_timer = true)]
    async fn expiry_closes_only_the_due_and_close_all_the_rest() {
        let mut lot = ParkingLot::new().expect("lot");
        let (a, mut client_a) = pair();
        let (b, mut client_b) = pair();
        lot.park(a, peer(), 1, Duration::ZERO).expect("park a");
        lot.park(b, peer(), 2, Duration::from_secs(60))
            .expect("park b");
        lot.expire(Instant::now());
        assert_eq!(lot.len(), 1);
        settle().await;
        let mut buf = [0u8; 1];
        assert_eq!(
            client_a.read(&mut buf).expect("EOF"),
            0,
            "expired one closed"
        );
        lot.close_all();
        assert_eq!(lot.len(), 0);
        settle().await;
        assert_eq!(
            client_b.read(&mut buf).expect("EOF"),
            0,
            "closed on shutdown"
        );
    }

    #[monoio::test(enable_timer = true)]
    async fn stale_expiries_of_resumed_connections_are_dropped() {
        // One connection parked and woken (its request left unread) over and over.
        let mut lot = ParkingLot::new().expect("lot");
        let (mut stream, mut client) = pair();
        client.write_all(b"x").expect("write");
        for round in 0..1100 {
            lot.park(stream, peer(), round, Duration::from_secs(60))
                .expect("park");
            let mut woken = lot.wake();
            assert_eq!(woken.len(), 1, "round {round}");
            stream = woken.pop().expect("woken").stream;
        }
        lot.expire(Instant::now());
        assert!(
            lot.expiry.is_empty(),
            "{} stale expiries kept",
            lot.expiry.len()
        );
    }

    #[test]
    fn trims_once_many_have_parked_and_rate_limits() {
        let mut policy = TrimPolicy::default();
        let t0 = Instant::now();
        let secs = |s: u64| t0 + Duration::from_secs(s);
        assert!(!policy.due(63, 0, t0), "too few new parkings");
        assert!(policy.due(64, 0, t0));
        assert!(!policy.due(500, 0, t0), "within a second of the last trim");
        assert!(policy.due(500, 0, secs(1)));
        // Busy: only after TRIM_BUSY's count and interval.
        assert!(!policy.due(1500, 3, secs(5)), "busy, 1000 new parkings");
        assert!(!policy.due(1600, 3, secs(5)), "busy, within 10 s");
        assert!(policy.due(1600, 3, secs(11)));
        // Connections resumed (fewer parked): new parkings are counted from the low point.
        assert!(!policy.due(100, 0, secs(12)));
        assert!(policy.due(164, 0, secs(13)));
    }
}
