//! The `tokenvault` CLI end to end against a real OAuth server, with planted canaries:
//! no token value or client secret may appear anywhere but in what `token get` and
//! `token refresh` print.

use std::path::Path;

use tokenvault_tests::{OAuthServer, Tokenvault};

#[test]
fn every_command_works_and_no_value_leaks_into_any_output() {
    let server = OAuthServer::start(60);
    let mut tv = Tokenvault::new(&[&server.origin()]);
    tv.env.push(("TOKENVAULT_LOG".into(), "trace".into()));
    tv.env.push(("IDP_SECRET".into(), server.basic_secret.clone()));
    let mut canaries = vec![server.basic_secret.clone()];
    let mut may_print_values = Vec::new(); // indexes of runs whose stdout is a token set

    // Providers.
    let token_url = server.token_url();
    let revocation_url = format!("{}/token/revocation", server.issuer);
    let added = tv
        .run(
            &[
                "provider",
                "add",
                "idp",
                "--token-url",
                &token_url,
                "--revocation-url",
                &revocation_url,
                "--client-id",
                "vault-basic",
                "--client-secret-env",
                "IDP_SECRET",
                "--scope",
                "openid",
            ],
            None,
        )
        .json();
    assert_eq!(added["has_client_secret"], true);
    assert_eq!(added["client_auth"], "client_secret_basic");
    let listed = tv.run(&["provider", "ls"], None).json();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(tv.run(&["provider", "show", "idp"], None).json()["token_url"], token_url.as_str());

    // Put a token obtained from the server (its id_token is ignored, and is a canary too).
    let response = server.grant("vault-basic");
    for field in ["access_token", "refresh_token", "id_token"] {
        canaries.push(response[field].as_str().unwrap().to_owned());
    }
    let stored = tv.run(&["token", "put", "acme", "alice", "idp"], Some(&response.to_string())).json();
    assert_eq!(stored["has_refresh_token"], true);
    let work_response = server.grant("vault-basic");
    for field in ["access_token", "refresh_token"] {
        canaries.push(work_response[field].as_str().unwrap().to_owned());
    }
    let work =
        tv.run(&["token", "put", "acme", "alice", "idp", "--name", "work"], Some(&work_response.to_string())).json();
    assert_eq!(work["name"], "work");

    let listed = tv.run(&["token", "ls", "acme", "alice"], None).json();
    let names: Vec<&str> = listed.as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["default", "work"]);

    // Get returns the values: the one place they may appear.
    let got = tv.run(&["token", "get", "acme", "alice", "idp"], None);
    may_print_values.push(tv.runs.borrow().len() - 1);
    let got = got.json();
    assert_eq!(got["access_token"], response["access_token"]);
    assert_eq!(got["token_type"], "Bearer");
    assert!(got["expires_at"].as_u64().is_some());

    let refreshed = tv.run(&["token", "refresh", "acme", "alice", "idp"], None);
    may_print_values.push(tv.runs.borrow().len() - 1);
    let refreshed = refreshed.json();
    assert_ne!(refreshed["access_token"], response["access_token"]);
    for field in ["access_token", "refresh_token"] {
        canaries.push(refreshed[field].as_str().unwrap().to_owned());
    }

    // Errors: kind first, no value echoed.
    server.fault(serde_json::json!({ "status": 500, "body": response["refresh_token"], "content_type": "text/plain" }));
    assert_eq!(tv.run(&["token", "refresh", "acme", "alice", "idp"], None).error_kind(), "provider-error");
    let bad_json = format!("{{\"access_token\": 42, \"refresh_token\": {} }}", response["refresh_token"]);
    assert_eq!(tv.run(&["token", "put", "acme", "alice", "idp"], Some(&bad_json)).error_kind(), "invalid-input");
    assert_eq!(tv.run(&["token", "get", "acme", "nobody", "idp"], None).error_kind(), "not-found");
    assert_eq!(
        tv.run(&["token", "put", "acme", "alice", "unknown"], Some(&response.to_string())).error_kind(),
        "not-found"
    );

    // A provider whose token URL is not allowed.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let elsewhere = format!("http://127.0.0.1:{}/token", closed.local_addr().unwrap().port());
    tv.run(
        &[
            "provider",
            "add",
            "elsewhere",
            "--token-url",
            &elsewhere,
            "--client-id",
            "vault-basic",
            "--client-secret-env",
            "IDP_SECRET",
        ],
        None,
    )
    .json();
    tv.run(&["token", "put", "acme", "alice", "elsewhere"], Some(&response.to_string())).json();
    assert_eq!(tv.run(&["token", "refresh", "acme", "alice", "elsewhere"], None).error_kind(), "egress-denied");

    // Removal.
    // Removal revokes upstream where the provider can, and says so.
    let work_refresh = work_response["refresh_token"].as_str().unwrap();
    assert!(server.is_active("vault-basic", work_refresh));
    let receipt = tv.run(&["token", "rm", "acme", "alice", "idp", "--name", "work"], None).json();
    assert_eq!((&receipt["name"], &receipt["upstream"]["outcome"]), (&"work".into(), &"revoked".into()), "{receipt}");
    assert!(!server.is_active("vault-basic", work_refresh), "the provider no longer honours it");
    assert_eq!(tv.run(&["token", "rm", "acme", "alice", "idp", "--name", "work"], None).error_kind(), "not-found");
    let receipts = tv.run(&["revoke-all", "acme", "alice"], None).json();
    let outcomes: Vec<(&str, &str)> = receipts
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["provider"].as_str().unwrap(), r["upstream"]["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(outcomes, [("elsewhere", "unsupported"), ("idp", "revoked")]);
    assert!(!server.is_active("vault-basic", refreshed["refresh_token"].as_str().unwrap()));
    assert_eq!(tv.run(&["token", "ls", "acme", "alice"], None).json(), serde_json::json!([]));
    tv.run(&["provider", "rm", "elsewhere"], None).json();

    // The trail, read before the scan (whose runs include this one).
    let events = tv.audit_events();
    assert!(events.len() >= 15, "every operation is audited");
    assert!(events.iter().any(|e| e["action"] == "token-refresh" && e["outcome"] == "provider-error"));
    assert!(events.iter().all(|e| e["actor"].as_str().is_some_and(|a| a.starts_with("cli:"))), "who asked");

    // The scan.
    let runs = tv.runs.borrow();
    assert!(
        runs.iter().any(|(_, run)| run.stderr.contains("TRACE") || run.stderr.contains("DEBUG")),
        "logging was not on"
    );
    for (i, (args, run)) in runs.iter().enumerate() {
        for canary in &canaries {
            assert!(!run.stderr.contains(canary.as_str()), "a value leaked to stderr of {args:?}");
            if !may_print_values.contains(&i) {
                assert!(!run.stdout.contains(canary.as_str()), "a value leaked to stdout of {args:?}");
            }
        }
    }
    let data = tv.data_dir.path();
    let trail = serde_json::to_string(&events).unwrap();
    assert!(!canaries.iter().any(|c| trail.contains(c.as_str())), "a value in the audit trail");
    for file in ["vault.db", "vault.db-wal"] {
        scan_file(&data.join(file), &canaries);
    }
}

