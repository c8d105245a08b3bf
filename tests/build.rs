//! Builds the test-only sandbox component (`sandbox-guest/`), which the sandbox tests load
//! in place of the product component (it is never part of the `tokenvault` binary), and the
//! Python package's egress component (`host/python/egress`), which the package test puts
//! in the wheel it builds.

#[path = "../host/lib/component_build.rs"]
mod component_build;

use std::path::PathBuf;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest_dir.parent().unwrap().to_owned();
    for watched in [
        "tests/sandbox-guest/src",
        "tests/sandbox-guest/Cargo.toml",
        "host/python/egress/src",
        "host/python/egress/wit/egress.wit",
        "host/python/egress/Cargo.toml",
        "wit",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", workspace.join(watched).display());
    }
    let wasm = component_build::build_component(&workspace, "tokenvault-sandbox-guest");
    println!("cargo:rustc-env=TOKENVAULT_SANDBOX_COMPONENT_PATH={}", wasm.display());
    let egress = component_build::build_component(&workspace, "tokenvault-egress");
    println!("cargo:rustc-env=TOKENVAULT_EGRESS_COMPONENT_PATH={}", egress.display());
}
