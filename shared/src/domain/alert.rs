//! Alerts: what went wrong, why, what it affects and what to do, in one shape whatever
//! raised it (a failed payment, a rolled-back deployment, later a failing check or an
//! invalidation). Alert dispatch delivers exactly this; the id makes a retried cause one
//! alert, not two.

use super::text::cut;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What raised an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertSource {
    Stripe,
    Deploy,
    Check,
    Cdn,
    /// Conveyor's own alarms (its functions' errors, the stream falling behind, the API's 5xx).
    Conveyor,
    /// A source a newer version of Conveyor raised alerts from: listed, never misread.
    #[serde(other)]
    Other,
}

impl AlertSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stripe => "stripe",
            Self::Deploy => "deploy",
            Self::Check => "check",
            Self::Cdn => "cdn",
            Self::Conveyor => "conveyor",
            Self::Other => "other",
        }
    }
}

/// What kind of trouble; routes and messages are chosen by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    PaymentFailed,
    /// Deployment events, told to the team's chat as they happen.
    DeploymentStarted,
    DeploymentSucceeded,
    /// A deployment that could not start (its artifact never came, no instances, ...).
    DeploymentFailed,
    DeploymentRolledBack,
    RollbackIncomplete,
    RollbackFailed,
    /// A CloudFront invalidation that failed, or is still running after the allowed time.
    InvalidationFailed,
    InvalidationSlow,
    /// This month's invalidation paths passed CloudFront's free 1,000.
    InvalidationPathsOverFree,
    /// A CI run failed on a branch an environment deploys from.
    CiFailed,
    /// A health check went down, is still down (a reminder), or came back up.
    CheckDown,
    CheckStillDown,
    CheckRecovered,
    /// Self-healing rebooted an instance whose check went down, or could not.
    InstanceRebooted,
    RebootFailed,
    /// One of Conveyor's own CloudWatch alarms changed state.
    Alarm,
    /// A kind a newer version of Conveyor raised: listed, never misread.
    #[serde(other)]
    Other,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PaymentFailed => "payment_failed",
            Self::DeploymentStarted => "deployment_started",
            Self::DeploymentSucceeded => "deployment_succeeded",
            Self::DeploymentFailed => "deployment_failed",
            Self::DeploymentRolledBack => "deployment_rolled_back",
            Self::RollbackIncomplete => "rollback_incomplete",
            Self::RollbackFailed => "rollback_failed",
            Self::InvalidationFailed => "invalidation_failed",
            Self::InvalidationSlow => "invalidation_slow",
            Self::InvalidationPathsOverFree => "invalidation_paths_over_free",
            Self::CiFailed => "ci_failed",
            Self::CheckDown => "check_down",
            Self::CheckStillDown => "check_still_down",
            Self::CheckRecovered => "check_recovered",
            Self::InstanceRebooted => "instance_rebooted",
            Self::RebootFailed => "reboot_failed",
            Self::Alarm => "alarm",
            Self::Other => "other",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    #[default]
    Warning,
    Critical,
    /// A severity a newer version of Conveyor wrote: listed, routed as a warning.
    #[serde(other)]
    Unknown,
}

impl Severity {
    /// Orders severities for routing; one this version does not know counts as a warning.
    pub fn rank(self) -> u8 {
        match self {
            Self::Info => 0,
            Self::Warning | Self::Unknown => 1,
            Self::Critical => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Warning | Self::Unknown => "warning",
            Self::Critical => "critical",
        }
    }
}

/// Where an alert's delivery stands. Alert dispatch moves it on with conditional updates;
/// a new alert is pending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    #[default]
    Pending,
    Delivered,
    /// Every channel refused it for good (a bad webhook URL, say); kept to be looked at.
    Undeliverable,
    /// A state a newer version of Conveyor wrote: left as it is.
    #[serde(other)]
    Unknown,
}

/// One alert. Records written before a field existed read it as its default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    pub source: AlertSource,
    /// Unique per cause within its source (a Stripe event id; an environment and commit),
    /// so a retry of the same cause raises no second alert.
    pub id: String,
    pub kind: AlertKind,
    #[serde(default)]
    pub severity: Severity,
    /// One line: what broke.
    pub summary: String,
    /// What was observed that says so.
    #[serde(default)]
    pub cause: String,
    /// Who or what is affected, and how.
    #[serde(default)]
    pub impact: String,
    /// What to do about it.
    pub action: String,
    /// What it is about: `environment`, `customer`, `instance`, ...
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub created_at: i64,
    #[serde(default)]
    pub resolved_at: Option<i64>,
    #[serde(default)]
    pub delivery: DeliveryState,
    /// The channels its raiser chose (a check's own `channels`); `[[route]]`s decide when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
}

