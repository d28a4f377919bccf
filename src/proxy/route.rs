//! The route phase: where a request goes. Today every request goes to the one upstream group,
//! the config's `[[backends]]`; routing by host and path will choose among named groups here, or
//! answer a request itself (redirects, fixed responses).

use crate::config::ValidConfig;
use crate::http::RequestHead;
use crate::state::Snapshot;
use crate::upstream::Backend;
use std::sync::Arc;

/// What a request runs with once routed: the worker-independent parts of its environment.
pub struct Route<'v> {
    /// The configuration in force for this request.
    pub config: &'v ValidConfig,
    /// The upstream group the request is balanced over.
    pub backends: &'v [Arc<Backend>],
}

/// Routes `req` within the snapshot it runs on.
pub fn route<'v>(_req: &RequestHead, view: &'v Snapshot) -> Route<'v> {
    Route {
        config: &view.config,
        backends: &view.backends,
    }
}
