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
