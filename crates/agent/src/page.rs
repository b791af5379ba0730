//! The status page for a browser (`GET /` and `GET /page.js`): a static
//! shell and a script, with no external resource, that read `/v1/status`
//! every second and draw it: per shard the phase, a progress bar with
//! copied/total, rate and ETA during the snapshot, lag in events and
//! seconds, errors with their sentence, a chart of the largest lag over
//! the last ten minutes, the continuous verifier, and after `stop` the
//! cutover proof; and the two control actions (cut over, abort).
//!
//! The page itself holds no data, so `/` needs no token and shows nothing
//! but the login until one is given. The script asks for the token once
//! and keeps it in the tab's `sessionStorage`, sending it as a bearer
//! header: it never travels in a URL, so it stays out of the history,
//! referrers and server logs. An agent that requires client certificates
//! needs no token, and the page opens without asking. The responses carry
//! a content security policy that allows nothing but this script, its own
//! styles and requests to the agent itself.
//!
//! Written by hand, not with a front-end framework: the page is one table,
//! a chart of one line and two buttons, and a framework would bring a
//! build step and megabytes for it.

/// The page's HTML.
pub const INDEX_HTML: &str = include_str!("page/index.html");
/// The page's script.
pub const PAGE_JS: &str = include_str!("page/page.js");

/// Headers for both: no caching, no referrer, and a policy that allows
/// only the page's own script, its inline styles and requests to the agent.
pub const SECURITY_HEADERS: [(&str, &str); 5] = [
    ("cache-control", "no-store"),
    ("referrer-policy", "no-referrer"),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    (
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_nothing_from_elsewhere_and_writes_data_as_text() {
        for src in [INDEX_HTML, PAGE_JS] {
            assert!(!src.contains("http://") || src.contains("http://www.w3.org/2000/svg"));
            assert!(!src.contains("https://"), "no external resource");
        }
        assert!(!PAGE_JS.contains("innerHTML"), "data goes in as text nodes");
        assert!(
            !PAGE_JS.contains("localStorage"),
            "the token stays in the tab"
        );
        assert!(
            !PAGE_JS.contains("?token"),
            "the token never travels in a URL"
        );
        assert!(INDEX_HTML.contains(r#"<script src="/page.js"></script>"#));
    }
}
