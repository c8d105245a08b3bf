//! Audit events: what happened to which connection, and how it ended. No field can carry
//! a value.

use crate::error::{Result, VaultError};
use crate::named_cases;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub action: AuditAction,
    pub outcome: AuditOutcome,
    pub tenant: Option<String>,
    pub user: Option<String>,
    pub provider: Option<String>,
    pub name: Option<String>,
    /// Unix milliseconds.
    pub at_ms: u64,
}

named_cases!(
    /// What an operation did: the component's, and the host's own on the keyring (rotate,
    /// retire, master-key rotate).
    AuditAction {
        TokenStore => "token-store",
        TokenGet => "token-get",
        TokenRefresh => "token-refresh",
        TokenRemove => "token-remove",
        RevokeAll => "revoke-all",
        ProviderPut => "provider-put",
        ProviderRemove => "provider-remove",
        ConnectBegin => "connect-begin",
        ConnectComplete => "connect-complete",
        ConnectLink => "connect-link",
        ConnectOpenLink => "connect-open-link",
        ConnectDevice => "connect-device",
        ConnectClient => "connect-client",
        Proxy => "proxy",
        KeyReencrypt => "key-reencrypt",
        KeyRotate => "key-rotate",
        KeyRetire => "key-retire",
        MasterKeyRotate => "master-key-rotate",
        WebhookPut => "webhook-put",
        WebhookRemove => "webhook-remove",
        TenantErase => "tenant-erase",
    }
);

named_cases!(
    /// How it ended: `ok`, or the kind of the error.
    AuditOutcome {
        Ok => "ok",
        NotFound => "not-found",
        InvalidInput => "invalid-input",
        ReconnectRequired => "reconnect-required",
        ProviderError => "provider-error",
        Storage => "storage",
        Integrity => "integrity",
        EgressDenied => "egress-denied",
    }
);

impl<T> From<&Result<T>> for AuditOutcome {
    fn from(result: &Result<T>) -> Self {
        match result {
            Ok(_) => AuditOutcome::Ok,
            Err(VaultError::NotFound(_)) => AuditOutcome::NotFound,
            Err(VaultError::InvalidInput(_)) => AuditOutcome::InvalidInput,
            Err(VaultError::ReconnectRequired(_)) => AuditOutcome::ReconnectRequired,
            Err(VaultError::Provider(_)) => AuditOutcome::ProviderError,
            Err(VaultError::Storage(_)) => AuditOutcome::Storage,
            Err(VaultError::Integrity(_)) => AuditOutcome::Integrity,
            Err(VaultError::EgressDenied(_)) => AuditOutcome::EgressDenied,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_outcome_is_named_as_its_error_kind() {
        for error in [
            VaultError::NotFound(String::new()),
            VaultError::InvalidInput(String::new()),
            VaultError::ReconnectRequired(String::new()),
            VaultError::provider(None, None, ""),
            VaultError::Storage(String::new()),
            VaultError::Integrity(String::new()),
            VaultError::EgressDenied(String::new()),
        ] {
            let kind = error.kind();
            assert_eq!(AuditOutcome::from(&Err::<(), _>(error)).name(), kind);
        }
        assert_eq!(AuditOutcome::from(&Ok(())).name(), "ok");
        assert_eq!(AuditOutcome::NAMES.len(), 8);
    }
}
