//! The Lambda entry point every function's `main` calls: it serves what the function's
//! registration declares (HTTP routes, a table stream, a schedule), telling the invoking
//! service apart by the event's shape.

use bytes::Bytes;
use lambda_http::lambda_runtime::{self, LambdaEvent};
use lambda_http::{Body, service_fn};
use serde_json::{Value, json};

use crate::http::{HttpFunction, Request};
use crate::triggers::{
    NotificationEvent, NotificationFunction, ScheduledEvent, ScheduledFunction, StreamEvent, StreamFunction,
    handle_batch,
};

/// What one function serves; a function with only a schedule, or only a stream, has no HTTP
/// part.
#[derive(Clone, Copy, Default)]
pub struct Capabilities<'f> {
    pub http: Option<&'f dyn HttpFunction>,
    pub stream: Option<&'f dyn StreamFunction>,
    pub schedule: Option<&'f dyn ScheduledFunction>,
    pub notifications: Option<&'f dyn NotificationFunction>,
}

impl<'f> Capabilities<'f> {
    pub fn http(function: &'f dyn HttpFunction) -> Self {
        Self { http: Some(function), ..Self::default() }
    }

    pub fn with_stream(self, function: &'f dyn StreamFunction) -> Self {
        Self { stream: Some(function), ..self }
    }

    pub fn with_schedule(self, function: &'f dyn ScheduledFunction) -> Self {
        Self { schedule: Some(function), ..self }
    }

    pub fn with_notifications(self, function: &'f dyn NotificationFunction) -> Self {
        Self { notifications: Some(function), ..self }
    }
}

/// Why an invocation was not handled. Lambda records the error and, for a stream batch,
/// retries it.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("a {0} event, which this function does not take")]
    NotServed(&'static str),
    #[error("an event of a kind this function does not take (keys: {0})")]
    Unknown(String),
    #[error("malformed {kind} event: {source}")]
    Malformed { kind: &'static str, source: Box<dyn std::error::Error + Send + Sync> },
    #[error("the scheduled run failed: {0}")]
    Scheduled(String),
    #[error("an SNS message failed: {0}")]
    Notification(String),
}

/// Handles one invocation: an API Gateway HTTP API or function URL request (payload
/// format 2.0), a DynamoDB stream batch (answered with its `batchItemFailures`), an
/// EventBridge scheduled event, or an SNS delivery.
pub async fn dispatch(capabilities: Capabilities<'_>, payload: Value) -> Result<Value, DispatchError> {
    if payload.get("requestContext").is_some() {
        let function = capabilities.http.ok_or(DispatchError::NotServed("HTTP"))?;
        let request = lambda_http::request::from_str(&payload.to_string())
            .map_err(|e| DispatchError::Malformed { kind: "HTTP", source: Box::new(e) })?;
        return Ok(http_response(function.respond(into_request(request)).await));
    }
    if NotificationEvent::is_notification(&payload) {
        let function = capabilities.notifications.ok_or(DispatchError::NotServed("SNS"))?;
        let event: NotificationEvent = serde_json::from_value(payload)
            .map_err(|e| DispatchError::Malformed { kind: "SNS", source: Box::new(e) })?;
        for record in &event.records {
            function.handle_notification(&record.sns).await.map_err(DispatchError::Notification)?;
        }
        return Ok(Value::Null);
    }
    if payload.get("Records").is_some() {
        let function = capabilities.stream.ok_or(DispatchError::NotServed("stream"))?;
        let event: StreamEvent = serde_json::from_value(payload)
            .map_err(|e| DispatchError::Malformed { kind: "DynamoDB stream", source: Box::new(e) })?;
        let response = handle_batch(function, &event).await;
        return serde_json::to_value(response)
            .map_err(|e| DispatchError::Malformed { kind: "batch response", source: Box::new(e) });
    }
    if payload.get("source").and_then(Value::as_str) == Some(ScheduledEvent::SOURCE) {
        let function = capabilities.schedule.ok_or(DispatchError::NotServed("scheduled"))?;
        let event: ScheduledEvent = serde_json::from_value(payload)
            .map_err(|e| DispatchError::Malformed { kind: "scheduled", source: Box::new(e) })?;
        function.tick(&event).await.map_err(DispatchError::Scheduled)?;
        return Ok(Value::Null);
    }
    let keys = payload.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>().join(", ")).unwrap_or_default();
    Err(DispatchError::Unknown(keys))
}

/// Serves `capabilities` until the Lambda runtime stops the process.
pub async fn serve(capabilities: Capabilities<'_>) -> Result<(), lambda_http::Error> {
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        dispatch(capabilities, event.payload).await.map_err(lambda_http::Error::from)
    }))
    .await
}

/// Converts API Gateway's request into the shared request. `lambda_http` has already
/// base64-decoded the body when the event said `isBase64Encoded`, so signatures are checked
/// over the bytes the sender signed.
pub fn into_request(request: lambda_http::Request) -> Request {
    let (parts, body) = request.into_parts();
    let bytes = match body {
        Body::Empty => Bytes::new(),
        Body::Text(text) => Bytes::from(text),
        Body::Binary(binary) => Bytes::from(binary),
        _ => Bytes::new(),
    };
    http::Request::from_parts(parts, bytes)
}

