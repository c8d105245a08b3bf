//! Tenants through `serve` and the CLI, against the real OAuth server. Their own providers:
//! a tenant registers its own OAuth app under the name of the vault's, its connections are
//! refreshed with its app (the server accepts a refresh token only from the client it was
//! issued to), another tenant's with the vault's; no tenant sees or reaches another's; once
//! removed, the vault's serves again. Leaving: a tenant erased a step at a time, through
//! the API and then the CLI, has its credentials revoked, its tokens revoked at the
//! provider and everything of its deleted, while another tenant goes on.

use serde_json::{Value, json};
use tokenvault_tests::{OAuthServer, Tokenvault, canary};

/// The server's `vault-post` client as a provider body, its secret in it.
fn own_app(server: &OAuthServer) -> Value {
    json!({
        "token_url": server.token_url(),
        "authorization_url": format!("{}/auth", server.issuer),
        "client_id": "vault-post",
        "client_secret": server.post_secret,
        "client_auth": "client_secret_post",
        "scopes": ["openid", "offline_access"],
    })
}

#[test]
fn a_tenants_own_app_serves_its_connections_and_no_other_tenants() {
    let server = OAuthServer::start(600);
    let cli = Tokenvault::new(&[&server.origin()]);
    let served = cli.serve_with(&["--refresh-every", "0"]);
    let operator = served.first_key.clone().unwrap();
    assert_eq!(served.call("PUT", "/v1/providers/idp", Some(&operator), Some(&server.provider_body())).0, 200);
    let (acme, globex) = (cli.api_key("acme").0, cli.api_key("globex").0);

    // acme registers its own app as idp; globex can neither set nor read acme's.
    let own = "/v1/tenants/acme/providers/idp";
    let (status, info) = served.call("PUT", own, Some(&acme), Some(&own_app(&server)));
    assert_eq!((status, info["tenant"].as_str(), info["client_id"].as_str()), (200, Some("acme"), Some("vault-post")));
    assert!(!info.to_string().contains(&server.post_secret));
    assert_eq!(served.call("PUT", "/v1/tenants/acme/providers/other", Some(&globex), Some(&own_app(&server))).0, 403);
    assert_eq!(served.call("GET", own, Some(&globex), None).0, 403);
    let (_, listed) = served.call("GET", "/v1/tenants/acme/providers", Some(&acme), None);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!((listed[0]["name"].as_str(), listed[0]["tenant"].as_str()), (Some("idp"), Some("acme")));
    let (_, theirs) = served.call("GET", "/v1/tenants/globex/providers/idp", Some(&globex), None);
    assert_eq!((theirs["tenant"].clone(), theirs["client_id"].as_str()), (Value::Null, Some("vault-basic")));
    let (_, global) = served.call("GET", "/v1/providers", Some(&operator), None);
    assert_eq!(global.as_array().unwrap().len(), 1);
    assert_eq!(global[0]["client_id"], "vault-basic", "the vault's list holds no tenant's app");

    // Each tenant's connection is refreshed with its own app: the server takes a refresh
    // token only from the client it issued it to.
    let acme_connection = "/v1/tenants/acme/users/alice/connections/idp/default";
    let globex_connection = "/v1/tenants/globex/users/bob/connections/idp/default";
    assert_eq!(served.call("PUT", acme_connection, Some(&acme), Some(&server.grant("vault-post"))).0, 200);
    assert_eq!(served.call("PUT", globex_connection, Some(&globex), Some(&server.grant("vault-basic"))).0, 200);
    for (connection, key, client) in
        [(acme_connection, &acme, "vault-post"), (globex_connection, &globex, "vault-basic")]
    {
        let (status, token) = served.call("POST", &format!("{connection}/refresh"), Some(key), None);
        assert_eq!(status, 200, "{connection}: {token}");
        assert!(
            server.is_active(client, token["access_token"].as_str().unwrap()),
            "{connection} refreshed as {client}"
        );
    }

    // Removed, acme's connections go to the vault's app, which the server refuses for them.
    assert_eq!(served.call("DELETE", own, Some(&acme), None).0, 204);
    assert_eq!(served.call("DELETE", own, Some(&acme), None).0, 404);
    let (_, fallback) = served.call("GET", own, Some(&acme), None);
    assert_eq!(fallback["tenant"], Value::Null);
    let (status, _) = served.call("POST", &format!("{acme_connection}/refresh"), Some(&acme), None);
    assert_ne!(status, 200, "a token of acme's app refreshed with the vault's");

    // The CLI names the tenant with --for-tenant.
    let added = cli.run(
        &[
            "provider",
            "add",
            "idp",
            "--for-tenant",
            "globex",
            "--token-url",
            &server.token_url(),
            "--client-id",
            "vault-post",
        ],
        None,
    );
    assert_eq!(added.json()["tenant"], "globex");
    let listed = cli.run(&["provider", "ls", "--for-tenant", "globex"], None).json();
    assert_eq!((listed[0]["tenant"].as_str(), listed[0]["client_id"].as_str()), (Some("globex"), Some("vault-post")));
    assert_eq!(cli.run(&["provider", "ls"], None).json()[0]["tenant"], Value::Null);
    cli.run(&["provider", "rm", "idp", "--for-tenant", "globex"], None).json();
    assert_eq!(
        cli.run(&["provider", "show", "idp", "--for-tenant", "globex"], None).json()["client_id"],
        "vault-basic"
    );
    canary::record("serve log", &served.log());
}

