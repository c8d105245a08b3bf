//! The CLI's contract without a provider: help, error lines, input checks.

use std::process::{Command, Output, Stdio};

fn tokenvault(data_dir: &std::path::Path, args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_tokenvault"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env_remove("TOKENVAULT_LOG")
        .env_remove("TOKENVAULT_STORAGE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn error_line(output: &Output) -> String {
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr.clone()).unwrap();
    assert_eq!(stderr.lines().count(), 1, "one line on stderr: {stderr:?}");
    stderr.trim_end().to_owned()
}

#[test]
fn help_names_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let help = String::from_utf8(tokenvault(dir.path(), &["--help"], "").stdout).unwrap();
    for command in ["provider", "token", "connect", "link", "open-link", "revoke-all", "demo"] {
        assert!(help.contains(command), "{command} missing from --help");
    }
    let token_help = String::from_utf8(tokenvault(dir.path(), &["token", "--help"], "").stdout).unwrap();
    for command in ["put", "get", "refresh", "rm", "ls"] {
        assert!(token_help.contains(command), "token {command} missing");
    }
}

#[test]
fn errors_are_one_line_starting_with_their_kind() {
    let dir = tempfile::tempdir().unwrap();
    let line = error_line(&tokenvault(dir.path(), &["token", "get", "acme", "alice", "github"], ""));
    assert!(line.starts_with("not-found: "), "{line}");
    let line = error_line(&tokenvault(
        dir.path(),
        &["provider", "add", "bad name", "--token-url", "https://x/t", "--client-id", "c"],
        "",
    ));
    assert!(line.starts_with("invalid-input: "), "{line}");
    let line = error_line(&tokenvault(
        dir.path(),
        &[
            "provider",
            "add",
            "p",
            "--token-url",
            "https://x/t",
            "--client-id",
            "c",
            "--client-secret-env",
            "TOKENVAULT_TEST_UNSET",
        ],
        "",
    ));
    assert!(line.starts_with("invalid-input: environment variable TOKENVAULT_TEST_UNSET"), "{line}");
    let line = error_line(&tokenvault(dir.path(), &["--allow-outbound", "not a url", "provider", "ls"], ""));
    assert!(line.starts_with("config: "), "{line}");
    let line = error_line(&tokenvault(dir.path(), &["token", "put", "acme", "alice", "github"], "{not json"));
    assert!(line.starts_with("invalid-input: token response"), "{line}");
    // Link codes are base64url, so one may begin with `-`: it is still the code.
    let line = error_line(&tokenvault(dir.path(), &["open-link", "-Mx2_unknown-link"], ""));
    assert!(line.starts_with("invalid-input: "), "{line}");
}

#[test]
fn demo_runs_on_the_embedded_default_and_shows_no_plaintext_in_storage() {
    let dir = tempfile::tempdir().unwrap();
    let output = tokenvault(&dir.path().join("data"), &["demo"], "");
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("access token visible in the stored bytes: false"), "{stdout}");
    assert!(stdout.contains("egress-denied"), "{stdout}");
    assert!(dir.path().join("data/vault.db").exists());
    // A second run over the same data directory works too (the keyring is reused).
    assert!(tokenvault(&dir.path().join("data"), &["demo"], "").status.success());
}
