//! tokenvault's reference host: runs the token-custody component under wasmtime and
//! supplies its capabilities (storage, keys, audit, outgoing HTTP behind an allow-list).
//!
//! ```no_run
//! # async fn demo() -> tokenvault::Result<()> {
//! use tokenvault::{ConnectionKey, Options, Vault};
//! let vault = Vault::open(&Options::from_data_dir("./tokenvault-data".as_ref())?).await?;
//! let token = vault.get(&ConnectionKey::new("acme", "alice", "github", "default")).await?;
//! # let _ = token; Ok(()) }
//! ```

pub mod audit;
mod bindings;
pub mod capabilities;
pub mod clock;
pub mod config;
pub mod error;
pub mod http;
pub mod keys;
pub mod metrics;
pub mod outbox;
pub mod reencrypt;
pub mod runtime;
pub mod storage;
mod tls;
mod vault;

pub use clock::Clock;
pub use config::{Options, SandboxLimits};
pub use error::{Error, ProviderFailure, Result, VaultError};
pub use runtime::{COMPONENT_WASM, Services};
pub use tokenvault_model::events;
pub use tokenvault_model::{
    AuthorizationRequest, ClientAuth, ConnectLink, Connected, ConnectionInfo, ConnectionKey, ConnectionKind,
    ConnectionName, ConnectionStatus, DEFAULT_CONNECTION_NAME, DeviceAuthorization, DeviceStatus, DuePage, ErasePage,
    ErasedConnection, ProviderConfig, ProviderInfo, ProxyRequest, ProxyResponse, RefreshOutcome, RemovalReceipt,
    SweepPage, TemplateRef, TokenGrant, TokenOrLink, TokenSet, UpstreamRevocation, UserConnections, UserPage,
    parse_json,
};
pub use vault::{Session, Vault};
