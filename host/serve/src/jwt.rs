//! Callers that present a JWT from the operator's identity provider instead of an API key.
//!
//! A token is accepted when its signature checks out against the provider's key set
//! (fetched from the configured JWKS URL at start, and again, at most every 30 s, when a
//! token names a key id it does not know: keys rotate), it is unexpired, its `iss` and
//! `aud` are the configured ones, and it names a tenant in the configured claim. Only
//! asymmetric algorithms are accepted, and only the one the key is for.

use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use tokio::sync::RwLock;

use tokenvault::error::{Error, Result};

/// An unknown key id triggers a new fetch of the key set at most this often.
const REFETCH_AFTER: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct JwtConfig {
    pub jwks_url: String,
    pub issuer: String,
    pub audience: String,
    /// The claim that names the caller's tenant, e.g. `tenant`.
    pub tenant_claim: String,
}

pub struct JwtVerifier {
    config: JwtConfig,
    http: reqwest::Client,
    keys: RwLock<(JwkSet, Instant)>,
}

/// Who a valid token speaks for.
pub struct JwtCaller {
    pub tenant: String,
    /// The token's `sub`, for logs ("jwt" when it has none).
    pub subject: String,
}

impl JwtVerifier {
    /// Fetches the key set now: a wrong URL should stop the service from starting.
    pub async fn new(config: JwtConfig) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| Error::Config(format!("no HTTP client for the JWKS: {e}")))?;
        let keys = fetch(&http, &config.jwks_url).await?;
        Ok(JwtVerifier { config, http, keys: RwLock::new((keys, Instant::now())) })
    }

    /// The caller a valid token names; `None` for any token that is not valid.
    pub async fn verify(&self, token: &str) -> Option<JwtCaller> {
        let claims = self.verify_claims(token).await?;
        let tenant = claims.get(&self.config.tenant_claim)?.as_str().filter(|t| !t.is_empty())?.to_owned();
        let subject = claims.get("sub").and_then(|s| s.as_str()).unwrap_or("jwt").to_owned();
        Some(JwtCaller { tenant, subject })
    }

    /// The claims of a valid token (signature, `exp`, `iss`, `aud` checked); `None` for
    /// any token that is not valid.
    pub async fn verify_claims(&self, token: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
        let header = jsonwebtoken::decode_header(token).ok()?;
        let kid = header.kid?;
        let jwk = match self.key(&kid).await {
            Some(jwk) => jwk,
            None => {
                self.refetch().await;
                self.key(&kid).await?
            }
        };
        let algorithm = asymmetric(header.alg)?;
        if jwk.common.key_algorithm.is_some_and(|for_key| format!("{for_key:?}") != format!("{algorithm:?}")) {
            return None; // a key published for one algorithm is not used with another
        }
        let key = DecodingKey::from_jwk(&jwk).ok()?;
        let mut validation = Validation::new(algorithm);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        Some(jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, &key, &validation).ok()?.claims)
    }

    async fn key(&self, kid: &str) -> Option<Jwk> {
        self.keys.read().await.0.find(kid).cloned()
    }

    async fn refetch(&self) {
        let mut keys = self.keys.write().await;
        if keys.1.elapsed() < REFETCH_AFTER {
            return;
        }
        keys.1 = Instant::now();
        match fetch(&self.http, &self.config.jwks_url).await {
            Ok(fresh) => keys.0 = fresh,
            Err(err) => tracing::warn!(error = %err, "could not refetch the JWKS; keeping the keys we have"),
        }
    }
}

fn asymmetric(algorithm: Algorithm) -> Option<Algorithm> {
    use Algorithm::*;
    matches!(algorithm, RS256 | RS384 | RS512 | PS256 | PS384 | PS512 | ES256 | ES384 | EdDSA).then_some(algorithm)
}

async fn fetch(http: &reqwest::Client, url: &str) -> Result<JwkSet> {
    let failed = |why: String| Error::Config(format!("JWKS at {url}: {why}"));
    let response = http.get(url).send().await.map_err(|e| failed(e.to_string()))?;
    if !response.status().is_success() {
        return Err(failed(format!("HTTP {}", response.status())));
    }
    response.json::<JwkSet>().await.map_err(|e| failed(format!("not a key set: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The P-256 public key of RFC 7515, appendix A.3.
    const KEYS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","alg":"ES256",
        "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;

    fn verifier() -> JwtVerifier {
        let config = JwtConfig {
            jwks_url: "http://127.0.0.1:9/jwks".into(),
            issuer: "https://idp.example".into(),
            audience: "tokenvault".into(),
            tenant_claim: "tenant".into(),
        };
        let keys = serde_json::from_str(KEYS).unwrap();
        JwtVerifier { config, http: reqwest::Client::new(), keys: RwLock::new((keys, Instant::now())) }
    }

    #[tokio::test]
    async fn a_symmetric_token_naming_a_public_key_is_refused() {
        // The classic confusion: HMAC keyed with what the verifier would treat as public.
        let claims = serde_json::json!({ "iss": "https://idp.example", "aud": "tokenvault", "tenant": "acme", "exp": 4_000_000_000u64 });
        let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
        header.kid = Some("k1".into());
        let forged =
            jsonwebtoken::encode(&header, &claims, &jsonwebtoken::EncodingKey::from_secret(KEYS.as_bytes())).unwrap();
        assert!(verifier().verify(&forged).await.is_none());
        let no_signature = format!("{}.", forged.rsplit_once('.').unwrap().0);
        assert!(verifier().verify(&no_signature).await.is_none());
    }
}
