//! The vault world's generated types and traits (wasmtime's `bindgen!`): the exports the
//! host calls, and the custom imports each capability module implements; and each
//! generated type's conversion to and from its `tokenvault-model` value.

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "tokenvault:vault/vault",
    // Every import may wait: storage and the audit trail on the store, the keyring when
    // its copy of the keyring record is stale.
    imports: { default: async | trappable },
    exports: { default: async },
    with: {
        "wasi:io": wasmtime_wasi::p2::bindings::io,
        "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
        "wasi:random": wasmtime_wasi::p2::bindings::random,
        "wasi:http": wasmtime_wasi_http::p2::bindings::http,
    },
});

mod model_conversions {
    use super::exports::tokenvault::vault::{connect, keys, proxy, tokens, webhooks};
    use super::tokenvault::vault::{audit, storage, types};

    tokenvault_model::wit_conversions!(
        types = types,
        tokens = tokens,
        connect = connect,
        keys = keys,
        proxy = proxy,
        webhooks = webhooks,
        audit = audit,
        storage = storage
    );
}
