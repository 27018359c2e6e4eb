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
pub fn verify_github(secrets: &SecretSet, header: Option<&str>, body: &[u8]) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let hex_digest = header.trim().strip_prefix("sha256=").ok_or(SignatureError::Malformed)?;
    let expected = hex::decode(hex_digest).map_err(|_| SignatureError::Malformed)?;
    if expected.len() != 32 {
        return Err(SignatureError::Malformed);
    }
    let matches = secrets.iter().any(|secret| {
        let mut mac = mac_for(secret.expose());
        mac.update(body);
        mac.verify_slice(&expected).is_ok()
    });
    if matches { Ok(()) } else { Err(SignatureError::Mismatch) }
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
        assert_eq!(sign_github(b"It's a Secret to Everybody", b"Hello, World!"), KNOWN);
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
        assert_eq!(verify_github(&set, None, b"x"), Err(SignatureError::Missing));
        assert_eq!(verify_github(&set, Some("sha1=abc"), b"x"), Err(SignatureError::Malformed));
        assert_eq!(verify_github(&set, Some("sha256=zz"), b"x"), Err(SignatureError::Malformed));
        assert_eq!(verify_github(&set, Some("sha256=abcd"), b"x"), Err(SignatureError::Malformed));
        assert_eq!(verify_github(&set, Some(KNOWN), b"Hello, World?"), Err(SignatureError::Mismatch));
        assert_eq!(verify_github(&secrets("wrong"), Some(KNOWN), b"Hello, World!"), Err(SignatureError::Mismatch));
    }

    #[test]
    fn uppercase_hex_is_accepted() {
        let set = secrets("It's a Secret to Everybody");
        let upper = format!("sha256={}", KNOWN["sha256=".len()..].to_uppercase());
        assert_eq!(verify_github(&set, Some(&upper), b"Hello, World!"), Ok(()));
    }
}

/// Why a `Stripe-Signature` was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StripeSignatureError {
    #[error("the Stripe-Signature header is missing")]
    Missing,
    #[error("the Stripe-Signature header is malformed: {0}")]
    Malformed(&'static str),
    #[error("no v1 signature matches any configured endpoint secret")]
    Mismatch,
    #[error("the signature's timestamp is {age} s away from now, over the {tolerance} s tolerance")]
    OutsideTolerance { age: i64, tolerance: i64 },
}

/// Verifies `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>...]` over `"<t>.<raw body>"`.
/// Accepts when ANY `v1` matches ANY secret (Stripe signs with every live secret while one is
/// being rolled); ignores `v0` and unknown schemes; then checks `|now - t| <= tolerance`.
pub fn verify_stripe(
    secrets: &SecretSet,
    header: Option<&str>,
    body: &[u8],
    now: i64,
    tolerance: i64,
) -> Result<(), StripeSignatureError> {
    let header = header.ok_or(StripeSignatureError::Missing)?;
    let mut timestamp: Option<(&str, i64)> = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        let (key, value) =
            part.trim().split_once('=').ok_or(StripeSignatureError::Malformed("every element must be key=value"))?;
        match key {
            "t" => {
                if timestamp.is_some() {
                    return Err(StripeSignatureError::Malformed("more than one t="));
                }
                let seconds =
                    value.parse::<i64>().map_err(|_| StripeSignatureError::Malformed("t= is not a Unix time"))?;
                timestamp = Some((value, seconds));
            }
            "v1" => {
                // A v1 that is not 64 hex digits cannot match; it does not void the others.
                if let Ok(bytes) = hex::decode(value)
                    && bytes.len() == 32
                {
                    signatures.push(bytes);
                }
            }
            _ => {} // v0 (test mode) and future schemes are ignored
        }
    }
    let (t_text, t) = timestamp.ok_or(StripeSignatureError::Malformed("no t= timestamp"))?;
    if signatures.is_empty() {
        return Err(StripeSignatureError::Malformed("no v1= signature"));
    }
    let matches = secrets.iter().any(|secret| {
        let mut mac = mac_for(secret.expose());
        mac.update(t_text.as_bytes());
        mac.update(b".");
        mac.update(body);
        // Each candidate is compared in constant time against the one MAC of this secret.
        signatures.iter().any(|candidate| mac.clone().verify_slice(candidate).is_ok())
    });
    if !matches {
        return Err(StripeSignatureError::Mismatch);
    }
    let age = (now - t).abs();
    if age > tolerance {
        return Err(StripeSignatureError::OutsideTolerance { age, tolerance });
    }
    Ok(())
}

