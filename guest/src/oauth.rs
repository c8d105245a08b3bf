//! Talking to a provider's token endpoint, with the `oauth2` crate over the host's HTTP.
//!
//! Errors are mapped to [`VaultError`] without the provider's body: a body can echo back
//! what was sent, and what was sent includes secrets.

use std::cell::Cell;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use oauth2::basic::{BasicClient, BasicErrorResponseType, BasicRequestTokenError, BasicTokenResponse};
use oauth2::url::form_urlencoded;
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, DeviceAuthorizationUrl,
    DeviceCodeErrorResponse, DeviceCodeErrorResponseType, EndpointNotSet, EndpointSet, HttpRequest, HttpResponse,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken, StandardDeviceAuthorizationResponse, TokenResponse,
    TokenUrl,
};

use crate::model::{ClientAuth, TokenGrant};
use crate::model::{Result, VaultError};
use crate::platform::HttpError;
use crate::record::ProviderRecord;

type Http<'a> = &'a dyn Fn(HttpRequest) -> std::result::Result<HttpResponse, HttpError>;

/// An oauth2 client for `provider`, with its token endpoint and client authentication.
fn client(
    provider: &ProviderRecord,
) -> Result<BasicClient<EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointSet>> {
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
    Ok(client)
}

/// Exchange a refresh token for a new token set (RFC 6749 §6).
pub fn refresh(provider: &ProviderRecord, refresh_token: &str, http: Http) -> Result<TokenGrant> {
    let status = Cell::new(None);
    let response = client(provider)?
        .exchange_refresh_token(&RefreshToken::new(refresh_token.to_owned()))
        .request(&recording(http, &status))
        .map_err(|err| classify(err, status.get(), Grant::Refresh))?;
    grant_from_response(&response)
}

/// Obtain the client's own token (RFC 6749 §4.4).
pub fn client_credentials(provider: &ProviderRecord, scopes: &[String], http: Http) -> Result<TokenGrant> {
    if provider.client_secret.is_none() {
        return Err(VaultError::InvalidInput("the client-credentials grant needs a client secret".into()));
    }
    let status = Cell::new(None);
    let client = client(provider)?;
    let mut request = client.exchange_client_credentials();
    if !scopes.is_empty() {
        request = request.add_extra_param("scope", join_scopes(provider, scopes));
    }
    let response = request
        .request(&recording(http, &status))
        .map_err(|err| classify(err, status.get(), Grant::ClientCredentials))?;
    grant_from_response(&response)
}

/// Revoke a token at the provider's revocation endpoint (RFC 7009), with the client's
/// authentication. A provider that does not know the token answers 200 as well. (Built
/// here rather than by `oauth2`, which refuses a plain-http endpoint; which endpoints may
/// be reached is the host's allow-list to decide, as for every other endpoint.)
pub fn revoke(provider: &ProviderRecord, token: RevocableToken, http: Http) -> Result<()> {
    let url =
        provider.revocation_url.as_deref().ok_or_else(|| VaultError::InvalidInput("no revocation endpoint".into()))?;
    let (hint, secret) = match token {
        RevocableToken::Refresh(secret) => ("refresh_token", secret),
        RevocableToken::Access(secret) => ("access_token", secret),
    };
    let request = client_form_request(provider, url, &[("token", secret), ("token_type_hint", hint)])
        .map_err(|_| VaultError::InvalidInput("provider revocation URL is not a valid URL".into()))?;
    let response = http(request).map_err(|err| http_failure(err, "revocation endpoint"))?;
    let status = response.status().as_u16();
    if status == 200 {
        return Ok(());
    }
    let code = serde_json::from_slice::<oauth2::basic::BasicRevocationErrorResponse>(response.body())
        .ok()
        .map(|error| error.error().as_ref().to_owned());
    Err(VaultError::provider(Some(status), code, "revocation endpoint refused the request"))
}

