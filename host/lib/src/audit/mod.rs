//! The audit capability: an event for every call, naming who asked, written before what
//! the call would hand out leaves the sandbox.
//!
//! An event carries identifiers and an outcome, nothing else: the component's WIT
//! `audit.event` has no field that could hold a value, and the host adds only who asked.
//! Sinks: the [`Trail`] in the vault's storage (the default: shared by every host on the
//! store, and a hash chain that [`Trail::verify`] checks), a [`JsonLinesAudit`] file as an
//! optional extra ([`Tee`]), and [`MemoryAudit`] for embedders' tests.
//!
//! A call whose event cannot be written fails (the component is stopped at the event, so
//! nothing it would return is handed out) unless the operator chose to keep serving
//! ([`OnAuditFailure::Serve`]), in which case the sink counts the events it lost.

mod file;
mod trail;

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use wasmtime::component::HasData;

use crate::error::Error;
use crate::metrics::Metrics;
pub use file::JsonLinesAudit;
pub use tokenvault_model::{AuditAction, AuditEvent, AuditOutcome};
pub use trail::{Break, Trail, Verification};

use crate::bindings::tokenvault::vault::audit as wit;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditRecord {
    /// Unix milliseconds.
    pub at_ms: u64,
    pub action: String,
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Who asked: see [`Actor`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
}

/// Who asked for a call, as its audit event names them: `api-key:ID`, `jwt:SUBJECT`,
/// `access-token:ID`, `console:SUBJECT`, `cli:USER` or `scheduler`. Identifiers only,
/// never a credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor(String);

impl Actor {
    pub fn api_key(id: &str) -> Self {
        Actor(format!("api-key:{id}"))
    }
    pub fn jwt(subject: &str) -> Self {
        Actor(format!("jwt:{subject}"))
    }
    pub fn access_token(id: &str) -> Self {
        Actor(format!("access-token:{id}"))
    }
    pub fn console(subject: &str) -> Self {
        Actor(format!("console:{subject}"))
    }
    /// The operating-system user running the CLI: their name, or else their uid.
    pub fn cli() -> Self {
        let user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).ok().filter(|u| !u.is_empty());
        Actor(format!("cli:{}", user.unwrap_or_else(uid)))
    }
    pub fn scheduler() -> Self {
        Actor("scheduler".into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// This process's user id, as `uid N` (where the platform has one).
fn uid() -> String {
    #[cfg(unix)]
    if let Ok(me) = std::fs::metadata("/proc/self") {
        return format!("uid {}", std::os::unix::fs::MetadataExt::uid(&me));
    }
    "unknown".into()
}

/// Which events to read back: each field set must match exactly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub tenant: Option<String>,
    pub user: Option<String>,
    pub provider: Option<String>,
    pub action: Option<String>,
    pub outcome: Option<String>,
}

impl AuditFilter {
    pub fn matches(&self, record: &AuditRecord) -> bool {
        let field = |wanted: &Option<String>, got: Option<&str>| wanted.as_deref().is_none_or(|w| Some(w) == got);
        field(&self.tenant, record.tenant.as_deref())
            && field(&self.user, record.user.as_deref())
            && field(&self.provider, record.provider.as_deref())
            && field(&self.action, Some(&record.action))
            && field(&self.outcome, Some(&record.outcome))
    }
}

/// A page of events to read, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditQuery {
    pub filter: AuditFilter,
    /// Only events after this time (Unix milliseconds): the page ends at the first event,
    /// newest first, at or before it (events are in the order hosts appended them, whose
    /// clocks may differ a little).
    pub after_ms: Option<u64>,
    /// Where the previous page ended.
    pub cursor: Option<String>,
    pub limit: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditPage {
    pub events: Vec<AuditEntry>,
    /// Pass back for the next (older) page; none after the last.
    pub cursor: Option<String>,
}

/// An event of the trail: its position in the chain and what it records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditEntry {
    pub id: u64,
    #[serde(flatten)]
    pub record: AuditRecord,
}

/// An audit event that could not be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the audit log could not record the call ({0}), so it was refused and nothing was handed out")]
pub struct AuditUnavailable(pub String);

/// What a call does when its audit event cannot be written (`audit_on_failure` in
/// tokenvault.toml).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnAuditFailure {
    /// The call fails with a storage error: nothing is done that the trail does not show.
    #[default]
    Refuse,
    /// The call goes on; the loss is logged and counted ([`AuditSink::events_lost`]).
    Serve,
}

#[async_trait::async_trait]
pub trait AuditSink: Send + Sync {
    /// Write one event, whole or not at all; it is kept when this returns.
    async fn record(&self, record: &AuditRecord) -> Result<(), AuditUnavailable>;
    fn describe(&self) -> String;
    /// Events this sink failed to write and let pass (see [`KeepServing`]).
    fn events_lost(&self) -> u64 {
        0
    }
    /// A page of events, newest first; `None` when this sink cannot be read back.
    async fn read(&self, _query: &AuditQuery) -> Result<Option<AuditPage>, Error> {
        Ok(None)
    }
}

