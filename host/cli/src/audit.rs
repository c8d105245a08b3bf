//! `tokenvault audit`: read the trail, check its chain, prune old entries.

use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use tokenvault::audit::{AuditFilter, AuditQuery, Trail};
use tokenvault::error::{Error, Result};
use tokenvault::{Vault, VaultError};

use super::print_json;

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Print a page of the trail, newest first, as JSON: its events and the cursor of the
    /// next (older) page.
    Ls {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        provider: Option<String>,
        /// An action, e.g. token-get.
        #[arg(long)]
        action: Option<String>,
        /// An outcome, e.g. reconnect-required.
        #[arg(long)]
        outcome: Option<String>,
        /// Only events after this time (Unix milliseconds).
        #[arg(long, value_name = "MS")]
        after: Option<u64>,
        /// The cursor a previous page printed.
        #[arg(long)]
        cursor: Option<String>,
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1000))]
        limit: u64,
    },
    /// Check the trail's hash chain from its checkpoint to its head: an entry edited,
    /// removed, moved or added behind the head is named (the first one). Prints the
    /// report; exits with an integrity error when the chain is broken. Keep the printed
    /// `head` elsewhere: a later check that still passes through it shows nothing up to
    /// there was rewritten.
    Verify,
    /// Delete the entries older than this many days, moving the chain's checkpoint past
    /// them so that the rest still verifies.
    Prune {
        #[arg(long, value_name = "DAYS", value_parser = clap::value_parser!(u64).range(1..))]
        older_than_days: u64,
    },
}

pub async fn run(vault: &Vault, command: AuditCommand) -> Result<()> {
    let trail = Trail::new(vault.services().storage.clone());
    match command {
        AuditCommand::Ls { tenant, user, provider, action, outcome, after, cursor, limit } => {
            let filter = AuditFilter { tenant, user, provider, action, outcome };
            let query = AuditQuery { filter, after_ms: after, cursor, limit: limit as usize };
            let page = vault.services().audit.read(&query).await?;
            print_json(&page.ok_or_else(|| Error::Config("this vault's audit sink cannot be read back".into()))?);
        }
        AuditCommand::Verify => {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template("{bar:40} {pos}/{len} entries, {per_sec}, {eta} left")
                    .expect("a valid template"),
            );
            let verification = trail.verify(|done, total| {
                bar.set_length(total);
                bar.set_position(done);
            });
            let verification = verification.await;
            bar.finish_and_clear();
            let verification = verification?;
            print_json(&verification);
            if let Some(broken) = verification.broken {
                return Err(Error::Vault(VaultError::Integrity(format!(
                    "the audit trail is broken at entry {}: it {}",
                    broken.entry, broken.problem
                ))));
            }
        }
        AuditCommand::Prune { older_than_days } => {
            let now_ms = vault.services().clock.now().as_millis() as u64;
            let before_ms = now_ms.saturating_sub(older_than_days.saturating_mul(86_400_000));
            print_json(&serde_json::json!({ "pruned": trail.prune(before_ms).await?, "before_ms": before_ms }));
        }
    }
    Ok(())
}
