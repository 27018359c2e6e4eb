//! The non-HTTP triggers a function can declare: a table stream mapping with event filters,
//! and a schedule. In AWS the SAM template wires them (an event source mapping with
//! `FilterCriteria`, an EventBridge rule); locally `conveyor dev` plays them with the same
//! filters and event shapes, so a function cannot tell the two apart.

use std::time::Duration;

use serde_json::Value;

use crate::http::BoxFuture;

/// Where a stream mapping starts reading when it is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartingPosition {
    TrimHorizon,
    Latest,
}

/// A function fed by the table's DynamoDB stream.
pub trait StreamFunction: Send + Sync {
    fn name(&self) -> &'static str;
    /// Lambda event filter patterns (JSON text, as in the template's `FilterCriteria`); a
    /// record is delivered when any pattern matches. No patterns: every record.
    fn filters(&self) -> &'static [&'static str];
    fn starting_position(&self) -> StartingPosition {
        StartingPosition::TrimHorizon
    }
    /// Handles `{"Records": [...]}` in the shape Lambda delivers. An error makes the caller
    /// retry the same batch, as Lambda does.
    fn handle(&self, event: Value) -> BoxFuture<'_, Result<(), String>>;
}

/// A function run on a fixed rate (an EventBridge schedule).
pub trait ScheduledFunction: Send + Sync {
    fn name(&self) -> &'static str;
    fn every(&self) -> Duration;
    /// Handles an EventBridge "Scheduled Event".
    fn tick(&self, event: Value) -> BoxFuture<'_, Result<(), String>>;
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
    fn malformed_patterns_are_refused() {
        assert!(Pattern::parse("[]").is_err());
        assert!(Pattern::parse(r#"{"eventName": "INSERT"}"#).is_err());
        assert!(Pattern::parse(r#"{"eventName": []}"#).is_err());
        assert!(Pattern::parse("{").is_err());
    }
}
