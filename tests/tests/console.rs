//! The console: what end users and administrators see of `tokenvault serve`, in headless
//! Chromium against the real OAuth server, and its refusals (CSRF, another tenant, a
//! revoked key, a spent link) with a cookie-keeping HTTP client.

use serde_json::{Value, json};
use tokenvault_tests::{OAuthServer, Served, Tokenvault, tests_dir};

/// A service with the provider `idp` registered, and a key for tenant acme.
fn service(cli: &Tokenvault, server: &OAuthServer, options: &[&str]) -> (Served, String) {
    let served = cli.serve_with(options);
    let operator = served.first_key.clone().expect("a first key");
    let mut provider = server.provider_body();
    provider["api_base_url"] = json!(server.api);
    assert_eq!(served.call("PUT", "/v1/providers/idp", Some(&operator), Some(&provider)).0, 200);
    let made = cli.run(&["apikey", "create", "acme"], None).json();
    (served, made["key"].as_str().unwrap().to_owned())
}

/// A console link for a user, as the backend asks for it.
fn console_link(served: &Served, key: &str, tenant: &str, user: &str) -> (u16, Value) {
    served.call("POST", &format!("/v1/tenants/{tenant}/users/{user}/console-link"), Some(key), None)
}

#[test]
fn a_user_and_an_admin_in_chromium() {
    let chromium = std::env::var("TOKENVAULT_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "no Chromium at {chromium}: `apt-get install chromium` (or set TOKENVAULT_TEST_CHROMIUM)"
    );
    let browser_dir = tests_dir("browser");
    tokenvault_tests::ensure_npm_packages(&browser_dir, "playwright-core");

    let server = OAuthServer::start(600);
    let mut cli = Tokenvault::new(&[&server.origin(), &server.api]);
    let oidc_secret = server.console_secret.clone();
    cli.env.push(("TOKENVAULT_CONSOLE_OIDC_CLIENT_SECRET".into(), oidc_secret.clone()));
    let (served, acme) =
        service(&cli, &server, &["--console-oidc-issuer", &server.issuer, "--console-oidc-client-id", "console"]);
    let operator = served.first_key.clone().unwrap();
    let printed = served.log();
    assert!(printed.contains(&format!("Console: {}/console", served.url)), "no console URL printed:\n{printed}");

    // The backend asks for alice's links; bob already has two connections.
    let (status, console) = console_link(&served, &acme, "acme", "alice");
    assert_eq!(status, 200, "{console}");
    let (status, connect) =
        served.call("POST", "/v1/tenants/acme/users/alice/connections/idp/default/link", Some(&acme), None);
    assert_eq!(status, 200, "{connect}");
    let mut secrets = vec![server.basic_secret.clone(), oidc_secret, acme.clone(), operator];
    for name in ["default", "work"] {
        let grant = server.grant("vault-basic");
        secrets.extend(["access_token", "refresh_token"].map(|k| grant[k].as_str().unwrap().to_owned()));
        let path = format!("/v1/tenants/acme/users/bob/connections/idp/{name}");
        assert_eq!(served.call("PUT", &path, Some(&acme), Some(&grant)).0, 200);
    }
    let bob_token = json!({ "name": "bob-ci", "connections": [{ "provider": "idp" }] });
    assert_eq!(served.call("POST", "/v1/tenants/acme/users/bob/access-tokens", Some(&acme), Some(&bob_token)).0, 201);

    let out = tempfile::tempdir().unwrap();
    let input = json!({
        "serve": served.url,
        "chromium": chromium,
        "out": out.path(),
        "console_link": console["url"],
        "connect_link": connect["url"],
        "tenant_key": acme,
        "login": tokenvault_tests::TEST_LOGIN,
        "password": tokenvault_tests::TEST_PASSWORD,
        "introspect": {
            "url": format!("{}/token/introspection", server.issuer),
            "client_id": "vault-basic",
            "client_secret": server.basic_secret,
        },
        "oidc": true,
    });
    let input_file = out.path().join("input.json");
    std::fs::write(&input_file, input.to_string()).unwrap();
    let run = std::process::Command::new("node")
        .arg(browser_dir.join("console.mjs"))
        .env("TV_BROWSER_INPUT", &input_file)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|_| panic!("no summary from the browser test:\n{stdout}\n{stderr}"));
    assert!(run.status.success(), "the browser test failed: {}\n{stderr}", summary["error"]);
    assert_eq!(summary["steps"].as_array().unwrap().len(), 13, "{summary}");

    // TOKENVAULT_TEST_KEEP_PAGES=DIR keeps what the browser saw (pages, screenshots).
    if let Ok(keep) = std::env::var("TOKENVAULT_TEST_KEEP_PAGES") {
        std::fs::create_dir_all(&keep).unwrap();
        for entry in std::fs::read_dir(out.path()).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, std::path::Path::new(&keep).join(path.file_name().unwrap())).unwrap();
        }
    }

    // The provider agrees: alice's token is revoked, and so are bob's.
    let access = summary["access_token"].as_str().unwrap().to_owned();
    assert!(!server.is_active("vault-basic", &access));
    for bob_access in secrets.iter().skip(4).step_by(2) {
        assert!(!server.is_active("vault-basic", bob_access), "bob's token survived revoke-all");
    }
    secrets.push(access);
    secrets.push(link_code(console["url"].as_str().unwrap()));
    secrets.push(link_code(connect["url"].as_str().unwrap()));

    // Canary scan: no page the browser saw and no log line holds a value.
    let mut scanned = 0;
    for entry in std::fs::read_dir(out.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "html") {
            let page = std::fs::read_to_string(&path).unwrap();
            // Its first line names the URL the browser was at (a callback's carries the code).
            let shown = page.split_once('\n').map_or("", |(_, body)| body);
            tokenvault_tests::canary::record(format!("chromium {}", path.display()), shown);
            for secret in &secrets {
                assert!(!page.contains(secret.as_str()), "{} shows a secret", path.display());
            }
            scanned += 1;
        }
    }
    assert!(scanned >= 10, "only {scanned} pages saved");
    let printed = served.log();
    // (The operator key is printed once, at the first start, on purpose.)
    for secret in secrets.iter().filter(|s| **s != served.first_key.clone().unwrap()) {
        assert!(!printed.contains(secret.as_str()), "the log shows a secret:\n{printed}");
    }
}

