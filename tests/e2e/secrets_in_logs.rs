//! No secret in any log. One run through every function's paths, good and bad (signatures
//! that match and that do not, tokens that are valid and guessed, a Slack hook that asks
//! to slow down and then takes the message, a webhook channel that cannot be reached), with every log line captured as Lambda writes it (JSON, Conveyor's crates at
//! debug, the rest at info); none holds a secret the run used.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conveyor_e2e::slack::SlackStandIn;
use conveyor_e2e::{SECRET, STRIPE_SECRET, TestApp, sample, store_secret};
use conveyor_shared::signature::sign_github;
use serde_json::json;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut all) = self.0.lock() {
            all.extend_from_slice(bytes);
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        self.0.lock().map(|all| String::from_utf8_lossy(&all).into_owned()).unwrap_or_default()
    }
}

const CRATES: &[&str] = &[
    "conveyor_shared",
    "conveyor_cli",
    "webhook_intake",
    "stripe_webhook",
    "manifest_ingest",
    "ledger_api",
    "deploy_fanout",
    "cdn_invalidate",
    "alert_dispatch",
];

#[tokio::test]
async fn no_log_line_of_a_run_good_and_bad_holds_a_secret() {
    let captured = Captured::default();
    let filter =
        std::iter::once("info".to_owned()).chain(CRATES.iter().map(|c| format!("{c}=debug"))).collect::<Vec<_>>();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter.join(",")))
        .with_writer(move || writer.clone())
        .finish();
    assert!(
        tracing::subscriber::set_global_default(subscriber).is_ok(),
        "this test owns its process's logs: run it under nextest (`make test`)"
    );

    let slack = SlackStandIn::start().await;
    let hook_key = "whk_signing_key_that_must_not_leak";
    let hook_secret = store_secret("conveyor/hook", hook_key).await;
    let config = format!(
        "{}[[channel]]\nname = \"hook\"\ntype = \"webhook\"\nurl = \"http://127.0.0.1:9/unreachable\"\nsecret = \"{hook_secret}\"\n\n[[environment]]\nname = \"production\"\nbranch = \"main\"\nrepository = \"*\"\n\n[[provider]]\nname = \"aws\"\n",
        slack.channel("team").await
    );
    let app = TestApp::spawn(&config).await;
    slack.fail_next(&[429]);

    // GitHub: a CI failure (an alert to both channels), then a forged delivery.
    let failure = sample("github/workflow_run/ci-failure-main.json");
    assert_eq!(app.deliver("workflow_run", "logs-1", &failure).await.status, 200);
    let forged = app
        .request(
            "POST",
            "/webhooks/github",
            &[
                ("content-type", "application/json"),
                ("x-github-event", "push"),
                ("x-github-delivery", "logs-2"),
                ("x-hub-signature-256", &sign_github(b"a-guess", &failure)),
            ],
            failure.clone(),
        )
        .await;
    assert_eq!(forged.status, 401);

    // Stripe: a failed payment (an alert), then a signature made with another secret.
    let payment = json!({"id": "evt_logs", "object": "event", "api_version": "2025-03-31.basil", "created": 100,
        "livemode": false, "type": "invoice.payment_failed", "data": {"object": {"id": "in_1", "object": "invoice",
        "customer": "cus_logs", "status": "open", "attempt_count": 1, "last_finalization_error": null,
        "parent": {"subscription_details": {"subscription": "sub_logs"}}}}})
    .to_string();
    assert_eq!(app.deliver_stripe(payment.as_bytes(), 0).await.status, 200);
    let signature =
        conveyor_shared::signature::sign_stripe(b"whsec_wrong", conveyor_shared::unix_now(), payment.as_bytes());
    let refused = app
        .request("POST", "/webhooks/stripe", &[("stripe-signature", &signature)], payment.clone().into_bytes())
        .await;
    assert_eq!(refused.status, 401);

    // Manifests: the provider's token, then one nobody issued.
    let token = app.provider_token("aws").await;
    let manifest = json!({"builds": [{"name": "web", "builder_type": "amazon-ebs", "build_time": 1,
        "artifact_id": "us-east-1:ami-12345678", "packer_run_uuid": "r1", "custom_data": null}], "last_run_uuid": "r1"});
    assert_eq!(app.upload_manifest("aws", &token, "", manifest.to_string().as_bytes()).await.status, 200);
    let guessed = format!("{}x", &token[..token.len() - 1]);
    assert_eq!(app.upload_manifest("aws", &guessed, "", manifest.to_string().as_bytes()).await.status, 401);

    // The agent channel: the environment's token, then a wrong one.
    let agent = conveyor_cli::ops::create_environment_token(&app.table, &app.config, "production", None).await.unwrap();
    let agent = String::from_utf8(agent.expose().to_vec()).unwrap();
    let poll = json!({"instance_id": "i-0123456789abcdef0", "environment": "production", "current": null}).to_string();
    for bearer in [agent.clone(), format!("{agent}0")] {
        let authorization = format!("Bearer {bearer}");
        app.request("POST", "/agent/v1/poll", &[("authorization", &authorization)], poll.clone()).await;
    }

    // alert-dispatch runs every second in the dev server: Slack asks it to slow down with
    // the first alert and takes the second; the webhook channel is never reached.
    for _ in 0..60 {
        if !slack.texts().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let logs = captured.text();
    let warnings: Vec<&str> = logs.lines().filter(|l| l.contains("\"WARN\"") || l.contains("\"ERROR\"")).collect();
    assert_eq!(slack.texts().len(), 1, "{:?}; the run's warnings: {warnings:?}", slack.texts());
    assert!(warnings.len() >= 3, "the failure paths were logged: {warnings:?}");

    assert!(logs.lines().count() > 10, "the run was logged: {logs}");
    let aws_key = std::env::var("AWS_SECRET_ACCESS_KEY").unwrap();
    let slack_url = slack.url();
    let slack_path = slack_url.split_once("/services/").map_or(slack_url.as_str(), |(_, path)| path);
    for (what, secret) in [
        ("the GitHub webhook secret", SECRET),
        ("the Stripe endpoint secret", STRIPE_SECRET),
        ("the Slack hook's URL", slack_path),
        ("the webhook channel's signing key", hook_key),
        ("the provider token", token.as_str()),
        ("the environment token", agent.as_str()),
        ("the emulator's secret access key", aws_key.as_str()),
    ] {
        assert!(!secret.is_empty());
        let found: Vec<&str> = logs.lines().filter(|line| line.contains(secret)).collect();
        assert!(found.is_empty(), "{what} is in the logs: {found:?}");
    }
}
