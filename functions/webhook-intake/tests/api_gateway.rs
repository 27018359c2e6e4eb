//! The intake behind API Gateway: a recorded-shape HTTP API (payload 2.0) event goes through
//! `lambda_http`'s parser and the shared bridge, exactly as in Lambda. Only `ping` is sent,
//! which writes nothing, so no table is needed.

use std::sync::Arc;

use conveyor_shared::config::Config;
use conveyor_shared::http::HttpFunction;
use conveyor_shared::lambda::into_request;
use conveyor_shared::secret::SecretSet;
use conveyor_shared::signature::sign_github;
use conveyor_shared::store::Table;
use webhook_intake::Intake;

const SECRET: &str = "api-gateway-test-secret";

fn intake() -> Intake {
    // No request is sent: building a client needs no network.
    let sdk =
        conveyor_shared::SdkConfig::builder().behavior_version(conveyor_shared::BehaviorVersion::latest()).build();
    Intake::new(
        Table::from_sdk(&sdk, "unused"),
        SecretSet::from_comma_separated(SECRET).unwrap(),
        Arc::new(Config::default()),
        "artifacts",
    )
}

fn event(content_type: &str, body: &str, is_base64: bool, signature: &str) -> String {
    serde_json::json!({
        "version": "2.0",
        "routeKey": "POST /webhooks/github",
        "rawPath": "/webhooks/github",
        "rawQueryString": "",
        "headers": {
            "content-type": content_type,
            "user-agent": "GitHub-Hookshot/044aadd",
            "x-github-event": "ping",
            "x-github-delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
            "x-github-hook-id": "42",
            "x-hub-signature-256": signature
        },
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc123",
            "domainName": "abc123.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": "abc123",
            "http": {
                "method": "POST",
                "path": "/webhooks/github",
                "protocol": "HTTP/1.1",
                "sourceIp": "192.0.2.1",
                "userAgent": "GitHub-Hookshot/044aadd"
            },
            "requestId": "JKJaXmPLvHcESHA=",
            "routeKey": "POST /webhooks/github",
            "stage": "$default",
            "time": "22/Nov/2026:00:00:00 +0000",
            "timeEpoch": 1795305600000u64
        },
        "body": body,
        "isBase64Encoded": is_base64
    })
    .to_string()
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

async fn send(event: &str) -> (u16, serde_json::Value) {
    let request = lambda_http::request::from_str(event).expect("a valid API Gateway event");
    let response = intake().respond(into_request(request)).await;
    let status = response.status().as_u16();
    (status, serde_json::from_slice(response.body()).unwrap_or_default())
}

const PING: &str = r#"{"zen":"Design for failure.","hook_id":42}"#;

#[tokio::test]
async fn a_base64_body_is_verified_after_decoding() {
    let signature = sign_github(SECRET.as_bytes(), PING.as_bytes());
    let (status, body) = send(&event("application/json", &base64(PING.as_bytes()), true, &signature)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["zen"], "Design for failure.");
}

#[tokio::test]
async fn a_signature_over_the_base64_text_is_refused() {
    let encoded = base64(PING.as_bytes());
    let signature = sign_github(SECRET.as_bytes(), encoded.as_bytes());
    let (status, body) = send(&event("application/json", &encoded, true, &signature)).await;
    assert_eq!(status, 401, "{body}");
}

#[tokio::test]
async fn a_plain_text_body_and_a_form_body_are_accepted() {
    let signature = sign_github(SECRET.as_bytes(), PING.as_bytes());
    let (status, _) = send(&event("application/json", PING, false, &signature)).await;
    assert_eq!(status, 200);

    let form = "payload=%7B%22zen%22%3A%22Design+for+failure.%22%7D";
    let signature = sign_github(SECRET.as_bytes(), form.as_bytes());
    let (status, body) =
        send(&event("application/x-www-form-urlencoded", &base64(form.as_bytes()), true, &signature)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["zen"], "Design for failure.");
}
