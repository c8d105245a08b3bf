//! The typed API embedders call. Each call runs in a fresh instance of the component, but
//! those of a [`Session`] and [`Vault::get_warm`], which reuse one of the same tenant's.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;

use crate::audit::{Actor, Attributed};
use crate::bindings::tokenvault::vault::types as wit;
use crate::config::Options;
use crate::config::SandboxLimits;
use crate::error::{Error, Result};
use crate::http::EgressPolicy;
use crate::metrics::Metrics;
use crate::runtime::{COMPONENT_WASM, Exports, HostState, Instance, Runtime, Services, sandbox_error};
use tokenvault_model::events::{Event, SignedDelivery, WebhookConfig, WebhookInfo};
use tokenvault_model::storage::ReencryptPage;
use tokenvault_model::*;

#[derive(Clone)]
pub struct Vault {
    runtime: Arc<Runtime>,
    /// Who calls through this handle, named on every audit event (see [`Vault::acting_as`]).
    actor: Option<Actor>,
}

impl Vault {
    /// Open the vault an operator configured: storage, keyring and audit log from `options`.
    pub async fn open(options: &Options) -> Result<Self> {
        let services = Services::open(options).await?;
        Self::with_services(services, options.egress.clone(), options.sandbox.clone(), options.cache_dir.as_deref())
    }

    /// Open a vault over services the embedder supplies.
    pub fn with_services(
        services: Services,
        egress: EgressPolicy,
        sandbox: SandboxLimits,
        cache_dir: Option<&std::path::Path>,
    ) -> Result<Self> {
        Self::with_component(COMPONENT_WASM, services, egress, sandbox, cache_dir)
    }

    /// Like [`Vault::with_services`], running another build of the component (one an
    /// operator pinned, say) instead of the one this host embeds. It must export the
    /// `tokenvault:vault/vault` world, and gets the same imports under the same limits.
    pub fn with_component(
        component_wasm: &[u8],
        services: Services,
        egress: EgressPolicy,
        sandbox: SandboxLimits,
        cache_dir: Option<&std::path::Path>,
    ) -> Result<Self> {
        let runtime = Arc::new(Runtime::new(component_wasm, services, egress, sandbox, cache_dir)?);
        Ok(Vault { runtime, actor: None })
    }

    /// This vault, each call's audit events naming `actor` as who asked. Cheap: the
    /// handles share everything else.
    pub fn acting_as(&self, actor: Actor) -> Vault {
        Vault { runtime: self.runtime.clone(), actor: Some(actor) }
    }

    pub fn actor(&self) -> Option<&Actor> {
        self.actor.as_ref()
    }

