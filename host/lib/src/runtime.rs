//! The sandbox: one wasmtime `Engine`, the component pre-instantiated, and a fresh
//! instance in its own `Store` for every call (but a [`crate::Session`]'s `get`s, and
//! [`crate::Vault::get_warm`]'s, on an instance kept for its tenant), with a memory cap and
//! a deadline. A trap fails that call alone; its store (and instance) is dropped with it.

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::component::{Component, InstancePre, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimits, StoreLimitsBuilder, Trap,
    UpdateDeadline,
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::audit::{
    Actor, Attributed, AuditImport, AuditSink, AuditUnavailable, JsonLinesAudit, KeepServing, OnAuditFailure, Tee,
    Trail,
};
use crate::clock::Clock;
use crate::config::{Options, SandboxLimits};
use crate::error::{Error, Result};
use crate::http::{Egress, EgressHooks, EgressPolicy};
use crate::keys::{KeyringImport, Keys, RELOAD_AFTER};
use crate::metrics::Metrics;
use crate::storage::{Changes, Storage, StorageImport};

use crate::bindings::exports::tokenvault::vault::{connect, keys, providers, proxy, tokens, webhooks};
use crate::bindings::tokenvault::vault::{audit, keyring, storage as wit_storage, types as wit};

/// The component this host was built with.
pub const COMPONENT_WASM: &[u8] = include_bytes!(env!("TOKENVAULT_COMPONENT_PATH"));

const EPOCH_TICK: Duration = Duration::from_millis(10);

/// What the host supplies to the component's imports.
#[derive(Clone)]
pub struct Services {
    pub storage: Arc<dyn Storage>,
    pub keys: Arc<Keys>,
    pub audit: Arc<dyn AuditSink>,
    /// The wall clock the component reads: [`Clock::system`] unless you move it.
    pub clock: Clock,
}

pub(crate) struct Runtime {
    engine: Engine,
    pre: InstancePre<HostState>,
    exports: Arc<ExportIndices>,
    /// One permit per pool slot: calls beyond `max_instances` wait for a slot instead of
    /// failing to instantiate.
    slots: Arc<Semaphore>,
    pub(crate) services: Services,
    /// Callers waiting for records to change (another caller's refresh), and the writes
    /// that wake them.
    changes: Arc<Changes>,
    pub(crate) egress: Arc<Egress>,
    pub(crate) sandbox: SandboxLimits,
    pub(crate) metrics: Arc<Metrics>,
    /// Instances left idle by [`crate::Vault::get_warm`], each with its tenant, the least
    /// recently used first; at most [`Runtime::warm_capacity`].
    warm: Mutex<VecDeque<(String, Instance)>>,
    _ticker: EpochTicker,
}

/// An instance kept for more than one call of one tenant: a [`crate::Session`]'s, or an
/// idle one of the warm pool. Fields drop in order: the instance returns to the pool
/// before its slot's permit does.
pub(crate) struct Instance {
    store: Store<HostState>,
    tokens: tokens::Guest,
    /// When it was made: an instance keeps the data keys it opened records with, so the
    /// warm pool lets it serve no longer than a host keeps its copy of the keyring.
    made: Instant,
    _slot: OwnedSemaphorePermit,
}

impl Instance {
    /// `get` on this instance, with the full deadline, for `actor`. After a trap (an
    /// `Err`) the instance must not be used again.
    pub(crate) async fn get(
        &mut self,
        actor: Option<&Actor>,
        deadline: Duration,
        key: &wit::ConnectionKey,
    ) -> wasmtime::Result<std::result::Result<wit::TokenSet, wit::Error>> {
        let state = self.store.data_mut();
        state.deadline = Instant::now() + deadline;
        state.reads_latest = false;
        state.actor = actor.cloned();
        self.tokens.call_get(&mut self.store, key).await
    }
}

/// The data of one call's store.
pub(crate) struct HostState {
    /// When the running call is interrupted; reset by each call on a kept [`Instance`].
    pub(crate) deadline: Instant,
    wasi: WasiCtx,
    table: ResourceTable,
    http: WasiHttpCtx,
    hooks: EgressHooks,
    limits: StoreLimits,
    services: Services,
    /// Wakes callers waiting for a record this call writes.
    changes: Arc<Changes>,
    /// Set once the running call has written to storage or waited on it: from then on its
    /// reads go to the store itself, never a cached copy (see [`StorageImport`]).
    pub(crate) reads_latest: bool,
    /// Who the call is for, named on its audit events.
    pub(crate) actor: Option<Actor>,
    metrics: Arc<Metrics>,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.hooks }
    }
}

