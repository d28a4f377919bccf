//! Password hashes are slow on purpose (bcrypt at cost 10 or argon2 with default settings take
//! tens of milliseconds); a worker that computed one would hold every other connection of its
//! core that long. They are computed here instead, on one thread of low priority with a
//! bounded queue, and the worker's request waits for the answer (polling it on the worker's
//! coarse clock: no cross-thread wakeup needed). A full queue is refused, not queued without end.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};

/// Verifications waiting at most; past it new ones are refused (503).
const QUEUE: usize = 256;

const PENDING: u8 = 0;
const MATCH: u8 = 1;
const MISMATCH: u8 = 2;

/// The answer to one verification, filled in by the thread.
pub struct Answer(AtomicU8);

impl Answer {
    /// `None` until the thread has answered.
    pub fn get(&self) -> Option<bool> {
        match self.0.load(Ordering::Acquire) {
            PENDING => None,
            state => Some(state == MATCH),
        }
    }
}

struct Job {
    hash: Arc<str>,
    password: Vec<u8>,
    answer: Arc<Answer>,
}

static QUEUE_TX: OnceLock<Option<SyncSender<Job>>> = OnceLock::new();

/// Queues `password` to be checked against `hash` (bcrypt or argon2); `None` when the queue is
/// full or the thread could not start.
pub fn submit(hash: Arc<str>, password: Vec<u8>) -> Option<Arc<Answer>> {
    let tx = QUEUE_TX.get_or_init(start).as_ref()?;
    let answer = Arc::new(Answer(AtomicU8::new(PENDING)));
    let job = Job {
        hash,
        password,
        answer: answer.clone(),
    };
    match tx.try_send(job) {
        Ok(()) => Some(answer),
        Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => None,
    }
}

fn start() -> Option<SyncSender<Job>> {
    let (tx, rx) = sync_channel::<Job>(QUEUE);
    let spawned = std::thread::Builder::new()
        .name("auth-verify".into())
        .spawn(move || {
            // Below the workers: a flood of wrong passwords costs this thread, not them.
            // SAFETY: plain syscall on the calling thread (`who` 0).
            unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
            for job in rx {
                let ok = verify(&job.hash, &job.password);
                job.answer
                    .0
                    .store(if ok { MATCH } else { MISMATCH }, Ordering::Release);
            }
        });
    match spawned {
        Ok(_) => Some(tx),
        Err(e) => {
            tracing::error!(error = %e, "cannot start the password verification thread");
            None
        }
    }
}

/// Whether `password` matches `hash`, a bcrypt or argon2 (PHC) hash.
pub fn verify(hash: &str, password: &[u8]) -> bool {
    if hash.starts_with("$argon2") {
        use argon2::PasswordVerifier;
        return argon2::PasswordHash::new(hash).is_ok_and(|parsed| {
            argon2::Argon2::default()
                .verify_password(password, &parsed)
                .is_ok()
        });
    }
    bcrypt::verify(password, hash).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bcrypt_hashes_verify_on_the_thread() {
        let hash: Arc<str> = bcrypt::hash("s3cret", 4).unwrap().into();
        assert!(verify(&hash, b"s3cret"));
        assert!(!verify(&hash, b"wrong"));
        assert!(!verify("$argon2id$broken", b"x"));
        let answer = submit(hash.clone(), b"s3cret".to_vec()).unwrap();
        let started = std::time::Instant::now();
        while answer.get().is_none() && started.elapsed().as_secs() < 10 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(answer.get(), Some(true));
    }
}
