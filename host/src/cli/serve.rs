//! `tokenvault serve` and `tokenvault apikey`.

use std::net::SocketAddr;

use tokenvault::serve::{self, ApiKeys, AppState, Scope};
use tokenvault::{Error, Result, Vault};

pub async fn run(vault: Vault, listen: SocketAddr, public_url: Option<String>) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Error::Config(format!("cannot listen on {listen}: {e}")))?;
    let address = listener.local_addr().map_err(|e| Error::Config(format!("no local address: {e}")))?;
    let state = AppState::new(vault, &public_url.unwrap_or_else(|| format!("http://{address}")))?;
    let first_key = serve::first_key(&state.api_keys).await?;
    // Before the address is printed: whoever reads it may signal at once.
    let shutdown = shutdown_signal()?;
    if let Some(new) = first_key {
        println!(
            "First API key ({}): {}\n  Shown once; only its hash is kept. `tokenvault apikey create TENANT` makes tenant keys.",
            new.info.scope, new.key
        );
    }
    println!("tokenvault is serving http://{address}  (API /v1, OpenAPI /openapi.json; Ctrl-C stops)");
    println!("Redirect URI to register at providers: {}", state.callback_url());
    tracing::info!(%address, "serving");
    serve::serve(listener, serve::router(state), shutdown)
        .await
        .map_err(|e| Error::Config(format!("the server failed: {e}")))?;
    tracing::info!("stopped: calls in flight finished");
    Ok(())
}

/// Ctrl-C or SIGTERM (what service managers send), listened for from now on.
#[cfg(unix)]
fn shutdown_signal() -> Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let listen = |kind| signal(kind).map_err(|e| Error::Config(format!("cannot handle signals: {e}")));
    let (mut interrupt, mut terminate) = (listen(SignalKind::interrupt())?, listen(SignalKind::terminate())?);
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> Result<impl Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

pub async fn create_key(vault: &Vault, tenant: Option<String>) -> Result<()> {
    let scope = tenant.map_or(Scope::Operator, Scope::Tenant);
    super::print_json(&ApiKeys::of(vault).create(scope).await?);
    eprintln!("Shown once; only its hash is kept.");
    Ok(())
}
