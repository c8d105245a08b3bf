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
pub mod runtime;
pub mod storage;
pub mod types;
mod vault;

pub use clock::Clock;
pub use config::{Options, SandboxLimits};
pub use error::{Error, ProviderFailure, Result};
pub use runtime::{COMPONENT_WASM, Services};
pub use types::*;
pub use vault::{Session, Vault};
