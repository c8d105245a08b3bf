//! `tokenvault serve` as a backend meets it: the real binary on loopback, a real OAuth
//! server, API keys made with the CLI, every endpoint, its auth failures, and a scan of
//! every response and log line for the values it must never show.

use serde_json::{Value, json};
use tokenvault_tests::{OAuthServer, Served, Tokenvault};

const CONN: &str = "/v1/tenants/acme/users/alice/connections";

/// A key the CLI makes while `serve` runs on the same data directory.
struct Scan {
    /// Values that may appear only in the bodies of the token endpoints.
    secrets: Vec<String>,
    /// Every response body that is not a token endpoint's.
    bodies: Vec<String>,
}

impl Scan {
    fn checked(
        &mut self,
        served: &Served,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let (status, answer) = served.call(method, path, key, body);
        self.bodies.push(answer.to_string());
        (status, answer)
    }

    fn assert_clean(&self, served: &Served) {
        let printed = served.log();
        for secret in &self.secrets {
            for body in &self.bodies {
                assert!(!body.contains(secret.as_str()), "a response shows a secret: {body}");
            }
            assert!(!printed.contains(secret.as_str()), "the output shows a secret:\n{printed}");
        }
    }
}

#[test]
fn every_endpoint_answers_its_callers_and_only_them() {
    let server = OAuthServer::start(600);
    let cli = Tokenvault::new(&[&server.origin()]);
    let served = cli.serve();
    let operator = served.first_key.clone().expect("a fresh service prints its first key");
    let mut scan = Scan { secrets: vec![server.basic_secret.clone()], bodies: Vec::new() };

    // Unauthenticated: health, readiness and the description only.
    assert_eq!(served.call("GET", "/healthz", None, None).0, 200);
    assert_eq!(served.call("GET", "/readyz", None, None), (200, json!({ "status": "ready" })));
    let (status, metrics) = served.call_text("GET", "/metrics", None, None);
    assert_eq!(status, 200, "{metrics}");
    assert!(metrics.lines().any(|l| l == "tokenvault_audit_events_lost_total 0"), "{metrics}");
    let (status, openapi) = served.call("GET", "/openapi.json", None, None);
    assert_eq!(status, 200);
    for path in [
        "/v1/providers",
        "/v1/providers/{name}",
        "/v1/tenants/{tenant}/users/{user}/connections",
        "/v1/tenants/{tenant}/users/{user}/connections/{provider}/{name}",
        "/v1/tenants/{tenant}/users/{user}/connections/{provider}/{name}/token",
        "/v1/tenants/{tenant}/users/{user}/connections/{provider}/{name}/refresh",
        "/v1/tenants/{tenant}/users/{user}/connections/{provider}/{name}/link",
        "/v1/tenants/{tenant}/users",
        "/v1/tenants/{tenant}/users/{user}/console-link",
        "/v1/audit",
        "/v1/tenants/{tenant}/webhook",
        "/v1/tenants/{tenant}/webhook/test",
    ] {
        assert!(openapi["paths"][path].is_object(), "{path} is not described");
    }
    assert_eq!(openapi["components"]["securitySchemes"]["api_key"]["scheme"], "bearer");

    // No key, a malformed one, an unknown one: 401 before anything else.
    for key in [None, Some("nonsense"), Some("tvk_000000000000_AAAA")] {
        let (status, answer) = scan.checked(&served, "GET", "/v1/providers", key, None);
        assert_eq!((status, answer["error"].as_str()), (401, Some("unauthorized")), "{key:?}: {answer}");
    }

    // The operator registers the provider; the secret goes in and never comes out.
    let (status, provider) =
        scan.checked(&served, "PUT", "/v1/providers/idp", Some(&operator), Some(&server.provider_body()));
    assert_eq!(status, 200, "{provider}");
    assert_eq!((provider["name"].as_str(), provider["has_client_secret"].as_bool()), (Some("idp"), Some(true)));
    let (status, listed) = scan.checked(&served, "GET", "/v1/providers", Some(&operator), None);
    assert_eq!((status, listed.as_array().map(Vec::len)), (200, Some(1)));

    // A tenant key: its tenant's connections, the registry read-only.
    let (acme, acme_id) = cli.api_key("acme");
    let (status, _) = scan.checked(&served, "GET", "/v1/providers/idp", Some(&acme), None);
    assert_eq!(status, 200);
    let (status, answer) =
        scan.checked(&served, "PUT", "/v1/providers/idp", Some(&acme), Some(&server.provider_body()));
    assert_eq!((status, answer["error"].as_str()), (403, Some("forbidden")));
    let (status, answer) = scan.checked(&served, "DELETE", "/v1/providers/idp", Some(&acme), None);
    assert_eq!(status, 403, "{answer}");

    // put, get, refresh, list.
    let grant = server.grant("vault-basic");
    let (access, refresh) = (grant["access_token"].as_str().unwrap(), grant["refresh_token"].as_str().unwrap());
    scan.secrets.extend([access.to_owned(), refresh.to_owned()]);
    let (status, info) = scan.checked(&served, "PUT", &format!("{CONN}/idp/default"), Some(&acme), Some(&grant));
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["has_refresh_token"], true);
    let (status, token) = served.call("GET", &format!("{CONN}/idp/default/token"), Some(&acme), None);
    assert_eq!((status, token["access_token"].as_str()), (200, Some(access)));
    let (status, renewed) = served.call("POST", &format!("{CONN}/idp/default/refresh"), Some(&acme), None);
    assert_eq!(status, 200, "{renewed}");
    assert_ne!(renewed["access_token"].as_str(), Some(access));
    assert_eq!(server.refresh_stats().0, 1, "one refresh reached the provider");
    let renewed_access = renewed["access_token"].as_str().unwrap().to_owned();
    scan.secrets.extend([renewed_access.clone(), renewed["refresh_token"].as_str().unwrap().to_owned()]);
    let (status, connections) = scan.checked(&served, "GET", CONN, Some(&acme), None);
    assert_eq!(status, 200);
    assert_eq!(connections.as_array().unwrap().len(), 1);
    assert_eq!(connections[0]["provider"], "idp");
    let (status, users) = scan.checked(&served, "GET", "/v1/tenants/acme/users?limit=10", Some(&acme), None);
    assert_eq!(status, 200, "{users}");
    assert_eq!(
        users,
        json!({ "users": [{ "user": "alice", "connections": [{ "provider": "idp", "name": "default" }] }], "next": null })
    );
    let (status, answer) = scan.checked(&served, "GET", "/v1/tenants/acme/users?limit=0", Some(&acme), None);
    assert_eq!((status, answer["error"].as_str()), (400, Some("invalid-input")), "{answer}");

    // Another tenant's connections are out of reach, whatever the method.
    for (method, path) in [
        ("GET", "/v1/tenants/globex/users".to_owned()),
        ("POST", "/v1/tenants/globex/users/alice/console-link".to_owned()),
        ("GET", "/v1/tenants/globex/users/alice/connections".to_owned()),
        ("DELETE", "/v1/tenants/globex/users/alice/connections".to_owned()),
        ("GET", "/v1/tenants/globex/users/alice/connections/idp/default/token".to_owned()),
        ("POST", "/v1/tenants/globex/users/alice/connections/idp/default/refresh".to_owned()),
        ("DELETE", "/v1/tenants/globex/users/alice/connections/idp/default".to_owned()),
    ] {
        let (status, answer) = scan.checked(&served, method, &path, Some(&acme), None);
        assert_eq!((status, answer["error"].as_str()), (403, Some("forbidden")), "{method} {path}");
    }
    let (status, _) =
        scan.checked(&served, "PUT", "/v1/tenants/globex/users/x/connections/idp/default", Some(&acme), Some(&grant));
    assert_eq!(status, 403);

    // Errors in the API's shape, with fitting statuses.
    let (status, answer) = scan.checked(&served, "GET", &format!("{CONN}/idp/other/token"), Some(&acme), None);
    assert_eq!((status, answer["error"].as_str()), (404, Some("not-found")), "{answer}");
    let (status, text) =
        served.call_text("PUT", &format!("{CONN}/idp/bad"), Some(&acme), Some(r#"{"access_token": 12"#));
    assert_eq!(status, 400, "{text}");
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["error"], "invalid-input");
    let (status, answer) = scan.checked(&served, "GET", "/v1/nowhere", Some(&acme), None);
    assert_eq!((status, answer["error"].as_str()), (404, Some("not-found")));

    // A lifetime past ten years is a provider's "never expires", not a date past 2^63.
    let absurd = json!({ "access_token": "at-absurd", "expires_in": 9223372036854775807u64 });
    let zed = "/v1/tenants/acme/users/zed/connections";
    let (status, info) = scan.checked(&served, "PUT", &format!("{zed}/idp/absurd"), Some(&acme), Some(&absurd));
    assert_eq!((status, &info["expires_at"]), (200, &Value::Null), "{info}");
    let (status, token) = served.call("GET", &format!("{zed}/idp/absurd/token"), Some(&acme), None);
    assert_eq!((status, &token["expires_at"]), (200, &Value::Null), "{token}");
    let (status, answer) = scan.checked(
        &served,
        "PUT",
        "/v1/providers/other",
        Some(&operator),
        Some(&json!({ "name": "idp", "client_id": "x" })),
    );
    assert_eq!((status, answer["error"].as_str()), (400, Some("invalid-input")), "{answer}");

    // remove revokes upstream; revoke-all removes the rest.
    let (status, receipt) = scan.checked(&served, "DELETE", &format!("{CONN}/idp/default"), Some(&acme), None);
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(receipt["upstream"]["outcome"], "revoked");
    assert!(!server.is_active("vault-basic", &renewed_access), "the provider still honours the removed token");
    for name in ["work", "home"] {
        let grant = server.grant("vault-basic");
        scan.secrets.extend([grant["access_token"].as_str().unwrap().to_owned()]);
        assert_eq!(served.call("PUT", &format!("{CONN}/idp/{name}"), Some(&acme), Some(&grant)).0, 200);
    }
    let (status, receipts) = scan.checked(&served, "DELETE", CONN, Some(&acme), None);
    assert_eq!(status, 200, "{receipts}");
    assert_eq!(receipts.as_array().unwrap().len(), 2);
    assert_eq!(scan.checked(&served, "GET", CONN, Some(&acme), None).1, json!([]));

    // A revoked key stops working at once; the operator removes the provider.
    cli.run(&["apikey", "revoke", &acme_id], None).json();
    let (status, answer) = scan.checked(&served, "GET", CONN, Some(&acme), None);
    assert_eq!((status, answer["error"].as_str()), (401, Some("unauthorized")));
    let (status, text) = served.call_text("DELETE", "/v1/providers/idp", Some(&operator), None);
    assert_eq!((status, text.as_str()), (204, ""));

    // Keys are listed without themselves; the logs name routes, not paths.
    let listed = cli.run(&["apikey", "ls"], None);
    scan.secrets.extend([operator.clone(), acme.clone()]);
    scan.bodies.push(listed.stdout.clone());
    assert_eq!(listed.json().as_array().unwrap().len(), 1, "the operator's key remains");
    let printed = served.log();
    assert!(printed.contains("route=/v1/tenants/{tenant}/users/{user}/connections"), "{printed}");
    assert!(!printed.contains("/users/alice"), "a log line holds a concrete path:\n{printed}");
    // The first key is printed once, at start: remove that line before scanning the rest.
    let printed_after_start = printed.replace(&format!("First API key (operator): {operator}"), "");
    assert!(!printed_after_start.contains(&operator));
    scan.secrets.retain(|s| *s != operator);
    scan.assert_clean(&served);
}

