//! Alert dispatch, decided: which channels an alert goes to, what each channel is sent
//! (Slack Block Kit with its fallback text, an email, a signed JSON webhook), how a
//! channel's answer is read, and when an undelivered message is tried again. Pure; the
//! function sends and records.

use super::text::cut;
use serde_json::{Value, json};

use super::alert::{Alert, AlertKind, Severity};
use crate::config::{Channel, Route};

/// The channels `alert` goes to: its own when its raiser chose them (a check's `channels`),
/// else every matching route's, else every channel, so an alert nobody routed is still seen.
pub fn channels_for<'c>(alert: &Alert, channels: &'c [Channel], routes: &[Route]) -> Vec<&'c str> {
    let chosen: Vec<&str> = if !alert.channels.is_empty() {
        alert.channels.iter().map(String::as_str).collect()
    } else {
        let matching: Vec<&Route> =
            routes.iter().filter(|r| r.matches(alert.source, alert.kind, alert.severity)).collect();
        if matching.is_empty() {
            return channels.iter().map(|c| c.name.as_str()).collect();
        }
        matching.iter().flat_map(|r| r.channels.iter().map(String::as_str)).collect()
    };
    // In the configuration's order, each once; a name no longer configured is dropped (and
    // logged by the caller, which sees the difference).
    channels.iter().map(|c| c.name.as_str()).filter(|name| chosen.contains(name)).collect()
}

fn icon(alert: &Alert) -> &'static str {
    match (alert.kind, alert.severity) {
        (AlertKind::CheckRecovered, _) => "✅",
        (_, Severity::Critical) => "🔴",
        (_, Severity::Info) => "ℹ️",
        _ => "🟠",
    }
}

/// One line that stands for the whole alert: Slack's notification and fallback text, the
/// email's subject.
pub fn headline(alert: &Alert) -> String {
    format!("{} [{}] {}", icon(alert), alert.severity.as_str(), alert.summary)
}

/// The parts every message carries, named: what, cause, impact, action, since when.
fn parts(alert: &Alert) -> Vec<(&'static str, String)> {
    let mut parts = Vec::new();
    for (name, text) in [("Cause", &alert.cause), ("Impact", &alert.impact), ("Action", &alert.action)] {
        if !text.is_empty() {
            parts.push((name, text.clone()));
        }
    }
    parts.push(("Since", since_text(alert)));
    parts
}

fn since_text(alert: &Alert) -> String {
    let at = alert.labels.get("since").and_then(|s| s.parse::<i64>().ok()).unwrap_or(alert.created_at);
    rfc3339(at)
}

pub fn rfc3339(at: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(at)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| at.to_string())
}

/// The labels shown with a message (the ones that are not already one of its parts).
fn shown_labels(alert: &Alert) -> impl Iterator<Item = (&String, &String)> {
    alert.labels.iter().filter(|(name, _)| name.as_str() != "since")
}

/// The plain-text body: email, and what a reader without Block Kit sees.
pub fn text(alert: &Alert) -> String {
    let mut text = format!("{}\n", headline(alert));
    for (name, value) in parts(alert) {
        text.push_str(&format!("{name}: {value}\n"));
    }
    let labels: Vec<String> = shown_labels(alert).map(|(k, v)| format!("{k}={v}")).collect();
    if !labels.is_empty() {
        text.push_str(&format!("Labels: {}\n", labels.join(", ")));
    }
    text.push_str(&format!("Alert: {}/{}\n", alert.source.as_str(), alert.id));
    text
}

/// Slack's limits: a header's text, a section's text and a field's text.
const SLACK_HEADER_CHARS: usize = 150;
const SLACK_SECTION_CHARS: usize = 3000;
const SLACK_FIELD_CHARS: usize = 2000;
const SLACK_MAX_FIELDS: usize = 10;

