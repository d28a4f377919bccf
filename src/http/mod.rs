//! HTTP/1.1 framing, owned here and kept free of I/O so it can be unit-tested and fuzzed.
//!
//! Why not monoio-http's codec: it buffers whole Content-Length bodies, queues chunked bodies
//! without backpressure, rejects chunk extensions and trailers, drops close-delimited responses,
//! rewrites Content-Length/Transfer-Encoding (breaking HEAD, 204, 304 and HTTP/1.0 clients) and has
//! no header size limit. We parse heads with `httparse` and add the proxy's rules on top.

pub mod body;
pub mod head;
pub mod normalize;
pub mod request;
pub mod response;
pub mod status;
pub mod target;

pub use body::{BodyDecoder, BodyError, BodyKind, Decoded, OutFraming};
pub use head::{ConnectionOptions, HeaderField, Span, Version};
pub use request::{parse_request, HeadLimits, RequestError, RequestHead};
pub use response::{parse_response, ResponseError, ResponseHead};
