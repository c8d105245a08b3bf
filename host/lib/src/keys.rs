//! The keyring: the data keys records are sealed with, which one is active, and the
//! master key that wraps them.
//!
//! The keyring lives in the vault's storage (the record `keyring`), so every host on a
//! shared store sees the same keys and a rotation is one write for all of them. Each data
//! key is wrapped (AES-256-GCM-SIV, bound to its id) by the master key, which only hosts
//! hold: from `TOKENVAULT_MASTER_KEY`, an operator's file, or, over an embedded store, a
//! file made in the data directory on first use. A host keeps the keyring it opened and
//! reads it again when its copy is older than [`RELOAD_AFTER`], or when a record names a
//! key its copy lacks, so a rotation reaches it within seconds.
//!
//! Nothing here ever makes a keyring over a store that already holds sealed records, and
//! no error quotes key material.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aes_gcm_siv::aead::{Aead, KeyInit, Payload};
use aes_gcm_siv::{Aes256GcmSiv, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wasmtime::component::HasData;

use crate::audit::{AuditAction, AuditOutcome, AuditRecord, AuditSink};
use crate::bindings::tokenvault::vault::keyring;
use crate::error::{Error, Result};
use crate::storage::Storage;
/// The keyring record's key in storage.
pub use tokenvault_model::storage::KEYRING_KEY;
use tokenvault_model::storage::SEALED_PREFIXES;
pub use tokenvault_model::storage::envelope_key_id;

pub const KEY_LEN: usize = 32;
/// How old a host's copy of the keyring may grow before a call reads it again.
pub const RELOAD_AFTER: Duration = Duration::from_secs(2);
/// How long a key must have been inactive before it may be retired: a host may seal with
/// it until its copy of the keyring is reloaded, and hosts' clocks differ a little.
pub const RETIRE_AFTER: Duration = Duration::from_secs(15);
/// The environment variable a master key may come from (base64 of 32 bytes).
pub const MASTER_KEY_ENV: &str = "TOKENVAULT_MASTER_KEY";
/// The master key file made in the data directory over an embedded store.
pub const MASTER_KEY_FILE: &str = "master.key";
const NONCE_LEN: usize = 12;
const RECORD_FORMAT: u8 = 1;
/// At most this many forced reloads a second: a record naming an unknown key (altered,
/// say) must not turn every read into a storage round trip.
const MISS_RELOAD_GAP: Duration = Duration::from_millis(100);

/// The key that wraps the data keys. Its id (`m-` and 16 hex digits of a SHA-256 of it)
/// names it in the keyring and in reports; the key itself is never shown.
#[derive(Clone)]
pub struct MasterKey {
    material: [u8; KEY_LEN],
    id: String,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey({})", self.id)
    }
}

impl MasterKey {
    pub fn from_bytes(material: [u8; KEY_LEN]) -> Self {
        let digest = Sha256::new().chain_update(b"tokenvault master key id\0").chain_update(material).finalize();
        MasterKey { material, id: format!("m-{}", hex::encode(&digest[..8])) }
    }

    pub fn generate() -> Result<Self> {
        Ok(Self::from_bytes(random_key()?))
    }

    /// Base64 of 32 bytes, as `TOKENVAULT_MASTER_KEY` and a master key file hold it.
    /// `what` names where the text came from; the text itself is never quoted.
    pub fn from_base64(text: &str, what: &str) -> Result<Self> {
        let bytes = BASE64
            .decode(text.trim())
            .map_err(|_| Error::Config(format!("{what} is not base64 (a master key is base64 of 32 bytes)")))?;
        let material: [u8; KEY_LEN] = bytes.try_into().map_err(|bytes: Vec<u8>| {
            Error::Config(format!("{what} holds {} bytes; a master key is {KEY_LEN}", bytes.len()))
        })?;
        Ok(Self::from_bytes(material))
    }

    pub fn to_base64(&self) -> String {
        BASE64.encode(self.material)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Read a master key file; warn when others may read it too.
    pub fn read_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read the master key file {}: {e}", path.display())))?;
        warn_if_others_may_read(path, "master key file");
        Self::from_base64(&text, &format!("the master key file {}", path.display()))
    }

    /// Write this key to a new file (mode 0600); fails if the file exists.
    pub fn write_new(&self, path: &Path) -> Result<()> {
        write_private(path, format!("{}\n", self.to_base64()).as_bytes(), true)
    }

    fn wrap(&self, id: &str, data_key: &[u8; KEY_LEN]) -> Result<String> {
        let nonce: [u8; NONCE_LEN] = random_bytes()?;
        let sealed = self
            .cipher()
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: data_key, aad: &wrap_context(id) })
            .map_err(|_| Error::Config("wrapping a data key failed".into()))?;
        Ok(BASE64.encode([&nonce[..], &sealed].concat()))
    }

    fn unwrap(&self, id: &str, wrapped: &str) -> Option<[u8; KEY_LEN]> {
        let bytes = BASE64.decode(wrapped).ok()?;
        let (nonce, sealed) = bytes.split_at_checked(NONCE_LEN)?;
        let plain =
            self.cipher().decrypt(Nonce::from_slice(nonce), Payload { msg: sealed, aad: &wrap_context(id) }).ok()?;
        plain.try_into().ok()
    }

    fn cipher(&self) -> Aes256GcmSiv {
        Aes256GcmSiv::new_from_slice(&self.material).expect("32-byte key")
    }
}

