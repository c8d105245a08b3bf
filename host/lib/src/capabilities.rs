//! What the component may touch, in one reviewed place: the interfaces it may import
//! ([`DECLARED_IMPORTS`], checked by a test that fails the build when the component's
//! imports change), and the report `tokenvault inspect` prints of a component and of
//! what this host grants each of its imports.

use serde::Serialize;
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::{Component, types::ComponentItem};

use crate::config::SandboxLimits;
use crate::error::{Error, Result};
use crate::http::EgressPolicy;
use crate::runtime::Services;

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

/// What no call of the component is ever given, whatever it imports.
pub const NEVER_GRANTED: &[&str] =
    &["environment variables", "arguments", "filesystem", "sockets", "stdin", "a terminal"];

/// The interfaces a component imports, sorted.
pub fn component_imports(wasm: &[u8]) -> Result<Vec<String>> {
    let engine = Engine::default();
    let component = compile(&engine, wasm)?;
    let mut names: Vec<String> = component.component_type().imports(&engine).map(|(name, _)| name.to_owned()).collect();
    names.sort();
    Ok(names)
}

fn compile(engine: &Engine, wasm: &[u8]) -> Result<Component> {
    Component::new(engine, wasm).map_err(|e| Error::Config(format!("cannot compile the component: {e}")))
}

/// A component, and what this host would grant it: what `tokenvault inspect` prints.
#[derive(Debug, Clone, Serialize)]
pub struct CapabilityReport {
    pub component: ComponentSummary,
    /// Whether this host can run the component: it provides every import and the
    /// component exports the `tokenvault:vault/vault` world.
    pub runs_here: bool,
    /// Why it cannot, when it cannot.
    pub problem: Option<String>,
    pub exports: Vec<ExportedInterface>,
    pub imports: Vec<ImportGrant>,
    pub never_granted: Vec<&'static str>,
    pub limits: Limits,
}

