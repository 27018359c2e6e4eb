//! Webhook signature verification over the raw request bytes.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::secret::SecretSet;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("the X-Hub-Signature-256 header is missing")]
    Missing,
    #[error("the X-Hub-Signature-256 header must look like sha256=<64 hex digits>")]
    Malformed,
    #[error("the signature does not match any configured webhook secret")]
    Mismatch,
}

/// Verifies GitHub's `X-Hub-Signature-256: sha256=<hex>` header against the raw body.
/// Accepts when the signature matches any one of `secrets` (rotation). The comparison is
/// constant-time (`Mac::verify_slice`).
pub fn verify_github(
    secrets: &SecretSet,
    header: Option<&str>,
    body: &[u8],
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let hex_digest = header
        .trim()
        .strip_prefix("sha256=")
        .ok_or(SignatureError::Malformed)?;
    let expected = hex::decode(hex_digest).map_err(|_| SignatureError::Malformed)?;
    if expected.len() != 32 {
        return Err(SignatureError::Malformed);
    }
    let matches = secrets.iter().any(|secret| {
        let mut mac = mac_for(secret.expose());
        mac.update(body);
        mac.verify_slice(&expected).is_ok()
    });
    if matches {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// `sha256=<hex>` for `body` under `secret`: what GitHub sends, and what `conveyor replay` signs.
pub fn sign_github(secret: &[u8], body: &[u8]) -> String {
    let mut mac = mac_for(secret);
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn mac_for(key: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length (long keys are hashed first), so this cannot fail.
    match HmacSha256::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KNOWN: &str = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    fn secrets(list: &str) -> SecretSet {
        SecretSet::from_comma_separated(list).unwrap()
    }

    #[test]
    fn github_known_answer() {
        assert_eq!(
            sign_github(b"It's a Secret to Everybody", b"Hello, World!"),
            KNOWN
        );
        let set = secrets("It's a Secret to Everybody");
        assert_eq!(verify_github(&set, Some(KNOWN), b"Hello, World!"), Ok(()));
    }

    #[test]
    fn any_of_several_secrets_is_accepted() {
        let set = secrets("old-secret,It's a Secret to Everybody");
        assert_eq!(verify_github(&set, Some(KNOWN), b"Hello, World!"), Ok(()));
    }

    #[test]
    fn rejections_name_the_problem() {
        let set = secrets("It's a Secret to Everybody");
        assert_eq!(
            verify_github(&set, None, b"x"),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify_github(&set, Some("sha1=abc"), b"x"),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify_github(&set, Some("sha256=zz"), b"x"),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify_github(&set, Some("sha256=abcd"), b"x"),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify_github(&set, Some(KNOWN), b"Hello, World?"),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_github(&secrets("wrong"), Some(KNOWN), b"Hello, World!"),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn uppercase_hex_is_accepted() {
        let set = secrets("It's a Secret to Everybody");
        let upper = format!("sha256={}", KNOWN["sha256=".len()..].to_uppercase());
        assert_eq!(verify_github(&set, Some(&upper), b"Hello, World!"), Ok(()));
    }
}
