//! Connecting an account: the authorization-code flow with PKCE (RFC 6749 §4.1, RFC 7636),
//! connect links that start it, and the client-credentials grant (RFC 6749 §4.4). The
//! device flow is in `device`.
//!
//! `begin` seals the pending flow (connection, PKCE verifier, redirect URI, scopes, expiry)
//! under a random state and returns the provider's authorization URL; `complete` takes the
//! query the provider redirected to, spends the state (deleting it by version, so a
//! replay or a concurrent second use finds nothing), then exchanges the code. A connect
//! link is spent the same way, once, by `open_link`, which then begins.
//!
//! A flow begun for a browser is bound to it: the host passes a secret only that browser
//! holds (a cookie), the flow keeps its SHA-256, and `complete` refuses a callback that does
//! not bring the same secret. Otherwise whoever began a flow could send its authorization
//! URL to someone else and have their account stored under the first user's connection.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::model::*;
use crate::platform::{Platform, StorageError};
use crate::record::{self, FlowRecord, LinkRecord};
use crate::vault::{Put, Vault, storage_error};
use crate::{oauth, provider};

/// How long a user has to finish connecting.
pub const FLOW_TTL_SECS: u64 = 600;
/// How long a connect link can wait to be opened (it is handed on, through chat or mail).
pub const LINK_TTL_SECS: u64 = 900;
/// 32 random bytes, base64url: the length of a state and of a PKCE verifier.
const RANDOM_LEN: usize = 43;

impl<P: Platform> Vault<P> {
    /// Start connecting `key`. `scopes`: none requests the provider's configured ones.
    /// `browser`: the secret of the browser the flow is for (see the module's docs).
    pub fn begin(
        &self,
        key: &ConnectionKey,
        redirect_uri: &str,
        scopes: Option<Vec<String>>,
        browser: Option<&str>,
    ) -> Result<AuthorizationRequest> {
        let result = self.begin_inner(key, redirect_uri, scopes, browser);
        self.audit_token(AuditAction::ConnectBegin, key, AuditOutcome::from(&result));
        result
    }

    /// Finish a flow with the redirect's query string; stores the tokens. `browser`: the
    /// secret of the browser the callback came from, which a flow begun for one requires.
    pub fn complete(&self, callback_query: &str, browser: Option<&str>) -> Result<Connected> {
        // Until the state names a flow, there is no connection to audit the call under.
        let taken =
            Callback::parse(callback_query).and_then(|callback| Ok((self.take_flow(&callback.state)?, callback)));
        let (flow, callback) = taken.inspect_err(|err| self.audit_unkeyed(AuditAction::ConnectComplete, err))?;
        let key = flow.connection.clone();
        let result = check_browser(&flow, browser)
            .and_then(|()| self.finish_flow(flow, callback))
            .map(|info| Connected { key: key.clone(), info });
        self.audit_token(AuditAction::ConnectComplete, &key, AuditOutcome::from(&result));
        result
    }

    /// A one-time code that begins connecting `key` when opened (see [`Vault::open_link`]).
    pub fn link(&self, key: &ConnectionKey, scopes: Option<Vec<String>>) -> Result<ConnectLink> {
        let result = self.link_inner(key, scopes);
        self.audit_token(AuditAction::ConnectLink, key, AuditOutcome::from(&result));
        result
    }

    /// Spend a connect link and begin the flow it names, for `browser` (as [`Vault::begin`]).
    pub fn open_link(&self, code: &str, redirect_uri: &str, browser: Option<&str>) -> Result<AuthorizationRequest> {
        let unknown = || VaultError::InvalidInput("unknown, used or expired connect link".into());
        let taken = if is_random_token(code) {
            let link_key = record::link_key(code);
            self.take_sealed::<LinkRecord>(&link_key, &record::link_context(&link_key))
                .and_then(|link| link.ok_or_else(unknown))
        } else {
            Err(unknown())
        };
        let link = taken.inspect_err(|err| self.audit_unkeyed(AuditAction::ConnectOpenLink, err))?;
        let result = if self.now() > link.expires_at { Err(unknown()) } else { Ok(()) }
            .and_then(|()| self.begin_inner(&link.connection, redirect_uri, link.scopes, browser));
        self.audit_token(AuditAction::ConnectOpenLink, &link.connection, AuditOutcome::from(&result));
        result
    }