#[test]
fn a_restarted_service_keeps_its_keys_and_prints_none() {
    let cli = Tokenvault::new(&[]);
    let mut first = cli.serve();
    let key = first.first_key.clone().unwrap();
    assert!(first.stop(), "serve exits cleanly on SIGTERM");
    let second = cli.serve();
    assert_eq!(second.first_key, None);
    assert_eq!(second.call("GET", "/v1/providers", Some(&key), None), (200, json!([])));
}

/// A raw HTTP/1.1 connection to the service, to control when each byte is sent.
struct RawConnection {
    socket: std::net::TcpStream,
    reader: std::io::BufReader<std::net::TcpStream>,
}

impl RawConnection {
    fn open(served: &Served) -> Self {
        let socket = std::net::TcpStream::connect(served.url.strip_prefix("http://").unwrap()).unwrap();
        socket.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        RawConnection { reader: std::io::BufReader::new(socket.try_clone().unwrap()), socket }
    }

    fn send(&mut self, bytes: &str) {
        std::io::Write::write_all(&mut self.socket, bytes.as_bytes()).unwrap();
    }

    /// The next response's status; its body is read (by Content-Length) and dropped.
    fn status(&mut self) -> u16 {
        self.answer().0
    }

    /// The next response's status and body (by Content-Length).
    fn answer(&mut self) -> (u16, String) {
        use std::io::{BufRead, Read};
        let mut status = String::new();
        assert_ne!(self.reader.read_line(&mut status).unwrap(), 0, "the service closed the connection");
        let mut length = 0;
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).unwrap();
        (status.split_whitespace().nth(1).unwrap().parse().unwrap(), String::from_utf8_lossy(&body).into_owned())
    }
}

