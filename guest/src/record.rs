//! What the vault stores: storage key layout and the plaintext inside sealed records.
//!
//! Storage keys carry identifiers (tenant, user, provider, name), never values. Each
//! identifier is escaped so it cannot contain the `/` separator.

use serde::{Deserialize, Serialize};

use crate::model::events::EventFailure;
use crate::model::{
    ClientAuth, ConnectionInfo, ConnectionKey, ConnectionKind, ConnectionStatus, ProviderInfo, TokenSet,
};
use crate::model::{Result, VaultError};

use crate::model::storage::{
    DEVICE_PREFIX, DUE_PREFIX, FLOW_PREFIX, LEASE_PREFIX, LINK_PREFIX, PROVIDER_PREFIX, TENANT_PROVIDER_PREFIX,
    TOKEN_PREFIX, escape_key_part as escape, unescape_key_part as unescape,
};

const MAX_ID_LEN: usize = 256;

pub fn token_key(key: &ConnectionKey) -> String {
    format!(
        "{TOKEN_PREFIX}{}/{}/{}/{}",
        escape(&key.tenant),
        escape(&key.user),
        escape(&key.provider),
        escape(&key.name)
    )
}

/// The refresh lease of a connection (see `vault::Vault::refresh_coordinated`).
pub fn lease_key(key: &ConnectionKey) -> String {
    format!("{LEASE_PREFIX}{}", &token_key(key)[TOKEN_PREFIX.len()..])
}

/// The prefix of every refresh lease of a tenant's connections.
pub fn lease_prefix(tenant: &str) -> String {
    format!("{LEASE_PREFIX}{}/", escape(tenant))
}

/// Who is refreshing a connection, until when. Not sealed: it holds no value.
#[derive(Serialize, Deserialize)]
pub struct Lease {
    pub holder: String,
    pub expires_at_ms: u64,
}

/// A connection's entry in the due index: its token expires in `minute` (Unix minutes).
pub fn due_key(minute: u64, key: &ConnectionKey) -> String {
    format!("{DUE_PREFIX}{minute:010}/{}", &token_key(key)[TOKEN_PREFIX.len()..])
}

/// The minute and connection a due-index key names.
pub fn parse_due_key(storage_key: &str) -> Option<(u64, ConnectionKey)> {
    let (minute, connection) = storage_key.strip_prefix(DUE_PREFIX)?.split_once('/')?;
    Some((minute.parse().ok()?, parse_token_key(&format!("{TOKEN_PREFIX}{connection}"))?))
}

/// The minute a token falls due in the index: only tokens background refresh renews
/// (active, renewable, with an expiry) are in it.
pub fn due_minute(token: &TokenRecord) -> Option<u64> {
    (token.status == ConnectionStatus::Active && token.renewable()).then_some(token.expires_at? / 60)
}

/// The prefix under which all of one user's connections are stored.
pub fn user_prefix(tenant: &str, user: &str) -> String {
    format!("{TOKEN_PREFIX}{}/{}/", escape(tenant), escape(user))
}

/// The prefix under which all of one tenant's connections are stored.
pub fn tenant_prefix(tenant: &str) -> String {
    format!("{TOKEN_PREFIX}{}/", escape(tenant))
}

/// A list cursor past every connection of `user`: keys sort bytewise, and `0` is the
/// character after the separator `/`, which an escaped id never contains.
pub fn after_user(tenant: &str, user: &str) -> String {
    format!("{TOKEN_PREFIX}{}/{}0", escape(tenant), escape(user))
}

/// The connection a storage key under [`user_prefix`] names.
/// The prefix of every connection of every tenant.
pub const ALL_TOKENS_PREFIX: &str = TOKEN_PREFIX;

pub fn parse_token_key(storage_key: &str) -> Option<ConnectionKey> {
    let mut parts = storage_key.strip_prefix(TOKEN_PREFIX)?.split('/');
    let key = ConnectionKey {
        tenant: unescape(parts.next()?)?,
        user: unescape(parts.next()?)?,
        provider: unescape(parts.next()?)?,
        name: unescape(parts.next()?)?,
    };
    parts.next().is_none().then_some(key)
}