/// A token to revoke, with its kind as the `token_type_hint`.
#[derive(Clone, Copy)]
pub enum RevocableToken<'a> {
    Refresh(&'a str),
    Access(&'a str),
}

/// What a device authorization request (RFC 8628 §3.2) returned.
pub struct DeviceGrantStart {
    pub device_code: String,
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    pub expires_in: u64,
    pub interval: u64,
}

/// Start a device flow at the provider's device authorization endpoint.
pub fn device_authorization(provider: &ProviderRecord, scopes: &[String], http: Http) -> Result<DeviceGrantStart> {
    let url = provider
        .device_authorization_url
        .clone()
        .ok_or_else(|| VaultError::InvalidInput("this provider has no device authorization endpoint".into()))?;
    let url = DeviceAuthorizationUrl::new(url)
        .map_err(|_| VaultError::InvalidInput("provider device authorization URL is not a valid URL".into()))?;
    let status = Cell::new(None);
    let client = client(provider)?.set_device_authorization_url(url);
    let mut request = client.exchange_device_code();
    if !scopes.is_empty() {
        request = request.add_extra_param("scope", join_scopes(provider, scopes));
    }
    let response: StandardDeviceAuthorizationResponse =
        request.request(&recording(http, &status)).map_err(|err| classify(err, status.get(), Grant::Device))?;
    Ok(DeviceGrantStart {
        device_code: response.device_code().secret().clone(),
        user_code: response.user_code().secret().clone(),
        verification_uri: response.verification_uri().to_string(),
        verification_uri_complete: response.verification_uri_complete().map(|uri| uri.secret().clone()),
        expires_in: response.expires_in().as_secs(),
        interval: response.interval().as_secs(),
    })
}

/// What one poll of the token endpoint with a device code (RFC 8628 §3.4) said.
pub enum DevicePoll {
    Granted(TokenGrant),
    /// `authorization_pending`: the user has not finished.
    Pending,
    /// `slow_down`: poll less often.
    SlowDown,
}

const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// One poll, no waiting: the caller keeps the interval across calls, which outlive a
/// single call's deadline. (`oauth2`'s device request loops and sleeps until the end.)
pub fn poll_device(provider: &ProviderRecord, device_code: &str, http: Http) -> Result<DevicePoll> {
    let params = [("grant_type", DEVICE_CODE_GRANT), ("device_code", device_code)];
    let request = client_form_request(provider, &provider.token_url, &params)
        .map_err(|_| VaultError::InvalidInput("provider token URL is not a valid URL".into()))?;
    let status = Cell::new(None);
    let response = recording(http, &status)(request).map_err(|err| http_failure(err, "token endpoint"))?;
    if response.status() == http::StatusCode::OK {
        let parsed: BasicTokenResponse = serde_json::from_slice(response.body()).map_err(|err| {
            VaultError::provider(
                Some(200),
                None,
                format!(
                    "token endpoint returned an invalid token response (at line {} column {})",
                    err.line(),
                    err.column()
                ),
            )
        })?;
        return grant_from_response(&parsed).map(DevicePoll::Granted);
    }
    let status = Some(response.status().as_u16());
    let error: DeviceCodeErrorResponse = serde_json::from_slice(response.body()).map_err(|_| {
        VaultError::provider(status, None, "token endpoint returned an error that is not an OAuth error response")
    })?;
    match error.error() {
        DeviceCodeErrorResponseType::AuthorizationPending => Ok(DevicePoll::Pending),
        DeviceCodeErrorResponseType::SlowDown => Ok(DevicePoll::SlowDown),
        DeviceCodeErrorResponseType::AccessDenied => {
            Err(VaultError::provider(status, Some("access_denied".into()), "the user refused to connect the account"))
        }
        DeviceCodeErrorResponseType::ExpiredToken => Err(VaultError::provider(
            status,
            Some("expired_token".into()),
            "the device code expired before the user finished; begin again",
        )),
        other => {
            Err(VaultError::provider(status, Some(other.as_ref().to_owned()), "token endpoint refused the device code"))
        }
    }
}

/// A form POST to one of the provider's endpoints, authenticated as the client
/// (RFC 6749 §2.3.1) the way `oauth2` does for the grants it builds.
fn client_form_request(provider: &ProviderRecord, url: &str, params: &[(&str, &str)]) -> http::Result<HttpRequest> {
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.extend_pairs(params);
    let mut request = http::Request::builder()
        .method(http::Method::POST)
        .uri(url)
        .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(http::header::ACCEPT, "application/json");
    match (&provider.client_secret, provider.client_auth) {
        (Some(secret), ClientAuth::ClientSecretBasic) => {
            // Both parts form-encoded before base64 (RFC 6749 §2.3.1).
            let encode = |v: &str| form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
            let credentials = STANDARD.encode(format!("{}:{}", encode(&provider.client_id), encode(secret)));
            request = request.header(http::header::AUTHORIZATION, format!("Basic {credentials}"));
        }
        (Some(secret), ClientAuth::ClientSecretPost) => {
            form.append_pair("client_id", &provider.client_id).append_pair("client_secret", secret);
        }
        (None, _) => {
            form.append_pair("client_id", &provider.client_id);
        }
    }
    request.body(form.finish().into_bytes())
}

fn join_scopes(provider: &ProviderRecord, scopes: &[String]) -> String {
    scopes.join(provider.scope_separator.as_deref().unwrap_or(" "))
}

/// The URL that starts an authorization-code flow with PKCE S256 (RFC 6749 §4.1,
/// RFC 7636), with the provider's extra parameters.
pub fn authorization_url(
    provider: &ProviderRecord,
    redirect_uri: &str,
    state: &str,
    code_verifier: &str,
    scopes: &[String],
) -> Result<String> {
    let auth_url = provider
        .authorization_url
        .clone()
        .ok_or_else(|| VaultError::InvalidInput("this provider has no authorization URL".into()))?;
    let auth_url = AuthUrl::new(auth_url)
        .map_err(|_| VaultError::InvalidInput("provider authorization URL is not a valid URL".into()))?;
    let redirect = RedirectUrl::new(redirect_uri.to_owned())
        .map_err(|_| VaultError::InvalidInput("redirect URI is not a valid URL".into()))?;
    let client = client(provider)?.set_auth_uri(auth_url).set_redirect_uri(redirect);
    let verifier = PkceCodeVerifier::new(code_verifier.to_owned());
    let mut request = client
        .authorize_url(|| CsrfToken::new(state.to_owned()))
        .set_pkce_challenge(PkceCodeChallenge::from_code_verifier_sha256(&verifier));
    if !scopes.is_empty() {
        request = request.add_extra_param("scope", join_scopes(provider, scopes));
    }
    for (name, value) in &provider.authorization_params {
        request = request.add_extra_param(name, value);
    }
    Ok(request.url().0.to_string())
}

/// Exchange an authorization code (RFC 6749 §4.1.3) with its PKCE verifier and the
/// redirect URI the flow began with.
pub fn exchange_code(
    provider: &ProviderRecord,
    code: &str,
    code_verifier: &str,
    redirect_uri: &str,
    http: Http,
) -> Result<TokenGrant> {
    let redirect = RedirectUrl::new(redirect_uri.to_owned())
        .map_err(|_| VaultError::InvalidInput("redirect URI is not a valid URL".into()))?;
    let status = Cell::new(None);
    let response = client(provider)?
        .exchange_code(AuthorizationCode::new(code.to_owned()))
        .set_pkce_verifier(PkceCodeVerifier::new(code_verifier.to_owned()))
        .set_redirect_uri(std::borrow::Cow::Owned(redirect))
        .request(&recording(http, &status))
        .map_err(|err| classify(err, status.get(), Grant::Code))?;
    grant_from_response(&response)
}

/// The HTTP client oauth2 calls: the platform's, noting the status (oauth2 drops it from
/// a response it cannot parse), and turning an OAuth error sent with HTTP 200 (GitHub and
/// Slack do) into the 400 it stands for.
fn recording<'a>(
    http: Http<'a>,
    status: &'a Cell<Option<u16>>,
) -> impl Fn(HttpRequest) -> std::result::Result<HttpResponse, HttpError> + 'a {
    move |request| {
        let mut response = http(request)?;
        if response.status() == http::StatusCode::OK && is_error_body(response.body()) {
            *response.status_mut() = http::StatusCode::BAD_REQUEST;
        }
        status.set(Some(response.status().as_u16()));
        Ok(response)
    }
}

