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

/// One write of a commit, which makes all of its writes or none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Write if the record's version is `expected` (none: only if absent).
    Put { key: String, value: Vec<u8>, expected: Option<u64> },
    /// Delete if the record's version is `expected`.
    Delete { key: String, expected: u64 },
}

impl Write {
    pub fn key(&self) -> &str {
        match self {
            Write::Put { key, .. } | Write::Delete { key, .. } => key,
        }
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

/// One identifier (tenant, user, provider, name) as a part of a storage key: escaped so
/// that it cannot contain the `/` separator.
pub fn escape_key_part(id: &str) -> String {
    id.replace('%', "%25").replace('/', "%2F")
}

/// The identifier a key part escapes; none for a part [`escape_key_part`] cannot make.
pub fn unescape_key_part(part: &str) -> Option<String> {
    let unescaped = part.replace("%2F", "/").replace("%25", "%");
    (escape_key_part(&unescaped) == part).then_some(unescaped)
}

/// Connections' tokens.
pub const TOKEN_PREFIX: &str = "tok/";
/// Registered providers (their client secrets): the vault's, every tenant's.
pub const PROVIDER_PREFIX: &str = "prov/";
/// Tenants' own providers: `tprov/{tenant}/{name}`.
pub const TENANT_PROVIDER_PREFIX: &str = "tprov/";
/// Pending authorization-code flows (their PKCE verifiers).
pub const FLOW_PREFIX: &str = "flow/";
/// Pending device flows (their device codes).
pub const DEVICE_PREFIX: &str = "device/";
/// Unspent connect links.
pub const LINK_PREFIX: &str = "link/";
/// Refresh leases: not sealed, they hold no value.
pub const LEASE_PREFIX: &str = "lease/";
/// When connections fall due for background refresh: `due/{expiry minute}/{connection}`,
/// empty records kept in step with the token records, so a pass reads only what is due.
pub const DUE_PREFIX: &str = "due/";
/// Present once the due index covers every connection (it is built by the passes over all
/// connections that run until then).
pub const DUE_INDEX_KEY: &str = "due-index";
/// Tenants' webhooks (their signing secrets).
pub const WEBHOOK_PREFIX: &str = "hook/";

/// Every prefix under which records are sealed with the keyring's keys, in the order a
/// re-encryption pass walks them.
pub const SEALED_PREFIXES: [&str; 7] =
    [TOKEN_PREFIX, PROVIDER_PREFIX, TENANT_PROVIDER_PREFIX, FLOW_PREFIX, DEVICE_PREFIX, LINK_PREFIX, WEBHOOK_PREFIX];
/// The keyring: the data keys, each wrapped by the master key (the host's record, not sealed
/// by the component).
pub const KEYRING_KEY: &str = "keyring";
/// Where a re-encryption pass keeps its progress, so an interrupted pass resumes.
pub const REENCRYPT_PROGRESS_KEY: &str = "keyring-reencrypt";

/// The first byte of a sealed record: its envelope format.
pub const ENVELOPE_FORMAT: u8 = 1;

/// The id of the key a sealed record names in its envelope
/// (`[format:1][key-id length:1][key id]…`), read without opening it; none when the bytes
/// are not an envelope of a known format.
pub fn envelope_key_id(envelope: &[u8]) -> Option<&str> {
    let (&format, rest) = envelope.split_first()?;
    let (&id_len, rest) = rest.split_first()?;
    if format != ENVELOPE_FORMAT || id_len == 0 {
        return None;
    }
    std::str::from_utf8(rest.get(..usize::from(id_len))?).ok()
}

/// What one step of a re-encryption pass did to the sealed records it walked.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReencryptPage {
    /// Re-sealed under the active key.
    pub reencrypted: u32,
    /// Already under the active key.
    pub current: u32,
    /// Could not be opened (altered, or sealed with a key the keyring lacks): left as they are.
    pub failed: u32,
    /// Where the next step starts; none when the pass is done.
    pub cursor: Option<String>,
}