    /// The audit sink, naming this handle's actor on the events the host writes itself
    /// (and counting them in the metrics, as the component's are).
    pub fn audit(&self) -> Attributed<'_> {
        Attributed {
            sink: &*self.runtime.services.audit,
            actor: self.actor.as_ref(),
            metrics: Some(&self.runtime.metrics),
        }
    }

    /// The vault's metrics, for what a host adds (its scheduler's passes).
    pub fn metrics(&self) -> &Metrics {
        &self.runtime.metrics
    }

    /// The metrics in the Prometheus text format (OpenMetrics 1.0), the instance pool and
    /// the audit sink's losses read now.
    pub fn metrics_text(&self) -> String {
        self.runtime.metrics.encode(self.runtime.slots_in_use(), self.runtime.services.audit.events_lost())
    }

    async fn instantiate(&self) -> Result<(OwnedSemaphorePermit, wasmtime::Store<HostState>, Exports)> {
        self.runtime.instantiate(self.actor.as_ref()).await
    }

    pub fn services(&self) -> &Services {
        &self.runtime.services
    }

    pub fn egress(&self) -> &EgressPolicy {
        &self.runtime.egress.policy
    }

    pub fn sandbox(&self) -> &SandboxLimits {
        &self.runtime.sandbox
    }

    // ---- tokens ---------------------------------------------------------------------

    pub async fn store(&self, key: &ConnectionKey, grant: &TokenGrant) -> Result<ConnectionInfo> {
        let (_slot, mut store, vault) = self.instantiate().await?;
        finish(vault.tokens(&mut store)?.call_store(&mut store, &key.clone().into(), &grant.clone().into()).await)
    }

    /// A token fresh enough to use, refreshed first when it is about to expire.
    pub async fn get(&self, key: &ConnectionKey) -> Result<TokenSet> {
        let (_slot, mut store, vault) = self.instantiate().await?;
        finish(vault.tokens(&mut store)?.call_get(&mut store, &key.clone().into()).await)
    }

    pub async fn refresh(&self, key: &ConnectionKey) -> Result<TokenSet> {
        let (_slot, mut store, vault) = self.instantiate().await?;
        finish(vault.tokens(&mut store)?.call_refresh(&mut store, &key.clone().into()).await)
    }

    /// Like [`Vault::get`]; but when the connection does not exist or must be connected
    /// again, a one-time connect link for it (to hand the user; see [`Vault::open_link`]).
    /// `scopes`: none requests the provider's configured ones.
    pub async fn get_or_link(&self, key: &ConnectionKey, scopes: Option<&[String]>) -> Result<TokenOrLink> {
        let (_slot, mut store, vault) = self.instantiate().await?;
        let scopes = scopes.map(|s| s.to_vec());
        finish(vault.tokens(&mut store)?.call_get_or_link(&mut store, &key.clone().into(), scopes.as_deref()).await)
    }

    /// Revoke the connection's tokens at the provider (RFC 7009), then delete it; the
    /// receipt says what happened upstream.
    pub async fn remove(&self, key: &ConnectionKey) -> Result<RemovalReceipt> {
        let (_slot, mut store, vault) = self.instantiate().await?;
        finish(vault.tokens(&mut store)?.call_remove(&mut store, &key.clone().into()).await)
    }

    pub async fn list(&self, tenant: &str, user: &str) -> Result<Vec<ConnectionInfo>> {
        let (_slot, mut store, vault) = self.instantiate().await?;
        finish_each(vault.tokens(&mut store)?.call_list(&mut store, tenant, user).await)
    }

    /// Remove every connection of a user, each revoked upstream; a receipt each.
    pub async fn revoke_all(&self, tenant: &str, user: &str) -> Result<Vec<RemovalReceipt>> {
        let (_slot, mut store, vault) = self.instantiate().await?;
        finish_each(vault.tokens(&mut store)?.call_revoke_all(&mut store, tenant, user).await)
    }

    /// The tenant's users who hold connections: at most `limit` (1 to 1000) after the user
    /// `after`, each with all of their connections' names.
    pub async fn users(&self, tenant: &str, after: Option<&str>, limit: u32) -> Result<UserPage> {
        let (_slot, mut store, vault) = self.instantiate().await?;
        finish(vault.tokens(&mut store)?.call_users(&mut store, tenant, after, limit).await)
    }

    /// Background refresh, step one: of the next `limit` connections after `cursor` (every
    /// tenant's), those that can be renewed and whose token expires within `horizon`.
    pub async fn due_for_refresh(&self, horizon: Duration, cursor: Option<&str>, limit: u32) -> Result<DuePage> {
        let (_slot, mut store, vault) = self.instantiate().await?;
        finish(vault.tokens(&mut store)?.call_due_for_refresh(&mut store, secs(horizon), cursor, limit).await)
    }

    /// Background refresh, step two: refresh `key` if its token still expires within
    /// `horizon`, coordinated with every other caller (no value comes back).
    pub async fn refresh_if_due(&self, key: &ConnectionKey, horizon: Duration) -> Result<RefreshOutcome> {
        let (_slot, mut store, vault) = self.instantiate().await?;
        finish(vault.tokens(&mut store)?.call_refresh_if_due(&mut store, &key.clone().into(), secs(horizon)).await)
    }

    /// Housekeeping: one step of deleting pending flows, device flows and connect links
    /// that expired over an hour ago.
    pub async fn sweep_expired(&self, cursor: Option<&str>, limit: u32) -> Result<SweepPage> {
        let (_slot, mut store, vault) = self.instantiate().await?;
        finish(vault.connect(&mut store)?.call_sweep_expired(&mut store, cursor, limit).await)
    }

    /// Call the connection's provider API (its `api_base_url` joined with the request's
    /// path and query) with the connection's access token, which the component sets: the
    /// caller never holds it. See the WIT's `proxy.send`.
    pub async fn proxy(&self, key: &ConnectionKey, request: &ProxyRequest) -> Result<ProxyResponse> {
        let (_slot, mut store, vault) = self.instantiate().await?;
        finish(vault.proxy(&mut store)?.call_send(&mut store, &key.clone().into(), &request.clone().into()).await)
    }

    // ---- webhooks -------------------------------------------------------------------

    /// Set `tenant`'s webhook; the new signing secret (`whsec_…`) when one was made. Which
    /// URLs may be used is the caller's rule (`serve`'s webhook allow-list).
    pub async fn put_webhook(&self, tenant: &str, config: &WebhookConfig) -> Result<Option<String>> {
        let (_slot, mut store, vault) = self.instantiate().await?;
        finish(vault.webhooks(&mut store)?.call_put(&mut store, tenant, &config.clone().into()).await)
    }

    pub async fn get_webhook(&self, tenant: &str) -> Result<Option<WebhookInfo>> {
        let (_slot, mut store, vault) = self.instantiate().await?;
        let found = finish::<_, Option<_>>(vault.webhooks(&mut store)?.call_get(&mut store, tenant).await)?;
        Ok(found.map(|info: crate::bindings::exports::tokenvault::vault::webhooks::WebhookInfo| info.into()))
    }

    pub async fn remove_webhook(&self, tenant: &str) -> Result<()> {
        let (_slot, mut store, vault) = self.instantiate().await?;
        finish(vault.webhooks(&mut store)?.call_remove(&mut store, tenant).await)
    }

    /// Sign one delivery of `event` with its tenant's secret (see [`crate::outbox`]); none
    /// when the tenant has no webhook or does not want events of its type.
    pub async fn sign_delivery(&self, event: &Event, timestamp: u64, body: &[u8]) -> Result<Option<SignedDelivery>> {
        let (_slot, mut store, vault) = self.instantiate().await?;
        let signed = vault
            .webhooks(&mut store)?
            .call_sign(&mut store, &event.tenant, event.kind.name(), &event.id, timestamp, body)
            .await;
        let signed = finish::<_, Option<_>>(signed)?;
        Ok(signed.map(|signed: crate::bindings::exports::tokenvault::vault::webhooks::SignedDelivery| signed.into()))
    }

    // ---- keys -----------------------------------------------------------------------

    /// One step of re-encryption: of the next `limit` sealed records after `cursor`,
    /// re-seal those under an inactive key with the active one (see [`crate::reencrypt`]
    /// for the whole pass).
    pub async fn reencrypt_page(&self, cursor: Option<&str>, limit: u32) -> Result<ReencryptPage> {
        let (_slot, mut store, vault) = self.instantiate().await?;
        finish(vault.keys(&mut store)?.call_reencrypt(&mut store, cursor, limit).await)
    }

    /// One step of erasing `tenant` (see [`ErasePage`]): up to `limit` of its connections
    /// revoked upstream and deleted; once none is left, the rest of its records. Call again
    /// until `done`.
    pub async fn erase_tenant(&self, tenant: &str, limit: u32) -> Result<ErasePage> {
        let (_slot, mut store, vault) = self.instantiate().await?;
        finish(vault.tokens(&mut store)?.call_erase_tenant(&mut store, tenant, limit).await)
    }

    // ---- providers ------------------------------------------------------------------

    /// Add or replace one of the vault's providers, which every tenant uses.
    pub async fn put_provider(&self, config: &ProviderConfig) -> Result<ProviderInfo> {
        self.put_provider_of(None, config).await
    }

    /// Add or replace the vault's provider (`tenant` none) or a tenant's own, which its
    /// connections use instead of the vault's of that name.
    pub async fn put_provider_of(&self, tenant: Option<&str>, config: &ProviderConfig) -> Result<ProviderInfo> {
        let (_slot, mut store, vault) = self.instantiate().await?;
        finish(vault.providers(&mut store)?.call_put(&mut store, tenant, &config.clone().into()).await)
    }

    pub async fn provider(&self, name: &str) -> Result<ProviderInfo> {
        self.provider_of(None, name).await
    }

    /// The provider a connection of `tenant` named so uses: its own, else the vault's.
    pub async fn provider_of(&self, tenant: Option<&str>, name: &str) -> Result<ProviderInfo> {
        let (_slot, mut store, vault) = self.instantiate().await?;
        finish(vault.providers(&mut store)?.call_get(&mut store, tenant, name).await)
    }

    pub async fn providers(&self) -> Result<Vec<ProviderInfo>> {
        self.providers_of(None).await
    }

    /// The vault's providers; with a tenant, those its connections use (each says whose).
    pub async fn providers_of(&self, tenant: Option<&str>) -> Result<Vec<ProviderInfo>> {
        let (_slot, mut store, vault) = self.instantiate().await?;
        finish_each(vault.providers(&mut store)?.call_list(&mut store, tenant).await)
    }

    pub async fn remove_provider(&self, name: &str) -> Result<()> {
        self.remove_provider_of(None, name).await
    }

    /// Remove the vault's provider of that name, or `tenant`'s own.
    pub async fn remove_provider_of(&self, tenant: Option<&str>, name: &str) -> Result<()> {
        let (_slot, mut store, vault) = self.instantiate().await?;
        finish(vault.providers(&mut store)?.call_remove(&mut store, tenant, name).await)
    }
}

