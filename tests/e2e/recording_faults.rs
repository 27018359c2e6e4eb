//! A delivery whose recording fails half-way (the table refuses a write, as IAM or a
//! throttled partition would) gives its claim back, and the sender's retry is recorded in
//! full: nothing is lost, nothing is half-applied for good.

use std::sync::Arc;

use bytes::Bytes;
use conveyor_e2e::{Fault, FaultProxy, Quiet, SECRET, STRIPE_SECRET, sample};
use conveyor_shared::http::HttpFunction;
use conveyor_shared::secret::SecretSet;
use conveyor_shared::signature::{sign_github, sign_stripe};
use conveyor_shared::store::{Key, Table};
use serde_json::{Value, json};

const CONFIG: &str = "[[environment]]\nname = \"production\"\nbranch = \"main\"\nrepository = \"acme/shop\"\n";

/// The table as `function` reaches it with its own role, through `proxy`.
async fn table_behind(proxy: &FaultProxy, quiet: &Quiet, function: &str) -> Table {
    let sdk = conveyor_e2e::function_sdk(function, quiet.table.name(), &quiet.config, &proxy.url()).await;
    Table::from_sdk(&sdk, quiet.table.name())
}

async fn send(function: &dyn HttpFunction, path: &str, headers: &[(&str, String)], body: &[u8]) -> (u16, Value) {
    let mut request = http::Request::post(path);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = function.respond(request.body(Bytes::copy_from_slice(body)).unwrap()).await;
    (response.status().as_u16(), serde_json::from_slice(response.body()).unwrap_or_default())
}

#[tokio::test]
async fn a_github_delivery_whose_build_write_fails_is_given_back_and_its_redelivery_is_recorded_in_full() {
    let quiet = Quiet::new(CONFIG).await;
    // The build's write is refused once, after the delivery was claimed and its commits
    // written.
    let refused =
        |seen: &conveyor_e2e::Seen<'_>| seen.dynamodb_operation() == Some("PutItem") && seen.body_has("BUILD#");
    let proxy = FaultProxy::start(refused, 1, Fault::dynamodb("AccessDeniedException", "not authorized")).await;
    let intake = webhook_intake::Intake::new(
        table_behind(&proxy, &quiet, webhook_intake::REGISTRATION.name).await,
        SecretSet::from_comma_separated(SECRET).unwrap(),
        Arc::new(quiet.config.clone()),
        quiet.bucket.clone(),
    );
    let body = sample("github/workflow_run/ci-success-main.json");
    let headers = [
        ("content-type", "application/json".to_string()),
        ("x-github-event", "workflow_run".into()),
        ("x-github-delivery", "fault-1".into()),
        ("x-github-hook-id", "4242".into()),
        ("x-hub-signature-256", sign_github(SECRET.as_bytes(), &body)),
    ];

    let (status, answer) = send(&intake, "/webhooks/github", &headers, &body).await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(proxy.faulted(), 1);
    assert!(
        quiet.table.read(Key::delivery("4242", "fault-1"), true).await.unwrap().is_none(),
        "the claim was given back"
    );
    assert!(quiet.table.recent_builds(10).await.unwrap().is_empty());

    // GitHub's redelivery (same GUID) is processed in full, not called a duplicate.
    let (status, answer) = send(&intake, "/webhooks/github", &headers, &body).await;
    assert_eq!((status, &answer["duplicate"]), (200, &json!(false)), "{answer}");
    assert_eq!(answer["deployments"][0]["environment"], "production", "{answer}");
    assert_eq!(quiet.table.recent_builds(10).await.unwrap().len(), 1);
    assert_eq!(quiet.table.recent_deployments("production", 10).await.unwrap().len(), 1);
    let (status, answer) = send(&intake, "/webhooks/github", &headers, &body).await;
    assert_eq!((status, &answer["duplicate"]), (200, &json!(true)), "{answer}");
}

