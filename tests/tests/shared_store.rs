//! Two `serve` processes on one PostgreSQL, each keeping API keys and sealed records in a
//! cache of its own (storage's `get_cached`): what one host or the CLI changes, the other
//! acts on within a moment, well under the cache's ten-second age limit, so only the
//! database's notification can have told it.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokenvault_tests::{OAuthServer, Served, TwoServices};

const CONNECTION: &str = "/v1/tenants/acme/users/alice/connections/idp/default";

/// The moment a change may take to reach the other host's cache, in this test.
const MOMENT: Duration = Duration::from_secs(2);

/// Ask `served` until its answer satisfies `done`; panics naming `what` after [`MOMENT`].
fn answers_within_a_moment(served: &Served, key: &str, what: &str, done: impl Fn(u16, &Value) -> bool) {
    let deadline = Instant::now() + MOMENT;
    loop {
        let (status, answer) = served.call("GET", &format!("{CONNECTION}/token"), Some(key), None);
        if done(status, &answer) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: still {status} {answer} after {MOMENT:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_change_through_one_host_reaches_the_other_hosts_cache_within_a_moment() {
    let server = OAuthServer::start(3600);
    let Some(TwoServices { a, b: _b, served_a, served_b, operator, .. }) =
        TwoServices::on_postgres(&server, "shared_store")
    else {
        return;
    };
    let stored =
        |access_token: &str| json!({ "access_token": access_token, "token_type": "bearer", "expires_in": 3600 });
    assert_eq!(served_a.call("PUT", CONNECTION, Some(&operator), Some(&stored("at-1"))).0, 200);
    let acme = a.run(&["apikey", "create", "acme"], None).json();
    let (acme_key, acme_id) = (acme["key"].as_str().unwrap(), acme["id"].as_str().unwrap());

    // B reads the key and the token, and keeps them.
    for _ in 0..3 {
        let (status, token) = served_b.call("GET", &format!("{CONNECTION}/token"), Some(acme_key), None);
        assert_eq!((status, token["access_token"].as_str()), (200, Some("at-1")), "{token}");
    }

    // Stored again through A: B hands out the new token.
    assert_eq!(served_a.call("PUT", CONNECTION, Some(&operator), Some(&stored("at-2"))).0, 200);
    answers_within_a_moment(&served_b, acme_key, "a token stored through A", |status, token| {
        status == 200 && token["access_token"] == "at-2"
    });

    // Removed through A: B hands out nothing.
    assert_eq!(served_a.call("DELETE", CONNECTION, Some(&operator), None).0, 200);
    answers_within_a_moment(&served_b, acme_key, "a connection removed through A", |status, _| status == 404);

    // Revoked through the CLI: B refuses the key.
    assert_eq!(a.run(&["apikey", "revoke", acme_id], None).code, 0);
    answers_within_a_moment(&served_b, acme_key, "an API key revoked through the CLI", |status, _| status == 401);
}
