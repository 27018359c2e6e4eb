//! The non-HTTP triggers a function can declare: a table stream mapping with event filters,
//! and a schedule. In AWS the SAM template wires them (an event source mapping with
//! `FilterCriteria` and `ReportBatchItemFailures`, an EventBridge rule); locally
//! `conveyor dev` plays them with the same filters and event shapes, so a function cannot
//! tell the two apart.

use std::time::Duration;

pub use aws_lambda_events::dynamodb::{Event as StreamEvent, EventRecord as StreamRecord};
pub use aws_lambda_events::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse as BatchResponse};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::http::BoxFuture;
use crate::registration::Function;

/// Where a stream mapping starts reading when it is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartingPosition {
    TrimHorizon,
    Latest,
}

/// A function fed by the table's DynamoDB stream.
pub trait StreamFunction: Function {
    /// Lambda event filter patterns (JSON text, as in the template's `FilterCriteria`); a
    /// record is delivered when any pattern matches. No patterns: every record.
    fn filters(&self) -> &'static [&'static str] {
        self.registration().stream_filters
    }
    fn starting_position(&self) -> StartingPosition {
        StartingPosition::TrimHorizon
    }
    /// Handles one record. An error stops the batch at this record: Lambda retries from it,
    /// and the records before it are not handled again (see [`handle_batch`]).
    fn handle_record<'a>(&'a self, record: &'a StreamRecord) -> BoxFuture<'a, Result<(), String>>;
}

/// A string attribute of the record's new image (absent, or not a string: none).
pub fn new_text<'r>(record: &'r StreamRecord, name: &str) -> Option<&'r str> {
    match record.change.new_image.get(name) {
        Some(serde_dynamo::AttributeValue::S(value)) => Some(value),
        _ => None,
    }
}

/// Handles a batch in order and answers as Lambda's `ReportBatchItemFailures` reads it: the
/// sequence number of the first record that failed, so that the records before it count as
/// done and the ones from it are retried, still in order. A failed record without a
/// sequence number fails the whole batch (an empty identifier), as Lambda defines it.
pub async fn handle_batch(function: &dyn StreamFunction, event: &StreamEvent) -> BatchResponse {
    let mut response = BatchResponse::default();
    for record in &event.records {
        if let Err(error) = function.handle_record(record).await {
            let sequence = record.change.sequence_number.clone().unwrap_or_default();
            tracing::warn!(function = function.name(), %sequence, %error, "stream record failed; retried from it");
            let mut failure = DynamoDbBatchItemFailure::default();
            failure.item_identifier = Some(sequence);
            response.batch_item_failures.push(failure);
            break;
        }
    }
    response
}

/// An EventBridge "Scheduled Event", as a rule with a `rate(...)` schedule delivers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledEvent {
    pub id: String,
    #[serde(rename = "detail-type")]
    pub detail_type: String,
    pub source: String,
    pub account: String,
    /// RFC 3339, as EventBridge writes it.
    pub time: String,
    pub region: String,
    #[serde(default)]
    pub resources: Vec<String>,
}

impl ScheduledEvent {
    /// The event source of scheduled events.
    pub const SOURCE: &'static str = "aws.events";
}

/// A function run on a fixed rate (an EventBridge schedule).
pub trait ScheduledFunction: Function {
    /// The rate it runs at: its registration's (AWS's), unless the function was built to
    /// run faster locally.
    fn every(&self) -> Duration {
        self.registration().schedule.unwrap_or(Duration::from_secs(60))
    }
    /// Handles one scheduled run. An error is logged (and counted by Lambda); the next run
    /// comes at the next tick, so a schedule never piles up retries.
    fn tick<'a>(&'a self, event: &'a ScheduledEvent) -> BoxFuture<'a, Result<(), String>>;
}

/// An SNS delivery to a subscribed function: its records, each one message.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct NotificationEvent {
    #[serde(rename = "Records")]
    pub records: Vec<NotificationRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct NotificationRecord {
    #[serde(rename = "EventSource")]
    pub event_source: String,
    #[serde(rename = "Sns")]
    pub sns: Notification,
}

