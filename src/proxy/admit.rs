//! The admit phase: whether a routed request may go on. Nothing refuses a request here yet:
//! it is where rate limits and access rules (client address ranges, authentication) will stand,
//! each refusal answered with its own status before anything reaches an upstream.

use super::error::Failure;
use super::route::Route;
use crate::http::RequestHead;

/// Admits `req` on `route`, or says what to answer instead.
pub fn admit(_req: &RequestHead, _route: &Route<'_>) -> Result<(), Failure> {
    Ok(())
}
