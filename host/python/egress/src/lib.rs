//! The egress filter: a request leaves only for an origin the host allows, and never with
//! timeouts longer than the host's. Anything else is answered `HTTP-request-denied` before
//! a connection opens. The Rust host and the Node.js package check requests in their own
//! handler; wasmtime-py offers no per-request hook, so its host puts this component between
//! the tokenvault component and wasmtime's `wasi:http`.

#![cfg(target_arch = "wasm32")]

wit_bindgen::generate!({
    path: "wit",
    world: "tokenvault:egress/filter",
    generate_all,
});

use exports::wasi::http::outgoing_handler::Guest;
use tokenvault::egress::policy;
use wasi::http::outgoing_handler;
use wasi::http::types::{ErrorCode, FutureIncomingResponse, OutgoingRequest, RequestOptions, Scheme};

struct Filter;
export!(Filter);

impl Guest for Filter {
    fn handle(request: OutgoingRequest, options: Option<RequestOptions>) -> Result<FutureIncomingResponse, ErrorCode> {
        let scheme = match request.scheme() {
            Some(Scheme::Http) => "http".to_owned(),
            Some(Scheme::Https) | None => "https".to_owned(),
            Some(Scheme::Other(other)) => other,
        };
        let authority = request.authority().unwrap_or_default();
        if !policy::allowed(&scheme, &authority) {
            return Err(ErrorCode::HttpRequestDenied);
        }
        let options = options.unwrap_or_else(RequestOptions::new);
        let limits = policy::timeouts();
        clamp(options.connect_timeout(), limits.connect, |t| options.set_connect_timeout(Some(t)))?;
        clamp(options.first_byte_timeout(), limits.first_byte, |t| options.set_first_byte_timeout(Some(t)))?;
        clamp(options.between_bytes_timeout(), limits.between_bytes, |t| options.set_between_bytes_timeout(Some(t)))?;
        outgoing_handler::handle(request, Some(options))
    }
}

/// Set a timeout to the host's `limit` unless the request asked for a shorter one.
fn clamp(asked: Option<u64>, limit: u64, set: impl FnOnce(u64) -> Result<(), ()>) -> Result<(), ErrorCode> {
    match asked {
        Some(asked) if asked <= limit => Ok(()),
        _ => set(limit).map_err(|()| ErrorCode::InternalError(Some("the host's timeout could not be set".into()))),
    }
}