/// A refusal sent before the request's body arrived must not cost the client its kept-alive
/// connection: pooled clients send their next request on it (ureq sends a body-less POST
/// as an empty chunked body, whose last chunk may come a moment after the headers).
#[test]
fn a_refusal_before_the_body_arrives_keeps_the_connection() {
    let cli = Tokenvault::new(&[]);
    let served = cli.serve();
    let mut connection = RawConnection::open(&served);
    connection.send(
        "POST /v1/tenants/acme/users/alice/console-link HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n",
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    connection.send("0\r\n\r\n");
    assert_eq!(connection.status(), 401, "no key");
    connection.send("GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n");
    assert_eq!(connection.status(), 200, "the same connection serves the next request");

    // Bodies have a limit; a longer one is refused as soon as its length is declared.
    let mut connection = RawConnection::open(&served);
    connection.send(&format!("PUT /v1/providers/big HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n", 2 << 20));
    assert_eq!(connection.status(), 413);

    // So have targets and headers: refused in JSON like every error, the request not quoted.
    let long_target = format!("/v1/providers/{}", "x".repeat(9 * 1024));
    let mut connection = RawConnection::open(&served);
    connection.send(&format!("GET {long_target} HTTP/1.1\r\nhost: x\r\n\r\n"));
    let (status, body) = connection.answer();
    assert_eq!(status, 414, "{body}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"], "uri-too-long");
    assert!(!body.contains("xxxx"));
    let mut connection = RawConnection::open(&served);
    connection.send(&format!("GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n", "y".repeat(20 * 1024)));
    let (status, body) = connection.answer();
    assert_eq!(status, 431, "{body}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"], "headers-too-large");
    assert!(!body.contains("yyyy"));
}