/// A wrapped key is bound to its id and the record's format, so one cannot be moved under
/// another key's id.
fn wrap_context(id: &str) -> Vec<u8> {
    [&b"tokenvault keyring"[..], &[RECORD_FORMAT], id.as_bytes()].concat()
}

/// Where a host's master key comes from.
#[derive(Debug, Clone)]
pub enum MasterKeySource {
    /// Given as a value: `TOKENVAULT_MASTER_KEY`, or an embedder's.
    Given(MasterKey),
    /// An operator's file, which must exist.
    File(PathBuf),
    /// The data directory's file: made on first use over an embedded store (SQLite or
    /// memory); over a shared store every host must be given the same key instead.
    DataDir(PathBuf),
}

impl MasterKeySource {
    /// What a report may say of it (never the key).
    pub fn describe(&self) -> String {
        match self {
            MasterKeySource::Given(_) => format!("given ({MASTER_KEY_ENV} or the embedder)"),
            MasterKeySource::File(path) | MasterKeySource::DataDir(path) => path.display().to_string(),
        }
    }

    fn load(&self) -> Result<MasterKey> {
        match self {
            MasterKeySource::Given(key) => Ok(key.clone()),
            MasterKeySource::File(path) => MasterKey::read_file(path),
            MasterKeySource::DataDir(path) => match MasterKey::read_file(path) {
                Err(_) if !path.exists() => Err(Error::Config(format!(
                    "the vault's keyring is wrapped by a master key, but {} is missing and neither \
                     {MASTER_KEY_ENV} nor master_key_file is set: restore that file, or give the key",
                    path.display()
                ))),
                other => other,
            },
        }
    }

    /// For a store without a keyring: the key, made now where this source may make one.
    fn load_or_create(&self, may_create: bool) -> Result<MasterKey> {
        let MasterKeySource::DataDir(path) = self else {
            return self.load();
        };
        if path.exists() {
            return self.load();
        }
        if !may_create {
            return Err(Error::Config(format!(
                "a shared store needs the same master key on every host: set {MASTER_KEY_ENV} (base64 of 32 \
                 bytes) or master_key_file in tokenvault.toml (`tokenvault master-key new FILE` makes one)"
            )));
        }
        let key = MasterKey::generate()?;
        match key.write_new(path) {
            Ok(()) => Ok(key),
            // Another process of this data directory made it first: use theirs.
            Err(_) if path.exists() => self.load(),
            Err(e) => Err(e),
        }
    }
}

/// The keyring as stored: data keys wrapped by the master key, never in clear.
#[derive(Clone, Serialize, Deserialize)]
struct KeyringRecord {
    format: u8,
    /// The id of the master key that wraps the data keys.
    master_key: String,
    active: String,
    keys: Vec<KeyEntry>,
}

#[derive(Clone, Serialize, Deserialize)]
struct KeyEntry {
    id: String,
    created_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deactivated_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retired_at_ms: Option<u64>,
    /// Base64 of nonce and AES-256-GCM-SIV ciphertext; none once the key is retired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    wrapped: Option<String>,
}

/// A data key, as `tokenvault keys ls` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DataKeyInfo {
    pub id: String,
    /// Unix seconds.
    pub created_at: u64,
    /// `active` (new records are sealed with it), `inactive` (opens older records) or
    /// `retired` (destroyed).
    pub status: KeyStatus,
    /// Sealed records that name it; none when not counted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub records: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    Active,
    Inactive,
    Retired,
}

/// The keyring opened: the record as stored and its live keys unwrapped.
struct Keyring {
    version: u64,
    record: KeyringRecord,
    keys: BTreeMap<String, [u8; KEY_LEN]>,
}

impl Keyring {
    fn open(value: &[u8], version: u64, master: &MasterKey) -> Result<Self> {
        let record: KeyringRecord = serde_json::from_slice(value)
            .ok()
            .filter(|r: &KeyringRecord| r.format == RECORD_FORMAT)
            .ok_or_else(|| Error::integrity("the keyring record in storage is not one this host can read"))?;
        if record.master_key != master.id {
            return Err(Error::Config(format!(
                "the master key {} does not open this vault's keyring: its keys are wrapped by {}",
                master.id, record.master_key
            )));
        }
        let mut keys = BTreeMap::new();
        for entry in &record.keys {
            if let Some(wrapped) = &entry.wrapped {
                let key = master.unwrap(&entry.id, wrapped).ok_or_else(|| {
                    Error::integrity(format!(
                        "data key {:?} in the keyring does not unwrap under master key {}: the keyring was altered",
                        entry.id, master.id
                    ))
                })?;
                keys.insert(entry.id.clone(), key);
            }
        }
        if !keys.contains_key(&record.active) {
            return Err(Error::integrity(format!("the keyring's active key {:?} is not in it", record.active)));
        }
        Ok(Keyring { version, record, keys })
    }

    fn active(&self) -> (&str, &[u8; KEY_LEN]) {
        (&self.record.active, &self.keys[&self.record.active])
    }
}

struct Cached {
    keyring: Arc<Keyring>,
    checked: Instant,
}

/// The keyring of one vault, as this host sees it: opened from storage, cached, and kept
/// current. The component's `keyring` import reads it.
pub struct Keys {
    storage: Arc<dyn Storage>,
    source: MasterKeySource,
    master: RwLock<MasterKey>,
    cached: RwLock<Cached>,
    reloading: tokio::sync::Mutex<()>,
    /// When a key this host lacked last made it read the keyring again.
    last_miss_reload: std::sync::Mutex<Option<Instant>>,
}

