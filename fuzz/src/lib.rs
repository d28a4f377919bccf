//! Shared by the fuzz targets: reference implementations written from RFC 9110/9112 rather than
//! from the proxy's code (`fields`, `chunked`), the way one fuzz input is cut into parameters
//! and data fed in pieces (`input`), and the proxy's known, reported deviations (`known`).

pub mod chunked;
pub mod fields;
pub mod input;
pub mod known;
