//! Background refresh: renew tokens before they expire, so callers of `get` rarely wait
//! on a provider.
//!
//! Every `interval` (±10 % jitter, so processes sharing a database drift apart), a pass
//! pages through all connections (`due_for_refresh`) and calls `refresh_if_due` on those
//! expiring within `horizon`, in a shuffled order, each under its provider's budget of
//! refreshes per minute. `refresh_if_due` takes the same lease as every other caller and
//! re-checks expiry under it, so any number of `serve` processes (and the callers they
//! serve) cause one upstream refresh per token. Nothing here sees a token value. After
//! each pass, a sweep deletes pending flows and connect links that expired over an hour ago,
//! and audit entries past their retention.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use tokenvault::audit::Trail;
use tokenvault::{ConnectionKey, RefreshOutcome, SweepPage, Vault};

/// Connections read per `due_for_refresh` call.
const PAGE: u32 = 200;

#[derive(Debug, Clone)]
pub struct Schedule {
    /// Time between passes; each is jittered by up to 10 %.
    pub interval: Duration,
    /// Refresh tokens that expire within this much time.
    pub horizon: Duration,
    /// Upstream refreshes per provider per minute, at most.
    pub per_provider_per_minute: u32,
    /// After each pass, delete audit entries older than this; none keeps them all.
    pub audit_retention: Option<Duration>,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            interval: Duration::from_secs(60),
            horizon: Duration::from_secs(300),
            per_provider_per_minute: 120,
            audit_retention: None,
        }
    }
}

/// What one pass did, by connection.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassReport {
    pub due: usize,
    pub refreshed: usize,
    pub failed: usize,
}

/// Run passes until `stop` turns true. A refresh under way is never cut short (that could
/// spend a rotated refresh token without saving its successor); the pass stops after it.
pub async fn run(vault: Vault, schedule: Schedule, mut stop: watch::Receiver<bool>) {
    let mut budgets = Budgets::new(schedule.per_provider_per_minute);
    loop {
        let pause = schedule.interval.mul_f64(0.9 + 0.2 * random_fraction());
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return,
            () = tokio::time::sleep(pause) => {}
        }
        let started = Instant::now();
        let report = pass(&vault, &schedule, &mut budgets, &stop).await;
        vault.metrics().scheduler_pass(started.elapsed().as_secs_f64(), report.due);
        if report.due > 0 {
            tracing::info!(
                due = report.due,
                refreshed = report.refreshed,
                failed = report.failed,
                "background refresh"
            );
        }
        let swept = sweep(&vault, &stop).await;
        if swept > 0 {
            tracing::info!(deleted = swept, "swept expired pending flows and connect links");
        }
        if let Some(retention) = schedule.audit_retention {
            prune_audit(&vault, retention).await;
        }
    }
}

/// Delete the audit entries older than `retention` (the trail's checkpoint moves past them).
async fn prune_audit(vault: &Vault, retention: Duration) {
    let now_ms = vault.services().clock.now().as_millis() as u64;
    let before_ms = now_ms.saturating_sub(retention.as_millis() as u64);
    match Trail::new(vault.services().storage.clone()).prune(before_ms).await {
        Ok(0) => {}
        Ok(pruned) => tracing::info!(pruned, "deleted audit entries past their retention"),
        Err(err) => tracing::warn!(error = err.kind(), "pruning the audit trail failed; the next pass retries"),
    }
}

/// One pass over every connection, until done or `stop` turns true.
pub async fn pass(
    vault: &Vault,
    schedule: &Schedule,
    budgets: &mut Budgets,
    stop: &watch::Receiver<bool>,
) -> PassReport {
    let mut report = PassReport::default();
    let mut cursor = None;
    loop {
        let page = match vault.due_for_refresh(schedule.horizon, cursor.as_deref(), PAGE).await {
            Ok(page) => page,
            Err(err) => {
                tracing::warn!(error = err.kind(), "background refresh: listing failed; next pass retries");
                return report;
            }
        };
        let mut due = page.keys;
        shuffle(&mut due);
        report.due += due.len();
        for key in due {
            let mut stop = stop.clone();
            tokio::select! {
                _ = stop.wait_for(|stop| *stop) => return report,
                () = budgets.acquire(&key.provider) => {}
            }
            refresh_one(vault, &key, schedule.horizon, &mut report).await;
        }
        match page.cursor {
            Some(next) => cursor = Some(next),
            None => return report,
        }
    }
}