impl Services {
    /// The services an operator configured: storage, keyring (made on first use, or
    /// imported from the old keyring file) and audit trail (and extra audit file) from
    /// `options`, and the system clock.
    pub async fn open(options: &Options) -> Result<Self> {
        // Private to its owner: it holds the master key, the database and the audit log.
        let mut data_dir = std::fs::DirBuilder::new();
        data_dir.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut data_dir, 0o700);
        data_dir
            .create(&options.data_dir)
            .map_err(|e| Error::Config(format!("cannot create data directory {}: {e}", options.data_dir.display())))?;
        let storage = options.storage.open().await?;
        let trail: Arc<dyn AuditSink> = Arc::new(Trail::new(storage.clone()));
        let audit: Arc<dyn AuditSink> = match &options.audit_log {
            Some(path) => Arc::new(Tee { first: trail, also: Arc::new(JsonLinesAudit::open(path)?) }),
            None => trail,
        };
        Ok(Services {
            keys: Arc::new(
                Keys::open(
                    storage.clone(),
                    options.master_key.clone(),
                    Some(&options.keyring),
                    options.storage.is_embedded(),
                )
                .await?,
            ),
            storage,
            audit: match options.audit_on_failure {
                OnAuditFailure::Refuse => audit,
                OnAuditFailure::Serve => Arc::new(KeepServing::new(audit)),
            },
            clock: Clock::system(),
        })
    }
}

impl Runtime {
    pub(crate) fn new(
        component_wasm: &[u8],
        services: Services,
        egress: EgressPolicy,
        sandbox: SandboxLimits,
        cache_dir: Option<&Path>,
    ) -> Result<Self> {
        let engine = new_engine(&sandbox)?;
        let component = load_component(&engine, component_wasm, cache_dir)?;
        let (pre, exports) = pre_instantiate(&engine, &component)
            .map_err(|e| Error::Config(format!("cannot link the component: {e}")))?;
        let ticker = EpochTicker::start(engine.clone());
        let slots = Arc::new(Semaphore::new(sandbox.max_instances as usize));
        let metrics = Arc::new(Metrics::default());
        Ok(Runtime {
            engine,
            pre,
            exports: Arc::new(exports),
            slots,
            services,
            changes: Arc::default(),
            egress: Arc::new(Egress::new(egress, metrics.clone())?),
            sandbox,
            metrics,
            warm: Mutex::default(),
            _ticker: ticker,
        })
    }

    /// An [`Instance`] made now, for `actor`.
    pub(crate) async fn instance(&self, actor: Option<&Actor>) -> Result<Instance> {
        let (slot, mut store, exports) = self.instantiate(actor).await?;
        let tokens = exports.tokens(&mut store)?;
        Ok(Instance { store, tokens, made: Instant::now(), _slot: slot })
    }

    /// Idle instances kept at most: those of `warm_instances`, leaving at least half the
    /// pool's slots to calls.
    fn warm_capacity(&self) -> usize {
        self.sandbox.warm_instances.min(self.sandbox.max_instances / 2) as usize
    }

    /// The idle instance of `tenant` used last, if one is kept and not older than
    /// [`RELOAD_AFTER`] (a data key retired since it opened a record is then
    /// forgotten as soon as the keyring's copy is).
    pub(crate) fn take_warm(&self, tenant: &str) -> Option<Instance> {
        let instance = {
            let mut warm = self.warm.lock().expect("the warm pool's lock is never poisoned");
            let at = warm.iter().rposition(|(of, _)| of == tenant)?;
            warm.remove(at).map(|(_, instance)| instance)?
        };
        // Too old: dropped outside the lock, as a store's drop resets its memory.
        (instance.made.elapsed() < RELOAD_AFTER).then_some(instance)
    }

    /// Keep `instance` idle for `tenant`'s next call, dropping the least recently used
    /// one when the pool is full; not one too old to be taken again.
    pub(crate) fn keep_warm(&self, tenant: &str, instance: Instance) {
        let capacity = self.warm_capacity();
        if capacity == 0 || instance.made.elapsed() >= RELOAD_AFTER {
            return;
        }
        let dropped = {
            let mut warm = self.warm.lock().expect("the warm pool's lock is never poisoned");
            warm.push_back((tenant.to_owned(), instance));
            (warm.len() > capacity).then(|| warm.pop_front())
        };
        drop(dropped); // outside the lock: a store's drop resets its memory
    }