/// An incoming-webhook payload: Block Kit blocks and the fallback `text` Slack shows in
/// notifications, each within Slack's limits (longer text is cut, marked with `…`).
pub fn slack_payload(alert: &Alert) -> Value {
    let mut blocks = vec![json!({
        "type": "header",
        "text": {"type": "plain_text", "text": cut(&format!("{} {}", icon(alert), alert.summary), SLACK_HEADER_CHARS), "emoji": true}
    })];
    for (name, value) in parts(alert) {
        blocks.push(json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": cut(&format!("*{name}*\n{}", escape_mrkdwn(&value)), SLACK_SECTION_CHARS)}
        }));
    }
    let fields: Vec<Value> = shown_labels(alert)
        .take(SLACK_MAX_FIELDS)
        .map(
            |(k, v)| json!({"type": "mrkdwn", "text": cut(&format!("*{k}*\n{}", escape_mrkdwn(v)), SLACK_FIELD_CHARS)}),
        )
        .collect();
    if !fields.is_empty() {
        blocks.push(json!({"type": "section", "fields": fields}));
    }
    blocks.push(json!({
        "type": "context",
        "elements": [{"type": "mrkdwn", "text": cut(&format!("{} · {} · {}", alert.severity.as_str(), alert.kind.as_str(), escape_mrkdwn(&alert.id)), SLACK_FIELD_CHARS)}]
    }));
    json!({"text": cut(&escape_mrkdwn(&text(alert)), SLACK_SECTION_CHARS), "blocks": blocks})
}

/// Slack reads `&`, `<` and `>` as markup: escaped, as Slack documents.
fn escape_mrkdwn(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The JSON a webhook channel receives: the alert as stored, with its headline.
pub fn webhook_payload(alert: &Alert) -> Value {
    json!({"headline": headline(alert), "text": text(alert), "alert": alert})
}

/// What a channel's answer means for the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Delivered,
    /// Not now (429 Slow Down, a 5xx, no answer): try again, not before `after` seconds
    /// when the channel said so.
    Later {
        after: Option<i64>,
        reason: String,
    },
    /// Refused for good (a bad payload, an archived channel, a revoked URL): sending it again
    /// changes nothing until someone fixes the channel.
    Refused(String),
    /// No answer (a timeout, a dropped connection): the channel may have the message, so it
    /// is tried again only from a later run.
    NoAnswer(String),
}

/// Reads an HTTP channel's answer (Slack's incoming webhook, a generic webhook).
pub fn read_answer(status: u16, retry_after: Option<&str>, body: &str) -> Answer {
    let said = cut(body.trim(), 200);
    match status {
        200..=299 => Answer::Delivered,
        429 => Answer::Later {
            after: retry_after.and_then(|v| v.trim().parse::<i64>().ok()).map(|s| s.clamp(1, MAX_RETRY_SECONDS)),
            reason: format!("429 rate limited{}", if said.is_empty() { String::new() } else { format!(": {said}") }),
        },
        408 | 500..=599 => Answer::Later { after: None, reason: format!("{status}: {said}") },
        _ => Answer::Refused(format!("{status}: {said}")),
    }
}

/// The longest wait between two tries of one message.
pub const MAX_RETRY_SECONDS: i64 = 30 * 60;

