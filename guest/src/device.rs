//! The device authorization flow (RFC 8628), for users who connect on another device.
//!
//! `begin_device` asks the provider for a device code and a user code, seals the pending
//! flow under a random handle and returns what the user needs. `poll_device` is one step:
//! the flow can take minutes, longer than any one call may run, so the interval lives in
//! the sealed record between polls. A poll before the interval is up is answered without
//! a request; a poll that is due first claims the slot by compare-and-swap, so concurrent
//! pollers make one request per interval.

use crate::connect::{is_random_token, random_token, with_requested_scopes};
use crate::model::*;
use crate::oauth::{self, DevicePoll};
use crate::platform::{Platform, StorageError};
use crate::provider;
use crate::record::{self, DeviceRecord};
use crate::vault::{Put, Vault};

/// RFC 8628 §3.5: `slow_down` adds five seconds to the interval.
const SLOW_DOWN_SECS: u32 = 5;
/// RFC 8628 §3.2: the interval when the provider names none.
const DEFAULT_INTERVAL_SECS: u64 = 5;
/// Bounds on what a provider may ask for.
const MAX_INTERVAL_SECS: u64 = 60;
const MAX_DEVICE_TTL_SECS: u64 = 3600;

impl<P: Platform> Vault<P> {
    /// Start a device flow for `key`. `scopes`: none requests the provider's configured ones.
    pub fn begin_device(&self, key: &ConnectionKey, scopes: Option<Vec<String>>) -> Result<DeviceAuthorization> {
        let result = self.begin_device_inner(key, scopes);
        self.audit_token(AuditAction::ConnectDevice, key, AuditOutcome::from(&result));
        result
    }

    /// One poll of a device flow: pending (with the seconds to wait) or connected.
    pub fn poll_device(&self, handle: &str) -> Result<DeviceStatus> {
        let (flow, version) =
            self.load_device(handle).inspect_err(|err| self.audit_unkeyed(AuditAction::ConnectComplete, err))?;
        let key = flow.connection.clone();
        let result = self.poll_device_inner(handle, flow, version);
        // Pending polls are routine; the audit log records how the flow ended.
        if !matches!(result, Ok(DeviceStatus::Pending { .. })) {
            self.audit_token(AuditAction::ConnectComplete, &key, AuditOutcome::from(&result));
        }
        result
    }

    fn begin_device_inner(&self, key: &ConnectionKey, scopes: Option<Vec<String>>) -> Result<DeviceAuthorization> {
        record::validate_key(key)?;
        let provider = self.load_provider(key)?;
        let scopes = scopes.unwrap_or_else(|| provider.scopes.clone());
        provider::validate_scopes(&scopes)?;
        let start = oauth::device_authorization(&provider, &scopes, &|request| self.platform().http(request))?;
        let interval = match start.interval {
            0 => DEFAULT_INTERVAL_SECS,
            secs => secs.min(MAX_INTERVAL_SECS),
        };
        let now = self.now();
        let handle = random_token()?;
        let flow = DeviceRecord {
            connection: key.clone(),
            device_code: start.device_code,
            scopes,
            interval_secs: interval as u32,
            next_poll_at: now + interval,
            expires_at: now + start.expires_in.clamp(1, MAX_DEVICE_TTL_SECS),
        };
        match self.put_sealed(&record::device_key(&handle), &record::device_context(&handle), &flow, None)? {
            Put::Written => Ok(DeviceAuthorization {
                handle,
                user_code: start.user_code,
                verification_uri: start.verification_uri,
                verification_uri_complete: start.verification_uri_complete,
                interval: flow.interval_secs,
                expires_at: flow.expires_at,
            }),
            Put::Conflict => Err(VaultError::Storage("a fresh random device handle was already taken".into())),
        }
    }

    fn load_device(&self, handle: &str) -> Result<(DeviceRecord, u64)> {
        let unknown = || VaultError::InvalidInput("unknown or finished device flow".into());
        if !is_random_token(handle) {
            return Err(unknown());
        }
        self.load_sealed(&record::device_key(handle), &record::device_context(handle))?.ok_or_else(unknown)
    }

