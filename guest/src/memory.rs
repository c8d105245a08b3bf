//! An in-process [`Platform`] for native unit tests: versioned map storage, a fixed
//! keyring, a settable clock, recorded audit events and a scripted token endpoint.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

use crate::model::AuditEvent;
use crate::platform::{Entry, HttpError, KeyPage, Platform, SealingKey, StorageError, Write};

type Responder = Box<dyn Fn(&oauth2::HttpRequest) -> Result<oauth2::HttpResponse, HttpError>>;

/// What "other callers" do while one sleeps or waits.
type Sleeper = Box<dyn Fn(&MemoryPlatform)>;

pub struct MemoryPlatform {
    pub records: RefCell<BTreeMap<String, (Vec<u8>, u64)>>,
    /// Every key read, in order.
    pub reads: RefCell<Vec<String>>,
    next_version: Cell<u64>,
    pub keys: RefCell<Vec<(String, Vec<u8>)>>,
    pub events: RefCell<Vec<AuditEvent>>,
    pub now_ms: Cell<u64>,
    pub requests: RefCell<Vec<oauth2::HttpRequest>>,
    responder: RefCell<Responder>,
    /// Runs at every sleep and wait: what "other callers" do meanwhile.
    sleeper: RefCell<Option<Sleeper>>,
    pub slept_ms: Cell<u64>,
    /// Writes under this prefix fail (storage unavailable) this many more times.
    failing_puts: RefCell<(String, u32)>,
}

impl MemoryPlatform {
    pub fn new() -> Self {
        MemoryPlatform {
            records: RefCell::default(),
            reads: RefCell::default(),
            next_version: Cell::new(1),
            keys: RefCell::new(vec![("k1".into(), vec![1; 32])]),
            events: RefCell::default(),
            now_ms: Cell::new(1_700_000_000_000),
            requests: RefCell::default(),
            responder: RefCell::new(Box::new(|_| Err(HttpError::Denied))),
            sleeper: RefCell::new(None),
            slept_ms: Cell::new(0),
            failing_puts: RefCell::new((String::new(), 0)),
        }
    }

    pub fn respond(
        &self,
        responder: impl Fn(&oauth2::HttpRequest) -> Result<oauth2::HttpResponse, HttpError> + 'static,
    ) {
        *self.responder.borrow_mut() = Box::new(responder);
    }

    pub fn on_sleep(&self, sleeper: impl Fn(&MemoryPlatform) + 'static) {
        *self.sleeper.borrow_mut() = Some(Box::new(sleeper));
    }

    pub fn fail_puts(&self, prefix: &str, times: u32) {
        *self.failing_puts.borrow_mut() = (prefix.to_owned(), times);
    }

    /// Time passes while this caller waits.
    fn pass_ms(&self, ms: u64) {
        self.now_ms.set(self.now_ms.get() + ms);
        self.slept_ms.set(self.slept_ms.get() + ms);
    }

    fn others_act(&self) {
        if let Some(sleeper) = self.sleeper.borrow().as_ref() {
            sleeper(self);
        }
    }

    /// A write under the failing prefix fails while failures are left.
    fn injected_failure(&self, key: &str) -> Result<(), StorageError> {
        let mut failing = self.failing_puts.borrow_mut();
        if failing.1 > 0 && key.starts_with(&failing.0) {
            failing.1 -= 1;
            return Err(StorageError::Unavailable("memory: injected failure".into()));
        }
        Ok(())
    }

    /// The events in the outbox, oldest first.
    pub fn outbox(&self) -> Vec<crate::model::events::Event> {
        let records = self.records.borrow();
        records
            .range(crate::model::events::OUTBOX_PREFIX.to_owned()..)
            .take_while(|(key, _)| key.starts_with(crate::model::events::OUTBOX_PREFIX))
            .map(|(_, (value, _))| crate::model::events::Event::from_json(value).unwrap())
            .collect()
    }

    pub fn advance_secs(&self, secs: u64) {
        self.now_ms.set(self.now_ms.get() + secs * 1000);
    }
}

