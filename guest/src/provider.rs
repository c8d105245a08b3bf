//! Providers: registering one (endpoints from a template, from discovery, or given, merged
//! into the record the vault keeps; a given value wins over a template's or metadata's),
//! reading, listing and removing them.

use crate::expiry::DEFAULT_REFRESH_BUFFER_SECS;
use crate::model::*;
use crate::platform::Platform;
use crate::record::{self, ProviderRecord};
use crate::vault::{MAX_ATTEMPTS, Put, Vault, too_contended};
use crate::{discovery, templates};

/// Endpoints and defaults, as a template or an issuer's metadata supply them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub issuer: Option<String>,
    pub authorization_url: Option<String>,
    pub token_url: Option<String>,
    pub revocation_url: Option<String>,
    pub device_authorization_url: Option<String>,
    pub api_base_url: Option<String>,
    pub client_auth: Option<ClientAuth>,
    pub scopes: Vec<String>,
    pub authorization_params: Vec<(String, String)>,
    pub scope_separator: Option<String>,
}

/// The record for `config` over `base`.
pub fn merge(config: ProviderConfig, base: Endpoints, refresh_buffer_secs: u32, now: u64) -> Result<ProviderRecord> {
    let token_url = config.token_url.or(base.token_url).ok_or_else(|| {
        VaultError::InvalidInput("a provider needs a token URL, a template or an issuer to discover it from".into())
    })?;
    let mut authorization_params = base.authorization_params;
    for (name, value) in config.authorization_params {
        authorization_params.retain(|(n, _)| *n != name);
        authorization_params.push((name, value));
    }
    let record = ProviderRecord {
        template: config.template.map(|t| t.name),
        issuer: config.issuer.or(base.issuer),
        authorization_url: config.authorization_url.or(base.authorization_url),
        token_url,
        revocation_url: config.revocation_url.or(base.revocation_url),
        device_authorization_url: config.device_authorization_url.or(base.device_authorization_url),
        client_id: config.client_id,
        client_secret: config.client_secret,
        client_auth: config.client_auth.or(base.client_auth).unwrap_or(ClientAuth::ClientSecretBasic),
        scopes: if config.scopes.is_empty() { base.scopes } else { config.scopes },
        authorization_params,
        scope_separator: base.scope_separator,
        refresh_buffer_secs,
        api_base_url: config.api_base_url.or(base.api_base_url).map(|url| url.trim_end_matches('/').to_owned()),
        updated_at: now,
    };
    validate(&record)?;
    Ok(record)
}

/// Parameters the vault sets itself; an operator's value for one would break the flow.
const RESERVED_PARAMS: [&str; 7] =
    ["response_type", "client_id", "redirect_uri", "state", "code_challenge", "code_challenge_method", "scope"];

fn validate(record: &ProviderRecord) -> Result<()> {
    validate_url("token URL", &record.token_url)?;
    for (what, url) in [
        ("issuer", &record.issuer),
        ("authorization URL", &record.authorization_url),
        ("revocation URL", &record.revocation_url),
        ("device authorization URL", &record.device_authorization_url),
        ("API base URL", &record.api_base_url),
    ] {
        if let Some(url) = url {
            validate_url(what, url)?;
        }
    }
    if record.client_id.is_empty() {
        return Err(VaultError::InvalidInput("client id must not be empty".into()));
    }
    if record.client_secret.as_deref() == Some("") {
        return Err(VaultError::InvalidInput("client secret must not be empty when given".into()));
    }
    validate_scopes(&record.scopes)?;
    for (name, _) in &record.authorization_params {
        if name.is_empty() || RESERVED_PARAMS.contains(&name.as_str()) {
            return Err(VaultError::InvalidInput(format!(
                "authorization parameter {name:?} is set by the vault and cannot be configured"
            )));
        }
    }
    Ok(())
}

/// Scopes are joined with a space or, for some providers, a comma.
pub fn validate_scopes(scopes: &[String]) -> Result<()> {
    if scopes.iter().any(|s| s.is_empty() || s.contains(char::is_whitespace) || s.contains(',')) {
        return Err(VaultError::InvalidInput("each scope must be one non-empty word".into()));
    }
    Ok(())
}

