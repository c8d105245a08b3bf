//! The end user's page: their connections, to disconnect or reconnect.

use axum::Form;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::{EndUser, error_page, page};
use crate::AppState;
use tokenvault::{ConnectionInfo, ConnectionKey, ConnectionKind, ConnectionStatus, UpstreamRevocation};

pub async fn connections(user: EndUser, State(state): State<AppState>) -> Response {
    render(&state, &user, None).await
}

/// The user's connections and access tokens, with a notice of what was just done.
pub(super) async fn render(state: &AppState, user: &EndUser, notice: Option<Markup>) -> Response {
    let list = match user.visitor.vault(state).list(&user.tenant, &user.user).await {
        Ok(list) => list,
        Err(err) => return error_page(Some(&user.visitor), err.into()),
    };
    let tokens = match state.access_tokens.list(&user.tenant, &user.user).await {
        Ok(tokens) => tokens,
        Err(err) => return error_page(Some(&user.visitor), err.into()),
    };
    let now = state.vault.services().clock.now().as_secs();
    let csrf = &user.visitor.session.csrf;
    let body = html! {
        @if let Some(notice) = notice { (notice) }
        (connections_table(&list, now, |info| html! {
            form.inline method="post" action="/console/me/disconnect" {
                input type="hidden" name="csrf" value=(csrf);
                input type="hidden" name="provider" value=(info.provider);
                input type="hidden" name="name" value=(info.name);
                button.danger type="submit" aria-label=(format!("Disconnect {} ({})", info.provider, info.name)) {
                    "Disconnect"
                }
            }
            @if needs_reconnect(info, now) {
                " "
                form.inline method="post" action="/console/me/reconnect" {
                    input type="hidden" name="csrf" value=(csrf);
                    input type="hidden" name="provider" value=(info.provider);
                    input type="hidden" name="name" value=(info.name);
                    button type="submit" { "Reconnect" }
                }
            }
        }))
        (super::access_tokens::section(csrf, &tokens, &list, now, state.access_tokens.max_lifetime_secs))
    };
    page(StatusCode::OK, "Your connections", Some(&user.visitor), body)
}

#[derive(Deserialize)]
pub struct ConnectionForm {
    csrf: String,
    provider: String,
    name: String,
}

/// Disconnect: revoked at the provider, then deleted here.
pub async fn disconnect(user: EndUser, State(state): State<AppState>, Form(form): Form<ConnectionForm>) -> Response {
    if let Err(refused) = user.visitor.check_csrf(&form.csrf) {
        return refused;
    }
    let key = ConnectionKey::new(&user.tenant, &user.user, &form.provider, &form.name);
    let receipt = match user.visitor.vault(&state).remove(&key).await {
        Ok(receipt) => receipt,
        Err(err) => return error_page(Some(&user.visitor), err.into()),
    };
    let notice = html! {
        p.notice role="status" {
            "Disconnected " strong { (receipt.provider) } " (" (receipt.name) "). "
            (upstream_text(&receipt.upstream))
        }
    };
    render(&state, &user, Some(notice)).await
}

/// Reconnect: a fresh connect link, followed at once.
pub async fn reconnect(user: EndUser, State(state): State<AppState>, Form(form): Form<ConnectionForm>) -> Response {
    if let Err(refused) = user.visitor.check_csrf(&form.csrf) {
        return refused;
    }
    let key = ConnectionKey::new(&user.tenant, &user.user, &form.provider, &form.name);
    match user.visitor.vault(&state).link(&key, None).await {
        Ok(link) => {
            Redirect::to(&crate::connect_link_url(&state.public_url, &key.provider, &link.code)).into_response()
        }
        Err(err) => error_page(Some(&user.visitor), err.into()),
    }
}

pub fn upstream_text(upstream: &UpstreamRevocation) -> String {
    match upstream {
        UpstreamRevocation::Revoked => "The provider revoked its tokens.".into(),
        UpstreamRevocation::Unsupported => {
            "The provider cannot revoke tokens: they stay valid there until they expire.".into()
        }
        UpstreamRevocation::Failed { reason } => {
            format!("Revoking at the provider failed ({reason}); the tokens are deleted here.")
        }
    }
}

/// A user's delegated token that cannot be renewed any more: refresh failed for good, or
/// it expired with no refresh token to renew it.
fn needs_reconnect(info: &ConnectionInfo, now: u64) -> bool {
    info.status == ConnectionStatus::ReconnectRequired
        || (info.kind == ConnectionKind::User && !info.has_refresh_token && info.expires_at.is_some_and(|at| at <= now))
}

