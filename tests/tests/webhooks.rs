//! Webhooks against real parts: `serve`, the test OAuth server, and a receiver on loopback
//! that checks every delivery with the Standard Webhooks library (`standardwebhooks`).
//! A connection's life (connect, refresh failing, recovering, `invalid_grant`, reconnect,
//! removal) and an access token's reach the tenant's webhook in order; a receiver that
//! fails gets the event later; deliveries pending when `serve` is SIGKILLed go out after a
//! restart, and two `serve` processes on one database send each event once (a repeat only
//! as at-least-once allows, with the same `webhook-id`); an event given up on shows in the
//! console and the metrics.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use tokenvault_tests::{OAuthServer, Served, Tokenvault, canary};

const ALICE: &str = "/v1/tenants/acme/users/alice/connections";

/// One POST the receiver got, and how it answered.
#[derive(Clone, Debug)]
struct Delivery {
    headers: HeaderMap,
    body: String,
    answered: u16,
}

impl Delivery {
    fn id(&self) -> &str {
        self.headers["webhook-id"].to_str().unwrap()
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }

    fn kind(&self) -> String {
        self.json()["type"].as_str().unwrap().to_owned()
    }
}

/// A webhook receiver on loopback: records every delivery; answers 503 to the next
/// `fail_next` ones and to all while `down`, 204 otherwise.
struct Receiver {
    origin: String,
    seen: Arc<Mutex<Vec<Delivery>>>,
    fail_next: Arc<AtomicUsize>,
    down: Arc<std::sync::atomic::AtomicBool>,
    _runtime: tokio::runtime::Runtime,
}

