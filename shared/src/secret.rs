//! A value that must never be printed: webhook keys, tokens, chat webhook URLs, API keys.

use std::fmt;

/// Holds a secret. `Debug` prints `Secret([redacted])` and there is no `Display`, so a secret
/// cannot leak through logs or error messages by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret's bytes, for the one place that needs them (a MAC key).
    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// The secret as text, for the one place that needs it (a URL to call, a header).
    pub fn expose_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// Several secrets accepted at once, so a secret can be rotated without dropping deliveries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretSet(Vec<Secret>);

impl SecretSet {
    /// Parses a comma-separated list, ignoring blanks around and between entries.
    /// Returns `None` when the list holds no secret at all.
    pub fn from_comma_separated(list: &str) -> Option<Self> {
        let secrets: Vec<Secret> = list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(Secret::new).collect();
        (!secrets.is_empty()).then_some(Self(secrets))
    }

    /// The keys a secret holds, stored as a comma-separated list.
    pub fn from_secret(secret: &Secret) -> Option<Self> {
        Self::from_comma_separated(secret.expose_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = &Secret> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_the_value() {
        let secret = Secret::new("hunter2");
        assert!(!format!("{secret:?}").contains("hunter2"));
        let set = SecretSet::from_comma_separated("one,two").unwrap();
        let printed = format!("{set:?}");
        assert!(!printed.contains("one") && !printed.contains("two"), "{printed}");
    }

    #[test]
    fn comma_separated_list_skips_blanks() {
        let set = SecretSet::from_comma_separated(" a , ,b,").unwrap();
        assert_eq!(set.len(), 2);
        assert_eq!(set.iter().next().unwrap().expose(), b"a");
        assert!(SecretSet::from_comma_separated(" , ").is_none());
    }
}
