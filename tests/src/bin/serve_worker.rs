//! `tokenvault serve` in a process of its own, for the multi-process tests, behind the
//! protocol of `vault_worker`: starts `serve` on the data directory and storage given,
//! makes an API key for the tenant, reads the connection once over HTTP, says `ready`, waits
//! for a line on stdin, fires N concurrent `GET …/token` requests (a thread each) and prints
//! each outcome on a line (the access token, or `error <kind>`), then stops `serve`.
//!
//! usage: serve_worker DATA_DIR STORAGE_URL ALLOWED_ORIGIN TENANT USER PROVIDER GETS

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [data_dir, storage, origin, tenant, user, provider, gets] = args.as_slice() else {
        eprintln!("usage: serve_worker DATA_DIR STORAGE_URL ALLOWED_ORIGIN TENANT USER PROVIDER GETS");
        std::process::exit(2);
    };
    // The CLI is built beside this binary.
    let cli = std::env::current_exe().unwrap().with_file_name(format!("tokenvault{}", std::env::consts::EXE_SUFFIX));
    let tokenvault = || {
        let mut command = Command::new(&cli);
        command.args(["--data-dir", data_dir, "--storage", storage, "--allow-outbound", origin]);
        command
    };
    let made = tokenvault().args(["apikey", "create", tenant]).output().expect("run tokenvault apikey create");
    assert!(made.status.success(), "apikey create: {}", String::from_utf8_lossy(&made.stderr));
    let made: serde_json::Value = serde_json::from_slice(&made.stdout).expect("apikey create prints JSON");
    let bearer = format!("Bearer {}", made["key"].as_str().expect("a key"));

    let mut serve = tokenvault()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_remove("TOKENVAULT_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run tokenvault serve");
    let mut printed = BufReader::new(serve.stdout.take().unwrap()).lines();
    let base = loop {
        let line = printed.next().expect("serve stopped before it served").expect("serve's output");
        if let Some(url) = tokenvault_tests::served_url(&line) {
            break url;
        }
    };
    std::thread::spawn(move || printed.for_each(drop)); // keep serve's stdout drained
    let url = format!("{base}/v1/tenants/{tenant}/users/{user}/connections/{provider}/default/token");
    let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
    let get = || {
        let mut response = agent.get(&url).header("authorization", &bearer).call().expect("GET the token");
        let body: serde_json::Value = response.body_mut().read_json().expect("a JSON answer");
        match body["access_token"].as_str() {
            Some(token) => token.to_owned(),
            None => format!("error {}", body["error"].as_str().unwrap_or("unknown")),
        }
    };
    let warm = get();
    assert!(!warm.starts_with("error"), "the warm-up get: {warm}");

    println!("ready");
    let mut go = String::new();
    std::io::stdin().lock().read_line(&mut go).expect("wait for go");

    let gets: usize = gets.parse().expect("GETS is a number");
    let outcomes: Vec<String> = std::thread::scope(|s| {
        (0..gets).map(|_| s.spawn(get)).collect::<Vec<_>>().into_iter().map(|t| t.join().unwrap()).collect()
    });
    for outcome in outcomes {
        println!("{outcome}");
    }
    serve.kill().ok();
    serve.wait().ok();
}
