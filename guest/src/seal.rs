//! Sealed records: AES-256-GCM-SIV with associated data.
//!
//! Envelope, format 1: `[format:1][key-id length:1][key id][nonce:12][ciphertext+tag]`.
//! The associated data binds the record to where it belongs (its kind and identifying
//! fields, e.g. tenant, user, provider, name), to the key id and to the format, so a record
//! copied under another key, or a header edited to name another key, fails to open.

use aes_gcm_siv::aead::{Aead, KeyInit, Payload};
use aes_gcm_siv::{Aes256GcmSiv, Nonce};

use crate::model::{Result, VaultError};

pub use crate::model::storage::ENVELOPE_FORMAT as FORMAT_VERSION;
const NONCE_LEN: usize = 12;
const KEY_LEN: usize = 32;

/// Where a record belongs: its kind and identifying fields, in order.
pub type Context<'a> = [&'a str];

pub fn seal(key_id: &str, key: &[u8], context: &Context, plaintext: &[u8], nonce: [u8; NONCE_LEN]) -> Result<Vec<u8>> {
    let id_len = u8::try_from(key_id.len())
        .ok()
        .filter(|len| *len > 0)
        .ok_or_else(|| VaultError::Integrity("key id must be 1 to 255 bytes".into()))?;
    let cipher = cipher(key, key_id)?;
    let aad = associated_data(context, key_id);
    let ciphertext = cipher
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad: &aad })
        .map_err(|_| VaultError::Integrity("sealing failed".into()))?;

    let mut out = Vec::with_capacity(2 + key_id.len() + NONCE_LEN + ciphertext.len());
    out.push(FORMAT_VERSION);
    out.push(id_len);
    out.extend_from_slice(key_id.as_bytes());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ciphertext);
    Ok(out)
}

/// The key id an envelope names, so the caller can fetch that key.
pub fn key_id(envelope: &[u8]) -> Result<&str> {
    crate::model::storage::envelope_key_id(envelope).ok_or_else(|| match envelope.first() {
        Some(&format) if format != FORMAT_VERSION => VaultError::Integrity(format!("unknown record format {format}")),
        _ => VaultError::Integrity("record is not a sealed envelope".into()),
    })
}

pub fn open(envelope: &[u8], key: &[u8], context: &Context) -> Result<Vec<u8>> {
    let (key_id, nonce, ciphertext) = parse(envelope)?;
    let cipher = cipher(key, key_id)?;
    let aad = associated_data(context, key_id);
    cipher.decrypt(Nonce::from_slice(nonce), Payload { msg: ciphertext, aad: &aad }).map_err(|_| {
        VaultError::Integrity(format!(
            "{} record failed to open: altered, moved or sealed with another key",
            context[0]
        ))
    })
}

fn cipher(key: &[u8], key_id: &str) -> Result<Aes256GcmSiv> {
    if key.len() != KEY_LEN {
        return Err(VaultError::Integrity(format!("key {key_id:?} is {} bytes, expected {KEY_LEN}", key.len())));
    }
    Aes256GcmSiv::new_from_slice(key).map_err(|_| VaultError::Integrity(format!("key {key_id:?} is unusable")))
}

fn parse(envelope: &[u8]) -> Result<(&str, &[u8], &[u8])> {
    let malformed = || VaultError::Integrity("record is not a sealed envelope".into());
    let (&format, rest) = envelope.split_first().ok_or_else(malformed)?;
    if format != FORMAT_VERSION {
        return Err(VaultError::Integrity(format!("unknown record format {format}")));
    }
    let (&id_len, rest) = rest.split_first().ok_or_else(malformed)?;
    let id_len = usize::from(id_len);
    if rest.len() < id_len + NONCE_LEN + 16 {
        return Err(malformed());
    }
    let (id, rest) = rest.split_at(id_len);
    let key_id = std::str::from_utf8(id).map_err(|_| malformed())?;
    let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
    Ok((key_id, nonce, ciphertext))
}