fn scan_file(path: &Path, canaries: &[String]) {
    let Ok(bytes) = std::fs::read(path) else {
        return;
    };
    for canary in canaries {
        assert!(
            !bytes.windows(canary.len()).any(|w| w == canary.as_bytes()),
            "a value is stored in plain in {}",
            path.display()
        );
    }
}

#[test]
fn connect_discovers_the_provider_and_completes_on_a_loopback_redirect() {
    let server = OAuthServer::start(60);
    let mut tv = Tokenvault::new(&[&server.origin()]);
    tv.env.push(("IDP_SECRET".into(), server.post_secret.clone()));
    let args = [
        "provider",
        "add",
        "idp",
        "--issuer",
        &server.issuer,
        "--client-id",
        "vault-post",
        "--client-secret-env",
        "IDP_SECRET",
        "--scope",
        "openid",
        "--scope",
        "offline_access",
        "--auth-param",
        "prompt=consent",
    ];
    let added = tv.run(&args, None).json();
    assert_eq!(added["authorization_url"], format!("{}/auth", server.issuer));

    let mut connecting = tv.spawn(&["connect", "acme", "erin", "idp"]);
    let url = connecting.line_where(|line| line.starts_with("http"));
    let location = server.authorize(&url, false);
    assert!(location.starts_with("http://127.0.0.1:"), "{location}");
    let page = ureq::get(&location).call().unwrap().body_mut().read_to_string().unwrap();
    assert!(page.contains("Connected"), "{page}");

    let (connected, shown) = connecting.finish();
    assert_eq!(connected["key"]["user"], "erin");
    assert_eq!(connected["info"]["has_refresh_token"], true);
    let token = tv.run(&["token", "get", "acme", "erin", "idp"], None).json();
    assert!(token["access_token"].as_str().is_some_and(|t| !t.is_empty()));

    // What connect showed the terminal and the browser holds no value.
    let shown = format!("{shown}{page}");
    for secret in [&token["access_token"], &token["refresh_token"]] {
        let secret = secret.as_str().expect("the connection holds both tokens");
        assert!(!shown.contains(secret), "connect printed a token");
    }
    assert!(!shown.contains(&server.post_secret), "connect printed the client secret");
}

