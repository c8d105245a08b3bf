//! The sandbox bounds a component gone wrong: a call that runs past its deadline, grows
//! past its memory cap or overflows its stack fails alone, with a `sandbox` error, and the
//! host goes on serving other calls, during and after.
//!
//! The misbehaving component is `tests/sandbox-guest`, built for these tests only: the
//! product component has no way to be told to misbehave.

use std::sync::Arc;
use std::time::Duration;

use tokenvault::audit::MemoryAudit;
use tokenvault::keys::{Keys, MasterKey, MasterKeySource};
use tokenvault::storage::MemoryStorage;
use tokenvault::{ConnectionKey, Error, SandboxLimits, Services, TokenGrant, Vault, VaultError};

const SANDBOX_COMPONENT: &[u8] = include_bytes!(env!("TOKENVAULT_SANDBOX_COMPONENT_PATH"));

/// Guards against a sandbox that fails to stop a call: the test fails instead of hanging.
const NEVER: Duration = Duration::from_secs(120);

async fn sandboxed_vault(limits: SandboxLimits) -> Vault {
    let storage: Arc<dyn tokenvault::storage::Storage> = Arc::new(MemoryStorage::default());
    let master = MasterKeySource::Given(MasterKey::generate().unwrap());
    let services = Services {
        keys: Arc::new(Keys::open(storage.clone(), master, None, true).await.unwrap()),
        storage,
        audit: Arc::new(MemoryAudit::default()),
        clock: Default::default(),
    };
    Vault::with_component(SANDBOX_COMPONENT, services, Default::default(), limits, None).unwrap()
}

fn key(user: &str) -> ConnectionKey {
    ConnectionKey::new("acme", user, "idp", "default")
}

async fn store_for(vault: &Vault, user: &str) {
    let grant = TokenGrant {
        access_token: format!("{user}-token"),
        token_type: "Bearer".into(),
        expires_in: None,
        refresh_token: None,
        scope: None,
    };
    vault.store(&key(user), &grant).await.unwrap();
}

async fn alice_is_served(vault: &Vault) {
    let token = vault.get(&key("alice")).await.expect("a well-behaved call is served");
    assert_eq!(token.access_token, "alice-token");
}

fn expect_sandbox_error(result: tokenvault::Result<tokenvault::TokenSet>, what: &str) -> String {
    match result {
        Err(Error::Sandbox(message)) => message,
        Err(other) => panic!("{what}: expected a sandbox error, got {other:?}"),
        Ok(_) => panic!("{what}: the call succeeded"),
    }
}

