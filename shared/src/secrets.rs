//! Every secret Tether handles, in one place: the [`Secret`] type that never
//! prints (database and broker URLs, API tokens, signed URLs, SAS tokens),
//! how a secret is read from configuration and from a request (a SAS token,
//! [`sas_token`]), and how the ones Tether keeps are sealed.
//!
//! Secrets that Tether must keep between the scheduler and the workers (an
//! Azure request's SAS token) are stored in Postgres only sealed with
//! `TETHER_SECRETS_KEY`: AES-256-GCM (ring), a random nonce per secret, and
//! the import's id as associated data, so that a sealed token copied onto
//! another import does not open.
//!
//! The same key also yields keys for other purposes ([`SecretsKey::derive`]:
//! HKDF-SHA256, one label per purpose), so that a key used to sign the
//! access API's proxy URLs tells nothing about the one that seals tokens.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::{hkdf, hmac};
use uuid::Uuid;

/// A string that must never be printed: its `Debug` shows `******`, and it
/// has no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret itself, for the one place that must send it somewhere.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("******")
    }
}

/// A secret from the environment or the command line (clap): any text.
impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret::new(s))
    }
}

/// An Azure SAS token as a request carries it (contract §2), without the
/// leading `?` a copied URL query has; `None` unless it is a SAS token (it
/// has a `sig=` part, and no control character). The caller's message must
/// not quote the value: it is the secret.
pub fn sas_token(raw: &str) -> Option<Secret> {
    let token = raw.strip_prefix('?').unwrap_or(raw);
    let signed = token.split('&').any(|part| part.starts_with("sig="));
    (signed && !token.chars().any(char::is_control)).then(|| Secret::new(token))
}

/// `TETHER_SECRETS_KEY`: 32 bytes, base64. Its `Debug` shows nothing.
#[derive(Clone)]
pub struct SecretsKey(std::sync::Arc<Keys>);

struct Keys {
    seal: LessSafeKey,
    /// The pseudo-random key that [`SecretsKey::derive`] expands.
    derive: hkdf::Prk,
}

/// HKDF's salt: fixed, as the input key is already uniformly random.
const DERIVE_SALT: &[u8] = b"tether secrets key derivation v1";

impl fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretsKey(******)")
    }
}

impl FromStr for SecretsKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const FIX: &str = "make one with `head -c 32 /dev/urandom | base64`";
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .map_err(|_| format!("TETHER_SECRETS_KEY is not base64: {FIX}"))?;
        let key = UnboundKey::new(&AES_256_GCM, &bytes)
            .map_err(|_| format!("TETHER_SECRETS_KEY holds {} bytes, not 32: {FIX}", bytes.len()))?;
        let derive = hkdf::Salt::new(hkdf::HKDF_SHA256, DERIVE_SALT).extract(&bytes);
        Ok(Self(std::sync::Arc::new(Keys { seal: LessSafeKey::new(key), derive })))
    }
}

/// A sealed secret that does not open.
#[derive(Debug, thiserror::Error)]
#[error("the stored secret cannot be decrypted with this TETHER_SECRETS_KEY (a different or rotated key?)")]
pub struct CannotOpen;

impl SecretsKey {
    /// Seals `secret` for the import `import_id`: nonce, then ciphertext and tag.
    pub fn seal(&self, secret: &Secret, import_id: Uuid) -> Vec<u8> {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let mut sealed = secret.expose().as_bytes().to_vec();
        // Sealing fails only for inputs of gigabytes.
        if self
            .0
            .seal
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(import_id.as_bytes()),
                &mut sealed,
            )
            .is_err()
        {
            return Vec::new();
        }
        let mut out = nonce.to_vec();
        out.append(&mut sealed);
        out
    }

    /// Opens what [`SecretsKey::seal`] sealed for the same import.
    pub fn open(&self, sealed: &[u8], import_id: Uuid) -> Result<Secret, CannotOpen> {
        let (nonce, ciphertext) = sealed.split_at_checked(NONCE_LEN).ok_or(CannotOpen)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CannotOpen)?;
        let mut buffer = ciphertext.to_vec();
        let plain = self
            .0
            .seal
            .open_in_place(nonce, Aad::from(import_id.as_bytes()), &mut buffer)
            .map_err(|_| CannotOpen)?;
        String::from_utf8(plain.to_vec()).map(Secret::new).map_err(|_| CannotOpen)
    }

    /// An HMAC-SHA256 key for the purpose `label` alone (HKDF-SHA256 with
    /// `label` as its info): keys of different labels are unrelated.
    pub fn derive(&self, label: &[u8]) -> hmac::Key {
        let info = [label];
        // HMAC_SHA256's output length (32) is far below HKDF's limit (8160).
        match self.0.derive.expand(&info, hmac::HMAC_SHA256) {
            Ok(okm) => okm.into(),
            Err(_) => unreachable!("HKDF-SHA256 can always expand 32 bytes"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print_and_sas_tokens_are_recognised() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "******");
        let parsed: Secret = "postgres://u:p@h/db".parse().unwrap_or_else(|never| match never {});
        assert_eq!(parsed.expose(), "postgres://u:p@h/db");
        let cases: [(&str, Option<&str>); 6] = [
            ("sv=2022-11-02&sp=rl&sig=abc%2B", Some("sv=2022-11-02&sp=rl&sig=abc%2B")),
            ("?sv=1&sig=x", Some("sv=1&sig=x")),
            ("sig=x", Some("sig=x")),
            ("sv=1&sp=rl", None),
            ("sv=1&xsig=x", None),
            ("sv=1&sig=x\n", None),
        ];
        for (raw, expected) in cases {
            assert_eq!(sas_token(raw).as_ref().map(Secret::expose), expected, "{raw:?}");
        }
    }

    #[test]
    fn sealed_secrets_open_only_with_their_key_and_import() {
        let key: SecretsKey = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".parse().expect("32 bytes");
        let other: SecretsKey = "HwECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".parse().expect("32 bytes");
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let secret = Secret::new("sv=2022-11-02&sp=rl&sig=abc%2Bdef");
        let sealed = key.seal(&secret, a);
        assert!(!sealed.windows(9).any(|w| w == b"sig=abc%2"), "the token is not stored in clear");
        assert_eq!(key.open(&sealed, a).expect("opens").expose(), secret.expose());
        assert!(key.open(&sealed, b).is_err(), "bound to its import");
        assert!(other.open(&sealed, a).is_err(), "bound to its key");
        assert!(key.open(&sealed[..5], a).is_err());
        assert_ne!(key.seal(&secret, a), sealed, "a fresh nonce each time");
        let short = "AAEC".parse::<SecretsKey>().expect_err("too short");
        assert!(short.contains("not 32") && short.contains("urandom"), "{short}");
        assert!("not base64!".parse::<SecretsKey>().is_err());
        assert_eq!(format!("{key:?}"), "SecretsKey(******)");

        let tag = |k: &SecretsKey, label: &[u8]| hmac::sign(&k.derive(label), b"m").as_ref().to_vec();
        assert_eq!(tag(&key, b"a"), tag(&key.clone(), b"a"), "derivation is deterministic");
        assert_ne!(tag(&key, b"a"), tag(&key, b"b"), "one key per label");
        assert_ne!(tag(&key, b"a"), tag(&other, b"a"), "one key per secrets key");
    }
}
