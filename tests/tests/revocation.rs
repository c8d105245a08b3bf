//! Removing connections revokes their tokens at the provider (RFC 7009), verified through
//! the provider's introspection endpoint (RFC 7662); the connection is deleted locally
//! whatever the provider says, and the receipt says what happened upstream.

use tokenvault::{ConnectionKey, ProviderConfig, UpstreamRevocation, Vault};
use tokenvault_tests::{OAuthServer, grant_of, open_vault, provider_config};

fn key(user: &str, name: &str) -> ConnectionKey {
    ConnectionKey::new("acme", user, "idp", name)
}

/// A provider for client vault-basic whose revocation endpoint is `revocation_url`.
fn provider(server: &OAuthServer, revocation_url: Option<String>) -> ProviderConfig {
    ProviderConfig { revocation_url, ..provider_config(server, "idp", "vault-basic") }
}

/// Store a real grant for `key`; returns its (access, refresh) tokens.
async fn connected(vault: &Vault, server: &OAuthServer, key: &ConnectionKey) -> (String, String) {
    let response = server.grant("vault-basic");
    vault.store(key, &grant_of(&response)).await.unwrap();
    let token = |field: &str| response[field].as_str().unwrap().to_owned();
    (token("access_token"), token("refresh_token"))
}

#[tokio::test(flavor = "multi_thread")]
async fn remove_revokes_both_tokens_at_the_provider() {
    let server = OAuthServer::start(60);
    let dir = tempfile::tempdir().unwrap();
    let vault = open_vault(dir.path(), &[&server.origin()]).await;
    vault.put_provider(&provider(&server, Some(format!("{}/token/revocation", server.issuer)))).await.unwrap();
    let (access, refresh) = connected(&vault, &server, &key("alice", "default")).await;
    assert!(server.is_active("vault-basic", &access) && server.is_active("vault-basic", &refresh));

    let receipt = vault.remove(&key("alice", "default")).await.unwrap();
    assert_eq!(receipt.upstream, UpstreamRevocation::Revoked);
    assert!(!server.is_active("vault-basic", &refresh), "refresh token still active upstream");
    assert!(!server.is_active("vault-basic", &access), "access token still active upstream");
    assert_eq!(vault.get(&key("alice", "default")).await.unwrap_err().kind(), "not-found");
}

#[tokio::test(flavor = "multi_thread")]
async fn revoke_all_revokes_every_connection_of_one_user_only() {
    let server = OAuthServer::start(60);
    let dir = tempfile::tempdir().unwrap();
    let vault = open_vault(dir.path(), &[&server.origin()]).await;
    vault.put_provider(&provider(&server, Some(format!("{}/token/revocation", server.issuer)))).await.unwrap();
    let home = connected(&vault, &server, &key("bob", "home")).await;
    let work = connected(&vault, &server, &key("bob", "work")).await;
    let other = connected(&vault, &server, &key("carol", "home")).await;

    let receipts = vault.revoke_all("acme", "bob").await.unwrap();
    let names: Vec<&str> = receipts.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["home", "work"]);
    assert!(receipts.iter().all(|r| r.upstream == UpstreamRevocation::Revoked), "{receipts:?}");
    for (access, refresh) in [&home, &work] {
        assert!(!server.is_active("vault-basic", refresh) && !server.is_active("vault-basic", access));
    }
    assert!(server.is_active("vault-basic", &other.1), "another user's grant is untouched");
    assert!(vault.list("acme", "bob").await.unwrap().is_empty());
    assert_eq!(vault.list("acme", "carol").await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_revocation_endpoint_or_egress_the_receipt_says_deleted_here_only() {
    let server = OAuthServer::start(60);
    let dir = tempfile::tempdir().unwrap();
    let vault = open_vault(dir.path(), &[&server.origin()]).await;

    vault.put_provider(&provider(&server, None)).await.unwrap();
    let (_, refresh) = connected(&vault, &server, &key("dan", "default")).await;
    let receipt = vault.remove(&key("dan", "default")).await.unwrap();
    assert_eq!(receipt.upstream, UpstreamRevocation::Unsupported);
    assert!(server.is_active("vault-basic", &refresh), "nothing was sent upstream");

    // A revocation endpoint the host does not allow: refused before a socket opens.
    vault.put_provider(&provider(&server, Some("http://127.0.0.2:9/revoke".into()))).await.unwrap();
    let (_, refresh) = connected(&vault, &server, &key("dan", "default")).await;
    let receipt = vault.remove(&key("dan", "default")).await.unwrap();
    match &receipt.upstream {
        UpstreamRevocation::Failed { reason } => assert_eq!(reason.kind(), "egress-denied", "{reason}"),
        other => panic!("expected a failed revocation, got {other:?}"),
    }
    assert!(server.is_active("vault-basic", &refresh));
    assert_eq!(vault.get(&key("dan", "default")).await.unwrap_err().kind(), "not-found", "deleted all the same");
}
