//! `[[channel]]`, `[[route]]` and `[[check]]`: where alerts go, which alerts go where, and
//! what is checked every scheduled run.

use super::*;
use crate::domain::alert::{AlertKind, AlertSource, Severity};
use crate::domain::checks::{Condition, Thresholds};

/// The Secrets Manager name prefix of channel secrets (the template grants exactly these).
pub const CHANNEL_SECRET_PREFIX: &str = "conveyor/";

/// Where alerts are delivered. The secret (a Slack incoming-webhook URL, a webhook's signing
/// key) is a reference to Secrets Manager, never the value.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Channel {
    #[serde(deserialize_with = "resource_name")]
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ChannelKind,
    /// A Secrets Manager secret (name or ARN): Slack's webhook URL, or the generic webhook's
    /// signing key.
    #[serde(default)]
    pub secret: Option<String>,
    /// Email: who receives it, and the SES identity it is sent from.
    #[serde(default)]
    pub to: Vec<String>,
    #[serde(default)]
    pub from: Option<String>,
    /// Generic webhook: where it is POSTed.
    #[serde(default)]
    pub url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    Slack,
    Email,
    Webhook,
}

/// A check of an HTTP(S) endpoint, run on every scheduled run.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    #[serde(deserialize_with = "resource_name")]
    pub name: String,
    /// What is fetched; not for agent heartbeats (`agent_silent_for`).
    #[serde(default)]
    pub url: String,
    #[serde(default, deserialize_with = "conditions")]
    pub conditions: Vec<Condition>,
    #[serde(default = "default_failure_threshold")]
    pub failure_threshold: u32,
    #[serde(default = "default_success_threshold")]
    pub success_threshold: u32,
    /// Reminder interval while down; none when absent.
    #[serde(default)]
    pub repeat: Option<Seconds>,
    /// Checks whose being down mutes this one.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// What to do when it goes down: runbook text or a link.
    #[serde(default)]
    pub action: Option<String>,
    /// Who or what suffers while it is down ("customers cannot sign in").
    #[serde(default)]
    pub impact: Option<String>,
    #[serde(default)]
    pub channels: Vec<String>,
    /// Checks of one group failing in the same run make one message.
    #[serde(default, deserialize_with = "optional_resource_name")]
    pub group: Option<String>,
    #[serde(default = "default_check_timeout")]
    pub timeout: Seconds,
    /// Check every running instance of this environment (found through EC2 by its tags):
    /// `url` then names the host with `{private_ip}`, `{public_ip}` or `{instance_id}`.
    #[serde(default)]
    pub environment: Option<String>,
    /// Self-healing, off by default: an instance whose check goes down is rebooted, at most
    /// once per `reboot_every` (the stack's `EnableSelfHealing` grants the permission).
    #[serde(default)]
    pub reboot: bool,
    #[serde(default = "default_reboot_every")]
    pub reboot_every: Seconds,
    /// Agent heartbeat: an instance of `environment` whose agent has not polled for this long
    /// fails (instead of fetching a URL).
    #[serde(default)]
    pub agent_silent_for: Option<Seconds>,
}

/// How often the agent channel records that an instance's agent polled (not on every poll:
/// that would be a write per poll).
pub const AGENT_SEEN_EVERY_SECONDS: i64 = 300;

/// What a check's `url` may name an instance by.
pub const HOST_PLACEHOLDERS: [&str; 3] = ["{private_ip}", "{public_ip}", "{instance_id}"];

fn optional_resource_name<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    resource_name(deserializer).map(Some)
}

fn default_failure_threshold() -> u32 {
    3
}

fn default_success_threshold() -> u32 {
    2
}

fn default_check_timeout() -> Seconds {
    Seconds(10)
}

fn default_reboot_every() -> Seconds {
    Seconds(3600)
}

fn conditions<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Condition>, D::Error> {
    let texts = Vec::<String>::deserialize(deserializer)?;
    texts.iter().map(|text| Condition::parse(text).map_err(de::Error::custom)).collect()
}

impl Check {
    pub fn thresholds(&self) -> Thresholds {
        Thresholds {
            failure: self.failure_threshold,
            success: self.success_threshold,
            repeat: self.repeat.map(|r| r.0 as i64),
        }
    }

