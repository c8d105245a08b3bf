//! Built-in provider templates: the endpoints and quirks of common providers, so that a
//! template plus a client id and secret is all an operator provides. Each entry follows
//! the provider's own documentation; the unit tests pin the values.
//!
//! Quirks handled elsewhere, for every provider: tokens without `expires_in` never expire
//! (GitHub OAuth apps); an OAuth error sent with HTTP 200 (GitHub, Slack) is an error
//! (`oauth::recording`); `Accept: application/json` is sent on every token
//! request (the `oauth2` crate does), which GitHub needs to answer JSON.

use crate::model::{ClientAuth, TemplateRef};
use crate::model::{Result, VaultError};
use crate::provider::Endpoints;

pub const NAMES: [&str; 6] = ["github", "google", "microsoft", "slack", "discord", "gitlab"];

/// The endpoints and defaults a template stands for.
pub fn resolve(template: &TemplateRef) -> Result<Endpoints> {
    if template.tenant.is_some() && template.name != "microsoft" {
        return Err(VaultError::InvalidInput(format!("template {:?} takes no tenant", template.name)));
    }
    let owned = |s: &str| Some(s.to_owned());
    let words = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let endpoints = match template.name.as_str() {
        "github" => Endpoints {
            authorization_url: owned("https://github.com/login/oauth/authorize"),
            token_url: owned("https://github.com/login/oauth/access_token"),
            device_authorization_url: owned("https://github.com/login/device/code"),
            api_base_url: owned("https://api.github.com"),
            client_auth: Some(ClientAuth::ClientSecretPost),
            ..Endpoints::default()
        },
        "google" => Endpoints {
            issuer: owned("https://accounts.google.com"),
            authorization_url: owned("https://accounts.google.com/o/oauth2/v2/auth"),
            token_url: owned("https://oauth2.googleapis.com/token"),
            revocation_url: owned("https://oauth2.googleapis.com/revoke"),
            device_authorization_url: owned("https://oauth2.googleapis.com/device/code"),
            api_base_url: owned("https://www.googleapis.com"),
            client_auth: Some(ClientAuth::ClientSecretPost),
            scopes: words(&["openid", "email"]),
            // Without both, Google returns a refresh token only on the first consent.
            authorization_params: vec![("access_type".into(), "offline".into()), ("prompt".into(), "consent".into())],
            ..Endpoints::default()
        },
        "microsoft" => {
            let tenant = template.tenant.as_deref().unwrap_or("common");
            let valid = !tenant.is_empty()
                && tenant.len() <= 64
                && tenant.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            if !valid {
                return Err(VaultError::InvalidInput(
                    "microsoft tenant must be a tenant id, a domain, common, organizations or consumers".into(),
                ));
            }
            let base = format!("https://login.microsoftonline.com/{tenant}/oauth2/v2.0");
            Endpoints {
                authorization_url: Some(format!("{base}/authorize")),
                token_url: Some(format!("{base}/token")),
                device_authorization_url: Some(format!("{base}/devicecode")),
                api_base_url: owned("https://graph.microsoft.com"),
                client_auth: Some(ClientAuth::ClientSecretPost),
                // offline_access is what makes the identity platform return a refresh token.
                scopes: words(&["offline_access", "User.Read"]),
                ..Endpoints::default()
            }
        }
        "slack" => Endpoints {
            authorization_url: owned("https://slack.com/oauth/v2/authorize"),
            token_url: owned("https://slack.com/api/oauth.v2.access"),
            api_base_url: owned("https://slack.com/api"),
            client_auth: Some(ClientAuth::ClientSecretPost),
            // Slack separates scopes with commas; with token rotation on, refresh tokens rotate.
            scope_separator: owned(","),
            ..Endpoints::default()
        },
        "discord" => Endpoints {
            authorization_url: owned("https://discord.com/oauth2/authorize"),
            token_url: owned("https://discord.com/api/oauth2/token"),
            revocation_url: owned("https://discord.com/api/oauth2/token/revoke"),
            api_base_url: owned("https://discord.com/api"),
            client_auth: Some(ClientAuth::ClientSecretBasic),
            scopes: words(&["identify"]),
            ..Endpoints::default()
        },
        "gitlab" => Endpoints {
            issuer: owned("https://gitlab.com"),
            authorization_url: owned("https://gitlab.com/oauth/authorize"),
            token_url: owned("https://gitlab.com/oauth/token"),
            revocation_url: owned("https://gitlab.com/oauth/revoke"),
            device_authorization_url: owned("https://gitlab.com/oauth/authorize_device"),
            api_base_url: owned("https://gitlab.com/api/v4"),
            client_auth: Some(ClientAuth::ClientSecretPost),
            scopes: words(&["read_user"]),
            ..Endpoints::default()
        },
        other => {
            return Err(VaultError::InvalidInput(format!("unknown template {other:?}; known: {}", NAMES.join(", "))));
        }
    };
    Ok(endpoints)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(name: &str, tenant: Option<&str>) -> Endpoints {
        resolve(&TemplateRef { name: name.into(), tenant: tenant.map(String::from) }).unwrap()
    }

    #[test]
    fn github_matches_its_documentation() {
        let t = template("github", None);
        assert_eq!(t.authorization_url.as_deref(), Some("https://github.com/login/oauth/authorize"));
        assert_eq!(t.token_url.as_deref(), Some("https://github.com/login/oauth/access_token"));
        assert_eq!(t.device_authorization_url.as_deref(), Some("https://github.com/login/device/code"));
        assert_eq!(t.revocation_url, None, "GitHub has no RFC 7009 endpoint");
    }

    #[test]
    fn each_template_names_its_api() {
        let bases: Vec<_> = NAMES.iter().map(|name| template(name, None).api_base_url.unwrap()).collect();
        assert_eq!(
            bases,
            [
                "https://api.github.com",
                "https://www.googleapis.com",
                "https://graph.microsoft.com",
                "https://slack.com/api",
                "https://discord.com/api",
                "https://gitlab.com/api/v4",
            ]
        );
    }

    #[test]
    fn google_asks_for_offline_access_and_consent() {
        let t = template("google", None);
        assert_eq!(t.issuer.as_deref(), Some("https://accounts.google.com"));
        assert_eq!(t.authorization_url.as_deref(), Some("https://accounts.google.com/o/oauth2/v2/auth"));
        assert_eq!(t.token_url.as_deref(), Some("https://oauth2.googleapis.com/token"));
        assert_eq!(t.revocation_url.as_deref(), Some("https://oauth2.googleapis.com/revoke"));
        assert_eq!(t.device_authorization_url.as_deref(), Some("https://oauth2.googleapis.com/device/code"));
        let params: Vec<(&str, &str)> = t.authorization_params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(params, [("access_type", "offline"), ("prompt", "consent")]);
    }

    #[test]
    fn microsoft_puts_the_tenant_in_the_url_and_asks_for_offline_access() {
        let t = template("microsoft", None);
        assert_eq!(
            t.authorization_url.as_deref(),
            Some("https://login.microsoftonline.com/common/oauth2/v2.0/authorize")
        );
        assert_eq!(t.token_url.as_deref(), Some("https://login.microsoftonline.com/common/oauth2/v2.0/token"));
        assert_eq!(
            t.device_authorization_url.as_deref(),
            Some("https://login.microsoftonline.com/common/oauth2/v2.0/devicecode")
        );
        assert!(t.scopes.iter().any(|s| s == "offline_access"));
        let t = template("microsoft", Some("contoso.onmicrosoft.com"));
        assert_eq!(
            t.token_url.as_deref(),
            Some("https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token")
        );
        for bad in ["", "a/b", "x?y", "common#"] {
            let r = resolve(&TemplateRef { name: "microsoft".into(), tenant: Some(bad.into()) });
            assert!(matches!(r, Err(VaultError::InvalidInput(_))), "{bad:?}");
        }
    }

    #[test]
    fn slack_discord_and_gitlab_match_their_documentation() {
        let slack = template("slack", None);
        assert_eq!(slack.authorization_url.as_deref(), Some("https://slack.com/oauth/v2/authorize"));
        assert_eq!(slack.token_url.as_deref(), Some("https://slack.com/api/oauth.v2.access"));
        assert_eq!(slack.scope_separator.as_deref(), Some(","));

        let discord = template("discord", None);
        assert_eq!(discord.authorization_url.as_deref(), Some("https://discord.com/oauth2/authorize"));
        assert_eq!(discord.token_url.as_deref(), Some("https://discord.com/api/oauth2/token"));
        assert_eq!(discord.revocation_url.as_deref(), Some("https://discord.com/api/oauth2/token/revoke"));

        let gitlab = template("gitlab", None);
        assert_eq!(gitlab.authorization_url.as_deref(), Some("https://gitlab.com/oauth/authorize"));
        assert_eq!(gitlab.token_url.as_deref(), Some("https://gitlab.com/oauth/token"));
        assert_eq!(gitlab.revocation_url.as_deref(), Some("https://gitlab.com/oauth/revoke"));
        assert_eq!(gitlab.device_authorization_url.as_deref(), Some("https://gitlab.com/oauth/authorize_device"));
    }

    #[test]
    fn unknown_templates_and_stray_tenants_are_refused() {
        assert!(resolve(&TemplateRef { name: "myspace".into(), tenant: None }).is_err());
        assert!(resolve(&TemplateRef { name: "github".into(), tenant: Some("x".into()) }).is_err());
        for name in NAMES {
            let t = template(name, None);
            assert!(t.authorization_url.is_some() && t.token_url.is_some(), "{name}");
        }
    }
}
