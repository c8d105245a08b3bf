//! Conversions between the model and the WIT-generated bindings, written once for both
//! sides: the component (wit-bindgen) and the host (wasmtime's `bindgen!`) generate types
//! with the same names and fields from the same WIT, so one macro serves both.
//!
//! ```ignore
//! tokenvault_model::wit_conversions!(
//!     types = wit, tokens = tokens, connect = connect, keys = keys, proxy = proxy,
//!     webhooks = webhooks, audit = audit, storage = storage
//! );
//! ```
//! where each name is a module of the generated bindings in scope at the call. Every
//! conversion goes both ways; a field or case the WIT gains fails to compile here until
//! the model has it too.

/// Every conversion between the model's values and the generated bindings of the
/// `tokenvault:vault` interfaces, each as `From` both ways.
#[macro_export]
macro_rules! wit_conversions {
    (
        types = $types:ident,
        tokens = $tokens:ident,
        connect = $connect:ident,
        keys = $keys:ident,
        proxy = $proxy:ident,
        webhooks = $webhooks:ident,
        audit = $audit:ident,
        storage = $storage:ident $(,)?
    ) => {
        $crate::__record!($types::ConnectionKey <=> ConnectionKey { tenant, user, provider, name });
        $crate::__record!($types::TokenSet <=> TokenSet { access_token, token_type, expires_at, scope, refresh_token });
        $crate::__record!($types::TokenGrant <=> TokenGrant {
            access_token, token_type, expires_in, refresh_token, scope,
        });
        $crate::__cases!($types::ConnectionStatus <=> ConnectionStatus { Active, ReconnectRequired });
        $crate::__cases!($types::ConnectionKind <=> ConnectionKind { User, Client });
        $crate::__record!($types::ConnectionInfo <=> ConnectionInfo {
            provider, name, kind: into, scopes, expires_at, has_refresh_token, status: into, updated_at,
        });
        $crate::__cases!($types::ClientAuth <=> ClientAuth { ClientSecretBasic, ClientSecretPost });
        $crate::__record!($types::TemplateRef <=> TemplateRef { name, tenant });
        $crate::__record!($types::ProviderConfig <=> ProviderConfig {
            name, template: option, issuer, authorization_url, token_url, revocation_url, device_authorization_url,
            client_id, client_secret, client_auth: option, scopes, authorization_params, refresh_buffer_secs,
            api_base_url,
        });
        $crate::__record!($types::ProviderInfo <=> ProviderInfo {
            name, tenant, template, issuer, authorization_url, token_url, revocation_url, device_authorization_url, client_id,
            has_client_secret, client_auth: into, scopes, authorization_params, refresh_buffer_secs, api_base_url,
            updated_at,
        });
        $crate::__record!($types::ConnectLink <=> ConnectLink { code, expires_at });

        impl From<$types::Error> for $crate::VaultError {
            fn from(e: $types::Error) -> Self {
                match e {
                    $types::Error::NotFound(m) => $crate::VaultError::NotFound(m),
                    $types::Error::InvalidInput(m) => $crate::VaultError::InvalidInput(m),
                    $types::Error::ReconnectRequired(m) => $crate::VaultError::ReconnectRequired(m),
                    $types::Error::ProviderError(f) => $crate::VaultError::Provider($crate::ProviderFailure {
                        status: f.status,
                        code: f.code,
                        message: f.message,
                        timed_out: f.timed_out,
                    }),
                    $types::Error::Storage(m) => $crate::VaultError::Storage(m),
                    $types::Error::Integrity(m) => $crate::VaultError::Integrity(m),
                    $types::Error::EgressDenied(m) => $crate::VaultError::EgressDenied(m),
                }
            }
        }

        impl From<$crate::VaultError> for $types::Error {
            fn from(e: $crate::VaultError) -> Self {
                match e {
                    $crate::VaultError::NotFound(m) => $types::Error::NotFound(m),
                    $crate::VaultError::InvalidInput(m) => $types::Error::InvalidInput(m),
                    $crate::VaultError::ReconnectRequired(m) => $types::Error::ReconnectRequired(m),
                    $crate::VaultError::Provider($crate::ProviderFailure { status, code, message, timed_out }) => {
                        $types::Error::ProviderError($types::ProviderFailure { status, code, message, timed_out })
                    }
                    $crate::VaultError::Storage(m) => $types::Error::Storage(m),
                    $crate::VaultError::Integrity(m) => $types::Error::Integrity(m),
                    $crate::VaultError::EgressDenied(m) => $types::Error::EgressDenied(m),
                }
            }
        }

        $crate::__cases!($tokens::TokenOrLink <=> TokenOrLink { Token(into), Link(into) });
        $crate::__record!($tokens::RemovalReceipt <=> RemovalReceipt { provider, name, upstream: into });

        impl From<$tokens::UpstreamRevocation> for $crate::UpstreamRevocation {
            fn from(upstream: $tokens::UpstreamRevocation) -> Self {
                match upstream {
                    $tokens::UpstreamRevocation::Revoked => $crate::UpstreamRevocation::Revoked,
                    $tokens::UpstreamRevocation::Unsupported => $crate::UpstreamRevocation::Unsupported,
                    $tokens::UpstreamRevocation::Failed(e) => $crate::UpstreamRevocation::Failed { reason: e.into() },
                }
            }
        }

        impl From<$crate::UpstreamRevocation> for $tokens::UpstreamRevocation {
            fn from(upstream: $crate::UpstreamRevocation) -> Self {
                match upstream {
                    $crate::UpstreamRevocation::Revoked => $tokens::UpstreamRevocation::Revoked,
                    $crate::UpstreamRevocation::Unsupported => $tokens::UpstreamRevocation::Unsupported,
                    $crate::UpstreamRevocation::Failed { reason } => $tokens::UpstreamRevocation::Failed(reason.into()),
                }
            }
        }

        impl From<$tokens::UserConnections> for $crate::UserConnections {
            fn from(u: $tokens::UserConnections) -> Self {
                let name = |(provider, name)| $crate::ConnectionName { provider, name };
                let connections = u.connections.into_iter().map(name).collect();
                $crate::UserConnections { user: u.user, connections }
            }
        }

        impl From<$crate::UserConnections> for $tokens::UserConnections {
            fn from(u: $crate::UserConnections) -> Self {
                let connections = u.connections.into_iter().map(|c| (c.provider, c.name)).collect();
                $tokens::UserConnections { user: u.user, connections }
            }
        }

        $crate::__record!($tokens::UserPage <=> UserPage { users: each, next });

        impl From<$tokens::ErasePage> for $crate::ErasePage {
            fn from(page: $tokens::ErasePage) -> Self {
                let removed = page.removed.into_iter();
                $crate::ErasePage {
                    removed: removed.map(|(user, receipt)| $crate::ErasedConnection { user, receipt: receipt.into() }).collect(),
                    deleted: page.deleted,
                    done: page.done,
                }
            }
        }

        impl From<$crate::ErasePage> for $tokens::ErasePage {
            fn from(page: $crate::ErasePage) -> Self {
                let removed = page.removed.into_iter();
                $tokens::ErasePage {
                    removed: removed.map(|erased| (erased.user, erased.receipt.into())).collect(),
                    deleted: page.deleted,
                    done: page.done,
                }
            }
        }
        $crate::__record!($tokens::DuePage <=> DuePage { keys: each, cursor });
        $crate::__cases!($tokens::RefreshOutcome <=> RefreshOutcome { NotDue, Refreshed, NotRenewable });

        $crate::__record!($connect::AuthorizationRequest <=> AuthorizationRequest { url, state, expires_at });
        $crate::__record!($connect::Connected <=> Connected { key: into, info: into });
        $crate::__record!($connect::DeviceAuthorization <=> DeviceAuthorization {
            handle, user_code, verification_uri, verification_uri_complete, interval, expires_at,
        });

        impl From<$connect::DeviceStatus> for $crate::DeviceStatus {
            fn from(status: $connect::DeviceStatus) -> Self {
                match status {
                    $connect::DeviceStatus::Pending(retry_after) => $crate::DeviceStatus::Pending { retry_after },
                    $connect::DeviceStatus::Connected(c) => $crate::DeviceStatus::Connected(c.into()),
                }
            }
        }

        impl From<$crate::DeviceStatus> for $connect::DeviceStatus {
            fn from(status: $crate::DeviceStatus) -> Self {
                match status {
                    $crate::DeviceStatus::Pending { retry_after } => $connect::DeviceStatus::Pending(retry_after),
                    $crate::DeviceStatus::Connected(c) => $connect::DeviceStatus::Connected(c.into()),
                }
            }
        }

        $crate::__record!($connect::SweepPage <=> SweepPage { deleted, cursor });
        $crate::__record!($keys::ReencryptPage <=> storage::ReencryptPage { reencrypted, current, failed, cursor });
        $crate::__record!($proxy::ProxyRequest <=> ProxyRequest { method, path, headers, body });
        $crate::__record!($proxy::ProxyResponse <=> ProxyResponse { status, headers, body });

        $crate::__cases!($audit::Action <=> AuditAction {
            TokenStore, TokenGet, TokenRefresh, TokenRemove, RevokeAll, ProviderPut, ProviderRemove, ConnectBegin,
            ConnectComplete, ConnectLink, ConnectOpenLink, ConnectDevice, ConnectClient, Proxy, KeyReencrypt,
            KeyRotate, KeyRetire, MasterKeyRotate, WebhookPut, WebhookRemove, TenantErase,
        });
        $crate::__cases!($audit::Outcome <=> AuditOutcome {
            Ok, NotFound, InvalidInput, ReconnectRequired, ProviderError, Storage, Integrity, EgressDenied,
        });

        impl From<$audit::Event> for $crate::AuditEvent {
            fn from(e: $audit::Event) -> Self {
                $crate::AuditEvent {
                    action: e.action.into(),
                    outcome: e.outcome.into(),
                    tenant: e.tenant,
                    user: e.user,
                    provider: e.provider,
                    name: e.name,
                    at_ms: e.at,
                }
            }
        }

        impl From<$crate::AuditEvent> for $audit::Event {
            fn from(e: $crate::AuditEvent) -> Self {
                $audit::Event {
                    action: e.action.into(),
                    outcome: e.outcome.into(),
                    tenant: e.tenant,
                    user: e.user,
                    provider: e.provider,
                    name: e.name,
                    at: e.at_ms,
                }
            }
        }

        $crate::__record!($storage::Entry <=> storage::Entry { value, version });
        $crate::__record!($storage::KeyPage <=> storage::KeyPage { keys, cursor });
        $crate::__cases!($storage::StorageError <=> storage::StorageError { Conflict, Unavailable(same) });

        impl From<$storage::Write> for $crate::storage::Write {
            fn from(write: $storage::Write) -> Self {
                match write {
                    $storage::Write::Put((key, value, expected)) => $crate::storage::Write::Put { key, value, expected },
                    $storage::Write::Delete((key, expected)) => $crate::storage::Write::Delete { key, expected },
                }
            }
        }

        impl From<$crate::storage::Write> for $storage::Write {
            fn from(write: $crate::storage::Write) -> Self {
                match write {
                    $crate::storage::Write::Put { key, value, expected } => $storage::Write::Put((key, value, expected)),
                    $crate::storage::Write::Delete { key, expected } => $storage::Write::Delete((key, expected)),
                }
            }
        }

        $crate::__record!($webhooks::WebhookConfig <=> events::WebhookConfig { url, events, rotate_secret });
        $crate::__record!($webhooks::WebhookInfo <=> events::WebhookInfo { url, events, created_at, updated_at });
        $crate::__record!($webhooks::SignedDelivery <=> events::SignedDelivery { url, signature });
    };
}

