//! `tokenvault connect`: the authorization-code flow for a user at a terminal. The
//! redirect URI is a loopback address on a port of this process (RFC 8252 §7.3); the
//! browser's return there completes the flow in the component.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, RawQuery, State};
use axum::response::Html;
use axum::routing::get;
use tokenvault::{Connected, ConnectionKey, Error, Result, Vault};
use tokio::sync::{Mutex, oneshot};

struct Pending {
    vault: Vault,
    state: String,
    done: Mutex<Option<oneshot::Sender<Result<Connected>>>>,
}

/// Run one flow for `key` and return the connection it made.
pub async fn run(vault: &Vault, key: &ConnectionKey, scopes: Option<&[String]>, port: u16) -> Result<Connected> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| Error::Config(format!("cannot listen on 127.0.0.1:{port} for the redirect: {e}")))?;
    let port = listener.local_addr().map_err(|e| Error::Config(format!("no local address: {e}")))?.port();
    let redirect_uri = format!("http://127.0.0.1:{port}/callback");
    let request = vault.begin(key, &redirect_uri, scopes).await?;
    eprintln!(
        "Open this URL in a browser to connect {user}'s {provider} account:\n\n{url}\n\nWaiting for the provider to redirect to {redirect_uri} (the link expires in 10 minutes)…",
        user = key.user,
        provider = key.provider,
        url = request.url,
    );

    let (done, finished) = oneshot::channel();
    let pending = Arc::new(Pending { vault: vault.clone(), state: request.state, done: Mutex::new(Some(done)) });
    let app = Router::new().route("/callback", get(callback)).with_state(pending);
    let server = axum::serve(listener, app);
    let wait = std::time::Duration::from_secs(request.expires_at.saturating_sub(unix_now()) + 5);
    tokio::select! {
        served = server => Err(Error::Config(format!("the redirect listener stopped: {served:?}"))),
        result = finished => result.unwrap_or_else(|_| Err(Error::Config("the redirect listener went away".into()))),
        () = tokio::time::sleep(wait) => {
            Err(Error::InvalidInput("the browser did not come back before the link expired; run connect again".into()))
        }
    }
}

/// The browser's return. A request for another state (a stale tab, a stray visit) is
/// answered and ignored; the one for this flow completes it, whatever the outcome.
async fn callback(
    State(pending): State<Arc<Pending>>,
    Query(params): Query<HashMap<String, String>>,
    RawQuery(query): RawQuery,
) -> Html<String> {
    if params.get("state") != Some(&pending.state) {
        return page("Not this connection", "This page does not belong to the connection being made.");
    }
    let Some(done) = pending.done.lock().await.take() else {
        return page("Already handled", "This connection attempt has already been handled.");
    };
    let result = pending.vault.complete(&query.unwrap_or_default()).await;
    let shown = match &result {
        Ok(connected) => page(
            "Connected",
            &format!("Your {} account is connected. You can close this window.", connected.key.provider),
        ),
        Err(err) => page("Not connected", &err.to_string()),
    };
    let _ = done.send(result);
    shown
}

fn page(title: &str, message: &str) -> Html<String> {
    let escape = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;");
    Html(format!(
        "<!doctype html><meta charset=utf-8><title>tokenvault: {t}</title><h1>{t}</h1><p>{m}</p>",
        t = escape(title),
        m = escape(message)
    ))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