    fn problem(&self, channels: &[&Channel], checks: &[&Check], environments: &[&str]) -> Option<String> {
        let name = &self.name;
        if let Some(silent) = self.agent_silent_for {
            if self.environment.is_none() {
                return Some(format!(
                    "check `{name}`: agent_silent_for watches an environment's agents: add `environment`"
                ));
            }
            if self.reboot {
                return Some(format!(
                    "check `{name}`: a heartbeat check does not reboot (a silent agent is no reason to restart its instance)"
                ));
            }
            if !self.url.is_empty() || !self.conditions.is_empty() {
                return Some(format!(
                    "check `{name}`: a heartbeat check (agent_silent_for) fetches nothing: drop `url` and `conditions`, or make it a check of its own"
                ));
            }
            if silent.0 < AGENT_SEEN_EVERY_SECONDS as u64 * 2 {
                return Some(format!(
                    "check `{name}`: agent_silent_for must be at least {}m (an agent's polls are recorded every {}m)",
                    AGENT_SEEN_EVERY_SECONDS * 2 / 60,
                    AGENT_SEEN_EVERY_SECONDS / 60
                ));
            }
        } else if self.conditions.is_empty() {
            return Some(format!("check `{name}`: conditions: give at least one, like \"[STATUS] == 200\""));
        }
        let placeholders = HOST_PLACEHOLDERS.iter().any(|p| self.url.contains(p));
        match &self.environment {
            Some(environment) if !environments.contains(&environment.as_str()) => {
                return Some(format!("check `{name}`: environment `{environment}` is no [[environment]]"));
            }
            Some(_) if !placeholders && self.agent_silent_for.is_none() => {
                return Some(format!(
                    "check `{name}`: a check of an environment's instances names the host in `url` with {{private_ip}}, {{public_ip}} or {{instance_id}}"
                ));
            }
            None if placeholders => {
                return Some(format!(
                    "check `{name}`: `url` names an instance ({}); add `environment` to check each of its instances",
                    HOST_PLACEHOLDERS.join(", ")
                ));
            }
            None if self.reboot => {
                return Some(format!(
                    "check `{name}`: `reboot` needs `environment` (it reboots that environment's instances)"
                ));
            }
            _ => {}
        }
        if self.reboot_every.0 < 300 {
            return Some(format!("check `{name}`: reboot_every must be at least 5m (a reboot takes minutes)"));
        }
        if self.agent_silent_for.is_none() && !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Some(format!("check `{name}`: url `{}` must start with http:// or https://", self.url));
        }
        if self.failure_threshold == 0 || self.success_threshold == 0 {
            return Some(format!("check `{name}`: thresholds count runs, from 1"));
        }
        if self.timeout.0 == 0 || self.timeout.0 > 60 {
            return Some(format!("check `{name}`: timeout must be from 1s to 60s (a run is one minute)"));
        }
        if let Some(missing) = self.channels.iter().find(|c| !channels.iter().any(|channel| channel.name == **c)) {
            return Some(format!("check `{name}`: no [[channel]] named `{missing}`"));
        }
        if let Some(missing) = self.depends_on.iter().find(|d| !checks.iter().any(|check| check.name == **d)) {
            return Some(format!("check `{name}`: depends_on names `{missing}`, which is no [[check]]"));
        }
        if let Some(fleet) =
            self.depends_on.iter().find(|d| checks.iter().any(|c| c.name == **d && c.environment.is_some()))
        {
            return Some(format!(
                "check `{name}`: depends_on names `{fleet}`, a check of each instance of an environment: depend on a check of one URL (a load balancer's, say)"
            ));
        }
        None
    }
}

