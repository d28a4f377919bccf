//! A receive posted on an idle pooled upstream connection (plain TCP): the check that nothing
//! arrives while it idles, and the first read of its next response, as one operation.
//!
//! Why: a pooled connection must not be reused once the upstream sent anything past its last
//! response, or closed (a broken upstream's bytes would otherwise answer the next client). A
//! `recv(MSG_PEEK)` at every check-out costs a syscall per reused connection, about 2.3% of a
//! small request's CPU on `small-c64`. Instead, a connection going idle gets the receive that
//! its next response needs anyway. At check-out it is looked at without a syscall: completed
//! means bytes or an EOF arrived while it idled (not clean); still in flight means nothing had
//! arrived when the worker last collected completions, and the same receive then reads the
//! response. The request path does no more operations than without any check.
//!
//! What it sees: everything that arrived up to the event-loop turn before the check-out. This is
//! what nginx's keep-alive check sees too (a read handler on the idle connection, run from the
//! event loop). Bytes arriving later in that same turn, just before the request leaves, cannot
//! be told from the response by any check (a peek has the same gap between it and the send).
//! Bytes still in the socket when the connection goes idle are caught before that: a body read
//! to its exact length (spliced) is peeked at check-in, and other reads take what is there.
//!
//! Why not monoio's API as it is: its reads return a future that borrows the stream for its
//! whole life, so one cannot be kept next to the stream while the connection idles and the
//! request is written. The future does not use that borrow (monoio 0.2.4's `TcpStream::read`
//! creates the operation, which owns a counted handle on the descriptor and the buffer, before
//! returning it); `detach` drops the lifetime. monoio is pinned to that version for this.

use super::deadline::{self, Deadline};
use super::io::{landed, spare_tail, IdleState, IoFail};
use bytes::BytesMut;
use monoio::buf::SliceMut;
use monoio::io::AsyncReadRent;
use monoio::net::TcpStream;
use monoio::BufResult;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

type Landing = SliceMut<BytesMut>;
type Receive = Pin<Box<dyn Future<Output = BufResult<usize, Landing>>>>;

/// A receive in flight on an idle connection, into that connection's read buffer.
pub struct PostedRead {
    receive: Receive,
}

impl PostedRead {
    /// Posts a receive of up to `reserve` bytes (at least) into `buf`'s spare room on `stream`.
    /// It is submitted with the worker's next batch of operations.
    pub fn post(stream: &mut TcpStream, mut buf: BytesMut, reserve: usize) -> PostedRead {
        let tail = spare_tail(&mut buf, reserve);
        PostedRead {
            receive: detach(stream.read(tail)),
        }
    }

    /// At check-out, without a syscall: the receive back if nothing has arrived (the connection
    /// is clean), else what came. A completed receive is finished with: the connection is not
    /// to be used.
    pub fn check(mut self) -> Result<PostedRead, IdleState> {
        #[cfg(feature = "bench-ab")]
        super::bench_ab::idle_check();
        let mut cx = Context::from_waker(Waker::noop());
        match self.receive.as_mut().poll(&mut cx) {
            Poll::Pending => Ok(self),
            Poll::Ready((Ok(n), _)) if n > 0 => Err(IdleState::StrayBytes),
            Poll::Ready(_) => Err(IdleState::Closed),
        }
    }

    /// Waits (until `deadline`) for what the receive gets: the first bytes of the response, put
    /// back in `buf` (which it had taken). `Ok(0)` is EOF.
    pub async fn finish(self, buf: &mut BytesMut, deadline: Deadline) -> Result<usize, IoFail> {
        landed(deadline::timeout_at(deadline, self.receive).await, buf)
    }
}

