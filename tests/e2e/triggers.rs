//! The dev server plays the template's non-HTTP triggers: stream mappings with filters and
//! schedules.

use std::sync::Arc;
use std::time::Duration;

use conveyor_e2e::{TestApp, sample};
use conveyor_shared::http::BoxFuture;
use conveyor_shared::registration::{Function, Registration};
use conveyor_shared::triggers::{ScheduledEvent, ScheduledFunction, StreamFunction, StreamRecord};
use serde_json::Value;
use tokio::sync::mpsc;

/// Stands for a later function that reacts to new deployments.
struct NewDeployments(mpsc::UnboundedSender<Value>);

const NEW_DEPLOYMENTS: Registration = Registration {
    name: "new-deployments",
    routes: &[],
    stream_filters: &[
        r#"{"eventName": ["INSERT"], "dynamodb": {"NewImage": {"sk": {"S": [{"prefix": "DEPLOYMENT#"}]}}}}"#,
    ],
    schedule: None,
    permissions: &[],
};

impl Function for NewDeployments {
    fn registration(&self) -> &'static Registration {
        &NEW_DEPLOYMENTS
    }
}

impl StreamFunction for NewDeployments {
    fn handle_record<'a>(&'a self, record: &'a StreamRecord) -> BoxFuture<'a, Result<(), String>> {
        let _ = self.0.send(serde_json::to_value(record).unwrap_or_default());
        Box::pin(async { Ok(()) })
    }
}

struct Ticks(mpsc::UnboundedSender<Value>);

const TICKS: Registration =
    Registration { name: "ticks", routes: &[], stream_filters: &[], schedule: None, permissions: &[] };

impl Function for Ticks {
    fn registration(&self) -> &'static Registration {
        &TICKS
    }
}

impl ScheduledFunction for Ticks {
    fn every(&self) -> Duration {
        Duration::from_millis(50)
    }
    fn tick<'a>(&'a self, event: &'a ScheduledEvent) -> BoxFuture<'a, Result<(), String>> {
        let _ = self.0.send(serde_json::to_value(event).unwrap_or_default());
        Box::pin(async { Ok(()) })
    }
}

#[tokio::test]
async fn stream_functions_get_only_the_records_their_filter_matches() {
    let (sender, mut received) = mpsc::unbounded_channel();
    let app = TestApp::spawn_with(
        "[[environment]]\nname = \"production\"\nbranch = \"main\"\nrepository = \"*\"\n",
        |catalog| {
            catalog.streams.push(Arc::new(NewDeployments(sender)));
        },
    )
    .await;
    // A push (delivery, commits, push items) and a CI success (build, deployment).
    app.deliver("push", "t-1", &sample("github/push/main.json")).await;
    app.deliver("workflow_run", "t-2", &sample("github/workflow_run/ci-success-main.json")).await;

    let record = tokio::time::timeout(Duration::from_secs(20), received.recv())
        .await
        .expect("the deployment's INSERT reaches the stream function")
        .unwrap();
    assert_eq!(record["eventName"], "INSERT");
    assert_eq!(record["eventSource"], "aws:dynamodb");
    assert_eq!(record["dynamodb"]["NewImage"]["state"]["S"], "pending");
    assert_eq!(record["dynamodb"]["NewImage"]["environment"]["S"], "production");
    // Nothing else (the delivery, commits, push, build) passes the filter.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(received.try_recv().is_err(), "only the deployment matched");
}

#[tokio::test]
async fn scheduled_functions_get_eventbridge_events_on_their_rate() {
    let (sender, mut received) = mpsc::unbounded_channel();
    let _app = TestApp::spawn_with("", |catalog| catalog.schedules.push(Arc::new(Ticks(sender)))).await;
    for _ in 0..3 {
        let event = tokio::time::timeout(Duration::from_secs(5), received.recv()).await.expect("a tick").unwrap();
        assert_eq!(event["detail-type"], "Scheduled Event");
        assert_eq!(event["source"], "aws.events");
    }
}
