//! Connecting accounts against a real OAuth server (oidc-provider on loopback): discovery,
//! the authorization-code flow with PKCE for confidential and public clients, replayed
//! and forged states, a stolen code without its verifier, and refusals.

use std::collections::HashMap;

use tokenvault::{ConnectionKey, ConnectionKind, Error, ProviderConfig, TokenOrLink, Vault, VaultError};
use tokenvault_tests::{OAuthServer, open_vault, provider_config};

/// The redirect URI of a native client; the server accepts any port on it (RFC 8252).
const REDIRECT: &str = "http://127.0.0.1:53682/callback";

fn key(user: &str) -> ConnectionKey {
    ConnectionKey::new("acme", user, "idp", "default")
}

fn query_of(location: &str) -> String {
    let (base, query) = location.split_once('?').expect("a redirect with a query");
    assert_eq!(base, REDIRECT, "the provider redirected to the URI the flow began with");
    query.to_owned()
}

fn params_of(query: &str) -> HashMap<String, String> {
    url::form_urlencoded::parse(query.as_bytes()).into_owned().collect()
}

/// One whole flow for `user`: begin, the browser, complete.
async fn connect(vault: &Vault, server: &OAuthServer, user: &str) -> tokenvault::Connected {
    let request = vault.begin(&key(user), REDIRECT, None, None).await.unwrap();
    let location = server.authorize(&request.url, false);
    vault.complete(&query_of(&location), None).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn confidential_and_public_clients_connect_with_pkce_and_then_refresh() {
    let server = OAuthServer::start(60);
    let dir = tempfile::tempdir().unwrap();
    let vault = open_vault(dir.path(), &[&server.origin()]).await;
    for client in ["vault-basic", "vault-post", "vault-public"] {
        vault.put_provider(&provider_config(&server, "idp", client)).await.unwrap();
        let user = format!("user-of-{client}");
        let request = vault.begin(&key(&user), REDIRECT, None, None).await.unwrap();
        let sent = params_of(request.url.split_once('?').unwrap().1);
        assert_eq!(sent["code_challenge_method"], "S256", "{client}");
        assert_eq!(sent["redirect_uri"], REDIRECT);
        assert_eq!(sent["state"], request.state);
        assert!(!sent.contains_key("code_verifier"));

        let location = server.authorize(&request.url, false);
        let connected = vault.complete(&query_of(&location), None).await.unwrap();
        assert_eq!(connected.key, key(&user), "{client}");
        assert!(connected.info.has_refresh_token, "{client}: offline_access with consent gives a refresh token");
        let mut granted = connected.info.scopes.clone();
        granted.sort();
        assert_eq!(granted, ["offline_access", "openid"], "{client}: the granted scopes are recorded");

        let first = vault.get(&key(&user)).await.unwrap();
        let renewed = vault.refresh(&key(&user)).await.unwrap();
        assert_ne!(renewed.access_token, first.access_token, "{client}: the connection refreshes");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_state_works_once_and_a_forged_one_not_at_all() {
    let server = OAuthServer::start(60);
    let dir = tempfile::tempdir().unwrap();
    let vault = open_vault(dir.path(), &[&server.origin()]).await;
    vault.put_provider(&provider_config(&server, "idp", "vault-basic")).await.unwrap();

    let request = vault.begin(&key("alice"), REDIRECT, None, None).await.unwrap();
    let query = query_of(&server.authorize(&request.url, false));
    let first = vault.complete(&query, None).await.unwrap();
    let token = vault.get(&first.key).await.unwrap();

    let replay = vault.complete(&query, None).await.unwrap_err();
    assert_eq!(replay.kind(), "invalid-input", "{replay}");
    assert!(replay.to_string().contains("already used"), "{replay}");
    assert_eq!(vault.get(&first.key).await.unwrap().access_token, token.access_token, "a replay changes nothing");

    let forged = format!("code=whatever&state={}", "A".repeat(43));
    assert_eq!(vault.complete(&forged, None).await.unwrap_err().kind(), "invalid-input");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stolen_code_is_useless_without_the_verifier_the_vault_keeps() {
    let server = OAuthServer::start(60);
    let dir = tempfile::tempdir().unwrap();
    let vault = open_vault(dir.path(), &[&server.origin()]).await;
    vault.put_provider(&provider_config(&server, "idp", "vault-post")).await.unwrap();

    let request = vault.begin(&key("bob"), REDIRECT, None, None).await.unwrap();
    let query = query_of(&server.authorize(&request.url, false));
    let code = params_of(&query)["code"].clone();
    // An attacker who intercepted the redirect, and even knows the client secret, has no
    // verifier: the vault never let it out.
    let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
    for verifier in [None, Some("a-guess-that-is-long-enough-to-be-a-valid-pkce-verifier-0000")] {
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT),
            ("client_id", "vault-post"),
            ("client_secret", server.post_secret.as_str()),
        ];
        if let Some(v) = verifier {
            form.push(("code_verifier", v));
        }
        let mut response = agent.post(server.token_url()).send_form(form).unwrap();
        assert_eq!(response.status().as_u16(), 400, "verifier {verifier:?}");
        let body: serde_json::Value = response.body_mut().read_json().unwrap();
        assert_eq!(body["error"], "invalid_grant", "verifier {verifier:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refusal_at_the_provider_is_a_typed_error_and_stores_nothing() {
    let server = OAuthServer::start(60);
    let dir = tempfile::tempdir().unwrap();
    let vault = open_vault(dir.path(), &[&server.origin()]).await;
    vault.put_provider(&provider_config(&server, "idp", "vault-basic")).await.unwrap();

    let request = vault.begin(&key("carol"), REDIRECT, None, None).await.unwrap();
    let location = server.authorize(&request.url, true);
    match vault.complete(&query_of(&location), None).await {
        Err(Error::Vault(VaultError::Provider(failure))) => assert_eq!(failure.code.as_deref(), Some("access_denied")),
        other => panic!("expected access_denied, got {other:?}"),
    }
    assert_eq!(vault.get(&key("carol")).await.unwrap_err().kind(), "not-found");
    assert!(vault.list("acme", "carol").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn discovery_fills_the_endpoints_and_insists_on_the_exact_issuer() {
    let server = OAuthServer::start(60);
    let dir = tempfile::tempdir().unwrap();
    let vault = open_vault(dir.path(), &[&server.origin()]).await;
    let discovered = ProviderConfig {
        name: "idp".into(),
        issuer: Some(server.issuer.clone()),
        client_id: "vault-basic".into(),
        client_secret: Some(server.basic_secret.clone()),
        scopes: vec!["openid".into(), "offline_access".into()],
        authorization_params: vec![("prompt".into(), "consent".into())],
        ..Default::default()
    };
    let info = vault.put_provider(&discovered).await.unwrap();
    assert_eq!(info.issuer.as_deref(), Some(server.issuer.as_str()));
    assert_eq!(info.authorization_url, Some(format!("{}/auth", server.issuer)));
    assert_eq!(info.token_url, server.token_url());
    assert_eq!(info.revocation_url, Some(format!("{}/token/revocation", server.issuer)));
    // A discovered provider connects: the metadata's endpoints are the real ones.
    let connected = connect(&vault, &server, "dora").await;
    assert!(connected.info.has_refresh_token);

    // The metadata says "http://127.0.0.1:PORT"; asking with a trailing slash must fail.
    let mut sloppy = discovered.clone();
    sloppy.issuer = Some(format!("{}/", server.issuer));
    let err = vault.put_provider(&sloppy).await.unwrap_err();
    assert_eq!(err.kind(), "provider-error", "{err}");
    assert!(err.to_string().contains("issuer"), "{err}");

    // Discovery goes through the allow-list like any request.
    let closed = tempfile::tempdir().unwrap();
    let vault = open_vault(closed.path(), &[]).await;
    assert_eq!(vault.put_provider(&discovered).await.unwrap_err().kind(), "egress-denied");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_connection_gives_a_one_time_link_that_connects_it() {
    let server = OAuthServer::start(60);
    let dir = tempfile::tempdir().unwrap();
    let vault = open_vault(dir.path(), &[&server.origin()]).await;
    vault.put_provider(&provider_config(&server, "idp", "vault-basic")).await.unwrap();

    let TokenOrLink::Link(link) = vault.get_or_link(&key("erin"), None).await.unwrap() else {
        panic!("expected a link for a connection that does not exist");
    };
    let request = vault.open_link(&link.code, REDIRECT, None).await.unwrap();
    let connected = vault.complete(&query_of(&server.authorize(&request.url, false)), None).await.unwrap();
    assert_eq!(connected.key, key("erin"));
    assert_eq!(vault.open_link(&link.code, REDIRECT, None).await.unwrap_err().kind(), "invalid-input", "spent");
    assert!(matches!(vault.get_or_link(&key("erin"), None).await.unwrap(), TokenOrLink::Token(_)));
    let unknown = ConnectionKey::new("acme", "erin", "nope", "default");
    assert_eq!(vault.get_or_link(&unknown, None).await.unwrap_err().kind(), "not-found");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_connection_renews_itself_with_client_credentials() {
    let server = OAuthServer::start(4);
    let dir = tempfile::tempdir().unwrap();
    let vault = open_vault(dir.path(), &[&server.origin()]).await;
    vault.put_provider(&provider_config(&server, "idp", "vault-basic")).await.unwrap();

    let info = vault.connect_client(&key("service"), Some(&[])).await.unwrap();
    assert_eq!(info.kind, ConnectionKind::Client);
    assert!(!info.has_refresh_token);
    let first = vault.get(&key("service")).await.unwrap();
    assert!(server.is_active("vault-basic", &first.access_token));
    // Four-second tokens are due at half their lifetime.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let second = vault.get(&key("service")).await.unwrap();
    assert_ne!(second.access_token, first.access_token, "obtained again without a refresh token");
    assert!(server.is_active("vault-basic", &second.access_token));

    vault.put_provider(&provider_config(&server, "pub", "vault-public")).await.unwrap();
    let public = ConnectionKey::new("acme", "service", "pub", "default");
    assert_eq!(vault.connect_client(&public, None).await.unwrap_err().kind(), "invalid-input", "no secret");
}

#[tokio::test(flavor = "multi_thread")]
async fn flows_links_and_device_codes_expire() {
    let server = OAuthServer::start(60);
    let dir = tempfile::tempdir().unwrap();
    let vault = open_vault(dir.path(), &[&server.origin()]).await;
    let device_authorization_url = Some(format!("{}/device/auth", server.issuer));
    let config = ProviderConfig { device_authorization_url, ..provider_config(&server, "idp", "vault-public") };
    vault.put_provider(&config).await.unwrap();
    let later = |secs| vault.services().clock.advance(std::time::Duration::from_secs(secs));

    // A user who comes back from the provider after ten minutes is refused, and the
    // state is spent.
    let request = vault.begin(&key("fay"), REDIRECT, None, None).await.unwrap();
    let query = query_of(&server.authorize(&request.url, false));
    later(601);
    let late = vault.complete(&query, None).await.unwrap_err();
    assert!(late.kind() == "invalid-input" && late.to_string().contains("expired"), "{late}");
    assert_eq!(vault.complete(&query, None).await.unwrap_err().kind(), "invalid-input");
    assert_eq!(vault.get(&key("fay")).await.unwrap_err().kind(), "not-found");

    let link = vault.link(&key("fay"), None).await.unwrap();
    later(901);
    assert_eq!(vault.open_link(&link.code, REDIRECT, None).await.unwrap_err().kind(), "invalid-input");

    let device = vault.begin_device(&key("fay"), None).await.unwrap();
    later(601);
    let expired = vault.poll_device(&device.handle).await.unwrap_err();
    assert!(expired.to_string().contains("expired"), "{expired}");
    assert_eq!(server.device_polls_and_faults(), (0, 0), "an expired device code is not polled");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_scheduler_sweeps_flows_and_links_an_hour_after_they_expire() {
    let server = OAuthServer::start(60);
    let dir = tempfile::tempdir().unwrap();
    let vault = open_vault(dir.path(), &[&server.origin()]).await;
    vault.put_provider(&provider_config(&server, "idp", "vault-basic")).await.unwrap();
    let abandoned = vault.begin(&key("dora"), REDIRECT, None, None).await.unwrap();
    let link = vault.link(&key("dora"), None).await.unwrap();
    let (_stop, running) = tokio::sync::watch::channel(false);
    assert_eq!(tokenvault_serve::scheduler::sweep(&vault, &running).await, 0, "nothing expired yet");

    vault.services().clock.advance(std::time::Duration::from_secs(2 * 3600));
    let kept = vault.link(&key("erin"), None).await.unwrap();
    assert_eq!(tokenvault_serve::scheduler::sweep(&vault, &running).await, 2);
    let records = vault.services().storage.list("", None, 100).await.unwrap().keys;
    assert!(!records.iter().any(|k| k.starts_with("flow/")), "{records:?}");
    assert_eq!(records.iter().filter(|k| k.starts_with("link/")).count(), 1, "{records:?}");

    // The abandoned flow's callback and the old link now find nothing; the new link works.
    let location = server.authorize(&abandoned.url, false);
    assert!(matches!(vault.complete(&query_of(&location), None).await, Err(Error::Vault(VaultError::InvalidInput(_)))));
    assert!(matches!(
        vault.open_link(&link.code, REDIRECT, None).await,
        Err(Error::Vault(VaultError::InvalidInput(_)))
    ));
    assert!(vault.open_link(&kept.code, REDIRECT, None).await.is_ok());
}
