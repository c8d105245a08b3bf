//! `tokenvault tenant erase`: a tenant leaving, with progress.

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tokenvault::{Result, UpstreamRevocation, Vault};
use tokenvault_serve::tenants;

#[derive(clap::Subcommand)]
pub enum TenantCommand {
    /// Erase a tenant: revoke its API keys, access tokens and console sessions, revoke each
    /// of its connections at its provider (RFC 7009) and delete it, then delete its own
    /// providers, webhook, events and pending flows. Other tenants are untouched. Cut short,
    /// it goes on where it stopped when run again.
    Erase {
        tenant: String,
        /// Connections removed per step (1 to 1000).
        #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
        page: u32,
    },
}

pub async fn run(vault: &Vault, command: TenantCommand) -> Result<()> {
    let TenantCommand::Erase { tenant, page } = command;
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {pos} connections removed, {per_sec}").expect("a valid template"),
    );
    let (mut revoked, mut deleted) = (tenants::Credentials::default(), 0);
    let (mut upstream_revoked, mut unsupported, mut failed) = (0, 0, Vec::new());
    loop {
        let (credentials, step) = tenants::erase_step(vault, &tenant, page).await?;
        revoked.api_keys += credentials.api_keys;
        revoked.access_tokens += credentials.access_tokens;
        revoked.console_sessions += credentials.console_sessions;
        deleted += step.deleted;
        for erased in step.removed {
            bar.inc(1);
            match erased.receipt.upstream {
                UpstreamRevocation::Revoked => upstream_revoked += 1,
                UpstreamRevocation::Unsupported => unsupported += 1,
                UpstreamRevocation::Failed { reason } => failed.push(json!({
                    "user": erased.user,
                    "provider": erased.receipt.provider,
                    "name": erased.receipt.name,
                    "error": reason.kind(),
                    "message": reason.message(),
                })),
            }
        }
        if step.done {
            break;
        }
    }
    let removed = bar.position();
    bar.finish_and_clear();
    super::print_json(&json!({
        "tenant": tenant,
        "connections_removed": removed,
        "upstream": { "revoked": upstream_revoked, "unsupported": unsupported, "failed": failed },
        "records_deleted": deleted,
        "revoked": revoked,
    }));
    Ok(())
}