/// What the connection can do, as a badge.
pub fn badge(info: &ConnectionInfo, now: u64) -> Markup {
    if needs_reconnect(info, now) {
        html! { span.badge.failed { "Reconnect needed" } }
    } else if info.kind == ConnectionKind::Client {
        html! { span.badge.ok { "Client credentials" } }
    } else if info.has_refresh_token {
        html! { span.badge.ok { "Connected with API access" } }
    } else {
        html! { span.badge.plain { "Connected until the token expires" } }
    }
}

/// The connections as a table, with `actions` for each row (empty for none).
pub fn connections_table(list: &[ConnectionInfo], now: u64, actions: impl Fn(&ConnectionInfo) -> Markup) -> Markup {
    html! {
        @if list.is_empty() {
            p.muted { "No connections yet." }
        } @else {
            table {
                thead { tr { th { "Provider" } th { "Name" } th { "Scopes" } th { "Token expires" } th { "Status" } th {} } }
                tbody {
                    @for info in list {
                        tr data-connection=(format!("{}/{}", info.provider, info.name)) {
                            td { (info.provider) }
                            td { (info.name) }
                            td { (info.scopes.join(" ")) }
                            td { (expiry(info.expires_at, now)) }
                            td { (badge(info, now)) }
                            td { (actions(info)) }
                        }
                    }
                }
            }
        }
    }
}

/// "in 42 min", "3 h ago", "never", with the UTC time on hover.
fn expiry(expires_at: Option<u64>, now: u64) -> Markup {
    let Some(at) = expires_at else { return html! { "never" } };
    let (ahead, delta) = if at >= now { (true, at - now) } else { (false, now - at) };
    let amount = match delta {
        0..120 => format!("{delta} s"),
        120..7200 => format!("{} min", delta / 60),
        7200..172_800 => format!("{} h", delta / 3600),
        _ => format!("{} days", delta / 86_400),
    };
    let text = if ahead { format!("in {amount}") } else { format!("{amount} ago") };
    html! { time datetime=(utc(at)) title=(utc(at)) { (text) } }
}

/// The last second RFC 3339 can write (9999-12-31T23:59:59Z).
const LAST_RFC3339_SECOND: u64 = 253_402_300_799;

/// Unix seconds as RFC 3339 UTC. A later time (only a record stored before lifetimes were
/// bounded could hold one) shows as the last writable second rather than failing the page.
pub fn utc(secs: u64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.min(LAST_RFC3339_SECOND));
    humantime::format_rfc3339_seconds(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(kind: ConnectionKind, refresh: bool, status: ConnectionStatus, expires_at: Option<u64>) -> ConnectionInfo {
        ConnectionInfo {
            provider: "github".into(),
            name: "default".into(),
            kind,
            scopes: vec!["repo".into()],
            expires_at,
            has_refresh_token: refresh,
            status,
            updated_at: 0,
        }
    }

    #[test]
    fn badges_say_what_a_connection_can_do() {
        let text = |i: &ConnectionInfo| badge(i, 1000).into_string();
        use ConnectionKind::{Client, User};
        use ConnectionStatus::{Active, ReconnectRequired};
        assert!(text(&info(User, true, Active, Some(500))).contains("Connected with API access"));
        assert!(text(&info(User, true, ReconnectRequired, Some(5000))).contains("Reconnect needed"));
        assert!(text(&info(User, false, Active, Some(999))).contains("Reconnect needed"));
        assert!(text(&info(User, false, Active, Some(5000))).contains("until the token expires"));
        assert!(text(&info(User, false, Active, None)).contains("until the token expires"));
        assert!(text(&info(Client, false, Active, Some(10))).contains("Client credentials"));
    }

    #[test]
    fn no_time_fails_to_format() {
        for at in [0, 1 << 40, LAST_RFC3339_SECOND + 1, i64::MAX as u64, u64::MAX] {
            assert!(utc(at).ends_with('Z'), "{at}");
            assert!(expiry(Some(at), 1_700_000_000).into_string().contains("<time"), "{at}");
        }
        assert_eq!(utc(u64::MAX), "9999-12-31T23:59:59Z");
    }

    #[test]
    fn expiry_reads_as_a_duration() {
        assert_eq!(expiry(None, 0).into_string(), "never");
        assert!(expiry(Some(3_000), 0).into_string().contains(">in 50 min<"));
        assert!(expiry(Some(0), 10_800).into_string().contains(">3 h ago<"));
        assert!(expiry(Some(0), 0).into_string().contains("1970-01-01T00:00:00Z"));
    }
}