    /// Obtain the client's own token and keep it as connection `key`.
    pub fn connect_client(&self, key: &ConnectionKey, scopes: Option<Vec<String>>) -> Result<ConnectionInfo> {
        let result = self.connect_client_inner(key, scopes);
        self.audit_token(AuditAction::ConnectClient, key, AuditOutcome::from(&result));
        result
    }

    fn link_inner(&self, key: &ConnectionKey, scopes: Option<Vec<String>>) -> Result<ConnectLink> {
        record::validate_key(key)?;
        let provider = self.load_provider(key)?;
        if provider.authorization_url.is_none() {
            return Err(VaultError::InvalidInput("this provider has no authorization URL to connect through".into()));
        }
        if let Some(scopes) = &scopes {
            provider::validate_scopes(scopes)?;
        }
        let code = random_token()?;
        let link = LinkRecord { connection: key.clone(), scopes, expires_at: self.now() + LINK_TTL_SECS };
        let link_key = record::link_key(&code);
        match self.put_sealed(&link_key, &record::link_context(&link_key), &link, None)? {
            Put::Written => Ok(ConnectLink { code, expires_at: link.expires_at }),
            Put::Conflict => Err(VaultError::Storage("a fresh random link code was already taken".into())),
        }
    }

    fn connect_client_inner(&self, key: &ConnectionKey, scopes: Option<Vec<String>>) -> Result<ConnectionInfo> {
        record::validate_key(key)?;
        let provider = self.load_provider(key)?;
        let scopes = scopes.unwrap_or_else(|| provider.scopes.clone());
        provider::validate_scopes(&scopes)?;
        let grant = oauth::client_credentials(&provider, &scopes, &|request| self.platform().http(request))?;
        self.save_grant(key, with_requested_scopes(grant, &scopes), ConnectionKind::Client, scopes)
    }

    fn begin_inner(
        &self,
        key: &ConnectionKey,
        redirect_uri: &str,
        scopes: Option<Vec<String>>,
        browser: Option<&str>,
    ) -> Result<AuthorizationRequest> {
        record::validate_key(key)?;
        validate_redirect_uri(redirect_uri)?;
        if browser.is_some_and(|secret| !is_random_token(secret)) {
            return Err(VaultError::InvalidInput("a browser's secret must be 32 random bytes, base64url".into()));
        }
        let provider = self.load_provider(key)?;
        let scopes = scopes.unwrap_or_else(|| provider.scopes.clone());
        provider::validate_scopes(&scopes)?;
        let state = random_token()?;
        let flow = FlowRecord {
            connection: key.clone(),
            code_verifier: random_token()?,
            redirect_uri: redirect_uri.to_owned(),
            scopes,
            expires_at: self.now() + FLOW_TTL_SECS,
            browser_digest: browser.map(record::sha256_hex),
        };
        let url = oauth::authorization_url(&provider, redirect_uri, &state, &flow.code_verifier, &flow.scopes)?;
        match self.put_sealed(&record::flow_key(&state), &record::flow_context(&state), &flow, None)? {
            Put::Written => Ok(AuthorizationRequest { url, state, expires_at: flow.expires_at }),
            Put::Conflict => Err(VaultError::Storage("a fresh random state was already taken".into())),
        }
    }

    /// Exchange the code of a flow just taken, and save the tokens.
    fn finish_flow(&self, flow: FlowRecord, callback: Callback) -> Result<ConnectionInfo> {
        let key = &flow.connection;
        if self.now() > flow.expires_at {
            return Err(VaultError::InvalidInput("this authorization flow expired; begin again".into()));
        }
        let provider = self.load_provider(key)?;
        // RFC 9207: a response naming another issuer is a mix-up attack, or a misconfiguration.
        if let (Some(sent), Some(expected)) = (&callback.issuer, &provider.issuer)
            && sent != expected
        {
            return Err(VaultError::InvalidInput("the authorization response names another issuer".into()));
        }
        if let Some(error) = callback.error {
            return Err(VaultError::provider(
                None,
                Some(error.clone()),
                format!("the authorization server refused to connect the account ({error})"),
            ));
        }
        let code = callback
            .code
            .ok_or_else(|| VaultError::InvalidInput("the authorization response has neither code nor error".into()))?;
        let grant = oauth::exchange_code(&provider, &code, &flow.code_verifier, &flow.redirect_uri, &|request| {
            self.platform().http(request)
        })?;
        self.save_grant(key, with_requested_scopes(grant, &flow.scopes), ConnectionKind::User, Vec::new())
    }

