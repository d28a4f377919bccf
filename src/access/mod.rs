//! Access rules a route's requests must pass besides its rate limits: the client address
//! against `allow` and `deny` (a check on the config's ranges, `Admission::address_allowed`),
//! and HTTP basic authentication against a users file (`basic_auth`), whose bcrypt and argon2
//! hashes are verified on a thread of their own (`verifier`) so no worker stalls on one.

mod basic_auth;
mod verifier;

pub use basic_auth::{authenticate, Authenticated};
