//! `tokenvault serve` and `tokenvault apikey`.

use std::net::SocketAddr;

use tokenvault::serve::{self, ApiKeys, AppState, Scope};
use tokenvault::{Error, Result, Vault};

pub async fn run(vault: Vault, listen: SocketAddr) -> Result<()> {
    let state = AppState::new(vault);
    let first_key = serve::first_key(&state.api_keys).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Error::Config(format!("cannot listen on {listen}: {e}")))?;
    let address = listener.local_addr().map_err(|e| Error::Config(format!("no local address: {e}")))?;
    if let Some(new) = first_key {
        println!(
            "First API key ({}): {}\n  Shown once; only its hash is kept. `tokenvault apikey create TENANT` makes tenant keys.",
            new.info.scope, new.key
        );
    }
    println!("tokenvault is serving http://{address}  (API /v1, OpenAPI /openapi.json; Ctrl-C stops)");
    tracing::info!(%address, "serving");
    serve::serve(listener, serve::router(state), shutdown_signal())
        .await
        .map_err(|e| Error::Config(format!("the server failed: {e}")))?;
    tracing::info!("stopped: calls in flight finished");
    Ok(())
}

/// Ctrl-C, or SIGTERM (what service managers send).
async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}

pub async fn create_key(vault: &Vault, tenant: Option<String>) -> Result<()> {
    let scope = tenant.map_or(Scope::Operator, Scope::Tenant);
    super::print_json(&ApiKeys::of(vault).create(scope).await?);
    eprintln!("Shown once; only its hash is kept.");
    Ok(())
}
