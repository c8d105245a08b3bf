//! tokenvault's guest: all token logic, in plain Rust modules that also build and test
//! natively. The WebAssembly component is the thin shell in `component`. The values it
//! passes are `tokenvault-model`'s, shared with the hosts.

pub use tokenvault_model as model;

pub mod connect;
pub mod device;
pub mod discovery;
pub mod expiry;
pub mod oauth;
pub mod platform;
pub mod provider;
pub mod proxy;
pub mod record;
pub mod refresh;
pub mod reseal;
pub mod revocation;
pub mod seal;
pub mod templates;
pub mod tokens;
pub mod vault;
pub mod webhooks;

#[cfg(test)]
mod memory;

#[cfg(all(target_arch = "wasm32", feature = "component"))]
mod component;