    fn take_flow(&self, state: &str) -> Result<FlowRecord> {
        self.take_sealed(&record::flow_key(state), &record::flow_context(state))?
            .ok_or_else(|| VaultError::InvalidInput("unknown or already used authorization state".into()))
    }

    /// Read and delete a one-time record: whoever deletes it owns it, once. `None` when
    /// there is none, or another caller took it first.
    fn take_sealed<T: serde::de::DeserializeOwned>(
        &self,
        storage_key: &str,
        context: &crate::seal::Context,
    ) -> Result<Option<T>> {
        let Some((value, version)) = self.load_sealed::<T>(storage_key, context)? else {
            return Ok(None);
        };
        match self.platform().storage_delete(storage_key, version) {
            Ok(()) => Ok(Some(value)),
            Err(StorageError::Conflict) => Ok(None),
            Err(StorageError::Unavailable(why)) => Err(VaultError::Storage(why)),
        }
    }
}

/// A flow begun for a browser completes only with that browser's secret.
fn check_browser(flow: &FlowRecord, browser: Option<&str>) -> Result<()> {
    match &flow.browser_digest {
        Some(digest) if browser.map(record::sha256_hex).as_ref() != Some(digest) => Err(VaultError::InvalidInput(
            "this sign-in was started in another browser; open the connect link again in the browser you sign in with"
                .into(),
        )),
        _ => Ok(()),
    }
}

/// RFC 6749 §5.1: a response without `scope` granted the scopes requested.
pub(crate) fn with_requested_scopes(grant: TokenGrant, requested: &[String]) -> TokenGrant {
    let scope = grant.scope.clone().or_else(|| (!requested.is_empty()).then(|| requested.join(" ")));
    TokenGrant { scope, ..grant }
}

/// The parameters of an authorization response (RFC 6749 §4.1.2, §4.1.2.1; RFC 9207).
struct Callback {
    state: String,
    code: Option<String>,
    error: Option<String>,
    issuer: Option<String>,
}