impl Platform for MemoryPlatform {
    fn storage_get(&self, key: &str) -> Result<Option<Entry>, StorageError> {
        self.reads.borrow_mut().push(key.to_owned());
        Ok(self.records.borrow().get(key).map(|(value, version)| Entry { value: value.clone(), version: *version }))
    }

    fn storage_put(&self, key: &str, value: &[u8], expected: Option<u64>) -> Result<u64, StorageError> {
        self.injected_failure(key)?;
        let mut records = self.records.borrow_mut();
        if records.get(key).map(|(_, v)| *v) != expected {
            return Err(StorageError::Conflict);
        }
        let version = self.next_version.get();
        self.next_version.set(version + 1);
        records.insert(key.into(), (value.to_vec(), version));
        Ok(version)
    }

    fn storage_delete(&self, key: &str, expected: u64) -> Result<(), StorageError> {
        let mut records = self.records.borrow_mut();
        if records.get(key).map(|(_, v)| *v) != Some(expected) {
            return Err(StorageError::Conflict);
        }
        records.remove(key);
        Ok(())
    }

    fn storage_commit(&self, writes: &[Write]) -> Result<Vec<Option<u64>>, StorageError> {
        for write in writes {
            self.injected_failure(write.key())?;
        }
        let mut records = self.records.borrow_mut();
        for write in writes {
            let current = records.get(write.key()).map(|(_, v)| *v);
            let expected = match write {
                Write::Put { expected, .. } => *expected,
                Write::Delete { expected, .. } => Some(*expected),
            };
            if current != expected {
                return Err(StorageError::Conflict);
            }
        }
        let mut versions = Vec::new();
        for write in writes {
            match write {
                Write::Put { key, value, .. } => {
                    let version = self.next_version.get();
                    self.next_version.set(version + 1);
                    records.insert(key.clone(), (value.clone(), version));
                    versions.push(Some(version));
                }
                Write::Delete { key, .. } => {
                    records.remove(key);
                    versions.push(None);
                }
            }
        }
        Ok(versions)
    }

    fn storage_list(&self, prefix: &str, cursor: Option<&str>, limit: u32) -> Result<KeyPage, StorageError> {
        let records = self.records.borrow();
        let keys: Vec<String> = records
            .keys()
            .filter(|k| k.starts_with(prefix) && cursor.is_none_or(|c| k.as_str() > c))
            .take(limit as usize)
            .cloned()
            .collect();
        let cursor = (keys.len() == limit as usize).then(|| keys.last().cloned()).flatten();
        Ok(KeyPage { keys, cursor })
    }

    /// Other callers act once (the sleeper); if they changed the record the wait ends
    /// a millisecond later, otherwise it lasts the whole timeout.
    fn storage_wait_for_change(&self, key: &str, seen: Option<u64>, timeout_ms: u32) -> Result<(), StorageError> {
        self.others_act();
        let changed = self.records.borrow().get(key).map(|(_, v)| *v) != seen;
        self.pass_ms(if changed { 1 } else { u64::from(timeout_ms) });
        Ok(())
    }

    fn active_key(&self) -> Result<SealingKey, String> {
        let keys = self.keys.borrow();
        let (id, material) = keys.last().ok_or("empty keyring")?;
        Ok(SealingKey { id: id.clone(), material: material.clone() })
    }

    fn key_by_id(&self, id: &str) -> Result<Option<Vec<u8>>, String> {
        Ok(self.keys.borrow().iter().find(|(k, _)| k == id).map(|(_, m)| m.clone()))
    }

    fn audit(&self, event: AuditEvent) {
        self.events.borrow_mut().push(event);
    }

    fn now_us(&self) -> u64 {
        self.now_ms.get() * 1000
    }

    fn sleep_ms(&self, ms: u64) {
        self.pass_ms(ms);
        self.others_act();
    }

    fn http(&self, request: oauth2::HttpRequest) -> Result<oauth2::HttpResponse, HttpError> {
        let result = (self.responder.borrow())(&request);
        self.requests.borrow_mut().push(request);
        result
    }
}
