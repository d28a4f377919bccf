//! Deviations of the proxy from RFC 9112 (or from its own rules) that fuzzing found, and what
//! became of them: fixed ones are `false` (checked strictly); the one kept on purpose is `true`
//! and says why. The `strict` feature is kept for future entries.

/// Trailer field names were checked as visible ASCII, not as tokens (RFC 9110 §5.1). Fixed.
pub const TRAILER_NAMES_NOT_TOKENS: bool = false;

/// A request head that is over a size limit and also malformed (or of an unsupported version,
/// or with too many fields) is refused with 414 or 431 when its first read is a valid beginning
/// already over the limit, but with httparse's verdict (400, 505, 431) when it arrives whole:
/// on a complete head the syntax is checked before the limits. Both refuse; the status differs.
/// Kept on purpose (not a framing disagreement): which violation is reported depends on which
/// is visible first, and a syntax error in the first bytes is visible before a length limit is
/// reached, whichever order the checks run in.
pub const REFUSAL_STATUS_DEPENDS_ON_READS: bool = true;

/// An empty Transfer-Encoding field value in a response after `chunked` made the final coding
/// "not chunked"; RFC 9110 §5.6.1 says empty list elements are ignored. Fixed.
pub const EMPTY_TE_FIELD_ENDS_CHUNKED: bool = false;
