//! Standard Webhooks signatures: `webhook-signature: v1,<base64>` where the
//! base64 is HMAC-SHA256 of `<webhook-id>.<webhook-timestamp>.<body>` under
//! the key that the secret (`whsec_<base64 key>`) carries.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The prefix of a secret's text.
pub const SECRET_PREFIX: &str = "whsec_";
/// Fewest and most key bytes a secret may carry (the specification's
/// bounds).
pub const KEY_BYTES: std::ops::RangeInclusive<usize> = 24..=64;

/// Why a secret is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    /// Not `whsec_` followed by base64 of 24 to 64 bytes.
    #[error(
        "a secret is whsec_ followed by the base64 of 24 to 64 random bytes; leave it out to have one generated"
    )]
    Malformed,
}

/// A signing key.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// A new random secret of 32 bytes.
    pub fn generate() -> Self {
        Secret(rand::random::<[u8; 32]>().to_vec())
    }

    /// Reads `whsec_<base64>`.
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let b64 = text
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SecretError::Malformed)?;
        let key = STANDARD.decode(b64).map_err(|_| SecretError::Malformed)?;
        if !KEY_BYTES.contains(&key.len()) {
            return Err(SecretError::Malformed);
        }
        Ok(Secret(key))
    }

    /// The `whsec_<base64>` text.
    pub fn to_text(&self) -> String {
        format!("{SECRET_PREFIX}{}", STANDARD.encode(&self.0))
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The `webhook-signature` value of a delivery.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let tag = self.mac(id, timestamp, body).finalize().into_bytes();
        format!("v1,{}", STANDARD.encode(tag))
    }

    /// Whether one `v1` entry of a `webhook-signature` value (entries are
    /// space-separated) signs this delivery; compared in constant time.
    pub fn verify(&self, id: &str, timestamp: i64, body: &[u8], signature: &str) -> bool {
        signature.split(' ').any(|entry| {
            let Some(b64) = entry.strip_prefix("v1,") else {
                return false;
            };
            let Ok(tag) = STANDARD.decode(b64) else {
                return false;
            };
            self.mac(id, timestamp, body).verify_slice(&tag).is_ok()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_and_fails_on_any_change() {
        let s = Secret::generate();
        let sig = s.sign("evt_1", 1_700_000_000, b"{\"a\":1}");
        assert!(sig.starts_with("v1,"));
        assert!(s.verify("evt_1", 1_700_000_000, b"{\"a\":1}", &sig));
        assert!(!s.verify("evt_1", 1_700_000_000, b"{\"a\":2}", &sig));
        assert!(!s.verify("evt_2", 1_700_000_000, b"{\"a\":1}", &sig));
        assert!(!s.verify("evt_1", 1_700_000_001, b"{\"a\":1}", &sig));
        assert!(!Secret::generate().verify("evt_1", 1_700_000_000, b"{\"a\":1}", &sig));
        // One valid entry among several passes (key rotation).
        assert!(s.verify(
            "evt_1",
            1_700_000_000,
            b"{\"a\":1}",
            &format!("v1,AAAA {sig}")
        ));
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_id_timestamp_and_body() {
        // The expected value was computed apart, with Python's hmac module.
        let s = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            s.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn secrets_round_trip_and_bad_ones_are_refused() {
        let s = Secret::generate();
        assert_eq!(Secret::parse(&s.to_text()), Ok(s));
        for bad in ["", "whsec_", "secret", "whsec_!!!", "whsec_c2hvcnQ="] {
            assert_eq!(Secret::parse(bad), Err(SecretError::Malformed), "{bad}");
        }
    }
}
