//! `/metrics` as Prometheus reads it: it parses, its counters move with the calls made, and
//! it names no value, tenant or user; `/readyz` fails while the keyring cannot be read.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::json;
use tokenvault::keys::KEYRING_KEY;
use tokenvault::storage::StorageUrl;
use tokenvault_tests::{OAuthServer, Served, Tokenvault, canary};

const CONNECTION: &str = "/v1/tenants/acme/users/alice/connections/idp/default";

/// Each sample of the page, by name and labels (`name{a="1",b="2"}`, labels sorted).
fn scrape(served: &Served) -> HashMap<String, f64> {
    let (status, text) = served.call_text("GET", "/metrics", None, None);
    assert_eq!(status, 200, "{text}");
    canary::record("GET /metrics", &text);
    for private in ["acme", "alice"] {
        assert!(!text.contains(private), "the metrics name {private}:\n{text}");
    }
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text");
    scrape
        .samples
        .into_iter()
        .map(|sample| {
            let mut labels: Vec<String> = sample.labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            labels.sort();
            let value = match sample.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                prometheus_parse::Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
                prometheus_parse::Value::Summary(_) => 0.0,
            };
            let name =
                if labels.is_empty() { sample.metric } else { format!("{}{{{}}}", sample.metric, labels.join(",")) };
            (name, value)
        })
        .collect()
}

fn value(samples: &HashMap<String, f64>, name: &str) -> f64 {
    samples.get(name).copied().unwrap_or(0.0)
}

#[test]
fn counters_move_with_the_calls_and_name_no_tenant() {
    let server = OAuthServer::start(3600);
    let cli = Tokenvault::new(&[&server.origin()]);
    let served = cli.serve();
    let operator = served.first_key.clone().unwrap();
    assert_eq!(served.call("PUT", "/v1/providers/idp", Some(&operator), Some(&server.provider_body())).0, 200);
    let grant = server.grant("vault-basic");
    assert_eq!(served.call("PUT", CONNECTION, Some(&operator), Some(&grant)).0, 200);

    let before = scrape(&served);
    for _ in 0..3 {
        assert_eq!(served.call("GET", &format!("{CONNECTION}/token"), Some(&operator), None).0, 200);
    }
    assert_eq!(served.call("POST", &format!("{CONNECTION}/refresh"), Some(&operator), None).0, 200);
    let missing = "/v1/tenants/acme/users/alice/connections/idp/other/token";
    assert_eq!(served.call("GET", missing, Some(&operator), None).0, 404);
    let after = scrape(&served);

    let moved = |name: &str| value(&after, name) - value(&before, name);
    assert_eq!(moved(r#"tokenvault_calls_total{operation="token-get",outcome="ok"}"#), 3.0, "{after:?}");
    assert_eq!(moved(r#"tokenvault_calls_total{operation="token-get",outcome="not-found"}"#), 1.0);
    assert_eq!(moved(r#"tokenvault_refreshes_total{outcome="ok",provider="idp"}"#), 1.0, "{after:?}");
    assert!(moved("tokenvault_upstream_response_seconds_count") >= 1.0, "{after:?}");
    assert_eq!(value(&after, "tokenvault_storage_errors_total"), 0.0);
    assert_eq!(value(&after, "tokenvault_audit_events_lost_total"), 0.0);
    assert_eq!(value(&after, "tokenvault_pool_waiting_callers"), 0.0);
    assert!(after.contains_key("tokenvault_pool_slots_in_use"), "{after:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_fails_while_the_keyring_cannot_be_read() {
    let cli = Tokenvault::new(&[]);
    let served = cli.serve();
    assert_eq!(served.call("GET", "/readyz", None, None), (200, json!({ "status": "ready" })));
    // The keyring record garbled in the database: the service notices when it reloads it.
    let storage = StorageUrl::Sqlite(cli.data_dir.path().join("vault.db")).open().await.unwrap();
    let keyring = storage.get(KEYRING_KEY).await.unwrap().expect("a keyring record");
    let garbled = storage.put(KEYRING_KEY, b"{not a keyring", Some(keyring.version)).await.unwrap();
    let until = |ready: bool| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, answer) = served.call("GET", "/readyz", None, None);
            if (status == 200) == ready || Instant::now() > deadline {
                return (status, answer);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let (status, answer) = until(false);
    assert!(status >= 500, "still ready with a keyring that cannot be read: {answer}");
    assert!(answer["message"].as_str().is_some_and(|m| m.contains("keyring")), "{answer}");
    storage.put(KEYRING_KEY, &keyring.value, Some(garbled)).await.unwrap();
    assert_eq!(until(true).0, 200, "ready again once the keyring reads");
}