// One thread on purpose: the spinning call and the well-behaved ones share it, so the
// well-behaved ones can only be served if the sandbox makes a busy guest yield.
#[tokio::test(flavor = "current_thread")]
async fn a_call_past_its_deadline_is_stopped_and_others_are_served_meanwhile() {
    let limits = SandboxLimits { deadline: Duration::from_secs(3), ..Default::default() };
    let vault = sandboxed_vault(limits).await;
    store_for(&vault, "alice").await;

    let spinning = tokio::spawn({
        let vault = vault.clone();
        async move { vault.get(&key("spin")).await }
    });
    tokio::task::yield_now().await;
    for _ in 0..5 {
        alice_is_served(&vault).await;
    }
    assert!(!spinning.is_finished(), "the spinning call ended before the others were served");

    let result = tokio::time::timeout(NEVER, spinning).await.expect("the deadline stops the call").unwrap();
    let message = expect_sandbox_error(result, "spin");
    assert!(message.contains("deadline"), "{message}");
    alice_is_served(&vault).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_past_its_memory_cap_fails_alone_and_its_memory_is_reclaimed() {
    // Two pool slots: if a failed call kept its instance or memory, the third would fail.
    let limits = SandboxLimits { memory_bytes: 16 << 20, max_instances: 2, ..Default::default() };
    let vault = sandboxed_vault(limits).await;
    store_for(&vault, "alice").await;

    for round in 0..5 {
        let result = tokio::time::timeout(NEVER, vault.get(&key("hog"))).await.unwrap();
        let message = expect_sandbox_error(result, &format!("hog, round {round}"));
        assert!(message.contains("memory") || message.contains("grow"), "{message}");
        alice_is_served(&vault).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_that_overflows_its_stack_fails_alone() {
    let vault = sandboxed_vault(SandboxLimits::default()).await;
    store_for(&vault, "alice").await;

    let result = tokio::time::timeout(NEVER, vault.get(&key("deep"))).await.unwrap();
    let message = expect_sandbox_error(result, "deep");
    // Rust keeps its stack in linear memory: overflowing it is a memory fault, a trap.
    assert!(message.contains("trapped"), "{message}");
    alice_is_served(&vault).await;
}

// The host grants no environment, arguments, files, stdin or sockets (see `tokenvault
// inspect`); a component that tries them anyway gets nothing, while this process has
// all of them.
#[tokio::test(flavor = "multi_thread")]
async fn a_component_that_reaches_for_env_files_stdin_or_sockets_gets_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("host-secret.txt");
    std::fs::write(&secret_file, "host-only").unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    assert!(std::env::vars().count() > 0 && std::fs::read(&secret_file).is_ok(), "the host itself has both");

    let vault = sandboxed_vault(SandboxLimits::default()).await;
    let probe =
        ConnectionKey::new("acme", "snoop", listener.local_addr().unwrap().to_string(), secret_file.to_str().unwrap());
    let report = vault.get(&probe).await.unwrap().access_token;
    let lines: Vec<&str> = report.lines().collect();
    let line = |what: &str| *lines.iter().find(|l| l.starts_with(what)).unwrap_or_else(|| panic!("{what}: {report}"));
    assert_eq!(line("environment:"), "environment: 0 variables []");
    assert_eq!(line("arguments:"), "arguments: 0 []");
    // wasi-libc's default when the host names none; no directory is open behind it.
    assert_eq!(line("working directory:"), "working directory: got /");
    assert!(line("file:").contains("refused"), "{report}");
    assert!(line("root directory:").contains("refused"), "{report}");
    assert_eq!(line("stdin:"), "stdin: got 0 bytes");
    assert!(line("socket:").contains("refused"), "{report}");
    assert!(listener.accept().is_err(), "no connection reached the listener");
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_beyond_the_pool_wait_for_a_slot_instead_of_failing() {
    let vault = sandboxed_vault(SandboxLimits { max_instances: 2, ..Default::default() }).await;
    store_for(&vault, "slow").await;
    store_for(&vault, "alice").await;
    // Slow calls hold their slots; a crowd of quick ones turns slots over as fast as it can
    // (a permit released before its slot was back in the pool failed such calls).
    let calls: Vec<_> = (0..208)
        .map(|i| {
            let vault = vault.clone();
            let user = if i < 8 { "slow" } else { "alice" };
            tokio::spawn(async move { (user, vault.get(&key(user)).await) })
        })
        .collect();
    for call in calls {
        let (user, result) = tokio::time::timeout(NEVER, call).await.unwrap().unwrap();
        assert_eq!(result.unwrap().access_token, format!("{user}-token"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_keeps_one_instance_with_a_fresh_deadline_per_call_and_replaces_it_after_a_trap() {
    let limits = SandboxLimits { max_instances: 1, deadline: Duration::from_secs(1), ..Default::default() };
    let vault = sandboxed_vault(limits).await;
    store_for(&vault, "slow").await;
    store_for(&vault, "alice").await;

    let mut session = vault.session("acme").await.unwrap();
    // The session holds the only slot: a one-off call waits for it.
    let waiting = tokio::time::timeout(Duration::from_millis(300), vault.get(&key("alice"))).await;
    assert!(waiting.is_err(), "a call got an instance while the session held the only one");
    for _ in 0..3 {
        assert_eq!(session.get(&key("slow")).await.unwrap().access_token, "slow-token");
        tokio::time::sleep(Duration::from_millis(500)).await; // 1.5 s in all: past one deadline
    }

    let message = expect_sandbox_error(session.get(&key("spin")).await, "spin in a session");
    assert!(message.contains("deadline"), "{message}");
    assert_eq!(session.get(&key("alice")).await.unwrap().access_token, "alice-token", "a fresh instance serves");

    let other = session.get(&ConnectionKey::new("globex", "alice", "idp", "default")).await;
    assert!(matches!(other, Err(Error::Vault(VaultError::InvalidInput(_)))), "{other:?}");
    drop(session);
    alice_is_served(&vault).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fresh_instance_in_a_reused_slot_holds_nothing_of_the_previous_call() {
    // One slot, so every call reuses it; the pool keeps its pages resident between calls
    // where the kernel allows (runtime.rs): the reset must still leave nothing behind.
    let vault = sandboxed_vault(SandboxLimits { max_instances: 1, ..Default::default() }).await;
    let remember = |tenant: &str| ConnectionKey::new(tenant, "remember", "idp", "default");
    for tenant in ["acme", "globex", "acme"] {
        let token = vault.get(&remember(tenant)).await.unwrap();
        assert_eq!(token.access_token, "residue: []", "a call in {tenant}'s fresh instance");
    }
    // The probe does see marks where they remain: in one instance, across its calls.
    let mut session = vault.session("acme").await.unwrap();
    assert_eq!(session.get(&remember("acme")).await.unwrap().access_token, "residue: []");
    assert_eq!(session.get(&remember("acme")).await.unwrap().access_token, "residue: [acme]");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_warm_instance_serves_later_calls_of_its_own_tenant_only() {
    let limits =
        SandboxLimits { max_instances: 4, warm_instances: 2, deadline: Duration::from_secs(1), ..Default::default() };
    let vault = sandboxed_vault(limits).await;
    let residue = async |tenant: &str| {
        vault.get_warm(&ConnectionKey::new(tenant, "remember", "idp", "default")).await.unwrap().access_token
    };
    // A tenant's first call gets a fresh instance, its next ones the instance it left idle;
    // never another tenant's.
    assert_eq!(residue("acme").await, "residue: []");
    assert_eq!(residue("globex").await, "residue: []");
    assert_eq!(residue("acme").await, "residue: [acme]");
    assert_eq!(residue("globex").await, "residue: [globex]");
    // Two are kept: a third tenant's instance pushes out the one used least recently.
    assert_eq!(residue("initech").await, "residue: []");
    assert_eq!(residue("acme").await, "residue: []", "acme's idle instance was dropped");
    assert_eq!(residue("initech").await, "residue: [initech]");
    // A call that traps takes its instance with it.
    let spin = ConnectionKey::new("acme", "spin", "idp", "default");
    let spun = tokio::time::timeout(NEVER, vault.get_warm(&spin)).await.unwrap();
    let message = expect_sandbox_error(spun, "spin in a warm instance");
    assert!(message.contains("deadline"), "{message}");
    assert_eq!(residue("acme").await, "residue: []", "the trapped instance is not kept");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_warm_instance_lives_no_longer_than_the_hosts_copy_of_the_keyring() {
    // An instance keeps the data keys it opened records with: once the keyring's copy
    // would have been read again (a key retired since), the instance is not reused.
    let vault = sandboxed_vault(SandboxLimits { max_instances: 4, warm_instances: 2, ..Default::default() }).await;
    let residue =
        async || vault.get_warm(&ConnectionKey::new("acme", "remember", "idp", "default")).await.unwrap().access_token;
    assert_eq!(residue().await, "residue: []");
    assert_eq!(residue().await, "residue: [acme]");
    tokio::time::sleep(tokenvault::keys::RELOAD_AFTER).await;
    assert_eq!(residue().await, "residue: []", "an instance older than the keyring's copy was reused");
}
