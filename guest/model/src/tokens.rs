//! Connections and their tokens.

use serde::{Deserialize, Deserializer, Serialize};

use crate::error::VaultError;

/// Identifies one stored connection. A user may hold several connections to one provider
/// (several Slack workspaces, say); `name` tells them apart.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConnectionKey {
    pub tenant: String,
    pub user: String,
    pub provider: String,
    pub name: String,
}

/// The connection name when the caller has no better one.
pub const DEFAULT_CONNECTION_NAME: &str = "default";

impl ConnectionKey {
    pub fn new(
        tenant: impl Into<String>,
        user: impl Into<String>,
        provider: impl Into<String>,
        name: impl Into<String>,
    ) -> Self {
        ConnectionKey { tenant: tenant.into(), user: user.into(), provider: provider.into(), name: name.into() }
    }
}

/// A usable token set, as `get` and `refresh` return it.
#[derive(Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenSet {
    pub access_token: String,
    pub token_type: String,
    /// Unix seconds; absent when the token does not expire.
    pub expires_at: Option<u64>,
    /// Space-separated scopes as granted.
    pub scope: Option<String>,
    pub refresh_token: Option<String>,
}
crate::redacted_debug!(TokenSet { token_type, expires_at, scope; access_token, refresh_token });

/// A token response as a provider returns it (RFC 6749 §5.1), e.g. read from stdin.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenGrant {
    pub access_token: String,
    /// Defaults to `Bearer` when a response omits it.
    #[serde(default = "bearer")]
    pub token_type: String,
    /// Seconds from now; absent: the token does not expire. Some providers send a string.
    #[serde(default, deserialize_with = "number_or_string")]
    pub expires_in: Option<u64>,
    #[serde(default)]
    pub refresh_token: Option<String>,
    #[serde(default)]
    pub scope: Option<String>,
}
crate::redacted_debug!(TokenGrant { token_type, expires_in, scope; access_token, refresh_token });

impl TokenGrant {
    /// Parse a token response leniently (a missing `token_type`, `expires_in` as a string,
    /// fields it does not know); errors never quote a value.
    pub fn from_json(json: &[u8]) -> Result<Self, VaultError> {
        crate::parse_json("token response", json)
    }
}

fn bearer() -> String {
    "Bearer".into()
}

fn number_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        N(u64),
        S(String),
    }
    match Option::<Either>::deserialize(d)? {
        None => Ok(None),
        Some(Either::N(n)) => Ok(Some(n)),
        Some(Either::S(s)) => {
            s.trim().parse().map(Some).map_err(|_| serde::de::Error::custom("expires_in is not a number"))
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum ConnectionStatus {
    Active,
    /// The provider rejected the refresh token; the user must connect again.
    ReconnectRequired,
}

/// How a connection's access token is renewed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum ConnectionKind {
    /// A user's delegated tokens, renewed with the refresh token.
    #[default]
    User,
    /// The client's own token (client-credentials grant), obtained again when due.
    Client,
}

/// A connection's metadata: never a value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConnectionInfo {
    pub provider: String,
    pub name: String,
    pub kind: ConnectionKind,
    pub scopes: Vec<String>,
    pub expires_at: Option<u64>,
    pub has_refresh_token: bool,
    pub status: ConnectionStatus,
    /// Unix seconds.
    pub updated_at: u64,
}

/// What `get_or_link` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum TokenOrLink {
    Token(TokenSet),
    /// The connection does not exist or must be connected again.
    Link(crate::ConnectLink),
}

/// What became of a removed connection's tokens at the provider. The connection is
/// deleted locally whatever the provider answered (RFC 7009 §2.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum UpstreamRevocation {
    /// The provider accepted revoking the refresh token and the access token.
    Revoked,
    /// The provider has no revocation endpoint: the tokens stay valid there until they expire.
    Unsupported,
    /// Revoking failed (refused, unreachable, not allowed by the host, or the record could
    /// not be opened); `reason` says why.
    Failed { reason: VaultError },
}

/// A removed connection and what happened upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RemovalReceipt {
    pub provider: String,
    pub name: String,
    pub upstream: UpstreamRevocation,
}

/// One step of erasing a tenant (see the WIT's `erase-tenant`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErasePage {
    /// Connections removed in this step, each with what became of its tokens upstream.
    pub removed: Vec<ErasedConnection>,
    /// The tenant's other records deleted in this step (providers, webhook, events, pending flows).
    pub deleted: u32,
    /// Nothing of the tenant is left in the component's records.
    pub done: bool,
}

