//! A call whose audit event cannot be written, on a real full disk: refused by default (a
//! storage error, and nothing the component would have returned is handed out), served
//! on when the operator chose `audit_on_failure = "serve"`, with the loss counted; and
//! the extra audit file never holds a partial line.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use serde_json::Value;
use tokenvault::audit::OnAuditFailure;
use tokenvault::{ConnectionKey, Options, Vault};
use tokenvault_tests::{OAuthServer, Tokenvault, grant_of, open_vault, provider_config, tokenvault_bin};

fn key() -> ConnectionKey {
    ConnectionKey::new("acme", "alice", "idp", "default")
}

/// A vault on `dir` whose extra audit file is `/dev/full`, which fails every write with ENOSPC.
async fn on_a_full_disk(dir: &Path, server: &OAuthServer, on_failure: OnAuditFailure) -> Vault {
    let mut options = Options::from_data_dir(dir).unwrap();
    options.allow_outbound(&[server.origin()]).unwrap();
    options.audit_log = Some("/dev/full".into());
    options.audit_on_failure = on_failure;
    Vault::open(&options).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_that_cannot_be_audited_is_refused_unless_the_operator_serves_on() {
    let server = OAuthServer::start(3600);
    let dir = tempfile::tempdir().unwrap();
    let vault = open_vault(dir.path(), &[&server.origin()]).await;
    vault.put_provider(&provider_config(&server, "idp", "vault-basic")).await.unwrap();
    let response = server.grant("vault-basic");
    let access = response["access_token"].as_str().unwrap().to_owned();
    vault.store(&key(), &grant_of(&response)).await.unwrap();
    drop(vault);

    let vault = on_a_full_disk(dir.path(), &server, OnAuditFailure::Refuse).await;
    let err = vault.get(&key()).await.unwrap_err();
    let text = err.to_string();
    assert_eq!(err.kind(), "storage", "{text}");
    assert!(text.contains("audit log") && text.contains("nothing was handed out"), "{text}");
    assert!(!text.contains(&access));
    // A session's instance, and a warm one, is stopped at the event the same way, and the
    // next call gets a fresh one.
    let mut session = vault.session("acme").await.unwrap();
    for _ in 0..2 {
        assert_eq!(session.get(&key()).await.unwrap_err().kind(), "storage");
        assert_eq!(vault.get_warm(&key()).await.unwrap_err().kind(), "storage", "and a warm instance's");
    }
    assert_eq!(vault.services().audit.events_lost(), 0, "refused, not lost");
    drop((session, vault));

    let vault = on_a_full_disk(dir.path(), &server, OnAuditFailure::Serve).await;
    assert_eq!(vault.get(&key()).await.unwrap().access_token, access);
    assert_eq!(vault.services().audit.events_lost(), 1);
    drop(vault);

    // Space again: served and recorded.
    let vault = open_vault(dir.path(), &[&server.origin()]).await;
    assert_eq!(vault.get(&key()).await.unwrap().access_token, access);
}

#[test]
fn a_write_cut_short_by_a_full_disk_leaves_no_partial_line() {
    let server = OAuthServer::start(3600);
    let mut tv = Tokenvault::new(&[&server.origin()]);
    std::fs::write(tv.data_dir.path().join("tokenvault.toml"), "audit_log = \"audit.jsonl\"\n").unwrap();
    tv.env.push(("IDP_SECRET".into(), server.basic_secret.clone()));
    let token_url = server.token_url();
    let provider = ["provider", "add", "idp", "--token-url", &token_url, "--client-id", "vault-basic"];
    tv.run(&[&provider[..], &["--client-secret-env", "IDP_SECRET"]].concat(), None).json();
    let response = server.grant("vault-basic");
    let access = response["access_token"].as_str().unwrap();
    tv.run(&["token", "put", "acme", "alice", "idp"], Some(&response.to_string())).json();
    assert_eq!(tv.run(&["token", "get", "acme", "alice", "idp"], None).json()["access_token"], access);

    // Grow the log past every other file the command writes (the database, its journal),
    // then let files grow only 20 bytes further: the next event's line is cut short.
    let log = tv.data_dir.path().join("audit.jsonl");
    let line = std::fs::read_to_string(&log).unwrap().lines().last().unwrap().to_owned() + "\n";
    let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    while file.metadata().unwrap().len() < 4 << 20 {
        file.write_all(line.repeat(1000).as_bytes()).unwrap();
    }
    let full = file.metadata().unwrap().len();
    let limited = Command::new("sh")
        // Writes past the limit fail with EFBIG (SIGXFSZ, ignored, would kill the process).
        .args(["-c", "trap '' XFSZ; exec \"$@\"", "sh", "prlimit"])
        .arg(format!("--fsize={}", full + 20))
        .arg(tokenvault_bin())
        .arg("--data-dir")
        .arg(tv.data_dir.path())
        .args(&tv.args)
        .args(["token", "get", "acme", "alice", "idp"])
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&limited.stdout), String::from_utf8_lossy(&limited.stderr));
    assert!(!limited.status.success(), "{stdout}");
    assert!(stderr.contains("storage:") && stderr.contains("audit log"), "{stderr}");
    assert!(!stdout.contains(access) && !stderr.contains(access), "nothing was handed out");
    assert_eq!(std::fs::metadata(&log).unwrap().len(), full, "the cut line was taken back");

    assert_eq!(tv.run(&["token", "get", "acme", "alice", "idp"], None).json()["access_token"], access);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.ends_with('\n'));
    for line in text.lines() {
        serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("a partial line ({e}): {line}"));
    }
    assert!(text.lines().last().unwrap().contains("token-get"));
}