/// The response in payload format 2.0: JSON and other text as text, anything else
/// base64-encoded (API Gateway and function URLs decode it).
fn http_response(response: crate::http::Response) -> Value {
    let (parts, body) = response.into_parts();
    let mut headers = serde_json::Map::new();
    for name in parts.headers.keys() {
        let values: Vec<&str> = parts.headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
        headers.insert(name.to_string(), Value::from(values.join(", ")));
    }
    let (body, encoded) = match std::str::from_utf8(&body) {
        Ok(text) => (text.to_owned(), false),
        Err(_) => (aws_smithy_types::base64::encode(&body), true),
    };
    json!({"statusCode": parts.status.as_u16(), "headers": headers, "body": body, "isBase64Encoded": encoded})
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Lambda function URL request (payload format 2.0, as AWS documents it): the agent
    /// channel's way in.
    const FUNCTION_URL_EVENT: &str = r#"{
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": "/agent/v1/poll",
        "rawQueryString": "",
        "headers": {
            "content-type": "application/json",
            "host": "abcdefghij.lambda-url.eu-west-1.on.aws",
            "x-conveyor-agent-credential": "kept-by-the-agent"
        },
        "requestContext": {
            "accountId": "anonymous",
            "apiId": "abcdefghij",
            "domainName": "abcdefghij.lambda-url.eu-west-1.on.aws",
            "domainPrefix": "abcdefghij",
            "http": {
                "method": "POST",
                "path": "/agent/v1/poll",
                "protocol": "HTTP/1.1",
                "sourceIp": "203.0.113.7",
                "userAgent": "conveyor-agent"
            },
            "requestId": "8b1f3f0e-0000-4000-8000-000000000000",
            "routeKey": "$default",
            "stage": "$default",
            "time": "22/Nov/2026:21:00:00 +0000",
            "timeEpoch": 1795381200000
        },
        "body": "{\"instance_id\": \"i-0123456789abcdef0\"}",
        "isBase64Encoded": false
    }"#;

    use std::sync::Mutex;
    use std::time::Duration;

    use crate::http::{BoxFuture, Response, Route, Routed, StatusCode};
    use crate::registration::{Auth, Function, Registration};
    use crate::triggers::StreamRecord;

    const REGISTRATION: Registration = Registration {
        name: "probe",
        routes: &[Route::new("POST", "/agent/v1/poll", Auth::Function)],
        stream_filters: &[],
        schedule: Some(Duration::from_secs(60)),
        permissions: &[],
    };

    /// Records what reached it; a stream record whose `id` is "bad" fails.
    #[derive(Default)]
    struct Probe {
        seen: Mutex<Vec<String>>,
        tick_fails: bool,
    }

    impl Function for Probe {
        fn registration(&self) -> &'static Registration {
            &REGISTRATION
        }
    }

    impl HttpFunction for Probe {
        fn handle(&self, routed: Routed) -> BoxFuture<'_, Response> {
            self.seen.lock().unwrap().push(format!("http {}", routed.request.uri().path()));
            Box::pin(async { crate::http::json(StatusCode::ACCEPTED, &json!({"ok": true})) })
        }
    }

    impl StreamFunction for Probe {
        fn handle_record<'a>(&'a self, record: &'a StreamRecord) -> BoxFuture<'a, Result<(), String>> {
            let id = match record.change.new_image.get("id") {
                Some(serde_dynamo::AttributeValue::S(id)) => id.clone(),
                _ => "?".into(),
            };
            self.seen.lock().unwrap().push(format!("record {id}"));
            Box::pin(async move { if id == "bad" { Err("cannot".into()) } else { Ok(()) } })
        }
    }

    impl ScheduledFunction for Probe {
        fn tick<'a>(&'a self, event: &'a ScheduledEvent) -> BoxFuture<'a, Result<(), String>> {
            self.seen.lock().unwrap().push(format!("tick {}", event.id));
            Box::pin(async move { if self.tick_fails { Err("the tick failed".into()) } else { Ok(()) } })
        }
    }

    fn all(probe: &Probe) -> Capabilities<'_> {
        Capabilities::http(probe).with_stream(probe).with_schedule(probe)
    }

    /// A stream batch as Lambda delivers it (AWS's documented DynamoDB event).
    fn stream_event(ids: &[&str]) -> Value {
        let records: Vec<Value> = ids
            .iter()
            .enumerate()
            .map(|(n, id)| {
                json!({
                    "eventID": format!("c4ca4238a0b923820dcc509a6f75849{n}"),
                    "eventName": "INSERT",
                    "eventVersion": "1.1",
                    "eventSource": "aws:dynamodb",
                    "awsRegion": "eu-west-1",
                    "dynamodb": {
                        "ApproximateCreationDateTime": 1795381200,
                        "Keys": {"pk": {"S": "ENV#production"}, "sk": {"S": format!("DEPLOYMENT#{id}")}},
                        "NewImage": {"pk": {"S": "ENV#production"}, "sk": {"S": format!("DEPLOYMENT#{id}")}, "id": {"S": id}, "attempt": {"N": "1"}},
                        "SequenceNumber": format!("11100000000000000000000{n}"),
                        "SizeBytes": 59,
                        "StreamViewType": "NEW_AND_OLD_IMAGES"
                    },
                    "eventSourceARN": "arn:aws:dynamodb:eu-west-1:123456789012:table/conveyor/stream/2026-11-22T00:00:00.000"
                })
            })
            .collect();
        json!({"Records": records})
    }

    const SCHEDULED_EVENT: &str = r#"{
        "version": "0",
        "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa",
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "123456789012",
        "time": "2026-11-22T21:00:00Z",
        "region": "eu-west-1",
        "resources": ["arn:aws:events:eu-west-1:123456789012:rule/conveyor-Tick"],
        "detail": {}
    }"#;

    #[tokio::test]
    async fn an_http_request_is_answered_in_payload_format_2() {
        let probe = Probe::default();
        let answer = dispatch(all(&probe), serde_json::from_str(FUNCTION_URL_EVENT).unwrap()).await.unwrap();
        assert_eq!(answer["statusCode"], 202);
        assert_eq!(answer["headers"]["content-type"], "application/json");
        assert_eq!(serde_json::from_str::<Value>(answer["body"].as_str().unwrap()).unwrap(), json!({"ok": true}));
        assert_eq!(answer["isBase64Encoded"], false);
        assert_eq!(*probe.seen.lock().unwrap(), ["http /agent/v1/poll"]);
    }

    #[test]
    fn a_binary_body_goes_back_base64_encoded() {
        let response = http::Response::builder().status(200).body(Bytes::from_static(&[0xff, 0x00, 0x80])).unwrap();
        let answer = http_response(response);
        assert_eq!((answer["body"].as_str(), answer["isBase64Encoded"].as_bool()), (Some("/wCA"), Some(true)));
    }

    #[tokio::test]
    async fn a_stream_batch_reports_the_first_failed_record_and_stops_there() {
        let probe = Probe::default();
        let answer = dispatch(all(&probe), stream_event(&["a", "bad", "c"])).await.unwrap();
        assert_eq!(answer, json!({"batchItemFailures": [{"itemIdentifier": "111000000000000000000001"}]}));
        assert_eq!(*probe.seen.lock().unwrap(), ["record a", "record bad"], "c waits for the retry, in order");
        let clean = Probe::default();
        let answer = dispatch(all(&clean), stream_event(&["a", "b"])).await.unwrap();
        assert_eq!(answer, json!({"batchItemFailures": []}));
        assert_eq!(clean.seen.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_scheduled_event_runs_the_tick_and_its_failure_is_an_error() {
        let probe = Probe::default();
        let event: Value = serde_json::from_str(SCHEDULED_EVENT).unwrap();
        assert_eq!(dispatch(all(&probe), event.clone()).await.unwrap(), Value::Null);
        assert_eq!(*probe.seen.lock().unwrap(), ["tick 53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa"]);
        let failing = Probe { tick_fails: true, ..Probe::default() };
        let err = dispatch(all(&failing), event).await.unwrap_err();
        assert!(err.to_string().contains("the tick failed"), "{err}");
    }

    #[tokio::test]
    async fn events_a_function_does_not_serve_are_refused_without_running_anything() {
        let probe = Probe::default();
        let http_only = Capabilities::http(&probe);
        let err = dispatch(http_only, serde_json::from_str(SCHEDULED_EVENT).unwrap()).await.unwrap_err();
        assert!(matches!(err, DispatchError::NotServed("scheduled")), "{err}");
        let err = dispatch(http_only, stream_event(&["a"])).await.unwrap_err();
        assert!(matches!(err, DispatchError::NotServed("stream")), "{err}");
        let err = dispatch(all(&probe), json!({"Type": "Notification", "Message": "x"})).await.unwrap_err();
        assert!(err.to_string().contains("Type"), "{err}");
        let err = dispatch(all(&probe), json!({"Records": [{"eventSource": "aws:dynamodb"}]})).await.unwrap_err();
        assert!(matches!(err, DispatchError::Malformed { .. }), "{err}");
        assert!(probe.seen.lock().unwrap().is_empty());
    }

    #[test]
    fn a_function_url_request_reaches_the_handler_as_sent() {
        let request = into_request(lambda_http::request::from_str(FUNCTION_URL_EVENT).unwrap());
        assert_eq!((request.method().as_str(), request.uri().path()), ("POST", "/agent/v1/poll"));
        assert_eq!(crate::http::header(&request, "x-conveyor-agent-credential"), Some("kept-by-the-agent"));
        assert_eq!(request.body().as_ref(), br#"{"instance_id": "i-0123456789abcdef0"}"#);
    }
}
