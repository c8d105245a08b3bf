//! The component through the host library, against a real OAuth server: store, get,
//! expiry and refresh with rotation, provider failures, tampering and egress.

use std::time::Duration;

use tokenvault::{ConnectionKey, ConnectionStatus, Error, VaultError};
use tokenvault_tests::{OAuthServer, grant_of, open_vault, provider_config};

fn key(user: &str) -> ConnectionKey {
    ConnectionKey::new("acme", user, "idp", "default")
}

#[tokio::test(flavor = "multi_thread")]
async fn token_is_refreshed_when_it_expires_and_the_rotated_refresh_token_is_kept() {
    let server = OAuthServer::start(8);
    let dir = tempfile::tempdir().unwrap();
    let vault = open_vault(dir.path(), &[&server.origin()]).await;
    vault.put_provider(&provider_config(&server, "idp", "vault-basic")).await.unwrap();

    let response = server.grant("vault-basic");
    let original_refresh = response["refresh_token"].as_str().unwrap().to_owned();
    let info = vault.store(&key("alice"), &grant_of(&response)).await.unwrap();
    assert!(info.has_refresh_token);
    assert_eq!(info.scopes, vec!["openid", "offline_access"]);

    // Fresh: served from storage, no refresh.
    let first = vault.get(&key("alice")).await.unwrap();
    assert_eq!(first.access_token, response["access_token"].as_str().unwrap());
    assert_eq!(server.refresh_stats(), (0, 0, 0));

    // An 8 s token is refreshed once half its lifetime is left (the 60 s buffer is capped);
    // the renewed one then stays fresh for 4 s, ample time for the checks below.
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    let renewed = vault.get(&key("alice")).await.unwrap();
    assert_ne!(renewed.access_token, first.access_token);
    let rotated = renewed.refresh_token.clone().unwrap();
    assert_ne!(rotated, original_refresh, "the server rotates refresh tokens");
    assert_eq!(server.refresh_stats(), (1, 0, 0));

    // The rotated refresh token was stored: the next get is served from storage...
    let again = vault.get(&key("alice")).await.unwrap();
    assert_eq!(again.access_token, renewed.access_token);
    assert_eq!(again.refresh_token.as_deref(), Some(rotated.as_str()));
    // ...and a forced refresh works with it.
    let forced = vault.refresh(&key("alice")).await.unwrap();
    assert_ne!(forced.access_token, renewed.access_token);
    assert_eq!(server.refresh_stats(), (2, 0, 0));

    // The original refresh token is spent: the server refuses it (and, seeing reuse,
    // revokes the whole grant, as RFC 9700 asks).
    let (status, body) = server.raw_refresh("vault-basic", &original_refresh);
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")));

    // invalid_grant from the provider marks the connection for reconnect.
    let err = vault.refresh(&key("alice")).await.unwrap_err();
    assert!(matches!(err, Error::Vault(VaultError::ReconnectRequired(_))), "{err}");
    let err = vault.get(&key("alice")).await.unwrap_err();
    assert_eq!(err.kind(), "reconnect-required");
    let listed = vault.list("acme", "alice").await.unwrap();
    assert_eq!(listed[0].status, ConnectionStatus::ReconnectRequired);
}

