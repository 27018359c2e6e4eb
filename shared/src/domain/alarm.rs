//! Conveyor's own CloudWatch alarms (its functions' errors, a stream mapping falling behind,
//! the API's 5xx, records given up on) as alerts in the same shape as every other: the
//! alarm's description says the impact, the metric says what to do.

use serde::Deserialize;

use super::alert::{Alert, AlertKind, AlertSource, Severity};

/// The message CloudWatch publishes to SNS when an alarm changes state (the fields used).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AlarmChange {
    pub alarm_name: String,
    #[serde(default)]
    pub alarm_description: Option<String>,
    pub new_state_value: String,
    #[serde(default)]
    pub old_state_value: Option<String>,
    #[serde(default)]
    pub new_state_reason: String,
    #[serde(default)]
    pub state_change_time: String,
    #[serde(default)]
    pub trigger: Option<AlarmTrigger>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AlarmTrigger {
    #[serde(default)]
    pub metric_name: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub dimensions: Vec<AlarmDimension>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AlarmDimension {
    pub name: String,
    pub value: String,
}

impl AlarmChange {
    pub fn parse(message: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(message)
    }

    fn dimension(&self, name: &str) -> Option<&str> {
        self.trigger.as_ref()?.dimensions.iter().find(|d| d.name == name).map(|d| d.value.as_str())
    }

    /// What to do, by the alarm's metric.
    fn action(&self) -> String {
        let metric = self.trigger.as_ref().and_then(|t| t.metric_name.as_deref()).unwrap_or_default();
        let function = self.dimension("FunctionName");
        match (metric, function) {
            ("Errors", Some(function)) => format!(
                "Read the log group /aws/lambda/{function} around {} for the error; a stream record that keeps failing is retried, then parked in the StreamFailures queue",
                self.state_change_time
            ),
            ("IteratorAge", Some(function)) => format!(
                "{function} is behind on the table's stream: look for errors and throttles in /aws/lambda/{function}; records older than 24 hours leave the stream, and the one-minute schedule catches up from the table"
            ),
            ("5xx", _) => "Read the API's access logs and the failing function's log group for the requests that failed; senders (GitHub, Stripe) retry them".into(),
            ("ApproximateNumberOfMessagesVisible", _) => "Read the messages in the StreamFailures queue: each names the records a function gave up on; fix the cause, then replay them".into(),
            _ => "Open the alarm in the CloudWatch console and read what it watches".into(),
        }
    }
}

/// The alert for an alarm's change: going into alarm (critical) or back to OK (resolved);
/// `INSUFFICIENT_DATA` tells nobody anything. The id comes from the alarm and the change,
/// so a message SNS delivers twice raises one alert.
pub fn alarm_alert(change: &AlarmChange, now: i64) -> Option<Alert> {
    let (severity, verb) = match (change.new_state_value.as_str(), change.old_state_value.as_deref()) {
        ("ALARM", _) => (Severity::Critical, "in alarm"),
        // Only out of an alarm: a new or updated alarm goes from INSUFFICIENT_DATA to OK.
        ("OK", Some("ALARM")) => (Severity::Info, "back to OK"),
        _ => return None,
    };
    let moment: String = change.state_change_time.chars().filter(char::is_ascii_alphanumeric).collect();
    let name: String =
        change.alarm_name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    let mut alert = Alert::new(
        AlertSource::Conveyor,
        format!("{name}-{}-{moment}", change.new_state_value.to_lowercase()),
        AlertKind::Alarm,
        severity,
        now,
    )
    .summary(format!("Conveyor alarm {} is {verb}", change.alarm_name))
    .cause(change.new_state_reason.clone())
    .impact(change.alarm_description.clone().unwrap_or_default())
    .label("alarm", change.alarm_name.clone());
    alert = if severity == Severity::Info {
        alert.action("Nothing to do: the alarm cleared")
    } else {
        alert.action(change.action())
    };
    if let Some(function) = change.dimension("FunctionName") {
        alert = alert.label("function", function);
    }
    Some(alert)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(state: &str, metric: &str, dimensions: &str) -> AlarmChange {
        AlarmChange::parse(&format!(
            r#"{{"AlarmName": "conveyor-DeployFanoutErrors", "AlarmDescription": "deploy-fanout failed: deployments may stall", "NewStateValue": "{state}", "OldStateValue": "{}", "NewStateReason": "Threshold Crossed: 1 datapoint [2.0] was greater than the threshold (0.0).", "StateChangeTime": "2026-11-23T05:30:00.000+0000", "Trigger": {{"MetricName": "{metric}", "Namespace": "AWS/Lambda", "Dimensions": [{dimensions}]}}}}"#,
            if state == "ALARM" { "OK" } else { "ALARM" }
        ))
        .unwrap()
    }

    #[test]
    fn an_alarm_says_what_broke_why_what_it_affects_and_what_to_do() {
        let alert = alarm_alert(
            &change("ALARM", "Errors", r#"{"name": "FunctionName", "value": "conveyor-DeployFanout-1"}"#),
            9,
        )
        .unwrap();
        assert_eq!(alert.summary, "Conveyor alarm conveyor-DeployFanoutErrors is in alarm");
        assert_eq!(
            (alert.source, alert.kind, alert.severity),
            (AlertSource::Conveyor, AlertKind::Alarm, Severity::Critical)
        );
        assert!(alert.cause.starts_with("Threshold Crossed"));
        assert_eq!(alert.impact, "deploy-fanout failed: deployments may stall");
        assert!(alert.action.contains("/aws/lambda/conveyor-DeployFanout-1"), "{}", alert.action);
        assert_eq!(alert.id, "conveyor-DeployFanoutErrors-alarm-20261123T0530000000000");
        let ok = alarm_alert(&change("OK", "Errors", ""), 9).unwrap();
        assert_eq!((ok.severity, ok.id.contains("-ok-")), (Severity::Info, true));
        assert!(alarm_alert(&change("INSUFFICIENT_DATA", "Errors", ""), 9).is_none());
        let mut created = change("OK", "Errors", "");
        created.old_state_value = Some("INSUFFICIENT_DATA".into());
        assert!(alarm_alert(&created, 9).is_none(), "a new alarm settling is no news");
    }

    #[test]
    fn the_recorded_aws_payload_reads() {
        let message = r#"{"AlarmName": "EXAMPLE","AlarmDescription": "EXAMPLE","AWSAccountId": "123456789012","NewStateValue": "ALARM","NewStateReason": "Threshold Crossed","StateChangeTime": "2015-06-03T17:43:27.123+0000","Region": "EXAMPLE","AlarmArn": "arn:aws:cloudwatch:REGION:ACCOUNT_NUMBER:alarm:EXAMPLE","OldStateValue": "INSUFFICIENT_DATA","Trigger": {"MetricName": "NetworkOut","Namespace": "AWS/EC2","StatisticType": "Statistic","Statistic": "AVERAGE","Unit": "Bytes","Dimensions": [{"value": "TestInstance","name": "InstanceId"}],"Period": 60,"EvaluationPeriods": 1,"ComparisonOperator": "GreaterThanThreshold","Threshold": 0.0}}"#;
        let alert = alarm_alert(&AlarmChange::parse(message).unwrap(), 1).unwrap();
        assert_eq!(alert.action, "Open the alarm in the CloudWatch console and read what it watches");
    }
}
