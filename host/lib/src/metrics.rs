//! What the vault is doing, for Prometheus: calls by operation and outcome, refreshes by
//! provider and outcome, upstream latency, the instance pool, storage errors, the
//! background scheduler and webhook deliveries. Labels are operations, outcomes and provider names only: never a
//! value, a tenant, a user or a connection.

use std::sync::atomic::{AtomicI64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    operation: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefreshLabels {
    provider: String,
    outcome: String,
}

pub struct Metrics {
    registry: Registry,
    calls: Family<CallLabels, Counter>,
    refreshes: Family<RefreshLabels, Counter>,
    upstream_seconds: Histogram,
    upstream_failures: Counter,
    storage_errors: Counter,
    pool_in_use: Gauge,
    pool_waiting: Gauge,
    audit_lost: Counter,
    pass_seconds: Histogram,
    pass_due: Gauge,
    webhook_deliveries: Family<DeliveryLabels, Counter>,
    webhook_backlog: Gauge,
    /// Audit events lost as last read from the sink: the counter moves by the difference.
    audit_lost_seen: AtomicI64,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tokenvault");
        let metrics = Metrics {
            calls: Family::default(),
            refreshes: Family::default(),
            // 1 ms to about 33 s.
            upstream_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            upstream_failures: Counter::default(),
            storage_errors: Counter::default(),
            pool_in_use: Gauge::default(),
            pool_waiting: Gauge::default(),
            audit_lost: Counter::default(),
            // 1 ms to about 4 min.
            pass_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 18)),
            pass_due: Gauge::default(),
            webhook_deliveries: Family::default(),
            webhook_backlog: Gauge::default(),
            audit_lost_seen: AtomicI64::new(0),
            registry: Registry::default(),
        };
        registry.register("calls", "Calls finished, by operation and outcome", metrics.calls.clone());
        registry.register("refreshes", "Upstream token refreshes, by provider and outcome", metrics.refreshes.clone());
        registry.register(
            "upstream_response_seconds",
            "Time from sending a request to a provider to its response head",
            metrics.upstream_seconds.clone(),
        );
        registry.register(
            "upstream_failures",
            "Requests to providers that got no response (refused, timed out, too large)",
            metrics.upstream_failures.clone(),
        );
        registry.register(
            "storage_errors",
            "Storage calls that failed (not conflicts)",
            metrics.storage_errors.clone(),
        );
        registry.register("pool_slots_in_use", "Sandbox instances running a call", metrics.pool_in_use.clone());
        registry.register(
            "pool_waiting_callers",
            "Calls waiting for a free sandbox instance",
            metrics.pool_waiting.clone(),
        );
        registry.register(
            "audit_events_lost",
            "Audit events not written, let pass as audit_on_failure = \"serve\" allows",
            metrics.audit_lost.clone(),
        );
        registry.register(
            "scheduler_pass_seconds",
            "How long a background refresh pass took",
            metrics.pass_seconds.clone(),
        );
        registry.register(
            "scheduler_connections_due",
            "Connections due for refresh in the last background pass",
            metrics.pass_due.clone(),
        );
        registry.register(
            "webhook_deliveries",
            "Webhook delivery tries: delivered, failed (retried later), given-up (after the retry window), dropped (no webhook wants it)",
            metrics.webhook_deliveries.clone(),
        );
        registry.register(
            "webhook_backlog",
            "Events waiting in the outbox at the last delivery pass (up to the pass's scan limit)",
            metrics.webhook_backlog.clone(),
        );
        Metrics { registry, ..metrics }
    }
}

impl Metrics {
    /// A call ended: its audit action and outcome; for a refresh, its provider's too.
    pub(crate) fn call(&self, action: &str, outcome: &str, provider: Option<&str>) {
        self.calls.get_or_create(&CallLabels { operation: action.into(), outcome: outcome.into() }).inc();
        if action == "token-refresh"
            && let Some(provider) = provider
        {
            self.refreshes.get_or_create(&RefreshLabels { provider: provider.into(), outcome: outcome.into() }).inc();
        }
    }

    pub(crate) fn upstream(&self, seconds: Option<f64>) {
        match seconds {
            Some(seconds) => self.upstream_seconds.observe(seconds),
            None => {
                self.upstream_failures.inc();
            }
        }
    }

    pub(crate) fn storage_error(&self) {
        self.storage_errors.inc();
    }

    pub(crate) fn waiting(&self, by: i64) {
        self.pool_waiting.inc_by(by);
    }

    /// A background pass ended.
    pub fn scheduler_pass(&self, seconds: f64, due: usize) {
        self.pass_seconds.observe(seconds);
        self.pass_due.set(due as i64);
    }

    /// A webhook delivery try ended: `delivered`, `failed`, `given-up` or `dropped`.
    pub fn webhook_delivery(&self, outcome: &str) {
        self.webhook_deliveries.get_or_create(&DeliveryLabels { outcome: outcome.into() }).inc();
    }

    /// Events waiting in the outbox, as a delivery pass counted them.
    pub fn webhook_backlog(&self, waiting: usize) {
        self.webhook_backlog.set(waiting as i64);
    }

    /// The Prometheus text format (OpenMetrics 1.0), with the pool and the audit sink read now.
    pub(crate) fn encode(&self, slots_in_use: usize, audit_lost: u64) -> String {
        self.pool_in_use.set(slots_in_use as i64);
        let lost = audit_lost as i64;
        let before = self.audit_lost_seen.swap(lost, Ordering::Relaxed);
        if lost > before {
            self.audit_lost.inc_by((lost - before) as u64);
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String");
        text
    }
}