impl Callback {
    fn parse(query: &str) -> Result<Self> {
        let query = query.strip_prefix('?').unwrap_or(query);
        let (mut state, mut code, mut error, mut issuer) = (None, None, None, None);
        for (name, value) in oauth2::url::form_urlencoded::parse(query.as_bytes()) {
            let slot = match name.as_ref() {
                "state" => &mut state,
                "code" => &mut code,
                "error" => &mut error,
                "iss" => &mut issuer,
                _ => continue,
            };
            if slot.replace(value.into_owned()).is_some() {
                return Err(VaultError::InvalidInput(format!("the authorization response repeats {name}")));
            }
        }
        let state = state.ok_or_else(|| VaultError::InvalidInput("the authorization response has no state".into()))?;
        if !is_random_token(&state) {
            return Err(VaultError::InvalidInput("unknown or already used authorization state".into()));
        }
        // An error code is ASCII without quotes or backslashes (RFC 6749 §4.1.2.1).
        if let Some(e) = &error
            && (e.is_empty()
                || e.len() > 64
                || !e.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\'))
        {
            return Err(VaultError::InvalidInput("the authorization response has a malformed error code".into()));
        }
        Ok(Callback { state, code, error, issuer })
    }
}

fn validate_redirect_uri(uri: &str) -> Result<()> {
    let parsed = oauth2::url::Url::parse(uri)
        .map_err(|_| VaultError::InvalidInput("redirect URI is not an absolute URL".into()))?;
    if parsed.fragment().is_some() {
        return Err(VaultError::InvalidInput("redirect URI must not have a fragment (RFC 6749 §3.1.2)".into()));
    }
    if parsed.scheme() == "http" && !matches!(parsed.host_str(), Some("127.0.0.1" | "[::1]" | "localhost")) {
        return Err(VaultError::InvalidInput("a plain-http redirect URI must be a loopback address".into()));
    }
    Ok(())
}

/// 32 random bytes, base64url: states, verifiers, link codes and device handles.
pub(crate) fn random_token() -> Result<String> {
    let mut bytes = [0; 32];
    getrandom::fill(&mut bytes).map_err(|_| VaultError::Storage("no randomness available".into()))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// Whether `value` could be one of [`random_token`]'s: checked before any lookup.
pub(crate) fn is_random_token(value: &str) -> bool {
    value.len() == RANDOM_LEN && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// How long an expired pending record is kept before a sweep deletes it.
const SWEEP_GRACE_SECS: u64 = 3600;

impl<P: Platform> Vault<P> {
    /// Housekeeping: of the next `limit` pending flows, device flows and connect links after
    /// `cursor`, delete those expired more than an hour ago (until then, using one says
    /// "expired" rather than "unknown"). A record that does not open is left for an
    /// operator to look at. Pass the cursor back until it is none.
    pub fn sweep_expired(&self, cursor: Option<&str>, limit: u32) -> Result<SweepPage> {
        #[derive(serde::Deserialize)]
        struct Expiring {
            expires_at: u64,
        }
        if limit == 0 || limit > 1000 {
            return Err(VaultError::InvalidInput("limit must be 1 to 1000".into()));
        }
        let prefixes = record::PENDING_PREFIXES;
        let at = cursor.map_or(Some(0), |c| prefixes.iter().position(|p| c.starts_with(p)));
        let Some((at, prefix)) = at.and_then(|at| prefixes.get(at).map(|p| (at, *p))) else {
            return Ok(SweepPage { deleted: 0, cursor: None });
        };
        let page = self.platform().storage_list(prefix, cursor, limit).map_err(storage_error)?;
        let now = self.now();
        let mut deleted = 0;
        for storage_key in &page.keys {
            let (Some((kind, id)), Some(entry)) =
                (record::pending_context(storage_key), self.storage_get(storage_key)?)
            else {
                continue;
            };
            let expired = self
                .open_sealed::<Expiring>(&entry, &[kind, &id])
                .is_ok_and(|record| record.expires_at.saturating_add(SWEEP_GRACE_SECS) < now);
            if expired {
                match self.platform().storage_delete(storage_key, entry.version) {
                    Ok(()) => deleted += 1,
                    Err(StorageError::Conflict) => {} // taken or replaced meanwhile
                    Err(StorageError::Unavailable(why)) => return Err(VaultError::Storage(why)),
                }
            }
        }
        // A finished prefix hands over to the next one: listing after "device/" is all of it.
        let cursor = page.cursor.or_else(|| prefixes.get(at + 1).map(|next| (*next).to_owned()));
        Ok(SweepPage { deleted, cursor })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    mod properties {
        use super::*;
        use proptest::prelude::*;

        const CANARY: &str = "canary-code-5b1e";

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            // Any query a browser can bring back: parsed or refused, never a panic, and a
            // refusal never quotes the code (or anything else) it carried.
            #[test]
            fn any_callback_query_parses_or_is_refused_without_quoting_it(
                pieces in proptest::collection::vec(
                    prop_oneof![
                        Just("state=".to_owned()), Just("code=".to_owned()), Just("error=".to_owned()),
                        Just("iss=".to_owned()), Just("&".to_owned()), Just("?".to_owned()), Just("%".to_owned()),
                        Just("%22".to_owned()), Just("%5C".to_owned()), Just("+".to_owned()), Just("=".to_owned()),
                        Just(CANARY.to_owned()), Just("A".repeat(43)), "\\PC{0,12}".prop_map(String::from),
                    ],
                    0..10,
                )
            ) {
                let query = pieces.concat();
                if let Err(err) = Callback::parse(&query) {
                    let shown = format!("{err} {err:?}");
                    prop_assert!(!shown.contains(CANARY), "{shown}");
                }
            }
        }
    }
    use crate::memory::MemoryPlatform;

    fn vault() -> Vault<MemoryPlatform> {
        let vault = Vault::new(MemoryPlatform::new());
        vault
            .put_provider(
                None,
                ProviderConfig {
                    name: "acme".into(),
                    issuer: None,
                    authorization_url: Some("https://idp.example/authorize".into()),
                    token_url: Some("https://idp.example/token".into()),
                    client_id: "client".into(),
                    client_secret: Some("client-secret".into()),
                    scopes: vec!["read".into()],
                    ..ProviderConfig::default()
                },
            )
            .unwrap();
        vault.platform().respond(|request| {
            let form: std::collections::HashMap<String, String> =
                oauth2::url::form_urlencoded::parse(request.body()).into_owned().collect();
            let body = if form.get("code").map(String::as_str) == Some("good-code") {
                r#"{"access_token":"at-1","token_type":"Bearer","expires_in":3600,"refresh_token":"rt-1"}"#
            } else {
                r#"{"error":"invalid_grant"}"#
            };
            let status = if body.contains("error") { 400 } else { 200 };
            Ok(http::Response::builder().status(status).body(body.as_bytes().to_vec()).unwrap())
        });
        vault
    }

    fn key() -> ConnectionKey {
        ConnectionKey::new("t1", "alice", "acme", "work")
    }

    const REDIRECT: &str = "http://127.0.0.1:4000/callback";

    #[test]
    fn a_flow_completes_once_with_the_recorded_redirect_uri_and_verifier() {
        let vault = vault();
        let request = vault.begin(&key(), REDIRECT, None, None).unwrap();
        assert_eq!(request.state.len(), RANDOM_LEN);
        assert!(request.url.contains(&format!("state={}", request.state)));
        assert!(
            !vault.platform().records.borrow().values().any(|(v, _)| String::from_utf8_lossy(v).contains(REDIRECT))
        );

        let Connected { key: connected, info } =
            vault.complete(&format!("?code=good-code&state={}", request.state), None).unwrap();
        assert_eq!(connected, key());
        assert!(info.has_refresh_token);
        assert_eq!(info.scopes, ["read"], "no scope in the response: the requested ones were granted");
        let exchange = vault.platform().requests.borrow().last().cloned().unwrap();
        let form: std::collections::HashMap<String, String> =
            oauth2::url::form_urlencoded::parse(exchange.body()).into_owned().collect();
        assert_eq!(form["redirect_uri"], REDIRECT);
        assert_eq!(form["code_verifier"].len(), RANDOM_LEN);
        assert_eq!(vault.get(&key()).unwrap().access_token, "at-1");

        let replay = vault.complete(&format!("code=good-code&state={}", request.state), None);
        assert!(matches!(replay, Err(VaultError::InvalidInput(m)) if m.contains("already used")));
        assert_eq!(vault.platform().requests.borrow().len(), 1, "a replay never reaches the provider");
    }

    #[test]
    fn an_expired_flow_is_refused_and_spent() {
        let vault = vault();
        let request = vault.begin(&key(), REDIRECT, Some(vec!["x".into()]), None).unwrap();
        vault.platform().advance_secs(FLOW_TTL_SECS + 1);
        let expired = vault.complete(&format!("code=good-code&state={}", request.state), None);
        assert!(matches!(expired, Err(VaultError::InvalidInput(m)) if m.contains("expired")));
        assert!(vault.platform().requests.borrow().is_empty());
        assert!(matches!(vault.get(&key()), Err(VaultError::NotFound(_))));
    }

    #[test]
    fn a_flow_begun_for_a_browser_completes_only_with_its_secret() {
        let vault = vault();
        let (mine, theirs) = (random_token().unwrap(), random_token().unwrap());
        for other in [None, Some(theirs.as_str())] {
            let request = vault.begin(&key(), REDIRECT, None, Some(&mine)).unwrap();
            let refused = vault.complete(&format!("code=good-code&state={}", request.state), other);
            assert!(matches!(refused, Err(VaultError::InvalidInput(m)) if m.contains("another browser")), "{other:?}");
            assert!(vault.platform().requests.borrow().is_empty(), "the code is never exchanged");
            let spent = vault.complete(&format!("code=good-code&state={}", request.state), Some(&mine));
            assert!(matches!(spent, Err(VaultError::InvalidInput(m)) if m.contains("already used")), "spent");
        }
        assert!(
            !vault.platform().records.borrow().values().any(|(v, _)| String::from_utf8_lossy(v).contains(&mine)),
            "the secret itself is not stored"
        );
        let request = vault.begin(&key(), REDIRECT, None, Some(&mine)).unwrap();
        vault.complete(&format!("code=good-code&state={}", request.state), Some(&mine)).unwrap();
        assert_eq!(vault.get(&key()).unwrap().access_token, "at-1");
        assert!(matches!(vault.begin(&key(), REDIRECT, None, Some("short")), Err(VaultError::InvalidInput(_))));
    }

    #[test]
    fn errors_from_the_authorization_server_are_typed_and_spend_the_state() {
        let vault = vault();
        let request = vault.begin(&key(), REDIRECT, None, None).unwrap();
        let denied =
            vault.complete(&format!("error=access_denied&error_description=no+way&state={}", request.state), None);
        assert!(matches!(denied, Err(VaultError::Provider(f)) if f.code.as_deref() == Some("access_denied")));
        assert!(vault.complete(&format!("code=good-code&state={}", request.state), None).is_err());

        let request = vault.begin(&key(), REDIRECT, None, None).unwrap();
        let bad_code = vault.complete(&format!("code=stolen&state={}", request.state), None);
        assert!(matches!(bad_code, Err(VaultError::Provider(f)) if f.code.as_deref() == Some("invalid_grant")));
    }

    #[test]
    fn a_response_from_another_issuer_is_refused() {
        let vault = vault();
        let config = ProviderConfig {
            name: "acme".into(),
            authorization_url: Some("https://idp.example/authorize".into()),
            token_url: Some("https://idp.example/token".into()),
            client_id: "client".into(),
            ..ProviderConfig::default()
        };
        // An issuer as discovery would have set it (discovery has its own tests).
        let base = provider::Endpoints { issuer: Some("https://idp.example".into()), ..Default::default() };
        let provider = provider::merge(config, base, 60, 0).unwrap();
        let storage_key = record::provider_key(None, "acme");
        let version = vault.platform().records.borrow()[&storage_key].1;
        vault.put_sealed(&storage_key, &record::provider_context(None, "acme"), &provider, Some(version)).unwrap();
        let request = vault.begin(&key(), REDIRECT, None, None).unwrap();
        let mixed_up =
            vault.complete(&format!("code=good-code&iss=https%3A%2F%2Fevil.example&state={}", request.state), None);
        assert!(matches!(mixed_up, Err(VaultError::InvalidInput(m)) if m.contains("issuer")));
        assert!(vault.platform().requests.borrow().is_empty());
    }

    #[test]
    fn bad_input_is_refused() {
        let vault = vault();
        for uri in ["not a url", "http://example.com/cb", "https://app.example/cb#frag"] {
            assert!(matches!(vault.begin(&key(), uri, None, None), Err(VaultError::InvalidInput(_))), "{uri}");
        }
        assert!(matches!(
            vault.begin(&ConnectionKey::new("t", "u", "nope", "n"), REDIRECT, None, None),
            Err(VaultError::NotFound(_))
        ));
        for query in ["", "code=x", "state=short&code=x", &format!("state={}&state={}", "a".repeat(43), "a".repeat(43))]
        {
            assert!(matches!(vault.complete(query, None), Err(VaultError::InvalidInput(_))), "{query}");
        }
    }
}

#[cfg(test)]
mod link_and_client_tests {
    use super::*;
    use crate::memory::MemoryPlatform;

    fn vault() -> Vault<MemoryPlatform> {
        let vault = Vault::new(MemoryPlatform::new());
        vault
            .put_provider(
                None,
                ProviderConfig {
                    name: "acme".into(),
                    authorization_url: Some("https://idp.example/authorize".into()),
                    token_url: Some("https://idp.example/token".into()),
                    client_id: "client".into(),
                    client_secret: Some("client-secret".into()),
                    scopes: vec!["read".into()],
                    ..ProviderConfig::default()
                },
            )
            .unwrap();
        vault
    }

    fn key() -> ConnectionKey {
        ConnectionKey::new("t1", "alice", "acme", "work")
    }

    fn form(request: &oauth2::HttpRequest) -> std::collections::HashMap<String, String> {
        oauth2::url::form_urlencoded::parse(request.body()).into_owned().collect()
    }

    #[test]
    fn a_missing_connection_yields_a_link_that_opens_once() {
        let vault = vault();
        let Ok(TokenOrLink::Link(link)) = vault.get_or_link(&key(), Some(vec!["write".into()])) else {
            panic!("expected a link");
        };
        assert!(is_random_token(&link.code));
        assert_eq!(link.expires_at, vault.now() + LINK_TTL_SECS);
        let request = vault.open_link(&link.code, "http://127.0.0.1:9/cb", None).unwrap();
        assert!(request.url.contains("scope=write"), "the link's scopes are requested: {}", request.url);
        let again = vault.open_link(&link.code, "http://127.0.0.1:9/cb", None);
        assert!(matches!(again, Err(VaultError::InvalidInput(m)) if m.contains("connect link")));
        assert!(vault.open_link("not a code", "http://127.0.0.1:9/cb", None).is_err());
    }

    #[test]
    fn an_expired_link_is_refused() {
        let vault = vault();
        let link = vault.link(&key(), None).unwrap();
        vault.platform().advance_secs(LINK_TTL_SECS + 1);
        assert!(matches!(vault.open_link(&link.code, "http://127.0.0.1:9/cb", None), Err(VaultError::InvalidInput(_))));
    }

    #[test]
    fn an_existing_connection_yields_its_token_and_an_unknown_provider_an_error() {
        let vault = vault();
        let grant = TokenGrant {
            access_token: "at".into(),
            token_type: "Bearer".into(),
            expires_in: None,
            refresh_token: None,
            scope: None,
        };
        vault.store(&key(), grant).unwrap();
        assert!(matches!(vault.get_or_link(&key(), None), Ok(TokenOrLink::Token(t)) if t.access_token == "at"));
        let other = ConnectionKey::new("t1", "alice", "nope", "work");
        assert!(matches!(vault.get_or_link(&other, None), Err(VaultError::NotFound(m)) if m.contains("provider")));
    }

    #[test]
    fn a_client_connection_is_obtained_and_renewed_with_client_credentials() {
        let vault = vault();
        let issued = std::cell::Cell::new(0);
        vault.platform().respond(move |_| {
            issued.set(issued.get() + 1);
            let body = format!(r#"{{"access_token":"cc-{}","token_type":"Bearer","expires_in":600}}"#, issued.get());
            Ok(http::Response::builder().status(200).body(body.into_bytes()).unwrap())
        });
        let info = vault.connect_client(&key(), Some(vec!["admin".into()])).unwrap();
        assert_eq!(info.kind, ConnectionKind::Client);
        assert_eq!(info.scopes, ["admin"]);
        assert!(!info.has_refresh_token);
        assert_eq!(vault.get(&key()).unwrap().access_token, "cc-1");

        vault.platform().advance_secs(590);
        assert_eq!(vault.get(&key()).unwrap().access_token, "cc-2", "renewed without a refresh token");
        let requests = vault.platform().requests.borrow();
        assert_eq!(requests.len(), 2);
        for request in requests.iter() {
            let form = form(request);
            assert_eq!(form["grant_type"], "client_credentials");
            assert_eq!(form["scope"], "admin", "renewal asks for the scopes first asked for");
        }
    }
}

#[cfg(test)]
mod sweep_tests {
    use super::*;
    use crate::memory::MemoryPlatform;
    use crate::vault::fixtures::*;

    #[test]
    fn a_sweep_deletes_pending_records_an_hour_after_they_expire_and_nothing_else() {
        let vault = vault();
        let sweep_all = |vault: &Vault<MemoryPlatform>| {
            let (mut deleted, mut cursor, mut steps) = (0, None, 0);
            loop {
                let page = vault.sweep_expired(cursor.as_deref(), 1).unwrap();
                (deleted, steps) = (deleted + page.deleted, steps + 1);
                match page.cursor {
                    Some(next) => cursor = Some(next),
                    None => return (deleted, steps),
                }
            }
        };
        vault.store(&key(), grant("at-1", Some("rt-1"), Some(100))).unwrap();
        vault.begin(&key(), "http://127.0.0.1/callback", None, None).unwrap();
        let old_link = vault.link(&key(), None).unwrap();
        assert_eq!(sweep_all(&vault).0, 0, "nothing has expired");

        vault.platform().advance_secs(15 * 60 + 3600 + 1); // both expired over an hour ago
        let fresh_link = vault.link(&key(), None).unwrap();
        let (deleted, steps) = sweep_all(&vault);
        assert_eq!(deleted, 2);
        assert!(steps >= 3, "one page of one record at a time, every kind: {steps} steps");
        let left: Vec<String> = vault.platform().records.borrow().keys().cloned().collect();
        assert_eq!(left.iter().filter(|k| k.starts_with("link/")).count(), 1, "{left:?}");
        assert!(left.iter().any(|k| k.starts_with("tok/")) && !left.iter().any(|k| k.starts_with("flow/")));
        assert!(vault.open_link(&fresh_link.code, "http://127.0.0.1/callback", None).is_ok());
        assert!(matches!(
            vault.open_link(&old_link.code, "http://127.0.0.1/callback", None),
            Err(VaultError::InvalidInput(_))
        ));
        assert!(matches!(vault.sweep_expired(Some("tok/"), 5), Ok(SweepPage { deleted: 0, cursor: None })));
    }
}