impl Keys {
    /// Open the keyring in `storage`, making it on first use: from the old keyring file
    /// at `import` when there is one (its keys keep their ids, so every record opens),
    /// else with one new key. `may_create_master` lets a data-directory master key be
    /// made (embedded stores only). Refuses, touching nothing, a store that holds sealed
    /// records but no keyring, a master key that is not the keyring's, or a keyring
    /// whose wrapped keys were altered.
    pub async fn open(
        storage: Arc<dyn Storage>,
        source: MasterKeySource,
        import: Option<&Path>,
        may_create_master: bool,
    ) -> Result<Self> {
        for _ in 0..3 {
            if let Some(entry) = storage.get(KEYRING_KEY).await? {
                let opened = source.load().and_then(|master| {
                    let keyring = Keyring::open(&entry.value, entry.version, &master)?;
                    Ok((master, keyring))
                });
                let (master, keyring) = match opened {
                    Ok(opened) => opened,
                    // A master-key rotation may have stopped before its new key's file
                    // moved into place: the staged key opens the keyring then.
                    Err(e) => match Self::finish_master_rotation(&source, &entry.value, entry.version) {
                        Some(opened) => opened,
                        None => return Err(e),
                    },
                };
                return Ok(Self::new(storage, source, master, keyring));
            }
            let imported = match import {
                Some(path) if path.exists() => Some(LegacyKeyring::load(path)?),
                _ => None,
            };
            if imported.is_none() {
                refuse_over_sealed_records(&*storage).await?;
            }
            let master = source.load_or_create(may_create_master)?;
            let now = now_ms();
            let (active, keys) = match &imported {
                Some(legacy) => (legacy.active.clone(), legacy.keys.clone()),
                None => {
                    let id = new_key_id()?;
                    (id.clone(), BTreeMap::from([(id, random_key()?)]))
                }
            };
            let record = KeyringRecord {
                format: RECORD_FORMAT,
                master_key: master.id.clone(),
                active: active.clone(),
                keys: keys
                    .iter()
                    .map(|(id, key)| {
                        Ok(KeyEntry {
                            id: id.clone(),
                            created_at_ms: now,
                            deactivated_at_ms: (*id != active).then_some(now),
                            retired_at_ms: None,
                            wrapped: Some(master.wrap(id, key)?),
                        })
                    })
                    .collect::<Result<_>>()?,
            };
            let value = serde_json::to_vec(&record).expect("the keyring serializes");
            match storage.put(KEYRING_KEY, &value, None).await {
                Ok(version) => {
                    if let (Some(path), Some(_)) = (import, &imported) {
                        tracing::info!(
                            file = %path.display(),
                            "imported the keyring file into the vault's storage; it is no longer read and may be deleted"
                        );
                    }
                    return Ok(Self::new(storage, source, master, Keyring { version, record, keys }));
                }
                // Another host made the keyring first: open theirs.
                Err(tokenvault_model::storage::StorageError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::storage("the keyring record kept changing while it was being made"))
    }

    fn new(storage: Arc<dyn Storage>, source: MasterKeySource, master: MasterKey, keyring: Keyring) -> Self {
        Keys {
            storage,
            source,
            master: RwLock::new(master),
            cached: RwLock::new(Cached { keyring: Arc::new(keyring), checked: Instant::now() }),
            reloading: tokio::sync::Mutex::new(()),
            last_miss_reload: std::sync::Mutex::new(None),
        }
    }

    /// A data-directory master key rotation that stopped between wrapping the keyring
    /// under the new key and moving the new key's file into place: finish it, when the
    /// staged key opens the keyring.
    fn finish_master_rotation(source: &MasterKeySource, value: &[u8], version: u64) -> Option<(MasterKey, Keyring)> {
        let MasterKeySource::DataDir(path) = source else { return None };
        let staged = staged_path(path);
        let master = MasterKey::read_file(&staged).ok()?;
        let keyring = Keyring::open(value, version, &master).ok()?;
        if let Err(e) = std::fs::rename(&staged, path) {
            tracing::warn!(file = %staged.display(), "cannot move the new master key into place: {e}");
        }
        Some((master, keyring))
    }

    /// Where the master key comes from, and its id, for reports.
    pub fn describe(&self) -> String {
        format!("the vault's storage, wrapped by master key {} from {}", self.master_key_id(), self.source.describe())
    }

    pub fn master_key_id(&self) -> String {
        self.master.read().expect("lock").id.clone()
    }

    /// The active key: its id and material.
    pub async fn active(&self) -> Result<(String, [u8; KEY_LEN])> {
        let keyring = self.current().await?;
        let (id, key) = keyring.active();
        Ok((id.to_owned(), *key))
    }

    /// A key by id, reading the keyring again when this host's copy lacks it (another
    /// host may have just rotated).
    pub async fn by_id(&self, id: &str) -> Result<Option<[u8; KEY_LEN]>> {
        let keyring = self.current().await?;
        if let Some(key) = keyring.keys.get(id) {
            return Ok(Some(*key));
        }
        {
            let mut last = self.last_miss_reload.lock().expect("lock");
            if last.is_some_and(|at| at.elapsed() < MISS_RELOAD_GAP) {
                return Ok(None);
            }
            *last = Some(Instant::now());
        }
        let keyring = self.reload(Duration::ZERO).await?;
        Ok(keyring.keys.get(id).copied())
    }

    async fn current(&self) -> Result<Arc<Keyring>> {
        {
            let cached = self.cached.read().expect("lock");
            if cached.checked.elapsed() < RELOAD_AFTER {
                return Ok(cached.keyring.clone());
            }
        }
        self.reload(RELOAD_AFTER).await
    }

    /// Read the keyring again unless another caller did within `fresh_for`.
    async fn reload(&self, fresh_for: Duration) -> Result<Arc<Keyring>> {
        let _one_at_a_time = self.reloading.lock().await;
        let (cached, checked) = {
            let cached = self.cached.read().expect("lock");
            (cached.keyring.clone(), cached.checked)
        };
        if checked.elapsed() < fresh_for {
            return Ok(cached);
        }
        let entry = self.stored_record().await?;
        let keyring = if entry.version == cached.version {
            cached
        } else {
            Arc::new(self.open_record(&entry.value, entry.version)?)
        };
        *self.cached.write().expect("lock") = Cached { keyring: keyring.clone(), checked: Instant::now() };
        Ok(keyring)
    }

    /// Open a newer keyring record. When its master key changed (a `master-key rotate` on
    /// another host), read this host's key source again: a file may hold the new key.
    fn open_record(&self, value: &[u8], version: u64) -> Result<Keyring> {
        let master = self.master.read().expect("lock").clone();
        match Keyring::open(value, version, &master) {
            Err(Error::Config(why)) => {
                let fresh =
                    self.source.load().ok().and_then(|key| Some((Keyring::open(value, version, &key).ok()?, key)));
                let fresh = fresh
                    .or_else(|| Self::finish_master_rotation(&self.source, value, version).map(|(key, k)| (k, key)));
                let (keyring, key) = fresh.ok_or(Error::Config(why))?;
                *self.master.write().expect("lock") = key;
                Ok(keyring)
            }
            other => other,
        }
    }

    /// The keyring as storage holds it now, for a change.
    async fn read_keyring(&self) -> Result<Keyring> {
        let entry = self.stored_record().await?;
        self.open_record(&entry.value, entry.version)
    }

    /// The keyring record, which exists from the moment the keyring was opened.
    async fn stored_record(&self) -> Result<tokenvault_model::storage::Entry> {
        self.storage
            .get(KEYRING_KEY)
            .await?
            .ok_or_else(|| Error::integrity("the keyring record has disappeared from storage"))
    }

    /// Write a changed keyring, wrapped by `master`, if nobody changed it meanwhile (else
    /// `Ok(false)`: read it again).
    async fn write_record(&self, record: &KeyringRecord, expected: u64, master: &MasterKey) -> Result<bool> {
        let value = serde_json::to_vec(record).expect("the keyring serializes");
        match self.storage.put(KEYRING_KEY, &value, Some(expected)).await {
            Ok(version) => {
                let keyring = Keyring::open(&value, version, master)?;
                *self.master.write().expect("lock") = master.clone();
                *self.cached.write().expect("lock") = Cached { keyring: Arc::new(keyring), checked: Instant::now() };
                Ok(true)
            }
            Err(tokenvault_model::storage::StorageError::Conflict) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Apply `change` to the keyring as stored, retrying when another host wrote first.
    async fn change<T>(&self, mut change: impl FnMut(&mut KeyringRecord) -> Result<T>) -> Result<T> {
        for _ in 0..5 {
            let keyring = self.read_keyring().await?;
            let mut record = keyring.record.clone();
            let out = change(&mut record)?;
            let master = self.master.read().expect("lock").clone();
            if self.write_record(&record, keyring.version, &master).await? {
                return Ok(out);
            }
        }
        Err(Error::storage("the keyring kept changing; gave up after 5 attempts"))
    }

    /// Every data key, newest last, with how many sealed records name each when `counts`
    /// is given (see [`Keys::count_sealed`]).
    pub async fn list(&self, counts: Option<&BTreeMap<String, u64>>) -> Result<Vec<DataKeyInfo>> {
        let record = self.read_keyring().await?.record;
        Ok(record.keys.iter().map(|entry| info(&record, entry, counts)).collect())
    }

    /// How many sealed records name each key id (read from their envelopes, without
    /// opening them). Reads every sealed record: a pass over the store.
    pub async fn count_sealed(&self) -> Result<BTreeMap<String, u64>> {
        let mut counts = BTreeMap::new();
        for prefix in SEALED_PREFIXES {
            let mut cursor: Option<String> = None;
            loop {
                let page = self.storage.list(prefix, cursor.as_deref(), 1000).await?;
                for key in &page.keys {
                    if let Some(entry) = self.storage.get(key).await? {
                        let id = envelope_key_id(&entry.value).unwrap_or("(not an envelope)");
                        *counts.entry(id.to_owned()).or_insert(0) += 1;
                    }
                }
                match page.cursor {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
        }
        Ok(counts)
    }

    /// Make a new data key the active one: new records are sealed with it on every host
    /// sharing the store once their copy reloads (within [`RELOAD_AFTER`]). Audited.
    pub async fn rotate(&self, audit: &dyn AuditSink) -> Result<DataKeyInfo> {
        audited(audit, AuditAction::KeyRotate, self.rotate_unaudited().await).await
    }

    async fn rotate_unaudited(&self) -> Result<DataKeyInfo> {
        let id = new_key_id()?;
        let key = random_key()?;
        let master = self.master.read().expect("lock").clone();
        let wrapped = master.wrap(&id, &key)?;
        self.change(|record| {
            let now = now_ms();
            for entry in record.keys.iter_mut().filter(|e| e.id == record.active) {
                entry.deactivated_at_ms = Some(now);
            }
            record.keys.push(KeyEntry {
                id: id.clone(),
                created_at_ms: now,
                deactivated_at_ms: None,
                retired_at_ms: None,
                wrapped: Some(wrapped.clone()),
            });
            record.active = id.clone();
            Ok(info(record, record.keys.last().expect("just pushed"), None))
        })
        .await
    }

    /// Destroy an inactive key's material. Refused while any sealed record names it, while
    /// it is active, or until it has been inactive for [`RETIRE_AFTER`]. Audited, refusals
    /// included.
    pub async fn retire(&self, id: &str, audit: &dyn AuditSink) -> Result<DataKeyInfo> {
        audited(audit, AuditAction::KeyRetire, self.retire_unaudited(id).await).await
    }

    async fn retire_unaudited(&self, id: &str) -> Result<DataKeyInfo> {
        let record = self.read_keyring().await?.record;
        let entry =
            record.keys.iter().find(|e| e.id == id).ok_or_else(|| Error::not_found(format!("no key {id:?}")))?;
        check_retirable(&record, entry)?;
        let still = self.count_sealed().await?.get(id).copied().unwrap_or(0);
        if still > 0 {
            return Err(Error::invalid_input(format!(
                "{still} sealed records still name key {id:?}: run `tokenvault keys reencrypt` first"
            )));
        }
        self.change(|record| {
            let active = record.active.clone();
            let entry = record
                .keys
                .iter_mut()
                .find(|e| e.id == id)
                .ok_or_else(|| Error::not_found(format!("no key {id:?}")))?;
            if entry.id == active {
                return Err(Error::invalid_input(format!("key {id:?} became active again")));
            }
            if entry.wrapped.take().is_some() {
                entry.retired_at_ms = Some(now_ms());
            }
            let entry = entry.clone();
            Ok(info(record, &entry, Some(&BTreeMap::new())))
        })
        .await
    }

    /// Wrap every live data key under `new` instead of the current master key. Records are
    /// not touched. Returns how many data keys were wrapped again. Audited.
    pub async fn rewrap(&self, new: &MasterKey, audit: &dyn AuditSink) -> Result<usize> {
        audited(audit, AuditAction::MasterKeyRotate, self.rewrap_unaudited(new).await).await
    }

    async fn rewrap_unaudited(&self, new: &MasterKey) -> Result<usize> {
        for _ in 0..5 {
            let keyring = self.read_keyring().await?;
            let mut record = keyring.record.clone();
            let mut count = 0;
            for entry in record.keys.iter_mut().filter(|e| e.wrapped.is_some()) {
                entry.wrapped = Some(new.wrap(&entry.id, &keyring.keys[&entry.id])?);
                count += 1;
            }
            record.master_key = new.id.clone();
            if self.write_record(&record, keyring.version, new).await? {
                return Ok(count);
            }
        }
        Err(Error::storage("the keyring kept changing; gave up after 5 attempts"))
    }

    /// Where the keyring's master key comes from.
    pub fn source(&self) -> &MasterKeySource {
        &self.source
    }
}

/// Rotate the master key of a data-directory source: stage the new key beside the old
/// file, wrap the keyring under it, then move it into place. Interrupted anywhere, the
/// next start finds a key that opens the keyring (the old file or the staged one).
pub async fn rotate_data_dir_master(keys: &Keys, path: &Path, audit: &dyn AuditSink) -> Result<(MasterKey, usize)> {
    let new = MasterKey::generate()?;
    let staged = staged_path(path);
    write_private(&staged, format!("{}\n", new.to_base64()).as_bytes(), false)?;
    let count = keys.rewrap(&new, audit).await?;
    std::fs::rename(&staged, path)
        .map_err(|e| Error::Config(format!("cannot move {} into place: {e}", staged.display())))?;
    Ok((new, count))
}

/// The host's own changes to the keyring are audited as the component's calls are: one
/// whose event cannot be written is reported as failed with `storage` (it was made; the
/// caller learns that the trail does not show it).
async fn audited<T>(audit: &dyn AuditSink, action: AuditAction, result: Result<T>) -> Result<T> {
    let outcome = match &result {
        Ok(_) => AuditOutcome::Ok,
        Err(Error::Vault(e)) => AuditOutcome::from(&Err::<(), _>(e.clone())),
        // The host's own failures here are of its randomness or storage.
        Err(_) => AuditOutcome::Storage,
    };
    let record = AuditRecord {
        at_ms: now_ms(),
        action: action.name().into(),
        outcome: outcome.name().into(),
        tenant: None,
        user: None,
        provider: None,
        name: None,
        actor: None,
    };
    audit.record(&record).await.map_err(|e| Error::storage(e.to_string()))?;
    result
}

fn staged_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".new");
    path.with_file_name(name)
}

fn check_retirable(record: &KeyringRecord, entry: &KeyEntry) -> Result<()> {
    if entry.id == record.active {
        return Err(Error::invalid_input(format!(
            "key {:?} is active: rotate to a new key and re-encrypt before retiring it",
            entry.id
        )));
    }
    if let Some(since) = entry.deactivated_at_ms {
        let settled = since + RETIRE_AFTER.as_millis() as u64;
        if now_ms() < settled {
            return Err(Error::invalid_input(format!(
                "key {:?} stopped being active {} s ago; a host whose copy of the keyring is older may \
                 still seal with it: retire it in {} s",
                entry.id,
                now_ms().saturating_sub(since) / 1000,
                (settled - now_ms()).div_ceil(1000)
            )));
        }
    }
    Ok(())
}

fn info(record: &KeyringRecord, entry: &KeyEntry, counts: Option<&BTreeMap<String, u64>>) -> DataKeyInfo {
    DataKeyInfo {
        id: entry.id.clone(),
        created_at: entry.created_at_ms / 1000,
        status: if entry.wrapped.is_none() {
            KeyStatus::Retired
        } else if entry.id == record.active {
            KeyStatus::Active
        } else {
            KeyStatus::Inactive
        },
        records: counts.map(|c| c.get(&entry.id).copied().unwrap_or(0)),
    }
}

/// Refuse to make a keyring over records sealed with a lost one's keys.
async fn refuse_over_sealed_records(storage: &dyn Storage) -> Result<()> {
    for prefix in SEALED_PREFIXES {
        let page = storage.list(prefix, None, 1).await?;
        if !page.keys.is_empty() {
            return Err(Error::Config(format!(
                "the vault's keyring is missing, but the storage holds records sealed with its keys (under \
                 {prefix}); a new key could not open them, so none is made. Restore the keyring record, or \
                 the keyring file to import (`keyring` in tokenvault.toml)"
            )));
        }
    }
    Ok(())
}

/// The keyring file hosts kept before the keyring moved into storage:
/// `{"active": id, "keys": {id: base64}}`. Read once, to import it.
struct LegacyKeyring {
    active: String,
    keys: BTreeMap<String, [u8; KEY_LEN]>,
}

impl LegacyKeyring {
    fn load(path: &Path) -> Result<Self> {
        #[derive(Deserialize)]
        struct File {
            active: String,
            keys: BTreeMap<String, String>,
        }
        let bad = |why: &str| Error::Config(format!("keyring {} is invalid: {why}", path.display()));
        let bytes =
            std::fs::read(path).map_err(|e| Error::Config(format!("cannot read keyring {}: {e}", path.display())))?;
        warn_if_others_may_read(path, "keyring file");
        let file: File = serde_json::from_slice(&bytes).map_err(|_| bad("not a keyring JSON file"))?;
        let mut keys = BTreeMap::new();
        for (id, material) in &file.keys {
            if id.is_empty() || id.len() > 255 {
                return Err(bad("key ids must be 1 to 255 bytes"));
            }
            let material = BASE64.decode(material).map_err(|_| bad(&format!("key {id:?} is not base64")))?;
            let material: [u8; KEY_LEN] =
                material.try_into().map_err(|_| bad(&format!("key {id:?} is not {KEY_LEN} bytes")))?;
            keys.insert(id.clone(), material);
        }
        if !keys.contains_key(&file.active) {
            return Err(bad(&format!("active key {:?} is not in the keyring", file.active)));
        }
        Ok(LegacyKeyring { active: file.active, keys })
    }
}

/// A secret file that group or others may read is used, with a warning: mounted secrets
/// are often 0644, and refusing would stop a host that has no better place for the key.
fn warn_if_others_may_read(path: &Path, what: &str) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(file = %path.display(), mode = format!("{mode:o}"), "the {what} is readable by other users: chmod 600 it");
            }
        }
    }
}