pub fn validate_url(what: &str, url: &str) -> Result<oauth2::url::Url> {
    let parsed =
        oauth2::url::Url::parse(url).map_err(|_| VaultError::InvalidInput(format!("{what} is not a valid URL")))?;
    if !matches!(parsed.scheme(), "https" | "http") || parsed.host_str().is_none() {
        return Err(VaultError::InvalidInput(format!("{what} must be an http(s) URL with a host")));
    }
    if parsed.fragment().is_some() {
        return Err(VaultError::InvalidInput(format!("{what} must not have a fragment")));
    }
    // It would be shown to every tenant with the provider (and the password is a secret).
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(VaultError::InvalidInput(format!("{what} must not hold credentials (user:password@)")));
    }
    Ok(parsed)
}

impl<P: Platform> Vault<P> {
    /// Add or replace the vault's provider (`tenant` none) or `tenant`'s own.
    pub fn put_provider(&self, tenant: Option<&str>, config: ProviderConfig) -> Result<ProviderInfo> {
        let name = config.name.clone();
        let result = self.put_provider_inner(tenant, config);
        self.emit(AuditAction::ProviderPut, AuditOutcome::from(&result), tenant, None, Some(&name), None);
        result
    }

    /// The provider of that name a connection of `tenant` uses; `tenant` none: the vault's.
    pub fn get_provider(&self, tenant: Option<&str>, name: &str) -> Result<ProviderInfo> {
        validate_owner(tenant)?;
        validate_provider_name(name)?;
        let (owner, provider) = self.find_provider(tenant, name)?;
        Ok(provider.info(owner.as_deref(), name))
    }

    /// The vault's providers; with a tenant, its own and the vault's of other names.
    pub fn list_providers(&self, tenant: Option<&str>) -> Result<Vec<ProviderInfo>> {
        validate_owner(tenant)?;
        let mut infos = match tenant {
            Some(tenant) => self.providers_of(Some(tenant))?,
            None => Vec::new(),
        };
        for global in self.providers_of(None)? {
            if !infos.iter().any(|own| own.name == global.name) {
                infos.push(global);
            }
        }
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(infos)
    }

    /// Remove the vault's provider of that name, or `tenant`'s own.
    pub fn remove_provider(&self, tenant: Option<&str>, name: &str) -> Result<()> {
        let result = validate_owner(tenant)
            .and_then(|()| validate_provider_name(name))
            .and_then(|()| self.delete_record(&record::provider_key(tenant, name), "provider"));
        self.emit(AuditAction::ProviderRemove, AuditOutcome::from(&result), tenant, None, Some(name), None);
        result
    }

    /// The provider a connection uses: its tenant's own of that name, else the vault's.
    pub(crate) fn load_provider(&self, key: &ConnectionKey) -> Result<ProviderRecord> {
        self.find_provider(Some(&key.tenant), &key.provider).map(|(_, provider)| provider)
    }

    /// `tenant`'s own provider of that name, else the vault's; and whose it is.
    fn find_provider(&self, tenant: Option<&str>, name: &str) -> Result<(Option<String>, ProviderRecord)> {
        for owner in tenant.into_iter().map(Some).chain([None]) {
            let found = self.load_sealed(&record::provider_key(owner, name), &record::provider_context(owner, name))?;
            if let Some((provider, _)) = found {
                return Ok((owner.map(String::from), provider));
            }
        }
        Err(VaultError::NotFound(format!("provider {name:?} is not registered")))
    }

    /// Every provider the vault (`tenant` none) or `tenant` itself registered.
    fn providers_of(&self, tenant: Option<&str>) -> Result<Vec<ProviderInfo>> {
        let mut infos = Vec::new();
        for storage_key in self.list_keys(&record::provider_prefix(tenant))? {
            let Some((owner, name)) = record::parse_provider_key(&storage_key) else {
                continue;
            };
            let context = record::provider_context(owner.as_deref(), &name);
            if let Some((provider, _)) = self.load_sealed::<ProviderRecord>(&storage_key, &context)? {
                infos.push(provider.info(owner.as_deref(), &name));
            }
        }
        Ok(infos)
    }