/// Two sinks, each event written to both (the first, then the other): the trail and an
/// extra file, say. Read back from the first.
pub struct Tee {
    pub first: Arc<dyn AuditSink>,
    pub also: Arc<dyn AuditSink>,
}

#[async_trait::async_trait]
impl AuditSink for Tee {
    async fn record(&self, record: &AuditRecord) -> Result<(), AuditUnavailable> {
        self.first.record(record).await?;
        self.also.record(record).await
    }

    fn describe(&self) -> String {
        format!("{}, and {}", self.first.describe(), self.also.describe())
    }

    fn events_lost(&self) -> u64 {
        self.first.events_lost() + self.also.events_lost()
    }

    async fn read(&self, query: &AuditQuery) -> Result<Option<AuditPage>, Error> {
        self.first.read(query).await
    }
}

/// A sink that lets every call go on when its event cannot be written
/// ([`OnAuditFailure::Serve`]): the loss is logged and counted instead.
pub struct KeepServing {
    sink: Arc<dyn AuditSink>,
    lost: AtomicU64,
}

impl KeepServing {
    pub fn new(sink: Arc<dyn AuditSink>) -> Self {
        KeepServing { sink, lost: AtomicU64::new(0) }
    }
}

#[async_trait::async_trait]
impl AuditSink for KeepServing {
    async fn record(&self, record: &AuditRecord) -> Result<(), AuditUnavailable> {
        if let Err(e) = self.sink.record(record).await {
            self.lost.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "audit event lost; serving on as audit_on_failure = \"serve\" says");
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("{}, serving on when it fails", self.sink.describe())
    }

    async fn read(&self, query: &AuditQuery) -> Result<Option<AuditPage>, Error> {
        self.sink.read(query).await
    }

    fn events_lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }
}

/// Keeps events in memory, for embedders' tests.
#[derive(Default)]
pub struct MemoryAudit {
    pub records: Mutex<Vec<AuditRecord>>,
}

#[async_trait::async_trait]
impl AuditSink for MemoryAudit {
    async fn record(&self, record: &AuditRecord) -> Result<(), AuditUnavailable> {
        self.records.lock().unwrap().push(record.clone());
        Ok(())
    }

    fn describe(&self) -> String {
        "in memory".into()
    }
}

/// A sink that names `actor` as who asked, on each event that names nobody: what one
/// call's `audit` import reaches, and what the host's own audited changes are given.
pub struct Attributed<'a> {
    pub sink: &'a dyn AuditSink,
    pub actor: Option<&'a Actor>,
    /// Where each event is counted, as a call of its action and outcome.
    pub metrics: Option<&'a Metrics>,
}

#[async_trait::async_trait]
impl AuditSink for Attributed<'_> {
    async fn record(&self, record: &AuditRecord) -> Result<(), AuditUnavailable> {
        if let Some(metrics) = self.metrics {
            metrics.call(&record.action, &record.outcome, record.provider.as_deref());
        }
        let recorded = match (self.actor, &record.actor) {
            (Some(actor), None) => {
                self.sink.record(&AuditRecord { actor: Some(actor.as_str().to_owned()), ..record.clone() }).await
            }
            _ => self.sink.record(record).await,
        };
        if let (Err(_), Some(metrics)) = (&recorded, self.metrics) {
            metrics.storage_error();
        }
        recorded
    }

    fn describe(&self) -> String {
        self.sink.describe()
    }

    fn events_lost(&self) -> u64 {
        self.sink.events_lost()
    }

    async fn read(&self, query: &AuditQuery) -> Result<Option<AuditPage>, Error> {
        self.sink.read(query).await
    }
}

/// The component's `audit` import, served by a call's sink.
pub(crate) struct AuditImport;

impl HasData for AuditImport {
    type Data<'a> = Attributed<'a>;
}

/// Each event becomes a record of the sink, naming who asked.
impl wit::Host for Attributed<'_> {
    async fn emit(&mut self, event: wit::Event) -> wasmtime::Result<()> {
        let event = AuditEvent::from(event);
        // An error here stops the component at the event: the call fails, and what it
        // would have returned never leaves the sandbox.
        self.record(&AuditRecord {
            at_ms: event.at_ms,
            action: event.action.name().into(),
            outcome: event.outcome.name().into(),
            tenant: event.tenant,
            user: event.user,
            provider: event.provider,
            name: event.name,
            // Named here, so that `record` need not copy the event to add it.
            actor: self.actor.map(|a| a.as_str().to_owned()),
        })
        .await
        .map_err(wasmtime::Error::new)
    }
}
