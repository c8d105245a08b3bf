//! The re-encryption pass after a key rotation: the component re-seals a page of records at
//! a time ([`Vault::reencrypt_page`]; plaintext stays in the sandbox), and the pass keeps
//! its cursor and counts in storage after every page, so a pass that was interrupted
//! (Ctrl-C, SIGKILL, a crashed host) resumes where it stopped when run again. Records are
//! written by compare-and-swap, so `serve` keeps serving and refreshing meanwhile.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::vault::Vault;
/// Where the pass keeps its place (a record whose version moves with each page).
pub use tokenvault_model::storage::REENCRYPT_PROGRESS_KEY;
use tokenvault_model::storage::{SEALED_PREFIXES, StorageError};

/// Records per step: one sandbox call each, well within its deadline on any store.
pub const PAGE: u32 = 200;

/// What a pass has done so far, or did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReencryptSummary {
    /// Re-sealed under the active key.
    pub reencrypted: u64,
    /// Found already under the active key.
    pub current: u64,
    /// Did not open (altered, or under a key the keyring lacks); left as they were.
    pub failed: u64,
}

impl ReencryptSummary {
    /// Records the pass has walked.
    pub fn walked(&self) -> u64 {
        self.reencrypted + self.current + self.failed
    }
}

/// The progress record: which key the pass moves records to, where it is, what it did.
#[derive(Serialize, Deserialize)]
struct Progress {
    active: String,
    cursor: Option<String>,
    done: ReencryptSummary,
}

/// Move every sealed record to the active key, resuming an interrupted pass; `on_step`
/// sees the running counts after each page. A rotation during the pass starts it over
/// (the records it moved are then under a key no longer active).
pub async fn run(vault: &Vault, mut on_step: impl FnMut(&ReencryptSummary)) -> Result<ReencryptSummary> {
    let storage = &vault.services().storage;
    let (mut progress, mut version) = match storage.get(REENCRYPT_PROGRESS_KEY).await? {
        Some(entry) => (
            serde_json::from_slice::<Progress>(&entry.value)
                .map_err(|_| Error::integrity("the re-encryption progress record does not parse"))?,
            Some(entry.version),
        ),
        None => (Progress { active: String::new(), cursor: None, done: ReencryptSummary::default() }, None),
    };
    loop {
        let (active, _) = vault.services().keys.active().await?;
        if active != progress.active {
            progress = Progress { active, cursor: None, done: ReencryptSummary::default() };
        }
        let page = vault.reencrypt_page(progress.cursor.as_deref(), PAGE).await?;
        progress.done.reencrypted += u64::from(page.reencrypted);
        progress.done.current += u64::from(page.current);
        progress.done.failed += u64::from(page.failed);
        progress.cursor = page.cursor;
        on_step(&progress.done);

        if progress.cursor.is_none() {
            if let Some(version) = version {
                // Another pass may have moved it meanwhile; it finishes on its own.
                let _ = storage.delete(REENCRYPT_PROGRESS_KEY, version).await;
            }
            return Ok(progress.done);
        }
        let value = serde_json::to_vec(&progress).expect("progress serializes");
        match storage.put(REENCRYPT_PROGRESS_KEY, &value, version).await {
            Ok(written) => version = Some(written),
            // Another pass runs on this store too: carry on from where it got.
            Err(StorageError::Conflict) => {
                let entry = storage.get(REENCRYPT_PROGRESS_KEY).await?;
                version = entry.as_ref().map(|e| e.version);
                if let Some(theirs) = entry.and_then(|e| serde_json::from_slice::<Progress>(&e.value).ok()) {
                    progress = theirs;
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// How many sealed records the store holds (keys only, nothing opened): the length of a
/// pass, for a progress bar.
pub async fn sealed_records(vault: &Vault) -> Result<u64> {
    let storage = &vault.services().storage;
    let mut count = 0;
    for prefix in SEALED_PREFIXES {
        let mut cursor: Option<String> = None;
        loop {
            let page = storage.list(prefix, cursor.as_deref(), 1000).await?;
            count += page.keys.len() as u64;
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
    }
    Ok(count)
}
