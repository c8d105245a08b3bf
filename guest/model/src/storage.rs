//! What the component's storage import passes: versioned records (compare-and-swap) and
//! pages of keys; and the key prefixes under which the component keeps sealed records.

/// A stored value and its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub value: Vec<u8>,
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyPage {
    pub keys: Vec<String>,
    /// Where the next page starts; none after the last page.
    pub cursor: Option<String>,
}

impl KeyPage {
    /// A page of at most `limit` keys in order: a full page may have more after it.
    pub fn of(keys: Vec<String>, limit: u32) -> Self {
        let cursor = (keys.len() == limit as usize).then(|| keys.last().cloned()).flatten();
        KeyPage { keys, cursor }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// The expected version did not match, or the record is absent.
    #[error("version conflict")]
    Conflict,
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

/// Connections' tokens.
pub const TOKEN_PREFIX: &str = "tok/";
/// Registered providers (their client secrets).
pub const PROVIDER_PREFIX: &str = "prov/";
/// Pending authorization-code flows (their PKCE verifiers).
pub const FLOW_PREFIX: &str = "flow/";
/// Pending device flows (their device codes).
pub const DEVICE_PREFIX: &str = "device/";
/// Unspent connect links.
pub const LINK_PREFIX: &str = "link/";
/// Refresh leases: not sealed, they hold no value.
pub const LEASE_PREFIX: &str = "lease/";

/// Every prefix under which records are sealed with the keyring's keys.
pub const SEALED_PREFIXES: [&str; 5] = [TOKEN_PREFIX, PROVIDER_PREFIX, FLOW_PREFIX, DEVICE_PREFIX, LINK_PREFIX];
