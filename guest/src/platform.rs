//! What the vault needs from outside the sandbox. In the component each method is a WIT
//! import; natively (unit tests) it is [`crate::memory::MemoryPlatform`].

use crate::model::AuditEvent;
pub use crate::model::storage::{Entry, KeyPage, StorageError, Write};

/// A sealing key: its id and 32 bytes of material.
pub struct SealingKey {
    pub id: String,
    pub material: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The host refused to let the request leave.
    Denied,
    Timeout,
    Failed(String),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::Denied => f.write_str("the host denied the request"),
            HttpError::Timeout => f.write_str("the request timed out"),
            HttpError::Failed(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for HttpError {}

/// Put in a request's extensions, asks the host to give up when the response has not begun
/// within this long (the host may hold it to less; without it, the host's own limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseTimeout(pub std::time::Duration);

pub trait Platform {
    fn storage_get(&self, key: &str) -> Result<Option<Entry>, StorageError>;
    fn storage_put(&self, key: &str, value: &[u8], expected: Option<u64>) -> Result<u64, StorageError>;
    fn storage_delete(&self, key: &str, expected: u64) -> Result<(), StorageError>;
    fn storage_list(&self, prefix: &str, cursor: Option<&str>, limit: u32) -> Result<KeyPage, StorageError>;
    /// All of `writes` or none: `Conflict` when any one's expected version does not match.
    fn storage_commit(&self, writes: &[Write]) -> Result<Vec<Option<u64>>, StorageError>;
    /// Wait until the record's version is no longer `seen`, or `timeout_ms` passes; may
    /// return early, so read the record again.
    fn storage_wait_for_change(&self, key: &str, seen: Option<u64>, timeout_ms: u32) -> Result<(), StorageError>;

    fn active_key(&self) -> Result<SealingKey, String>;
    fn key_by_id(&self, id: &str) -> Result<Option<Vec<u8>>, String>;

    fn audit(&self, event: AuditEvent);

    /// Wall-clock time, Unix microseconds.
    fn now_us(&self) -> u64;
    /// Wall-clock time, Unix milliseconds.
    fn now_ms(&self) -> u64 {
        self.now_us() / 1000
    }
    /// Pause, e.g. before retrying a write while storage is unavailable.
    fn sleep_ms(&self, ms: u64);

    /// Send `request`, honouring a [`ResponseTimeout`] in its extensions.
    fn http(&self, request: oauth2::HttpRequest) -> Result<oauth2::HttpResponse, HttpError>;
}

/// Several vaults (callers) may share one platform.
impl<T: Platform + ?Sized> Platform for &T {
    fn storage_get(&self, key: &str) -> Result<Option<Entry>, StorageError> {
        (**self).storage_get(key)
    }
    fn storage_put(&self, key: &str, value: &[u8], expected: Option<u64>) -> Result<u64, StorageError> {
        (**self).storage_put(key, value, expected)
    }
    fn storage_delete(&self, key: &str, expected: u64) -> Result<(), StorageError> {
        (**self).storage_delete(key, expected)
    }
    fn storage_list(&self, prefix: &str, cursor: Option<&str>, limit: u32) -> Result<KeyPage, StorageError> {
        (**self).storage_list(prefix, cursor, limit)
    }
    fn storage_commit(&self, writes: &[Write]) -> Result<Vec<Option<u64>>, StorageError> {
        (**self).storage_commit(writes)
    }
    fn storage_wait_for_change(&self, key: &str, seen: Option<u64>, timeout_ms: u32) -> Result<(), StorageError> {
        (**self).storage_wait_for_change(key, seen, timeout_ms)
    }
    fn active_key(&self) -> Result<SealingKey, String> {
        (**self).active_key()
    }
    fn key_by_id(&self, id: &str) -> Result<Option<Vec<u8>>, String> {
        (**self).key_by_id(id)
    }
    fn audit(&self, event: AuditEvent) {
        (**self).audit(event)
    }
    fn now_us(&self) -> u64 {
        (**self).now_us()
    }
    fn sleep_ms(&self, ms: u64) {
        (**self).sleep_ms(ms)
    }
    fn http(&self, request: oauth2::HttpRequest) -> Result<oauth2::HttpResponse, HttpError> {
        (**self).http(request)
    }
}