/// A provider's storage key: the vault's (`tenant` none, every tenant's), or a tenant's own.
pub fn provider_key(tenant: Option<&str>, name: &str) -> String {
    format!("{}{}", provider_prefix(tenant), escape(name))
}

/// Where the vault's providers (`tenant` none), or one tenant's own, are stored.
pub fn provider_prefix(tenant: Option<&str>) -> String {
    match tenant {
        None => PROVIDER_PREFIX.to_owned(),
        Some(tenant) => format!("{TENANT_PROVIDER_PREFIX}{}/", escape(tenant)),
    }
}

/// Whose provider a storage key names, and its name.
pub fn parse_provider_key(storage_key: &str) -> Option<(Option<String>, String)> {
    if let Some(name) = storage_key.strip_prefix(PROVIDER_PREFIX) {
        return Some((None, unescape(name)?));
    }
    let (tenant, name) = storage_key.strip_prefix(TENANT_PROVIDER_PREFIX)?.split_once('/')?;
    Some((Some(unescape(tenant)?), unescape(name)?))
}

/// The sealing context of a token record: it binds the record to its connection.
pub fn token_context(key: &ConnectionKey) -> [&str; 5] {
    ["token", &key.tenant, &key.user, &key.provider, &key.name]
}

/// The sealing context of a provider record: it binds the record (its client secret) to
/// its name, and a tenant's to the tenant.
pub fn provider_context<'a>(tenant: Option<&'a str>, name: &'a str) -> Vec<&'a str> {
    match tenant {
        None => vec!["provider", name],
        Some(tenant) => vec!["tenant-provider", tenant, name],
    }
}

/// Identifiers are free text (user ids are often e-mail addresses) but bounded and
/// printable.
pub fn validate_id(what: &str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(VaultError::InvalidInput(format!("{what} must not be empty")));
    }
    if value.len() > MAX_ID_LEN {
        return Err(VaultError::InvalidInput(format!("{what} is longer than {MAX_ID_LEN} bytes")));
    }
    if value.chars().any(char::is_control) {
        return Err(VaultError::InvalidInput(format!("{what} contains a control character")));
    }
    // They make a name read as another one (RTL overrides, isolates, marks).
    if value.chars().any(is_bidi_control) {
        return Err(VaultError::InvalidInput(format!("{what} contains a bidirectional control character")));
    }
    if value.trim().is_empty() {
        return Err(VaultError::InvalidInput(format!("{what} must not be only whitespace")));
    }
    if value == "." || value == ".." {
        return Err(VaultError::InvalidInput(format!("{what} must not be . or ..")));
    }
    Ok(())
}

/// The Unicode bidirectional formatting characters (UAX #9): embeddings, overrides,
/// isolates and the implicit marks.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

pub fn validate_key(key: &ConnectionKey) -> Result<()> {
    validate_id("tenant", &key.tenant)?;
    validate_id("user", &key.user)?;
    validate_id("provider", &key.provider)?;
    validate_id("connection name", &key.name)
}

/// The plaintext of a token record.
#[derive(Clone, Serialize, Deserialize)]
pub struct TokenRecord {
    pub access_token: String,
    pub token_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// Unix seconds; none = does not expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// When the current access token was obtained (Unix seconds): with `expires_at` it
    /// gives the token's original lifetime.
    pub obtained_at: u64,
    #[serde(default)]
    pub scopes: Vec<String>,
    pub status: ConnectionStatus,
    pub updated_at: u64,
    #[serde(default)]
    pub kind: ConnectionKind,
    /// Client connections: the scopes to ask for on each renewal.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requested_scopes: Vec<String>,
    /// Why refreshing has failed since the last success (the provider down, say): set by
    /// the first failure, which sends `connection.refresh_failed`; the next success clears
    /// it and sends `connection.recovered`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_failing: Option<EventFailure>,
}

impl TokenRecord {
    /// Whether the vault can obtain a new access token without the user.
    pub fn renewable(&self) -> bool {
        self.kind == ConnectionKind::Client || self.refresh_token.is_some()
    }