/// The longest summary, cause (impact, action) and label value an alert keeps.
pub const MAX_SUMMARY_CHARS: usize = 300;
pub const MAX_TEXT_CHARS: usize = 4000;
pub const MAX_LABEL_CHARS: usize = 1000;

impl Alert {
    /// A new, pending alert.
    pub fn new(
        source: AlertSource,
        id: impl Into<String>,
        kind: AlertKind,
        severity: Severity,
        created_at: i64,
    ) -> Self {
        Self {
            source,
            id: id.into(),
            kind,
            severity,
            summary: String::new(),
            cause: String::new(),
            impact: String::new(),
            action: String::new(),
            labels: BTreeMap::new(),
            created_at,
            resolved_at: None,
            delivery: DeliveryState::Pending,
            channels: Vec::new(),
        }
    }

    // Each text is bounded whatever built it (a host list, an agent's log): an alert is one
    // item and one message, and chat shows a few thousand characters at most.
    pub fn summary(mut self, text: impl Into<String>) -> Self {
        self.summary = cut(&text.into(), MAX_SUMMARY_CHARS);
        self
    }

    pub fn cause(mut self, text: impl Into<String>) -> Self {
        self.cause = cut(&text.into(), MAX_TEXT_CHARS);
        self
    }

    pub fn impact(mut self, text: impl Into<String>) -> Self {
        self.impact = cut(&text.into(), MAX_TEXT_CHARS);
        self
    }

    pub fn action(mut self, text: impl Into<String>) -> Self {
        self.action = cut(&text.into(), MAX_TEXT_CHARS);
        self
    }

    pub fn label(mut self, name: &str, value: impl Into<String>) -> Self {
        self.labels.insert(name.to_owned(), cut(&value.into(), MAX_LABEL_CHARS));
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_alert_reads_and_writes_its_fields_by_name() {
        let alert =
            Alert::new(AlertSource::Deploy, "production-abc", AlertKind::DeploymentRolledBack, Severity::Critical, 7)
                .summary("rolled back")
                .cause("the canary failed health")
                .impact("production stays on v1")
                .action("read the canary's log")
                .label("environment", "production");
        let value = serde_json::to_value(&alert).unwrap();
        assert_eq!(value["source"], "deploy");
        assert_eq!(value["kind"], "deployment_rolled_back");
        assert_eq!(value["severity"], "critical");
        assert_eq!(value["delivery"], "pending");
        assert_eq!(value["labels"], json!({"environment": "production"}));
        assert_eq!(serde_json::from_value::<Alert>(value).unwrap(), alert);
    }

    #[test]
    fn alerts_recorded_before_the_model_still_read() {
        // The shape payment and rollback alerts had before cause, impact and labels existed.
        let old = json!({
            "id": "evt_1", "source": "stripe", "kind": "payment_failed", "summary": "Payment failed",
            "action": "check the card", "customer": "cus_1", "subscription": null, "created_at": 5,
            "state": "pending"
        });
        let alert: Alert = serde_json::from_value(old).unwrap();
        assert_eq!(
            (alert.kind, alert.severity, alert.delivery),
            (AlertKind::PaymentFailed, Severity::Warning, DeliveryState::Pending)
        );
        let newer: Alert = serde_json::from_value(json!({
            "id": "x", "source": "check", "kind": "check_flapping", "summary": "s", "action": "a", "created_at": 1
        }))
        .unwrap();
        assert_eq!(newer.kind, AlertKind::Other, "a kind from a newer version is listed, not refused");
        let newest: Alert = serde_json::from_value(json!({
            "id": "x", "source": "pager", "kind": "k", "severity": "page", "delivery": "snoozed",
            "summary": "s", "action": "a", "created_at": 1
        }))
        .unwrap();
        assert_eq!(
            (newest.source, newest.severity, newest.delivery),
            (AlertSource::Other, Severity::Unknown, DeliveryState::Unknown)
        );
        assert!(
            serde_json::from_value::<Alert>(json!({"id": "x", "source": "stripe"})).is_err(),
            "kind and summary are required"
        );
    }
}