#[tokio::test(flavor = "multi_thread")]
async fn provider_failures_leave_the_stored_token_usable() {
    let server = OAuthServer::start(60);
    let dir = tempfile::tempdir().unwrap();
    let vault = open_vault(dir.path(), &[&server.origin()]).await;
    vault.put_provider(&provider_config(&server, "idp", "vault-post")).await.unwrap();
    let response = server.grant("vault-post");
    vault.store(&key("bob"), &grant_of(&response)).await.unwrap();

    server.fault(serde_json::json!({ "status": 500, "body": "<h1>upstream down</h1>", "content_type": "text/html" }));
    match vault.refresh(&key("bob")).await.unwrap_err() {
        Error::Vault(VaultError::Provider(failure)) => assert_eq!(failure.status, Some(500)),
        other => panic!("expected provider-error, got {other}"),
    }
    server.fault(serde_json::json!({ "status": 503, "body": "{\"error\":\"temporarily_unavailable\"}", "content_type": "application/json" }));
    match vault.refresh(&key("bob")).await.unwrap_err() {
        Error::Vault(VaultError::Provider(failure)) => {
            assert_eq!(failure.code.as_deref(), Some("temporarily_unavailable"))
        }
        other => panic!("expected provider-error, got {other}"),
    }

    // Untouched: the stored token is still served, and its refresh token still works.
    let token = vault.get(&key("bob")).await.unwrap();
    assert_eq!(token.access_token, response["access_token"].as_str().unwrap());
    assert_eq!(token.refresh_token.as_deref(), response["refresh_token"].as_str());
    let refreshed = vault.refresh(&key("bob")).await.unwrap();
    assert_ne!(refreshed.access_token, token.access_token);
    assert_eq!(server.refresh_stats(), (1, 0, 0), "the faults never reached the provider's grant logic");
}