/// When try number `attempts` (from 1) that failed for now is followed by the next: 30 s,
/// doubling to at most 30 min, or later when the channel asked for it. Never "give up": a
/// message waits until the channel takes it or refuses it for good.
pub fn next_try(now: i64, attempts: u32, asked_after: Option<i64>) -> i64 {
    let backoff = 30i64.saturating_mul(1 << attempts.saturating_sub(1).min(6)).min(MAX_RETRY_SECONDS);
    now + asked_after.map_or(backoff, |after| after.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::domain::alert::AlertSource;

    fn config() -> Config {
        Config::parse(
            r#"
[[channel]]
name = "team"
type = "slack"
secret = "conveyor/slack-team"

[[channel]]
name = "pager"
type = "webhook"
url = "https://pager.example.com/hook"
secret = "conveyor/pager-key"

[[channel]]
name = "ops"
type = "email"
to = ["ops@example.com"]
from = "conveyor@example.com"

[[route]]
sources = ["deploy"]
channels = ["team"]

[[route]]
min_severity = "critical"
channels = ["pager"]

[[route]]
kinds = ["invalidation_paths_over_free"]
channels = []
"#,
            "test.toml",
        )
        .unwrap()
    }

    fn alert(source: AlertSource, kind: AlertKind, severity: Severity) -> Alert {
        Alert::new(source, "a1", kind, severity, 1_700_000_000)
            .summary("Deployment of v2 to production rolled back")
            .cause("the canary failed health: [STATUS] == 200 (was 503)")
            .impact("production stays on v1")
            .action("Read the canary's log")
            .label("environment", "production")
    }

    #[test]
    fn routes_add_up_and_an_unrouted_alert_reaches_every_channel() {
        let config = config();
        let route = |a: &Alert| channels_for(a, &config.channels, &config.routes);
        assert_eq!(
            route(&alert(AlertSource::Deploy, AlertKind::DeploymentRolledBack, Severity::Critical)),
            ["team", "pager"]
        );
        assert_eq!(route(&alert(AlertSource::Deploy, AlertKind::DeploymentRolledBack, Severity::Warning)), ["team"]);
        assert_eq!(
            route(&alert(AlertSource::Stripe, AlertKind::PaymentFailed, Severity::Warning)),
            ["team", "pager", "ops"]
        );
        assert!(
            route(&alert(AlertSource::Cdn, AlertKind::InvalidationPathsOverFree, Severity::Warning)).is_empty(),
            "silenced on purpose"
        );
        let mut chosen = alert(AlertSource::Check, AlertKind::CheckDown, Severity::Critical);
        chosen.channels = vec!["ops".into(), "gone".into()];
        assert_eq!(route(&chosen), ["ops"], "a check's own channels win; a removed one is dropped");
    }

    #[test]
    fn a_route_naming_an_unknown_channel_or_kind_is_refused() {
        let bad = |route: &str| {
            let text = format!(
                "[[channel]]\nname = \"team\"\ntype = \"slack\"\nsecret = \"conveyor/s\"\n\n[[route]]\n{route}\n"
            );
            Config::parse(&text, "c.toml").unwrap_err().message
        };
        assert!(bad("channels = [\"nope\"]").contains("no [[channel]] named `nope`"));
        assert!(bad("kinds = [\"check_flapping\"]\nchannels = [\"team\"]").contains("unknown kind"));
        assert!(bad("sources = [\"pager\"]\nchannels = [\"team\"]").contains("sources are"));
        assert!(bad("min_severity = \"page\"\nchannels = [\"team\"]").contains("min_severity"));
    }

    #[test]
    fn the_slack_payload_has_fallback_text_and_blocks_within_slacks_limits() {
        let mut long = alert(AlertSource::Deploy, AlertKind::DeploymentRolledBack, Severity::Critical);
        long.summary = "é".repeat(400);
        long.cause = "<script>&".repeat(1000);
        let payload = slack_payload(&long);
        let text = payload["text"].as_str().unwrap();
        assert!(text.chars().count() <= 3000 && text.ends_with('…'));
        let blocks = payload["blocks"].as_array().unwrap();
        assert_eq!(blocks[0]["type"], "header");
        assert_eq!(blocks[0]["text"]["text"].as_str().unwrap().chars().count(), 150);
        let cause = blocks[1]["text"]["text"].as_str().unwrap();
        assert!(cause.starts_with("*Cause*\n&lt;script&gt;&amp;"), "{cause:.40}");
        assert!(cause.chars().count() <= 3000);
        let names: Vec<&str> = blocks.iter().filter_map(|b| b["text"]["text"].as_str()).collect();
        assert!(names.iter().any(|t| t.starts_with("*Impact*")) && names.iter().any(|t| t.starts_with("*Action*")));
        assert!(names.iter().any(|t| t.starts_with("*Since*\n2023-11-14T22:13:20Z")), "{names:?}");
    }

    #[test]
    fn the_text_names_what_cause_impact_action_and_since() {
        let text = text(&alert(AlertSource::Deploy, AlertKind::DeploymentRolledBack, Severity::Critical));
        for part in [
            "rolled back",
            "Cause: the canary",
            "Impact: production stays",
            "Action: Read",
            "Since: 2023-11-14T22:13:20Z",
            "environment=production",
            "Alert: deploy/a1",
        ] {
            assert!(text.contains(part), "{part} missing from {text}");
        }
    }

    #[test]
    fn answers_are_read_as_slack_documents_them() {
        assert_eq!(read_answer(200, None, "ok"), Answer::Delivered);
        assert_eq!(
            read_answer(429, Some("7"), "rate_limited"),
            Answer::Later { after: Some(7), reason: "429 rate limited: rate_limited".into() }
        );
        assert!(matches!(read_answer(429, Some("soon"), ""), Answer::Later { after: None, .. }));
        assert!(matches!(read_answer(503, None, "busy"), Answer::Later { after: None, .. }));
        assert_eq!(read_answer(400, None, "invalid_payload"), Answer::Refused("400: invalid_payload".into()));
        assert_eq!(read_answer(410, None, "channel_is_archived"), Answer::Refused("410: channel_is_archived".into()));
    }

    #[test]
    fn retries_back_off_to_a_ceiling_and_honour_what_the_channel_asked() {
        assert_eq!(next_try(0, 1, None), 30);
        assert_eq!(next_try(0, 2, None), 60);
        assert_eq!(next_try(0, 40, None), MAX_RETRY_SECONDS);
        assert_eq!(next_try(100, 1, Some(5)), 105);
    }
}