    fn poll_device_inner(&self, handle: &str, mut flow: DeviceRecord, version: u64) -> Result<DeviceStatus> {
        let storage_key = record::device_key(handle);
        let context = record::device_context(handle);
        let now = self.now();
        if now > flow.expires_at {
            let _ = self.platform().storage_delete(&storage_key, version);
            return Err(VaultError::InvalidInput("this device flow expired; begin again".into()));
        }
        if now < flow.next_poll_at {
            return Ok(DeviceStatus::Pending { retry_after: wait(flow.next_poll_at, now) });
        }
        // Claim this interval's request.
        flow.next_poll_at = now + u64::from(flow.interval_secs);
        if let Put::Conflict = self.put_sealed(&storage_key, &context, &flow, Some(version))? {
            return Ok(DeviceStatus::Pending { retry_after: flow.interval_secs }); // another poller has it
        }
        let provider = self.load_provider(&flow.connection)?;
        let polled = oauth::poll_device(&provider, &flow.device_code, &|request| self.platform().http(request));
        match polled {
            Ok(DevicePoll::Pending) => Ok(DeviceStatus::Pending { retry_after: flow.interval_secs }),
            Ok(DevicePoll::SlowDown) => {
                flow.interval_secs = (flow.interval_secs + SLOW_DOWN_SECS).min(MAX_INTERVAL_SECS as u32);
                flow.next_poll_at = now + u64::from(flow.interval_secs);
                self.update_device(&storage_key, &context, &flow)?;
                Ok(DeviceStatus::Pending { retry_after: flow.interval_secs })
            }
            Ok(DevicePoll::Granted(grant)) => {
                self.delete_device(&storage_key)?;
                let key = flow.connection.clone();
                let info = self.save_grant(
                    &key,
                    with_requested_scopes(grant, &flow.scopes),
                    ConnectionKind::User,
                    Vec::new(),
                )?;
                Ok(DeviceStatus::Connected(Connected { key, info }))
            }
            // The user said no, or the code ran out: the flow is over.
            Err(VaultError::Provider(failure))
                if matches!(failure.code.as_deref(), Some("access_denied" | "expired_token")) =>
            {
                self.delete_device(&storage_key)?;
                Err(VaultError::Provider(failure))
            }
            // Anything else (unreachable, a server error) may pass: the flow stays, and the
            // next poll after the interval tries again.
            Err(err) => Err(err),
        }
    }

    /// Overwrite the flow this poll claimed, whatever its version now.
    fn update_device(&self, storage_key: &str, context: &crate::seal::Context, flow: &DeviceRecord) -> Result<()> {
        let Some(current) = self.storage_get(storage_key)? else {
            return Ok(()); // finished by another poller meanwhile
        };
        self.put_sealed(storage_key, context, flow, Some(current.version)).map(|_| ())
    }

    fn delete_device(&self, storage_key: &str) -> Result<()> {
        let Some(current) = self.storage_get(storage_key)? else {
            return Ok(());
        };
        match self.platform().storage_delete(storage_key, current.version) {
            Ok(()) | Err(StorageError::Conflict) => Ok(()),
            Err(StorageError::Unavailable(why)) => Err(VaultError::Storage(why)),
        }
    }
}