impl Vault {
    // ---- connecting accounts --------------------------------------------------------

    /// Start connecting `key`: the URL to send the user's browser to. The provider will
    /// redirect to `redirect_uri` with the query to pass to [`Vault::complete`].
    /// `scopes`: none requests the provider's configured ones. `browser`: where a redirect
    /// URI others can reach completes the flow, a secret only the user's browser holds (32
    /// random bytes, base64url); `complete` then requires it.
    pub async fn begin(
        &self,
        key: &ConnectionKey,
        redirect_uri: &str,
        scopes: Option<&[String]>,
        browser: Option<&str>,
    ) -> Result<AuthorizationRequest> {
        let (_slot, mut store, vault) = self.instantiate().await?;
        let scopes = scopes.map(|s| s.to_vec());
        finish(
            vault
                .connect(&mut store)?
                .call_begin(&mut store, &key.clone().into(), redirect_uri, scopes.as_deref(), browser)
                .await,
        )
    }

    /// Finish a flow with the query string of the redirect (`code` and `state`, or
    /// `error`); the tokens are stored. A state works once. `browser`: the secret of the
    /// browser the redirect came from, which a flow begun for one requires.
    pub async fn complete(&self, callback_query: &str, browser: Option<&str>) -> Result<Connected> {
        let (_slot, mut store, vault) = self.instantiate().await?;
        finish(vault.connect(&mut store)?.call_complete(&mut store, callback_query, browser).await)
    }

