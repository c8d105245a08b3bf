//! Tenants' webhooks: the routes that set them, and the delivery of their events.
//!
//! A webhook's URL must be at an origin the operator allowed for webhooks
//! (`--allow-webhook`, `allowed_webhook_origins`), a list apart from the providers' egress.
//! [`run`] delivers the outbox: every second it claims due events (shared with every other
//! `serve` on the store, see `tokenvault::outbox`), asks the component to sign each one with
//! its tenant's secret, and posts it as the Standard Webhooks specification says
//! (`webhook-id`, `webhook-timestamp`, `webhook-signature`). A 2xx answer delivers it;
//! anything else is tried again later. Bodies and headers carry no value.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinSet;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::api_error::ApiError;
use super::auth::Caller;
use tokenvault::error::Error;
use tokenvault::events::{Event, EventType, SignedDelivery, WebhookConfig, WebhookInfo};
use tokenvault::http::Origin;
use tokenvault::outbox::{Claimed, Outbox, RetryPolicy, new_event};
use tokenvault::{Vault, parse_json};

/// Events one delivery pass claims at most, and sends at once.
const PASS_EVENTS: usize = 32;
/// Time between delivery passes.
const PASS_EVERY: Duration = Duration::from_secs(1);

/// Where webhooks may point, how they are sent, and how failed deliveries are retried.
pub struct Webhooks {
    allowed: Vec<Origin>,
    pub retry: RetryPolicy,
    client: reqwest::Client,
}

impl Webhooks {
    /// `allowed`: the origins webhooks may point to (none: no webhook can be set).
    pub fn new(allowed: Vec<Origin>, retry: RetryPolicy) -> tokenvault::Result<Self> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none()) // a redirect could leave the allowed origins
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(15))
            .user_agent(concat!("tokenvault-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Config(format!("no HTTP client for webhooks: {e}")))?;
        Ok(Webhooks { allowed, retry, client })
    }

    fn allows(&self, url: &str) -> bool {
        url.parse::<axum::http::Uri>().ok().and_then(|uri| Origin::of(&uri)).is_some_and(|o| self.allowed.contains(&o))
    }

    /// Post one signed delivery; what went wrong in tokenvault's words (never the URL).
    async fn send(&self, signed: &SignedDelivery, id: &str, timestamp: u64, body: Vec<u8>) -> Result<(), String> {
        if !self.allows(&signed.url) {
            return Err("the webhook URL's origin is no longer allowed (--allow-webhook)".into());
        }
        let sent = self
            .client
            .post(&signed.url)
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", &signed.signature)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(answer) if answer.status().is_success() => Ok(()),
            Ok(answer) => Err(format!("HTTP {}", answer.status().as_u16())),
            Err(err) if err.is_timeout() => Err("timed out".into()),
            Err(err) if err.is_connect() => Err("could not connect".into()),
            Err(_) => Err("the request failed".into()),
        }
    }
}

/// A delivery's body: the event's id, type and time, and what it is about.
pub fn body(event: &Event) -> Vec<u8> {
    let mut data = serde_json::to_value(event).expect("events serialize");
    if let Some(fields) = data.as_object_mut() {
        for moved_or_private in ["id", "type", "at_us", "delivery"] {
            fields.remove(moved_or_private);
        }
    }
    let at = std::time::UNIX_EPOCH + Duration::from_micros(event.at_us);
    let body = serde_json::json!({
        "id": event.id,
        "type": event.kind.name(),
        "timestamp": humantime::format_rfc3339_micros(at).to_string(),
        "data": data,
    });
    serde_json::to_vec(&body).expect("bodies serialize")
}

// ---- delivery ----------------------------------------------------------------------

/// What one delivery pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassReport {
    pub delivered: usize,
    pub failed: usize,
    pub given_up: usize,
    pub dropped: usize,
}

/// Deliver the outbox until `stop` turns true.
pub async fn run(vault: Vault, webhooks: Arc<Webhooks>, mut stop: watch::Receiver<bool>) {
    loop {
        let report = pass(&vault, &webhooks).await;
        if report.failed + report.given_up > 0 {
            tracing::info!(
                delivered = report.delivered,
                failed = report.failed,
                given_up = report.given_up,
                "webhook deliveries"
            );
        }
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return,
            () = tokio::time::sleep(PASS_EVERY) => {}
        }
    }
}