    pub fn token_set(&self) -> TokenSet {
        TokenSet {
            access_token: self.access_token.clone(),
            token_type: self.token_type.clone(),
            expires_at: self.expires_at,
            scope: (!self.scopes.is_empty()).then(|| self.scopes.join(" ")),
            refresh_token: self.refresh_token.clone(),
        }
    }

    pub fn info(&self, key: &ConnectionKey) -> ConnectionInfo {
        ConnectionInfo {
            provider: key.provider.clone(),
            name: key.name.clone(),
            kind: self.kind,
            scopes: self.scopes.clone(),
            expires_at: self.expires_at,
            has_refresh_token: self.refresh_token.is_some(),
            status: self.status,
            updated_at: self.updated_at,
        }
    }
}

pub fn split_scopes(scope: Option<&str>) -> Vec<String> {
    scope.map(|s| s.split_whitespace().map(String::from).collect()).unwrap_or_default()
}

/// The plaintext of a provider record (the client secret is why it is sealed). Fields
/// added after the first release default, so older records still open.
#[derive(Clone, Serialize, Deserialize)]
pub struct ProviderRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_url: Option<String>,
    pub token_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_authorization_url: Option<String>,
    pub client_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    #[serde(serialize_with = "kebab_case")]
    pub client_auth: ClientAuth,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub authorization_params: Vec<(String, String)>,
    /// How this provider separates scopes in a request (Slack: ","); none: a space.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope_separator: Option<String>,
    pub refresh_buffer_secs: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_base_url: Option<String>,
    pub updated_at: u64,
}

/// Sealed records name the client authentication as the WIT does, `client-secret-basic`,
/// so that every version of the component opens them (`ClientAuth` reads both spellings).
fn kebab_case<S: serde::Serializer>(auth: &ClientAuth, serializer: S) -> std::result::Result<S::Ok, S::Error> {
    serializer.serialize_str(match auth {
        ClientAuth::ClientSecretBasic => "client-secret-basic",
        ClientAuth::ClientSecretPost => "client-secret-post",
    })
}

impl ProviderRecord {
    /// What `get` and `list` show of it: `tenant`'s own, or (none) the vault's.
    pub fn info(&self, tenant: Option<&str>, name: &str) -> ProviderInfo {
        ProviderInfo {
            name: name.into(),
            tenant: tenant.map(String::from),
            template: self.template.clone(),
            issuer: self.issuer.clone(),
            authorization_url: self.authorization_url.clone(),
            token_url: self.token_url.clone(),
            revocation_url: self.revocation_url.clone(),
            device_authorization_url: self.device_authorization_url.clone(),
            client_id: self.client_id.clone(),
            has_client_secret: self.client_secret.is_some(),
            client_auth: self.client_auth,
            scopes: self.scopes.clone(),
            authorization_params: self.authorization_params.clone(),
            refresh_buffer_secs: self.refresh_buffer_secs,
            api_base_url: self.api_base_url.clone(),
            updated_at: self.updated_at,
        }
    }
}

/// A pending authorization-code flow, between `begin` and `complete`. Sealed: it holds
/// the PKCE verifier.
#[derive(Clone, Serialize, Deserialize)]
pub struct FlowRecord {
    pub connection: ConnectionKey,
    pub code_verifier: String,
    pub redirect_uri: String,
    pub scopes: Vec<String>,
    /// Unix seconds.
    pub expires_at: u64,
    /// SHA-256 (hex) of the secret the browser that began the flow holds; `complete` must
    /// be given the same secret. None for flows a loopback listener completes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub browser_digest: Option<String>,
}

/// A pending flow is stored under its state, which is random (see `connect`).
pub fn flow_key(state: &str) -> String {
    format!("{FLOW_PREFIX}{}", escape(state))
}

pub fn flow_context(state: &str) -> [&str; 2] {
    ["flow", state]
}

/// A pending device flow (RFC 8628). Sealed: the device code lets its holder collect the
/// tokens.
#[derive(Clone, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub connection: ConnectionKey,
    pub device_code: String,
    pub scopes: Vec<String>,
    pub interval_secs: u32,
    /// Unix seconds: no request to the provider before then.
    pub next_poll_at: u64,
    pub expires_at: u64,
}