    /// A fresh instance in a fresh store, for one call (or one [`crate::Session`]), and the
    /// permit for its pool slot; waits while every slot is in use. Drop the permit last
    /// (`let (_slot, mut store, vault) = …` does): the store returns the slot to the pool
    /// only when it drops.
    pub(crate) async fn instantiate(
        &self,
        actor: Option<&Actor>,
    ) -> Result<(OwnedSemaphorePermit, Store<HostState>, Exports)> {
        let slot = {
            let _waiting = Waiting::on(&self.metrics);
            self.slots.clone().acquire_owned().await.expect("the slot semaphore is never closed")
        };
        let state = HostState {
            deadline: Instant::now() + self.sandbox.deadline,
            wasi: WasiCtx::builder().wall_clock(self.services.clock.clone()).build(),
            table: ResourceTable::new(),
            http: WasiHttpCtx::new(),
            hooks: EgressHooks(self.egress.clone()),
            limits: StoreLimitsBuilder::new().memory_size(self.sandbox.memory_bytes).trap_on_grow_failure(true).build(),
            services: self.services.clone(),
            changes: self.changes.clone(),
            reads_latest: false,
            actor: actor.cloned(),
            metrics: self.metrics.clone(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limits);
        // Every tick the guest yields to the executor, so a busy call cannot starve the
        // others sharing its thread; once past the deadline it is interrupted.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|store| {
            Ok(if Instant::now() >= store.data().deadline {
                UpdateDeadline::Interrupt
            } else {
                UpdateDeadline::Yield(1)
            })
        });
        let instance = self.pre.instantiate_async(&mut store).await.map_err(sandbox_error)?;
        let vault = Exports { instance, indices: self.exports.clone() };
        Ok((slot, store, vault))
    }
}

/// A caller counted as waiting for a pool slot until this drops (the wait ends, or the
/// caller goes away).
struct Waiting<'a>(&'a Metrics);

impl<'a> Waiting<'a> {
    fn on(metrics: &'a Metrics) -> Self {
        metrics.waiting(1);
        Waiting(metrics)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting(-1);
    }
}

impl Runtime {
    /// Sandbox instances running a call now.
    pub(crate) fn slots_in_use(&self) -> usize {
        self.sandbox.max_instances as usize - self.slots.available_permits()
    }
}

/// Where the exported functions are in the component, found once: the vault world's
/// interfaces.
struct ExportIndices {
    tokens: tokens::GuestIndices,
    providers: providers::GuestIndices,
    connect: connect::GuestIndices,
    keys: keys::GuestIndices,
    proxy: proxy::GuestIndices,
    webhooks: webhooks::GuestIndices,
}

impl ExportIndices {
    fn new(pre: &InstancePre<HostState>) -> wasmtime::Result<Self> {
        Ok(ExportIndices {
            tokens: tokens::GuestIndices::new(pre)?,
            providers: providers::GuestIndices::new(pre)?,
            connect: connect::GuestIndices::new(pre)?,
            keys: keys::GuestIndices::new(pre)?,
            proxy: proxy::GuestIndices::new(pre)?,
            webhooks: webhooks::GuestIndices::new(pre)?,
        })
    }
}

/// One instance's exports. Each interface is looked up (and its functions' types checked)
/// when a call first uses it, not all of them when the instance starts: that was a quarter
/// of a fresh instance's cost (BENCHMARKS.md).
pub(crate) struct Exports {
    instance: wasmtime::component::Instance,
    indices: Arc<ExportIndices>,
}

impl Exports {
    pub(crate) fn tokens(&self, store: &mut Store<HostState>) -> Result<tokens::Guest> {
        self.indices.tokens.load(store, &self.instance).map_err(sandbox_error)
    }

    pub(crate) fn providers(&self, store: &mut Store<HostState>) -> Result<providers::Guest> {
        self.indices.providers.load(store, &self.instance).map_err(sandbox_error)
    }

    pub(crate) fn connect(&self, store: &mut Store<HostState>) -> Result<connect::Guest> {
        self.indices.connect.load(store, &self.instance).map_err(sandbox_error)
    }

    pub(crate) fn keys(&self, store: &mut Store<HostState>) -> Result<keys::Guest> {
        self.indices.keys.load(store, &self.instance).map_err(sandbox_error)
    }

    pub(crate) fn proxy(&self, store: &mut Store<HostState>) -> Result<proxy::Guest> {
        self.indices.proxy.load(store, &self.instance).map_err(sandbox_error)
    }

    pub(crate) fn webhooks(&self, store: &mut Store<HostState>) -> Result<webhooks::Guest> {
        self.indices.webhooks.load(store, &self.instance).map_err(sandbox_error)
    }
}

