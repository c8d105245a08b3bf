//! What the component may import, in one reviewed place. The test below fails the build
//! when the component's imports change until this list changes with them, so a new
//! capability cannot slip in unnoticed.

use wasmtime::Engine;
use wasmtime::component::Component;

use crate::error::{Error, Result};

/// Every interface the component imports, sorted.
pub const DECLARED_IMPORTS: &[&str] = &[
    // tokenvault's own capabilities: sealed-record storage, sealing keys, the audit sink.
    "tokenvault:vault/audit@0.1.0",
    "tokenvault:vault/keyring@0.1.0",
    "tokenvault:vault/storage@0.1.0",
    "tokenvault:vault/types@0.1.0",
    // Arrive with Rust's standard library and are never called; the host's `WasiCtx`
    // grants them nothing: no environment, arguments or stdin, and output goes nowhere.
    "wasi:cli/environment@0.2.12",
    "wasi:cli/exit@0.2.12",
    "wasi:cli/stderr@0.2.12",
    "wasi:cli/stdin@0.2.12",
    "wasi:cli/stdout@0.2.12",
    "wasi:cli/terminal-input@0.2.12",
    "wasi:cli/terminal-output@0.2.12",
    "wasi:cli/terminal-stderr@0.2.12",
    "wasi:cli/terminal-stdin@0.2.12",
    "wasi:cli/terminal-stdout@0.2.12",
    // Time, for expiry and leases.
    "wasi:clocks/monotonic-clock@0.2.12",
    "wasi:clocks/wall-clock@0.2.12",
    // Outgoing HTTP to the providers, behind the host's allow-list.
    "wasi:http/outgoing-handler@0.2.12",
    "wasi:http/types@0.2.12",
    "wasi:io/error@0.2.12",
    "wasi:io/poll@0.2.12",
    "wasi:io/streams@0.2.12",
    // Nonces, states, verifiers.
    "wasi:random/insecure-seed@0.2.12",
    "wasi:random/random@0.2.12",
];

/// The interfaces a component imports, sorted.
pub fn component_imports(wasm: &[u8]) -> Result<Vec<String>> {
    let engine = Engine::default();
    let component =
        Component::new(&engine, wasm).map_err(|e| Error::Config(format!("cannot compile the component: {e}")))?;
    let mut names: Vec<String> = component.component_type().imports(&engine).map(|(name, _)| name.to_owned()).collect();
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_component_imports_exactly_what_is_declared() {
        let actual = component_imports(crate::COMPONENT_WASM).unwrap();
        let declared: Vec<String> = DECLARED_IMPORTS.iter().map(|s| s.to_string()).collect();
        assert_eq!(actual, declared, "the component's imports changed: review them, then update DECLARED_IMPORTS");
    }
}