/// A record both ways, field by field: moved as it is, or converted (`into`, `option`: an
/// option's content, `each`: a list's items).
#[doc(hidden)]
#[macro_export]
macro_rules! __record {
    ($module:ident :: $wit:ident <=> $($model:ident)::+ { $($field:ident $(: $how:ident)?),* $(,)? }) => {
        impl From<$module::$wit> for $crate::$($model)::+ {
            fn from(v: $module::$wit) -> Self {
                $crate::$($model)::+ { $($field: $crate::__field!(v.$field $(, $how)?)),* }
            }
        }

        impl From<$crate::$($model)::+> for $module::$wit {
            fn from(v: $crate::$($model)::+) -> Self {
                $module::$wit { $($field: $crate::__field!(v.$field $(, $how)?)),* }
            }
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __field {
    ($value:expr) => {
        $value
    };
    ($value:expr, same) => {
        $value
    };
    ($value:expr, into) => {
        $value.into()
    };
    ($value:expr, option) => {
        $value.map(Into::into)
    };
    ($value:expr, each) => {
        $value.into_iter().map(Into::into).collect()
    };
}

/// An enum both ways, case by case; a case's payload converts as a record's field does.
#[doc(hidden)]
#[macro_export]
macro_rules! __cases {
    ($module:ident :: $wit:ident <=> $($model:ident)::+ { $($case:ident $(($how:ident))?),* $(,)? }) => {
        const _: () = {
            type Wit = $module::$wit;
            type Model = $crate::$($model)::+;

            impl From<Wit> for Model {
                fn from(v: Wit) -> Self {
                    match v {
                        $($crate::__case_pattern!(x; Wit::$case $(, $how)?) => {
                            Model::$case $(($crate::__field!(x, $how)))?
                        })*
                    }
                }
            }

            impl From<Model> for Wit {
                fn from(v: Model) -> Self {
                    match v {
                        $($crate::__case_pattern!(x; Model::$case $(, $how)?) => {
                            Wit::$case $(($crate::__field!(x, $how)))?
                        })*
                    }
                }
            }
        };
    };
}

/// A case's pattern: the bare case, or the case binding its payload to `$payload`.
#[doc(hidden)]
#[macro_export]
macro_rules! __case_pattern {
    ($payload:ident; $case:path) => {
        $case
    };
    ($payload:ident; $case:path, $how:ident) => {
        $case($payload)
    };
}
