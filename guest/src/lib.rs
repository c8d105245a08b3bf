//! tokenvault's guest: all token logic, in plain Rust modules that also build and test
//! natively. The WebAssembly component is the thin shell in `component`.

pub mod connect;
pub mod device;
pub mod discovery;
pub mod error;
pub mod expiry;
pub mod model;
pub mod oauth;
pub mod platform;
pub mod provider;
pub mod record;
pub mod refresh;
pub mod revocation;
pub mod seal;
pub mod templates;
pub mod tokens;
pub mod vault;

#[cfg(test)]
mod memory;

#[cfg(all(target_arch = "wasm32", feature = "component"))]
mod component;
