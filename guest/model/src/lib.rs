//! tokenvault's values, defined once. The component (`tokenvault-guest`) and the hosts
//! use these types on each side of the WIT boundary, each converting to and from its
//! generated bindings in one place; the WIT `types` interface is their contract.
//!
//! Types that hold a secret redact it from `Debug`, so no `{:?}` prints one.

mod audit;
mod connect;
pub mod error;
pub mod events;
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
    ErasePage, ErasedConnection, RefreshOutcome, RemovalReceipt, TokenGrant, TokenOrLink, TokenSet, UpstreamRevocation,
    UserConnections, UserPage,
};

/// An enum whose cases each have their name in the audit trail, written once: `name` is
/// an exhaustive match, and `NAMES` lists the same names (for the console's filters).
macro_rules! named_cases {
    ($(#[$doc:meta])* $enum:ident { $($case:ident => $text:literal),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $enum {
            $($case),*
        }

        impl $enum {
            /// Every case's name, in the WIT's order.
            pub const NAMES: &[&str] = &[$($text),*];

            /// The case's name (in the audit trail, an event's type).
            pub fn name(self) -> &'static str {
                match self {
                    $($enum::$case => $text),*
                }
            }

            /// The case of that name.
            pub fn from_name(name: &str) -> Option<Self> {
                match name {
                    $($text => Some($enum::$case),)*
                    _ => None,
                }
            }
        }
    };
}

pub(crate) use named_cases;

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
