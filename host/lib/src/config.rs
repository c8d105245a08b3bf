//! Operator configuration: the data directory and its `tokenvault.toml`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::audit::OnAuditFailure;
use crate::error::{Error, Result};
use crate::http::{EgressPolicy, Origin};
use crate::keys::{MASTER_KEY_ENV, MASTER_KEY_FILE, MasterKey, MasterKeySource};
use crate::storage::StorageUrl;

pub const CONFIG_FILE: &str = "tokenvault.toml";
/// Below the component's refresh lease (40 s), with a margin for clock skew between hosts.
pub const MAX_CALL_DEADLINE_MS: u64 = 35_000;

/// Everything the host needs to open a vault.
#[derive(Debug, Clone)]
pub struct Options {
    pub data_dir: PathBuf,
    pub storage: StorageUrl,
    /// The key that wraps the keyring's data keys.
    pub master_key: MasterKeySource,
    /// A keyring file from before the keyring moved into storage: imported on first use,
    /// then no longer read.
    pub keyring: PathBuf,
    /// An extra JSON-lines file the audit events go to, beside the trail in storage.
    pub audit_log: Option<PathBuf>,
    /// Whether a call whose audit event cannot be written fails (the default) or goes on.
    pub audit_on_failure: OnAuditFailure,
    pub egress: EgressPolicy,
    /// Where tenants' webhooks may point (`serve` delivers their events there): a list of
    /// its own, apart from the egress allow-list.
    pub webhook_origins: Vec<Origin>,
    pub sandbox: SandboxLimits,
    /// Where the precompiled component is cached; none compiles on every start.
    pub cache_dir: Option<PathBuf>,
}

/// The sandbox's bounds on one call: memory, run time, and instances alive at once.
#[derive(Debug, Clone)]
pub struct SandboxLimits {
    /// Linear memory one instance may grow to.
    pub memory_bytes: usize,
    /// How long one call may run, wall clock, before it is interrupted. It must exceed
    /// the HTTP timeouts, since a refresh waits on the provider.
    pub deadline: Duration,
    /// Instances alive at once (the pooling allocator's size).
    pub max_instances: u32,
    /// Instances [`crate::Vault::get_warm`] keeps idle between calls, each holding one of
    /// `max_instances` (at most half of them are kept), each for at most
    /// [`crate::keys::RELOAD_AFTER`] after it was made.
    pub warm_instances: u32,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        SandboxLimits {
            memory_bytes: 64 << 20,
            deadline: Duration::from_secs(30),
            max_instances: 256,
            warm_instances: 32,
        }
    }
}

/// `<data-dir>/tokenvault.toml`. Every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    allowed_outbound_hosts: Vec<String>,
    #[serde(default)]
    allowed_webhook_origins: Vec<String>,
    storage: Option<String>,
    keyring: Option<PathBuf>,
    master_key_file: Option<PathBuf>,
    audit_on_failure: Option<OnAuditFailure>,
    /// Relative to the data directory.
    audit_log: Option<PathBuf>,
    memory_limit_mib: Option<usize>,
    call_deadline_ms: Option<u64>,
    connect_timeout_ms: Option<u64>,
    response_timeout_ms: Option<u64>,
    max_response_bytes: Option<usize>,
    /// PEM CA certificates trusted for outgoing HTTPS besides the Mozilla roots.
    outbound_ca_file: Option<PathBuf>,
}

