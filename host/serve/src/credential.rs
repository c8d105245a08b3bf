//! The service's own bearer credentials (API keys `tvk_…`, access tokens `tvp_…`), made and
//! checked one way: `{prefix}{id}_{secret}`, a random hex id that names the record and 32
//! random bytes. Only the SHA-256 of the whole credential is kept; a 256-bit random secret
//! needs no slow hash, since there is nothing to guess from its digest.

use base64::Engine as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use tokenvault::error::{Error, Result};

/// One kind of credential: its prefix and the bytes of its id.
pub struct Kind {
    pub prefix: &'static str,
    pub id_bytes: usize,
}

/// A credential just made: the only time `credential` is known.
pub struct Made {
    pub id: String,
    pub credential: String,
    pub sha256: String,
}

impl Kind {
    /// A new credential with a new id.
    pub fn make(&self) -> Result<Made> {
        let id = hex::encode(random(self.id_bytes)?);
        self.make_for(&id)
    }

    /// A new secret for an existing id (a rotation).
    pub fn make_for(&self, id: &str) -> Result<Made> {
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random(32)?);
        let credential = format!("{}{id}_{secret}", self.prefix);
        Ok(Made { id: id.to_owned(), sha256: digest(&credential), credential })
    }

    /// The id `presented` names, if it has this kind's shape (not yet whether it is valid).
    pub fn id_of<'a>(&self, presented: &'a str) -> Option<&'a str> {
        let (id, _secret) = presented.strip_prefix(self.prefix)?.split_once('_')?;
        self.is_id(id).then_some(id)
    }

    /// Whether `id` is one this kind makes (so it can name a storage key).
    pub fn is_id(&self, id: &str) -> bool {
        id.len() == 2 * self.id_bytes && id.bytes().all(|b| b.is_ascii_hexdigit())
    }
}

/// Whether `presented` is the credential whose digest is `sha256` (in constant time).
pub fn matches(presented: &str, sha256: &str) -> bool {
    digest(presented).as_bytes().ct_eq(sha256.as_bytes()).into()
}

fn digest(credential: &str) -> String {
    hex::encode(Sha256::digest(credential.as_bytes()))
}

fn random(n: usize) -> Result<Vec<u8>> {
    let mut bytes = vec![0u8; n];
    // The OS error says what failed; it holds no value.
    getrandom::fill(&mut bytes).map_err(|e| Error::Config(format!("no randomness for a credential: {e}")))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIND: Kind = Kind { prefix: "tvx_", id_bytes: 4 };

    #[test]
    fn a_made_credential_matches_its_digest_only() {
        let made = KIND.make().unwrap();
        assert_eq!(KIND.id_of(&made.credential), Some(made.id.as_str()));
        assert!(matches(&made.credential, &made.sha256));
        let rotated = KIND.make_for(&made.id).unwrap();
        assert_eq!(rotated.id, made.id);
        assert!(!matches(&made.credential, &rotated.sha256));
        for bad in ["", "tvx_", "tvx_zz_x", "tvk_00000000_x", "tvx_000000_x", "tvx_0000000g_x"] {
            assert_eq!(KIND.id_of(bad), None, "{bad:?}");
        }
    }
}