#[test]
fn templates_need_only_a_client_id_and_secret() {
    let tv = Tokenvault::new(&[]);
    let github = tv.run(&["provider", "add", "gh", "--template", "github", "--client-id", "Iv1.abc"], None).json();
    assert_eq!(github["template"], "github");
    assert_eq!(github["token_url"], "https://github.com/login/oauth/access_token");
    let ms = tv
        .run(&["provider", "add", "ms", "--template", "microsoft", "--tenant", "contoso.com", "--client-id", "c"], None)
        .json();
    assert_eq!(ms["token_url"], "https://login.microsoftonline.com/contoso.com/oauth2/v2.0/token");
    let bad = tv.run(&["provider", "add", "x", "--template", "github", "--tenant", "t", "--client-id", "c"], None);
    assert_eq!(bad.error_kind(), "invalid-input");
    let neither = tv.run(&["provider", "add", "y", "--client-id", "c"], None);
    assert_eq!(neither.error_kind(), "invalid-input");
}

#[test]
fn a_lost_master_key_is_never_replaced_over_the_keyring_it_wraps() {
    let tv = Tokenvault::new(&[]);
    tv.run(&["provider", "add", "gh", "--template", "github", "--client-id", "Iv1.abc"], None).json();
    let response = r#"{"access_token":"at-kept","token_type":"bearer"}"#;
    tv.run(&["token", "put", "acme", "alice", "gh"], Some(response)).json();
    let master_key = tv.data_dir.path().join("master.key");
    let saved = std::fs::read(&master_key).unwrap();

    std::fs::remove_file(&master_key).unwrap();
    for read_only in [&["token", "ls", "acme", "alice"][..], &["provider", "ls"], &["keys", "ls"]] {
        let refused = tv.run(read_only, None);
        assert_eq!(refused.error_kind(), "config", "{read_only:?}: {}", refused.stderr);
        assert!(refused.stderr.contains("master.key is missing"), "{}", refused.stderr);
        assert!(!master_key.exists(), "{read_only:?} made a new master key over the keyring");
    }

    std::fs::write(&master_key, saved).unwrap();
    assert_eq!(tv.run(&["token", "get", "acme", "alice", "gh"], None).json()["access_token"], "at-kept");
}

