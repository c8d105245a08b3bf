//! Connecting an end user's account, in their browser, with no API key of theirs.
//!
//! The backend asks the API for a link (`POST …/connections/{provider}/{name}/link`) and
//! hands it to its user. The link carries a one-time code that the component made and
//! keeps sealed (15 minutes): `GET /connect/{provider}?link=CODE` spends it and sends the
//! browser to the provider (PKCE, with `{public URL}/oauth/callback` as the redirect URI),
//! and `GET /oauth/callback` completes the flow, stores the tokens and shows a result page.
//!
//! The flow belongs to the browser that opened the link: `/connect/…` gives it a random
//! secret in a `__Host-` cookie (kept if it has one), the component seals its SHA-256 in
//! the flow, and the callback completes only with the same cookie. Without that, a user
//! could open a link for their own connection, stop at the provider's page and send its URL
//! to someone else, whose consent would store their account under the first user's name.

use axum::extract::{Path, Query, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use maud::{Markup, html};
use serde::Deserialize;

use super::api_error::ApiError;
use super::console::Visitor;
use super::console::session::random_token;
use super::{AppState, console::session::Principal};

pub const CALLBACK_PATH: &str = "/oauth/callback";
/// The browser's secret that binds its flows to it. `__Host-`: Secure, whole-site, set by
/// this origin alone. Browsers take Secure cookies from https and from loopback http, the
/// only redirect URIs the component accepts.
const BROWSER_COOKIE: &str = "__Host-tv_connect";
/// Longer than a flow lives (ten minutes), so flows begun in one browser share it.
const BROWSER_COOKIE_SECS: i64 = 3600;

pub fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/connect/{provider}", get(open))
        .route(CALLBACK_PATH, get(callback))
        .layer(axum::middleware::map_response(super::html::guard_headers))
}

#[derive(Deserialize)]
struct OpenQuery {
    link: Option<String>,
}

/// The link's provider in the path is decoration for the user: the link names its own
/// connection, so the path is not read.
async fn open(
    State(state): State<AppState>,
    Path(_provider): Path<String>,
    jar: CookieJar,
    Query(query): Query<OpenQuery>,
) -> Response {
    let Some(code) = query.link.filter(|c| !c.is_empty()) else {
        return failure_page(StatusCode::BAD_REQUEST, "This connect link is incomplete: it has no link code.");
    };
    let secret = match browser_secret(&jar) {
        Some(secret) => secret.to_owned(),
        None => match random_token() {
            Ok(secret) => secret,
            Err(err) => return failure_page(StatusCode::INTERNAL_SERVER_ERROR, &err.to_string()),
        },
    };
    match state.vault.open_link(&code, &state.callback_url(), Some(&secret)).await {
        // 303: the browser follows with a GET, whatever brought it here.
        Ok(request) => {
            let cookie = Cookie::build((BROWSER_COOKIE, secret))
                .path("/")
                .secure(true)
                .http_only(true)
                // Lax: sent on the provider's top-level redirect back to the callback.
                .same_site(SameSite::Lax)
                .max_age(cookie::time::Duration::seconds(BROWSER_COOKIE_SECS));
            (jar.add(cookie), Redirect::to(&request.url)).into_response()
        }
        Err(err) => {
            let error = ApiError::from(err);
            failure_page(error.status(), &format!("This link cannot be used: {}", message(&error)))
        }
    }
}

/// The secret this browser's flows are bound to, if it has one.
fn browser_secret(jar: &CookieJar) -> Option<&str> {
    jar.get(BROWSER_COOKIE).map(|cookie| cookie.value()).filter(|value| !value.is_empty())
}

/// Completes the flow, with this browser's secret (the component refuses a flow begun in
/// another browser). A browser that came from the user's console page (its session is for
/// the connection's user) gets a link back there.
async fn callback(
    State(state): State<AppState>,
    visitor: Option<Visitor>,
    jar: CookieJar,
    RawQuery(query): RawQuery,
) -> Response {
    match state.vault.complete(query.as_deref().unwrap_or_default(), browser_secret(&jar)).await {
        Ok(connected) => {
            let key = &connected.key;
            let own_console = visitor.is_some_and(|v| {
                v.session.principal == Principal::User { tenant: key.tenant.clone(), user: key.user.clone() }
            });
            page(
                StatusCode::OK,
                "Connected",
                html! {
                    p.badge.ok { "Connected" }
                    p { "Your " strong { (key.provider) } " account is connected. You can close this window." }
                    @if own_console { p { a href="/console/me" { "Your connections" } } }
                },
            )
        }
        Err(err) => {
            let error = ApiError::from(err);
            failure_page(error.status(), &format!("Connecting failed: {}", message(&error)))
        }
    }
}

/// The error's message alone (its kind is for programs).
fn message(error: &ApiError) -> String {
    let text = error.to_string();
    text.split_once(": ").map_or(text.clone(), |(_, message)| message.to_owned())
}

fn failure_page(status: StatusCode, text: &str) -> Response {
    page(status, "Not connected", html! { p.badge.failed { "Not connected" } p { (text) } })
}

/// A small page; maud escapes every value put in it.
fn page(status: StatusCode, title: &str, body: Markup) -> Response {
    super::html::page(status, title, "", None, body)
}
