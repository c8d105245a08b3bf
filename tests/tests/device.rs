//! The device authorization flow (RFC 8628) against oidc-provider: the user enters the
//! code elsewhere while the vault polls, at most once per interval, slowing down when told.

use std::time::Duration;

use tokenvault::{ConnectionKey, DeviceStatus, Error, ProviderConfig, VaultError};
use tokenvault_tests::{OAuthServer, open_vault};

fn key(user: &str) -> ConnectionKey {
    ConnectionKey::new("acme", user, "idp", "tv")
}

/// The public client, its endpoints discovered (the device endpoint among them).
fn discovered(server: &OAuthServer) -> ProviderConfig {
    ProviderConfig {
        name: "idp".into(),
        issuer: Some(server.issuer.clone()),
        client_id: "vault-public".into(),
        scopes: vec!["openid".into(), "offline_access".into()],
        ..Default::default()
    }
}

async fn pause(secs: u32) {
    tokio::time::sleep(Duration::from_millis(u64::from(secs) * 1000 + 200)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_device_flow_polls_per_interval_and_slows_down_when_told() {
    let server = OAuthServer::start(60);
    let dir = tempfile::tempdir().unwrap();
    let vault = open_vault(dir.path(), &[&server.origin()]).await;
    let info = vault.put_provider(&discovered(&server)).await.unwrap();
    assert_eq!(info.device_authorization_url, Some(format!("{}/device/auth", server.issuer)));

    let started = vault.begin_device(&key("alice"), None).await.unwrap();
    assert_eq!(started.interval, 1, "the server's interval");
    assert!(started.verification_uri.starts_with(&server.issuer));
    let pending = |status| matches!(status, DeviceStatus::Pending { .. });

    // Before the interval: answered by the vault, not the provider.
    assert!(pending(vault.poll_device(&started.handle).await.unwrap()));
    assert_eq!(server.device_polls_and_faults(), (0, 0));

    pause(1).await;
    assert_eq!(vault.poll_device(&started.handle).await.unwrap(), DeviceStatus::Pending { retry_after: 1 });
    assert_eq!(server.device_polls_and_faults(), (1, 0), "authorization_pending");

    server.fault(serde_json::json!({
        "status": 400, "content_type": "application/json", "body": "{\"error\":\"slow_down\"}"
    }));
    pause(1).await;
    assert_eq!(vault.poll_device(&started.handle).await.unwrap(), DeviceStatus::Pending { retry_after: 6 });
    assert_eq!(server.device_polls_and_faults(), (1, 1));
    // Polling again at once, and after the old interval, makes no request: 6 s now.
    assert!(pending(vault.poll_device(&started.handle).await.unwrap()));
    pause(1).await;
    assert!(pending(vault.poll_device(&started.handle).await.unwrap()));
    assert_eq!(server.device_polls_and_faults(), (1, 1), "the slower interval is honoured");

    server.enter_user_code(&started.user_code, false);
    pause(5).await;
    let DeviceStatus::Connected(connected) = vault.poll_device(&started.handle).await.unwrap() else {
        panic!("expected the connection");
    };
    assert_eq!(connected.key, key("alice"));
    assert!(connected.info.has_refresh_token);
    assert_eq!(server.device_polls_and_faults(), (2, 1));
    assert!(!vault.get(&key("alice")).await.unwrap().access_token.is_empty());
    assert_eq!(vault.poll_device(&started.handle).await.unwrap_err().kind(), "invalid-input", "finished");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_who_aborts_ends_the_flow_with_access_denied() {
    let server = OAuthServer::start(60);
    let dir = tempfile::tempdir().unwrap();
    let vault = open_vault(dir.path(), &[&server.origin()]).await;
    vault.put_provider(&discovered(&server)).await.unwrap();

    let started = vault.begin_device(&key("bob"), None).await.unwrap();
    server.enter_user_code(&started.user_code, true);
    pause(1).await;
    match vault.poll_device(&started.handle).await {
        Err(Error::Vault(VaultError::Provider(failure))) => assert_eq!(failure.code.as_deref(), Some("access_denied")),
        other => panic!("expected access_denied, got {other:?}"),
    }
    assert_eq!(vault.poll_device(&started.handle).await.unwrap_err().kind(), "invalid-input");
    assert_eq!(vault.get(&key("bob")).await.unwrap_err().kind(), "not-found");
}