fn wait(until: u64, now: u64) -> u32 {
    u32::try_from(until.saturating_sub(now)).unwrap_or(u32::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use super::*;
    use crate::memory::MemoryPlatform;

    /// A provider whose token endpoint answers with the queued bodies (400 for errors).
    fn vault() -> (Vault<MemoryPlatform>, Rc<RefCell<Vec<&'static str>>>) {
        let vault = Vault::new(MemoryPlatform::new());
        vault
            .put_provider(
                None,
                ProviderConfig {
                    name: "acme".into(),
                    token_url: Some("https://idp.example/token".into()),
                    device_authorization_url: Some("https://idp.example/device".into()),
                    client_id: "tv-client".into(),
                    scopes: vec!["read".into()],
                    ..ProviderConfig::default()
                },
            )
            .unwrap();
        let answers = Rc::new(RefCell::new(Vec::new()));
        let queued = answers.clone();
        vault.platform().respond(move |request| {
            let body = if request.uri().path() == "/device" {
                r#"{"device_code":"dc-1","user_code":"WDJB-MJHT","verification_uri":"https://idp.example/activate","expires_in":900,"interval":2}"#
            } else {
                queued.borrow_mut().remove(0)
            };
            let status = if body.contains("\"error\"") { 400 } else { 200 };
            Ok(http::Response::builder().status(status).body(body.as_bytes().to_vec()).unwrap())
        });
        (vault, answers)
    }

    fn key() -> ConnectionKey {
        ConnectionKey::new("t1", "alice", "acme", "tv")
    }

    fn token_requests(vault: &Vault<MemoryPlatform>) -> usize {
        vault.platform().requests.borrow().iter().filter(|r| r.uri().path() == "/token").count()
    }

    #[test]
    fn polling_honours_the_interval_pending_and_slow_down() {
        let (vault, answers) = vault();
        let started = vault.begin_device(&key(), None).unwrap();
        assert_eq!((started.user_code.as_str(), started.interval), ("WDJB-MJHT", 2));
        let device_request = vault.platform().requests.borrow()[0].clone();
        let form: std::collections::HashMap<String, String> =
            oauth2::url::form_urlencoded::parse(device_request.body()).into_owned().collect();
        assert_eq!((form["client_id"].as_str(), form["scope"].as_str()), ("tv-client", "read"));

        // Too early: answered here.
        assert_eq!(vault.poll_device(&started.handle).unwrap(), DeviceStatus::Pending { retry_after: 2 });
        assert_eq!(token_requests(&vault), 0);

        answers.borrow_mut().push(r#"{"error":"authorization_pending"}"#);
        vault.platform().advance_secs(2);
        assert_eq!(vault.poll_device(&started.handle).unwrap(), DeviceStatus::Pending { retry_after: 2 });
        assert_eq!(token_requests(&vault), 1);

        answers.borrow_mut().push(r#"{"error":"slow_down"}"#);
        vault.platform().advance_secs(2);
        assert_eq!(
            vault.poll_device(&started.handle).unwrap(),
            DeviceStatus::Pending { retry_after: 7 },
            "slow_down adds 5 s"
        );
        vault.platform().advance_secs(6);
        assert_eq!(vault.poll_device(&started.handle).unwrap(), DeviceStatus::Pending { retry_after: 1 });
        assert_eq!(token_requests(&vault), 2, "the longer interval is kept");

        answers.borrow_mut().push(r#"{"access_token":"at-tv","token_type":"Bearer","refresh_token":"rt-tv"}"#);
        vault.platform().advance_secs(1);
        let DeviceStatus::Connected(Connected { key: connected, info }) = vault.poll_device(&started.handle).unwrap()
        else {
            panic!("expected the connection");
        };
        assert_eq!(connected, key());
        assert_eq!(info.scopes, ["read"]);
        let poll = vault.platform().requests.borrow().last().cloned().unwrap();
        let form: std::collections::HashMap<String, String> =
            oauth2::url::form_urlencoded::parse(poll.body()).into_owned().collect();
        assert_eq!(form["grant_type"], DEVICE_GRANT_TYPE_FOR_TESTS);
        assert_eq!(form["device_code"], "dc-1");
        assert_eq!(vault.get(&key()).unwrap().access_token, "at-tv");
        assert!(matches!(vault.poll_device(&started.handle), Err(VaultError::InvalidInput(_))), "finished");
    }

    #[test]
    fn denial_and_expiry_end_the_flow() {
        for (answer, code) in
            [(r#"{"error":"access_denied"}"#, "access_denied"), (r#"{"error":"expired_token"}"#, "expired_token")]
        {
            let (vault, answers) = vault();
            let started = vault.begin_device(&key(), None).unwrap();
            answers.borrow_mut().push(answer);
            vault.platform().advance_secs(2);
            match vault.poll_device(&started.handle) {
                Err(VaultError::Provider(failure)) => assert_eq!(failure.code.as_deref(), Some(code)),
                _ => panic!("expected {code}"),
            }
            assert!(matches!(vault.poll_device(&started.handle), Err(VaultError::InvalidInput(_))));
            assert!(matches!(vault.get(&key()), Err(VaultError::NotFound(_))));
        }
    }

    #[test]
    fn a_flow_past_its_expiry_is_refused_without_a_request() {
        let (vault, _) = vault();
        let started = vault.begin_device(&key(), None).unwrap();
        vault.platform().advance_secs(901);
        assert!(
            matches!(vault.poll_device(&started.handle), Err(VaultError::InvalidInput(m)) if m.contains("expired"))
        );
        assert_eq!(token_requests(&vault), 0);
    }

    const DEVICE_GRANT_TYPE_FOR_TESTS: &str = "urn:ietf:params:oauth:grant-type:device_code";
}