/// Claim what is due and deliver it, all at once.
pub async fn pass(vault: &Vault, webhooks: &Arc<Webhooks>) -> PassReport {
    let mut report = PassReport::default();
    let claims = match Outbox::new(&*vault.services().storage).claim_due(now_ms(vault), PASS_EVENTS).await {
        Ok(claims) => claims,
        Err(err) => {
            tracing::warn!(error = %err, "webhook delivery: the outbox could not be read; the next pass retries");
            return report;
        }
    };
    vault.metrics().webhook_backlog(claims.waiting);
    let mut sending = JoinSet::new();
    for claimed in claims.claimed {
        sending.spawn(deliver(vault.clone(), webhooks.clone(), claimed));
    }
    while let Some(outcome) = sending.join_next().await {
        let Ok(outcome) = outcome else { continue };
        vault.metrics().webhook_delivery(outcome.name());
        match outcome {
            Outcome::Delivered => report.delivered += 1,
            Outcome::Failed => report.failed += 1,
            Outcome::GivenUp => report.given_up += 1,
            Outcome::Dropped => report.dropped += 1,
        }
    }
    report
}

#[derive(Clone, Copy)]
enum Outcome {
    Delivered,
    Failed,
    GivenUp,
    Dropped,
}

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Failed => "failed",
            Outcome::GivenUp => "given-up",
            Outcome::Dropped => "dropped",
        }
    }
}

async fn deliver(vault: Vault, webhooks: Arc<Webhooks>, claimed: Claimed) -> Outcome {
    let outbox = Outbox::new(&*vault.services().storage);
    let body = body(&claimed.event);
    let timestamp = unix_now();
    let tried = match vault.sign_delivery(&claimed.event, timestamp, &body).await {
        // The tenant has no webhook now, or does not want this type.
        Ok(None) => return settle(outbox.done(&claimed).await, Outcome::Dropped),
        Ok(Some(signed)) => webhooks.send(&signed, &claimed.event.id, timestamp, body).await,
        Err(err) => Err(format!("could not be signed ({})", err.kind())),
    };
    match tried {
        Ok(()) => settle(outbox.done(&claimed).await, Outcome::Delivered),
        Err(why) => {
            let jitter = crate::scheduler::random_fraction();
            match outbox.failed(claimed, &why, now_ms(&vault), &webhooks.retry, jitter).await {
                Ok(true) => {
                    tracing::warn!(reason = %why, "a webhook event was not delivered within the retry window");
                    Outcome::GivenUp
                }
                Ok(false) => Outcome::Failed,
                Err(err) => settle(Err(err), Outcome::Failed),
            }
        }
    }
}

/// An outbox write that failed leaves the claim to run out: the event is tried again.
fn settle(written: Result<(), tokenvault::storage::StorageError>, outcome: Outcome) -> Outcome {
    if let Err(err) = written {
        tracing::warn!(error = %err, "webhook delivery: the outbox could not be updated; the event will be sent again");
    }
    outcome
}

/// `webhook-timestamp`: when the delivery is sent, by this machine's clock (receivers
/// compare it with theirs).
fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The component's clock, in which events are timed.
fn now_ms(vault: &Vault) -> u64 {
    vault.services().clock.now().as_millis() as u64
}

// ---- routes ------------------------------------------------------------------------

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct TenantPath {
    tenant: String,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct WebhookSet {
    url: String,
    events: Vec<String>,
    /// The signing secret (`whsec_…`), present only when it was made: keep it now, it is
    /// not shown again. Verify deliveries with a Standard Webhooks library.
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
}

/// Set the tenant's webhook: where its connection events are posted (`events`: which
/// types; empty: all). The first set, and one with `rotate_secret`, answers the signing
/// secret once.
#[utoipa::path(put, path = "/v1/tenants/{tenant}/webhook", tag = "webhooks", params(TenantPath),
    request_body = WebhookConfig,
    responses((status = 200, body = WebhookSet), (status = "4XX", body = Error)))]
pub(crate) async fn put_webhook(
    caller: Caller,
    State(state): State<AppState>,
    Path(path): Path<TenantPath>,
    body: Bytes,
) -> Result<Json<WebhookSet>, ApiError> {
    caller.for_tenant(&path.tenant)?;
    let config: WebhookConfig = parse_json("webhook", &body)?;
    if !state.webhooks.allows(&config.url) {
        return Err(Error::invalid_input(
            "the webhook URL is not at an origin this service may send to (serve --allow-webhook)",
        )
        .into());
    }
    let secret = caller.vault(&state).put_webhook(&path.tenant, &config).await?;
    Ok(Json(WebhookSet { url: config.url, events: config.events, secret }))
}

