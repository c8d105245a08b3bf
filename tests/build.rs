//! Builds the test-only sandbox component (`sandbox-guest/`), which the sandbox tests load
//! in place of the product component. It is never part of the `tokenvault` binary.

#[path = "../host/lib/component_build.rs"]
mod component_build;

use std::path::PathBuf;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest_dir.parent().unwrap().to_owned();
    for watched in ["tests/sandbox-guest/src", "tests/sandbox-guest/Cargo.toml", "wit", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", workspace.join(watched).display());
    }
    let wasm = component_build::build_component(&workspace, "tokenvault-sandbox-guest");
    println!("cargo:rustc-env=TOKENVAULT_SANDBOX_COMPONENT_PATH={}", wasm.display());
}
