//! `tokenvault serve` and `tokenvault apikey`.

use std::net::SocketAddr;

use tokenvault::audit::Actor;
use tokenvault::{Error, Result, Vault};
use tokenvault_serve::scheduler::{self, Schedule};
use tokenvault_serve::{self as serve, ApiKeys, AppState, Scope};

/// `serve`'s settings beyond the vault's.
pub struct ServeArgs {
    pub listen: SocketAddr,
    pub public_url: Option<String>,
    pub jwt: Option<tokenvault_serve::jwt::JwtConfig>,
    /// The console's OpenID Connect sign-in.
    pub oidc: Option<tokenvault_serve::console::oidc::OidcConfig>,
    /// None: no background refresh.
    pub schedule: Option<Schedule>,
    /// Seconds.
    pub access_token_max_lifetime: u64,
    /// Where webhooks may point and how their deliveries are retried.
    pub webhooks: tokenvault_serve::webhooks::Webhooks,
}

pub async fn run(vault: Vault, args: ServeArgs) -> Result<()> {
    let ServeArgs { listen, public_url, jwt, oidc, schedule, access_token_max_lifetime, webhooks } = args;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Error::Config(format!("cannot listen on {listen}: {e}")))?;
    let address = listener.local_addr().map_err(|e| Error::Config(format!("no local address: {e}")))?;
    let mut state = AppState::new(vault, &public_url.unwrap_or_else(|| format!("http://{address}")))?;
    state.access_tokens.max_lifetime_secs = access_token_max_lifetime;
    state.webhooks = std::sync::Arc::new(webhooks);
    if let Some(config) = jwt {
        state.jwt = Some(std::sync::Arc::new(tokenvault_serve::jwt::JwtVerifier::new(config).await?));
    }
    if let Some(config) = oidc {
        state.oidc = Some(std::sync::Arc::new(tokenvault_serve::console::oidc::OidcLogin::discover(config).await?));
    }
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
    println!("Console: {}  (admins sign in with an API key; users arrive by console links)", state.console_url());
    if state.oidc.is_some() {
        println!(
            "Console sign-in redirect URI to register at your identity provider: {}",
            state.console_oidc_callback_url()
        );
    }
    tracing::info!(%address, "serving");
    // One signal stops both the server and the scheduler.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let stopping = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    let scheduler = schedule.map(|schedule| {
        tracing::info!(
            every_s = schedule.interval.as_secs(),
            within_s = schedule.horizon.as_secs(),
            "background refresh on"
        );
        tokio::spawn(scheduler::run(state.vault.acting_as(Actor::scheduler()), schedule, stopped.clone()))
    });
    // Every serve delivers the outbox: whichever claims an event first sends it.
    let deliveries = tokio::spawn(tokenvault_serve::webhooks::run(
        state.vault.acting_as(Actor::scheduler()),
        state.webhooks.clone(),
        stopped.clone(),
    ));
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    serve::serve(listener, serve::router(state), serve::ConnectionLimits::default(), stopping(stopped))
        .await
        .map_err(|e| Error::Config(format!("the server failed: {e}")))?;
    if let Some(scheduler) = scheduler {
        let _ = scheduler.await;
    }
    let _ = deliveries.await;
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