/// Link the component to the host's imports, checking that every import is provided
/// with the right type and that it exports the vault world.
fn pre_instantiate(
    engine: &Engine,
    component: &Component,
) -> wasmtime::Result<(InstancePre<HostState>, ExportIndices)> {
    let mut linker: Linker<HostState> = Linker::new(engine);
    // Standard WASI: the component's std imports cli and friends; the WasiCtx of
    // `instantiate` grants them nothing (no env, args, preopens, stdin, sockets).
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    // The custom imports: each capability module implements its interface over the part
    // of a call's state it needs.
    wit_storage::add_to_linker::<_, StorageImport>(&mut linker, |s| StorageImport {
        storage: &s.services.storage,
        changes: &s.changes,
        deadline: s.deadline,
        metrics: &s.metrics,
        reads_latest: &mut s.reads_latest,
    })?;
    keyring::add_to_linker::<_, KeyringImport>(&mut linker, |s| &*s.services.keys)?;
    audit::add_to_linker::<_, AuditImport>(&mut linker, |s| Attributed {
        sink: &*s.services.audit,
        actor: s.actor.as_ref(),
        metrics: Some(&s.metrics),
    })?;
    let pre = linker.instantiate_pre(component)?;
    let exports = ExportIndices::new(&pre)?;
    Ok((pre, exports))
}

/// Whether this host could run `component`; why not when it could not.
pub(crate) fn check_links(engine: &Engine, component: &Component) -> std::result::Result<(), String> {
    pre_instantiate(engine, component).map(drop).map_err(|e| format!("{e:#}"))
}

/// A call the component could not finish, as its error: refused at an audit event that
/// could not be written, or a failure of the sandbox itself.
pub(crate) fn sandbox_error(err: wasmtime::Error) -> Error {
    if let Some(refused) = err.downcast_ref::<AuditUnavailable>() {
        return Error::storage(refused.to_string());
    }
    let message = match err.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => "the call ran past its deadline and was stopped".to_owned(),
        Some(trap) => format!("the component trapped: {trap}"),
        // The root cause names the failure (a memory cap, say); the rest is a wasm backtrace.
        None => format!("the component failed: {}", err.root_cause()),
    };
    tracing::error!(error = ?err, "component call failed; its instance was discarded");
    Error::Sandbox(message)
}

fn new_engine(sandbox: &SandboxLimits) -> Result<Engine> {
    let mut pool = PoolingAllocationConfig::default();
    let n = sandbox.max_instances;
    pool.total_component_instances(n)
        .total_core_instances(n.saturating_mul(4))
        .total_memories(n.saturating_mul(2))
        .total_tables(n.saturating_mul(4))
        .total_stacks(n)
        .max_memory_size(sandbox.memory_bytes);
    // A returned slot's pages go back to the kernel, and the next call in it faults them in
    // again: most of a fresh instance's cost (BENCHMARKS.md). Where Linux's PAGEMAP_SCAN
    // tells wasmtime which pages a call dirtied, it resets just those and keeps the low
    // part of memory (stack, data, the first heap pages), the fiber stack and the tables
    // resident. Without the scan it would memset the whole resident size on every return.
    if PoolingAllocationConfig::is_pagemap_scan_available() {
        pool.pagemap_scan(wasmtime::Enabled::Yes)
            .linear_memory_keep_resident(4 << 20)
            .async_stack_keep_resident(64 << 10)
            .table_keep_resident(4 << 10);
    }
    let mut config = Config::new();
    config.epoch_interruption(true);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config).map_err(|e| Error::Config(format!("cannot create the wasmtime engine: {e}")))
}

/// Compile the component, or load it precompiled from the cache when neither it nor the
/// engine's settings changed.
pub(crate) fn load_component(engine: &Engine, wasm: &[u8], cache_dir: Option<&Path>) -> Result<Component> {
    let compile =
        || Component::new(engine, wasm).map_err(|e| Error::Config(format!("cannot compile the component: {e}")));
    let Some(dir) = cache_dir else {
        return compile();
    };
    let mut engine_hash = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut engine_hash);
    let path = dir.join(format!(
        "tokenvault-{}-{:016x}.cwasm",
        &hex::encode(Sha256::digest(wasm))[..16],
        engine_hash.finish()
    ));
    if path.exists() {
        // SAFETY: the file is one this host wrote into the operator's data directory for
        // this exact component and engine configuration (both are in its name); one that
        // fails to load is compiled again and replaced.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(component) => return Ok(component),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "precompiled component unusable; compiling")
            }
        }
    }
    let component = compile()?;
    let cached = component.serialize().map_err(std::io::Error::other).and_then(|bytes| {
        std::fs::create_dir_all(dir)?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, &path)
    });
    if let Err(e) = cached {
        tracing::warn!(dir = %dir.display(), error = %e, "could not cache the precompiled component");
    }
    Ok(component)
}

/// Advances the engine's epoch, which bounds every call's run time.
struct EpochTicker(Arc<AtomicBool>);

impl EpochTicker {
    fn start(engine: Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("tokenvault-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawn epoch thread");
        EpochTicker(stop)
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}