    fn put_provider_inner(&self, tenant: Option<&str>, config: ProviderConfig) -> Result<ProviderInfo> {
        validate_owner(tenant)?;
        validate_provider_name(&config.name)?;
        let base = match (&config.template, &config.issuer) {
            (Some(_), Some(_)) => {
                return Err(VaultError::InvalidInput("give a template or an issuer, not both".into()));
            }
            (Some(template), None) => templates::resolve(template)?,
            (None, Some(issuer)) => discovery::discover(issuer, &|request| self.platform().http(request))?,
            (None, None) => Endpoints::default(),
        };
        let name = config.name.clone();
        let buffer = config.refresh_buffer_secs.unwrap_or(DEFAULT_REFRESH_BUFFER_SECS);
        let provider = merge(config, base, buffer, self.now())?;
        let storage_key = record::provider_key(tenant, &name);
        let context = record::provider_context(tenant, &name);
        for _ in 0..MAX_ATTEMPTS {
            let current = self.storage_get(&storage_key)?.map(|entry| entry.version);
            if let Put::Written = self.put_sealed(&storage_key, &context, &provider, current)? {
                return Ok(provider.info(tenant, &name));
            }
        }
        Err(too_contended("provider"))
    }
}

/// A tenant that owns providers is named as any tenant is.
fn validate_owner(tenant: Option<&str>) -> Result<()> {
    tenant.map_or(Ok(()), |tenant| record::validate_id("tenant", tenant))
}