/// The tenant's webhook, without its secret.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/webhook", tag = "webhooks", params(TenantPath),
    responses((status = 200, body = WebhookInfo), (status = "4XX", body = Error)))]
pub(crate) async fn get_webhook(
    caller: Caller,
    State(state): State<AppState>,
    Path(path): Path<TenantPath>,
) -> Result<Json<WebhookInfo>, ApiError> {
    caller.for_tenant(&path.tenant)?;
    match caller.vault(&state).get_webhook(&path.tenant).await? {
        Some(info) => Ok(Json(info)),
        None => Err(Error::not_found("this tenant has no webhook").into()),
    }
}

/// Remove the tenant's webhook: its events are no longer kept or sent.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/webhook", tag = "webhooks", params(TenantPath),
    responses((status = 204), (status = "4XX", body = Error)))]
pub(crate) async fn remove_webhook(
    caller: Caller,
    State(state): State<AppState>,
    Path(path): Path<TenantPath>,
) -> Result<StatusCode, ApiError> {
    caller.for_tenant(&path.tenant)?;
    caller.vault(&state).remove_webhook(&path.tenant).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, ToSchema)]
pub(crate) struct PingResult {
    /// The ping's `webhook-id`.
    id: String,
    /// Whether the receiver answered 2xx.
    delivered: bool,
    /// What went wrong, when it did not (`HTTP 500`, `timed out`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Send a `ping` event to the tenant's webhook now, signed as every event is, and say
/// how the receiver answered.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/webhook/test", tag = "webhooks", params(TenantPath),
    responses((status = 200, body = PingResult), (status = "4XX", body = Error)))]
pub(crate) async fn test_webhook(
    caller: Caller,
    State(state): State<AppState>,
    Path(path): Path<TenantPath>,
) -> Result<Json<PingResult>, ApiError> {
    caller.for_tenant(&path.tenant)?;
    let vault = caller.vault(&state);
    let ping = new_event(EventType::Ping, &path.tenant, vault.services().clock.now().as_micros() as u64)?;
    let body = body(&ping);
    let timestamp = unix_now();
    let Some(signed) = vault.sign_delivery(&ping, timestamp, &body).await? else {
        return Err(Error::not_found("this tenant has no webhook").into());
    };
    let sent = state.webhooks.send(&signed, &ping.id, timestamp, body).await;
    Ok(Json(PingResult { id: ping.id, delivered: sent.is_ok(), error: sent.err() }))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::Router;
    use axum::routing::post;

    use super::*;

    async fn listen(app: Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        origin
    }

    fn signed(url: String) -> SignedDelivery {
        SignedDelivery { url, signature: "v1,c2lnbmF0dXJl".into() }
    }

    /// The origin is checked when each delivery is sent (the allow-list may have shrunk
    /// since the webhook was set), and a redirect is an answer, never followed.
    #[tokio::test]
    async fn a_delivery_goes_only_to_an_allowed_origin_and_follows_no_redirect() {
        let reached = Arc::new(AtomicUsize::new(0));
        let elsewhere = listen(Router::new().route(
            "/in",
            post({
                let reached = reached.clone();
                move || async move {
                    reached.fetch_add(1, Ordering::SeqCst);
                    StatusCode::NO_CONTENT
                }
            }),
        ))
        .await;
        let to = format!("{elsewhere}/in");
        let redirecting = listen(
            Router::new()
                .route("/hook", post(move || async move { (StatusCode::TEMPORARY_REDIRECT, [("location", to)]) })),
        )
        .await;
        let webhooks = Webhooks::new(vec![redirecting.parse().unwrap()], RetryPolicy::default()).unwrap();

        let redirected = webhooks.send(&signed(format!("{redirecting}/hook")), "evt_1", 1, b"{}".to_vec()).await;
        assert_eq!(redirected, Err("HTTP 307".into()));
        let not_allowed = webhooks.send(&signed(format!("{elsewhere}/in")), "evt_2", 1, b"{}".to_vec()).await;
        assert_eq!(not_allowed, Err("the webhook URL's origin is no longer allowed (--allow-webhook)".into()));
        assert_eq!(reached.load(Ordering::SeqCst), 0, "nothing reached the origin not allowed");

        // Allowed, it is reached: the receiver above works.
        let allowing = Webhooks::new(vec![elsewhere.parse().unwrap()], RetryPolicy::default()).unwrap();
        assert_eq!(allowing.send(&signed(format!("{elsewhere}/in")), "evt_3", 1, b"{}".to_vec()).await, Ok(()));
        assert_eq!(reached.load(Ordering::SeqCst), 1);
    }
}
