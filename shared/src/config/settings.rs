//! Runtime settings: every environment variable a function reads, read here once at cold
//! start, with its default and a clear error when it is malformed.

use std::time::Duration;

use super::*;
use crate::domain::instance_proof::AgentRole;

/// Where a secret comes from (webhook keys, a chat webhook URL, an API key): read with
/// [`crate::secrets::resolve`], or kept fresh for signing keys with
/// [`crate::secrets::KeyRing`].
#[derive(Debug, Clone, PartialEq)]
pub enum SecretSource {
    /// `<NAME>`: the value itself, in the environment (local runs).
    Inline(Secret),
    /// `<NAME>_ID`: a Secrets Manager secret (name or ARN), read at cold start.
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
        // Blank, or only separators (`" , "`): as good as unset.
        let blank = |value: &String| value.split(',').all(|part| part.trim().is_empty());
        non_empty(name)
            .filter(|value| !blank(value))
            .map(|value| SecretSource::Inline(Secret::new(value.trim())))
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
    #[error("no {0}: set {0} (the secret) or {0}_ID (a Secrets Manager secret holding it)")]
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

/// Stripe's default signature tolerance, in seconds.
pub const DEFAULT_STRIPE_TOLERANCE: i64 = 300;
/// `STRIPE_TOLERANCE_SECONDS` (default 300).
pub fn stripe_tolerance_from_env() -> Result<i64, SettingsError> {
    match std::env::var("STRIPE_TOLERANCE_SECONDS") {
        Err(_) => Ok(DEFAULT_STRIPE_TOLERANCE),
        Ok(text) => text.trim().parse::<i64>().ok().filter(|t| *t > 0).ok_or(SettingsError::Invalid {
            name: "STRIPE_TOLERANCE_SECONDS",
            expected: "a positive number of seconds",
            value: text,
        }),
    }
}

/// Which of Stripe's modes this endpoint serves: events of the other are ignored, so test
/// events never touch the live ledger (and the other way round).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StripeMode {
    Live,
    Test,
}

impl StripeMode {
    /// `STRIPE_MODE` (`live` or `test`), or `default` when unset.
    pub fn from_env(default: StripeMode) -> Result<StripeMode, SettingsError> {
        match std::env::var("STRIPE_MODE").ok().as_deref().map(str::trim) {
            None | Some("") => Ok(default),
            Some("live") => Ok(StripeMode::Live),
            Some("test") => Ok(StripeMode::Test),
            Some(other) => Err(SettingsError::Invalid {
                name: "STRIPE_MODE",
                expected: "`live` or `test`",
                value: other.to_owned(),
            }),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            StripeMode::Live => "live",
            StripeMode::Test => "test",
        }
    }
}

/// The IAM roles whose instances may prove themselves to the agent channel
/// (`CONVEYOR_AGENT_ROLES`, comma-separated role ARNs; none turns instance proofs off).
pub fn agent_roles_from_env() -> Result<Vec<AgentRole>, SettingsError> {
    let text = std::env::var("CONVEYOR_AGENT_ROLES").unwrap_or_default();
    text.split(',')
        .map(str::trim)
        .filter(|arn| !arn.is_empty())
        .map(|arn| {
            arn.parse().map_err(|_| SettingsError::Invalid {
                name: "CONVEYOR_AGENT_ROLES",
                expected: "comma-separated IAM role ARNs (arn:aws:iam::123456789012:role/conveyor-agent)",
                value: arn.to_owned(),
            })
        })
        .collect()
}

/// Timings, with production defaults; `conveyor dev` and tests shorten them.
#[derive(Debug, Clone)]
pub struct Timing {
    /// How long a planning claim (and the lock it takes) lasts: a planner that crashed is
    /// replaced after this. A planner stops writing before its claim ends (see `plan`), so
    /// this may be shorter than the function's timeout, never the other way round.
    pub planning_claim: i64,
    /// How long a presigned artifact URL is valid.
    pub presign: Duration,
    /// The poll interval an agent is told while its wave runs.
    pub busy_poll: u64,
    /// The poll interval an agent is told while idle or while its wave has not started.
    pub idle_poll: u64,
    /// How often the tick runs.
    pub tick: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            planning_claim: 60,
            presign: Duration::from_secs(900),
            busy_poll: 2,
            idle_poll: 20,
            tick: Duration::from_secs(60),
        }
    }
}

impl Timing {
    /// `CONVEYOR_TICK_SECONDS` and `CONVEYOR_IDLE_POLL_SECONDS` override the defaults.
    pub fn from_env() -> Self {
        let read = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok()).filter(|v| *v > 0);
        let mut timing = Self::default();
        if let Some(tick) = read("CONVEYOR_TICK_SECONDS") {
            timing.tick = Duration::from_secs(tick);
        }
        if let Some(idle) = read("CONVEYOR_IDLE_POLL_SECONDS") {
            timing.idle_poll = idle;
        }
        timing
    }
}