#[tokio::test]
async fn a_stripe_event_whose_subscription_write_fails_is_given_back_and_its_retry_is_applied() {
    let quiet = Quiet::new(CONFIG).await;
    let refused =
        |seen: &conveyor_e2e::Seen<'_>| seen.body_has("SUBSCRIPTION#") && seen.dynamodb_operation() != Some("Query");
    let proxy = FaultProxy::start(refused, 1, Fault::dynamodb("AccessDeniedException", "not authorized")).await;
    let stripe = stripe_webhook::StripeWebhook::new(
        table_behind(&proxy, &quiet, stripe_webhook::REGISTRATION.name).await,
        SecretSet::from_comma_separated(STRIPE_SECRET).unwrap(),
        300,
    );
    let body = json!({
        "id": "evt_fault", "object": "event", "api_version": "2025-03-31.basil", "created": 100, "livemode": false,
        "type": "customer.subscription.created",
        "data": {"object": {"id": "sub_fault", "object": "subscription", "customer": "cus_fault", "status": "active",
                            "cancel_at_period_end": false,
                            "items": {"object": "list", "data": [{"object": "subscription_item",
                                      "price": {"id": "price_basic", "product": "prod_1"}, "current_period_end": 1_800_000_000}]}}}
    })
    .to_string()
    .into_bytes();
    let signed = || {
        let signature = sign_stripe(STRIPE_SECRET.as_bytes(), conveyor_shared::unix_now(), &body);
        [("content-type", "application/json".to_string()), ("stripe-signature", signature)]
    };

    let (status, answer) = send(&stripe, "/webhooks/stripe", &signed(), &body).await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(proxy.faulted(), 1);
    assert!(
        quiet.table.read(Key::stripe_event("evt_fault"), true).await.unwrap().is_none(),
        "the claim was given back"
    );

    // Stripe retries: applied in full.
    let (status, answer) = send(&stripe, "/webhooks/stripe", &signed(), &body).await;
    assert_eq!((status, &answer["duplicate"]), (200, &json!(false)), "{answer}");
    let subscriptions = quiet.table.customer_subscriptions("cus_fault").await.unwrap();
    assert_eq!(subscriptions.len(), 1, "{subscriptions:?}");
    assert_eq!(subscriptions[0].status.as_deref(), Some("active"), "{subscriptions:?}");
}

#[tokio::test]
async fn a_webhook_secret_rotated_in_secrets_manager_loses_no_delivery() {
    use conveyor_shared::config::SecretSource;
    let quiet = Quiet::new(CONFIG).await;
    let name = conveyor_e2e::unique_name("github-webhook-secret");
    let manager = aws_sdk_secretsmanager::Client::new(&quiet.sdk);
    let created = manager.create_secret().name(&name).secret_string("old-secret").send().await.unwrap();
    // The function's role may read exactly this secret, as the template's parameter names it.
    let resources = conveyor_e2e::resources(quiet.table.name(), &quiet.config)
        .with("GitHubWebhookSecretArn", created.arn().unwrap());
    // Every read of the secret goes through a proxy that counts them.
    let reads = |seen: &conveyor_e2e::Seen<'_>| {
        seen.headers.get("x-amz-target").is_some_and(|t| t.as_bytes() == b"secretsmanager.GetSecretValue")
    };
    let proxy = FaultProxy::start(reads, 0, Fault::unavailable()).await;
    let function = webhook_intake::REGISTRATION.name;
    let proxied = conveyor_e2e::function_sdk_with(function, &resources, &proxy.url()).await;
    let secrets =
        conveyor_shared::secrets::KeyRing::load(&SecretSource::SecretsManager(name.clone()), &proxied).await.unwrap();
    let own = conveyor_e2e::function_sdk_with(function, &resources, &conveyor_e2e::endpoint()).await;
    let intake = webhook_intake::Intake::new(
        Table::from_sdk(&own, quiet.table.name()),
        secrets,
        Arc::new(quiet.config.clone()),
        quiet.bucket.clone(),
    );
    let body = br#"{"zen": "Keep it logically awesome.", "hook_id": 4242}"#;
    let ping = |secret: &'static str| {
        let headers = [
            ("content-type", "application/json".to_string()),
            ("x-github-event", "ping".into()),
            ("x-github-delivery", "ping".into()),
            ("x-github-hook-id", "4242".into()),
            ("x-hub-signature-256", sign_github(secret.as_bytes(), body)),
        ];
        let intake = intake.clone();
        async move { send(&intake, "/webhooks/github", &headers, body).await.0 }
    };
    assert_eq!(ping("old-secret").await, 200);
    assert_eq!(proxy.calls(), 1, "read once, at start");

    // 1. The new secret is added beside the old one. 2. GitHub is switched to it: its first
    // delivery matches none of the secrets read at start, which are read again at once.
    manager.put_secret_value().secret_id(&name).secret_string("old-secret,new-secret").send().await.unwrap();
    assert_eq!(ping("new-secret").await, 200, "no delivery lost in the switch");
    assert_eq!(proxy.calls(), 2);
    // 3. The old secret is removed; the new one goes on working.
    manager.put_secret_value().secret_id(&name).secret_string("new-secret").send().await.unwrap();
    assert_eq!(ping("new-secret").await, 200);

    // Bad signatures never match, and cost at most one read per 10 seconds between them.
    for _ in 0..5 {
        assert_eq!(ping("wrong-secret").await, 401);
    }
    assert!(proxy.calls() <= 3, "{} reads", proxy.calls());
}