#[derive(Debug, Clone, Serialize)]
pub struct ComponentSummary {
    /// Where the bytes came from: a file, or "built-in" for the one this host embeds.
    pub source: String,
    /// Hex SHA-256 of the bytes, for pinning.
    pub sha256: String,
    pub bytes: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExportedInterface {
    pub name: String,
    pub functions: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImportGroup {
    /// A standard WASI interface.
    Wasi,
    /// One of tokenvault's own capabilities.
    Tokenvault,
    /// Anything else: this host provides none of these.
    Other,
}

#[derive(Debug, Clone, Serialize)]
pub struct ImportGrant {
    pub name: String,
    pub group: ImportGroup,
    /// What this host supplies to it; none when it supplies nothing (the component
    /// cannot be run here).
    pub granted: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Limits {
    pub memory_bytes: usize,
    pub call_deadline_ms: u128,
    pub max_instances: u32,
    pub connect_timeout_ms: u128,
    pub response_timeout_ms: u128,
    pub max_response_bytes: usize,
}

impl CapabilityReport {
    /// Describe `wasm` (from `source`) as a host with these services, egress policy and
    /// limits would run it. Fails only when the bytes are not a component.
    pub fn new(
        wasm: &[u8],
        source: &str,
        services: &Services,
        egress: &EgressPolicy,
        sandbox: &SandboxLimits,
    ) -> Result<Self> {
        let engine = Engine::default();
        let component = compile(&engine, wasm)?;
        let ty = component.component_type();
        let mut exports: Vec<ExportedInterface> = ty
            .exports(&engine)
            .map(|(name, item)| {
                let mut functions = match item.ty {
                    ComponentItem::ComponentInstance(instance) => instance
                        .exports(&engine)
                        .filter(|(_, f)| matches!(f.ty, ComponentItem::ComponentFunc(_)))
                        .map(|(f, _)| f.to_owned())
                        .collect(),
                    _ => Vec::new(),
                };
                functions.sort();
                ExportedInterface { name: name.to_owned(), functions }
            })
            .collect();
        exports.sort_by(|a, b| a.name.cmp(&b.name));
        let mut imports: Vec<ImportGrant> = ty
            .imports(&engine)
            .map(|(name, _)| {
                let (group, granted) = grant(name, services, egress);
                ImportGrant { name: name.to_owned(), group, granted }
            })
            .collect();
        imports.sort_by(|a, b| {
            (a.group != ImportGroup::Tokenvault, &a.name).cmp(&(b.group != ImportGroup::Tokenvault, &b.name))
        });
        let problem = crate::runtime::check_links(&engine, &component).err();
        Ok(CapabilityReport {
            component: ComponentSummary {
                source: source.to_owned(),
                sha256: hex::encode(Sha256::digest(wasm)),
                bytes: wasm.len(),
            },
            runs_here: problem.is_none(),
            problem,
            exports,
            imports,
            never_granted: NEVER_GRANTED.to_vec(),
            limits: Limits {
                memory_bytes: sandbox.memory_bytes,
                call_deadline_ms: sandbox.deadline.as_millis(),
                max_instances: sandbox.max_instances,
                connect_timeout_ms: egress.connect_timeout.as_millis(),
                response_timeout_ms: egress.response_timeout.as_millis(),
                max_response_bytes: egress.max_response_bytes,
            },
        })
    }
}

/// What the host's linker and `WasiCtx` (see `runtime.rs`) give an import: keep the two
/// in step. The sandbox test component proves the "nothing" answers by trying.
fn grant(import: &str, services: &Services, egress: &EgressPolicy) -> (ImportGroup, Option<String>) {
    let interface = import.split('@').next().unwrap_or(import);
    let nothing = |what: &str| Some(format!("nothing: {what}"));
    let tokenvault = |granted: String| (ImportGroup::Tokenvault, Some(granted));
    let wasi = |granted: Option<String>| (ImportGroup::Wasi, granted);
    match interface {
        "tokenvault:vault/storage" => tokenvault(format!("sealed records in {}", services.storage.describe())),
        "tokenvault:vault/keyring" => tokenvault(format!("sealing keys from {}", services.keys.describe())),
        "tokenvault:vault/audit" => tokenvault(format!("events to {}", services.audit.describe())),
        "tokenvault:vault/types" => tokenvault("types only".into()),
        "wasi:http/outgoing-handler" => wasi(Some(if egress.allowed.is_empty() {
            "no request: no origin is allowed".to_owned()
        } else {
            let origins: Vec<String> = egress.allowed.iter().map(|o| o.to_string()).collect();
            format!("requests to {} only", origins.join(", "))
        })),
        "wasi:http/types" | "wasi:io/error" | "wasi:io/poll" | "wasi:io/streams" => {
            wasi(Some("the types and streams of the requests above".into()))
        }
        "wasi:clocks/wall-clock" => wasi(Some("the host's clock".into())),
        "wasi:clocks/monotonic-clock" => wasi(Some("a timer".into())),
        "wasi:random/random" | "wasi:random/insecure" | "wasi:random/insecure-seed" => {
            wasi(Some("the host's random numbers".into()))
        }
        "wasi:cli/environment" => wasi(nothing("no environment variables, no arguments, no working directory")),
        "wasi:cli/exit" => wasi(Some("ends the call's instance".into())),
        "wasi:cli/stdin" => wasi(nothing("an empty stream")),
        "wasi:cli/stdout" | "wasi:cli/stderr" => wasi(nothing("what is written is discarded")),
        i if i.starts_with("wasi:cli/terminal-") => wasi(nothing("no terminal")),
        i if i.starts_with("wasi:filesystem/") => wasi(nothing("no directory is opened to it")),
        i if i.starts_with("wasi:sockets/") => wasi(nothing("every address and name lookup is refused")),
        i if i.starts_with("wasi:") => wasi(None),
        _ => (ImportGroup::Other, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn services() -> Services {
        let storage: std::sync::Arc<dyn crate::storage::Storage> =
            std::sync::Arc::new(crate::storage::MemoryStorage::default());
        let master = crate::keys::MasterKeySource::Given(crate::keys::MasterKey::generate().unwrap());
        Services {
            keys: std::sync::Arc::new(crate::keys::Keys::open(storage.clone(), master, None, true).await.unwrap()),
            storage,
            audit: std::sync::Arc::new(crate::audit::MemoryAudit::default()),
            clock: Default::default(),
        }
    }

    #[tokio::test]
    async fn the_report_grants_every_import_of_the_built_in_component() {
        let mut egress = EgressPolicy::default();
        egress.allowed.push("https://idp.example".parse().unwrap());
        let report =
            CapabilityReport::new(crate::COMPONENT_WASM, "built-in", &services().await, &egress, &Default::default())
                .unwrap();
        assert!(report.runs_here, "{:?}", report.problem);
        let names: Vec<&str> = report.imports.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names.len(), DECLARED_IMPORTS.len());
        let grant = |name: &str| {
            let import = report.imports.iter().find(|i| i.name.starts_with(name)).unwrap();
            (import.group, import.granted.clone().unwrap_or_else(|| panic!("{name} is granted nothing")))
        };
        assert_eq!(
            grant("tokenvault:vault/storage"),
            (ImportGroup::Tokenvault, "sealed records in memory (in-process, not persisted)".into())
        );
        assert_eq!(grant("wasi:http/outgoing-handler").1, "requests to https://idp.example:443 only");
        assert!(grant("wasi:cli/environment").1.starts_with("nothing"));
        assert!(report.imports.iter().all(|i| i.granted.is_some()));
        let tokens = report.exports.iter().find(|e| e.name == "tokenvault:vault/tokens@0.1.0").unwrap();
        assert_eq!(
            tokens.functions,
            [
                "due-for-refresh",
                "erase-tenant",
                "get",
                "get-or-link",
                "list",
                "refresh",
                "refresh-if-due",
                "remove",
                "revoke-all",
                "store",
                "users"
            ]
        );
        assert_eq!(report.component.sha256, hex::encode(Sha256::digest(crate::COMPONENT_WASM)));
    }

    #[tokio::test]
    async fn a_component_with_an_import_this_host_lacks_is_reported_as_not_runnable() {
        let wasm =
            wat::parse_str(r#"(component (import "acme:spy/exfiltrate@1.0.0" (instance (export "send" (func)))))"#)
                .unwrap();
        let report =
            CapabilityReport::new(&wasm, "spy.wasm", &services().await, &Default::default(), &Default::default())
                .unwrap();
        assert!(!report.runs_here);
        assert!(report.problem.as_deref().unwrap().contains("acme:spy/exfiltrate"), "{:?}", report.problem);
        assert_eq!(report.imports.len(), 1);
        assert_eq!((report.imports[0].group, report.imports[0].granted.as_deref()), (ImportGroup::Other, None));

        let not_a_component =
            CapabilityReport::new(b"not wasm", "x", &services().await, &Default::default(), &Default::default());
        assert!(not_a_component.unwrap_err().to_string().contains("cannot compile the component"));
    }

    #[test]
    fn the_component_imports_exactly_what_is_declared() {
        let actual = component_imports(crate::COMPONENT_WASM).unwrap();
        let declared: Vec<String> = DECLARED_IMPORTS.iter().map(|s| s.to_string()).collect();
        assert_eq!(actual, declared, "the component's imports changed: review them, then update DECLARED_IMPORTS");
    }
}
