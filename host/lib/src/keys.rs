//! The keyring: sealing keys by id, and which one is active.
//!
//! Kept in a JSON file (mode 0600). On first use the host generates one into the data
//! directory; an operator may point at their own file instead. A missing keyring is made
//! only over a store without sealed records: a new key could not open them, so replacing a
//! lost keyring would make every record unreadable.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use wasmtime::component::HasData;

use crate::bindings::tokenvault::vault::keyring;
use crate::storage::Storage;
use tokenvault_model::storage::SEALED_PREFIXES;

pub const KEY_LEN: usize = 32;

pub struct Keyring {
    active: String,
    keys: BTreeMap<String, [u8; KEY_LEN]>,
    source: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct KeyringFile {
    active: String,
    /// Key id to base64 key material.
    keys: BTreeMap<String, String>,
}

impl Keyring {
    /// Load the keyring at `path`. Where there is none, generate one there, unless
    /// `storage` holds sealed records: they were sealed with the lost keyring's keys.
    pub async fn load_or_create(path: &Path, storage: &dyn Storage) -> Result<Self, Error> {
        match std::fs::read(path) {
            Ok(bytes) => Self::parse(&bytes, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                for prefix in SEALED_PREFIXES {
                    let page = storage.list(prefix, None, 1).await.map_err(|e| Error::storage(e.to_string()))?;
                    if !page.keys.is_empty() {
                        return Err(Error::Config(format!(
                            "the keyring {} is missing, but the storage holds records sealed with its keys \
                             (under {prefix}); a new key could not open them, so none is made. Restore the \
                             keyring file, or name its place with `keyring` in tokenvault.toml",
                            path.display()
                        )));
                    }
                }
                Self::create(path)
            }
            Err(e) => Err(Error::Config(format!("cannot read keyring {}: {e}", path.display()))),
        }
    }

    /// Load an existing keyring; never creates one.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let bytes =
            std::fs::read(path).map_err(|e| Error::Config(format!("cannot read keyring {}: {e}", path.display())))?;
        Self::parse(&bytes, path)
    }

    fn parse(bytes: &[u8], path: &Path) -> Result<Self, Error> {
        let bad = |why: &str| Error::Config(format!("keyring {} is invalid: {why}", path.display()));
        let file: KeyringFile = serde_json::from_slice(bytes).map_err(|_| bad("not a keyring JSON file"))?;
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
        Ok(Keyring { active: file.active, keys, source: path.to_owned() })
    }

    /// Generate a keyring at `path` (or load the one another process just made there), for
    /// a store known to be new; [`Keyring::load_or_create`] checks that it is.
    pub fn create(path: &Path) -> Result<Self, Error> {
        let io = |e: std::io::Error| Error::Config(format!("cannot create keyring {}: {e}", path.display()));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let id = new_key_id()?;
        let mut material = [0u8; KEY_LEN];
        getrandom::fill(&mut material).map_err(|e| Error::Config(format!("no randomness for a key: {e}")))?;
        let file = KeyringFile { active: id.clone(), keys: BTreeMap::from([(id.clone(), BASE64.encode(material))]) };

        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        match options.open(path) {
            Ok(mut out) => {
                out.write_all(&serde_json::to_vec_pretty(&file).expect("keyring serializes")).map_err(io)?;
                out.sync_all().map_err(io)?;
                Ok(Keyring { active: id.clone(), keys: BTreeMap::from([(id, material)]), source: path.to_owned() })
            }
            // Another process created it first: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::load(path),
            Err(e) => Err(io(e)),
        }
    }

    pub fn active(&self) -> (&str, &[u8; KEY_LEN]) {
        (&self.active, &self.keys[&self.active])
    }

    pub fn get(&self, id: &str) -> Option<&[u8; KEY_LEN]> {
        self.keys.get(id)
    }

    pub fn source(&self) -> &Path {
        &self.source
    }
}

fn new_key_id() -> Result<String, Error> {
    let mut bytes = [0u8; 4];
    getrandom::fill(&mut bytes).map_err(|e| Error::Config(format!("no randomness for a key id: {e}")))?;
    Ok(format!("k-{}", hex::encode(bytes)))
}

/// The component's `keyring` import, served by a call's keyring.
pub(crate) struct KeyringImport;

impl HasData for KeyringImport {
    type Data<'a> = &'a Keyring;
}

/// The active key, and keys by id.
impl keyring::Host for &Keyring {
    fn active_key(&mut self) -> wasmtime::Result<Result<keyring::Key, String>> {
        let (id, material) = self.active();
        Ok(Ok(keyring::Key { id: id.to_owned(), material: material.to_vec() }))
    }

    fn key_by_id(&mut self, id: String) -> wasmtime::Result<Result<Option<Vec<u8>>, String>> {
        Ok(Ok(self.get(&id).map(|k| k.to_vec())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn created_once_with_private_mode_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.json");
        let storage = crate::storage::MemoryStorage::default();
        let first = Keyring::load_or_create(&path, &storage).await.unwrap();
        let again = Keyring::load_or_create(&path, &storage).await.unwrap();
        assert_eq!(first.active(), again.active());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }

    #[tokio::test]
    async fn a_lost_keyring_is_not_replaced_over_sealed_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.json");
        let storage = crate::storage::MemoryStorage::default();
        // Records nobody seals (API keys, leases) do not stop a first keyring.
        storage.put("apikey/x", b"{}", None).await.unwrap();
        storage.put("lease/t/u/p/n", b"{}", None).await.unwrap();
        Keyring::load_or_create(&path, &storage).await.unwrap();
        for prefix in SEALED_PREFIXES {
            std::fs::remove_file(&path).unwrap();
            let version = storage.put(&format!("{prefix}x"), b"sealed", None).await.unwrap();
            let err = Keyring::load_or_create(&path, &storage).await.err().expect("refused").to_string();
            assert!(err.contains("is missing") && err.contains(prefix), "{err}");
            assert!(!path.exists(), "no keyring was made");
            storage.delete(&format!("{prefix}x"), version).await.unwrap();
            Keyring::load_or_create(&path, &storage).await.unwrap();
        }
    }

    #[test]
    fn bad_files_are_refused_without_quoting_material() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.json");
        std::fs::write(&path, r#"{"active":"a","keys":{"a":"c2hvcnQ="}}"#).unwrap();
        let err = Keyring::load(&path).err().unwrap().to_string();
        assert!(err.contains("not 32 bytes") && !err.contains("c2hvcnQ"), "{err}");
        std::fs::write(&path, r#"{"active":"b","keys":{}}"#).unwrap();
        assert!(Keyring::load(&path).is_err());
    }
}
