//! Talking to a provider's token endpoint, with the `oauth2` crate over the host's HTTP.
//!
//! Errors are mapped to [`VaultError`] without the provider's body: a body can echo back
//! what was sent, and what was sent includes secrets.

use std::cell::Cell;

use oauth2::basic::{BasicClient, BasicErrorResponseType, BasicRequestTokenError, BasicTokenResponse};
use oauth2::{AuthType, ClientId, ClientSecret, HttpRequest, HttpResponse, RefreshToken, TokenResponse, TokenUrl};

use crate::error::{Result, VaultError};
use crate::model::{ClientAuth, TokenGrant};
use crate::platform::HttpError;
use crate::record::ProviderRecord;

/// Exchange a refresh token for a new token set (RFC 6749 §6).
pub fn refresh(
    provider: &ProviderRecord,
    refresh_token: &str,
    http: &dyn Fn(HttpRequest) -> std::result::Result<HttpResponse, HttpError>,
) -> Result<TokenGrant> {
    let token_url = TokenUrl::new(provider.token_url.clone())
        .map_err(|_| VaultError::InvalidInput("provider token URL is not a valid URL".into()))?;
    let mut client = BasicClient::new(ClientId::new(provider.client_id.clone()))
        .set_token_uri(token_url)
        .set_auth_type(match provider.client_auth {
            ClientAuth::ClientSecretBasic => AuthType::BasicAuth,
            ClientAuth::ClientSecretPost => AuthType::RequestBody,
        });
    if let Some(secret) = &provider.client_secret {
        client = client.set_client_secret(ClientSecret::new(secret.clone()));
    }

    // oauth2 drops the status of a response it cannot parse; keep it for the error.
    let status = Cell::new(None);
    let client_call = |request: HttpRequest| {
        let response = http(request)?;
        status.set(Some(response.status().as_u16()));
        Ok::<_, HttpError>(response)
    };
    let response = client
        .exchange_refresh_token(&RefreshToken::new(refresh_token.to_owned()))
        .request(&client_call)
        .map_err(|err| classify(err, status.get()))?;
    grant_from_response(&response)
}

