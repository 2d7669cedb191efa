//! The browser IDE (`GET /`): one page of plain HTML, CSS and JavaScript, embedded in the binary,
//! that drives the `/ws` protocol: file tabs, a highlighted editor, a streaming console, input,
//! REPL, Run/Stop/Pause, and reconnect with backoff. The page's code is `src/ide/`.

use crate::state::AppState;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::sync::Arc;

const INDEX: &str = include_str!("ide/index.html");
const CSS: &str = include_str!("ide/ide.css");
const JS: &str = include_str!("ide/ide.js");
const ICON: &str = include_str!("ide/favicon.svg");

/// The page loads only its own script and talks only to its own server. What a program
/// displays as HTML is drawn in a sandboxed frame without scripts (`srcdoc`, which inherits this
/// policy): its inline styles (a DataFrame's) are allowed, its images only as `data:` URLs.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/",
            get(|| async { asset(INDEX, "text/html; charset=utf-8") }),
        )
        .route(
            "/ide.css",
            get(|| async { asset(CSS, "text/css; charset=utf-8") }),
        )
        .route(
            "/ide.js",
            get(|| async { asset(JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/favicon.svg",
            get(|| async { asset(ICON, "image/svg+xml") }),
        )
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    // The page's address may carry its token (`?token=`): never sent on as a referrer, by the
    // page or by anything a program displays in it.
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // The assets change with the binary; revalidate rather than run a stale page.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
