//! The fleet as Conveyor records it: what each agent last said about its instance, how an
//! agent is bound to its instance, and the environment's deployment lock.

use serde::{Deserialize, Serialize};

/// What an agent last said its instance runs (written by reports, read by `conveyor status`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub environment: String,
    pub instance: String,
    pub current: Option<String>,
    pub healthy: Option<bool>,
    pub reported_at: Option<i64>,
    /// When its agent last polled, as recorded (every few minutes, not every poll).
    #[serde(default)]
    pub seen_at: Option<i64>,
}

/// An instance's enrolment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrollment {
    pub environment: String,
    pub instance: String,
    /// SHA-256 of the credential, hex.
    pub credential_hash: String,
    /// Whether the agent has used the credential: from then on only it speaks for the instance.
    pub confirmed: bool,
    pub issued_at: i64,
    /// How the agent showed it runs on the instance.
    #[serde(default)]
    pub proof: EnrollmentProof,
    /// When the instance proof behind it was signed: an older or the same proof cannot
    /// enrol again.
    #[serde(default)]
    pub proven_at: Option<i64>,
}

/// How an agent showed it runs on its instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnrollmentProof {
    /// It held the environment's token and spoke first; it keeps sending the token.
    #[default]
    FirstContact,
    /// AWS said so (the instance profile's role session is the instance); no token needed.
    InstanceProfile,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LockPhase {
    Planning,
    Running,
}

impl LockPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            LockPhase::Planning => "planning",
            LockPhase::Running => "running",
        }
    }
}

/// The environment's lock, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lock {
    /// The deployment's id.
    pub holder: String,
    /// Absent on locks written by versions before phases: those expire like a planning one.
    pub phase: Option<LockPhase>,
    pub expires_at: Option<i64>,
}

impl Lock {
    /// Whether the lock still holds at `now`: a running one always does.
    pub fn live(&self, now: i64) -> bool {
        self.phase == Some(LockPhase::Running) || self.expires_at.is_some_and(|at| at >= now)
    }
}
