//! Builds the guest component for wasm32-wasip2 so that one `cargo build` is enough.
//! The component is embedded in the host (see `runtime::COMPONENT_WASM`).

mod component_build;

use std::path::PathBuf;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest_dir.ancestors().nth(2).unwrap().to_owned(); // host/lib -> the workspace
    for watched in ["guest/src", "guest/Cargo.toml", "wit", "Cargo.lock", "host/lib/component_build.rs"] {
        println!("cargo:rerun-if-changed={}", workspace.join(watched).display());
    }
    println!("cargo:rerun-if-env-changed=TOKENVAULT_GUEST_WASM");

    // A prebuilt component may be supplied instead (e.g. by packagers).
    if let Some(prebuilt) = std::env::var_os("TOKENVAULT_GUEST_WASM") {
        println!("cargo:rustc-env=TOKENVAULT_COMPONENT_PATH={}", PathBuf::from(prebuilt).display());
        return;
    }
    let wasm = component_build::build_component(&workspace, "tokenvault-guest");
    println!("cargo:rustc-env=TOKENVAULT_COMPONENT_PATH={}", wasm.display());
}
