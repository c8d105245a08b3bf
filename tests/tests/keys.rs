//! Key rotation against real parts: a re-encryption pass over 10,000 records, SIGKILLed
//! and resumed while this process keeps reading and refreshing through the real OAuth
//! server; the old key retired afterwards; a rotation through one `serve` reaching another
//! on one PostgreSQL; and keyring failures that must change nothing.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;
use tokenvault::keys::{MASTER_KEY_ENV, MasterKey};
use tokenvault::storage::{Storage, StorageUrl};
use tokenvault::{ConnectionKey, Options, TokenGrant, Vault};
use tokenvault_tests::{OAuthServer, Tokenvault, grant_of, provider_config, tokenvault_bin};

const RECORDS: usize = 10_000;
const KILLS: usize = 4;

fn fake_key(i: usize) -> ConnectionKey {
    ConnectionKey::new("acme", format!("user-{i:05}"), "idp", "default")
}

/// Every stored value, by key: what a reader of the database sees.
async fn rows(storage: &Arc<dyn Storage>) -> BTreeMap<String, (Vec<u8>, u64)> {
    let mut rows = BTreeMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = storage.list("", cursor.as_deref(), 1000).await.unwrap();
        for key in &page.keys {
            if let Some(entry) = storage.get(key).await.unwrap() {
                rows.insert(key.clone(), (entry.value, entry.version));
            }
        }
        match page.cursor {
            Some(next) => cursor = Some(next),
            None => return rows,
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread")]
async fn records_move_to_a_new_key_online_through_kills_and_the_old_key_is_retired() {
    let server = OAuthServer::start(2);
    let tv = Tokenvault::new(&[&server.origin()]);
    let mut options = Options::from_data_dir(tv.data_dir.path()).unwrap();
    options.allow_outbound(&[server.origin()]).unwrap();
    let vault = Vault::open(&options).await.unwrap();
    vault.put_provider(&provider_config(&server, "idp", "vault-basic")).await.unwrap();

    // Three real connections this process keeps refreshing (their tokens live 2 s), and
    // 10,000 records the pass has to move.
    let live: Vec<ConnectionKey> =
        (0..3).map(|i| ConnectionKey::new("acme", format!("live-{i}"), "idp", "default")).collect();
    for key in &live {
        vault.store(key, &grant_of(&server.grant("vault-basic"))).await.unwrap();
    }
    let started = Instant::now();
    let mut stores = tokio::task::JoinSet::new();
    for chunk in 0..8 {
        let vault = vault.clone();
        stores.spawn(async move {
            for i in (chunk..RECORDS).step_by(8) {
                let grant = TokenGrant {
                    access_token: format!("at-{i}"),
                    token_type: "Bearer".into(),
                    expires_in: Some(86_400),
                    refresh_token: Some(format!("rt-{i}")),
                    scope: None,
                };
                vault.store(&fake_key(i), &grant).await.unwrap();
            }
        });
    }
    stores.join_all().await;
    println!("stored {RECORDS} records in {:?}", started.elapsed());
    let (old_key, old_material) = vault.services().keys.active().await.unwrap();

    let rotated = tv.run(&["keys", "rotate"], None).json();
    let rotated_at = Instant::now();
    let new_key = rotated["id"].as_str().unwrap().to_owned();
    assert_eq!(rotated["status"], "active");

    // Meanwhile this process reads and refreshes, as a `serve` would.
    let stop = Arc::new(AtomicBool::new(false));
    let (reads, refreshes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (vault, stop, reads, refreshes, live) =
            (vault.clone(), stop.clone(), reads.clone(), refreshes.clone(), live.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = &live[i % live.len()];
                vault.refresh(key).await.unwrap_or_else(|e| panic!("refresh during the pass: {e}"));
                refreshes.fetch_add(1, Ordering::Relaxed);
                let record = fake_key((i * 7919) % RECORDS);
                assert_eq!(vault.get(&record).await.unwrap().access_token, format!("at-{}", (i * 7919) % RECORDS));
                reads.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        })
    };

    // SIGKILL the pass at points spread over it, then let it finish: run k is killed once it
    // has saved its progress k times (a page of 200 records each), however fast it goes.
    let progress = async || {
        let entry = vault.services().storage.get(tokenvault::reencrypt::REENCRYPT_PROGRESS_KEY).await.unwrap();
        entry.map(|e| e.version)
    };
    let mut killed_after = Vec::new();
    for kill in 0..KILLS {
        let mut pass = Command::new(tokenvault_bin())
            .arg("--data-dir")
            .arg(tv.data_dir.path())
            .args(["keys", "reencrypt"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        let (mut seen, mut saves) = (progress().await, 0);
        while saves <= kill {
            assert!(started.elapsed() < Duration::from_secs(60), "the pass saved no progress for a minute");
            tokio::time::sleep(Duration::from_millis(5)).await;
            let now = progress().await;
            if now != seen {
                (seen, saves) = (now, saves + 1);
            }
        }
        pass.kill().unwrap(); // SIGKILL
        pass.wait().unwrap();
        killed_after.push(started.elapsed());
    }
    let counts = vault.services().keys.count_sealed().await.unwrap();
    let moved_before_end = counts.get(&new_key).copied().unwrap_or(0);
    println!("after {KILLS} kills ({killed_after:?}): {counts:?}");
    assert!(moved_before_end > 0, "the killed passes moved nothing: {counts:?}");
    assert!(counts.get(&old_key).copied().unwrap_or(0) > 0, "a pass finished before it was killed: {counts:?}");

    let summary = tv.run(&["keys", "reencrypt"], None).json();
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    println!(
        "summary {summary}, {} reads and {} refreshes during the pass",
        reads.load(Ordering::Relaxed),
        refreshes.load(Ordering::Relaxed)
    );
    let total = (RECORDS + live.len() + 1) as u64; // and the provider
    assert_eq!(summary["failed"], 0);
    let walked = summary["reencrypted"].as_u64().unwrap() + summary["current"].as_u64().unwrap();
    assert_eq!(walked, total, "the resumed pass walked every record once: {summary}");
    assert!(summary["reencrypted"].as_u64().unwrap() > 0, "it resumed with work left: {summary}");
    assert!(refreshes.load(Ordering::Relaxed) > 0 && reads.load(Ordering::Relaxed) > 0);

    let listed = tv.run(&["keys", "ls"], None).json();
    let by_id = |id: &str| listed.as_array().unwrap().iter().find(|k| k["id"] == id).unwrap().clone();
    assert_eq!((by_id(&old_key)["status"].clone(), by_id(&old_key)["records"].clone()), ("inactive".into(), 0.into()));
    assert_eq!(by_id(&new_key)["records"], total);

    // Retire the old key (once it has been inactive long enough for every host to notice).
    let settle = tokenvault::keys::RETIRE_AFTER.saturating_sub(rotated_at.elapsed());
    tokio::time::sleep(settle + Duration::from_millis(500)).await;
    let retired = tv.run(&["keys", "retire", &old_key], None).json();
    assert_eq!(retired["status"], "retired");
    assert_eq!(tv.run(&["keys", "retire", &new_key], None).error_kind(), "invalid-input");

    // Every record still opens, from a host opened afresh, and no refresh token was lost.
    let fresh = Vault::open(&options).await.unwrap();
    assert_eq!(fresh.services().keys.by_id(&old_key).await.unwrap(), None);
    let mut checks = tokio::task::JoinSet::new();
    for chunk in 0..8 {
        let fresh = fresh.clone();
        checks.spawn(async move {
            for i in (chunk..RECORDS).step_by(8) {
                let token = fresh.get(&fake_key(i)).await.unwrap();
                assert_eq!((token.access_token, token.refresh_token), (format!("at-{i}"), Some(format!("rt-{i}"))));
            }
        });
    }
    checks.join_all().await;
    for key in &live {
        fresh.refresh(key).await.unwrap();
    }
    let (_, _, invalid_grants) = server.refresh_stats();
    assert_eq!(invalid_grants, 0, "a rotated refresh token was burnt");

    // No key material in clear: not in any row, nor in anything the CLI printed.
    let material = vault.services().keys.active().await.unwrap().1;
    let master = std::fs::read_to_string(tv.data_dir.path().join("master.key")).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let secrets: Vec<Vec<u8>> = [old_material, material]
        .iter()
        .flat_map(|k| [k.to_vec(), b64.encode(k).into_bytes(), hex::encode(k).into_bytes()])
        .chain([master.trim().as_bytes().to_vec(), b64.decode(master.trim()).unwrap()])
        .collect();
    let stored = rows(&fresh.services().storage).await;
    for (key, (value, _)) in &stored {
        assert!(!secrets.iter().any(|s| contains(value, s)), "key material in clear in {key}");
    }
    for (args, run) in tv.runs.borrow().iter() {
        let shown = format!("{}{}", run.stdout, run.stderr);
        assert!(!secrets.iter().any(|s| contains(shown.as_bytes(), s)), "key material in the output of {args:?}");
    }

    // The trail shows each change to the keyring, and each page of the pass.
    let events = tv.audit_events();
    let trail = serde_json::to_vec(&events).unwrap();
    assert!(!secrets.iter().any(|s| contains(&trail, s)), "key material in the audit trail");
    // The CLI's changes name its user; this process's own calls name nobody.
    let by_cli = |e: &&serde_json::Value| e["actor"].as_str().is_some_and(|a| a.starts_with("cli:"));
    assert!(events.iter().filter(|e| e["action"].as_str().unwrap().starts_with("key-")).all(|e| by_cli(&e)));
    assert!(events.iter().filter(|e| e["action"] == "token-refresh").all(|e| e["actor"].is_null()));
    let count = |action: &str, outcome: &str| {
        events.iter().filter(|e| e["action"] == action && e["outcome"] == outcome).count()
    };
    assert_eq!(count("key-rotate", "ok"), 1);
    assert_eq!((count("key-retire", "ok"), count("key-retire", "invalid-input")), (1, 1));
    let pages = (total as usize).div_ceil(tokenvault::reencrypt::PAGE as usize);
    assert!(count("key-reencrypt", "ok") >= pages, "a page at a time: {} events", count("key-reencrypt", "ok"));
}

#[test]
fn keyring_failures_are_clear_errors_that_change_nothing() {
    let tv = Tokenvault::new(&[]);
    tv.run(&["provider", "add", "gh", "--template", "github", "--client-id", "Iv1.abc"], None).json();
    tv.run(&["token", "put", "acme", "alice", "gh"], Some(r#"{"access_token":"at-kept","token_type":"bearer"}"#))
        .json();
    let db = tv.data_dir.path().join("vault.db");
    let read_rows = || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let storage = StorageUrl::Sqlite(db.clone()).open().await.unwrap();
            rows(&storage).await
        })
    };
    let before = read_rows();

    // A wrong master key, given in the environment.
    let with_env = |value: &str| {
        let mut other = Tokenvault::new(&[]);
        other.args = vec!["--storage".into(), format!("sqlite://{}", db.display())];
        other.env.push((MASTER_KEY_ENV.into(), value.into()));
        other
    };
    let other_key = MasterKey::generate().unwrap();
    let refused = with_env(&other_key.to_base64()).run(&["token", "ls", "acme", "alice"], None);
    assert_eq!(refused.error_kind(), "config");
    assert!(refused.stderr.contains("does not open this vault's keyring"), "{}", refused.stderr);
    assert!(!refused.stderr.contains(&other_key.to_base64()));
    let refused = with_env("bm90IGEga2V5").run(&["token", "ls", "acme", "alice"], None);
    assert!(refused.stderr.contains("9 bytes") && !refused.stderr.contains("bm90IGEga2V5"), "{}", refused.stderr);
    assert_eq!(read_rows(), before, "a refused start wrote nothing");

    // A wrapped key altered in storage.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let storage = StorageUrl::Sqlite(db.clone()).open().await.unwrap();
        let entry = storage.get("keyring").await.unwrap().unwrap();
        let mut record: Value = serde_json::from_slice(&entry.value).unwrap();
        let wrapped = record["keys"][0]["wrapped"].as_str().unwrap().to_owned();
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut bytes = b64.decode(&wrapped).unwrap();
        bytes[14] ^= 0x40;
        record["keys"][0]["wrapped"] = b64.encode(bytes).into();
        storage.put("keyring", record.to_string().as_bytes(), Some(entry.version)).await.unwrap();
    });
    let altered = read_rows();
    let refused = tv.run(&["token", "get", "acme", "alice", "gh"], None);
    assert_eq!(refused.error_kind(), "integrity");
    assert!(refused.stderr.contains("was altered"), "{}", refused.stderr);
    assert_eq!(read_rows(), altered, "a refused start wrote nothing");

    // The keyring record lost while records remain: refused, none made.
    runtime.block_on(async {
        let storage = StorageUrl::Sqlite(db.clone()).open().await.unwrap();
        let version = storage.get("keyring").await.unwrap().unwrap().version;
        storage.delete("keyring", version).await.unwrap();
    });
    let refused = tv.run(&["provider", "ls"], None);
    assert_eq!(refused.error_kind(), "config");
    assert!(refused.stderr.contains("keyring is missing"), "{}", refused.stderr);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let storage = StorageUrl::Sqlite(db.clone()).open().await.unwrap();
        assert!(storage.get("keyring").await.unwrap().is_none(), "no keyring was made over sealed records");
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotation_through_one_serve_reaches_another_on_postgres() {
    let Ok(url) = std::env::var("TOKENVAULT_TEST_POSTGRES") else {
        eprintln!(
            "SKIPPED keys::a_rotation_through_one_serve_reaches_another_on_postgres: TOKENVAULT_TEST_POSTGRES is not set"
        );
        return;
    };
    let schema = tokenvault_tests::random_value("tv_keys_").replace('-', "_");
    let storage_url = format!("{url}?schema={schema}");
    let master = MasterKey::generate().unwrap();
    let host = |master: &MasterKey| Tokenvault::on_store(&[], &storage_url, &master.to_base64());
    let (a, b) = (host(&master), host(&master));
    let served_a = a.serve();
    let key = served_a.first_key.clone().expect("the first service prints an operator key");
    let served_b = b.serve();
    assert!(served_b.first_key.is_none(), "the second service shares the first one's keys");

    let github = serde_json::json!({"template": {"name": "github"}, "client_id": "Iv1.abc"});
    assert_eq!(served_a.call("PUT", "/v1/providers/gh", Some(&key), Some(&github)).0, 200);
    let (status, listed) = served_b.call("GET", "/v1/keys?records=true", Some(&key), None);
    assert_eq!(status, 200, "{listed}");
    assert_eq!((listed.as_array().unwrap().len(), listed[0]["records"].as_u64()), (1, Some(1)), "{listed}");
    let (status, rotated) = served_a.call("POST", "/v1/keys/rotate", Some(&key), None);
    assert_eq!(status, 200, "{rotated}");
    let new_key = rotated["id"].as_str().unwrap().to_owned();
    let rotated_at = Instant::now();

    // B seals with the new key within seconds, without a restart.
    let storage = StorageUrl::parse(&storage_url).unwrap().open().await.unwrap();
    let body = serde_json::json!({"access_token": "at-b", "token_type": "Bearer"});
    let put = "/v1/tenants/acme/users/bob/connections/gh/default";
    let deadline = Instant::now() + Duration::from_secs(10);
    let noticed_after = loop {
        let (status, answer) = served_b.call("PUT", put, Some(&key), Some(&body));
        assert_eq!(status, 200, "{answer}");
        let record = storage.list("tok/", None, 10).await.unwrap().keys[0].clone();
        let value = storage.get(&record).await.unwrap().unwrap().value;
        let sealed_with = tokenvault::keys::envelope_key_id(&value).unwrap().to_owned();
        if sealed_with == new_key {
            break rotated_at.elapsed();
        }
        assert!(Instant::now() < deadline, "B still seals with {sealed_with} after 10 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!("B sealed with the new key {noticed_after:?} after the rotation");
    let (status, answer) =
        served_a.call("GET", "/v1/tenants/acme/users/bob/connections/gh/default/token", Some(&key), None);
    assert_eq!((status, answer["access_token"].as_str()), (200, Some("at-b")));

    // Neither service showed the master key or a data key.
    let keys = StorageUrl::parse(&storage_url).unwrap();
    let mut options = Options::from_data_dir(a.data_dir.path()).unwrap();
    (options.storage, options.master_key) = (keys, tokenvault::keys::MasterKeySource::Given(master.clone()));
    let vault = Vault::open(&options).await.unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut secrets = vec![master.to_base64()];
    for id in [listed[0]["id"].as_str().unwrap(), &new_key] {
        secrets.push(b64.encode(vault.services().keys.by_id(id).await.unwrap().unwrap()));
    }
    for log in [served_a.log(), served_b.log()] {
        assert!(!secrets.iter().any(|s| log.contains(s.as_str())), "key material in a serve log");
    }

    // A host given another master key refuses to start on this store.
    let wrong = host(&MasterKey::generate().unwrap());
    assert_eq!(wrong.run(&["keys", "ls"], None).error_kind(), "config");

    for key in storage.list("", None, 1000).await.unwrap().keys {
        let version = storage.get(&key).await.unwrap().unwrap().version;
        storage.delete(&key, version).await.unwrap();
    }
}

#[cfg(unix)]
#[tokio::test]
async fn a_new_data_directory_is_private_to_its_owner() {
    use std::os::unix::fs::PermissionsExt;
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("var/tokenvault");
    let vault = Vault::open(&Options::from_data_dir(&dir).unwrap()).await.unwrap();
    vault
        .put_provider(&tokenvault::ProviderConfig {
            name: "gh".into(),
            template: Some(tokenvault::TemplateRef { name: "github".into(), tenant: None }),
            client_id: "Iv1.abc".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mode = |name: &str| std::fs::metadata(dir.join(name)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(""), 0o700, "the data directory");
    for file in ["master.key", "vault.db", "vault.db-wal"] {
        assert_eq!(mode(file), 0o600, "{file}");
    }
}