fn validate_provider_name(name: &str) -> Result<()> {
    let ok = (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && name != "."
        && name != "..";
    if ok {
        Ok(())
    } else {
        Err(VaultError::InvalidInput("provider name must be 1 to 64 characters of A-Z, a-z, 0-9, '-', '_', '.'".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ProviderConfig {
        ProviderConfig { name: "p".into(), client_id: "c".into(), ..ProviderConfig::default() }
    }

    #[test]
    fn given_values_win_over_the_base() {
        let base = Endpoints {
            authorization_url: Some("https://idp.example/auth".into()),
            token_url: Some("https://idp.example/token".into()),
            client_auth: Some(ClientAuth::ClientSecretPost),
            scopes: vec!["a".into()],
            authorization_params: vec![("prompt".into(), "consent".into()), ("x".into(), "1".into())],
            ..Endpoints::default()
        };
        let mut given = config();
        given.token_url = Some("https://other.example/token".into());
        given.authorization_params = vec![("prompt".into(), "login".into())];
        let record = merge(given, base.clone(), 60, 0).unwrap();
        assert_eq!(record.token_url, "https://other.example/token");
        assert_eq!(record.authorization_url.as_deref(), Some("https://idp.example/auth"));
        assert_eq!(record.client_auth, ClientAuth::ClientSecretPost);
        assert_eq!(record.scopes, ["a"]);
        assert_eq!(record.authorization_params, [("x".into(), "1".into()), ("prompt".into(), "login".into())]);

        let mut given = config();
        given.scopes = vec!["b".into()];
        given.client_auth = Some(ClientAuth::ClientSecretBasic);
        let record = merge(given, base, 60, 0).unwrap();
        assert_eq!(record.scopes, ["b"]);
        assert_eq!(record.client_auth, ClientAuth::ClientSecretBasic);
    }

    #[test]
    fn a_token_url_is_required_and_reserved_parameters_are_refused() {
        assert!(matches!(merge(config(), Endpoints::default(), 60, 0), Err(VaultError::InvalidInput(_))));
        let mut given = config();
        given.token_url = Some("https://idp.example/token".into());
        given.authorization_params = vec![("redirect_uri".into(), "https://evil.example".into())];
        assert!(matches!(merge(given, Endpoints::default(), 60, 0), Err(VaultError::InvalidInput(_))));
    }

    #[test]
    fn urls_with_credentials_and_dot_names_are_refused() {
        for url in ["https://u:canary-secret@idp.example/token", "https://u@idp.example/token"] {
            let given = ProviderConfig { token_url: Some(url.into()), ..config() };
            let err = merge(given, Endpoints::default(), 60, 0).err().unwrap().to_string();
            assert!(err.contains("credentials") && !err.contains("canary"), "{err}");
        }
        for name in [".", ".."] {
            assert!(validate_provider_name(name).is_err(), "{name}");
        }
        assert!(validate_provider_name("a.b").is_ok());
    }

    mod operations {
        use super::super::*;
        use crate::vault::fixtures::*;

        #[test]
        fn providers_are_listed_without_secrets_and_every_operation_is_audited() {
            let vault = vault();
            let listed = vault.list_providers(None).unwrap();
            assert_eq!(listed.len(), 1);
            assert!(listed[0].has_client_secret);
            assert_eq!(listed[0].refresh_buffer_secs, DEFAULT_REFRESH_BUFFER_SECS);
            vault.store(&key(), grant("a", None, None)).unwrap();
            let _ = vault.get(&key());
            let _ = vault.get(&ConnectionKey::new("t1", "alice", "acme", "missing"));
            vault.remove(&key()).unwrap();
            vault.remove_provider(None, "acme").unwrap();
            let seen: Vec<_> = vault.platform().events.borrow().iter().map(|e| (e.action, e.outcome)).collect();
            assert_eq!(
                seen,
                vec![
                    (AuditAction::ProviderPut, AuditOutcome::Ok),
                    (AuditAction::TokenStore, AuditOutcome::Ok),
                    (AuditAction::TokenGet, AuditOutcome::Ok),
                    (AuditAction::TokenGet, AuditOutcome::NotFound),
                    (AuditAction::TokenRemove, AuditOutcome::Ok),
                    (AuditAction::ProviderRemove, AuditOutcome::Ok),
                ]
            );
        }

        #[test]
        fn a_tenants_own_provider_serves_its_connections_alone() {
            let vault = vault();
            let own = ProviderConfig {
                token_url: Some("https://t1-idp.example/token".into()),
                client_id: "t1-client".into(),
                client_secret: Some("t1-secret-canary".into()),
                ..provider_config()
            };
            let info = vault.put_provider(Some("t1"), own).unwrap();
            assert_eq!((info.tenant.as_deref(), info.client_id.as_str()), (Some("t1"), "t1-client"));

            // t1's connections use t1's app; t2's the vault's.
            let requested = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
            let seen = requested.clone();
            vault.platform().respond(move |request| {
                seen.borrow_mut().push(request.uri().to_string());
                json(200, r#"{"access_token":"new","token_type":"bearer","expires_in":3600}"#)(request)
            });
            let t2 = ConnectionKey::new("t2", "bob", "acme", "default");
            for key in [key(), t2.clone()] {
                vault.store(&key, grant("a", Some("r"), Some(3600))).unwrap();
                vault.refresh(&key).unwrap();
            }
            assert_eq!(*requested.borrow(), ["https://t1-idp.example/token", "https://idp.example/token"]);

            // What each sees: t1 its own in place of the vault's; the vault's list has no tenant's.
            assert_eq!(vault.get_provider(Some("t1"), "acme").unwrap().client_id, "t1-client");
            assert_eq!(vault.get_provider(Some("t2"), "acme").unwrap().client_id, "client");
            assert_eq!(vault.get_provider(None, "acme").unwrap().tenant, None);
            let t1: Vec<_> =
                vault.list_providers(Some("t1")).unwrap().into_iter().map(|p| (p.name, p.tenant)).collect();
            assert_eq!(t1, [("acme".to_owned(), Some("t1".to_owned()))]);
            let global = vault.list_providers(None).unwrap();
            assert_eq!((global.len(), global[0].tenant.as_deref()), (1, None));

            // Sealed and bound to its tenant: copied to t2's place, it does not open.
            let sealed = vault.platform().records.borrow()[&record::provider_key(Some("t1"), "acme")].0.clone();
            assert!(!sealed.windows(16).any(|w| w == b"t1-secret-canary"));
            vault.platform().storage_put(&record::provider_key(Some("t2"), "acme"), &sealed, None).unwrap();
            assert!(matches!(vault.get_provider(Some("t2"), "acme"), Err(VaultError::Integrity(_))));
            vault.platform().records.borrow_mut().remove(&record::provider_key(Some("t2"), "acme"));

            // Removed, t1 falls back to the vault's.
            vault.remove_provider(Some("t1"), "acme").unwrap();
            assert_eq!(vault.get_provider(Some("t1"), "acme").unwrap().tenant, None);
            assert!(matches!(vault.remove_provider(Some("t1"), "acme"), Err(VaultError::NotFound(_))));
            assert!(vault.put_provider(Some(""), provider_config()).is_err());
        }
    }
}
