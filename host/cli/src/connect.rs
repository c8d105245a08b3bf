//! `tokenvault connect` and `open-link`: the authorization-code flow for a user at a
//! terminal, and the device flow. The redirect URI is a loopback address on a port of
//! this process (RFC 8252 §7.3); the browser's return there completes the flow in the
//! component.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, RawQuery, State};
use axum::response::Html;
use axum::routing::get;
use tokenvault::{AuthorizationRequest, Connected, ConnectionKey, DeviceStatus, Error, Result, Vault};
use tokio::sync::{Mutex, oneshot};

struct Pending {
    vault: Vault,
    state: String,
    done: Mutex<Option<oneshot::Sender<Result<Connected>>>>,
}

/// Run one browser flow, begun by `begin` with the loopback redirect URI, and return the
/// connection it made. `what` names the account in the prompt.
pub async fn browser<F, Fut>(vault: &Vault, what: &str, port: u16, begin: F) -> Result<Connected>
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = Result<AuthorizationRequest>>,
{
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| Error::Config(format!("cannot listen on 127.0.0.1:{port} for the redirect: {e}")))?;
    let port = listener.local_addr().map_err(|e| Error::Config(format!("no local address: {e}")))?.port();
    let redirect_uri = format!("http://127.0.0.1:{port}/callback");
    let request = begin(redirect_uri.clone()).await?;
    eprintln!(
        "Open this URL in a browser to connect {what}:\n\n{url}\n\nWaiting for the provider to redirect to {redirect_uri} (the link expires in 10 minutes)…",
        url = request.url,
    );

    let (done, finished) = oneshot::channel();
    let pending = Arc::new(Pending { vault: vault.clone(), state: request.state, done: Mutex::new(Some(done)) });
    let app = Router::new().route("/callback", get(callback)).with_state(pending);
    let server = axum::serve(listener, app);
    let wait = std::time::Duration::from_secs(request.expires_at.saturating_sub(unix_now()).saturating_add(5));
    tokio::select! {
        served = server => Err(Error::Config(format!("the redirect listener stopped: {served:?}"))),
        result = finished => result.unwrap_or_else(|_| Err(Error::Config("the redirect listener went away".into()))),
        () = tokio::time::sleep(wait) => {
            Err(Error::invalid_input("the browser did not come back before the link expired; run connect again"))
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
    // No browser secret: only this listener, on this machine, receives the redirect, and it
    // completes only the flow it began (its state).
    let result = pending.vault.complete(&query.unwrap_or_default(), None).await;
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

/// The device flow: print the code and where to enter it, then poll as the component
/// says until the user finishes, refuses, or the code expires.
pub async fn device(vault: &Vault, key: &ConnectionKey, scopes: Option<&[String]>) -> Result<Connected> {
    let started = vault.begin_device(key, scopes).await?;
    eprintln!(
        "To connect {user}'s {provider} account, visit\n\n  {uri}\n\nand enter the code\n\n  {code}\n",
        user = key.user,
        provider = key.provider,
        uri = started.verification_uri,
        code = started.user_code,
    );
    if let Some(complete) = &started.verification_uri_complete {
        eprintln!("(or open {complete}, which has the code in it)\n");
    }
    eprintln!("Waiting (the code expires in {} s)…", started.expires_at.saturating_sub(unix_now()));
    let mut wait = started.interval;
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(u64::from(wait))).await;
        match vault.poll_device(&started.handle).await? {
            DeviceStatus::Pending { retry_after } => wait = retry_after,
            DeviceStatus::Connected(connected) => return Ok(connected),
        }
    }
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