/// A connection a tenant's erase removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErasedConnection {
    pub user: String,
    #[serde(flatten)]
    pub receipt: RemovalReceipt,
}

/// A connection's provider and name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConnectionName {
    pub provider: String,
    pub name: String,
}

/// A user of a tenant and the connections they hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UserConnections {
    pub user: String,
    pub connections: Vec<ConnectionName>,
}

/// One page of a tenant's users.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UserPage {
    pub users: Vec<UserConnections>,
    /// The last user of this page: ask again with `after` set to it for the next page;
    /// none after the last.
    pub next: Option<String>,
}

/// One page of connections due for background refresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuePage {
    pub keys: Vec<ConnectionKey>,
    /// Where the next page starts; none after the last.
    pub cursor: Option<String>,
}

/// What a background refresh of one connection did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RefreshOutcome {
    /// The token expires after the horizon (or never).
    NotDue,
    /// Renewed, by this call or by another caller it waited for.
    Refreshed,
    /// No refresh token, or the user must connect again.
    NotRenewable,
}

#[cfg(test)]
mod tests {
    use super::*;

    mod properties {
        use super::*;
        use proptest::prelude::*;

        const CANARY: &str = "canary-grant-91c2";

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            // A token response from anywhere (stdin, the API): a grant, or an error that
            // quotes none of it.
            #[test]
            fn any_token_response_parses_or_fails_without_quoting_it(
                fields in proptest::collection::vec(
                    (
                        prop_oneof![Just("access_token"), Just("refresh_token"), Just("token_type"),
                            Just("expires_in"), Just("scope"), Just("x")],
                        prop_oneof![Just(format!("\"{CANARY}\"")), Just("3600".to_owned()), Just("\"60\"".to_owned()),
                            Just("\"soon\"".to_owned()), Just("-5".to_owned()), Just("1e99".to_owned()),
                            Just("null".to_owned()), Just(format!("[\"{CANARY}\"]"))],
                    ),
                    0..7,
                ),
                noise in "\\PC{0,8}",
            ) {
                let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                let json = format!("{{{}}}{noise}", body.join(","));
                if let Err(err) = TokenGrant::from_json(json.as_bytes()) {
                    let shown = format!("{err} {err:?}");
                    prop_assert!(!shown.contains(CANARY), "{shown}");
                }
            }
        }
    }

    #[test]
    fn token_responses_parse_leniently() {
        let g = TokenGrant::from_json(br#"{"access_token":"a","expires_in":"3600","id_token":"x"}"#).unwrap();
        assert_eq!((g.token_type.as_str(), g.expires_in), ("Bearer", Some(3600)));
        let g =
            TokenGrant::from_json(br#"{"access_token":"a","token_type":"bearer","expires_in":60,"refresh_token":"r"}"#)
                .unwrap();
        assert_eq!(g.expires_in, Some(60));
    }

    #[test]
    fn parse_errors_and_debug_never_quote_values() {
        for bad in [
            &br#"{"access_token":"canary-at","expires_in":"canary-x"}"#[..],
            br#"{"access_token":123,"refresh_token":"canary-rt"}"#,
            br#"{"refresh_token":"canary-rt"}"#,
            br#"canary-at"#,
        ] {
            let err = TokenGrant::from_json(bad).unwrap_err().to_string();
            assert!(err.starts_with("invalid-input: token response"), "{err}");
            assert!(!err.contains("canary"), "{err}");
        }
        // An unknown field's name is the caller's: not repeated (`TokenGrant` takes any other).
        let err = crate::parse_json::<crate::ProviderConfig>("provider", br#"{"canary-field": 1}"#).unwrap_err();
        assert!(!err.to_string().contains("canary") && err.to_string().contains("expected"), "{err}");
        let g = TokenGrant::from_json(br#"{"access_token":"canary-at","refresh_token":"canary-rt"}"#).unwrap();
        let shown = format!("{g:?}");
        assert!(!shown.contains("canary") && shown.contains("<redacted>"), "{shown}");
        let set = TokenSet {
            access_token: "canary-at".into(),
            token_type: "Bearer".into(),
            expires_at: None,
            scope: None,
            refresh_token: None,
        };
        let shown = format!("{set:?}");
        assert!(!shown.contains("canary") && shown.contains("refresh_token: None"), "{shown}");
    }
}