/// One SNS message.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Notification {
    /// Unique per message; SNS redelivers a message with the same id.
    #[serde(rename = "MessageId")]
    pub message_id: String,
    #[serde(rename = "TopicArn", default)]
    pub topic_arn: String,
    #[serde(rename = "Message")]
    pub message: String,
}

impl NotificationEvent {
    /// The event source of SNS records (DynamoDB's records say `aws:dynamodb`, in camel case).
    pub const SOURCE: &'static str = "aws:sns";

    /// Whether a payload with `Records` is an SNS delivery.
    pub fn is_notification(payload: &Value) -> bool {
        payload["Records"][0]["EventSource"].as_str() == Some(Self::SOURCE)
    }
}

/// A function subscribed to an SNS topic.
pub trait NotificationFunction: Function {
    /// Handles one message. An error fails the invocation: SNS (through Lambda's async
    /// retries) delivers the message again, so handling must be idempotent by message id.
    fn handle_notification<'a>(&'a self, message: &'a Notification) -> BoxFuture<'a, Result<(), String>>;
}

/// The rate expression of a schedule, as the template writes it: `rate(1 minute)`,
/// `rate(5 minutes)`, `rate(1 hour)`. Rates below a minute (EventBridge's smallest) or not
/// a whole number of minutes have none.
pub fn rate_expression(every: Duration) -> Option<String> {
    let seconds = every.as_secs();
    if every.subsec_nanos() != 0 || seconds == 0 || !seconds.is_multiple_of(60) {
        return None;
    }
    let minutes = seconds / 60;
    Some(match minutes {
        1 => "rate(1 minute)".to_owned(),
        60 => "rate(1 hour)".to_owned(),
        1440 => "rate(1 day)".to_owned(),
        m if m % 1440 == 0 => format!("rate({} days)", m / 1440),
        m if m % 60 == 0 => format!("rate({} hours)", m / 60),
        m => format!("rate({m} minutes)"),
    })
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid event filter pattern: {0}")]
pub struct PatternError(String);

/// A parsed event filter pattern.
#[derive(Debug, Clone, PartialEq)]
pub struct Pattern(Value);

impl Pattern {
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let value: Value = serde_json::from_str(text).map_err(|e| PatternError(e.to_string()))?;
        check(&value)?;
        Ok(Self(value))
    }

    /// Whether `record` (a stream record in Lambda's JSON shape) matches.
    pub fn matches(&self, record: &Value) -> bool {
        matches_object(&self.0, record)
    }
}

fn check(pattern: &Value) -> Result<(), PatternError> {
    let Value::Object(fields) = pattern else {
        return Err(PatternError("a pattern is a JSON object".into()));
    };
    for (key, value) in fields {
        match value {
            Value::Object(_) => check(value)?,
            Value::Array(conditions) if !conditions.is_empty() => {}
            _ => {
                return Err(PatternError(format!("`{key}` must hold an object or a non-empty array of conditions")));
            }
        }
    }
    Ok(())
}

fn matches_object(pattern: &Value, record: &Value) -> bool {
    let Value::Object(fields) = pattern else {
        return false;
    };
    fields.iter().all(|(key, expected)| {
        let actual = record.get(key);
        match expected {
            Value::Object(_) => actual.is_some_and(|a| matches_object(expected, a)),
            Value::Array(conditions) => conditions.iter().any(|c| matches_condition(c, actual)),
            _ => false,
        }
    })
}

fn matches_condition(condition: &Value, actual: Option<&Value>) -> bool {
    match condition {
        Value::Object(rule) => {
            let Some((name, operand)) = rule.iter().next() else {
                return false;
            };
            match name.as_str() {
                "exists" => operand.as_bool() == Some(actual.is_some()),
                "prefix" => match (actual, operand) {
                    (Some(Value::String(a)), Value::String(p)) => a.starts_with(p.as_str()),
                    _ => false,
                },
                "anything-but" => match actual {
                    None => false,
                    Some(a) => match operand {
                        Value::Array(excluded) => !excluded.iter().any(|e| equal(e, a)),
                        single => !equal(single, a),
                    },
                },
                "numeric" => match (actual.and_then(number), operand.as_array()) {
                    (Some(a), Some(ops)) => ops.chunks(2).all(|pair| {
                        match (pair.first().and_then(Value::as_str), pair.get(1).and_then(Value::as_f64)) {
                            (Some("="), Some(b)) => a == b,
                            (Some("<"), Some(b)) => a < b,
                            (Some("<="), Some(b)) => a <= b,
                            (Some(">"), Some(b)) => a > b,
                            (Some(">="), Some(b)) => a >= b,
                            _ => false,
                        }
                    }),
                    _ => false,
                },
                _ => false,
            }
        }
        Value::Null => matches!(actual, Some(Value::Null)),
        literal => actual.is_some_and(|a| equal(literal, a)),
    }
}

