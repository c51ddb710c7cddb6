//! `GET /console`: the event console, one self-contained HTML page compiled into the binary
//! (`console.html`: its style and script inline, nothing loaded from another host, no
//! fonts). The page asks for the admin token, keeps it in the tab's `sessionStorage` (never
//! in a URL or a cookie) and sends it as `Authorization` on every call: the live figures
//! from `GET /v1/events`, the review queue, stock top-ups and pause/resume. The page itself
//! holds no secret, so serving it needs no token.

use bytes::Bytes;
use hyper::StatusCode;
use hyper::header::{CACHE_CONTROL, HeaderValue};

use super::reply::{self, HttpResponse};

const PAGE: &str = include_str!("console.html");

/// The page, with headers that keep it from being framed by another site or cached.
pub fn page() -> HttpResponse {
    let mut response = reply::raw(
        StatusCode::OK,
        "text/html; charset=utf-8",
        Bytes::from_static(PAGE.as_bytes()),
    );
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    // Only this origin: the page loads nothing from elsewhere, and may not.
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
        ),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::PAGE;

    #[test]
    fn the_page_loads_nothing_from_another_host() {
        for needle in [
            "http://",
            "https://",
            "//cdn",
            "@import",
            "<link",
            "src=\"http",
        ] {
            assert!(
                !PAGE.contains(needle),
                "the console page contains {needle:?}"
            );
        }
        assert!(PAGE.contains("sessionStorage"));
        assert!(PAGE.contains("Authorization"));
    }
}
