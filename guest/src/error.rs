//! The vault's typed error. Messages name what failed and where, never a value.

use thiserror::Error;

/// What a provider said when it refused or failed a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderFailure {
    /// HTTP status, when the provider answered at all.
    pub status: Option<u16>,
    /// OAuth error code (RFC 6749 §5.2), when the provider sent one.
    pub code: Option<String>,
    /// What went wrong, in our words; never the provider's body.
    pub message: String,
}

impl std::fmt::Display for ProviderFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        if let Some(status) = self.status {
            write!(f, " (HTTP {status})")?;
        }
        if let Some(code) = &self.code {
            write!(f, " [{code}]")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VaultError {
    #[error("not-found: {0}")]
    NotFound(String),
    #[error("invalid-input: {0}")]
    InvalidInput(String),
    #[error("reconnect-required: {0}")]
    ReconnectRequired(String),
    #[error("provider-error: {0}")]
    Provider(ProviderFailure),
    #[error("storage: {0}")]
    Storage(String),
    #[error("integrity: {0}")]
    Integrity(String),
    #[error("egress-denied: {0}")]
    EgressDenied(String),
}

impl VaultError {
    pub(crate) fn provider(status: Option<u16>, code: Option<String>, message: impl Into<String>) -> Self {
        VaultError::Provider(ProviderFailure { status, code, message: message.into() })
    }
}

pub type Result<T, E = VaultError> = std::result::Result<T, E>;
