//! The vault's error: what the component answers when an operation fails. Messages name
//! what failed and where, never a value.

use std::fmt;

/// What a provider said when it refused or failed a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderFailure {
    /// HTTP status, when the provider answered at all.
    pub status: Option<u16>,
    /// OAuth error code (RFC 6749 §5.2), when the provider sent one.
    pub code: Option<String>,
    /// What went wrong, in our words; never the provider's body.
    pub message: String,
    /// No answer came in time.
    pub timed_out: bool,
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

/// Display starts with the kind, which is what the CLI prints as its first word.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VaultError {
    #[error("not-found: {0}")]
    NotFound(String),
    #[error("invalid-input: {0}")]
    InvalidInput(String),
    /// The provider rejected the refresh token (`invalid_grant`), or the token expired with
    /// no way to renew it.
    #[error("reconnect-required: {0}")]
    ReconnectRequired(String),
    #[error("provider-error: {0}")]
    Provider(ProviderFailure),
    #[error("storage: {0}")]
    Storage(String),
    /// A record failed to open: tampered, moved, or sealed with an unknown key.
    #[error("integrity: {0}")]
    Integrity(String),
    /// The host refused to let the request leave.
    #[error("egress-denied: {0}")]
    EgressDenied(String),
}

pub type Result<T, E = VaultError> = std::result::Result<T, E>;

impl VaultError {
    /// A provider's refusal. Its OAuth error `code` is kept only when it has the shape of
    /// one (RFC 6749 §5.2 and every registered code: lowercase letters and `_`, at most 64):
    /// the provider wrote it, and anything else could be a value it echoed.
    pub fn provider(status: Option<u16>, code: Option<String>, message: impl Into<String>) -> Self {
        let code = code
            .filter(|code| (1..=64).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
        VaultError::Provider(ProviderFailure { status, code, message: message.into(), timed_out: false })
    }

    /// The provider did not answer in time.
    pub fn provider_timeout(message: impl Into<String>) -> Self {
        VaultError::Provider(ProviderFailure { status: None, code: None, message: message.into(), timed_out: true })
    }

    /// The error's kind, as the WIT, the CLI and the HTTP API name it.
    pub fn kind(&self) -> &'static str {
        match self {
            VaultError::NotFound(_) => "not-found",
            VaultError::InvalidInput(_) => "invalid-input",
            VaultError::ReconnectRequired(_) => "reconnect-required",
            VaultError::Provider(_) => "provider-error",
            VaultError::Storage(_) => "storage",
            VaultError::Integrity(_) => "integrity",
            VaultError::EgressDenied(_) => "egress-denied",
        }
    }

    /// What went wrong, without the kind.
    pub fn message(&self) -> String {
        match self {
            VaultError::Provider(failure) => failure.to_string(),
            VaultError::NotFound(m)
            | VaultError::InvalidInput(m)
            | VaultError::ReconnectRequired(m)
            | VaultError::Storage(m)
            | VaultError::Integrity(m)
            | VaultError::EgressDenied(m) => m.clone(),
        }
    }
}

/// `{"error": kind, "message": …}`: how the CLI and the HTTP API show an error.
pub fn serialize_error<S: serde::Serializer>(kind: &str, message: &str, serializer: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeStruct;
    let mut out = serializer.serialize_struct("Error", 2)?;
    out.serialize_field("error", kind)?;
    out.serialize_field("message", message)?;
    out.end()
}

impl serde::Serialize for VaultError {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_error(self.kind(), &self.message(), serializer)
    }
}

/// The OpenAPI schema of an error's JSON form, its kinds listed in `kinds`.
#[cfg(feature = "openapi")]
pub fn error_schema(kinds: &'static str) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .property("error", ObjectBuilder::new().schema_type(Type::String).description(Some(kinds)))
        .required("error")
        .property("message", ObjectBuilder::new().schema_type(Type::String))
        .required("message")
        .into()
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for VaultError {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        error_schema("not-found, invalid-input, reconnect-required, provider-error, storage, integrity, egress-denied")
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for VaultError {}

/// Parse `what` from JSON. Errors name the problem and its place, never a value (serde's
/// own messages can quote one).
pub fn parse_json<T: serde::de::DeserializeOwned>(what: &str, json: &[u8]) -> Result<T> {
    serde_json::from_slice(json).map_err(|e| {
        let (line, column) = (e.line(), e.column());
        let text = e.to_string();
        let why = match e.classify() {
            serde_json::error::Category::Data if text.starts_with("missing field") => {
                // "missing field `x`": one of ours.
                text.split(" at line").next().unwrap_or("a field is missing").to_owned()
            }
            serde_json::error::Category::Data if text.starts_with("unknown field") => {
                // "unknown field `x`, expected one of …": `x` is the caller's, so only ours are named.
                let expected = text.split(" at line").next().and_then(|t| t.split_once(", expected ")).map(|(_, e)| e);
                match expected {
                    Some(expected) => {
                        format!("a field it does not take (line {line}, column {column}); expected {expected}")
                    }
                    None => format!("a field it does not take (line {line}, column {column})"),
                }
            }
            serde_json::error::Category::Data => {
                format!("a field has the wrong type (line {line}, column {column})")
            }
            _ => format!("not valid JSON (line {line}, column {column})"),
        };
        VaultError::InvalidInput(format!("{what}: {why}"))
    })
}

#[cfg(test)]
mod properties {
    use super::*;
    use crate::events::WebhookConfig;
    use crate::{ProviderConfig, TokenGrant};
    use proptest::prelude::*;

    const CANARY: &str = "canary-body-4d8e";

    /// API bodies as a careless or hostile caller sends them: the fields the types take and
    /// some they do not, each holding the canary in some shape.
    fn body() -> impl Strategy<Value = String> {
        let field = prop_oneof![
            Just("name".to_owned()),
            Just("client_id".to_owned()),
            Just("client_secret".to_owned()),
            Just("client_auth".to_owned()),
            Just("scopes".to_owned()),
            Just("token_url".to_owned()),
            Just("url".to_owned()),
            Just("events".to_owned()),
            Just("access_token".to_owned()),
            Just("template".to_owned()),
            Just("refresh_buffer_secs".to_owned()),
            Just(CANARY.to_owned()),
        ];
        let value = prop_oneof![
            Just(format!("\"{CANARY}\"")),
            Just(format!("[\"{CANARY}\"]")),
            Just(format!("{{\"name\":\"{CANARY}\"}}")),
            Just("7".to_owned()),
            Just("-1".to_owned()),
            Just("true".to_owned()),
            Just("null".to_owned()),
            Just(format!("\"{CANARY}\\ud800\"")),
        ];
        (proptest::collection::vec((field, value), 0..6), "\\PC{0,6}").prop_map(|(fields, noise)| {
            let fields: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            format!("{{{}}}{noise}", fields.join(","))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        // Whatever the body, a refusal names fields and places, never what was sent.
        #[test]
        fn a_refused_api_body_quotes_nothing_of_it(body in body()) {
            let refusals = [
                parse_json::<ProviderConfig>("provider", body.as_bytes()).err(),
                parse_json::<WebhookConfig>("webhook", body.as_bytes()).err(),
                parse_json::<TokenGrant>("token response", body.as_bytes()).err(),
            ];
            for refusal in refusals.into_iter().flatten() {
                let shown = format!("{refusal} {refusal:?}");
                prop_assert!(!shown.contains(CANARY), "{shown}");
            }
        }
    }
}
