//! Secrets at rest: values that are secrets (Vault KV values, the keyring)
//! are sealed with AES-256-GCM before they reach the journal, so no journal
//! file ever holds one in clear.
//!
//! The key is 32 random bytes in a file Ferry creates mode 0600 (or one
//! the operator gives). Its `key_id` — the first four bytes of SHA-256 of
//! the key — is stored with every sealed value, so a journal opened with
//! another key file is detected, not decrypted into garbage. Each value
//! gets a fresh random 96-bit nonce; the event's shard, sequence and key
//! are not bound as associated data because sealing happens before the
//! journal numbers the event.

use ferry_core::Value;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Why sealing or opening failed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("cannot read the journal key {path}: {reason}; give the key file this journal was written with")]
    Read { path: String, reason: String },
    #[error("the journal key {path} is {len} bytes, not 32; give the key file this journal was written with")]
    BadKey { path: String, len: usize },
    #[error("cannot create the journal key {path}: {reason}")]
    Create { path: String, reason: String },
    #[error("a value was sealed with key {found:08x}, not this journal key ({expected:08x}); give the key file this journal was written with")]
    WrongKey { found: u32, expected: u32 },
    #[error("a sealed value failed authentication: the journal is damaged or was tampered with")]
    Tampered,
}

/// The key that seals and opens secret values.
pub struct SealKey {
    key: LessSafeKey,
    id: u32,
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealKey({:08x})", self.id)
    }
}

impl SealKey {
    /// Reads the key file, creating it (0600, 32 random bytes) when absent.
    pub fn load_or_create(path: &Path) -> Result<SealKey, SealError> {
        let show = || path.display().to_string();
        match std::fs::read(path) {
            Ok(bytes) => Self::from_bytes(&bytes).ok_or(SealError::BadKey {
                path: show(),
                len: bytes.len(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = [0u8; 32];
                SystemRandom::new()
                    .fill(&mut bytes)
                    .map_err(|_| SealError::Create {
                        path: show(),
                        reason: "no randomness available".into(),
                    })?;
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|e| SealError::Create {
                        path: show(),
                        reason: e.to_string(),
                    })?;
                f.write_all(&bytes)
                    .and_then(|()| f.sync_all())
                    .map_err(|e| SealError::Create {
                        path: show(),
                        reason: e.to_string(),
                    })?;
                Ok(Self::from_bytes(&bytes).expect("32 bytes"))
            }
            Err(e) => Err(SealError::Read {
                path: show(),
                reason: e.to_string(),
            }),
        }
    }

    fn from_bytes(bytes: &[u8]) -> Option<SealKey> {
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).ok()?);
        let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
        let id = u32::from_be_bytes(digest.as_ref()[..4].try_into().ok()?);
        Some(SealKey { key, id })
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    /// Seals `plain` into a [`Value::Sealed`].
    pub fn seal(&self, plain: &[u8]) -> Value {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .expect("system randomness");
        let mut buf = plain.to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut buf)
            .expect("AES-GCM sealing of an in-memory buffer");
        Value::Sealed {
            key_id: self.id,
            nonce,
            ciphertext: buf,
        }
    }

    /// The bytes of a value: plain as is, sealed opened with this key.
    pub fn open(&self, value: &Value) -> Result<Vec<u8>, SealError> {
        match value {
            Value::Plain(b) => Ok(b.clone()),
            Value::Sealed {
                key_id,
                nonce,
                ciphertext,
            } => {
                if *key_id != self.id {
                    return Err(SealError::WrongKey {
                        found: *key_id,
                        expected: self.id,
                    });
                }
                let mut buf = ciphertext.clone();
                let plain = self
                    .key
                    .open_in_place(Nonce::assume_unique_for_key(*nonce), Aad::empty(), &mut buf)
                    .map_err(|_| SealError::Tampered)?;
                Ok(plain.to_vec())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn seals_opens_and_detects_the_wrong_key_and_tampering() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("journal.key");
        let k = SealKey::load_or_create(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let again = SealKey::load_or_create(&path).unwrap();
        assert_eq!(k.id(), again.id());
        let secret = b"keyring.master=s3cr3t-value";
        let sealed = k.seal(secret);
        let Value::Sealed { ciphertext, .. } = &sealed else {
            panic!("not sealed")
        };
        assert!(!ciphertext.windows(6).any(|w| w == b"s3cr3t"));
        assert_eq!(again.open(&sealed).unwrap(), secret);
        assert_ne!(k.seal(secret), sealed, "nonces must differ");
        let other = SealKey::load_or_create(&t.path().join("other.key")).unwrap();
        assert!(matches!(
            other.open(&sealed),
            Err(SealError::WrongKey { .. })
        ));
        let Value::Sealed {
            key_id,
            nonce,
            mut ciphertext,
        } = sealed
        else {
            unreachable!()
        };
        ciphertext[0] ^= 1;
        let bad = Value::Sealed {
            key_id,
            nonce,
            ciphertext,
        };
        assert!(matches!(k.open(&bad), Err(SealError::Tampered)));
        std::fs::write(t.path().join("short.key"), b"abc").unwrap();
        assert!(matches!(
            SealKey::load_or_create(&t.path().join("short.key")),
            Err(SealError::BadKey { len: 3, .. })
        ));
    }
}