fn grant_from_response(response: &BasicTokenResponse) -> Result<TokenGrant> {
    let access_token = response.access_token().secret();
    if access_token.is_empty() {
        return Err(VaultError::provider(Some(200), None, "token endpoint returned an empty access_token"));
    }
    let token_type = match response.token_type().as_ref() {
        "bearer" => "Bearer".to_owned(),
        other => other.to_owned(),
    };
    Ok(TokenGrant {
        access_token: access_token.clone(),
        token_type,
        expires_in: response.expires_in().map(|d| d.as_secs()),
        refresh_token: response.refresh_token().map(|t| t.secret().clone()).filter(|t| !t.is_empty()),
        scope: response.scopes().map(|scopes| scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ")),
    })
}

fn classify(err: BasicRequestTokenError<HttpError>, status: Option<u16>) -> VaultError {
    use oauth2::RequestTokenError as E;
    match err {
        E::ServerResponse(response) => {
            let code = response.error().as_ref().to_owned();
            if *response.error() == BasicErrorResponseType::InvalidGrant {
                VaultError::ReconnectRequired("the provider rejected the refresh token (invalid_grant)".into())
            } else {
                VaultError::provider(status, Some(code), "token endpoint refused the request")
            }
        }
        E::Request(HttpError::Denied) => {
            VaultError::EgressDenied("the host does not allow requests to this provider's token URL".into())
        }
        E::Request(HttpError::Timeout) => VaultError::provider(None, None, "token endpoint timed out"),
        E::Request(HttpError::Failed(why)) => {
            VaultError::provider(None, None, format!("request to token endpoint failed: {why}"))
        }
        // The parse error's own text can quote the body; name only where it failed.
        E::Parse(parse, _body) => {
            let what = match status {
                Some(200) | None => {
                    format!("token endpoint returned an invalid token response (at `{}`)", parse.path())
                }
                Some(_) => "token endpoint returned an error that is not an OAuth error response".to_owned(),
            };
            VaultError::provider(status, None, what)
        }
        E::Other(why) => VaultError::provider(status, None, format!("token endpoint response rejected: {why}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ClientAuth;

    fn provider(auth: ClientAuth) -> ProviderRecord {
        ProviderRecord {
            token_url: "https://idp.example/token".into(),
            client_id: "client-1".into(),
            client_secret: Some("s3cret".into()),
            client_auth: auth,
            revocation_url: None,
            scopes: vec![],
            refresh_buffer_secs: 60,
            updated_at: 0,
        }
    }

    fn respond(status: u16, content_type: &str, body: &str) -> HttpResponse {
        http::Response::builder()
            .status(status)
            .header("content-type", content_type)
            .body(body.as_bytes().to_vec())
            .unwrap()
    }

    fn run(auth: ClientAuth, reply: HttpResponse) -> (Result<TokenGrant>, HttpRequest) {
        let seen = std::cell::RefCell::new(None);
        let reply = std::cell::RefCell::new(Some(reply));
        let result = refresh(&provider(auth), "rt-old", &|req| {
            *seen.borrow_mut() = Some(req);
            Ok(reply.borrow_mut().take().unwrap())
        });
        (result, seen.into_inner().unwrap())
    }

    #[test]
    fn parses_a_rotating_response() {
        let body = r#"{"access_token":"at-new","token_type":"bearer","expires_in":3600,"refresh_token":"rt-new","scope":"read write"}"#;
        let (grant, request) = run(ClientAuth::ClientSecretBasic, respond(200, "application/json", body));
        let grant = grant.unwrap();
        assert_eq!(grant.access_token, "at-new");
        assert_eq!(grant.token_type, "Bearer");
        assert_eq!(grant.expires_in, Some(3600));
        assert_eq!(grant.refresh_token.as_deref(), Some("rt-new"));
        assert_eq!(grant.scope.as_deref(), Some("read write"));

        let form = String::from_utf8(request.body().clone()).unwrap();
        assert!(form.contains("grant_type=refresh_token") && form.contains("refresh_token=rt-old"));
        assert!(request.headers().contains_key("authorization"), "basic auth header missing");
        assert!(!form.contains("client_secret"));
    }

    #[test]
    fn client_secret_post_sends_the_secret_in_the_body() {
        let body = r#"{"access_token":"a","token_type":"Bearer"}"#;
        let (grant, request) = run(ClientAuth::ClientSecretPost, respond(200, "application/json", body));
        let grant = grant.unwrap();
        assert_eq!(grant.expires_in, None);
        assert_eq!(grant.refresh_token, None);
        let form = String::from_utf8(request.body().clone()).unwrap();
        assert!(form.contains("client_id=client-1") && form.contains("client_secret=s3cret"));
        assert!(!request.headers().contains_key("authorization"));
    }

    #[test]
    fn invalid_grant_means_reconnect() {
        let (result, _) =
            run(ClientAuth::ClientSecretBasic, respond(400, "application/json", r#"{"error":"invalid_grant"}"#));
        assert!(matches!(result, Err(VaultError::ReconnectRequired(_))));
    }

    #[test]
    fn other_oauth_errors_keep_status_and_code() {
        let (result, _) =
            run(ClientAuth::ClientSecretBasic, respond(401, "application/json", r#"{"error":"invalid_client"}"#));
        match result {
            Err(VaultError::Provider(f)) => {
                assert_eq!(f.status, Some(401));
                assert_eq!(f.code.as_deref(), Some("invalid_client"));
            }
            _ => panic!("expected a provider error"),
        }
    }

    #[test]
    fn bodies_never_reach_error_messages() {
        let echoing = [
            respond(500, "text/html", "<h1>boom rt-old s3cret</h1>"),
            respond(200, "application/json", r#"{"access_token":123,"token_type":"rt-old"}"#),
            respond(200, "application/json", r#"{"token_type":"bearer","refresh_token":"rt-old"}"#),
            respond(200, "application/json", "not json rt-old"),
        ];
        for reply in echoing {
            let (result, _) = run(ClientAuth::ClientSecretBasic, reply);
            let err = result.err().expect("must fail");
            assert!(matches!(err, VaultError::Provider(_)), "{err}");
            let text = err.to_string();
            assert!(!text.contains("rt-old") && !text.contains("s3cret") && !text.contains("boom"), "{text}");
        }
    }

    #[test]
    fn http_failures_map_to_kinds() {
        let denied = refresh(&provider(ClientAuth::ClientSecretBasic), "rt", &|_| Err(HttpError::Denied));
        assert!(matches!(denied, Err(VaultError::EgressDenied(_))));
        let timeout = refresh(&provider(ClientAuth::ClientSecretBasic), "rt", &|_| Err(HttpError::Timeout));
        assert!(matches!(timeout, Err(VaultError::Provider(_))));
    }
}