/// Write a secret file with mode 0600: `new_only` fails if it exists, else it is replaced.
fn write_private(path: &Path, contents: &[u8], new_only: bool) -> Result<()> {
    let io = |e: std::io::Error| Error::Config(format!("cannot write {}: {e}", path.display()));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if new_only {
        options.create_new(true);
    } else {
        options.create(true).truncate(true);
    }
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut out = options.open(path).map_err(io)?;
    out.write_all(contents).map_err(io)?;
    out.sync_all().map_err(io)
}

fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| Error::Config(format!("no randomness: {e}")))?;
    Ok(bytes)
}

fn random_key() -> Result<[u8; KEY_LEN]> {
    random_bytes()
}

fn new_key_id() -> Result<String> {
    Ok(format!("k-{}", hex::encode(random_bytes::<4>()?)))
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The component's `keyring` import, served by the vault's [`Keys`].
pub(crate) struct KeyringImport;

impl HasData for KeyringImport {
    type Data<'a> = &'a Keys;
}

/// The active key, and keys by id. Async: either may read the keyring from storage again.
impl keyring::Host for &Keys {
    async fn active_key(&mut self) -> wasmtime::Result<Result<keyring::Key, String>> {
        Ok(self.active().await.map(|(id, key)| keyring::Key { id, material: key.to_vec() }).map_err(|e| e.message()))
    }

    async fn key_by_id(&mut self, id: String) -> wasmtime::Result<Result<Option<Vec<u8>>, String>> {
        Ok(self.by_id(&id).await.map(|key| key.map(|k| k.to_vec())).map_err(|e| e.message()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::MemoryAudit;
    use crate::storage::MemoryStorage;

    fn memory() -> Arc<dyn Storage> {
        Arc::new(MemoryStorage::default())
    }

    fn given() -> MasterKeySource {
        MasterKeySource::Given(MasterKey::generate().unwrap())
    }

    async fn record(storage: &Arc<dyn Storage>) -> (serde_json::Value, u64) {
        let entry = storage.get(KEYRING_KEY).await.unwrap().expect("a keyring record");
        (serde_json::from_slice(&entry.value).unwrap(), entry.version)
    }

    #[tokio::test]
    async fn first_use_makes_a_wrapped_keyring_and_a_private_master_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let storage = memory();
        let source = MasterKeySource::DataDir(dir.path().join(MASTER_KEY_FILE));
        let first = Keys::open(storage.clone(), source.clone(), None, true).await.unwrap();
        let again = Keys::open(storage.clone(), source, None, true).await.unwrap();
        assert_eq!(first.active().await.unwrap(), again.active().await.unwrap());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(MASTER_KEY_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Neither the data key nor the master key is stored in clear.
        let (active, material) = first.active().await.unwrap();
        let stored = storage.get(KEYRING_KEY).await.unwrap().unwrap().value;
        let master = std::fs::read_to_string(dir.path().join(MASTER_KEY_FILE)).unwrap();
        let text = String::from_utf8(stored).unwrap();
        assert!(text.contains(&active) && !text.contains(&BASE64.encode(material)) && !text.contains(master.trim()));
    }

    #[tokio::test]
    async fn a_wrong_master_key_or_an_altered_keyring_is_refused_and_nothing_is_written() {
        let storage = memory();
        Keys::open(storage.clone(), given(), None, true).await.unwrap();
        let (before, version) = record(&storage).await;

        let err = Keys::open(storage.clone(), given(), None, true).await.err().unwrap();
        assert_eq!(err.kind(), "config");
        assert!(err.to_string().contains("does not open this vault's keyring"), "{err}");
        assert_eq!(record(&storage).await, (before.clone(), version), "nothing written");

        // Flip a byte of the wrapped key: it no longer unwraps, and the error names it.
        let source = given();
        let storage = memory();
        Keys::open(storage.clone(), source.clone(), None, true).await.unwrap();
        let (mut altered, version) = record(&storage).await;
        let wrapped = altered["keys"][0]["wrapped"].as_str().unwrap().to_owned();
        let mut bytes = BASE64.decode(&wrapped).unwrap();
        bytes[20] ^= 1;
        altered["keys"][0]["wrapped"] = BASE64.encode(&bytes).into();
        let written = storage.put(KEYRING_KEY, altered.to_string().as_bytes(), Some(version)).await.unwrap();
        let err = Keys::open(storage.clone(), source, None, true).await.err().unwrap();
        assert_eq!(err.kind(), "integrity");
        assert!(err.to_string().contains("was altered") && !err.to_string().contains(&wrapped), "{err}");
        assert_eq!(record(&storage).await.1, written, "nothing written");
    }

    #[tokio::test]
    async fn no_keyring_is_made_over_sealed_records_and_no_master_key_over_a_shared_store() {
        let dir = tempfile::tempdir().unwrap();
        let master_file = dir.path().join(MASTER_KEY_FILE);
        let storage = memory();
        // Records nobody seals (API keys, leases) do not stop a first keyring.
        storage.put("apikey/x", b"{}", None).await.unwrap();
        for prefix in SEALED_PREFIXES {
            let storage = memory();
            storage.put(&format!("{prefix}x"), b"sealed", None).await.unwrap();
            let source = MasterKeySource::DataDir(master_file.clone());
            let err = Keys::open(storage.clone(), source, None, true).await.err().unwrap().to_string();
            assert!(err.contains("keyring is missing") && err.contains(prefix), "{err}");
            assert!(storage.get(KEYRING_KEY).await.unwrap().is_none() && !master_file.exists());
        }
        let err = Keys::open(storage.clone(), MasterKeySource::DataDir(master_file.clone()), None, false)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains(MASTER_KEY_ENV) && !master_file.exists(), "{err}");

        // A keyring in storage whose master key file is gone: refused, never replaced.
        let source = MasterKeySource::DataDir(master_file.clone());
        Keys::open(storage.clone(), source.clone(), None, true).await.unwrap();
        std::fs::remove_file(&master_file).unwrap();
        let err = Keys::open(storage.clone(), source, None, true).await.err().unwrap().to_string();
        assert!(err.contains("is missing") && !master_file.exists(), "{err}");
    }

    #[tokio::test]
    async fn an_old_keyring_file_is_imported_with_its_key_ids() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keyring.json");
        let (old, new) = (BASE64.encode([1u8; 32]), BASE64.encode([2u8; 32]));
        std::fs::write(&file, format!(r#"{{"active":"k-new","keys":{{"k-old":"{old}","k-new":"{new}"}}}}"#)).unwrap();
        let storage = memory();
        // Records sealed with the file's keys do not stop the import.
        storage.put("tok/x", b"sealed", None).await.unwrap();
        let keys = Keys::open(storage.clone(), given(), Some(&file), true).await.unwrap();
        assert_eq!(keys.active().await.unwrap(), ("k-new".to_owned(), [2; 32]));
        assert_eq!(keys.by_id("k-old").await.unwrap(), Some([1; 32]));
        let listed = keys.list(None).await.unwrap();
        let statuses: Vec<_> = listed.iter().map(|k| (k.id.as_str(), k.status)).collect();
        assert_eq!(statuses, [("k-new", KeyStatus::Active), ("k-old", KeyStatus::Inactive)]);

        std::fs::write(&file, "not read any more").unwrap();
        let source = keys.source().clone();
        Keys::open(storage, source, Some(&file), true).await.unwrap();
    }

    #[tokio::test]
    async fn a_rotation_reaches_another_host_on_the_same_store() {
        let storage = memory();
        let source = given();
        let here = Keys::open(storage.clone(), source.clone(), None, true).await.unwrap();
        let there = Keys::open(storage.clone(), source, None, true).await.unwrap();
        let (old, _) = there.active().await.unwrap();
        let rotated = here.rotate(&MemoryAudit::default()).await.unwrap();
        assert_eq!(rotated.status, KeyStatus::Active);
        // A record under the new key opens there at once: a miss reads the keyring again.
        assert_eq!(there.by_id(&rotated.id).await.unwrap(), Some(here.active().await.unwrap().1));
        tokio::time::sleep(RELOAD_AFTER + Duration::from_millis(100)).await;
        assert_eq!(there.active().await.unwrap().0, rotated.id, "new writes there use the new key");
        assert!(there.by_id(&old).await.unwrap().is_some(), "the old key still opens old records");
    }

    #[tokio::test]
    async fn a_key_is_retired_only_when_inactive_long_enough_and_unused() {
        let storage = memory();
        let keys = Keys::open(storage.clone(), given(), None, true).await.unwrap();
        let audit = MemoryAudit::default();
        let (old, _) = keys.active().await.unwrap();
        let err = keys.retire(&old, &audit).await.err().unwrap().to_string();
        assert!(err.contains("is active"), "{err}");
        keys.rotate(&audit).await.unwrap();
        let err = keys.retire(&old, &audit).await.err().unwrap().to_string();
        assert!(err.contains("may still seal with it"), "{err}");

        // Inactive long enough (moved back in time in the record itself).
        let (mut stored, version) = record(&storage).await;
        stored["keys"][0]["deactivated_at_ms"] = (now_ms() - 60_000).into();
        storage.put(KEYRING_KEY, stored.to_string().as_bytes(), Some(version)).await.unwrap();
        let mut envelope = vec![1, old.len() as u8];
        envelope.extend_from_slice(old.as_bytes());
        envelope.extend_from_slice(&[0; 28]);
        let sealed = storage.put("tok/a/b/c/d", &envelope, None).await.unwrap();
        let err = keys.retire(&old, &audit).await.err().unwrap().to_string();
        assert!(err.contains("1 sealed records still name"), "{err}");
        assert_eq!(keys.count_sealed().await.unwrap().get(&old), Some(&1));

        storage.delete("tok/a/b/c/d", sealed).await.unwrap();
        assert_eq!(keys.retire(&old, &audit).await.unwrap().status, KeyStatus::Retired);
        assert_eq!(keys.by_id(&old).await.unwrap(), None, "its material is gone");
        assert!(record(&storage).await.0["keys"][0].get("wrapped").is_none());
        assert!(keys.retire("k-nope", &audit).await.err().unwrap().to_string().contains("no key"));
        let trail: Vec<_> =
            audit.records.lock().unwrap().iter().map(|r| format!("{} {}", r.action, r.outcome)).collect();
        assert_eq!(
            trail,
            [
                "key-retire invalid-input",
                "key-rotate ok",
                "key-retire invalid-input",
                "key-retire invalid-input",
                "key-retire ok",
                "key-retire not-found"
            ]
        );
    }

    #[tokio::test]
    async fn a_new_master_key_wraps_the_same_data_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MASTER_KEY_FILE);
        let storage = memory();
        storage.put("tok/x", b"untouched", None).await.unwrap();
        storage.delete("tok/x", 1).await.unwrap();
        let source = MasterKeySource::DataDir(path.clone());
        let keys = Keys::open(storage.clone(), source.clone(), None, true).await.unwrap();
        let audit = MemoryAudit::default();
        keys.rotate(&audit).await.unwrap();
        let before = (keys.active().await.unwrap(), keys.list(None).await.unwrap());
        let old_master = keys.master_key_id();

        let (new, count) = rotate_data_dir_master(&keys, &path, &audit).await.unwrap();
        assert_eq!((count, keys.master_key_id()), (2, new.id().to_owned()));
        assert_ne!(new.id(), old_master);
        let reopened = Keys::open(storage.clone(), source.clone(), None, true).await.unwrap();
        assert_eq!((reopened.active().await.unwrap(), reopened.list(None).await.unwrap()), before);

        // Stopped after the keyring was wrapped again but before the new file moved into
        // place: the next start finds the staged key, and finishes the move.
        let newer = MasterKey::generate().unwrap();
        std::fs::write(staged_path(&path), newer.to_base64()).unwrap();
        reopened.rewrap(&newer, &audit).await.unwrap();
        let recovered = Keys::open(storage.clone(), source, None, true).await.unwrap();
        assert_eq!(recovered.master_key_id(), newer.id());
        assert_eq!(MasterKey::read_file(&path).unwrap().id(), newer.id());
        assert!(!staged_path(&path).exists());
        let err = Keys::open(storage, MasterKeySource::Given(new), None, true).await.err().unwrap();
        assert_eq!(err.kind(), "config");
    }

    #[test]
    fn master_keys_are_read_without_quoting_them() {
        let err = MasterKey::from_base64("c2hvcnQ=", "TOKENVAULT_MASTER_KEY").err().unwrap().to_string();
        assert!(err.contains("5 bytes") && !err.contains("c2hvcnQ"), "{err}");
        let err = MasterKey::from_base64("not base64!", "the file f").err().unwrap().to_string();
        assert!(err.contains("not base64") && !err.contains("not base64!"), "{err}");
        let key = MasterKey::generate().unwrap();
        assert_eq!(MasterKey::from_base64(&key.to_base64(), "x").unwrap().id(), key.id());
        assert!(!format!("{key:?}").contains(&key.to_base64()));
    }
}