    /// A one-time connect link for `key`, valid for fifteen minutes.
    pub async fn link(&self, key: &ConnectionKey, scopes: Option<&[String]>) -> Result<ConnectLink> {
        let (_slot, mut store, vault) = self.instantiate().await?;
        let scopes = scopes.map(|s| s.to_vec());
        finish(vault.connect(&mut store)?.call_link(&mut store, &key.clone().into(), scopes.as_deref()).await)
    }

    /// Spend a connect link and begin the flow for the connection it names, with this
    /// host's redirect URI: the URL to send the user's browser to. `browser`: as for
    /// [`Vault::begin`].
    pub async fn open_link(
        &self,
        code: &str,
        redirect_uri: &str,
        browser: Option<&str>,
    ) -> Result<AuthorizationRequest> {
        let (_slot, mut store, vault) = self.instantiate().await?;
        finish(vault.connect(&mut store)?.call_open_link(&mut store, code, redirect_uri, browser).await)
    }

    /// Start the device flow (RFC 8628) for `key`: the code the user enters, and where.
    pub async fn begin_device(&self, key: &ConnectionKey, scopes: Option<&[String]>) -> Result<DeviceAuthorization> {
        let (_slot, mut store, vault) = self.instantiate().await?;
        let scopes = scopes.map(|s| s.to_vec());
        finish(vault.connect(&mut store)?.call_begin_device(&mut store, &key.clone().into(), scopes.as_deref()).await)
    }