impl Channel {
    fn problem(&self) -> Option<String> {
        let name = &self.name;
        // The stack lets alert-dispatch read secrets under `conveyor/` only.
        if let Some(secret) = &self.secret
            && !(secret.starts_with(CHANNEL_SECRET_PREFIX)
                || secret.contains(&format!(":secret:{CHANNEL_SECRET_PREFIX}")))
        {
            return Some(format!(
                "channel `{name}`: secret `{secret}` must be named under `{CHANNEL_SECRET_PREFIX}` (like `conveyor/slack-team`): the stack's alert-dispatch may read only those"
            ));
        }
        match self.kind {
            ChannelKind::Slack if self.secret.is_none() => Some(format!(
                "channel `{name}`: a Slack channel needs `secret`, the Secrets Manager secret holding its incoming-webhook URL"
            )),
            ChannelKind::Email if self.to.is_empty() || self.from.is_none() => Some(format!(
                "channel `{name}`: an email channel needs `to` (a list) and `from` (a verified SES identity)"
            )),
            ChannelKind::Webhook
                if self.url.as_deref().is_none_or(|u| !u.starts_with("https://") && !u.starts_with("http://")) =>
            {
                Some(format!("channel `{name}`: a webhook channel needs `url` (http:// or https://)"))
            }
            ChannelKind::Webhook if self.secret.is_none() => Some(format!(
                "channel `{name}`: a webhook channel needs `secret`, the Secrets Manager secret holding its HMAC signing key"
            )),
            _ => None,
        }
    }
}

/// Which alerts go to which channels. Every route an alert matches adds its channels; an
/// alert no route matches goes to every channel (nothing is dropped unseen), and a route with
/// `channels = []` is how a kind is silenced on purpose.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Alerts from these sources (`deploy`, `check`, `stripe`, `cdn`, `conveyor`); any when empty.
    #[serde(default)]
    pub sources: Vec<AlertSource>,
    /// Alerts of these kinds; any when empty.
    #[serde(default)]
    pub kinds: Vec<AlertKind>,
    /// Alerts at least this severe; any when absent.
    #[serde(default)]
    pub min_severity: Option<Severity>,
    pub channels: Vec<String>,
}

impl Route {
    pub fn matches(&self, source: AlertSource, kind: AlertKind, severity: Severity) -> bool {
        (self.sources.is_empty() || self.sources.contains(&source))
            && (self.kinds.is_empty() || self.kinds.contains(&kind))
            && self.min_severity.is_none_or(|min| severity.rank() >= min.rank())
    }
}

/// The problem with route `i`, if any: channels that do not exist, or a source, kind or
/// severity this version does not know (it would never match).
pub(super) fn route_problem(route: &Route, channels: &[&Channel], i: usize) -> Option<String> {
    let n = i + 1;
    if let Some(missing) = route.channels.iter().find(|c| !channels.iter().any(|channel| channel.name == **c)) {
        return Some(format!("route {n}: no [[channel]] named `{missing}`"));
    }
    if route.sources.contains(&AlertSource::Other) {
        return Some(format!("route {n}: sources are deploy, check, stripe, cdn and conveyor"));
    }
    if route.kinds.contains(&AlertKind::Other) {
        return Some(format!("route {n}: unknown kind; the kinds are listed in the README's alerts section"));
    }
    if route.min_severity == Some(Severity::Unknown) {
        return Some(format!("route {n}: min_severity is info, warning or critical"));
    }
    None
}

/// The problem with channel `i`, if any: a duplicate name or missing settings.
pub(super) fn channel_problem(channels: &[&Channel], i: usize) -> Option<String> {
    let channel = channels[i];
    if channels[..i].iter().any(|c| c.name == channel.name) {
        return Some(format!("channel `{}` is defined twice", channel.name));
    }
    channel.problem()
}

/// The problem with check `i`, if any: a duplicate name, unknown channels or parents, or a
/// cycle of `depends_on` (a check that depends on itself would never alert).
pub(super) fn check_problem(
    checks: &[&Check],
    channels: &[&Channel],
    environments: &[&str],
    i: usize,
) -> Option<String> {
    let check = checks[i];
    if checks[..i].iter().any(|c| c.name == check.name) {
        return Some(format!("check `{}` is defined twice", check.name));
    }
    if let Some(problem) = check.problem(channels, checks, environments) {
        return Some(problem);
    }
    let mut seen: Vec<&str> = Vec::new();
    let mut next: Vec<&str> = check.depends_on.iter().map(String::as_str).collect();
    while let Some(parent) = next.pop() {
        if parent == check.name {
            return Some(format!("check `{}` depends on itself (through {})", check.name, seen.join(", ")));
        }
        if seen.contains(&parent) {
            continue;
        }
        seen.push(parent);
        if let Some(found) = checks.iter().find(|c| c.name == parent) {
            next.extend(found.depends_on.iter().map(String::as_str));
        }
    }
    None
}
