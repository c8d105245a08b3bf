//! The host's error: what the component answered ([`VaultError`]), or the host's own
//! failure around it. Display starts with the kind, which is what the CLI prints as its
//! first word.

pub use tokenvault_model::{ProviderFailure, VaultError};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The component refused or failed the operation.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// The component trapped, ran past its deadline or out of memory. That call failed;
    /// its instance was discarded.
    #[error("sandbox: {0}")]
    Sandbox(String),
    /// The host could not be set up (configuration, keyring, data directory).
    #[error("config: {0}")]
    Config(String),
}

impl Error {
    /// The error's kind, as the CLI and the HTTP API name it.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Vault(e) => e.kind(),
            Error::Sandbox(_) => "sandbox",
            Error::Config(_) => "config",
        }
    }

    /// What went wrong, without the kind.
    pub fn message(&self) -> String {
        match self {
            Error::Vault(e) => e.message(),
            Error::Sandbox(m) | Error::Config(m) => m.clone(),
        }
    }

    /// The host's own invalid-input error, worded like the component's.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Error::Vault(VaultError::InvalidInput(message.into()))
    }

    /// The host's own not-found error, worded like the component's.
    pub fn not_found(message: impl Into<String>) -> Self {
        Error::Vault(VaultError::NotFound(message.into()))
    }

    /// The host's own integrity error (a record of its own that does not open).
    pub fn integrity(message: impl Into<String>) -> Self {
        Error::Vault(VaultError::Integrity(message.into()))
    }

    /// The host's own storage error, worded like the component's.
    pub fn storage(message: impl Into<String>) -> Self {
        Error::Vault(VaultError::Storage(message.into()))
    }
}

/// A storage backend's failure, as the host's own storage error.
impl From<tokenvault_model::storage::StorageError> for Error {
    fn from(e: tokenvault_model::storage::StorageError) -> Self {
        Error::storage(e.to_string())
    }
}

/// `{"error": kind, "message": …}`: how the CLI and the HTTP API show an error.
impl serde::Serialize for Error {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        tokenvault_model::error::serialize_error(self.kind(), &self.message(), serializer)
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Error {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        tokenvault_model::error::error_schema(
            "not-found, invalid-input, reconnect-required, provider-error, storage, integrity, egress-denied, \
             sandbox, config; the API adds unauthorized and forbidden",
        )
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Error {}

pub type Result<T, E = Error> = std::result::Result<T, E>;