#[test]
fn connect_by_device_code_as_the_client_and_through_a_link() {
    let server = OAuthServer::start(60);
    let mut tv = Tokenvault::new(&[&server.origin()]);
    tv.env.push(("IDP_SECRET".into(), server.basic_secret.clone()));
    let add = |name: &str, client: &str, secret: bool| {
        let mut args = vec!["provider", "add", name, "--issuer", &server.issuer, "--client-id", client];
        if secret {
            args.extend(["--client-secret-env", "IDP_SECRET"]);
        }
        args.extend(["--scope", "openid", "--scope", "offline_access", "--auth-param", "prompt=consent"]);
        tv.run(&args, None).json()
    };
    add("idp", "vault-basic", true);
    add("tv", "vault-public", false);

    // The device flow: the code is printed; the user enters it elsewhere.
    let mut connecting = tv.spawn(&["connect", "acme", "fred", "tv", "--device"]);
    connecting.line_where(|line| line.contains("enter the code"));
    let user_code = connecting.line_where(|line| !line.is_empty());
    server.enter_user_code(&user_code, false);
    let (connected, shown) = connecting.finish();
    let token = tv.run(&["token", "get", "acme", "fred", "tv"], None).json();
    for value in [&token["access_token"], &token["refresh_token"]] {
        assert!(!shown.contains(value.as_str().expect("both tokens")), "connect --device printed a token");
    }
    assert_eq!((&connected["key"]["user"], &connected["info"]["has_refresh_token"]), (&"fred".into(), &true.into()));

    // The client's own token.
    let client = tv.run(&["connect", "acme", "batch-jobs", "idp", "--client", "--name", "self"], None).json();
    assert_eq!(client["info"]["kind"], "client");
    let token = tv.run(&["token", "get", "acme", "batch-jobs", "idp", "--name", "self"], None).json();
    assert!(server.is_active("vault-basic", token["access_token"].as_str().unwrap()));

    // A link for a connection that does not exist yet, opened like `connect`.
    let found = tv.run(&["token", "get", "acme", "gina", "idp", "--link"], None).json();
    let code = found["link"]["code"].as_str().expect("a link, not a token").to_owned();
    let mut connecting = tv.spawn(&["open-link", &code]);
    let url = connecting.line_where(|line| line.starts_with("http"));
    ureq::get(&server.authorize(&url, false)).call().unwrap();
    let (connected, _) = connecting.finish();
    assert_eq!(connected["key"]["user"], "gina");
    assert!(
        tv.run(&["token", "get", "acme", "gina", "idp", "--link"], None).json()["token"]["access_token"].is_string()
    );
    assert_eq!(tv.run(&["open-link", &code], None).error_kind(), "invalid-input", "a link works once");
}

#[test]
fn inspect_reports_the_component_its_hash_and_what_the_host_grants() {
    use sha2::Digest;
    let tv = Tokenvault::new(&["https://idp.example"]);
    let report = tv.run(&["inspect", "--json"], None).json();
    assert_eq!(report["component"]["sha256"], hex::encode(sha2::Sha256::digest(tokenvault::COMPONENT_WASM)));
    assert_eq!(report["runs_here"], true);
    let imports = report["imports"].as_array().unwrap();
    let names: Vec<&str> = imports.iter().map(|i| i["name"].as_str().unwrap()).collect();
    let mut listed = names.clone();
    listed.sort();
    assert_eq!(listed, tokenvault::capabilities::DECLARED_IMPORTS, "sorted, as declared");
    let granted = |name: &str| {
        let import = imports.iter().find(|i| i["name"].as_str().unwrap().starts_with(name)).unwrap();
        (import["group"].as_str().unwrap().to_owned(), import["granted"].as_str().unwrap().to_owned())
    };
    let db = tv.data_dir.path().join("vault.db");
    assert_eq!(
        granted("tokenvault:vault/storage"),
        ("tokenvault".into(), format!("sealed records in sqlite ({})", db.display()))
    );
    assert_eq!(granted("wasi:http/outgoing-handler").1, "requests to https://idp.example:443 only");
    assert_eq!(granted("wasi:cli/environment").0, "wasi");
    assert_eq!(
        report["never_granted"],
        serde_json::json!(["environment variables", "arguments", "filesystem", "sockets", "stdin", "a terminal"])
    );
    assert_eq!(report["limits"]["memory_bytes"], 64 << 20);

    // Text for operators: the same facts.
    let text = tv.run(&["inspect"], None);
    assert_eq!(text.code, 0, "{}", text.stderr);
    assert!(text.stdout.contains(report["component"]["sha256"].as_str().unwrap()));
    assert!(text.stdout.contains("never granted: environment variables, arguments, filesystem, sockets, stdin"));

    // Any other file: what it is, and a clear error when it is no component.
    let other = tv.data_dir.path().join("other.wasm");
    std::fs::write(&other, b"\0asm but not really").unwrap();
    let run = tv.run(&["inspect", "--component", other.to_str().unwrap()], None);
    assert_eq!(run.error_kind(), "invalid-input");
    assert!(run.stderr.contains("other.wasm") && run.stderr.contains("cannot compile"), "{}", run.stderr);
    let run = tv.run(&["inspect", "--component", "/nonexistent.wasm"], None);
    assert_eq!(run.error_kind(), "invalid-input");
}
