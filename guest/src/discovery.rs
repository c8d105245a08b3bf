//! Provider discovery: authorization server metadata (RFC 8414), then OpenID Connect
//! discovery, from an issuer URL. The metadata's `issuer` must equal the one asked for,
//! exactly (RFC 8414 §3.3), or another server could pose as this one.

use serde::Deserialize;

use crate::model::ClientAuth;
use crate::model::{Result, VaultError};
use crate::oauth;
use crate::platform::HttpError;
use crate::provider::{Endpoints, validate_url};

#[derive(Deserialize)]
struct Metadata {
    issuer: String,
    authorization_endpoint: Option<String>,
    token_endpoint: Option<String>,
    revocation_endpoint: Option<String>,
    device_authorization_endpoint: Option<String>,
    token_endpoint_auth_methods_supported: Option<Vec<String>>,
    code_challenge_methods_supported: Option<Vec<String>>,
}

/// The metadata URLs to try, in order.
pub fn metadata_urls(issuer: &str) -> Result<Vec<String>> {
    let url = validate_url("issuer", issuer)?;
    if url.query().is_some() {
        return Err(VaultError::InvalidInput("issuer must not have a query".into()));
    }
    let origin = url.origin().ascii_serialization();
    let path = url.path().trim_end_matches('/');
    Ok(vec![
        // RFC 8414 §3.1: the well-known segment goes between the host and the path.
        format!("{origin}/.well-known/oauth-authorization-server{path}"),
        // OpenID Connect Discovery §4: appended to the issuer.
        format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/')),
    ])
}

/// The endpoints `issuer` publishes.
pub fn discover(
    issuer: &str,
    http: &dyn Fn(oauth2::HttpRequest) -> std::result::Result<oauth2::HttpResponse, HttpError>,
) -> Result<Endpoints> {
    let mut last_status = None;
    for url in metadata_urls(issuer)? {
        let request = http::Request::get(&url)
            .header(http::header::ACCEPT, "application/json")
            .body(Vec::new())
            .map_err(|_| VaultError::InvalidInput("issuer does not make a valid metadata URL".into()))?;
        let response = http(request).map_err(|err| oauth::http_failure(err, "issuer's metadata endpoint"))?;
        if response.status() == http::StatusCode::OK {
            return endpoints_from(issuer, response.body());
        }
        last_status = Some(response.status().as_u16());
    }
    Err(VaultError::provider(last_status, None, "the issuer publishes no authorization server or OpenID metadata"))
}