/// DynamoDB numbers arrive as strings (`{"N": "42"}`); compare them as numbers.
fn number(value: &Value) -> Option<f64> {
    value.as_f64().or_else(|| value.as_str().and_then(|s| s.parse().ok()))
}

fn equal(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::Number(_), _) => number(expected) == number(actual),
        _ => expected == actual,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(event: &str, sk: &str, state: &str) -> Value {
        json!({
            "eventName": event,
            "dynamodb": {"NewImage": {"sk": {"S": sk}, "state": {"S": state}, "attempt": {"N": "3"}}}
        })
    }

    #[test]
    fn exact_prefix_and_nested_fields() {
        let pattern = Pattern::parse(
            r#"{"eventName": ["INSERT"], "dynamodb": {"NewImage": {"sk": {"S": [{"prefix": "DEPLOYMENT#"}]}}}}"#,
        )
        .unwrap();
        assert!(pattern.matches(&record("INSERT", "DEPLOYMENT#abc", "pending")));
        assert!(!pattern.matches(&record("MODIFY", "DEPLOYMENT#abc", "pending")));
        assert!(!pattern.matches(&record("INSERT", "BUILD#abc", "pending")));
        assert!(!pattern.matches(&json!({"eventName": "INSERT"})));
    }

    #[test]
    fn anything_but_exists_and_numeric() {
        let pattern = Pattern::parse(
            r#"{"dynamodb": {"NewImage": {"state": {"S": [{"anything-but": ["pending", "failed"]}]}}}}"#,
        )
        .unwrap();
        assert!(pattern.matches(&record("MODIFY", "x", "succeeded")));
        assert!(!pattern.matches(&record("MODIFY", "x", "pending")));
        let exists = Pattern::parse(r#"{"dynamodb": {"OldImage": [{"exists": false}]}}"#).unwrap();
        assert!(exists.matches(&record("INSERT", "x", "y")));
        let numeric =
            Pattern::parse(r#"{"dynamodb": {"NewImage": {"attempt": {"N": [{"numeric": [">", 2, "<=", 3]}]}}}}"#)
                .unwrap();
        assert!(numeric.matches(&record("INSERT", "x", "y")));
        let too_high =
            Pattern::parse(r#"{"dynamodb": {"NewImage": {"attempt": {"N": [{"numeric": [">", 3]}]}}}}"#).unwrap();
        assert!(!too_high.matches(&record("INSERT", "x", "y")));
    }

    #[test]
    fn rates_are_written_as_the_template_writes_them() {
        assert_eq!(rate_expression(Duration::from_secs(60)).as_deref(), Some("rate(1 minute)"));
        assert_eq!(rate_expression(Duration::from_secs(300)).as_deref(), Some("rate(5 minutes)"));
        assert_eq!(rate_expression(Duration::from_secs(7200)).as_deref(), Some("rate(2 hours)"));
        assert_eq!(rate_expression(Duration::from_secs(86_400)).as_deref(), Some("rate(1 day)"));
        assert_eq!(rate_expression(Duration::from_secs(90)), None);
        assert_eq!(rate_expression(Duration::from_secs(5)), None);
        assert_eq!(rate_expression(Duration::from_millis(60_500)), None);
    }

    #[test]
    fn malformed_patterns_are_refused() {
        assert!(Pattern::parse("[]").is_err());
        assert!(Pattern::parse(r#"{"eventName": "INSERT"}"#).is_err());
        assert!(Pattern::parse(r#"{"eventName": []}"#).is_err());
        assert!(Pattern::parse("{").is_err());
    }
}
