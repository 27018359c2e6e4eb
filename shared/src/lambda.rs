//! Runs an [`HttpFunction`] in AWS Lambda behind an API Gateway HTTP API.

use bytes::Bytes;
use lambda_http::{Body, service_fn};

use crate::http::{HttpFunction, Request};

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

/// Serves `function` until the Lambda runtime stops the process.
pub async fn serve<F: HttpFunction + 'static>(function: F) -> Result<(), lambda_http::Error> {
    let function = &function;
    lambda_http::run(service_fn(move |request: lambda_http::Request| async move {
        let response = function.handle(into_request(request)).await;
        let (parts, body) = response.into_parts();
        // JSON goes back as text; anything else as binary (API Gateway base64-encodes it).
        let body = match String::from_utf8(body.to_vec()) {
            Ok(text) => Body::Text(text),
            Err(err) => Body::Binary(err.into_bytes()),
        };
        Ok::<_, std::convert::Infallible>(lambda_http::Response::from_parts(parts, body))
    }))
    .await
}

/// Runs a function that several triggers invoke (API Gateway, a table stream, a schedule),
/// telling them apart by the event's shape. A stream batch that fails is answered with an
/// error, so Lambda retries it.
pub async fn serve_triggers<F>(function: F) -> Result<(), lambda_http::Error>
where
    F: HttpFunction + crate::triggers::StreamFunction + crate::triggers::ScheduledFunction + 'static,
{
    use lambda_http::lambda_runtime::{self, LambdaEvent};
    use serde_json::{Value, json};

    let function = &function;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let payload = event.payload;
        if payload.get("requestContext").is_some() {
            let request = lambda_http::request::from_str(&payload.to_string())?;
            let response = HttpFunction::handle(function, into_request(request)).await;
            let (parts, body) = response.into_parts();
            let headers: serde_json::Map<String, Value> = parts
                .headers
                .iter()
                .filter_map(|(name, value)| Some((name.to_string(), Value::from(value.to_str().ok()?))))
                .collect();
            return Ok::<Value, lambda_http::Error>(json!({
                "statusCode": parts.status.as_u16(),
                "headers": headers,
                "body": String::from_utf8_lossy(&body),
                "isBase64Encoded": false,
            }));
        }
        if payload["Records"].as_array().is_some_and(|r| r.iter().all(|r| r["eventSource"] == "aws:dynamodb")) {
            crate::triggers::StreamFunction::handle(function, payload).await?;
            return Ok(Value::Null);
        }
        if payload["source"] == "aws.events" {
            crate::triggers::ScheduledFunction::tick(function, payload).await?;
            return Ok(Value::Null);
        }
        Err("an event of a kind this function does not take".into())
    }))
    .await
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

    #[test]
    fn a_function_url_request_reaches_the_handler_as_sent() {
        let request = into_request(lambda_http::request::from_str(FUNCTION_URL_EVENT).unwrap());
        assert_eq!((request.method().as_str(), request.uri().path()), ("POST", "/agent/v1/poll"));
        assert_eq!(crate::http::header(&request, "x-conveyor-agent-credential"), Some("kept-by-the-agent"));
        assert_eq!(request.body().as_ref(), br#"{"instance_id": "i-0123456789abcdef0"}"#);
    }
}