/// Length-prefixed fields, so that ("ab", "c") and ("a", "bc") differ.
fn associated_data(context: &Context, key_id: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(64);
    aad.extend_from_slice(b"tokenvault");
    aad.push(FORMAT_VERSION);
    for field in context.iter().chain(std::iter::once(&key_id)) {
        aad.extend_from_slice(&(field.len() as u32).to_be_bytes());
        aad.extend_from_slice(field.as_bytes());
    }
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];
    const OTHER_KEY: [u8; 32] = [9; 32];
    const CTX: &Context = &["token", "acme", "alice", "github", "default"];

    fn sealed() -> Vec<u8> {
        seal("k1", &KEY, CTX, b"secret payload", [1; 12]).unwrap()
    }

    #[test]
    fn round_trip() {
        let envelope = sealed();
        assert_eq!(key_id(&envelope).unwrap(), "k1");
        assert_eq!(open(&envelope, &KEY, CTX).unwrap(), b"secret payload");
        assert!(!envelope.windows(6).any(|w| w == b"secret"), "plaintext visible in envelope");
    }

    #[test]
    fn every_flipped_byte_is_an_integrity_error() {
        let envelope = sealed();
        for i in 0..envelope.len() {
            let mut tampered = envelope.clone();
            tampered[i] ^= 0x01;
            let result = open(&tampered, &KEY, CTX);
            assert!(matches!(result, Err(VaultError::Integrity(_))), "byte {i} flipped opened anyway");
        }
    }

    #[test]
    fn context_binds_every_field() {
        let envelope = sealed();
        let others: [&Context; 6] = [
            &["token", "other", "alice", "github", "default"],
            &["token", "acme", "bob", "github", "default"],
            &["token", "acme", "alice", "google", "default"],
            &["token", "acme", "alice", "github", "work"],
            &["provider", "acme", "alice", "github", "default"],
            // Same concatenation, other boundaries.
            &["token", "acmea", "lice", "github", "default"],
        ];
        for ctx in others {
            assert!(matches!(open(&envelope, &KEY, ctx), Err(VaultError::Integrity(_))), "{ctx:?} opened");
        }
    }

    #[test]
    fn wrong_key_fails_and_key_id_is_bound() {
        let envelope = sealed();
        assert!(matches!(open(&envelope, &OTHER_KEY, CTX), Err(VaultError::Integrity(_))));
        // Rewrite the header to claim another key id of the same length: still bound.
        let mut renamed = envelope.clone();
        renamed[2..4].copy_from_slice(b"k2");
        assert!(matches!(open(&renamed, &KEY, CTX), Err(VaultError::Integrity(_))));
    }

    #[test]
    fn truncated_and_foreign_bytes_are_integrity_errors() {
        let envelope = sealed();
        for len in [0, 1, 2, 10, envelope.len() - 1] {
            assert!(matches!(open(&envelope[..len], &KEY, CTX), Err(VaultError::Integrity(_))));
        }
        assert!(matches!(open(b"{\"access_token\":\"x\"}", &KEY, CTX), Err(VaultError::Integrity(_))));
    }

    #[test]
    fn random_nonces_give_distinct_envelopes() {
        let a = seal("k1", &KEY, CTX, b"same", [1; 12]).unwrap();
        let b = seal("k1", &KEY, CTX, b"same", [2; 12]).unwrap();
        assert_ne!(a, b);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(500))]

            // Whatever storage hands back, opening it fails cleanly or yields the record.
            #[test]
            fn any_bytes_open_to_an_integrity_error_without_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
                let _ = key_id(&bytes);
                prop_assert!(matches!(open(&bytes, &KEY, CTX), Err(VaultError::Integrity(_))));
            }

            #[test]
            fn any_change_to_a_record_is_an_integrity_error(at in 0usize..64, flip in 1u8..=255, cut in 0usize..64) {
                let envelope = sealed();
                let mut changed = envelope.clone();
                let at = at % envelope.len();
                changed[at] ^= flip;
                prop_assert!(matches!(open(&changed, &KEY, CTX), Err(VaultError::Integrity(_))));
                let cut = cut % envelope.len();
                prop_assert!(matches!(open(&envelope[..cut], &KEY, CTX), Err(VaultError::Integrity(_))));
            }
        }
    }

    #[test]
    fn bad_keys_are_refused() {
        assert!(seal("k1", &[0; 16], CTX, b"x", [0; 12]).is_err());
        assert!(seal("", &KEY, CTX, b"x", [0; 12]).is_err());
    }
}
