//! Storage faults around a refresh, against a real OAuth server (which rotates refresh
//! tokens): the backend failing between the provider's answer and the save, and a version
//! conflict on the save.

use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;

use tokenvault::audit::{AuditSink, Trail};
use tokenvault::keys::{Keys, MasterKey, MasterKeySource};
use tokenvault::storage::SqliteStorage;
use tokenvault::{ConnectionKey, Services, Vault};
use tokenvault_tests::{FlakyStorage, OAuthServer, grant_of, provider_config};

async fn setup(server: &OAuthServer, dir: &std::path::Path) -> (Vault, Arc<FlakyStorage>, serde_json::Value) {
    let storage = Arc::new(FlakyStorage {
        inner: Arc::new(SqliteStorage::open(&dir.join("vault.db")).unwrap()),
        fail_token_writes: false.into(),
        race_next_token_write: false.into(),
        fail_commits: false.into(),
    });
    let services = Services {
        storage: storage.clone(),
        keys: Arc::new(
            Keys::open(storage.clone(), MasterKeySource::Given(MasterKey::generate().unwrap()), None, true)
                .await
                .unwrap(),
        ),
        audit: Arc::new(Trail::new(storage.clone())),
        clock: Default::default(),
    };
    let egress =
        tokenvault::http::EgressPolicy { allowed: vec![server.origin().parse().unwrap()], ..Default::default() };
    let vault = Vault::with_services(services, egress, Default::default(), None).unwrap();
    vault.put_provider(&provider_config(server, "idp", "vault-basic")).await.unwrap();
    let response = server.grant("vault-basic");
    vault.store(&key(), &grant_of(&response)).await.unwrap();
    (vault, storage, response)
}

fn key() -> ConnectionKey {
    ConnectionKey::new("acme", "alice", "idp", "default")
}

#[tokio::test(flavor = "multi_thread")]
async fn storage_lost_after_the_provider_answered_is_a_storage_error_and_nothing_is_overwritten() {
    let server = OAuthServer::start(600);
    let dir = tempfile::tempdir().unwrap();
    let (vault, storage, response) = setup(&server, dir.path()).await;

    storage.fail_token_writes.store(true, SeqCst);
    let err = vault.refresh(&key()).await.unwrap_err();
    assert_eq!(err.kind(), "storage", "{err}");
    assert!(err.to_string().contains("could not be saved"), "{err}");
    assert_eq!(server.refresh_stats(), (1, 0, 0), "the provider did refresh (and rotate)");

    // What remains: the previous record, intact and readable, its access token still valid.
    storage.fail_token_writes.store(false, SeqCst);
    let kept = vault.get(&key()).await.unwrap();
    assert_eq!(kept.access_token, response["access_token"].as_str().unwrap());
    assert_eq!(kept.refresh_token.as_deref(), response["refresh_token"].as_str());
    // This provider rotates, so the kept refresh token was spent by the lost refresh: the
    // connection reports that it needs reconnecting instead of failing obscurely.
    assert_eq!(vault.refresh(&key()).await.unwrap_err().kind(), "reconnect-required");
    assert_eq!(server.refresh_stats(), (1, 1, 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_the_trail_cannot_record_is_refused_and_nothing_is_handed_out() {
    let server = OAuthServer::start(600);
    let dir = tempfile::tempdir().unwrap();
    let (vault, storage, response) = setup(&server, dir.path()).await;
    let access = response["access_token"].as_str().unwrap();

    storage.fail_commits.store(true, SeqCst);
    let err = vault.get(&key()).await.unwrap_err();
    assert_eq!(err.kind(), "storage", "{err}");
    assert!(err.to_string().contains("audit") && err.to_string().contains("nothing was handed out"), "{err}");
    assert!(!err.to_string().contains(access));

    storage.fail_commits.store(false, SeqCst);
    assert_eq!(vault.get(&key()).await.unwrap().access_token, access);
    let trail = Trail::new(storage.clone());
    let verified = trail.verify(|_, _| {}).await.unwrap();
    assert_eq!(verified.broken, None);
    // The provider's registration, the store and the get that went through; not the refused one.
    let newest = tokenvault::audit::AuditQuery { filter: Default::default(), after_ms: None, cursor: None, limit: 10 };
    let actions: Vec<String> =
        trail.read(&newest).await.unwrap().unwrap().events.into_iter().map(|e| e.record.action).collect();
    assert_eq!(actions, ["token-get", "token-store", "provider-put"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_version_conflict_on_save_re_reads_and_keeps_the_rotated_token() {
    let server = OAuthServer::start(600);
    let dir = tempfile::tempdir().unwrap();
    let (vault, storage, response) = setup(&server, dir.path()).await;

    storage.race_next_token_write.store(true, SeqCst);
    let renewed = vault.refresh(&key()).await.unwrap();
    assert!(!storage.race_next_token_write.load(SeqCst), "the race was not staged");
    assert_ne!(renewed.refresh_token.as_deref(), response["refresh_token"].as_str());
    // The rotated token was saved despite the conflict, and works.
    assert_eq!(vault.get(&key()).await.unwrap().refresh_token, renewed.refresh_token);
    vault.refresh(&key()).await.unwrap();
    assert_eq!(server.refresh_stats(), (2, 0, 0));
}
