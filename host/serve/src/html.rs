//! What every page of the service shares (the connect flow's result pages and the
//! console): the skeleton, the style sheet and the headers that guard them. `maud`
//! escapes every value put in a page.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use maud::{DOCTYPE, Markup, PreEscaped, html};

/// A page: `title` names the tab and heads the main column, `style` adds to the shared
/// style sheet, and `header` (the console's navigation) goes above the column.
pub fn page(status: StatusCode, title: &str, style: &str, header: Option<Markup>, body: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · tokenvault" }
                style { (PreEscaped(STYLE)) (PreEscaped(style)) }
            }
            body {
                @if let Some(header) = header { (header) }
                main { h1 { (title) } (body) }
            }
        }
    };
    (status, Html(markup.into_string())).into_response()
}

/// No script may run, nothing may frame a page, no form may post elsewhere, and nothing
/// is cached or sent on as a referrer (a console link's code is in its address). A page
/// that sets its own policy keeps it (the one with a copy button allows that script).
pub async fn guard_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    if !headers.contains_key(header::CONTENT_SECURITY_POLICY) {
        headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    }
    for (name, value) in [
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// Every page's content security policy, unless it sets its own.
const POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self' http: https:; \
                      frame-ancestors 'none'; base-uri 'none'";

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}\
main{max-width:40rem;margin:4rem auto;padding:2rem;background:#fff;border-radius:8px;box-shadow:0 1px 3px #0002}\
.badge{display:inline-block;padding:.2rem .6rem;border-radius:1rem;font-size:.9rem;font-weight:600}\
.ok{background:#d8f5de;color:#126b2a}.failed{background:#fde2e1;color:#8a1c17}";