impl Options {
    /// Defaults for a data directory, overlaid with its `tokenvault.toml` if present, and
    /// the master key from `TOKENVAULT_MASTER_KEY` when it is set (`master_key_file` is
    /// taken from the data directory when relative).
    pub fn from_data_dir(data_dir: &Path) -> Result<Self> {
        let path = data_dir.join(CONFIG_FILE);
        let file: ConfigFile = match std::fs::read_to_string(&path) {
            Ok(text) => {
                toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {}", path.display(), e.message())))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => ConfigFile::default(),
            Err(e) => {
                return Err(Error::Config(format!("cannot read {}: {e}", path.display())));
            }
        };

        let mut options = Options {
            data_dir: data_dir.to_owned(),
            storage: StorageUrl::default_in(data_dir),
            master_key: MasterKeySource::DataDir(data_dir.join(MASTER_KEY_FILE)),
            keyring: data_dir.join("keyring.json"),
            audit_log: file.audit_log.map(|path| data_dir.join(path)),
            audit_on_failure: file.audit_on_failure.unwrap_or_default(),
            egress: EgressPolicy::default(),
            webhook_origins: Vec::new(),
            sandbox: SandboxLimits::default(),
            cache_dir: Some(data_dir.join("cache")),
        };
        options.allow_outbound(&file.allowed_outbound_hosts)?;
        options.allow_webhooks(&file.allowed_webhook_origins)?;
        if let Some(url) = file.storage {
            options.storage = StorageUrl::parse(&url).map_err(Error::Config)?;
        }
        if let Some(keyring) = file.keyring {
            options.keyring = keyring;
        }
        let from_env = std::env::var(MASTER_KEY_ENV).ok().filter(|v| !v.is_empty());
        match (from_env, file.master_key_file) {
            (Some(_), Some(_)) => {
                return Err(Error::Config(format!(
                    "both {MASTER_KEY_ENV} and master_key_file are set: give the master key one way"
                )));
            }
            (Some(text), None) => {
                options.master_key = MasterKeySource::Given(MasterKey::from_base64(&text, MASTER_KEY_ENV)?);
            }
            (None, Some(path)) => options.master_key = MasterKeySource::File(data_dir.join(path)),
            (None, None) => {}
        }
        if let Some(mib) = file.memory_limit_mib {
            options.sandbox.memory_bytes = mib
                .checked_mul(1 << 20)
                .filter(|b| *b >= 1 << 20)
                .ok_or_else(|| Error::Config("memory_limit_mib must be at least 1".into()))?;
        }
        let millis = |ms: u64, what: &str| {
            if ms == 0 { Err(Error::Config(format!("{what} must be positive"))) } else { Ok(Duration::from_millis(ms)) }
        };
        if let Some(ms) = file.call_deadline_ms {
            // A refresh lease must outlast the call holding it (see ARCHITECTURE.md).
            if ms > MAX_CALL_DEADLINE_MS {
                return Err(Error::Config(format!(
                    "call_deadline_ms must be at most {MAX_CALL_DEADLINE_MS}: refresh leases last 40 s and must outlast a call"
                )));
            }
            options.sandbox.deadline = millis(ms, "call_deadline_ms")?;
        }
        if let Some(ms) = file.connect_timeout_ms {
            options.egress.connect_timeout = millis(ms, "connect_timeout_ms")?;
        }
        if let Some(ms) = file.response_timeout_ms {
            options.egress.response_timeout = millis(ms, "response_timeout_ms")?;
        }
        if let Some(bytes) = file.max_response_bytes {
            options.egress.max_response_bytes = bytes;
        }
        if let Some(ca) = file.outbound_ca_file {
            options.egress.ca_files.push(data_dir.join(ca));
        }
        Ok(options)
    }

    /// Add origins (`scheme://host[:port]`) to the egress allow-list.
    pub fn allow_outbound(&mut self, origins: &[String]) -> Result<()> {
        add_origins(&mut self.egress.allowed, origins)
    }

    /// Add origins (`scheme://host[:port]`) to those webhooks may point to.
    pub fn allow_webhooks(&mut self, origins: &[String]) -> Result<()> {
        add_origins(&mut self.webhook_origins, origins)
    }
}

fn add_origins(list: &mut Vec<Origin>, origins: &[String]) -> Result<()> {
    for origin in origins {
        let origin: Origin = origin.parse().map_err(Error::Config)?;
        if !list.contains(&origin) {
            list.push(origin);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_live_in_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let options = Options::from_data_dir(dir.path()).unwrap();
        assert_eq!(options.storage, StorageUrl::Sqlite(dir.path().join("vault.db")));
        assert!(options.egress.allowed.is_empty(), "nothing is reachable unless allowed");
    }

    #[test]
    fn config_file_is_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            "allowed_outbound_hosts = [\"https://idp.example\"]\nstorage = \"memory:\"\nmemory_limit_mib = 32\ncall_deadline_ms = 2000\n",
        )
        .unwrap();
        let options = Options::from_data_dir(dir.path()).unwrap();
        assert_eq!(options.egress.allowed.len(), 1);
        assert_eq!(options.storage, StorageUrl::Memory);
        assert_eq!(options.sandbox.memory_bytes, 32 << 20);
        assert_eq!(options.sandbox.deadline, Duration::from_secs(2));
        assert_eq!(options.audit_on_failure, OnAuditFailure::Refuse, "refusing is the default");

        std::fs::write(dir.path().join(CONFIG_FILE), "audit_on_failure = \"serve\"\n").unwrap();
        assert_eq!(Options::from_data_dir(dir.path()).unwrap().audit_on_failure, OnAuditFailure::Serve);
        std::fs::write(dir.path().join(CONFIG_FILE), "audit_on_failure = \"ignore\"\n").unwrap();
        let err = Options::from_data_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("refuse") && err.contains("serve"), "{err}");

        std::fs::write(dir.path().join(CONFIG_FILE), "call_deadline_ms = 60000\n").unwrap();
        assert!(Options::from_data_dir(dir.path()).unwrap_err().to_string().contains("at most 35000"));

        std::fs::write(dir.path().join(CONFIG_FILE), "allowed_outbound_host = []\n").unwrap();
        let err = Options::from_data_dir(dir.path()).unwrap_err().to_string();
        assert!(err.starts_with("config:") && err.contains("unknown field"), "{err}");
    }
}
