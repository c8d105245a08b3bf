//! A host in a process of its own, for the multi-process tests: opens the vault over
//! shared storage, reads the connection once (so the storage's cache, where the backend has
//! one, holds the record as a running service's would), says `ready`, waits for a line on stdin, fires N concurrent `get`s of one
//! connection and prints each outcome on a line (the access token, or `error <kind>`).
//!
//! usage: vault_worker DATA_DIR STORAGE_URL ALLOWED_ORIGIN TENANT USER PROVIDER GETS

use std::io::BufRead;

use tokenvault::storage::StorageUrl;
use tokenvault::{ConnectionKey, Options, Vault};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [data_dir, storage, origin, tenant, user, provider, gets] = args.as_slice() else {
        eprintln!("usage: vault_worker DATA_DIR STORAGE_URL ALLOWED_ORIGIN TENANT USER PROVIDER GETS");
        std::process::exit(2);
    };
    let mut options = Options::from_data_dir(data_dir.as_ref()).expect("options");
    options.storage = StorageUrl::parse(storage).expect("storage URL");
    options.allow_outbound(std::slice::from_ref(origin)).expect("origin");
    let vault = Vault::open(&options).await.expect("open the vault");
    let key = ConnectionKey::new(tenant, user, provider, "default");
    vault.get(&key).await.expect("the warm-up get");

    println!("ready");
    let mut go = String::new();
    std::io::stdin().lock().read_line(&mut go).expect("wait for go");

    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..gets.parse::<usize>().expect("GETS is a number") {
        let (vault, key) = (vault.clone(), key.clone());
        calls.spawn(async move { vault.get(&key).await });
    }
    for outcome in calls.join_all().await {
        match outcome {
            Ok(token) => println!("{}", token.access_token),
            Err(err) => println!("error {}", err.kind()),
        }
    }
}
