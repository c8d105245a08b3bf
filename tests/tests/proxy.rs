//! The proxy end to end: `tokenvault serve` and the CLI calling a real provider API on
//! loopback that accepts only the OAuth server's active access tokens (introspection), so
//! each answer proves which token the request carried. The caller never holds that token:
//! the canary scan (when the OAuth server stops) looks for it in every header and body the
//! caller received, in the service's log and in the audit log.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{Value, json};
use tokenvault_tests::{OAuthServer, Served, Tokenvault, canary};

const CONNECTION: &str = "/v1/tenants/acme/users/alice/connections/idp/default";

/// A service whose provider `idp` has the test API as its API base URL, and alice's
/// connection to it; `toml` goes in tokenvault.toml first.
fn service(server: &OAuthServer, toml: &str) -> (Tokenvault, Served, String) {
    let cli = Tokenvault::new(&[&server.origin(), &server.api]);
    std::fs::write(cli.data_dir.path().join("tokenvault.toml"), toml).unwrap();
    let served = cli.serve();
    let operator = served.first_key.clone().unwrap();
    let mut provider = server.provider_body();
    provider["api_base_url"] = json!(server.api);
    assert_eq!(served.call("PUT", "/v1/providers/idp", Some(&operator), Some(&provider)).0, 200);
    let grant = server.grant("vault-basic");
    assert_eq!(served.call("PUT", CONNECTION, Some(&operator), Some(&grant)).0, 200);
    (cli, served, operator)
}

/// What the caller received: status, headers, body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("not JSON: {}", self.body))
    }
}

/// A call through the connection's proxy route; all of the answer goes to the canary scan.
fn proxied(served: &Served, key: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    call(served, key, method, &format!("{CONNECTION}/proxy{path}"), headers, body)
}