fn is_error_body(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Probe {
        error: Option<serde_json::Value>,
        access_token: Option<serde_json::Value>,
    }
    matches!(serde_json::from_slice::<Probe>(body), Ok(Probe { error: Some(_), access_token: None }))
}

/// A request to one of a provider's endpoints that got no answer.
pub fn http_failure(err: HttpError, endpoint: &str) -> VaultError {
    match err {
        HttpError::Denied => VaultError::EgressDenied(format!("the host does not allow requests to this {endpoint}")),
        HttpError::Timeout => VaultError::provider_timeout(format!("{endpoint} timed out")),
        HttpError::Failed(why) => VaultError::provider(None, None, format!("request to {endpoint} failed: {why}")),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Grant {
    Refresh,
    Code,
    ClientCredentials,
    /// The device authorization request (RFC 8628 §3.1).
    Device,
}

impl Grant {
    fn endpoint(self) -> &'static str {
        match self {
            Grant::Device => "device authorization endpoint",
            _ => "token endpoint",
        }
    }
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

fn classify(err: BasicRequestTokenError<HttpError>, status: Option<u16>, grant: Grant) -> VaultError {
    use oauth2::RequestTokenError as E;
    let endpoint = grant.endpoint();
    match err {
        E::ServerResponse(response) => {
            let code = response.error().as_ref().to_owned();
            if *response.error() == BasicErrorResponseType::InvalidGrant && grant == Grant::Refresh {
                VaultError::ReconnectRequired("the provider rejected the refresh token (invalid_grant)".into())
            } else {
                VaultError::provider(status, Some(code), format!("{endpoint} refused the request"))
            }
        }
        E::Request(err) => http_failure(err, endpoint),
        // The parse error's own text can quote the body; name only where it failed.
        E::Parse(parse, _body) => {
            let what = match status {
                Some(200) | None => format!("{endpoint} returned an invalid response (at `{}`)", parse.path()),
                Some(_) => format!("{endpoint} returned an error that is not an OAuth error response"),
            };
            VaultError::provider(status, None, what)
        }
        E::Other(why) => VaultError::provider(status, None, format!("{endpoint} response rejected: {why}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ClientAuth;

    fn provider(auth: ClientAuth) -> ProviderRecord {
        ProviderRecord {
            template: None,
            issuer: None,
            authorization_url: Some("https://idp.example/authorize?tenant=1".into()),
            token_url: "https://idp.example/token".into(),
            revocation_url: None,
            device_authorization_url: None,
            client_id: "client-1".into(),
            client_secret: Some("s3cret".into()),
            client_auth: auth,
            scopes: vec![],
            authorization_params: vec![("access_type".into(), "offline".into())],
            scope_separator: None,
            refresh_buffer_secs: 60,
            api_base_url: None,
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

    mod properties {
        use super::*;
        use proptest::prelude::*;

        const CANARY: &str = "canary-value-7f3a";

        /// Token responses a provider might send: JSON with the usual fields, the canary in
        /// any of them, odd types, or not JSON at all.
        fn response_body() -> impl Strategy<Value = String> {
            let field = prop_oneof![
                Just("access_token"),
                Just("refresh_token"),
                Just("token_type"),
                Just("expires_in"),
                Just("scope"),
                Just("error"),
                Just("error_description"),
                Just("id_token"),
                Just("x"),
            ];
            let value = prop_oneof![
                Just(format!("\"{CANARY}\"")),
                Just("3600".to_owned()),
                Just("\"3600\"".to_owned()),
                Just("-1".to_owned()),
                Just("18446744073709551616".to_owned()),
                Just("null".to_owned()),
                Just("[1,2]".to_owned()),
                Just("{}".to_owned()),
                Just("\"bearer\"".to_owned()),
                Just("\"invalid_grant\"".to_owned()),
                Just(format!("\"{CANARY}\\u0000\"")),
            ];
            prop_oneof![
                proptest::collection::vec((field, value), 0..8).prop_map(|fields| {
                    let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                    format!("{{{}}}", body.join(","))
                }),
                "\\PC{0,80}".prop_map(|noise| format!("{noise}{CANARY}")),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1500))]

            // Whatever a token endpoint answers: no panic, and an error never quotes it.
            #[test]
            fn any_token_response_is_a_grant_or_an_error_that_quotes_nothing(
                status in prop_oneof![Just(200u16), Just(400), Just(401), Just(500), 100u16..600],
                json in any::<bool>(),
                body in response_body(),
            ) {
                let kind = if json { "application/json" } else { "text/html" };
                let (result, _) = run(ClientAuth::ClientSecretBasic, respond(status, kind, &body));
                if let Err(err) = result {
                    let shown = format!("{err} {err:?}");
                    prop_assert!(!shown.contains(CANARY), "{shown}");
                    prop_assert!(!shown.contains("s3cret") && !shown.contains("rt-old"), "{shown}");
                }
            }
        }
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
            let err = result.expect_err("must fail");
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

    #[test]
    fn the_authorization_url_carries_pkce_s256_and_never_the_verifier() {
        let mut p = provider(ClientAuth::ClientSecretBasic);
        let verifier = "v".repeat(43);
        let url =
            authorization_url(&p, "http://127.0.0.1:8080/callback", "state-1", &verifier, &["a".into(), "b".into()])
                .unwrap();
        let parsed = oauth2::url::Url::parse(&url).unwrap();
        let q: std::collections::HashMap<_, _> = parsed.query_pairs().into_owned().collect();
        assert_eq!(parsed.path(), "/authorize");
        assert_eq!(q["tenant"], "1", "the authorization URL's own query is kept");
        assert_eq!(q["response_type"], "code");
        assert_eq!(q["client_id"], "client-1");
        assert_eq!(q["redirect_uri"], "http://127.0.0.1:8080/callback");
        assert_eq!(q["state"], "state-1");
        assert_eq!(q["code_challenge_method"], "S256");
        let expected = PkceCodeChallenge::from_code_verifier_sha256(&PkceCodeVerifier::new(verifier.clone()));
        assert_eq!(&q["code_challenge"], expected.as_str());
        assert_eq!(q["scope"], "a b");
        assert_eq!(q["access_type"], "offline");
        assert!(!url.contains(&verifier) && !url.contains("s3cret"));

        p.scope_separator = Some(",".into());
        let url = authorization_url(&p, "http://127.0.0.1/cb", "s", &verifier, &["a".into(), "b".into()]).unwrap();
        assert!(url.contains("scope=a%2Cb"), "{url}");
        p.authorization_url = None;
        assert!(authorization_url(&p, "http://127.0.0.1/cb", "s", &verifier, &[]).is_err());
    }

    #[test]
    fn the_code_exchange_sends_the_verifier_and_the_recorded_redirect_uri() {
        let seen = std::cell::RefCell::new(None);
        let body = r#"{"access_token":"at","token_type":"Bearer","refresh_token":"rt","expires_in":60}"#;
        let grant = exchange_code(
            &provider(ClientAuth::ClientSecretPost),
            "code-1",
            "verifier-1",
            "http://127.0.0.1:9/cb",
            &|req| {
                *seen.borrow_mut() = Some(req);
                Ok(respond(200, "application/json", body))
            },
        )
        .unwrap();
        assert_eq!(grant.refresh_token.as_deref(), Some("rt"));
        let request = seen.into_inner().unwrap();
        let form: std::collections::HashMap<String, String> =
            oauth2::url::form_urlencoded::parse(request.body()).into_owned().collect();
        assert_eq!(form["grant_type"], "authorization_code");
        assert_eq!(form["code"], "code-1");
        assert_eq!(form["code_verifier"], "verifier-1");
        assert_eq!(form["redirect_uri"], "http://127.0.0.1:9/cb");
        assert_eq!(request.headers()["accept"], "application/json", "GitHub answers JSON only when asked");
    }

    #[test]
    fn an_error_sent_with_status_200_is_an_error() {
        // GitHub's and Slack's way of refusing a code.
        for body in [r#"{"error":"bad_verification_code"}"#, r#"{"ok":false,"error":"invalid_code"}"#] {
            let result =
                exchange_code(&provider(ClientAuth::ClientSecretPost), "c", "v", "http://127.0.0.1/cb", &|_| {
                    Ok(respond(200, "application/json", body))
                });
            match result {
                Err(VaultError::Provider(f)) => assert_eq!(f.status, Some(400), "{body}"),
                _ => panic!("expected a provider error for {body}"),
            }
        }
        let (result, _) =
            run(ClientAuth::ClientSecretBasic, respond(200, "application/json", r#"{"error":"invalid_grant"}"#));
        assert!(matches!(result, Err(VaultError::ReconnectRequired(_))));
    }
}