impl Receiver {
    fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let origin = format!("http://{}", listener.local_addr().unwrap());
        let seen: Arc<Mutex<Vec<Delivery>>> = Arc::default();
        let fail_next = Arc::new(AtomicUsize::new(0));
        let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, f, d) = (seen.clone(), fail_next.clone(), down.clone());
        let app = axum::Router::new().route(
            "/hooks",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let (seen, fail_next, down) = (s.clone(), f.clone(), d.clone());
                async move {
                    let failing = down.load(Ordering::SeqCst)
                        || fail_next.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
                    let answer = if failing { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::NO_CONTENT };
                    canary::record("webhook delivery", &format!("{headers:?}\n{body}"));
                    seen.lock().unwrap().push(Delivery { headers, body, answered: answer.as_u16() });
                    answer
                }
            }),
        );
        runtime.spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { origin, seen, fail_next, down, _runtime: runtime }
    }

    fn url(&self) -> String {
        format!("{}/hooks", self.origin)
    }

    fn all(&self) -> Vec<Delivery> {
        self.seen.lock().unwrap().clone()
    }

    /// Wait until `done` holds of the deliveries, for at most `limit`.
    fn wait_until(&self, limit: Duration, done: impl Fn(&[Delivery]) -> bool) -> Vec<Delivery> {
        let start = Instant::now();
        loop {
            let all = self.all();
            if done(&all) {
                return all;
            }
            assert!(start.elapsed() < limit, "the receiver still waits, after {limit:?}: {:#?}", kinds(&all));
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn kinds(deliveries: &[Delivery]) -> Vec<(String, u16)> {
    deliveries.iter().map(|d| (d.kind(), d.answered)).collect()
}

/// Every delivery verifies with the tenant's secret as a Standard Webhooks receiver checks it.
fn verify_all(deliveries: &[Delivery], secret: &str) {
    let webhook = standardwebhooks::Webhook::new(secret).unwrap();
    for delivery in deliveries {
        webhook.verify(delivery.body.as_bytes(), &delivery.headers).unwrap_or_else(|e| panic!("{e:?}: {delivery:?}"));
        assert_eq!(delivery.json()["id"], delivery.id(), "the body names its webhook-id");
    }
    let wrong = standardwebhooks::Webhook::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
    assert!(wrong.verify(deliveries[0].body.as_bytes(), &deliveries[0].headers).is_err());
}

/// `serve` delivering to the receiver, retrying after 200 ms, without background refresh.
fn serve(receiver: &Receiver, cli: &Tokenvault, extra: &[&str]) -> Served {
    let mut options =
        vec!["--allow-webhook", &receiver.origin, "--webhook-first-retry-ms", "200", "--refresh-every", "0"];
    options.extend(extra);
    cli.serve_with(&options)
}

/// [`serve`] on a fresh data directory, the test server's provider registered.
fn webhook_service(server: &OAuthServer, receiver: &Receiver, cli: &Tokenvault, extra: &[&str]) -> Served {
    let served = serve(receiver, cli, extra);
    let operator = served.first_key.clone().expect("a fresh service prints its first key");
    assert_eq!(served.call("PUT", "/v1/providers/idp", Some(&operator), Some(&server.provider_body())).0, 200);
    served
}

/// The tenant's webhook set to the receiver: its secret.
fn set_webhook(served: &Served, key: &str, receiver: &Receiver) -> String {
    let (status, set) =
        served.call("PUT", "/v1/tenants/acme/webhook", Some(key), Some(&json!({ "url": receiver.url() })));
    assert_eq!(status, 200, "{set}");
    set["secret"].as_str().expect("the secret, shown when made").to_owned()
}

#[test]
fn a_connections_life_reaches_its_tenants_webhook_signed_and_in_order() {
    let server = OAuthServer::start(600);
    let receiver = Receiver::start();
    let cli = Tokenvault::new(&[&server.origin()]);
    let served = webhook_service(&server, &receiver, &cli, &[]);
    let (acme, globex) = (cli.api_key("acme").0, cli.api_key("globex").0);

    // Refused: an origin not allowed for webhooks, another tenant's key, an unknown type.
    let hook = "/v1/tenants/acme/webhook";
    let (status, refused) = served.call("PUT", hook, Some(&acme), Some(&json!({ "url": "http://127.0.0.1:9/hooks" })));
    assert_eq!((status, refused["error"].as_str()), (400, Some("invalid-input")), "{refused}");
    assert_eq!(served.call("PUT", hook, Some(&globex), Some(&json!({ "url": receiver.url() }))).0, 403);
    let unknown = json!({ "url": receiver.url(), "events": ["connection.exploded"] });
    assert_eq!(served.call("PUT", hook, Some(&acme), Some(&unknown)).0, 400);
    assert_eq!(served.call("POST", &format!("{hook}/test"), Some(&acme), None).0, 404, "no webhook yet");

    // Set: the secret once; shown again never.
    let secret = set_webhook(&served, &acme, &receiver);
    assert!(secret.starts_with("whsec_"), "{secret}");
    let (status, shown) = served.call("GET", hook, Some(&acme), None);
    assert_eq!((status, shown["url"].as_str()), (200, Some(receiver.url().as_str())), "{shown}");
    assert!(shown.get("secret").is_none() && !shown.to_string().contains(&secret[6..]));
    let (_, kept) = served.call("PUT", hook, Some(&acme), Some(&json!({ "url": receiver.url() })));
    assert!(kept.get("secret").is_none(), "{kept}");
    let (status, ping) = served.call("POST", &format!("{hook}/test"), Some(&acme), None);
    assert_eq!((status, ping["delivered"].as_bool()), (200, Some(true)), "{ping}");

    // A real connect: the link, the provider's consent, the callback.
    let (_, link) = served.call("POST", &format!("{ALICE}/idp/default/link"), Some(&acme), None);
    let (_, to_provider, _) = served.browse(link["url"].as_str().unwrap());
    let back = server.authorize(&to_provider.unwrap(), false);
    assert_eq!(served.browse(&back).0, 200);
    let connection = format!("{ALICE}/idp/default");

    // The provider fails twice (one event), answers again (recovered), then rejects a
    // refresh token another client spent (invalid_grant), and the user connects again.
    server.fault(json!({ "status": 503, "content_type": "application/json",
        "body": "{\"error\":\"temporarily_unavailable\"}", "count": 2 }));
    for _ in 0..2 {
        assert_eq!(served.call("POST", &format!("{connection}/refresh"), Some(&acme), None).0, 502);
    }
    assert_eq!(served.call("POST", &format!("{connection}/refresh"), Some(&acme), None).0, 200);
    let (_, token) = served.call("GET", &format!("{connection}/token"), Some(&acme), None);
    assert_eq!(server.raw_refresh("vault-basic", token["refresh_token"].as_str().unwrap()).0, 200);
    assert_eq!(served.call("POST", &format!("{connection}/refresh"), Some(&acme), None).0, 409);
    assert_eq!(served.call("PUT", &connection, Some(&acme), Some(&server.grant("vault-basic"))).0, 200);

    // An access token made and revoked.
    let ask = json!({ "name": "ci", "connections": [{ "provider": "idp" }], "methods": ["GET"], "paths": ["/*"] });
    let (status, made) = served.call("POST", "/v1/tenants/acme/users/alice/access-tokens", Some(&acme), Some(&ask));
    assert_eq!(status, 201, "{made}");
    let token_id = made["id"].as_str().unwrap();
    let revoke = format!("/v1/tenants/acme/users/alice/access-tokens/{token_id}");
    assert!(matches!(served.call("DELETE", &revoke, Some(&acme), None).0, 200 | 204));

    // The receiver fails three times; the removal reaches it after, the same id each try.
    receiver.wait_until(Duration::from_secs(20), |all| all.iter().filter(|d| d.answered < 300).count() == 8);
    receiver.fail_next.store(3, Ordering::SeqCst);
    let (status, receipt) = served.call("DELETE", &connection, Some(&acme), None);
    assert_eq!((status, receipt["upstream"]["outcome"].as_str()), (200, Some("revoked")), "{receipt}");
    let all = receiver.wait_until(Duration::from_secs(30), |all| all.iter().filter(|d| d.answered < 300).count() == 9);

    // In order per connection and per access token (those go out side by side).
    let accepted: Vec<Delivery> = all.iter().filter(|d| d.answered < 300).cloned().collect();
    let of =
        |prefix: &str| -> Vec<Delivery> { accepted.iter().filter(|d| d.kind().starts_with(prefix)).cloned().collect() };
    let (connection_events, token_events) = (of("connection."), of("access_token."));
    assert_eq!(
        connection_events.iter().map(Delivery::kind).collect::<Vec<_>>(),
        [
            "connection.created",
            "connection.refresh_failed",
            "connection.recovered",
            "connection.reconnect_required",
            "connection.recovered",
            "connection.removed"
        ],
        "{:#?}",
        kinds(&all)
    );
    assert_eq!(
        token_events.iter().map(Delivery::kind).collect::<Vec<_>>(),
        ["access_token.created", "access_token.revoked"]
    );
    assert_eq!((accepted.len(), accepted[0].kind().as_str()), (9, "ping"));
    verify_all(&all, &secret);
    let removed = connection_events.last().unwrap();
    let tries: Vec<&Delivery> = all.iter().filter(|d| d.id() == removed.id()).collect();
    assert_eq!(tries.iter().map(|d| d.answered).collect::<Vec<_>>(), [503, 503, 503, 204]);
    assert!(tries.windows(2).all(|w| w[0].body == w[1].body), "each try sends the same event");

    // What each says: who, what failed and how, what became of the tokens; never a value.
    for delivery in &connection_events {
        let data = &delivery.json()["data"];
        let who = (&data["tenant"], &data["user"], &data["provider"], &data["name"]);
        assert_eq!(who, (&json!("acme"), &json!("alice"), &json!("idp"), &json!("default")));
    }
    let failure = json!({ "kind": "provider-error", "code": "temporarily_unavailable", "status": 503 });
    assert_eq!(connection_events[1].json()["data"]["failure"], failure);
    assert_eq!(connection_events[3].json()["data"]["failure"]["code"], "invalid_grant");
    assert_eq!(token_events[0].json()["data"]["access_token_id"], token_id);
    assert_eq!(removed.json()["data"]["revocation"], json!({ "upstream": "revoked" }));
    assert!(connection_events[0].json()["timestamp"].as_str().unwrap().ends_with('Z'));
    let ids: std::collections::HashSet<&str> = accepted.iter().map(Delivery::id).collect();
    assert_eq!(ids.len(), accepted.len(), "each event once");

    // Removed: no events, no pings.
    assert_eq!(served.call("DELETE", hook, Some(&acme), None).0, 204);
    assert_eq!(served.call("GET", hook, Some(&acme), None).0, 404);
    assert_eq!(served.call("PUT", &connection, Some(&acme), Some(&server.grant("vault-basic"))).0, 200);
    assert_eq!(served.call("POST", &format!("{hook}/test"), Some(&acme), None).0, 404);
    std::thread::sleep(Duration::from_millis(1500)); // more than a delivery pass
    assert_eq!(receiver.all().len(), all.len(), "an event after the webhook was removed");
    canary::record("serve log", &served.log());
}

#[test]
fn pending_deliveries_survive_sigkill_and_two_services_send_each_event_once() {
    const CONNECTIONS: usize = 12;
    let server = OAuthServer::start(600);
    let receiver = Receiver::start();
    let cli = Tokenvault::new(&[&server.origin()]);
    let mut first = webhook_service(&server, &receiver, &cli, &[]);
    let operator = first.first_key.clone().unwrap();
    let secret = set_webhook(&first, &operator, &receiver);

    // The receiver is down: every event waits in the outbox, tried and tried again.
    receiver.down.store(true, Ordering::SeqCst);
    for n in 0..CONNECTIONS {
        let path = format!("{ALICE}/idp/c{n}");
        assert_eq!(first.call("PUT", &path, Some(&operator), Some(&server.grant("vault-basic"))).0, 200);
    }
    receiver.wait_until(Duration::from_secs(20), |all| all.len() >= CONNECTIONS);
    first.kill();

    // Two services on the same database; the receiver is back.
    let services = [serve(&receiver, &cli, &[]), serve(&receiver, &cli, &[])];
    receiver.down.store(false, Ordering::SeqCst);
    // An event claimed by the killed service waits out its claim (30 s) first.
    let all = receiver.wait_until(Duration::from_secs(90), |all| {
        all.iter().filter(|d| d.answered < 300).map(Delivery::id).collect::<std::collections::HashSet<_>>().len()
            == CONNECTIONS
    });
    std::thread::sleep(Duration::from_millis(1500)); // a pass more, for any repeat
    assert!(receiver.all().len() >= all.len());
    let all = receiver.all();
    verify_all(&all, &secret);
    let mut accepted: HashMap<String, Vec<&Delivery>> = HashMap::new();
    for delivery in all.iter().filter(|d| d.answered < 300) {
        accepted.entry(delivery.id().to_owned()).or_default().push(delivery);
    }
    assert_eq!(accepted.len(), CONNECTIONS);
    let repeats: usize = accepted.values().map(|tries| tries.len() - 1).sum();
    for tries in accepted.values() {
        assert!(tries.iter().all(|d| d.body == tries[0].body && d.kind() == "connection.created"));
    }
    println!(
        "{CONNECTIONS} events, {} tries while down, {repeats} delivered twice",
        all.iter().filter(|d| d.answered >= 300).count()
    );
    assert_eq!(repeats, 0, "two services sent one event twice without a crash between");
    for mut served in services {
        assert!(served.stop());
        canary::record("serve log", &served.log());
    }
}

#[test]
fn an_event_given_up_on_shows_in_the_console_and_the_metrics() {
    let server = OAuthServer::start(600);
    let receiver = Receiver::start();
    let cli = Tokenvault::new(&[&server.origin()]);
    let served = webhook_service(&server, &receiver, &cli, &["--webhook-give-up-after", "2"]);
    let acme = cli.api_key("acme").0;
    set_webhook(&served, &acme, &receiver);
    receiver.down.store(true, Ordering::SeqCst);
    assert_eq!(
        served.call("PUT", &format!("{ALICE}/idp/default"), Some(&acme), Some(&server.grant("vault-basic"))).0,
        200
    );

    // Tried while it lasts, then given up on.
    let browser = served.browser();
    let sign_in = browser.get("/console/sign-in");
    let signed_in = browser.post("/console/sign-in", &[("csrf", &sign_in.csrf()), ("api_key", &acme)]);
    assert_eq!(signed_in.status, 303);
    let start = Instant::now();
    let page = loop {
        let page = browser.get("/console/admin/webhooks");
        assert_eq!(page.status, 200, "{}", page.body);
        if page.body.contains("class=\"undelivered\"") {
            break page;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "not given up on:\n{}", page.body);
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(page.body.contains("connection.created") && page.body.contains("HTTP 503"), "{}", page.body);
    assert!(page.body.contains(&receiver.url()), "the page shows the webhook's URL");
    let tries = receiver.all().len();
    assert!(tries >= 2, "tried {tries} times");
    let (_, metrics) = served.call_text("GET", "/metrics", None, None);
    let line = metrics
        .lines()
        .find(|l| l.starts_with("tokenvault_webhook_deliveries_total{outcome=\"given-up\"}"))
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(line.ends_with(" 1"), "{line}");
    assert!(metrics.contains("tokenvault_webhook_deliveries_total{outcome=\"failed\"}"), "{metrics}");
    assert!(!metrics.contains("acme"));
    // Given up on: not tried again.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(receiver.all().len(), tries);
}
