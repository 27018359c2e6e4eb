//! The agent channel's wire messages, defined once: the deploy fan-out reads polls and
//! reports and answers polls with these types, and `conveyor-agent` writes and reads the
//! same ones. Serde only, so the agent's dependencies stay small.
//!
//! Compatibility: unknown fields are ignored and every field added later is optional, so a
//! newer agent talks to an older function and the other way round.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where an agent asks what its instance should run.
pub const POLL_PATH: &str = "/agent/v1/poll";
/// Where an agent tells how a release went.
pub const REPORT_PATH: &str = "/agent/v1/report";
/// The header that carries an agent's per-instance credential.
pub const CREDENTIAL_HEADER: &str = "x-conveyor-agent-credential";

/// A signed STS `GetCallerIdentity` request: an agent on EC2 without a credential proves its
/// instance with it (never with the credentials that signed it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceProof {
    /// Header names in lower case.
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

/// What an agent sends to ask what to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Poll {
    pub instance_id: String,
    pub environment: String,
    /// The release `current` points at, if any.
    pub current: Option<String>,
    /// From an agent on EC2 that has no credential yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<InstanceProof>,
}

/// How a release went on the instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    Failed,
}

/// What an agent sends when a release it was told to run is installed (or failed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub instance_id: String,
    pub environment: String,
    /// The release the agent tried.
    pub version: String,
    pub outcome: Outcome,
    pub healthy: bool,
    /// What `current` points at now.
    pub current: Option<String>,
    /// The tail of the hooks' output.
    #[serde(default)]
    pub log: Option<String>,
}

/// What the agent is told to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Nothing now; poll again after `poll_after` seconds.
    None,
    /// Install and switch to `release`.
    Deploy,
    /// An action a newer function knows: the agent does nothing and polls again.
    #[serde(other)]
    Unknown,
}

/// A release to install: its artifact's presigned URL and checksum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub version: String,
    pub url: String,
    pub sha256: String,
}

/// How the agent checks its instance after a switch (an environment's `[environment.health]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    pub url: String,
    /// The status a healthy answer has; any 2xx when unset.
    pub expect_status: Option<u16>,
    pub timeout_seconds: u64,
    pub attempts: u32,
    /// 0: the agent's own interval.
    pub interval_seconds: u64,
}

impl HealthCheck {
    /// Whether an answer with `status` is healthy: the expected status, else any 2xx.
    pub fn passes(&self, status: u16) -> bool {
        match self.expect_status {
            Some(expected) => status == expected,
            None => (200..300).contains(&status),
        }
    }
}

/// The answer to a poll.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollAnswer {
    pub action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<Release>,
    /// Going back to the last good release rather than forward.
    #[serde(default)]
    pub rollback: bool,
    /// On the instance's first contact: the credential that binds this agent to it, shown
    /// once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// Replaces the agent's own health flags when the environment sets one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
    /// Seconds until the next poll.
    #[serde(default)]
    pub poll_after: u64,
}

impl PollAnswer {
    /// Nothing to do; poll again in `poll_after` seconds.
    pub fn wait(poll_after: u64) -> Self {
        Self { action: Action::None, release: None, rollback: false, credential: None, health: None, poll_after }
    }

    /// The release to run, when told to deploy one.
    pub fn deploy(&self) -> Option<&Release> {
        match self.action {
            Action::Deploy => self.release.as_ref(),
            Action::None | Action::Unknown => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_poll_answer_reads_as_agents_of_every_version_expect() {
        let answer = PollAnswer {
            action: Action::Deploy,
            release: Some(Release { version: "v2".into(), url: "https://s3/x".into(), sha256: "ab".into() }),
            rollback: true,
            credential: None,
            health: None,
            poll_after: 2,
        };
        assert_eq!(
            serde_json::to_value(&answer).unwrap(),
            json!({"action": "deploy", "release": {"version": "v2", "url": "https://s3/x", "sha256": "ab"}, "rollback": true, "poll_after": 2})
        );
        assert_eq!(
            serde_json::to_value(PollAnswer::wait(20)).unwrap(),
            json!({"action": "none", "rollback": false, "poll_after": 20})
        );
    }

    #[test]
    fn newer_fields_and_actions_are_tolerated() {
        let answer: PollAnswer =
            serde_json::from_value(json!({"action": "drain", "poll_after": 5, "something_new": 1})).unwrap();
        assert_eq!((answer.action, answer.deploy(), answer.poll_after), (Action::Unknown, None, 5));
        let poll: Poll = serde_json::from_value(
            json!({"instance_id": "i-1", "environment": "production", "current": null, "labels": {}}),
        )
        .unwrap();
        assert_eq!(poll.proof, None);
        let report: Report = serde_json::from_value(json!({
            "instance_id": "i-1", "environment": "production", "version": "v2", "outcome": "failed",
            "healthy": false, "current": "v1"
        }))
        .unwrap();
        assert_eq!((report.outcome, report.log), (Outcome::Failed, None));
        assert!(serde_json::from_value::<Report>(json!({"instance_id": "i-1"})).is_err());
    }
}
