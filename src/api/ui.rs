//! The web page at `/ui`: one HTML file, one script and one stylesheet,
//! compiled into the binary (nothing to build at install, nothing fetched
//! from the internet). The page loads the state once and then lives on
//! `/v1/events`; see docs/web-ui.md.

mod events;

pub use events::{ApplyChanges, RaftChanges};

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, MethodRouter};
use axum::Router;

/// One file of the page, with its validator computed at compile time.
struct Asset {
    body: &'static str,
    content_type: &'static str,
    /// FNV-1a of the body: changes with every build that changes the file.
    tag: u64,
}

macro_rules! asset {
    ($file:literal, $content_type:literal) => {
        Asset {
            body: include_str!($file),
            content_type: $content_type,
            tag: fnv1a(include_str!($file).as_bytes()),
        }
    };
}

static INDEX: Asset = asset!("ui/index.html", "text/html; charset=utf-8");
static SCRIPT: Asset = asset!("ui/app.js", "text/javascript; charset=utf-8");
static STYLE: Asset = asset!("ui/style.css", "text/css; charset=utf-8");
static ICON: Asset = asset!("ui/favicon.svg", "image/svg+xml");

/// Only this origin, for everything; no inline script or style, no
/// frames, no form posts. The page's own files never need more.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

/// The paths this module serves: files of the page, no data. An exposed
/// API must let a browser fetch them without a token (a navigation cannot
/// carry one); the page then sends the token with its API calls.
pub const PATHS: [&str; 6] = [
    "/",
    "/ui",
    "/ui/",
    "/ui/app.js",
    "/ui/style.css",
    "/ui/favicon.svg",
];

/// `/` (a redirect), `/ui` and the page's files.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(PATHS[0], get(|| async { Redirect::temporary("/ui") }))
        .route(PATHS[1], file(&INDEX))
        .route(PATHS[2], file(&INDEX))
        .route(PATHS[3], file(&SCRIPT))
        .route(PATHS[4], file(&STYLE))
        .route(PATHS[5], file(&ICON))
}

fn file<S: Clone + Send + Sync + 'static>(asset: &'static Asset) -> MethodRouter<S> {
    get(move |request: HeaderMap| async move { serve(asset, &request) })
}

/// The file, or 304 when the browser holds this build's copy: it asks
/// again at every load (`no-cache`), so a new binary shows at once.
fn serve(asset: &Asset, request: &HeaderMap) -> Response {
    let etag = format!("\"{:016x}\"", asset.tag);
    let fresh = request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == etag || tag == "*");
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            )],
            asset.body,
        )
            .into_response()
    };
    let headers = response.headers_mut();
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, etag);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_only_its_own_files() {
        // The CSP forbids anything else: an inline script or a file the
        // router does not serve would break the page silently.
        for needle in ["/ui/app.js", "/ui/style.css", "/ui/favicon.svg"] {
            assert!(INDEX.body.contains(needle), "index.html links {needle}");
        }
        for forbidden in ["<script>", "style=", "onclick", "http://", "https://"] {
            assert!(
                !INDEX.body.contains(forbidden),
                "index.html contains {forbidden}"
            );
        }
        for forbidden in ["http://", "https://", "eval(", "innerHTML", "new Function"] {
            assert!(
                !SCRIPT.body.contains(forbidden),
                "app.js contains {forbidden}"
            );
        }
    }

    #[test]
    fn a_matching_etag_gets_304() {
        let first = serve(&SCRIPT, &HeaderMap::new());
        assert_eq!(first.status(), StatusCode::OK);
        let etag = first.headers()[header::ETAG].clone();
        let mut again = HeaderMap::new();
        again.insert(header::IF_NONE_MATCH, etag);
        assert_eq!(serve(&SCRIPT, &again).status(), StatusCode::NOT_MODIFIED);
        let mut other = HeaderMap::new();
        other.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"0\""));
        assert_eq!(serve(&SCRIPT, &other).status(), StatusCode::OK);
        assert_ne!(INDEX.tag, SCRIPT.tag);
    }
}
