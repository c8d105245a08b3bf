//! Console sign-in through the operator's OpenID Connect provider: the authorization
//! code flow with PKCE (S256) and a nonce, the client authenticating with its secret.
//!
//! The provider is found by discovery (its metadata's `issuer` must be the one
//! configured). The ID token is checked as backend JWTs are (signature against the
//! provider's key set, `iss`, `aud` = the client id, `exp`), then its `nonce`; the tenant
//! the person administers is in the configured claim. The flow's state, nonce and PKCE
//! verifier wait in an HttpOnly cookie scoped to the callback, for ten minutes.

use std::time::Duration;

use axum::Form;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::session::{Principal, csrf_matches, random_token};
use super::{audit, sign_in_csrf_ok, sign_in_form, start_admin_session};
use crate::AppState;
use crate::api_keys::Scope;
use crate::jwt::{JwtConfig, JwtVerifier};
use tokenvault::error::{Error, Result};

pub const START_PATH: &str = "/console/oidc/start";
pub const CALLBACK_PATH: &str = "/console/oidc/callback";
const FLOW_COOKIE: &str = "tv_oidc";

#[derive(Clone)]
pub struct OidcConfig {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
    /// The ID token claim naming the tenant the person administers.
    pub tenant_claim: String,
}

impl std::fmt::Debug for OidcConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcConfig")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("tenant_claim", &self.tenant_claim)
            .finish()
    }
}

/// A configured, discovered OpenID Connect login.
pub struct OidcLogin {
    config: OidcConfig,
    authorization_endpoint: String,
    token_endpoint: String,
    id_tokens: JwtVerifier,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct Metadata {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
}

impl OidcLogin {
    /// Discover the provider now: a wrong issuer should stop the service from starting.
    pub async fn discover(config: OidcConfig) -> Result<Self> {
        let failed = |why: String| Error::Config(format!("OpenID Connect discovery of {}: {why}", config.issuer));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| failed(e.to_string()))?;
        let url = format!("{}/.well-known/openid-configuration", config.issuer.trim_end_matches('/'));
        let response = http.get(&url).send().await.map_err(|e| failed(e.to_string()))?;
        if !response.status().is_success() {
            return Err(failed(format!("HTTP {}", response.status())));
        }
        let metadata: Metadata = response.json().await.map_err(|e| failed(format!("not provider metadata: {e}")))?;
        if metadata.issuer != config.issuer {
            return Err(failed(format!("the metadata names issuer {}", metadata.issuer)));
        }
        let id_tokens = JwtVerifier::new(JwtConfig {
            jwks_url: metadata.jwks_uri,
            issuer: config.issuer.clone(),
            audience: config.client_id.clone(),
            tenant_claim: config.tenant_claim.clone(),
        })
        .await?;
        Ok(OidcLogin {
            authorization_endpoint: metadata.authorization_endpoint,
            token_endpoint: metadata.token_endpoint,
            config,
            id_tokens,
            http,
        })
    }
}

pub fn routes() -> axum::Router<AppState> {
    axum::Router::new().route(START_PATH, post(start)).route(CALLBACK_PATH, get(callback))
}

#[derive(Deserialize)]
struct StartForm {
    csrf: String,
}

/// Off to the provider, the flow's secrets in a cookie that only the callback receives.
async fn start(State(state): State<AppState>, jar: CookieJar, Form(form): Form<StartForm>) -> Response {
    let Some(login) = state.oidc.clone() else {
        return sign_in_form(&state, jar, StatusCode::NOT_FOUND, Some("No OpenID Connect login is configured."));
    };
    if !sign_in_csrf_ok(&jar, &form.csrf) {
        return sign_in_form(&state, jar, StatusCode::FORBIDDEN, Some("The form expired. Try again."));
    }
    let (flow_state, nonce, verifier) = match (random_token(), random_token(), random_token()) {
        (Ok(s), Ok(n), Ok(v)) => (s, n, v),
        _ => return sign_in_form(&state, jar, StatusCode::INTERNAL_SERVER_ERROR, Some("No randomness.")),
    };
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let mut url = match url::Url::parse(&login.authorization_endpoint) {
        Ok(url) => url,
        Err(e) => {
            let text = format!("The provider's authorization endpoint is not a URL: {e}");
            return sign_in_form(&state, jar, StatusCode::BAD_GATEWAY, Some(&text));
        }
    };
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &login.config.client_id)
        .append_pair("redirect_uri", &redirect_uri(&state))
        .append_pair("scope", "openid")
        .append_pair("state", &flow_state)
        .append_pair("nonce", &nonce)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    let flow = Cookie::build((FLOW_COOKIE, format!("{flow_state}.{nonce}.{verifier}")))
        .path(CALLBACK_PATH)
        .http_only(true)
        .secure(state.public_url.starts_with("https://"))
        // Lax: the provider's redirect back is a top-level navigation from another site.
        .same_site(SameSite::Lax)
        .max_age(cookie::time::Duration::minutes(10))
        .build();
    (jar.add(flow), Redirect::to(url.as_str())).into_response()
}

