//! What the fan-out reads from its environment at cold start: timings, the roles whose
//! instances may prove themselves, and why it cannot start.

use std::time::Duration;

use conveyor_shared::config::{LoadError, SettingsError};
use conveyor_shared::domain::instance_proof::AgentRole;

/// Why the function cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Sts(#[from] conveyor_shared::sts::StsError),
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