#[test]
fn shutdown_finishes_the_calls_in_flight() {
    let server = OAuthServer::start(600);
    let cli = Tokenvault::new(&[&server.origin()]);
    let mut served = cli.serve();
    let operator = served.first_key.clone().unwrap();
    assert_eq!(served.call("PUT", "/v1/providers/idp", Some(&operator), Some(&server.provider_body())).0, 200);
    let grant = server.grant("vault-basic");
    assert_eq!(served.call("PUT", &format!("{CONN}/idp/default"), Some(&operator), Some(&grant)).0, 200);

    // The provider takes 1.5 s to answer the refresh; SIGTERM arrives meanwhile.
    server.fault(json!({ "delay_ms": 1500 }));
    let (url, key) = (served.url.clone(), operator.clone());
    let in_flight = std::thread::spawn(move || {
        let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
        let mut response = agent
            .post(format!("{url}{CONN}/idp/default/refresh"))
            .header("authorization", format!("Bearer {key}"))
            .send_empty()
            .unwrap();
        (response.status().as_u16(), response.body_mut().read_json::<Value>().unwrap())
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(served.stop(), "serve exits cleanly");
    let (status, token) = in_flight.join().unwrap();
    assert_eq!(status, 200, "{token}");
    assert_ne!(token["access_token"], grant["access_token"]);
    assert_eq!(server.refresh_stats().0, 1);
}

/// A service with the test OAuth server registered as provider `idp`, and a key of tenant
/// acme. Bind every field (`cli` keeps the data directory) in this order, so the service
/// stops before its data directory and the OAuth server go.
struct ConnectSetup {
    server: OAuthServer,
    cli: Tokenvault,
    served: Served,
    acme: String,
}

fn connect_setup() -> ConnectSetup {
    let server = OAuthServer::start(600);
    let cli = Tokenvault::new(&[&server.origin()]);
    let served = cli.serve();
    let operator = served.first_key.clone().unwrap();
    assert_eq!(served.call("PUT", "/v1/providers/idp", Some(&operator), Some(&server.provider_body())).0, 200);
    let (acme, _) = cli.api_key("acme");
    ConnectSetup { server, cli, served, acme }
}

#[test]
fn a_user_connects_in_the_browser_through_a_link_the_backend_asked_for() {
    let ConnectSetup { server, cli: _cli, served, acme } = connect_setup();

    // The backend asks for a link for alice, who has no connection yet.
    let (status, link) = served.call("POST", &format!("{CONN}/idp/default/link"), Some(&acme), None);
    assert_eq!(status, 200, "{link}");
    let link_url = link["url"].as_str().unwrap().to_owned();
    assert!(link_url.starts_with(&format!("{}/connect/idp?link=", served.url)), "{link_url}");
    let (status, _) =
        served.call("POST", "/v1/tenants/globex/users/alice/connections/idp/default/link", Some(&acme), None);
    assert_eq!(status, 403, "a key asks for links of its own tenant only");

    // Alice's browser opens it, no key: off to the provider, which sends her back.
    let (status, to_provider, _) = served.browse(&link_url);
    assert_eq!(status, 303);
    let to_provider = to_provider.expect("a Location");
    assert!(to_provider.starts_with(&format!("{}/auth?", server.issuer)), "{to_provider}");
    let callback = format!("{}/oauth/callback", served.url);
    let redirect_uri =
        url::Url::parse(&to_provider).unwrap().query_pairs().find(|(k, _)| k == "redirect_uri").unwrap().1.into_owned();
    assert_eq!(redirect_uri, callback);
    let back = server.authorize(&to_provider, false);
    assert!(back.starts_with(&format!("{callback}?")), "{back}");
    let (status, _, page) = served.browse(&back);
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Connected") && page.contains("<strong>idp</strong>"), "{page}");

    // The backend now finds the connection, with a refresh token, and a fresh token.
    let (_, connections) = served.call("GET", CONN, Some(&acme), None);
    assert_eq!(connections[0]["has_refresh_token"], true, "{connections}");
    let (status, token) = served.call("GET", &format!("{CONN}/idp/default/token"), Some(&acme), None);
    assert_eq!(status, 200);
    let access = token["access_token"].as_str().unwrap();
    assert!(server.is_active("vault-basic", access));
    assert!(!page.contains(access), "the result page shows the token");

    // The link is spent, and the callback works once.
    for url in [&link_url, &back] {
        let (status, location, page) = served.browse(url);
        assert!((400..500).contains(&status), "{url}: {status} {page}");
        assert_eq!(location, None);
        assert!(page.contains("Not connected"), "{page}");
    }

    // A user who refuses at the provider sees why, and nothing is stored.
    let (_, link) = served.call("POST", &format!("{CONN}/idp/work/link"), Some(&acme), None);
    let (_, to_provider, _) = served.browse(link["url"].as_str().unwrap());
    let back = server.authorize(&to_provider.unwrap(), true);
    let (status, _, page) = served.browse(&back);
    assert_ne!(status, 200, "{page}");
    assert!(page.contains("Not connected") && page.contains("access_denied"), "{page}");
    assert_eq!(served.call("GET", CONN, Some(&acme), None).1.as_array().unwrap().len(), 1);

    // A made-up or missing link code is refused, as a page.
    for url in [format!("{}/connect/idp?link=made-up", served.url), format!("{}/connect/idp", served.url)] {
        let (status, _, page) = served.browse(&url);
        assert!((400..500).contains(&status), "{url}: {status}");
        assert!(page.contains("Not connected"));
    }
    let printed = served.log();
    assert!(!printed.contains(access) && !printed.contains("link="), "the log holds a value or a link:\n{printed}");
}

#[test]
fn a_connect_flow_completes_only_in_the_browser_that_opened_its_link() {
    let ConnectSetup { server, cli: _cli, served, acme } = connect_setup();
    let mallory = "/v1/tenants/acme/users/mallory/connections";
    let link_for = |name: &str| {
        let (status, link) = served.call("POST", &format!("{mallory}/idp/{name}/link"), Some(&acme), None);
        assert_eq!(status, 200, "{link}");
        link["url"].as_str().unwrap().to_owned()
    };

    // Mallory opens a link for her own connection and stops at the provider's page.
    let attacker = served.browser();
    let opened = attacker.get(&link_for("default"));
    assert_eq!(opened.status, 303);
    let cookie = &opened.headers["set-cookie"];
    assert!(cookie.starts_with("__Host-tv_connect="), "{cookie}");
    for attribute in ["Secure", "HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(cookie.contains(attribute), "{attribute} missing: {cookie}");
    }
    // She sends the provider's URL to a victim, who signs in and consents in their browser.
    let back = server.authorize(opened.location.as_deref().unwrap(), false);
    let victim = served.browser();
    let refused = victim.get(&back);
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(refused.body.contains("Not connected") && refused.body.contains("another browser"), "{}", refused.body);
    assert_eq!(served.call("GET", mallory, Some(&acme), None).1, json!([]), "nothing stored for mallory");
    // The flow is spent: not even the browser that began it can complete it now.
    let spent = attacker.get(&back);
    assert_eq!(spent.status, 400);
    assert!(spent.body.contains("already used"), "{}", spent.body);

    // In one browser, two links opened one after the other both complete: it keeps its secret.
    let user = served.browser();
    let first = user.get(&link_for("first"));
    let second = user.get(&link_for("second"));
    assert!(!second.headers["set-cookie"].is_empty());
    assert_eq!(first.headers["set-cookie"].split(';').next(), second.headers["set-cookie"].split(';').next());
    for opened in [first, second] {
        let page = user.get(&server.authorize(opened.location.as_deref().unwrap(), false));
        assert_eq!(page.status, 200, "{}", page.body);
        assert!(page.body.contains("Connected"), "{}", page.body);
    }
    let (_, connections) = served.call("GET", mallory, Some(&acme), None);
    let names: Vec<_> = connections.as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["first", "second"]);
}

#[test]
fn two_services_on_one_database_renew_tokens_before_they_expire_without_burning_one() {
    let server = OAuthServer::start(8); // access tokens live 8 s
    let cli = Tokenvault::new(&[&server.origin()]);
    let schedule = ["--refresh-every", "1", "--refresh-within", "5"];
    let first = cli.serve_with(&schedule);
    let operator = first.first_key.clone().unwrap();
    assert_eq!(first.call("PUT", "/v1/providers/idp", Some(&operator), Some(&server.provider_body())).0, 200);
    let mut stored = Vec::new();
    for name in ["a", "b", "c", "d"] {
        let grant = server.grant("vault-basic");
        assert_eq!(first.call("PUT", &format!("{CONN}/idp/{name}"), Some(&operator), Some(&grant)).0, 200);
        stored.push((name, grant["access_token"].as_str().unwrap().to_owned()));
    }
    let second = cli.serve_with(&schedule);
    assert_eq!(second.first_key, None, "the second service shares the first one's keys");

    // Due 3 s after each renewal, both services passing every second: by 9 s every token
    // has been renewed about twice, each time by one of them.
    std::thread::sleep(std::time::Duration::from_secs(9));
    let (ok, failed, invalid_grant) = server.refresh_stats();
    assert_eq!((failed, invalid_grant), (0, 0), "a refresh token was used twice");
    assert!(ok >= 4, "only {ok} refreshes");
    let expected_at_most = 4 * 3; // one per token every 3 s at most
    assert!(ok <= expected_at_most, "{ok} refreshes: duplicates");
    let (_, connections) = second.call("GET", CONN, Some(&operator), None);
    for connection in connections.as_array().unwrap() {
        let expires_at = connection["expires_at"].as_u64().unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        assert!(expires_at > now, "{connection} expired: the scheduler fell behind");
    }
    for (name, first_access) in stored {
        let (status, token) = second.call("GET", &format!("{CONN}/idp/{name}/token"), Some(&operator), None);
        assert_eq!(status, 200);
        assert_ne!(token["access_token"].as_str().unwrap(), first_access, "{name} was never renewed");
    }
    let logs = format!("{}{}", first.log(), second.log());
    assert!(logs.contains("background refresh") && logs.contains("refreshed="), "{logs}");
}

#[test]
fn a_jwt_from_the_operators_identity_provider_acts_for_the_tenant_it_names() {
    let server = OAuthServer::start(600);
    let cli = Tokenvault::new(&[&server.origin()]);
    let jwks = format!("{}/__test/jwks", server.issuer);
    let served = cli.serve_with(&["--jwks-url", &jwks, "--jwt-issuer", &server.issuer, "--jwt-audience", "tokenvault"]);
    let claims =
        |tenant: &str| json!({ "iss": server.issuer, "aud": "tokenvault", "sub": "billing-service", "tenant": tenant });
    let acme = server.jwt(claims("acme"), 300);

    assert_eq!(served.call("GET", CONN, Some(&acme), None), (200, json!([])));
    let (status, answer) = served.call("GET", "/v1/tenants/globex/users/alice/connections", Some(&acme), None);
    assert_eq!((status, answer["error"].as_str()), (403, Some("forbidden")), "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("jwt:billing-service"), "{answer}");
    let (status, _) = served.call("PUT", "/v1/providers/idp", Some(&acme), Some(&server.provider_body()));
    assert_eq!(status, 403, "a tenant's token does not change providers");

    // Every way a token can be wrong is a 401.
    let mut tampered = acme.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let mut no_tenant = claims("acme");
    no_tenant.as_object_mut().unwrap().remove("tenant");
    let wrong = [
        ("expired", server.jwt(claims("acme"), -600)),
        ("another audience", server.jwt(json!({ "iss": server.issuer, "aud": "other", "tenant": "acme" }), 300)),
        (
            "another issuer",
            server.jwt(json!({ "iss": "http://127.0.0.1:9/evil", "aud": "tokenvault", "tenant": "acme" }), 300),
        ),
        ("no tenant", server.jwt(no_tenant, 300)),
        ("tampered", tampered),
        ("not a token", "a.b.c".to_owned()),
    ];
    for (why, token) in wrong {
        let (status, answer) = served.call("GET", CONN, Some(&token), None);
        assert_eq!((status, answer["error"].as_str()), (401, Some("unauthorized")), "{why}: {answer}");
    }
    // API keys still work beside JWTs.
    let operator = served.first_key.clone().unwrap();
    assert_eq!(served.call("GET", CONN, Some(&operator), None).0, 200);
    assert!(!served.log().contains(&acme), "a token in the log");
}