/// The receive future without the stream borrow in its type.
fn detach<'a>(receive: impl Future<Output = BufResult<usize, Landing>> + 'a) -> Receive {
    let receive: Pin<Box<dyn Future<Output = BufResult<usize, Landing>> + 'a>> = Box::pin(receive);
    // SAFETY: only the lifetime bound changes (same fat pointer). The future never touches the
    // borrowed stream: in monoio 0.2.4 (pinned in Cargo.toml), `TcpStream::read` submits
    // `Op::recv(self.fd.clone(), buf)` before returning `op.read()`, a future that owns the
    // operation, its `Rc` handle on the descriptor (which keeps it open) and the buffer. So the
    // future stays valid after the borrow ends, whatever becomes of the stream.
    unsafe {
        std::mem::transmute::<Pin<Box<dyn Future<Output = BufResult<usize, Landing>> + 'a>>, Receive>(
            receive,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::PostedRead;
    use crate::net::deadline::Deadline;
    use crate::net::io::{idle_state, read_more, IdleState};
    use bytes::BytesMut;
    use monoio::io::{AsyncWriteRent, AsyncWriteRentExt};
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    /// A connected pair, ours (monoio) idle with a receive posted, and the peer (std, blocking).
    async fn idle_pair() -> (monoio::net::TcpStream, std::net::TcpStream, PostedRead) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut ours = monoio::net::TcpStream::connect(addr).await.unwrap();
        let (peer, _) = listener.accept().unwrap();
        let posted = PostedRead::post(&mut ours, BytesMut::with_capacity(64), 1024);
        (ours, peer, posted)
    }

    /// Lets the worker submit and collect a few turns' worth of operations.
    async fn turns() {
        monoio::time::sleep(Duration::from_millis(20)).await;
    }

    /// The test on io_uring (set up as the workers' rings are: completion work runs only
    /// when the thread asks for events), then on the epoll fallback.
    fn on_both_drivers<F: std::future::Future<Output = ()>>(test: impl Fn() -> F) {
        let mut ring = io_uring::IoUring::builder();
        ring.setup_coop_taskrun()
            .setup_single_issuer()
            .setup_defer_taskrun();
        monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .uring_builder(ring)
            .enable_timer()
            .build()
            .unwrap()
            .block_on(test());
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap()
            .block_on(test());
    }

    async fn clean_then_the_response() {
        let (mut ours, mut peer, posted) = idle_pair().await;
        turns().await;
        let posted = posted.check().expect("nothing arrived: clean");
        // The "request" goes out on the stream while the receive waits.
        let (sent, _) = ours.write_all(b"GET / HTTP/1.1\r\n\r\n".to_vec()).await;
        sent.unwrap();
        peer.write_all(b"HTTP/1.1 200 OK\r\n").unwrap();
        let mut buf = BytesMut::new();
        let n = posted
            .finish(&mut buf, Deadline::after(Duration::from_secs(5)))
            .await;
        assert_eq!(n.unwrap(), 17);
        assert_eq!(&buf[..], b"HTTP/1.1 200 OK\r\n");
        assert!(buf.capacity() >= 1024, "the buffer comes back whole");
        ours.shutdown().await.unwrap();
    }

    #[test]
    fn a_clean_connection_reads_its_response_with_the_posted_receive() {
        on_both_drivers(clean_then_the_response);
    }

    async fn stray_bytes_and_close() {
        let (_ours, mut peer, posted) = idle_pair().await;
        peer.write_all(b"evil").unwrap();
        turns().await;
        assert_eq!(posted.check().err(), Some(IdleState::StrayBytes));

        let (_ours, peer, posted) = idle_pair().await;
        drop(peer);
        turns().await;
        assert_eq!(posted.check().err(), Some(IdleState::Closed));
    }

    #[test]
    fn bytes_or_a_close_while_idle_are_seen_at_check_out() {
        on_both_drivers(stray_bytes_and_close);
    }

    async fn dropped_takes_nothing() {
        let (mut ours, mut peer, posted) = idle_pair().await;
        turns().await;
        let posted = posted.check().expect("clean");
        drop(posted);
        assert_eq!(idle_state(ours.as_raw_fd()), IdleState::Clean);
        // What the request path does next: more operations (the request's write), submitted
        // behind the cancel. The answer can only come after them.
        turns().await;
        peer.write_all(b"answer").unwrap();
        turns().await;
        // The cancelled receive took none of it: a plain read gets it all.
        let mut buf = BytesMut::new();
        let n = read_more(&mut ours, &mut buf, 64, Duration::from_secs(5)).await;
        assert_eq!(n.unwrap(), 6);
        assert_eq!(&buf[..], b"answer");
        ours.shutdown().await.unwrap();
    }

    #[test]
    fn a_dropped_receive_takes_nothing_that_comes_later() {
        on_both_drivers(dropped_takes_nothing);
    }
}