    /// One poll of a device flow. The component makes at most one request to the
    /// provider per interval, however often this is called.
    pub async fn poll_device(&self, handle: &str) -> Result<DeviceStatus> {
        let (_slot, mut store, vault) = self.instantiate().await?;
        finish(vault.connect(&mut store)?.call_poll_device(&mut store, handle).await)
    }

    /// Obtain the client's own token with the client-credentials grant and keep it as
    /// connection `key`; [`Vault::get`] obtains a new one when it is due.
    pub async fn connect_client(&self, key: &ConnectionKey, scopes: Option<&[String]>) -> Result<ConnectionInfo> {
        let (_slot, mut store, vault) = self.instantiate().await?;
        let scopes = scopes.map(|s| s.to_vec());
        finish(vault.connect(&mut store)?.call_connect_client(&mut store, &key.clone().into(), scopes.as_deref()).await)
    }
}

/// One instance of the component kept for a series of `get`s by one tenant, one at a time:
/// each call after the first skips instantiation. Each call still gets the full deadline;
/// a call that traps takes the instance with it, and the next call gets a fresh one.
/// Instances are never shared across tenants, so a session refuses another tenant's key.
pub struct Session {
    vault: Vault,
    tenant: String,
    instance: Option<Instance>,
}

impl Vault {
    /// A [`Session`] for `tenant`, its instance made now.
    pub async fn session(&self, tenant: &str) -> Result<Session> {
        let instance = Some(self.runtime.instance(self.actor.as_ref()).await?);
        Ok(Session { vault: self.clone(), tenant: tenant.to_owned(), instance })
    }

    /// Like [`Vault::get`], on an instance that an earlier `get_warm` of the same tenant
    /// left idle when there is one (any handle's: each call names its own actor), and
    /// leaving its instance idle in turn. Up to [`SandboxLimits::warm_instances`] are kept,
    /// the least recently used dropped first; an instance that trapped is never kept.
    /// What one call leaves in an instance's memory a later call of the same tenant could
    /// see, never another tenant's: use [`Vault::get`] where even that must not be.
    pub async fn get_warm(&self, key: &ConnectionKey) -> Result<TokenSet> {
        let mut instance = match self.runtime.take_warm(&key.tenant) {
            Some(instance) => instance,
            None => self.runtime.instance(self.actor.as_ref()).await?,
        };
        let outcome = instance.get(self.actor.as_ref(), self.runtime.sandbox.deadline, &key.clone().into()).await;
        if outcome.is_ok() {
            self.runtime.keep_warm(&key.tenant, instance);
        }
        finish(outcome)
    }
}

impl Session {
    /// Like [`Vault::get`], on this session's instance.
    pub async fn get(&mut self, key: &ConnectionKey) -> Result<TokenSet> {
        if key.tenant != self.tenant {
            return Err(Error::invalid_input("this session serves another tenant"));
        }
        let vault = &self.vault;
        let instance = match &mut self.instance {
            Some(instance) => instance,
            empty => empty.insert(vault.runtime.instance(vault.actor.as_ref()).await?),
        };
        let outcome = instance.get(vault.actor.as_ref(), vault.runtime.sandbox.deadline, &key.clone().into()).await;
        if outcome.is_err() {
            self.instance = None; // it trapped
        }
        finish(outcome)
    }
}

/// One call's outcome: the component's answer in model types, or the sandbox's failure.
fn finish<T, U: From<T>>(result: wasmtime::Result<Result<T, wit::Error>>) -> Result<U> {
    match result {
        Ok(Ok(value)) => Ok(value.into()),
        Ok(Err(err)) => Err(Error::Vault(err.into())),
        Err(trap) => Err(sandbox_error(trap)),
    }
}

/// Like [`finish`], for a list.
fn finish_each<T, U: From<T>>(result: wasmtime::Result<Result<Vec<T>, wit::Error>>) -> Result<Vec<U>> {
    finish::<Vec<T>, Vec<T>>(result).map(|values| values.into_iter().map(Into::into).collect())
}

fn secs(duration: Duration) -> u32 {
    u32::try_from(duration.as_secs()).unwrap_or(u32::MAX)
}
