//! The admit phase: whether a routed request may go on. Today: the route's own body limit (the
//! parser held a Content-Length only to the loosest limit any route has). It is where rate
//! limits and access rules (client address ranges, authentication) will stand, each refusal
//! answered with its own status before anything reaches an upstream.

use super::error::Failure;
use super::route::Route;
use crate::http::{BodyKind, RequestHead};

/// Admits `req` on `route`, or says what to answer instead.
pub fn admit(req: &RequestHead, route: &Route<'_>) -> Result<(), Failure> {
    if let (BodyKind::Length(n), Some(max)) = (req.body, route.max_body_bytes) {
        if n > max {
            return Err(Failure::BodyTooLarge);
        }
    }
    Ok(())
}
