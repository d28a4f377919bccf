//! Why a request failed, and what may be done about it. The retry verdict travels with the
//! failure, decided where the failure is known (as Pingora's errors carry theirs): the exchange
//! loop only reads it. `Failure` says what the client is told.

use super::transfer::{SourceFault, TransferError};
use crate::http::BodyError;
use crate::net::io::IoFail;
use crate::upstream::ConnectError;

/// Whether a failed attempt may be made again: the verdict travels with the failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Never: the upstream may have acted on the request, or its body is gone.
    Never,
    /// On a fresh connection to the same backend: a pooled connection turned out closed.
    FreshConnection,
    /// On another backend.
    AnotherBackend,
}

impl Retry {
    /// The request never reached the upstream (connect failed, or its write failed before any
    /// byte left): safe to repeat whatever the method, as long as the body is at hand.
    pub fn unsent(body_replayable: bool, reused: bool) -> Retry {
        match (body_replayable, reused) {
            (false, _) => Retry::Never,
            (true, true) => Retry::FreshConnection,
            (true, false) => Retry::AnotherBackend,
        }
    }

    /// The request went, and the connection closed before any byte of an answer: the upstream
    /// may have acted on it. Repeated only when that is harmless (an idempotent method) or the
    /// operator said so (`retry_non_idempotent`).
    pub fn unanswered(
        body_replayable: bool,
        reused: bool,
        idempotent: bool,
        opt_in: bool,
    ) -> Retry {
        if idempotent || opt_in {
            Retry::unsent(body_replayable, reused)
        } else {
            Retry::Never
        }
    }
}

