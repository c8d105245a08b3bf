//! Encrypted links to shared storage: a PostgreSQL that accepts TLS only and a Redis that
//! serves TLS only, both with a certificate from a throwaway CA. With the CA named in the
//! URL the storage contract holds and a vault stores and reads a token; without it, or
//! under a name the certificate does not carry, the link is refused; a plain link is
//! refused by the server.

use tokenvault::keys::{MasterKey, MasterKeySource};
use tokenvault::storage::{StorageUrl, conformance};
use tokenvault::{ConnectionKey, Options, ProviderConfig, TokenGrant, Vault};
use tokenvault_tests::postgres::OwnPostgres;
use tokenvault_tests::redis::OwnRedis;
use tokenvault_tests::tls::TestCa;

/// The error opening `url` gives (it must fail).
async fn refusal(url: &str) -> String {
    match StorageUrl::parse(url).unwrap().open().await {
        Ok(_) => panic!("{url} opened"),
        Err(err) => err.to_string(),
    }
}

/// A vault over `url` stores a token and reads it back.
async fn a_vault_works_over(url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut options = Options::from_data_dir(dir.path()).unwrap();
    options.storage = StorageUrl::parse(url).unwrap();
    options.master_key = MasterKeySource::Given(MasterKey::generate().unwrap());
    let vault = Vault::open(&options).await.unwrap();
    let provider = ProviderConfig {
        name: "idp".into(),
        token_url: Some("https://idp.example/token".into()),
        client_id: "c".into(),
        ..ProviderConfig::default()
    };
    vault.put_provider(&provider).await.unwrap();
    let key = ConnectionKey::new("acme", "alice", "idp", "default");
    let access_token = tokenvault_tests::random_value("tls-at-");
    let grant = TokenGrant {
        access_token: access_token.clone(),
        token_type: "Bearer".into(),
        expires_in: Some(3600),
        refresh_token: None,
        scope: None,
    };
    vault.store(&key, &grant).await.unwrap();
    assert_eq!(vault.get(&key).await.unwrap().access_token, access_token);
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_over_tls_verifies_the_server() {
    let ca = TestCa::new();
    let Some(server) = OwnPostgres::start_tls(&ca) else {
        eprintln!("SKIPPED storage_tls::postgres_over_tls_verifies_the_server: PostgreSQL is not installed");
        return;
    };
    let ca_file = ca.ca_file.display();
    let verified = format!("{}?sslmode=require&sslrootcert={ca_file}", server.url());
    conformance::run(StorageUrl::parse(&verified).unwrap().open().await.unwrap()).await;
    a_vault_works_over(&format!("{}?sslmode=verify-full&sslrootcert={ca_file}&schema=vault", server.url())).await;

    let plain = refusal(&server.url()).await;
    assert!(plain.contains("pg_hba.conf") && plain.contains("no encryption"), "{plain}");
    let untrusted = refusal(&format!("{}?sslmode=require", server.url())).await;
    assert!(untrusted.contains("UnknownIssuer"), "{untrusted}");
    let wrong_name = refusal(&verified.replace("127.0.0.1", "localhost")).await;
    assert!(wrong_name.contains("not valid for name \"localhost\""), "{wrong_name}");
    let prefer = refusal(&format!("{}?sslmode=prefer", server.url())).await;
    assert!(prefer.contains("sslmode=prefer is not supported"), "{prefer}");
    let missing = refusal(&format!("{}?sslmode=require&sslrootcert=/nonexistent/ca.pem", server.url())).await;
    assert!(missing.contains("/nonexistent/ca.pem"), "{missing}");
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_over_tls_verifies_the_server() {
    let ca = TestCa::new();
    let Some(server) = OwnRedis::start_tls(&ca) else {
        eprintln!("SKIPPED storage_tls::redis_over_tls_verifies_the_server: redis-server is not installed");
        return;
    };
    let url = server.url();
    assert!(url.starts_with("rediss://"), "{url}");
    let verified = format!("{url}?sslrootcert={}", ca.ca_file.display());
    conformance::run(StorageUrl::parse(&format!("{verified}&namespace=tls")).unwrap().open().await.unwrap()).await;
    a_vault_works_over(&format!("{verified}&namespace=vault")).await;

    let untrusted = refusal(&url).await;
    assert!(untrusted.starts_with("storage unavailable: redis"), "{untrusted}");
    let wrong_name = refusal(&verified.replace("127.0.0.1", "localhost")).await;
    assert!(wrong_name.starts_with("storage unavailable: redis"), "{wrong_name}");
    let plain = refusal(&format!("redis://127.0.0.1:{}", server.port)).await;
    assert!(plain.starts_with("storage unavailable: redis"), "{plain}");
    let sslrootcert_without_tls = refusal(&format!("redis://127.0.0.1:{}?sslrootcert=/x.pem", server.port)).await;
    assert!(sslrootcert_without_tls.contains("needs a rediss:// URL"), "{sslrootcert_without_tls}");
}
