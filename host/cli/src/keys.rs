//! `tokenvault keys …` and `tokenvault master-key …`: the keyring's data keys (list,
//! rotate, re-encrypt, retire) and the master key that wraps them.

use std::path::PathBuf;

use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tokenvault::keys::{MasterKey, MasterKeySource, rotate_data_dir_master};
use tokenvault::{Error, Result, Vault, reencrypt};

use crate::print_json;

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Each data key: id, creation time (Unix seconds), status (active, inactive,
    /// retired) and how many sealed records name it. Reads every sealed record.
    Ls,
    /// Make a new data key active for new writes, on every host sharing the storage (each
    /// notices within seconds, without a restart). Records keep their key until
    /// `keys reencrypt` moves them.
    Rotate,
    /// Move every record sealed under an inactive key to the active one, while `serve`
    /// keeps serving (a record changed meanwhile is read again, never overwritten).
    /// Interrupted, it resumes where it stopped when run again. Shows progress on stderr
    /// when it is a terminal; prints {"reencrypted", "current", "failed"}.
    Reencrypt,
    /// Destroy an inactive key's material. Refused while any sealed record names it (run
    /// `keys reencrypt` first) and for a short while after it was active.
    Retire { id: String },
}

#[derive(Subcommand)]
pub enum MasterKeyCommand {
    /// Write a new random master key to FILE (mode 0600) and print its id: give it to
    /// every host sharing a store, as master_key_file or TOKENVAULT_MASTER_KEY.
    New { file: PathBuf },
    /// Wrap the data keys under a new master key; no record is touched. With the data
    /// directory's master.key, that file is replaced. Otherwise the new key goes to
    /// --new-key-file (or is read from it, when the file exists); point every host there.
    Rotate {
        #[arg(long, value_name = "FILE")]
        new_key_file: Option<PathBuf>,
    },
}

/// `master-key new` needs no vault: a shared store has no master key to open with yet.
pub fn new_master_key(file: &std::path::Path) -> Result<()> {
    let key = MasterKey::generate()?;
    key.write_new(file)?;
    print_json(&json!({ "master_key": key.id(), "file": file }));
    Ok(())
}

pub async fn keys(vault: &Vault, command: KeysCommand) -> Result<()> {
    let (keys, audit) = (&vault.services().keys, &vault.audit());
    match command {
        KeysCommand::Ls => print_json(&keys.list(Some(&keys.count_sealed().await?)).await?),
        KeysCommand::Rotate => print_json(&keys.rotate(audit).await?),
        KeysCommand::Reencrypt => {
            let bar = ProgressBar::new(reencrypt::sealed_records(vault).await?);
            bar.set_style(
                ProgressStyle::with_template("{bar:40} {pos}/{len} records, {per_sec}, {eta} left")
                    .expect("a valid template"),
            );
            let summary = reencrypt::run(vault, |done| bar.set_position(done.walked())).await;
            bar.finish_and_clear();
            print_json(&summary?);
        }
        KeysCommand::Retire { id } => print_json(&keys.retire(&id, audit).await?),
    }
    Ok(())
}

pub async fn master_key(vault: &Vault, command: MasterKeyCommand) -> Result<()> {
    let MasterKeyCommand::Rotate { new_key_file } = command else {
        unreachable!("`master-key new` runs before the vault opens")
    };
    let (keys, audit) = (&vault.services().keys, &vault.audit());
    let previous = keys.master_key_id();
    let (new, data_keys, file) = match (keys.source(), new_key_file) {
        (MasterKeySource::DataDir(path), None) => {
            let (new, count) = rotate_data_dir_master(keys, path, audit).await?;
            (new, count, path.clone())
        }
        (_, Some(file)) => {
            let new = if file.exists() {
                MasterKey::read_file(&file)?
            } else {
                let new = MasterKey::generate()?;
                new.write_new(&file)?;
                new
            };
            if new.id() == previous {
                return Err(Error::invalid_input(format!("{} holds the current master key", file.display())));
            }
            let count = keys.rewrap(&new, audit).await?;
            (new, count, file)
        }
        (source, None) => {
            return Err(Error::invalid_input(format!(
                "the master key comes from {}: name where the new one goes with --new-key-file FILE",
                source.describe()
            )));
        }
    };
    print_json(&json!({ "master_key": new.id(), "previous": previous, "data_keys": data_keys, "file": file }));
    Ok(())
}
