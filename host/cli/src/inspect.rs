//! `tokenvault inspect`: the capability report, as text for operators or JSON.

use std::path::Path;

use tokenvault::capabilities::{CapabilityReport, ImportGroup};
use tokenvault::{COMPONENT_WASM, Error, Options, Result, Services};

pub async fn run(options: &Options, component: Option<&Path>, json: bool) -> Result<()> {
    let (wasm, source) = match component {
        Some(path) => (
            std::fs::read(path).map_err(|e| Error::invalid_input(format!("cannot read {}: {e}", path.display())))?,
            path.display().to_string(),
        ),
        None => (COMPONENT_WASM.to_vec(), "built-in".to_owned()),
    };
    let services = Services::open(options).await?;
    let report = CapabilityReport::new(&wasm, &source, &services, &options.egress, &options.sandbox)
        .map_err(|e| Error::invalid_input(format!("{source}: {e}")))?;
    if json {
        super::print_json(&report);
    } else {
        print!("{}", text(&report));
    }
    Ok(())
}

fn text(report: &CapabilityReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let c = &report.component;
    let _ = writeln!(out, "component  {} ({} bytes)", c.source, c.bytes);
    let _ = writeln!(out, "sha256     {}", c.sha256);
    let runs = match &report.problem {
        None => "yes".to_owned(),
        Some(problem) => format!("no: {problem}"),
    };
    let _ = writeln!(out, "runs here  {runs}");
    let _ = writeln!(out, "\nexports");
    for export in &report.exports {
        let _ = writeln!(out, "  {:<36} {}", export.name, export.functions.join(" "));
    }
    for (group, title) in [
        (ImportGroup::Tokenvault, "imports: tokenvault's own, supplied by this host"),
        (ImportGroup::Wasi, "imports: standard WASI"),
        (ImportGroup::Other, "imports: other (this host supplies none of them)"),
    ] {
        let imports: Vec<_> = report.imports.iter().filter(|i| i.group == group).collect();
        if imports.is_empty() {
            continue;
        }
        let _ = writeln!(out, "\n{title}");
        for import in imports {
            let granted = import.granted.as_deref().unwrap_or("NOT PROVIDED: this host cannot run the component");
            let _ = writeln!(out, "  {:<36} {granted}", import.name);
        }
    }
    let _ = writeln!(out, "\nnever granted: {}", report.never_granted.join(", "));
    let l = &report.limits;
    let _ = writeln!(
        out,
        "limits: {} MiB of memory and {} ms per call, {} instances at once; HTTP: connect {} ms, response {} ms, at most {} bytes",
        l.memory_bytes >> 20,
        l.call_deadline_ms,
        l.max_instances,
        l.connect_timeout_ms,
        l.response_timeout_ms,
        l.max_response_bytes
    );
    out
}