fn endpoints_from(issuer: &str, body: &[u8]) -> Result<Endpoints> {
    let metadata: Metadata = serde_json::from_slice(body).map_err(|e| {
        VaultError::provider(
            Some(200),
            None,
            format!("metadata is not valid JSON metadata (line {}, column {})", e.line(), e.column()),
        )
    })?;
    if metadata.issuer != issuer {
        return Err(VaultError::provider(
            Some(200),
            None,
            format!("metadata names issuer {:?}, not {issuer:?} as asked; refusing it", metadata.issuer),
        ));
    }
    let Some(token_url) = metadata.token_endpoint else {
        return Err(VaultError::provider(Some(200), None, "metadata has no token_endpoint"));
    };
    if let Some(methods) = &metadata.code_challenge_methods_supported
        && !methods.iter().any(|m| m == "S256")
    {
        return Err(VaultError::provider(Some(200), None, "the issuer does not support PKCE with S256"));
    }
    // RFC 8414: absent means client_secret_basic.
    let client_auth = match &metadata.token_endpoint_auth_methods_supported {
        None => Some(ClientAuth::ClientSecretBasic),
        Some(methods) => methods.iter().find_map(|m| match m.as_str() {
            "client_secret_basic" => Some(ClientAuth::ClientSecretBasic),
            "client_secret_post" => Some(ClientAuth::ClientSecretPost),
            _ => None,
        }),
    };
    Ok(Endpoints {
        issuer: Some(metadata.issuer),
        authorization_url: metadata.authorization_endpoint,
        token_url: Some(token_url),
        revocation_url: metadata.revocation_endpoint,
        device_authorization_url: metadata.device_authorization_endpoint,
        client_auth,
        ..Endpoints::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1500))]

            // Whatever an issuer publishes: endpoints, or a provider error; never a panic.
            #[test]
            fn any_metadata_gives_endpoints_or_an_error(
                fields in proptest::collection::vec(
                    (
                        prop_oneof![
                            Just("issuer"), Just("token_endpoint"), Just("authorization_endpoint"),
                            Just("revocation_endpoint"), Just("code_challenge_methods_supported"),
                            Just("token_endpoint_auth_methods_supported"), Just("x"),
                        ],
                        prop_oneof![
                            Just("\"https://idp.example\"".to_owned()), Just("\"https://idp.example/token\"".to_owned()),
                            Just("[\"S256\"]".to_owned()), Just("[\"plain\"]".to_owned()), Just("[]".to_owned()),
                            Just("null".to_owned()), Just("7".to_owned()), Just("\"not a url\"".to_owned()),
                        ],
                    ),
                    0..7,
                ),
                noise in "\\PC{0,16}",
            ) {
                let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                let body = format!("{{{}}}{noise}", body.join(","));
                if let Ok(endpoints) = endpoints_from("https://idp.example", body.as_bytes()) {
                    prop_assert!(endpoints.token_url.is_some_and(|url| url.starts_with("https://")));
                }
            }
        }
    }

    #[test]
    fn metadata_urls_follow_both_specifications() {
        assert_eq!(
            metadata_urls("https://idp.example").unwrap(),
            [
                "https://idp.example/.well-known/oauth-authorization-server",
                "https://idp.example/.well-known/openid-configuration"
            ]
        );
        assert_eq!(
            metadata_urls("https://idp.example/tenant/1").unwrap(),
            [
                "https://idp.example/.well-known/oauth-authorization-server/tenant/1",
                "https://idp.example/tenant/1/.well-known/openid-configuration"
            ]
        );
        assert!(metadata_urls("ftp://idp.example").is_err());
        assert!(metadata_urls("https://idp.example/?x=1").is_err());
    }

    fn reply(status: u16, body: &str) -> oauth2::HttpResponse {
        http::Response::builder().status(status).body(body.as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn falls_back_to_openid_configuration_and_checks_the_issuer() {
        let seen = std::cell::RefCell::new(Vec::new());
        let body = r#"{"issuer":"https://idp.example","authorization_endpoint":"https://idp.example/auth",
            "token_endpoint":"https://idp.example/token","revocation_endpoint":"https://idp.example/revoke",
            "token_endpoint_auth_methods_supported":["private_key_jwt","client_secret_post"]}"#;
        let endpoints = discover("https://idp.example", &|req| {
            seen.borrow_mut().push(req.uri().to_string());
            Ok(if req.uri().path().contains("openid") { reply(200, body) } else { reply(404, "") })
        })
        .unwrap();
        assert_eq!(seen.borrow().len(), 2);
        assert_eq!(endpoints.token_url.as_deref(), Some("https://idp.example/token"));
        assert_eq!(endpoints.revocation_url.as_deref(), Some("https://idp.example/revoke"));
        assert_eq!(endpoints.client_auth, Some(ClientAuth::ClientSecretPost));

        let impostor =
            discover("https://idp.example", &|_| Ok(reply(200, &body.replace("idp.example\"", "evil.example\""))));
        assert!(matches!(impostor, Err(VaultError::Provider(_))));
        let trailing = discover("https://idp.example/", &|_| Ok(reply(200, body)));
        assert!(matches!(trailing, Err(VaultError::Provider(_))), "the issuer must match exactly");
    }

    #[test]
    fn missing_metadata_and_denied_egress_are_typed() {
        let none = discover("https://idp.example", &|_| Ok(reply(404, "")));
        assert!(matches!(none, Err(VaultError::Provider(f)) if f.status == Some(404)));
        let denied = discover("https://idp.example", &|_| Err(HttpError::Denied));
        assert!(matches!(denied, Err(VaultError::EgressDenied(_))));
        let no_s256 = discover("https://idp.example", &|_| {
            Ok(reply(
                200,
                r#"{"issuer":"https://idp.example","token_endpoint":"https://idp.example/t","code_challenge_methods_supported":["plain"]}"#,
            ))
        });
        assert!(no_s256.is_err());
    }
}
