//! HTTP basic authentication (RFC 7617) against a route's users: the `Authorization: Basic`
//! credentials decoded, the user looked up, the password verified against its hash on the
//! verifier thread. What was verified is remembered per worker (by a keyed 128-bit digest of
//! the credentials, never the password itself), so a client's later requests cost a hash
//! lookup, not a bcrypt run; the memory is bounded and forgotten with the users file's load.

use super::verifier;
use crate::config::BasicAuth;
use crate::net::deadline;
use base64::Engine;
use siphasher::sip128::{Hasher128, SipHasher13};
use std::cell::RefCell;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::LazyLock;
use std::time::Duration;

/// Credentials longer than this are refused unread (a user and a password, base64).
const MAX_CREDENTIALS: usize = 4096;
/// Verified credentials remembered per worker; all are forgotten when it fills.
const REMEMBERED: usize = 4096;
/// How often a request waiting for the verifier looks for the answer.
const POLL: Duration = Duration::from_millis(5);
/// The longest a request waits for the verifier before it is refused (503).
const VERIFY_LIMIT: Duration = Duration::from_secs(5);

/// What a request's credentials came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authenticated {
    Yes,
    /// None sent, or not `Basic`: 401.
    Missing,
    /// Wrong user or password, or malformed: 401.
    Refused,
    /// The verifier is saturated: 503.
    Busy,
}

/// The key digests of credentials are made with, secret to this process.
static DIGEST_KEY: LazyLock<(u64, u64)> = LazyLock::new(|| {
    let s = RandomState::new();
    (s.hash_one(1u8), s.hash_one(2u8))
});

thread_local! {
    /// (users file load, digest of the credentials) -> whether they were right.
    static VERIFIED: RefCell<HashMap<(u64, u128), bool>> = RefCell::new(HashMap::new());
}

/// Checks the `Authorization` field value (`None`: not sent) against `auth`'s users.
pub async fn authenticate(auth: &BasicAuth, authorization: Option<&[u8]>) -> Authenticated {
    let Some(value) = authorization else {
        return Authenticated::Missing;
    };
    let Some(encoded) = basic_credentials(value) else {
        return Authenticated::Missing;
    };
    if encoded.len() > MAX_CREDENTIALS {
        return Authenticated::Refused;
    }
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
        return Authenticated::Refused;
    };
    let Some(colon) = decoded.iter().position(|&b| b == b':') else {
        return Authenticated::Refused;
    };
    let (user, password) = (&decoded[..colon], &decoded[colon + 1..]);
    let Some(hash) = std::str::from_utf8(user)
        .ok()
        .and_then(|u| auth.users.get(u))
    else {
        return Authenticated::Refused;
    };
    let digest = {
        let (k0, k1) = *DIGEST_KEY;
        let mut h = SipHasher13::new_with_keys(k0, k1);
        h.write(&decoded);
        h.finish128().as_u128()
    };
    let remembered = VERIFIED.with(|v| v.borrow().get(&(auth.id, digest)).copied());
    let right = match remembered {
        Some(right) => right,
        None => {
            let Some(answer) = verifier::submit(hash.clone(), password.to_vec()) else {
                return Authenticated::Busy;
            };
            let deadline = deadline::Deadline::after(VERIFY_LIMIT);
            let right = loop {
                if let Some(right) = answer.get() {
                    break right;
                }
                if deadline.left().is_zero() {
                    return Authenticated::Busy;
                }
                let _ = deadline::sleep(POLL).await;
            };
            VERIFIED.with(|v| {
                let mut v = v.borrow_mut();
                if v.len() >= REMEMBERED {
                    v.clear();
                }
                v.insert((auth.id, digest), right);
            });
            right
        }
    };
    if right {
        Authenticated::Yes
    } else {
        Authenticated::Refused
    }
}

/// The base64 part of `Basic <credentials>` (the scheme is case-insensitive, RFC 9110 §11.1).
fn basic_credentials(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii();
    let (scheme, rest) = value.split_at(value.iter().position(|&b| b == b' ')?);
    scheme
        .eq_ignore_ascii_case(b"basic")
        .then(|| rest.trim_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn auth() -> BasicAuth {
        let hash: Arc<str> = bcrypt::hash("open sesame", 4).unwrap().into();
        BasicAuth {
            id: 99,
            realm: "r".into(),
            users: [("ali".to_string(), hash)].into_iter().collect(),
            forward_authorization: false,
            file: "users".into(),
        }
    }

    fn header(user_pass: &str) -> Vec<u8> {
        let encoded = base64::engine::general_purpose::STANDARD.encode(user_pass);
        format!("Basic {encoded}").into_bytes()
    }

    #[monoio::test(enable_timer = true)]
    async fn credentials_are_checked_and_remembered() {
        let a = auth();
        assert_eq!(authenticate(&a, None).await, Authenticated::Missing);
        assert_eq!(
            authenticate(&a, Some(b"Bearer abc")).await,
            Authenticated::Missing
        );
        assert_eq!(
            authenticate(&a, Some(b"Basic !!!")).await,
            Authenticated::Refused
        );
        let right = header("ali:open sesame");
        assert_eq!(authenticate(&a, Some(&right)).await, Authenticated::Yes);
        let lower = [b"basic".as_slice(), &right[5..]].concat();
        assert_eq!(authenticate(&a, Some(&lower)).await, Authenticated::Yes);
        assert_eq!(
            authenticate(&a, Some(&header("ali:open sesame!"))).await,
            Authenticated::Refused
        );
        assert_eq!(
            authenticate(&a, Some(&header("bob:open sesame"))).await,
            Authenticated::Refused
        );
        assert_eq!(
            VERIFIED.with(|v| v.borrow().len()),
            2,
            "the right and the wrong password remembered"
        );
    }
}
