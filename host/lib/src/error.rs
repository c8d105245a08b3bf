//! The host's error: the component's error kinds plus the host's own. Display starts with
//! the kind, which is what the CLI prints as its first word.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderFailure {
    pub status: Option<u16>,
    pub code: Option<String>,
    pub message: String,
}

impl fmt::Display for ProviderFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
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
            Error::NotFound(_) => "not-found",
            Error::InvalidInput(_) => "invalid-input",
            Error::ReconnectRequired(_) => "reconnect-required",
            Error::Provider(_) => "provider-error",
            Error::Storage(_) => "storage",
            Error::Integrity(_) => "integrity",
            Error::EgressDenied(_) => "egress-denied",
            Error::Sandbox(_) => "sandbox",
            Error::Config(_) => "config",
        }
    }
}

/// `{"error": kind, "message": …}`: how the CLI and the HTTP API show an error.
impl serde::Serialize for Error {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let message = match self {
            Error::Provider(failure) => failure.to_string(),
            Error::NotFound(m)
            | Error::InvalidInput(m)
            | Error::ReconnectRequired(m)
            | Error::Storage(m)
            | Error::Integrity(m)
            | Error::EgressDenied(m)
            | Error::Sandbox(m)
            | Error::Config(m) => m.clone(),
        };
        let mut out = serializer.serialize_struct("Error", 2)?;
        out.serialize_field("error", self.kind())?;
        out.serialize_field("message", &message)?;
        out.end()
    }
}

/// The OpenAPI schema of an error's JSON form.
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Error {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .property(
                "error",
                ObjectBuilder::new().schema_type(Type::String).description(Some(
                    "not-found, invalid-input, reconnect-required, provider-error, storage, integrity, \
                     egress-denied, sandbox, config; the API adds unauthorized and forbidden",
                )),
            )
            .required("error")
            .property("message", ObjectBuilder::new().schema_type(Type::String))
            .required("message")
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Error {}

pub type Result<T, E = Error> = std::result::Result<T, E>;