/// The `Stripe-Signature` header Stripe would send for `body` at `t` (for tests and replays).
pub fn sign_stripe(secret: &[u8], t: i64, body: &[u8]) -> String {
    timestamped_signature(secret, t, body)
}

/// The `Conveyor-Signature` header of an alert POSTed to a webhook channel: Stripe's scheme
/// (`t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.body">`), so receivers can verify it with
/// code they already have and refuse replays by the timestamp.
pub fn sign_conveyor(secret: &[u8], t: i64, body: &[u8]) -> String {
    timestamped_signature(secret, t, body)
}

fn timestamped_signature(secret: &[u8], t: i64, body: &[u8]) -> String {
    let mut mac = mac_for(secret);
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod stripe_tests {
    use super::*;
    use crate::http::Problem;

    const NOW: i64 = 1_795_300_000;

    fn secrets(list: &str) -> SecretSet {
        SecretSet::from_comma_separated(list).unwrap()
    }

    #[test]
    fn a_valid_signature_is_accepted() {
        let header = sign_stripe(b"whsec_a", NOW, b"{}");
        assert_eq!(verify_stripe(&secrets("whsec_a"), Some(&header), b"{}", NOW + 10, 300), Ok(()));
    }

    #[test]
    fn any_v1_against_any_secret_while_rolling() {
        let old = sign_stripe(b"whsec_old", NOW, b"{}");
        let new = sign_stripe(b"whsec_new", NOW, b"{}");
        let both = format!("{},{},v0=deadbeef", new, old.split(',').nth(1).unwrap());
        assert_eq!(verify_stripe(&secrets("whsec_old"), Some(&both), b"{}", NOW, 300), Ok(()));
        assert_eq!(verify_stripe(&secrets("whsec_new"), Some(&both), b"{}", NOW, 300), Ok(()));
        assert_eq!(verify_stripe(&secrets("whsec_other,whsec_old"), Some(&old), b"{}", NOW, 300), Ok(()));
    }

    #[test]
    fn v0_alone_is_not_enough() {
        let v1 = sign_stripe(b"whsec_a", NOW, b"{}");
        let v0_only = v1.replace("v1=", "v0=");
        assert_eq!(
            verify_stripe(&secrets("whsec_a"), Some(&v0_only), b"{}", NOW, 300),
            Err(StripeSignatureError::Malformed("no v1= signature"))
        );
    }

    #[test]
    fn rejections() {
        let set = secrets("whsec_a");
        let header = sign_stripe(b"whsec_a", NOW, b"{}");
        assert_eq!(verify_stripe(&set, Some(&header), b"{ }", NOW, 300), Err(StripeSignatureError::Mismatch));
        assert_eq!(
            verify_stripe(&secrets("whsec_b"), Some(&header), b"{}", NOW, 300),
            Err(StripeSignatureError::Mismatch)
        );
        let late = verify_stripe(&set, Some(&header), b"{}", NOW + 301, 300).unwrap_err();
        assert_eq!(late, StripeSignatureError::OutsideTolerance { age: 301, tolerance: 300 });
        assert_eq!(late.status(), 401);
        assert_eq!(verify_stripe(&set, Some(&header), b"{}", NOW + 301, 600), Ok(()));
        for bad in ["", "t=abc,v1=00", "v1=00", "t=1,t=2,v1=00", "garbage"] {
            let err = verify_stripe(&set, Some(bad), b"{}", NOW, 300).unwrap_err();
            assert_eq!(err.status(), 400, "{bad}: {err}");
        }
        assert_eq!(verify_stripe(&set, None, b"{}", NOW, 300).unwrap_err().status(), 400);
    }
}