pub fn device_key(handle: &str) -> String {
    format!("{DEVICE_PREFIX}{}", escape(handle))
}

pub fn device_context(handle: &str) -> [&str; 2] {
    ["device", handle]
}

/// An unspent connect link.
#[derive(Clone, Serialize, Deserialize)]
pub struct LinkRecord {
    pub connection: ConnectionKey,
    pub scopes: Option<Vec<String>>,
    pub expires_at: u64,
}

/// A link is stored under the SHA-256 of its code, not the code: the code lets whoever
/// holds it connect an account to the user, and storage keys are not sealed.
pub fn link_key(code: &str) -> String {
    format!("{LINK_PREFIX}{}", sha256_hex(code))
}

/// The SHA-256 of a secret, in hex: what is kept of link codes and browser bindings.
pub fn sha256_hex(secret: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(secret.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Sealed with the digest its key holds (not the code), so a sweep can open it.
pub fn link_context(link_key: &str) -> [&str; 2] {
    ["link", link_key.strip_prefix(LINK_PREFIX).unwrap_or(link_key)]
}

/// The one-time records (pending flows, device flows, connect links) that expire, in the
/// order a sweep walks them.
pub const PENDING_PREFIXES: [&str; 3] = [FLOW_PREFIX, DEVICE_PREFIX, LINK_PREFIX];

/// A pending record's sealing context from its storage key: its kind and its id.
pub fn pending_context(storage_key: &str) -> Option<(&'static str, String)> {
    if let Some(state) = storage_key.strip_prefix(FLOW_PREFIX) {
        Some(("flow", unescape(state)?))
    } else if let Some(handle) = storage_key.strip_prefix(DEVICE_PREFIX) {
        Some(("device", unescape(handle)?))
    } else {
        storage_key.strip_prefix(LINK_PREFIX).map(|digest| ("link", digest.to_owned()))
    }
}

/// The sealing context of the record stored under `storage_key`, whatever its kind; none
/// for a key outside the sealed prefixes or one that does not parse.
pub fn sealing_context(storage_key: &str) -> Option<Vec<String>> {
    let owned = |context: &[&str]| context.iter().map(|s| (*s).to_owned()).collect();
    if let Some(key) = parse_token_key(storage_key) {
        Some(owned(&token_context(&key)))
    } else if let Some((tenant, name)) = parse_provider_key(storage_key) {
        Some(owned(&provider_context(tenant.as_deref(), &name)))
    } else if let Some(tenant) = crate::webhooks::parse_webhook_key(storage_key) {
        Some(owned(&crate::webhooks::webhook_context(&tenant)))
    } else {
        pending_context(storage_key).map(|(kind, id)| vec![kind.to_owned(), id])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(3000))]

            // What passes is a name that reads as itself; a refusal never quotes it; a
            // connection's key parses back to the same names.
            #[test]
            fn names_that_pass_read_as_themselves_and_keys_round_trip(
                name in prop_oneof!["\\PC{0,20}", "\\PZ{0,3}", "[./%\\x00-\\x1f\\u{202a}-\\u{202e}\\u{2066}-\\u{2069}a ]{0,8}"],
            ) {
                if validate_id("user", &name).is_ok() {
                    prop_assert!(!name.trim().is_empty() && name.len() <= MAX_ID_LEN && name != "." && name != "..");
                    prop_assert!(!name.chars().any(|c| c.is_control() || is_bidi_control(c)));
                    let key = ConnectionKey::new(name.clone(), name.clone(), name.clone(), name.clone());
                    prop_assert_eq!(parse_token_key(&token_key(&key)), Some(key));
                }
                if let Err(err) = validate_id("user", &format!("Zq9{name}")) {
                    prop_assert!(!err.to_string().contains("Zq9"), "{err}");
                }
            }
        }
    }

    #[test]
    fn names_that_read_as_others_or_as_nothing_are_refused() {
        for bad in ["", " ", "\t", "..", ".", "a\u{202E}b", "\u{2066}x", "a\u{200F}", "a\nb", "a\u{7f}"] {
            assert!(validate_id("user", bad).is_err(), "{bad:?} accepted");
        }
        for good in ["alice", "Alice Smith", "alice@example.com", "用户", "a.b", "...", "x/y", "d%2Fe"] {
            assert!(validate_id("user", good).is_ok(), "{good:?} refused");
        }
        assert!(validate_id("user", &"a".repeat(257)).is_err());
    }

    #[test]
    fn a_pending_records_context_follows_from_its_key() {
        let context = |key: &str| pending_context(key).map(|(kind, id)| [kind.to_owned(), id]);
        assert_eq!(context(&flow_key("st8")), Some(flow_context("st8").map(String::from)));
        assert_eq!(context(&device_key("h/1")), Some(device_context("h/1").map(String::from)));
        let link = link_key("code");
        assert_eq!(context(&link), Some(link_context(&link).map(String::from)));
        assert_eq!(context("tok/a/b/c/d"), None);
    }

    #[test]
    fn a_link_is_stored_under_a_digest_of_its_code() {
        let code = "Zq3-link-code-canary";
        let key = link_key(code);
        assert!(key.starts_with(LINK_PREFIX) && !key.contains("canary"), "{key}");
        assert_eq!(key.len(), LINK_PREFIX.len() + 64);
        assert_eq!(key, link_key(code));
        assert_ne!(key, link_key("another code"));
    }

    #[test]
    fn token_keys_round_trip_awkward_ids() {
        let key = ConnectionKey::new("acme/eu", "alice+1@example.com", "git%hub", "work/2");
        let storage_key = token_key(&key);
        assert_eq!(storage_key.matches('/').count(), 4);
        assert!(storage_key.starts_with(&user_prefix("acme/eu", "alice+1@example.com")));
        assert_eq!(parse_token_key(&storage_key), Some(key));
    }

    #[test]
    fn user_prefix_does_not_cover_other_users() {
        let alice = token_key(&ConnectionKey::new("t", "alice2", "p", "n"));
        assert!(!alice.starts_with(&user_prefix("t", "alice")));
    }

    #[test]
    fn foreign_keys_do_not_parse() {
        assert_eq!(parse_token_key("tok/a/b/c"), None);
        assert_eq!(parse_token_key("tok/a/b/c/d/e"), None);
        assert_eq!(parse_token_key("tok/a/b/c/%2f"), None, "non-canonical escape");
        assert_eq!(parse_provider_key("prov/git%2Fhub"), Some((None, "git/hub".into())));
        assert_eq!(parse_provider_key(&provider_key(Some("a/b"), "gh")), Some((Some("a/b".into()), "gh".into())));
    }

    #[test]
    fn ids_are_validated() {
        assert!(validate_id("user", "").is_err());
        assert!(validate_id("user", "a\nb").is_err());
        assert!(validate_id("user", &"x".repeat(257)).is_err());
        assert!(validate_id("user", "alice@example.com").is_ok());
    }

    #[test]
    fn provider_records_name_the_client_authentication_as_they_always_have() {
        let sealed = r#"{"token_url":"https://p.example/token","client_id":"c","client_auth":"client-secret-post","scopes":[],"authorization_params":[],"refresh_buffer_secs":60,"updated_at":1}"#;
        let record: ProviderRecord = serde_json::from_str(sealed).unwrap();
        assert_eq!(record.client_auth, ClientAuth::ClientSecretPost);
        assert_eq!(serde_json::to_string(&record).unwrap(), sealed, "written back the same");
        let api_spelling = sealed.replace("client-secret-post", "client_secret_post");
        let record: ProviderRecord = serde_json::from_str(&api_spelling).unwrap();
        assert_eq!(record.client_auth, ClientAuth::ClientSecretPost);
    }

    #[test]
    fn scopes_split_on_whitespace() {
        assert_eq!(split_scopes(Some("read  write\tadmin")), vec!["read", "write", "admin"]);
        assert!(split_scopes(None).is_empty());
    }
}
