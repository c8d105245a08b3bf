//! Soak: `serve` under a bounded mixed load for several minutes (180 s; set
//! `TOKENVAULT_SOAK_SECS` for another length): four clients getting, storing, refreshing,
//! listing, removing and connecting (link, the provider's consent, callback) against the real
//! OAuth server, with its access tokens living ten seconds so refreshes keep coming. No
//! answer is a 5xx, and resident memory stays flat (taken after a warm-up and at the end);
//! a tenth of the answers, chosen at random, and the log go to the canary scan.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokenvault_tests::{OAuthServer, Tokenvault, canary, random_below};

const CLIENTS: usize = 4;
const USERS: usize = 40;
const WARM_UP: Duration = Duration::from_secs(20);

#[test]
fn a_mixed_load_for_minutes_answers_no_5xx_and_keeps_memory_flat() {
    let soak =
        Duration::from_secs(std::env::var("TOKENVAULT_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(180));
    let server = OAuthServer::start(10);
    let cli = Tokenvault::new(&[&server.origin()]);
    let served = cli.serve_with(&["--refresh-every", "5"]);
    let key = served.first_key.clone().unwrap();
    assert_eq!(served.call("PUT", "/v1/providers/idp", Some(&key), Some(&server.provider_body())).0, 200);
    let statuses: Mutex<BTreeMap<(&str, u16), u64>> = Mutex::default();
    let (start, mut resident_after_warm_up) = (Instant::now(), None);

    std::thread::scope(|scope| {
        for _ in 0..CLIENTS {
            scope.spawn(|| {
                let agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .max_redirects(0)
                    .timeout_global(Some(Duration::from_secs(60)))
                    .build()
                    .new_agent();
                let call = |method: &str, path: &str, body: Option<&Value>| -> (u16, Value, Option<String>) {
                    let request = ureq::http::Request::builder()
                        .method(method)
                        .uri(format!("{}{path}", served.url))
                        .header("authorization", format!("Bearer {key}"));
                    let sent = match body {
                        Some(body) => agent
                            .run(request.header("content-type", "application/json").body(body.to_string()).unwrap()),
                        None => agent.run(request.body(()).unwrap()),
                    };
                    let mut response = sent.expect("serve answers");
                    let location = response.headers().get("location").map(|l| l.to_str().unwrap().to_owned());
                    let text = response.body_mut().read_to_string().unwrap_or_default();
                    // A sample of the answers: the other suites scan every answer of theirs, and
                    // all of a soak's would take the scan minutes.
                    if random_below(10) == 0 {
                        canary::record_answer(format!("{method} (soak)"), &text);
                    }
                    (response.status().as_u16(), serde_json::from_str(&text).unwrap_or(Value::Null), location)
                };
                while start.elapsed() < soak {
                    let user = format!("/v1/tenants/acme/users/u{}/connections", random_below(USERS as u64));
                    let connection = format!("{user}/idp/default");
                    let roll = random_below(100);
                    let (what, status) = match roll {
                        0..=54 => ("get", call("GET", &format!("{connection}/token"), None).0),
                        55..=69 => ("put", call("PUT", &connection, Some(&server.grant("vault-basic"))).0),
                        70..=79 => ("refresh", call("POST", &format!("{connection}/refresh"), None).0),
                        80..=89 => ("list", call("GET", &user, None).0),
                        90..=96 => ("remove", call("DELETE", &connection, None).0),
                        _ => {
                            let (status, link, _) = call("POST", &format!("{connection}/link"), None);
                            assert_eq!(status, 200, "{link}");
                            let path = link["url"].as_str().unwrap().strip_prefix(&served.url).unwrap().to_owned();
                            let (_, _, to_provider) = call("GET", &path, None);
                            let back = server.authorize(&to_provider.expect("off to the provider"), false);
                            let (status, _, _) = call("GET", back.strip_prefix(&served.url).unwrap(), None);
                            ("connect", status)
                        }
                    };
                    *statuses.lock().unwrap().entry((what, status)).or_default() += 1;
                }
            });
        }
        std::thread::sleep(WARM_UP.min(soak / 4));
        resident_after_warm_up = served.resident_kib();
    });

    let (before, after) = (resident_after_warm_up.unwrap(), served.resident_kib().unwrap());
    let statuses = statuses.into_inner().unwrap();
    println!(
        "{:.0} s of mixed load: {statuses:?}; resident memory {} MiB after the warm-up, {} MiB at the end",
        start.elapsed().as_secs_f64(),
        before / 1024,
        after / 1024
    );
    let server_errors: Vec<_> = statuses.iter().filter(|((_, status), _)| *status >= 500).collect();
    assert!(server_errors.is_empty(), "5xx answers: {server_errors:?}\n{}", served.log());
    assert!(statuses.get(&("get", 200)).copied().unwrap_or(0) > 100, "too little load to mean anything");
    assert!(after <= before + (before / 4).max(32 * 1024), "resident memory grew from {before} KiB to {after} KiB");
    canary::record("serve log", &served.log());
}
