//! Runtime settings every function reads from its environment once at cold start.

use super::*;

/// Where a set of webhook secrets comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum SecretSource {
    /// `<NAME>`: comma-separated secrets in the environment (local runs).
    Inline(SecretSet),
    /// `<NAME>_ID`: a Secrets Manager secret (name or ARN) whose string is the
    /// comma-separated list, resolved once at cold start.
    SecretsManager(String),
}

/// The secrets each webhook function verifies with.
pub const GITHUB_WEBHOOK_SECRET: &str = "GITHUB_WEBHOOK_SECRET";
pub const STRIPE_WEBHOOK_SECRET: &str = "STRIPE_WEBHOOK_SECRET";

impl SecretSource {
    /// Reads `<name>_ID` (preferred) or `<name>` through `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>, name: &'static str) -> Result<Self, SettingsError> {
        let non_empty = |key: &str| var(key).filter(|v| !v.trim().is_empty());
        if let Some(id) = non_empty(&format!("{name}_ID")) {
            return Ok(SecretSource::SecretsManager(id));
        }
        non_empty(name)
            .and_then(|list| SecretSet::from_comma_separated(&list))
            .map(SecretSource::Inline)
            .ok_or(SettingsError::MissingSecret(name))
    }

    pub fn from_env(name: &'static str) -> Result<Self, SettingsError> {
        Self::from_vars(|key| std::env::var(key).ok(), name)
    }
}

/// Runtime settings every function shares, read from the environment once at cold start.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub table: String,
    pub config_path: PathBuf,
    pub artifacts_bucket: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettingsError {
    #[error("no {0}: set {0} (comma-separated secrets) or {0}_ID (a Secrets Manager secret holding them)")]
    MissingSecret(&'static str),
    #[error("{name} must be {expected}, not `{value}`")]
    Invalid { name: &'static str, expected: &'static str, value: String },
}

impl Settings {
    pub const DEFAULT_TABLE: &'static str = "conveyor";
    pub const DEFAULT_CONFIG: &'static str = "conveyor.toml";
    pub const DEFAULT_ARTIFACTS_BUCKET: &'static str = "conveyor-artifacts";

    /// Reads settings through `var` (the process environment in production, a map in tests).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let non_empty = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        Self {
            table: non_empty("CONVEYOR_TABLE").unwrap_or_else(|| Self::DEFAULT_TABLE.into()),
            config_path: config_path(
                non_empty("CONVEYOR_CONFIG").unwrap_or_else(|| Self::DEFAULT_CONFIG.into()),
                non_empty("LAMBDA_TASK_ROOT"),
            ),
            artifacts_bucket: non_empty("CONVEYOR_ARTIFACTS_BUCKET")
                .unwrap_or_else(|| Self::DEFAULT_ARTIFACTS_BUCKET.into()),
        }
    }

    pub fn from_env() -> Self {
        Self::from_vars(|name| std::env::var(name).ok())
    }
}

/// A relative configuration path is read from the deployment package in Lambda
/// (`LAMBDA_TASK_ROOT`), and from the working directory elsewhere.
fn config_path(path: String, task_root: Option<String>) -> PathBuf {
    let path = PathBuf::from(path);
    match task_root {
        Some(root) if path.is_relative() => Path::new(&root).join(path),
        _ => path,
    }
}

/// How long after its paid period ends a subscription still entitles (renewal events can
/// be late): `STRIPE_ENTITLEMENT_GRACE_SECONDS`, default 3 days.
pub const DEFAULT_ENTITLEMENT_GRACE: i64 = 3 * 24 * 3600;

/// `STRIPE_ENTITLEMENT_GRACE_SECONDS` (default 3 days), read by the ledger API.
pub fn entitlement_grace_from_env() -> Result<i64, SettingsError> {
    match std::env::var("STRIPE_ENTITLEMENT_GRACE_SECONDS") {
        Err(_) => Ok(DEFAULT_ENTITLEMENT_GRACE),
        Ok(text) => text.trim().parse::<i64>().ok().filter(|t| *t >= 0).ok_or(SettingsError::Invalid {
            name: "STRIPE_ENTITLEMENT_GRACE_SECONDS",
            expected: "a number of seconds (0 or more)",
            value: text,
        }),
    }
}