fn redirect_uri(state: &AppState) -> String {
    format!("{}{CALLBACK_PATH}", state.public_url)
}

#[derive(Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

async fn callback(State(state): State<AppState>, jar: CookieJar, Query(query): Query<CallbackQuery>) -> Response {
    let Some(login) = state.oidc.clone() else {
        return sign_in_form(&state, jar, StatusCode::NOT_FOUND, Some("No OpenID Connect login is configured."));
    };
    let flow = jar.get(FLOW_COOKIE).map(|c| c.value().to_owned());
    // Spent whatever happens next: a flow is tried once.
    let jar = jar.remove(Cookie::build(FLOW_COOKIE).path(CALLBACK_PATH));
    let refuse = async |jar, status, text: &str| {
        let _ = audit(&state, super::SIGN_IN, super::DENIED, None, None).await; // refused either way
        sign_in_form(&state, jar, status, Some(text))
    };
    if let Some(error) = query.error {
        let error: String = error.chars().filter(|c| c.is_ascii_graphic()).take(64).collect();
        return refuse(jar, StatusCode::UNAUTHORIZED, &format!("The sign-in was refused ({error}).")).await;
    }
    let Some((flow_state, nonce, verifier)) = flow.as_deref().and_then(split_flow) else {
        return refuse(jar, StatusCode::BAD_REQUEST, "This sign-in was not started here, or took too long. Try again.")
            .await;
    };
    let (Some(code), Some(returned_state)) = (query.code, query.state) else {
        return refuse(jar, StatusCode::BAD_REQUEST, "The provider sent no code.").await;
    };
    if !csrf_matches(flow_state, &returned_state) {
        return refuse(jar, StatusCode::BAD_REQUEST, "This sign-in does not match the one started here. Try again.")
            .await;
    }
    match login.exchange(&code, verifier, &redirect_uri(&state), nonce).await {
        Ok((tenant, subject)) => {
            let principal = Principal::Admin { scope: Scope::Tenant(tenant), via: format!("oidc:{subject}") };
            start_admin_session(&state, jar, principal).await
        }
        Err(why) => {
            tracing::warn!(%why, "console sign-in through OpenID Connect failed");
            refuse(jar, StatusCode::UNAUTHORIZED, &format!("The sign-in failed: {why}")).await
        }
    }
}

fn split_flow(flow: &str) -> Option<(&str, &str, &str)> {
    let mut parts = flow.split('.');
    let parts = (parts.next()?, parts.next()?, parts.next()?, parts.next());
    match parts {
        (s, n, v, None) if !s.is_empty() && !n.is_empty() && !v.is_empty() => Some((s, n, v)),
        _ => None,
    }
}

impl OidcLogin {
    /// Redeem the code; the tenant and subject of a valid ID token bound to `nonce`. The
    /// error is a message for the person signing in, never a value.
    async fn exchange(
        &self,
        code: &str,
        verifier: &str,
        redirect_uri: &str,
        nonce: &str,
    ) -> std::result::Result<(String, String), String> {
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier),
        ];
        let response = self
            .http
            .post(&self.token_endpoint)
            .basic_auth(form_encode(&self.config.client_id), Some(form_encode(&self.config.client_secret)))
            .form(&form)
            .send()
            .await
            .map_err(|e| format!("the provider's token endpoint did not answer ({})", e.without_url()))?;
        let status = response.status();
        #[derive(Deserialize)]
        struct TokenResponse {
            id_token: Option<String>,
            error: Option<String>,
        }
        let body: TokenResponse =
            response.json().await.map_err(|_| format!("the token endpoint answered HTTP {status} without JSON"))?;
        if let Some(error) = body.error.filter(|_| !status.is_success()) {
            let error: String = error.chars().filter(|c| c.is_ascii_graphic()).take(64).collect();
            return Err(format!("the provider refused the code ({error})"));
        }
        let id_token = body.id_token.ok_or("the provider sent no ID token")?;
        let claims = self.id_tokens.verify_claims(&id_token).await.ok_or("the ID token is not valid")?;
        let claim = |name: &str| claims.get(name).and_then(|v| v.as_str()).filter(|v| !v.is_empty());
        if !claim("nonce").is_some_and(|presented| csrf_matches(nonce, presented)) {
            return Err("the ID token is not for this sign-in".into());
        }
        let tenant = claim(&self.config.tenant_claim).ok_or_else(|| {
            format!("your account has no {} claim: it administers no tenant", self.config.tenant_claim)
        })?;
        Ok((tenant.to_owned(), claim("sub").unwrap_or("unknown").to_owned()))
    }
}

/// RFC 6749 §2.3.1: client credentials in HTTP Basic are form-encoded first.
fn form_encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_flow_cookie_has_three_parts() {
        assert_eq!(super::split_flow("a.b.c"), Some(("a", "b", "c")));
        for bad in ["", "a.b", "a.b.c.d", "a..c", ".b.c"] {
            assert_eq!(super::split_flow(bad), None, "{bad:?}");
        }
    }
}
