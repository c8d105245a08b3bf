//! Builds a component crate of this workspace for wasm32-wasip2. Shared by the build
//! scripts of the host (the product component) and of the tests (a test-only component).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Build `package` with the `guest` profile and return the path of its `.wasm`.
pub fn build_component(workspace: &Path, package: &str) -> PathBuf {
    ensure_wasm_target();

    // A target directory of its own: the outer cargo holds the lock on the main one. One
    // per package, too: the test component builds the product's crate as a dependency
    // (without its exports), which would otherwise overwrite the product's `.wasm`.
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"))
        .join("guest-component")
        .join(package);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args(["build", "--package", package, "--target", "wasm32-wasip2", "--profile", "guest"])
        .arg("--target-dir")
        .arg(&target_dir);
    // What the outer build set for the host must not leak into the guest's build.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("run cargo to build a component");
    if !status.success() {
        panic!(
            "building the component {package} failed; is the wasm32-wasip2 target installed? (rustup target add wasm32-wasip2)"
        );
    }
    let wasm = target_dir.join("wasm32-wasip2/guest").join(format!("{}.wasm", package.replace('-', "_")));
    assert!(wasm.exists(), "the build of {package} produced no {}", wasm.display());
    wasm
}

/// A fresh machine lacks the wasm32-wasip2 standard library, and rustup does not fetch a
/// target by itself; add it once, as `rustup target add` would.
fn ensure_wasm_target() {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let sysroot = Command::new(rustc).args(["--print", "sysroot"]).output().ok().filter(|o| o.status.success());
    let installed = sysroot
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()).join("lib/rustlib/wasm32-wasip2").exists())
        .unwrap_or(false);
    if !installed {
        println!("cargo:warning=installing the wasm32-wasip2 target with rustup");
        let added = Command::new("rustup").args(["target", "add", "wasm32-wasip2"]).status();
        if !matches!(added, Ok(s) if s.success()) {
            println!("cargo:warning=`rustup target add wasm32-wasip2` failed; install the target by hand");
        }
    }
}