#[test]
fn an_erased_tenant_leaves_nothing_behind_and_others_go_on() {
    let server = OAuthServer::start(600);
    let cli = Tokenvault::new(&[&server.origin()]);
    let served = cli.serve_with(&["--refresh-every", "0"]);
    let operator = served.first_key.clone().unwrap();
    assert_eq!(served.call("PUT", "/v1/providers/idp", Some(&operator), Some(&server.provider_body())).0, 200);
    let (acme, globex) = (cli.api_key("acme").0, cli.api_key("globex").0);
    assert_eq!(served.call("PUT", "/v1/tenants/acme/providers/own", Some(&acme), Some(&own_app(&server))).0, 200);
    let mut issued = Vec::new();
    for user in ["alice", "bob", "carol"] {
        let grant = server.grant("vault-basic");
        issued.push(grant["access_token"].as_str().unwrap().to_owned());
        let path = format!("/v1/tenants/acme/users/{user}/connections/idp/default");
        assert_eq!(served.call("PUT", &path, Some(&acme), Some(&grant)).0, 200);
    }
    let ask = json!({ "name": "ci", "connections": [{ "provider": "idp" }] });
    let (status, made) = served.call("POST", "/v1/tenants/acme/users/alice/access-tokens", Some(&acme), Some(&ask));
    assert_eq!(status, 201, "{made}");
    let access_token = made["token"].as_str().unwrap().to_owned();
    assert_eq!(served.call("POST", "/v1/tenants/acme/users/alice/console-link", Some(&acme), None).0, 200);
    let globex_connection = "/v1/tenants/globex/users/dave/connections/idp/default";
    assert_eq!(served.call("PUT", globex_connection, Some(&globex), Some(&server.grant("vault-basic"))).0, 200);

    // Operators only; a step through the API: credentials first, then two connections.
    assert_eq!(served.call("DELETE", "/v1/tenants/acme", Some(&acme), None).0, 403);
    let (status, step) = served.call("DELETE", "/v1/tenants/acme?limit=2", Some(&operator), None);
    assert_eq!(status, 200, "{step}");
    assert_eq!(step["revoked"], json!({ "api_keys": 1, "access_tokens": 1, "console_sessions": 1 }));
    assert_eq!((step["removed"].as_array().unwrap().len(), step["done"].as_bool()), (2, Some(false)), "{step}");
    assert!(step["removed"].as_array().unwrap().iter().all(|r| r["upstream"]["outcome"] == "revoked"), "{step}");
    assert_eq!(served.call("GET", "/v1/tenants/acme/users/alice/connections", Some(&acme), None).0, 401);
    let proxied = served.call_text("GET", "/v1/proxy/idp/user", Some(&access_token), None);
    assert_eq!(proxied.0, 401, "the access token outlived its tenant");

    // The CLI finishes what the API began.
    let erased = cli.run(&["tenant", "erase", "acme", "--page", "2"], None).json();
    assert_eq!(erased["connections_removed"], 1, "{erased}");
    assert_eq!(
        (erased["upstream"]["revoked"].as_u64(), erased["records_deleted"].as_u64()),
        (Some(1), Some(1)),
        "{erased}"
    );
    for token in &issued {
        assert!(!server.is_active("vault-basic", token), "a token of acme's still works at the provider");
    }
    let (status, again) = served.call("DELETE", "/v1/tenants/acme", Some(&operator), None);
    assert_eq!(
        (status, again["done"].as_bool(), again["removed"].as_array().map(Vec::len)),
        (200, Some(true), Some(0))
    );
    for path in ["/v1/tenants/acme/users", "/v1/tenants/acme/providers"] {
        let (_, left) = served.call("GET", path, Some(&operator), None);
        assert!(!left.to_string().contains("alice") && !left.to_string().contains("vault-post"), "{path}: {left}");
    }

    // globex goes on.
    let (status, token) = served.call("GET", &format!("{globex_connection}/token"), Some(&globex), None);
    assert_eq!(status, 200, "{token}");
    canary::record("serve log", &served.log());
}
