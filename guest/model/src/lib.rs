//! tokenvault's values, defined once. The component (`tokenvault-guest`) and the hosts
//! use these types on each side of the WIT boundary, each converting to and from its
//! generated bindings in one place; the WIT `types` interface is their contract.
//!
//! Types that hold a secret redact it from `Debug`, so no `{:?}` prints one.

mod audit;
mod connect;
pub mod error;
mod provider;
mod proxy;
pub mod storage;
mod tokens;
mod wit;

pub use audit::{AuditAction, AuditEvent, AuditOutcome};
pub use connect::{AuthorizationRequest, ConnectLink, Connected, DeviceAuthorization, DeviceStatus, SweepPage};
pub use error::{ProviderFailure, Result, VaultError, parse_json};
pub use provider::{ClientAuth, ProviderConfig, ProviderInfo, TemplateRef};
pub use proxy::{ProxyRequest, ProxyResponse};
pub use tokens::{
    ConnectionInfo, ConnectionKey, ConnectionKind, ConnectionName, ConnectionStatus, DEFAULT_CONNECTION_NAME, DuePage,
    RefreshOutcome, RemovalReceipt, TokenGrant, TokenOrLink, TokenSet, UpstreamRevocation, UserConnections, UserPage,
};

/// Writes a `Debug` that shows `$shown` fields and prints `<redacted>` for the secret ones
/// (`Option`s show whether they hold one).
macro_rules! redacted_debug {
    ($type:ident { $($shown:ident),* ; $($secret:ident),* }) => {
        impl std::fmt::Debug for $type {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let mut out = f.debug_struct(stringify!($type));
                $(out.field(stringify!($shown), &self.$shown);)*
                $(out.field(stringify!($secret), &crate::Redacted::of(&self.$secret));)*
                out.finish()
            }
        }
    };
}
pub(crate) use redacted_debug;

/// How a secret field shows in `Debug`: `<redacted>`, or `None` when an optional one is absent.
pub(crate) enum Redacted {
    Present,
    Absent,
}

impl Redacted {
    pub(crate) fn of<T: IsPresent>(value: &T) -> Self {
        if value.is_present() { Redacted::Present } else { Redacted::Absent }
    }
}

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Redacted::Present => "<redacted>",
            Redacted::Absent => "None",
        })
    }
}

pub(crate) trait IsPresent {
    fn is_present(&self) -> bool;
}

impl IsPresent for String {
    fn is_present(&self) -> bool {
        true
    }
}

impl<T> IsPresent for Option<T> {
    fn is_present(&self) -> bool {
        self.is_some()
    }
}
