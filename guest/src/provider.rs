//! Registering a provider: endpoints from a template, from discovery, or given, merged
//! into the record the vault keeps (a given value wins over a template's or metadata's).

use crate::error::{Result, VaultError};
use crate::model::{ClientAuth, ProviderConfig};
use crate::record::ProviderRecord;

/// Endpoints and defaults, as a template or an issuer's metadata supply them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub issuer: Option<String>,
    pub authorization_url: Option<String>,
    pub token_url: Option<String>,
    pub revocation_url: Option<String>,
    pub device_authorization_url: Option<String>,
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
    Ok(parsed)
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
}