/// Why a request could not be completed.
#[derive(Debug)]
pub enum Failure {
    /// The request cannot be routed as it is (a path that climbs above `/`, a broken escape).
    BadRequest(&'static str),
    NoBackendUp,
    Connect(ConnectError),
    UpstreamTimeout,
    Upstream(&'static str),
    BadRequestBody(BodyError),
    BodyTooLarge,
    ClientBodyTimeout,
    ClientGone,
    /// This worker had no descriptor left for what the request needed (503, not the backend's
    /// fault).
    OutOfDescriptors,
    /// The response had started when the upstream failed: the client connection is reset.
    Aborted(&'static str),
    /// The Host is not a name of the certificate the connection was set up with (strict SNI).
    Misdirected,
    /// Plain HTTP to be redirected to this `https://` location (`redirect_http`).
    ToHttps(String),
}

impl Failure {
    /// Status sent to the client, `None` when no response can be sent.
    pub fn status(&self) -> Option<u16> {
        match self {
            Failure::BadRequest(_) => Some(400),
            Failure::NoBackendUp | Failure::OutOfDescriptors => Some(503),
            Failure::Connect(e) => Some(e.status()),
            Failure::UpstreamTimeout => Some(504),
            Failure::Upstream(_) => Some(502),
            Failure::BadRequestBody(_) => Some(400),
            Failure::BodyTooLarge => Some(413),
            Failure::ClientBodyTimeout => Some(408),
            Failure::ClientGone | Failure::Aborted(_) => None,
            Failure::Misdirected => Some(421),
            Failure::ToHttps(_) => Some(308),
        }
    }

    /// Answered by the proxy as a matter of policy, not because something failed.
    pub fn is_policy(&self) -> bool {
        matches!(self, Failure::Misdirected | Failure::ToHttps(_))
    }
}

impl Failure {
    /// A short fixed text for the access log.
    pub fn summary(&self) -> &'static str {
        match self {
            Failure::BadRequest(why) => why,
            Failure::NoBackendUp => "no backend is up",
            Failure::Connect(ConnectError::Timeout) => "connect to upstream timed out",
            Failure::Connect(ConnectError::Failed(_)) => "connect to upstream failed",
            Failure::Connect(ConnectError::Handshake(_)) => "TLS handshake with upstream failed",
            Failure::Connect(ConnectError::NoDescriptor(_)) => "out of file descriptors",
            Failure::UpstreamTimeout => "upstream response head timed out",
            Failure::Upstream(why) | Failure::Aborted(why) => why,
            Failure::BadRequestBody(e) => e.reason(),
            Failure::BodyTooLarge => "request body larger than max_body_bytes",
            Failure::ClientBodyTimeout => "client stalled sending the body",
            Failure::ClientGone => "client closed the connection",
            Failure::OutOfDescriptors => "out of file descriptors",
            Failure::Misdirected => "host not covered by the certificate chosen by SNI",
            Failure::ToHttps(_) => "redirected to https",
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::BadRequest(why) => f.write_str(why),
            Failure::NoBackendUp => f.write_str("no backend is up"),
            Failure::Connect(e) => write!(f, "{e}"),
            Failure::UpstreamTimeout => f.write_str("upstream response head timed out"),
            Failure::Upstream(why) | Failure::Aborted(why) => f.write_str(why),
            Failure::BadRequestBody(e) => write!(f, "bad request body: {}", e.reason()),
            Failure::BodyTooLarge => f.write_str("request body larger than max_body_bytes"),
            Failure::ClientBodyTimeout => f.write_str("client stalled sending the body"),
            Failure::ClientGone => f.write_str("client closed the connection"),
            Failure::OutOfDescriptors => f.write_str("out of file descriptors"),
            Failure::Misdirected => {
                f.write_str("host not covered by the certificate chosen by SNI")
            }
            Failure::ToHttps(to) => write!(f, "redirected to {to}"),
        }
    }
}

/// One attempt that failed, with its verdict.
pub struct AttemptError {
    pub failure: Failure,
    pub retry: Retry,
    /// Counts against the backend's passive health.
    pub blame: bool,
}

impl AttemptError {
    /// Not to be repeated; the backend is blamed when the failure is its own.
    pub fn never(failure: Failure) -> AttemptError {
        let blame = matches!(failure, Failure::UpstreamTimeout | Failure::Upstream(_));
        AttemptError {
            failure,
            retry: Retry::Never,
            blame,
        }
    }

    /// A failure of this proxy (out of descriptors), not of the backend: not repeated, and not
    /// logged against the backend.
    pub fn never_local(failure: Failure) -> AttemptError {
        AttemptError {
            failure,
            retry: Retry::Never,
            blame: false,
        }
    }

    /// The connection closed under the request. A pooled one closed by the upstream while
    /// idle says nothing about its health (keep-alive timeouts differ); a fresh one does.
    pub fn closed(why: &'static str, retry: Retry, reused: bool) -> AttemptError {
        AttemptError {
            failure: Failure::Upstream(why),
            retry,
            blame: !reused,
        }
    }
}

/// What a failed request body transfer means for the client.
pub fn request_body_failure(e: TransferError) -> Failure {
    match e {
        TransferError::Source { fault, .. } => match fault {
            SourceFault::Io(IoFail::Timeout) => Failure::ClientBodyTimeout,
            SourceFault::Io(IoFail::Io(_)) => Failure::ClientGone,
            SourceFault::Framing(BodyError::Truncated) => Failure::ClientGone,
            SourceFault::Framing(e) => Failure::BadRequestBody(e),
        },
        TransferError::TooLarge => Failure::BodyTooLarge,
        TransferError::Destination(_) => {
            Failure::Upstream("upstream failed while receiving the request body")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_blame_the_backend_only_for_its_own_failures() {
        assert!(AttemptError::never(Failure::UpstreamTimeout).blame);
        assert!(AttemptError::never(Failure::Upstream("broken")).blame);
        assert!(!AttemptError::never(Failure::ClientGone).blame);
        assert!(!AttemptError::never(Failure::BodyTooLarge).blame);
        let closed_pooled = AttemptError::closed("closed", Retry::FreshConnection, true);
        assert!(
            !closed_pooled.blame,
            "a pooled connection closed while idle"
        );
        assert!(AttemptError::closed("closed", Retry::Never, false).blame);
        let local = AttemptError::never_local(Failure::NoBackendUp);
        assert!(!local.blame && local.retry == Retry::Never);
    }

    #[test]
    fn failures_map_to_statuses() {
        assert_eq!(Failure::NoBackendUp.status(), Some(503));
        assert_eq!(Failure::Connect(ConnectError::Timeout).status(), Some(504));
        assert_eq!(Failure::UpstreamTimeout.status(), Some(504));
        assert_eq!(Failure::Upstream("x").status(), Some(502));
        assert_eq!(Failure::BodyTooLarge.status(), Some(413));
        assert_eq!(Failure::ClientBodyTimeout.status(), Some(408));
        assert_eq!(Failure::ClientGone.status(), None);
        assert_eq!(Failure::Aborted("x").status(), None);
        let too_many = std::io::Error::from_raw_os_error(libc::EMFILE);
        assert_eq!(
            Failure::Connect(ConnectError::NoDescriptor(too_many)).status(),
            Some(503)
        );
    }

    #[test]
    fn unsent_requests_go_anywhere_if_their_body_is_at_hand() {
        assert_eq!(Retry::unsent(true, true), Retry::FreshConnection);
        assert_eq!(Retry::unsent(true, false), Retry::AnotherBackend);
        assert_eq!(Retry::unsent(false, true), Retry::Never);
        assert_eq!(Retry::unsent(false, false), Retry::Never);
    }

    #[test]
    fn unanswered_requests_are_repeated_only_when_idempotent_or_opted_in() {
        // (replayable, reused, idempotent, opt_in) -> verdict
        let cases = [
            ((true, true, true, false), Retry::FreshConnection),
            ((true, false, true, false), Retry::AnotherBackend),
            ((true, true, false, false), Retry::Never),
            ((true, false, false, false), Retry::Never),
            ((true, false, false, true), Retry::AnotherBackend),
            ((true, true, false, true), Retry::FreshConnection),
            ((false, false, true, false), Retry::Never),
            ((false, true, true, true), Retry::Never),
        ];
        for ((replayable, reused, idempotent, opt_in), want) in cases {
            assert_eq!(
                Retry::unanswered(replayable, reused, idempotent, opt_in),
                want,
                "replayable {replayable}, reused {reused}, idempotent {idempotent}, opt-in {opt_in}"
            );
        }
    }
}