#[tokio::test(flavor = "multi_thread")]
async fn tampered_or_moved_records_are_integrity_errors() {
    let server = OAuthServer::start(60);
    let dir = tempfile::tempdir().unwrap();
    let vault = open_vault(dir.path(), &[&server.origin()]).await;
    vault.put_provider(&provider_config(&server, "idp", "vault-basic")).await.unwrap();
    vault.store(&key("carol"), &grant_of(&server.grant("vault-basic"))).await.unwrap();

    let storage = vault.services().storage.clone();
    let keys = storage.list("tok/", None, 10).await.unwrap().keys;
    assert_eq!(keys, vec!["tok/acme/carol/idp/default"]);
    let entry = storage.get(&keys[0]).await.unwrap().unwrap();

    // Copied under another user: the associated data no longer matches.
    storage.put("tok/acme/mallory/idp/default", &entry.value, None).await.unwrap();
    assert_eq!(vault.get(&key("mallory")).await.unwrap_err().kind(), "integrity");
    // And under another provider of the same user.
    storage.put("tok/acme/carol/other/default", &entry.value, None).await.unwrap();
    let other = ConnectionKey::new("acme", "carol", "other", "default");
    assert_eq!(vault.get(&other).await.unwrap_err().kind(), "integrity");

    // One flipped byte, anywhere past the header.
    let mut flipped = entry.value.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x01;
    storage.put(&keys[0], &flipped, Some(entry.version)).await.unwrap();
    assert_eq!(vault.get(&key("carol")).await.unwrap_err().kind(), "integrity");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_url_outside_the_allow_list_is_refused_before_any_connection() {
    let server = OAuthServer::start(60);
    // A listener that records whether anyone connects to it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let forbidden = format!("http://127.0.0.1:{}/token", listener.local_addr().unwrap().port());

    let dir = tempfile::tempdir().unwrap();
    let vault = open_vault(dir.path(), &[&server.origin()]).await;
    let mut config = provider_config(&server, "idp", "vault-basic");
    config.token_url = Some(forbidden);
    vault.put_provider(&config).await.unwrap();
    vault.store(&key("dave"), &grant_of(&server.grant("vault-basic"))).await.unwrap();

    let err = vault.refresh(&key("dave")).await.unwrap_err();
    assert_eq!(err.kind(), "egress-denied", "{err}");
    assert!(listener.accept().is_err(), "a connection reached the forbidden host");
    // Refused at the host: the stored token is untouched.
    assert!(vault.get(&key("dave")).await.is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn every_provider_fault_is_a_provider_error_and_the_token_survives() {
    let server = OAuthServer::start(600);
    let dir = tempfile::tempdir().unwrap();
    let mut options = tokenvault::Options::from_data_dir(dir.path()).unwrap();
    options.allow_outbound(&[server.origin()]).unwrap();
    options.egress.response_timeout = Duration::from_millis(800);
    options.egress.max_response_bytes = 4096;
    let vault = tokenvault::Vault::open(&options).await.unwrap();
    vault.put_provider(&provider_config(&server, "idp", "vault-basic")).await.unwrap();
    let response = server.grant("vault-basic");
    vault.store(&key("erin"), &grant_of(&response)).await.unwrap();

    let json = "application/json";
    let faults = [
        ("connection reset", serde_json::json!({ "reset": true })),
        ("slower than the timeout", serde_json::json!({ "delay_ms": 2500, "status": 503 })),
        ("not JSON", serde_json::json!({ "status": 200, "body": "<html>hello</html>", "content_type": json })),
        (
            "no access_token",
            serde_json::json!({ "status": 200, "body": "{\"token_type\":\"bearer\",\"expires_in\":60}", "content_type": json }),
        ),
        (
            "larger than the cap",
            serde_json::json!({
                "status": 200, "content_type": json,
                "body": format!("{{\"access_token\":\"x\",\"token_type\":\"bearer\",\"pad\":\"{}\"}}", "p".repeat(10_000)),
            }),
        ),
    ];
    for (what, fault) in faults {
        server.fault(fault);
        let started = std::time::Instant::now();
        let err = vault.refresh(&key("erin")).await.unwrap_err();
        assert_eq!(err.kind(), "provider-error", "{what}: {err}");
        // The slow fault answers after 2.5 s: only the 800 ms timeout keeps this under 2 s.
        assert!(started.elapsed() < Duration::from_secs(2), "{what} took {:?}", started.elapsed());
        let token = vault.get(&key("erin")).await.unwrap();
        assert_eq!(token.access_token, response["access_token"].as_str().unwrap(), "{what} changed the stored token");
    }
    // None of them reached the grant logic; the refresh token still works.
    assert_eq!(server.refresh_stats(), (0, 0, 0));
    let renewed = vault.refresh(&key("erin")).await.unwrap();
    assert_ne!(renewed.access_token, response["access_token"].as_str().unwrap());
    assert_eq!(server.refresh_stats(), (1, 0, 0));
}

/// A refresh holds the connection's lease while it waits for the token endpoint, and every
/// caller that needs the connection waits behind it. A provider that hangs is given up on
/// after the refresh's own response timeout (5 s), not the host's (15 s): a caller waiting
/// behind it refreshes as soon as that ends, against a provider answering again.
#[tokio::test(flavor = "multi_thread")]
async fn a_refresh_stuck_at_the_provider_holds_its_waiters_only_until_the_refresh_timeout() {
    let server = OAuthServer::start(600);
    let dir = tempfile::tempdir().unwrap();
    let vault = open_vault(dir.path(), &[&server.origin()]).await;
    vault.put_provider(&provider_config(&server, "idp", "vault-basic")).await.unwrap();
    vault.store(&key("frank"), &grant_of(&server.grant("vault-basic"))).await.unwrap();

    // The provider's next answer comes after 25 s; the ones after it at once.
    server.fault(serde_json::json!({ "delay_ms": 25_000, "status": 503 }));
    let timed_refresh = |vault: tokenvault::Vault| async move {
        let started = std::time::Instant::now();
        (vault.refresh(&key("frank")).await, started.elapsed())
    };
    let stuck = tokio::spawn(timed_refresh(vault.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let waiter = tokio::spawn(timed_refresh(vault.clone()));
    let ((stuck, stuck_took), (waited, waited_took)) = (stuck.await.unwrap(), waiter.await.unwrap());

    let err = stuck.unwrap_err();
    assert_eq!(err.kind(), "provider-error", "{err}");
    assert!(waited.is_ok(), "the waiter refreshed once the lease was free: {:?}", waited.err());
    // The host's own timeout would have ended the stuck refresh only after 15 s.
    assert!(stuck_took < Duration::from_secs(10), "the stuck refresh held on for {stuck_took:?}");
    assert!(waited_took < Duration::from_secs(10), "the waiter waited {waited_took:?}");
    assert_eq!(server.refresh_stats(), (1, 0, 0), "one refresh reached the grant logic");
}
