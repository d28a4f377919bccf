//! Responses the proxy makes itself: short plain-text errors and `100 Continue`.

use bytes::BytesMut;

pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The reason phrase of every status the proxy or its admin API sends itself.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        415 => "Unsupported Media Type",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        408 => "Request Timeout",
        413 => "Content Too Large",
        414 => "URI Too Long",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

/// Appends a complete error response, e.g. `502 Bad Gateway\n` as a text/plain body.
pub fn write_error(out: &mut BytesMut, status: u16, keep_alive: bool) {
    write_error_with(out, status, keep_alive, &[]);
}

/// As `write_error`, with these fields too (a 429's `Retry-After`, a 401's `WWW-Authenticate`).
pub fn write_error_with(
    out: &mut BytesMut,
    status: u16,
    keep_alive: bool,
    fields: &[(&str, &str)],
) {
    let reason = reason_phrase(status);
    let body_len = 3 + 1 + reason.len() + 1;
    let mut code_buf = itoa::Buffer::new();
    let code = code_buf.format(status);
    let mut len = itoa::Buffer::new();
    for part in [
        "HTTP/1.1 ",
        code,
        " ",
        reason,
        "\r\nServer: ringproxy\r\nContent-Type: text/plain\r\nContent-Length: ",
        len.format(body_len),
    ] {
        out.extend_from_slice(part.as_bytes());
    }
    for (name, value) in fields {
        for part in ["\r\n", name, ": ", value] {
            out.extend_from_slice(part.as_bytes());
        }
    }
    for part in [
        // 503 means "no backend now": tell clients when to come back rather than hammer.
        if status == 503 && fields.is_empty() {
            "\r\nRetry-After: 1"
        } else {
            ""
        },
        if keep_alive {
            "\r\n\r\n"
        } else {
            "\r\nConnection: close\r\n\r\n"
        },
        code,
        " ",
        reason,
        "\n",
    ] {
        out.extend_from_slice(part.as_bytes());
    }
}

/// Appends a redirect to `location` with a short text body naming it.
pub fn write_redirect(out: &mut BytesMut, status: u16, location: &str, keep_alive: bool) {
    let mut code = itoa::Buffer::new();
    let mut len = itoa::Buffer::new();
    let reason = reason_phrase(status);
    for part in [
        "HTTP/1.1 ",
        code.format(status),
        " ",
        reason,
        "\r\nServer: ringproxy\r\nLocation: ",
        location,
        "\r\nContent-Type: text/plain\r\nContent-Length: ",
        len.format(location.len() + 1),
        if keep_alive {
            "\r\n\r\n"
        } else {
            "\r\nConnection: close\r\n\r\n"
        },
        location,
        "\n",
    ] {
        out.extend_from_slice(part.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_response_is_well_framed() {
        let mut out = BytesMut::new();
        write_error(&mut out, 502, false);
        let text = std::str::from_utf8(&out).unwrap();
        assert!(text.starts_with("HTTP/1.1 502 Bad Gateway\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        assert_eq!(body, "502 Bad Gateway\n");
    }
}
