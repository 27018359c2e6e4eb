//! Bearer tokens for machine clients (Packer uploads, agents). A token is shown once, when
//! it is created; the table keeps only its SHA-256, so a leaked table leaks no token.
//! Tokens carry 256 random bits, so a fast hash is as good as a slow one here.

use sha2::{Digest, Sha256};

use crate::secret::Secret;

pub const PREFIX: &str = "cvy_";

/// What a token may do: act for one provider (or, later, one environment's agents).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Provider(String),
    /// The agents of one environment.
    Environment(String),
}

impl Scope {
    pub fn as_string(&self) -> String {
        match self {
            Scope::Provider(name) => format!("provider:{name}"),
            Scope::Environment(name) => format!("environment:{name}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the operating system's random number generator failed: {0}")]
pub struct TokenError(String);

/// A new random token: `cvy_` and 64 hex digits.
pub fn generate() -> Result<Secret, TokenError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| TokenError(e.to_string()))?;
    Ok(Secret::new(format!("{PREFIX}{}", hex::encode(bytes))))
}

/// The stored form of a token.
pub fn hash(token: &[u8]) -> String {
    hex::encode(Sha256::digest(token))
}

/// How `conveyor token list` names a token: the first 12 hex digits of its hash (the token
/// itself is never stored).
pub fn id_of(token_hash: &str) -> String {
    token_hash.chars().take(12).collect()
}

/// What a token may do, and for how long.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TokenGrant {
    /// [`id_of`] its hash.
    #[serde(default)]
    pub id: String,
    /// [`Scope::as_string`].
    pub scope: String,
    pub created_at: i64,
    /// Unix seconds; none: until revoked.
    #[serde(default)]
    pub expires_at: Option<i64>,
}

impl TokenGrant {
    pub fn valid_at(&self, now: i64) -> bool {
        self.expires_at.is_none_or(|end| now < end)
    }
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let (scheme, token) = header?.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_prefixed() {
        let (a, b) = (generate().unwrap(), generate().unwrap());
        assert_ne!(a, b);
        assert!(a.expose().starts_with(PREFIX.as_bytes()));
        assert_eq!(a.expose().len(), PREFIX.len() + 64);
    }

    #[test]
    fn hashes_are_stable_and_hide_the_token() {
        assert_eq!(hash(b"cvy_x"), hash(b"cvy_x"));
        assert_ne!(hash(b"cvy_x"), hash(b"cvy_y"));
        assert!(!hash(b"cvy_x").contains("cvy_x"));
    }

    #[test]
    fn a_grant_ends_when_it_expires() {
        let grant =
            TokenGrant { id: id_of(&hash(b"cvy_x")), scope: "provider:p".into(), created_at: 0, expires_at: Some(100) };
        assert!(grant.valid_at(99) && !grant.valid_at(100));
        assert!(TokenGrant { expires_at: None, ..grant.clone() }.valid_at(i64::MAX));
        assert_eq!(grant.id.len(), 12);
    }

    #[test]
    fn bearer_headers() {
        assert_eq!(bearer(Some("Bearer cvy_1")), Some("cvy_1"));
        assert_eq!(bearer(Some("bearer  cvy_1 ")), Some("cvy_1"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(Some("Bearer")), None);
        assert_eq!(bearer(None), None);
    }
}