/// A request to `target` on the service, with `key` as the bearer credential.
fn call(served: &Served, key: &str, method: &str, target: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
    let mut request = ureq::http::Request::builder()
        .method(method)
        .uri(format!("{}{target}", served.url))
        .header("authorization", format!("Bearer {key}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut response = agent.run(request.body(body.to_owned()).unwrap()).unwrap();
    let headers: Vec<(String, String)> = response
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let body = response.body_mut().read_to_string().unwrap_or_default();
    canary::record(format!("{method} {target} headers"), &format!("{headers:?}"));
    if target.contains("/proxy") {
        canary::record(format!("{method} {target}"), &body);
    } else {
        // A token endpoint's answer holds the token where it belongs; the scan knows those fields.
        canary::record_answer(format!("{method} {target}"), &body);
    }
    Answer { status: response.status().as_u16(), headers, body }
}

/// The status of a request whose target is sent byte for byte (an HTTP client library
/// might normalise the dot segments these tests need to send).
fn raw_status(served: &Served, key: &str, target: &str) -> u16 {
    let address = served.url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).unwrap();
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    canary::record(format!("GET {target}"), &answer);
    answer.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status: {answer}"))
}

#[test]
fn a_proxied_call_carries_the_connections_token_and_nothing_of_the_callers() {
    let server = OAuthServer::start(600);
    let toml = "max_response_bytes = 65536\nresponse_timeout_ms = 1000\n";
    let (cli, served, operator) = service(&server, toml);

    // GET with a query: the API saw the connection's token (its subject and client), the
    // query as sent, and none of the caller's credentials or hop-by-hop headers.
    let answer = proxied(
        &served,
        &operator,
        "GET",
        "/echo/user?x=1&y=t%C3%BC",
        &[
            ("accept", "application/json"),
            ("x-custom", "kept"),
            ("cookie", "caller=secret"),
            ("proxy-authorization", "Basic xyz"),
            ("tokenvault-connection", "other"),
            ("connection", "x-caller-hop"),
            ("x-caller-hop", "dropped"),
        ],
        "",
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    let seen = answer.json();
    assert_eq!((seen["method"].as_str(), seen["path"].as_str()), (Some("GET"), Some("/echo/user")));
    assert_eq!(seen["query"], "?x=1&y=t%C3%BC");
    assert_eq!((seen["sub"].as_str(), seen["client_id"].as_str()), (Some("test-user"), Some("vault-basic")));
    let sent = seen["headers"].as_object().unwrap();
    assert_eq!(sent["x-custom"], "kept");
    assert_eq!(sent["accept"], "application/json");
    for gone in ["cookie", "proxy-authorization", "tokenvault-connection", "x-caller-hop"] {
        assert!(!sent.contains_key(gone), "{gone} reached the API: {sent:?}");
    }
    assert_eq!(sent["host"].as_str(), server.api.strip_prefix("http://"));
    assert_eq!(answer.header("x-api"), Some("yes"));
    assert_eq!(answer.header("x-content-type-options"), Some("nosniff"));
    let token = call(&served, &operator, "GET", &format!("{CONNECTION}/token"), &[], "");
    assert_eq!((token.header("cache-control"), token.header("pragma")), (Some("no-store"), Some("no-cache")));
    assert_eq!(token.header("x-content-type-options"), Some("nosniff"));
    for gone in ["set-cookie", "x-hop", "keep-alive"] {
        assert_eq!(answer.header(gone), None, "{gone} came back");
    }

    // Kept connections to the API carry call after call. The pool hands a connection back
    // on a task of its own once its answer has been read, so a call that follows at once
    // may open one more; a pool that kept nothing would open one per call.
    let connections = server.api_connections();
    for i in 0..10 {
        assert_eq!(proxied(&served, &operator, "GET", &format!("/echo/again/{i}"), &[], "").status, 200);
    }
    let opened = server.api_connections() - connections;
    assert!(opened <= 2, "ten calls opened {opened} connections");

    // POST with a body; the provider's errors come back as its answers.
    let answer = proxied(&served, &operator, "POST", "/echo/items", &[("content-type", "text/plain")], "a body");
    assert_eq!((answer.status, answer.json()["body"].as_str()), (200, Some("a body")));
    assert_eq!(answer.json()["method"], "POST");
    for status in [404, 422, 503] {
        let answer = proxied(&served, &operator, "GET", &format!("/status/{status}"), &[], "");
        assert_eq!((answer.status, answer.json()["path"].clone()), (status, json!(format!("/status/{status}"))));
    }
    let plain = proxied(&served, &operator, "GET", "/status/400?type=text", &[], "");
    assert_eq!((plain.status, plain.body.as_str()), (400, "plain 400"), "a provider's own answer is passed as it came");

    // The service's own refusals are JSON, whatever refused.
    for target in ["/v1/tenants/%FF/users/alice/connections", "/v1/tenants/acme/users?limit=many"] {
        let refused = call(&served, &operator, "GET", target, &[], "");
        assert_eq!((refused.status, refused.json()["error"].as_str()), (400, Some("invalid-input")), "{target}");
        assert!(!refused.body.contains("many"), "{}", refused.body);
    }
    let refused = call(&served, &operator, "PATCH", "/v1/providers", &[], "");
    assert_eq!((refused.status, refused.json()["error"].as_str()), (405, Some("method-not-allowed")));

    // The size cap and the timeout of tokenvault.toml.
    assert_eq!(proxied(&served, &operator, "GET", "/big?bytes=1000", &[], "").body.len(), 1000);
    let too_big = proxied(&served, &operator, "GET", "/big?bytes=100000", &[], "");
    assert_eq!((too_big.status, too_big.json()["error"].as_str()), (502, Some("provider-error")), "{}", too_big.body);
    let slow = proxied(&served, &operator, "GET", "/slow?ms=3000", &[], "");
    assert_eq!((slow.status, slow.json()["error"].as_str()), (504, Some("provider-error")), "{}", slow.body);

    // An API that sends the token back: the caller gets it redacted.
    let leak = proxied(&served, &operator, "GET", "/leak", &[], "");
    assert_eq!((leak.status, leak.body.as_str()), (200, "you sent Bearer [redacted]"));
    assert_eq!(leak.header("x-leak"), Some("Bearer [redacted]"));

    // Escapes from the base URL: refused before anything is sent.
    let before = server.api_seen().len();
    for escape in [
        "/../admin",
        "/echo/../../admin",
        "/%2e%2e/admin",
        "/echo%2f..%2f..%2fadmin",
        "/echo%5c..%5cadmin",
        "/echo\\..\\admin",
        "/%252e%252e/admin",
        "/@127.0.0.1:1/x",
        "//evil.invalid/x",
        "/http://evil.invalid/x",
        "/echo/%0d%0aHost:evil",
    ] {
        let status = raw_status(&served, &operator, &format!("{CONNECTION}/proxy{escape}"));
        assert_eq!(status, 400, "{escape} was not refused");
    }
    assert_eq!(server.api_seen().len(), before, "an escape reached the API");
    let unknown_method = proxied(&served, &operator, "TRACE", "/echo", &[], "");
    assert_eq!(unknown_method.status, 400);

    // A base URL the host does not allow: egress-denied, and the API is not reached (it
    // is the same server under another name).
    let mut elsewhere = server.provider_body();
    elsewhere["api_base_url"] = json!(server.api.replace("127.0.0.1", "localhost"));
    served.call("PUT", "/v1/providers/elsewhere", Some(&operator), Some(&elsewhere));
    let grant = server.grant("vault-basic");
    let other = "/v1/tenants/acme/users/alice/connections/elsewhere/default";
    assert_eq!(served.call("PUT", other, Some(&operator), Some(&grant)).0, 200);
    let (status, denied) = served.call("GET", &format!("{other}/proxy/echo"), Some(&operator), None);
    assert_eq!((status, denied["error"].as_str()), (502, Some("egress-denied")), "{denied}");
    assert_eq!(server.api_seen().len(), before);

    // Another tenant's key reaches nothing.
    let foreign = cli.run(&["apikey", "create", "globex"], None).json()["key"].as_str().unwrap().to_owned();
    assert_eq!(proxied(&served, &foreign, "GET", "/echo", &[], "").status, 403);
    assert_eq!(server.api_seen().len(), before);

    // The CLI: the status on stderr, the body on stdout.
    let run = cli.run(&["proxy", "acme", "alice", "idp", "get", "/echo/cli?z=1", "-H", "X-From: cli"], None);
    assert_eq!(run.stderr.trim(), "HTTP 200");
    let seen: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!((seen["path"].as_str(), seen["headers"]["x-from"].as_str()), (Some("/echo/cli"), Some("cli")));
    let run = cli.run(&["proxy", "acme", "alice", "idp", "GET", "/../x"], None);
    assert_eq!(run.error_kind(), "invalid-input");

    // Each call is audited under the connection; the log names no value.
    let events = cli.audit_events();
    let proxied: Vec<&Value> = events.iter().filter(|e| e["action"] == "proxy" && e["provider"] == "idp").collect();
    assert!(proxied.len() >= 12, "{} proxy events", proxied.len());
    let by = |prefix: &str| proxied.iter().filter(|e| e["actor"].as_str().unwrap_or("").starts_with(prefix)).count();
    assert!(by("api-key:") >= 12 && by("cli:") >= 1, "who asked: {proxied:?}");
    canary::record("serve log", &served.log());
}

#[test]
fn a_hundred_calls_with_an_expired_token_refresh_it_once_and_a_rejection_refreshes_once() {
    let server = OAuthServer::start(600);
    let (_cli, served, operator) = service(&server, "");
    // The vault is told the token lives a second (the provider keeps it for ten minutes,
    // so the renewed one stays fresh however long the hundred calls take).
    let mut grant = server.grant("vault-basic");
    grant["expires_in"] = json!(1);
    assert_eq!(served.call("PUT", CONNECTION, Some(&operator), Some(&grant)).0, 200);
    std::thread::sleep(Duration::from_millis(1_500));

    let (refreshed_before, _, _) = server.refresh_stats();
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..100)
            .map(|i| {
                let (served, operator) = (&served, &operator);
                scope.spawn(move || proxied(served, operator, "GET", &format!("/echo/{i}"), &[], "").status)
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let (refreshed, _, invalid_grants) = server.refresh_stats();
    assert_eq!(refreshed - refreshed_before, 1, "one refresh for a hundred callers");

    // The API rejects the token once: the vault renews it and retries, once.
    server.api_fault(json!({ "status": 401, "count": 1 }));
    let seen = server.api_seen().len();
    assert_eq!(proxied(&served, &operator, "GET", "/echo/retried", &[], "").status, 200);
    assert_eq!((server.refresh_stats().0 - refreshed, server.api_seen().len() - seen), (1, 2));

    // Rejected twice: the second answer comes back as it is.
    server.api_fault(json!({ "status": 401, "count": 2 }));
    let answer = proxied(&served, &operator, "GET", "/echo/rejected", &[], "");
    assert_eq!((answer.status, answer.json()["error"].as_str()), (401, Some("fault")));
    assert_eq!(server.refresh_stats().0 - refreshed, 2);

    // The refresh after a rejection finds the grant revoked: the connection must be
    // connected again, as with `get`.
    server.fault(json!({ "status": 400, "content_type": "application/json", "body": r#"{"error":"invalid_grant"}"# }));
    server.api_fault(json!({ "status": 401, "count": 1 }));
    let answer = proxied(&served, &operator, "GET", "/echo/revoked", &[], "");
    assert_eq!((answer.status, answer.json()["error"].as_str()), (409, Some("reconnect-required")), "{}", answer.body);
    let (_, listed) = served.call("GET", "/v1/tenants/acme/users/alice/connections", Some(&operator), None);
    assert_eq!(listed[0]["status"], "reconnect-required", "{listed}");
    assert_eq!(invalid_grants, 0);
    canary::record("serve log", &served.log());
}

#[test]
fn an_access_token_reaches_only_its_connections_methods_and_paths_until_revoked() {
    let server = OAuthServer::start(600);
    let (cli, served, _) = service(&server, "");
    let tenant = cli.run(&["apikey", "create", "acme"], None).json()["key"].as_str().unwrap().to_owned();
    let work = "/v1/tenants/acme/users/alice/connections/idp/work";
    assert_eq!(served.call("PUT", work, Some(&tenant), Some(&server.grant("vault-basic"))).0, 200);
    let tokens = "/v1/tenants/acme/users/alice/access-tokens";
    let ask = json!({
        "name": "ci",
        "connections": [{ "provider": "idp" }],
        "methods": ["get"],
        "paths": ["/echo/*"],
        "expires_in": 600,
    });
    let (status, made) = served.call("POST", tokens, Some(&tenant), Some(&ask));
    assert_eq!(status, 201, "{made}");
    let token = made["token"].as_str().unwrap().to_owned();
    let id = made["id"].as_str().unwrap().to_owned();
    assert!(token.starts_with("tvp_"));
    let (status, taken) = served.call("POST", tokens, Some(&tenant), Some(&ask));
    assert_eq!((status, taken["error"].as_str()), (409, Some("conflict")));
    let foreign = cli.run(&["apikey", "create", "globex"], None).json()["key"].as_str().unwrap().to_owned();
    assert_eq!(
        served
            .call("POST", tokens, Some(&foreign), Some(&json!({ "name": "x", "connections": [{ "provider": "idp" }] })))
            .0,
        403
    );
    let too_long = json!({ "name": "long", "connections": [{ "provider": "idp" }], "expires_in": 100_000_000 });
    assert_eq!(served.call("POST", tokens, Some(&tenant), Some(&too_long)).0, 400);

    // What it reaches: GET under /echo/ of alice's default connection to idp.
    let answer = call(&served, &token, "GET", "/v1/proxy/idp/echo/a?q=1", &[], "");
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!((answer.json()["path"].as_str(), answer.json()["query"].as_str()), (Some("/echo/a"), Some("?q=1")));
    assert_eq!(answer.json()["sub"], "test-user");
    let seen = server.api_seen().len();
    for (method, target, headers) in [
        ("POST", "/v1/proxy/idp/echo/a", vec![]),
        ("GET", "/v1/proxy/idp/status/200", vec![]),
        ("GET", "/v1/proxy/idp/echo", vec![]),
        ("GET", "/v1/proxy/idp/echo/a", vec![("tokenvault-connection", "work")]),
        ("GET", "/v1/proxy/elsewhere/echo/a", vec![]),
    ] {
        let answer = call(&served, &token, method, target, &headers, "");
        assert_eq!(
            (answer.status, answer.json()["error"].as_str()),
            (403, Some("forbidden")),
            "{method} {target} {headers:?}"
        );
    }
    // Climbing out of /echo/ is refused by the component before anything is sent.
    assert_eq!(raw_status(&served, &token, "/v1/proxy/idp/echo/../status/200"), 400);
    assert_eq!(server.api_seen().len(), seen, "a refused call reached the API");
    // Nothing else of /v1 takes it; and an API key is not an access token.
    assert_eq!(call(&served, &token, "GET", "/v1/tenants/acme/users/alice/connections", &[], "").status, 401);
    assert_eq!(call(&served, &token, "GET", &format!("{CONNECTION}/token"), &[], "").status, 401);
    assert_eq!(call(&served, &tenant, "GET", "/v1/proxy/idp/echo/a", &[], "").status, 401);

    // Listed without the token; rotated, the old one is refused; revoked, the new one too.
    let (_, listed) = served.call("GET", tokens, Some(&tenant), None);
    assert_eq!((listed[0]["id"].as_str(), listed[0]["methods"].clone()), (Some(id.as_str()), json!(["GET"])));
    assert!(!listed.to_string().contains(&token[4..]));
    let (status, rotated) = served.call("POST", &format!("{tokens}/{id}/rotate"), Some(&tenant), None);
    assert_eq!(status, 200, "{rotated}");
    let rotated = rotated["token"].as_str().unwrap().to_owned();
    assert_eq!(call(&served, &token, "GET", "/v1/proxy/idp/echo/a", &[], "").status, 401);
    assert_eq!(call(&served, &rotated, "GET", "/v1/proxy/idp/echo/a", &[], "").status, 200);
    assert_eq!(served.call("DELETE", &format!("{tokens}/{id}"), Some(&foreign), None).0, 403);
    assert_eq!(served.call("DELETE", &format!("{tokens}/{id}"), Some(&tenant), None).0, 200);
    assert_eq!(call(&served, &rotated, "GET", "/v1/proxy/idp/echo/a", &[], "").status, 401);
    assert_eq!(served.call("DELETE", &format!("{tokens}/{id}"), Some(&tenant), None).0, 404);

    // An umbrella token over both connections, any method or path, expiring in a second.
    let both = json!({
        "name": "ci",
        "connections": [{ "provider": "idp" }, { "provider": "idp", "name": "work" }],
        "expires_in": 1,
    });
    let (status, made) = served.call("POST", tokens, Some(&tenant), Some(&both));
    assert_eq!(status, 201, "the name is free again once revoked: {made}");
    let umbrella = made["token"].as_str().unwrap().to_owned();
    let answer =
        call(&served, &umbrella, "POST", "/v1/proxy/idp/status/201", &[("tokenvault-connection", "work")], "x");
    assert_eq!(answer.status, 201);
    std::thread::sleep(Duration::from_millis(2_100));
    assert_eq!(call(&served, &umbrella, "GET", "/v1/proxy/idp/echo/a", &[], "").status, 401, "expired");

    // The store holds digests only.
    let database = std::fs::read(cli.data_dir.path().join("vault.db")).unwrap();
    let wal = std::fs::read(cli.data_dir.path().join("vault.db-wal")).unwrap_or_default();
    for secret in [&token, &rotated, &umbrella] {
        let secret = &secret.as_bytes()["tvp_".len() + 17..]; // after tvp_<id>_
        for file in [&database, &wal] {
            assert!(!file.windows(secret.len()).any(|w| w == secret), "an access token is stored in clear");
        }
    }
    for secret in [&token, &rotated, &umbrella] {
        assert!(!served.log().contains(secret.as_str()), "an access token in the log");
    }
    canary::record("serve log", &served.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_behind_a_private_ca_is_reached_over_kept_tls_connections() {
    use tokenvault::{ConnectionKey, Options, ProviderConfig, ProxyRequest, TokenGrant, Vault};
    use tokenvault_tests::tls::{TestCa, TlsServer};
    let ca = TestCa::new();
    // An API that sends back the credentials it got (so the answer shows one came).
    let app = axum::Router::new().route(
        "/api/{*rest}",
        axum::routing::get(|headers: axum::http::HeaderMap| async move {
            format!("seen {}", headers.get("authorization").map_or("nothing", |v| v.to_str().unwrap()))
        }),
    );
    let api = TlsServer::start(app, &ca);
    let dir = tempfile::tempdir().unwrap();
    let mut options = Options::from_data_dir(dir.path()).unwrap();
    options.allow_outbound(std::slice::from_ref(&api.origin)).unwrap();
    let untrusting = options.clone();
    options.egress.ca_files.push(ca.ca_file.clone());
    let vault = Vault::open(&options).await.unwrap();
    let provider = ProviderConfig {
        name: "internal".into(),
        token_url: Some("https://127.0.0.1:9/token".into()),
        client_id: "c".into(),
        api_base_url: Some(format!("{}/api", api.origin)),
        ..ProviderConfig::default()
    };
    vault.put_provider(&provider).await.unwrap();
    let key = ConnectionKey::new("acme", "alice", "internal", "default");
    let grant = TokenGrant {
        access_token: tokenvault_tests::random_value("internal-at-"),
        token_type: "Bearer".into(),
        expires_in: Some(3600),
        refresh_token: None,
        scope: None,
    };
    vault.store(&key, &grant).await.unwrap();
    let request = ProxyRequest { method: "GET".into(), path: "/user".into(), ..ProxyRequest::default() };
    for _ in 0..10 {
        let answer = vault.proxy(&key, &request).await.unwrap();
        assert_eq!((answer.status, answer.body.as_slice()), (200, b"seen Bearer [redacted]".as_slice()));
    }
    // As above: a call right behind another may find its connection not yet handed back.
    let handshakes = api.handshakes();
    assert!(handshakes <= 3, "ten calls made {handshakes} TLS handshakes");

    // A host that does not trust the CA refuses the server's certificate.
    let refused = Vault::open(&untrusting).await.unwrap().proxy(&key, &request).await.unwrap_err();
    assert_eq!(refused.kind(), "provider-error", "{refused}");
    assert_eq!(api.handshakes(), handshakes);
}
