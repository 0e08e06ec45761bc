//! Proxy URLs (contract §8): `{TETHER_API_PUBLIC_URL}/v1/content/{image_id}
//! ?expires=UNIX&kid=K&sig=S`, where `S` is the unpadded base64url
//! HMAC-SHA256 of the image id and `expires`, bound to each other so a
//! signature fits neither another image nor a later time.
//!
//! The key is derived from `TETHER_SECRETS_KEY` with HKDF under a label of
//! its own, so it is used for nothing else; `K` is a fingerprint of it.
//! Every process with the same secrets key makes the same URL for the same
//! image and window. After a rotation, keys listed in
//! `TETHER_SECRETS_KEY_PREVIOUS` still verify the URLs they signed, found
//! by their `K`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::hmac;
use tether_shared::secrets::SecretsKey;
use uuid::Uuid;

/// The HKDF label of the content-URL key.
const LABEL: &[u8] = b"tether-api content URL signatures v1";

struct ContentKey {
    kid: String,
    key: hmac::Key,
}

/// The keys proxy URLs are signed and verified with.
pub(crate) struct ContentKeys {
    /// The first signs; all verify.
    keys: Vec<ContentKey>,
}

impl std::fmt::Debug for ContentKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<&str> = self.keys.iter().map(|k| k.kid.as_str()).collect();
        f.debug_struct("ContentKeys").field("kids", &kids).finish()
    }
}

/// Why a content URL's signature was refused (all are 403).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    Malformed,
    UnknownKey,
    Wrong,
}

impl ContentKeys {
    pub(crate) fn new(current: &SecretsKey, previous: &[SecretsKey]) -> Self {
        let keys = std::iter::once(current)
            .chain(previous)
            .map(|secrets| {
                let key = secrets.derive(LABEL);
                let fingerprint = hmac::sign(&key, b"key id");
                ContentKey { kid: URL_SAFE_NO_PAD.encode(&fingerprint.as_ref()[..6]), key }
            })
            .collect();
        Self { keys }
    }

    /// The query of the proxy URL of `image_id` until `expires` (Unix time).
    pub(crate) fn query(&self, image_id: Uuid, expires: i64) -> String {
        let signer = &self.keys[0];
        let sig = hmac::sign(&signer.key, message(image_id, expires).as_bytes());
        format!("expires={expires}&kid={}&sig={}", signer.kid, URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }

    /// Checks a URL's signature (in constant time).
    pub(crate) fn verify(&self, image_id: Uuid, expires: i64, kid: &str, sig: &str) -> Result<(), Refusal> {
        let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|_| Refusal::Malformed)?;
        let key = self.keys.iter().find(|k| k.kid == kid).ok_or(Refusal::UnknownKey)?;
        hmac::verify(&key.key, message(image_id, expires).as_bytes(), &sig).map_err(|_| Refusal::Wrong)
    }
}

/// What is signed: the id in its lowercase hyphenated form, and `expires`.
fn message(image_id: Uuid, expires: i64) -> String {
    format!("tether-content\n{}\n{expires}", image_id.hyphenated())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SecretsKey {
        base64::engine::general_purpose::STANDARD.encode([byte; 32]).parse().expect("32 bytes")
    }

    fn parts(query: &str) -> (i64, String, String) {
        let get = |name: &str| {
            query.split('&').find_map(|p| p.strip_prefix(&format!("{name}="))).expect("param").to_owned()
        };
        (get("expires").parse().expect("number"), get("kid"), get("sig"))
    }

    #[test]
    fn signatures_bind_the_image_and_the_expiry_and_survive_a_rotation() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let old = ContentKeys::new(&key(1), &[]);
        let query = old.query(a, 1_800_000_000);
        assert_eq!(query, ContentKeys::new(&key(1), &[]).query(a, 1_800_000_000), "every process agrees");
        let (expires, kid, sig) = parts(&query);
        assert_eq!(old.verify(a, expires, &kid, &sig), Ok(()));
        assert_eq!(old.verify(b, expires, &kid, &sig), Err(Refusal::Wrong), "another image");
        assert_eq!(old.verify(a, expires + 1, &kid, &sig), Err(Refusal::Wrong), "extended");
        assert_eq!(old.verify(a, expires, "other", &sig), Err(Refusal::UnknownKey));
        assert_eq!(old.verify(a, expires, &kid, "!!"), Err(Refusal::Malformed));
        assert!(!sig.contains('=') && !sig.contains('+') && !sig.contains('/'), "unpadded base64url");

        let rotated = ContentKeys::new(&key(2), &[key(1)]);
        assert_eq!(rotated.verify(a, expires, &kid, &sig), Ok(()), "the previous key still verifies");
        let (_, new_kid, _) = parts(&rotated.query(a, expires));
        assert_ne!(new_kid, kid, "the new key signs, under its own id");
        assert_eq!(ContentKeys::new(&key(2), &[]).verify(a, expires, &kid, &sig), Err(Refusal::UnknownKey));
    }
}
