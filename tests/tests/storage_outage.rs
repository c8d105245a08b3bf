//! PostgreSQL, and Redis, going away under two `serve` processes and coming back: while it is
//! down calls fail at once with `storage` (503) and nothing is handed out; within seconds of
//! its return they succeed again; no write that was acknowledged is lost, none refused while
//! it was down appears, no host serves a record from before the outage that another host has
//! changed since, and the audit trail still verifies. The servers are the test's own.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokenvault::keys::MasterKey;
use tokenvault_tests::postgres::OwnPostgres;
use tokenvault_tests::redis::OwnRedis;
use tokenvault_tests::{OAuthServer, Served, Tokenvault};

fn connection(user: u32) -> String {
    format!("/v1/tenants/acme/users/u{user}/connections/idp/default")
}

fn put(served: &Served, key: &str, user: u32) -> (u16, Value) {
    let grant = json!({ "access_token": format!("at-{user}"), "token_type": "bearer" });
    served.call("PUT", &connection(user), Some(key), Some(&grant))
}

fn get(served: &Served, key: &str, user: u32) -> (u16, Value) {
    served.call("GET", &format!("{}/token", connection(user)), Some(key), None)
}

#[test]
fn postgres_going_down_fails_calls_with_storage_and_loses_no_acknowledged_write() {
    let Some(postgres) = OwnPostgres::start() else {
        eprintln!("SKIPPED storage_outage: PostgreSQL's programs are not installed");
        return;
    };
    outage(&postgres.url(), &mut || postgres.stop(), &mut || postgres.start_again());
}

#[test]
fn redis_going_down_fails_calls_with_storage_and_loses_no_acknowledged_write() {
    let Some(redis) = OwnRedis::start() else {
        eprintln!("SKIPPED storage_outage: redis-server is not installed");
        return;
    };
    let redis = std::cell::RefCell::new(redis);
    let url = redis.borrow().url();
    outage(&url, &mut || redis.borrow_mut().stop(), &mut || redis.borrow_mut().start_again());
}

fn outage(storage_url: &str, stop_storage: &mut dyn FnMut(), start_storage: &mut dyn FnMut()) {
    let server = OAuthServer::start(3600);
    let master = MasterKey::generate().unwrap().to_base64();
    let host = || Tokenvault::on_store(&[&server.origin()], storage_url, &master);
    let (tv, other) = (host(), host());
    let served = tv.serve();
    let operator = served.first_key.clone().unwrap();
    let elsewhere = other.serve();
    assert_eq!(served.call("PUT", "/v1/providers/idp", Some(&operator), Some(&server.provider_body())).0, 200);
    let mut acknowledged = Vec::new();
    for user in 0..20 {
        assert_eq!(put(&served, &operator, user).0, 200);
        acknowledged.push(user);
    }

    // Writers keep going through the outage, each noting what was acknowledged.
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4u32)
        .map(|writer| {
            let (url, key, stop) = (served.url.clone(), operator.clone(), stop.clone());
            std::thread::spawn(move || {
                let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
                let (mut acknowledged, mut refused) = (Vec::new(), 0);
                let mut user = 1000 + writer * 100_000;
                while !stop.load(Ordering::Relaxed) {
                    let grant = json!({ "access_token": format!("at-{user}"), "token_type": "bearer" });
                    let answer = agent
                        .put(format!("{url}{}", connection(user)))
                        .header("authorization", format!("Bearer {key}"))
                        .send_json(&grant);
                    match answer.map(|a| a.status().as_u16()) {
                        Ok(200) => acknowledged.push(user),
                        Ok(503) => refused += 1,
                        other => panic!("u{user}: {other:?}"),
                    }
                    user += 1;
                }
                (acknowledged, refused)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));

    // The other host holds u0 as it was (a cached copy, on Redis).
    assert_eq!(get(&elsewhere, &operator, 0).1["access_token"], "at-0");

    stop_storage();
    let down = Instant::now();
    for user in 20..25 {
        let (status, answer) = put(&served, &operator, user);
        assert_eq!((status, answer["error"].as_str()), (503, Some("storage")), "{answer}");
    }
    let (status, answer) = get(&served, &operator, 0);
    assert_eq!((status, answer["error"].as_str()), (503, Some("storage")), "{answer}");
    assert!(!answer.to_string().contains("at-0"), "nothing handed out: {answer}");
    assert!(served.call("GET", "/readyz", None, None).0 >= 500);
    let failing = down.elapsed();
    assert!(failing < Duration::from_secs(30), "the refusals took {failing:?}");

    start_storage();
    let up = Instant::now();
    loop {
        if get(&served, &operator, 0).0 == 200 {
            break;
        }
        assert!(up.elapsed() < Duration::from_secs(15), "still failing 15 s after PostgreSQL came back");
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("6 calls refused in {failing:?} while down; served again {:?} after the restart", up.elapsed());
    for user in 25..40 {
        assert_eq!(put(&served, &operator, user).0, 200);
        acknowledged.push(user);
    }
    // Changed through one host, read through the other: never the copy from before.
    let changed = json!({ "access_token": "at-0-changed", "token_type": "bearer" });
    assert_eq!(served.call("PUT", &connection(0), Some(&operator), Some(&changed)).0, 200);
    let deadline = Instant::now() + Duration::from_secs(2);
    while get(&elsewhere, &operator, 0).1["access_token"] != "at-0-changed" {
        assert!(Instant::now() < deadline, "the other host still serves u0 from before the outage");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let mut refused = 0;
    for writer in writers {
        let (written, writer_refused) = writer.join().unwrap();
        acknowledged.extend(written);
        refused += writer_refused;
    }
    println!("{} writes acknowledged in all, {refused} refused under load", acknowledged.len());
    assert!(refused > 0, "the outage refused none of the writers' calls");

    let acknowledged_count = acknowledged.len();
    for user in acknowledged.into_iter().filter(|u| *u != 0) {
        let (status, token) = get(&elsewhere, &operator, user);
        assert_eq!((status, token["access_token"].as_str()), (200, Some(format!("at-{user}").as_str())), "u{user}");
    }
    for user in 20..25 {
        assert_eq!(get(&served, &operator, user).0, 404, "a refused write appeared: u{user}");
    }
    let verified = tv.run(&["audit", "verify"], None).json();
    assert_eq!(verified["broken"], Value::Null, "{verified}");
    // The provider's registration, and a store and a get for each acknowledged write.
    assert!(verified["entries"].as_u64().unwrap() > 2 * acknowledged_count as u64, "{verified}");
}