/// Delete pending flows, device flows and connect links that expired over an hour ago,
/// and expired console sessions.
pub async fn sweep(vault: &Vault, stop: &watch::Receiver<bool>) -> u32 {
    let mut deleted = match crate::console::session::Sessions::of(vault).sweep().await {
        Ok(swept) => swept,
        Err(err) => {
            tracing::warn!(error = err.kind(), "sweeping console sessions failed; the next pass retries");
            0
        }
    };
    let mut cursor = None;
    while !*stop.borrow() {
        match vault.sweep_expired(cursor.as_deref(), PAGE).await {
            Ok(SweepPage { deleted: step, cursor: next }) => {
                deleted += step;
                match next {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
            Err(err) => {
                tracing::warn!(error = err.kind(), "sweep failed; the next pass retries");
                break;
            }
        }
    }
    deleted
}

async fn refresh_one(vault: &Vault, key: &ConnectionKey, horizon: Duration, report: &mut PassReport) {
    match vault.refresh_if_due(key, horizon).await {
        Ok(RefreshOutcome::Refreshed) => report.refreshed += 1,
        Ok(RefreshOutcome::NotDue | RefreshOutcome::NotRenewable) => {} // another process was first
        Err(err) => {
            report.failed += 1;
            // Identifiers and the error's kind only: the message may say more than a log needs.
            tracing::warn!(
                tenant = key.tenant,
                user = key.user,
                provider = key.provider,
                name = key.name,
                error = err.kind(),
                "background refresh failed"
            );
        }
    }
}

/// A token bucket per provider: up to `per_minute` refreshes, refilled evenly.
pub struct Budgets {
    per_minute: u32,
    buckets: HashMap<String, (f64, Instant)>,
}

impl Budgets {
    pub fn new(per_minute: u32) -> Self {
        Budgets { per_minute: per_minute.max(1), buckets: HashMap::new() }
    }

    /// Wait until `provider` may be called once more, and spend that.
    pub async fn acquire(&mut self, provider: &str) {
        let capacity = f64::from(self.per_minute);
        let per_second = capacity / 60.0;
        let now = Instant::now();
        let (tokens, last) = self.buckets.entry(provider.to_owned()).or_insert((capacity, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * per_second).min(capacity);
        *last = now;
        if *tokens < 1.0 {
            let wait = Duration::from_secs_f64((1.0 - *tokens) / per_second);
            tokio::time::sleep(wait).await;
            *tokens = 1.0;
            *last = now + wait;
        }
        *tokens -= 1.0;
    }
}

/// A random number in 0..=1, for jitter.
pub(crate) fn random_fraction() -> f64 {
    let mut bytes = [0u8; 4];
    let _ = getrandom::fill(&mut bytes); // without randomness, no jitter: still correct
    f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX)
}

/// Fisher-Yates: processes walking the same page start on different connections.
fn shuffle<T>(items: &mut [T]) {
    for i in (1..items.len()).rev() {
        let j = (random_fraction() * (i + 1) as f64) as usize;
        items.swap(i, j.min(i));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_budget_spreads_a_burst_over_the_minute() {
        let mut budgets = Budgets::new(6); // one every 10 s once the bucket is empty
        let started = Instant::now();
        for _ in 0..6 {
            budgets.acquire("slow").await;
        }
        assert_eq!(started.elapsed(), Duration::ZERO, "a full bucket lets a burst through");
        budgets.acquire("slow").await;
        budgets.acquire("slow").await;
        assert_eq!(started.elapsed(), Duration::from_secs(20));
        budgets.acquire("other").await;
        assert_eq!(started.elapsed(), Duration::from_secs(20), "each provider has its own budget");
    }

    #[test]
    fn shuffling_keeps_every_item() {
        let mut items: Vec<u32> = (0..50).collect();
        shuffle(&mut items);
        let mut sorted = items.clone();
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
    }
}
