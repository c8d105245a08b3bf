//! The audit trail in the vault's storage: one chain every host on the store appends to,
//! naming who asked for each call; read through `GET /v1/audit` and `tokenvault audit ls`;
//! `tokenvault audit verify` names the first entry edited, removed or moved in the
//! database itself.

use serde_json::{Value, json};
use tokenvault::storage::StorageUrl;
use tokenvault_tests::{OAuthServer, Tokenvault, TwoServices, canary};

const CONNECTION: &str = "/v1/tenants/acme/users/alice/connections/idp/default";

/// Every page of `GET /v1/audit?{query}`, `limit` at a time.
fn all_pages(served: &tokenvault_tests::Served, key: &str, query: &str, limit: u32) -> Vec<Value> {
    let mut events = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/audit?limit={limit}&{query}");
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={}", url_escape(cursor)));
        }
        let (status, page) = served.call("GET", &path, Some(key), None);
        assert_eq!(status, 200, "{page}");
        canary::record("GET /v1/audit", &page.to_string());
        events.extend(page["events"].as_array().unwrap().iter().cloned());
        match page["cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return events,
        }
    }
}

fn url_escape(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_services_on_postgres_keep_one_trail_that_names_who_asked() {
    let server = OAuthServer::start(3600);
    let test = "audit_trail::two_services_on_postgres…";
    let Some(TwoServices { storage_url, a, b, served_a, served_b, operator }) = TwoServices::on_postgres(&server, test)
    else {
        return;
    };
    let grant = server.grant("vault-basic");
    assert_eq!(served_b.call("PUT", CONNECTION, Some(&operator), Some(&grant)).0, 200);
    let acme = a.run(&["apikey", "create", "acme"], None).json();
    let (acme_key, acme_id) = (acme["key"].as_str().unwrap(), acme["id"].as_str().unwrap());
    let acme2 = a.run(&["apikey", "create", "acme"], None).json();
    let (acme2_key, acme2_id) = (acme2["key"].as_str().unwrap(), acme2["id"].as_str().unwrap());
    let globex = a.run(&["apikey", "create", "globex"], None).json()["key"].as_str().unwrap().to_owned();
    let keys = a.run(&["apikey", "ls"], None).json();
    let operator_id = keys.as_array().unwrap().iter().find(|k| k["scope"] == "operator").unwrap()["id"].clone();
    let operator_id = operator_id.as_str().unwrap().to_owned();
    // The last comes through the instance the first left warm, and names its own key.
    for (served, key) in [(&served_a, acme_key), (&served_b, acme_key), (&served_a, acme2_key)] {
        assert_eq!(served.call("GET", &format!("{CONNECTION}/token"), Some(key), None).0, 200);
    }

    // Both services' events, in the order they happened, whichever is asked.
    let from_a = all_pages(&served_a, &operator, "", 100);
    let from_b = all_pages(&served_b, &operator, "", 2);
    assert_eq!(from_a, from_b, "one trail, read whole a page of 2 at a time too");
    let gets: Vec<&Value> = from_a.iter().filter(|e| e["action"] == "token-get").collect();
    assert_eq!(gets.len(), 3, "{from_a:?}");
    assert!(gets.iter().all(|e| e["tenant"] == "acme"), "{gets:?}");
    let actors: Vec<&str> = gets.iter().map(|e| e["actor"].as_str().unwrap()).collect();
    let (first, second) = (format!("api-key:{acme_id}"), format!("api-key:{acme2_id}"));
    assert_eq!(actors, [&second, &first, &first], "newest first");
    let store = from_a.iter().find(|e| e["action"] == "token-store").unwrap();
    assert_eq!(store["actor"], format!("api-key:{operator_id}"));
    let ids: Vec<u64> = from_a.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");

    // Filters, and a tenant key's view: its own tenant only.
    let only_gets = all_pages(&served_b, &operator, "action=token-get&tenant=acme", 100);
    assert_eq!(
        only_gets.iter().map(|e| &e["id"]).collect::<Vec<_>>(),
        gets.iter().map(|e| &e["id"]).collect::<Vec<_>>()
    );
    let acme_view = all_pages(&served_a, acme_key, "", 100);
    assert!(acme_view.iter().all(|e| e["tenant"] == "acme") && acme_view.len() >= 4, "{acme_view:?}");
    assert!(all_pages(&served_a, &globex, "", 100).is_empty());
    assert_eq!(served_a.call("GET", "/v1/audit?tenant=acme", Some(&globex), None).0, 403);
    let newest = from_a[0]["at_ms"].as_u64().unwrap();
    assert!(all_pages(&served_a, &operator, &format!("after={newest}"), 100).is_empty());
    for bad in ["limit=0", "limit=1001", "cursor=elsewhere", "colour=red"] {
        let (status, refused) = served_a.call("GET", &format!("/v1/audit?{bad}"), Some(&operator), None);
        assert_eq!((status, refused["error"].as_str()), (400, Some("invalid-input")), "{bad}: {refused}");
    }
    assert_eq!(served_a.call("GET", "/v1/audit", None, None).0, 401);

    // The CLI reads the same trail, and finds the chain whole.
    assert_eq!(a.audit_events(), from_a);
    let verified = b.run(&["audit", "verify"], None).json();
    assert_eq!((verified["broken"].clone(), verified["entries"].as_u64()), (Value::Null, Some(ids.len() as u64)));
    assert_eq!(verified["last"].as_u64(), Some(ids[0]));
    let storage = StorageUrl::parse(&storage_url).unwrap().open().await.unwrap();
    let rows = tokenvault::storage::all_keys(&*storage, "").await.unwrap();
    for key in rows {
        let value = storage.get(&key).await.unwrap().unwrap().value;
        canary::record(format!("stored {key}"), &String::from_utf8_lossy(&value));
    }
    canary::record("serve a", &served_a.log());
    canary::record("serve b", &served_b.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_names_the_first_entry_edited_removed_or_moved_in_the_database() {
    let tv = Tokenvault::new(&[]);
    tv.run(&["provider", "add", "gh", "--template", "github", "--client-id", "Iv1.abc"], None).json();
    for user in ["alice", "bob", "carol", "dave"] {
        let grant = json!({"access_token": format!("at-{user}"), "token_type": "bearer"}).to_string();
        tv.run(&["token", "put", "acme", user, "gh"], Some(&grant)).json();
        tv.run(&["token", "get", "acme", user, "gh"], None).json();
    }
    let whole = tv.run(&["audit", "verify"], None).json();
    assert_eq!((whole["entries"].as_u64(), whole["broken"].clone()), (Some(9), Value::Null));

    // Rows as anyone with the database file could change them.
    let storage = StorageUrl::Sqlite(tv.data_dir.path().join("vault.db")).open().await.unwrap();
    let entry_key = |seq: u64| format!("audit/{:020}", u64::MAX - seq);
    let read = async |seq: u64| storage.get(&entry_key(seq)).await.unwrap().unwrap();
    let write = async |seq: u64, value: &[u8]| {
        let current = storage.get(&entry_key(seq)).await.unwrap();
        match current {
            Some(entry) => storage.put(&entry_key(seq), value, Some(entry.version)).await.unwrap(),
            None => storage.put(&entry_key(seq), value, None).await.unwrap(),
        };
    };
    let broken_at = || {
        let run = tv.run(&["audit", "verify"], None);
        assert_eq!(run.error_kind(), "integrity", "{}", run.stdout);
        let report: Value = serde_json::from_str(&run.stdout).unwrap();
        (report["broken"]["entry"].as_u64().unwrap(), run.stderr)
    };

    let original = read(4).await.value;
    let edited = String::from_utf8(original.clone()).unwrap().replace("\"bob\"", "\"eve\"");
    write(4, edited.as_bytes()).await;
    let (entry, stderr) = broken_at();
    assert_eq!(entry, 4);
    assert!(stderr.contains("broken at entry 4") && stderr.contains("edited"), "{stderr}");
    write(4, &original).await;

    let removed = read(6).await;
    storage.delete(&entry_key(6), removed.version).await.unwrap();
    let (entry, stderr) = broken_at();
    assert_eq!(entry, 6);
    assert!(stderr.contains("removed"), "{stderr}");
    write(6, &removed.value).await;

    let (two, seven) = (read(2).await.value, read(7).await.value);
    write(2, &seven).await;
    write(7, &two).await;
    let (entry, stderr) = broken_at();
    assert_eq!(entry, 2);
    assert!(stderr.contains("moved"), "{stderr}");
    write(2, &two).await;
    write(7, &seven).await;

    assert_eq!(tv.run(&["audit", "verify"], None).json()["broken"], Value::Null, "put back, it verifies again");
}