/// The code a link carries (its last query value).
fn link_code(url: &str) -> String {
    url::Url::parse(url).unwrap().query_pairs().last().unwrap().1.into_owned()
}

#[test]
fn console_refuses_forged_forms_other_tenants_revoked_keys_and_spent_links() {
    let server = OAuthServer::start(600);
    let cli = Tokenvault::new(&[&server.origin()]);
    let (served, acme) = service(&cli, &server, &[]);
    let grant = server.grant("vault-basic");
    assert_eq!(
        served.call("PUT", "/v1/tenants/acme/users/bob/connections/idp/default", Some(&acme), Some(&grant)).0,
        200
    );

    // Console links: a tenant key asks for its own tenant's users only.
    assert_eq!(console_link(&served, &acme, "globex", "bob").0, 403);
    assert_eq!(served.call("POST", "/v1/tenants/acme/users/bob/console-link", None, None).0, 401);

    // Signed out, every console page leads to the sign-in page.
    let browser = served.browser();
    for path in ["/console", "/console/me", "/console/admin", "/console/admin/audit"] {
        let page = browser.get(path);
        assert_eq!((page.status, page.location.as_deref()), (303, Some("/console/sign-in")), "{path}");
    }
    let sign_in = browser.get("/console/sign-in");
    assert_eq!(sign_in.status, 200);
    let csp = sign_in.headers.get("content-security-policy").cloned().unwrap_or_default();
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    let cookie = &sign_in.headers["set-cookie"];
    assert!(
        cookie.starts_with("__Host-tv_sign_in=") && cookie.contains("Secure") && cookie.contains("Path=/"),
        "{cookie}"
    );
    assert!(!cookie.contains("Domain"), "{cookie}");

    // Sign-in: a form without the page's token, then a wrong key, are refused.
    let forged = browser.post("/console/sign-in", &[("csrf", "forged"), ("api_key", &acme)]);
    assert_eq!(forged.status, 403, "{}", forged.body);
    let csrf = sign_in.csrf();
    let wrong = browser.post("/console/sign-in", &[("csrf", &csrf), ("api_key", "tvk_000000000000_nope")]);
    assert_eq!(wrong.status, 401);
    assert!(wrong.body.contains("unknown or revoked"));
    let other = served.browser();
    assert_eq!(
        other.post("/console/sign-in", &[("csrf", &csrf), ("api_key", &acme)]).status,
        403,
        "another browser replays this one's form token"
    );
    let signed_in = browser.post("/console/sign-in", &[("csrf", &csrf), ("api_key", &acme)]);
    assert_eq!((signed_in.status, signed_in.location.as_deref()), (303, Some("/console/admin")));

    // The tenant admin: acme's users, not globex's.
    let users = browser.get("/console/admin");
    assert!(users.status == 200 && users.body.contains("data-user=\"bob\"") && users.body.contains("idp (1)"));
    assert_eq!(browser.get("/console/admin?tenant=globex").status, 403);
    assert_eq!(browser.get("/console/admin/audit?tenant=globex").status, 403);
    let audit = browser.get("/console/admin/audit");
    assert!(audit.body.contains("console-sign-in") && audit.body.contains("token-store"), "{}", audit.body);
    assert!(audit.body.contains("console:apikey:"), "the sign-in names who signed in: {}", audit.body);

    // Revoke all: a forged form does nothing; the session's own form does it.
    let confirm = browser.get("/console/admin/revoke-all?tenant=acme&user=bob");
    assert!(confirm.body.contains("This cannot be undone"));
    let forged = browser.post("/console/admin/revoke-all", &[("csrf", "forged"), ("tenant", "acme"), ("user", "bob")]);
    assert_eq!(forged.status, 403);
    let missing = browser.post("/console/admin/revoke-all", &[("tenant", "acme"), ("user", "bob")]);
    assert!((400..500).contains(&missing.status), "a form without a token: {}", missing.status);
    assert_eq!(
        served.call("GET", "/v1/tenants/acme/users/bob/connections", Some(&acme), None).1.as_array().unwrap().len(),
        1
    );
    let csrf = confirm.csrf();
    let other_tenant =
        browser.post("/console/admin/revoke-all", &[("csrf", &csrf), ("tenant", "globex"), ("user", "bob")]);
    assert_eq!(other_tenant.status, 403);
    let revoked = browser.post("/console/admin/revoke-all", &[("csrf", &csrf), ("tenant", "acme"), ("user", "bob")]);
    assert!(revoked.status == 200 && revoked.body.contains("The provider revoked its tokens."), "{}", revoked.body);
    assert!(!server.is_active("vault-basic", grant["access_token"].as_str().unwrap()));

    // Revoking the key ends the sessions it signed in.
    let id = acme.split('_').nth(1).unwrap();
    assert_eq!(cli.run(&["apikey", "revoke", id], None).code, 0);
    let ended = browser.get("/console/admin");
    assert_eq!((ended.status, ended.location.as_deref()), (303, Some("/console/sign-in?ended=1")));

    // An end user: the link works once, and reaches their own page only.
    let acme = cli.run(&["apikey", "create", "acme"], None).json()["key"].as_str().unwrap().to_owned();
    let (_, link) = console_link(&served, &acme, "acme", "carol");
    let url = link["url"].as_str().unwrap();
    assert!(url.starts_with(&format!("{}/console/enter?code=", served.url)), "{url}");
    let carol = served.browser();
    let entered = carol.get(url);
    assert_eq!((entered.status, entered.location.as_deref()), (303, Some("/console/me")));
    let me = carol.get("/console/me");
    assert!(me.status == 200 && me.body.contains("No connections yet."), "{}", me.body);

    // Her connection's refresh token is burnt at the provider: "Reconnect needed", and
    // Reconnect sends her on to the provider through a fresh connect link.
    let carols = server.grant("vault-basic");
    let path = "/v1/tenants/acme/users/carol/connections/idp/default";
    assert_eq!(served.call("PUT", path, Some(&acme), Some(&carols)).0, 200);
    let me = carol.get("/console/me");
    assert!(me.body.contains("Connected with API access") && !me.body.contains("Reconnect"), "{}", me.body);
    assert_eq!(server.raw_refresh("vault-basic", carols["refresh_token"].as_str().unwrap()).0, 200);
    assert_eq!(served.call("POST", &format!("{path}/refresh"), Some(&acme), None).0, 409);
    let me = carol.get("/console/me");
    assert!(me.body.contains("Reconnect needed"), "{}", me.body);
    let csrf = me.csrf();
    let reconnect = carol.post("/console/me/reconnect", &[("csrf", &csrf), ("provider", "idp"), ("name", "default")]);
    assert_eq!(reconnect.status, 303);
    let to = reconnect.location.unwrap();
    assert!(to.starts_with(&format!("{}/connect/idp?link=", served.url)), "{to}");
    let (status, to_provider, _) = served.browse(&to);
    assert!(status == 303 && to_provider.unwrap().starts_with(&server.issuer));
    assert_eq!(carol.get("/console/admin").status, 403);
    assert_eq!(served.browser().get(url).status, 410, "a console link entered twice");
    let forged = carol.post("/console/me/disconnect", &[("csrf", "forged"), ("provider", "idp"), ("name", "default")]);
    assert_eq!(forged.status, 403);
    let unreadable = carol.post("/console/me/disconnect", &[("csrf", &csrf)]);
    assert_eq!(unreadable.status, 422);
    assert!(unreadable.body.contains("The form could not be read"), "{}", unreadable.body);
    let forged = carol.post(
        "/console/me/access-tokens",
        &[("csrf", "forged"), ("name", "x"), ("connection", r#"["idp","default"]"#)],
    );
    assert_eq!(forged.status, 403, "an access token made by a forged form");
    let (_, tokens) = served.call("GET", "/v1/tenants/acme/users/carol/access-tokens", Some(&acme), None);
    assert_eq!(tokens, json!([]));
    let out = carol.post("/console/sign-out", &[("csrf", &me.csrf())]);
    assert_eq!(out.status, 303);
    assert_eq!(carol.get("/console/me").status, 303, "still signed in after signing out");

    // No value in any page or log line.
    for page in [&users, &audit, &confirm, &revoked, &me] {
        for secret in
            [grant["access_token"].as_str().unwrap(), grant["refresh_token"].as_str().unwrap(), &server.basic_secret]
        {
            assert!(!page.body.contains(secret));
        }
    }
    let printed = served.log();
    assert!(!printed.contains(grant["refresh_token"].as_str().unwrap()) && !printed.contains("code="), "{printed}");
}
