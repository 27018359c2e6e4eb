//! Alert dispatch against local targets the test turns up and down, the Slack stand-in, a
//! local webhook receiver, the emulator's SES and Secrets Manager: one message per
//! transition, reminders, muting, grouping, rate limits and killed invocations.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alert_dispatch::{AlertDispatch, Channels};
use bytes::Bytes;
use conveyor_e2e::slack::SlackStandIn;
use conveyor_e2e::{endpoint, sdk, unique_name};
use conveyor_shared::config::Config;
use conveyor_shared::domain::alert::{Alert, AlertKind, AlertSource, DeliveryState, Severity};
use conveyor_shared::probe::Prober;
use conveyor_shared::store::Table;
use http_body_util::{BodyExt, Full};
use serde_json::Value;

use crate::checks::Target;

/// A table of its own, a Slack channel `team` (its URL in the emulator's Secrets Manager)
/// and the configuration's other sections.
pub(crate) struct Scene {
    pub(crate) table: Table,
    pub(crate) slack: SlackStandIn,
    pub(crate) dispatch: AlertDispatch,
}

async fn secret(value: &str) -> String {
    conveyor_e2e::store_secret("conveyor/channel", value).await
}

impl Scene {
    pub(crate) async fn new(rest: &str) -> Self {
        Self::calling(rest, &endpoint()).await
    }

    /// Like [`Scene::new`], with the function's AWS calls sent to `aws` (a fault proxy).
    pub(crate) async fn calling(rest: &str, aws: &str) -> Self {
        let slack = SlackStandIn::start().await;
        let secret = secret(&slack.url()).await;
        let config = format!("[[channel]]\nname = \"team\"\ntype = \"slack\"\nsecret = \"{secret}\"\n\n{rest}");
        Self::with_at(&config, slack, aws).await
    }

    async fn with(config: &str, slack: SlackStandIn) -> Self {
        Self::with_at(config, slack, &endpoint()).await
    }

    async fn with_at(config: &str, slack: SlackStandIn, aws: &str) -> Self {
        let table = Table::from_sdk(&sdk().await, unique_name("conveyor-alerts"));
        table.create_if_missing().await.unwrap();
        let config = Config::parse(config, "conveyor.toml").unwrap();
        // The function calls AWS with its own role.
        let sdk = conveyor_e2e::function_sdk(alert_dispatch::REGISTRATION.name, table.name(), &config, aws).await;
        let dispatch = AlertDispatch::new(
            Table::from_sdk(&sdk, table.name()),
            Prober::new().unwrap(),
            Channels::new(&sdk).unwrap(),
            conveyor_shared::ec2::Ec2::new(&sdk),
            Arc::new(config),
        );
        Self { table, slack, dispatch }
    }

    async fn run(&self, now: i64) {
        self.dispatch.run(now).await.unwrap();
    }
}

pub(crate) fn check(name: &str, url: &str, extra: &str) -> String {
    format!(
        "[[check]]\nname = \"{name}\"\nurl = \"{url}\"\nconditions = [\"[STATUS] == 200\", \"[BODY].status == UP\"]\ntimeout = \"2s\"\nchannels = [\"team\"]\n{extra}\n"
    )
}

pub(crate) const T0: i64 = 1_800_000_000;

#[tokio::test]
async fn three_failures_give_one_message_and_recovery_one_resolved_message() {
    let target = Target::start().await;
    let scene = Scene::new(&check(
        "api",
        &target.url,
        "failure_threshold = 3\nsuccess_threshold = 2\nrepeat = \"4h\"\naction = \"Restart the API service\"\nimpact = \"Customers cannot sign in\"",
    ))
    .await;
    scene.run(T0).await;
    scene.run(T0 + 60).await;
    let steady = scene.table.check_states().await.unwrap()["api"].version;
    target.answer(503, r#"{"status": "DOWN"}"#);
    for minute in 2..=6 {
        scene.run(T0 + minute * 60).await;
    }
    let texts = scene.slack.texts();
    assert_eq!(texts.len(), 1, "exactly one message for three failures and more: {texts:?}");
    let down = &scene.slack.accepted()[0];
    let text = down["text"].as_str().unwrap();
    for part in [
        "[critical] Check api is down",
        "Cause: [STATUS] == 200 (was 503); [BODY].status == UP (was DOWN)",
        "Impact: Customers cannot sign in",
        "Action: Restart the API service",
        "Since: 2027-01-15T08:02:00Z",
    ] {
        assert!(text.contains(part), "`{part}` missing from {text}");
    }
    assert_eq!(down["blocks"][0]["type"], "header");
    target.answer(200, r#"{"status": "UP"}"#);
    for minute in 7..=9 {
        scene.run(T0 + minute * 60).await;
    }
    let texts = scene.slack.texts();
    assert_eq!(texts.len(), 2, "{texts:?}");
    assert!(texts[1].contains("Check api back up after 6m"), "{}", texts[1]);
    let incidents = scene.table.incidents("api", 10).await.unwrap();
    assert_eq!(incidents.len(), 1);
    assert_eq!((incidents[0].since, incidents[0].resolved_at), (T0 + 120, Some(T0 + 480)));
    // Up and steady: nothing is written from run to run.
    let before = scene.table.check_states().await.unwrap()["api"].version;
    scene.run(T0 + 600).await;
    scene.run(T0 + 660).await;
    assert_eq!(scene.table.check_states().await.unwrap()["api"].version, before);
    assert!(before > steady);
    assert!(scene.table.outbox().await.unwrap().is_empty(), "both messages delivered");
}

#[tokio::test]
async fn a_long_outage_reminds_at_the_interval() {
    let target = Target::start().await;
    target.answer(500, r#"{"status": "DOWN"}"#);
    let scene = Scene::new(&check("api", &target.url, "failure_threshold = 1\nrepeat = \"10m\"")).await;
    for minute in 0..=25 {
        scene.run(T0 + minute * 60).await;
    }
    let texts = scene.slack.texts();
    assert_eq!(texts.len(), 3, "down at 0, reminders at 10 and 20 minutes: {texts:?}");
    assert!(texts[1].contains("[warning] Check api still down after 10m"), "{}", texts[1]);
    assert!(texts[2].contains("still down after 20m"), "{}", texts[2]);
}

#[tokio::test]
async fn a_down_parent_mutes_its_children() {
    let edge = Target::start().await;
    let api = Target::start().await;
    let scene = Scene::new(&format!(
        "{}{}",
        check("edge", &edge.url, "failure_threshold = 1"),
        check("api", &api.url, "failure_threshold = 1\ndepends_on = [\"edge\"]")
    ))
    .await;
    edge.answer(503, r#"{"status": "DOWN"}"#);
    api.answer(503, r#"{"status": "DOWN"}"#);
    scene.run(T0).await;
    scene.run(T0 + 60).await;
    let texts = scene.slack.texts();
    assert_eq!(texts.len(), 1, "{texts:?}");
    assert!(texts[0].contains("Check edge is down"));
}

#[tokio::test]
async fn checks_of_a_group_failing_together_give_one_message() {
    let a = Target::start().await;
    let b = Target::start().await;
    let scene = Scene::new(&format!(
        "{}{}",
        check("web-a", &a.url, "failure_threshold = 1\ngroup = \"web\""),
        check("web-b", &b.url, "failure_threshold = 1\ngroup = \"web\"")
    ))
    .await;
    a.answer(503, r#"{"status": "DOWN"}"#);
    b.answer(502, r#"{"status": "DOWN"}"#);
    scene.run(T0).await;
    let texts = scene.slack.texts();
    assert_eq!(texts.len(), 1, "{texts:?}");
    assert!(texts[0].contains("2 checks of group web (web-a, web-b) are down"), "{}", texts[0]);
    assert!(
        texts[0].contains("web-a: [STATUS] == 200 (was 503)") && texts[0].contains("web-b: [STATUS] == 200 (was 502)")
    );
}

fn payment_alert(id: &str) -> Alert {
    Alert::new(AlertSource::Stripe, id, AlertKind::PaymentFailed, Severity::Warning, T0)
        .summary(format!("Payment failed for {id}"))
        .cause("card_declined")
        .impact("the subscription is past due")
        .action("Ask the customer to update their card")
}

#[tokio::test]
async fn a_rate_limit_delays_messages_but_loses_none() {
    let scene = Scene::new("").await;
    for id in ["evt_1", "evt_2", "evt_3"] {
        scene.table.record_alert(&payment_alert(id)).await.unwrap();
    }
    scene.run(T0).await;
    let texts = scene.slack.texts();
    assert_eq!(texts.len(), 3, "{texts:?}");
    assert!(scene.slack.rate_limited() > 0, "the stand-in takes one message a second");
    for id in ["evt_1", "evt_2", "evt_3"] {
        assert_eq!(texts.iter().filter(|t| t.contains(&format!("Payment failed for {id}"))).count(), 1);
        let alert = scene.table.alert("stripe", id).await.unwrap().unwrap();
        assert_eq!(alert.delivery, DeliveryState::Delivered);
    }
    scene.run(T0 + 60).await;
    assert_eq!(scene.slack.texts().len(), 3, "nothing is sent twice");
}

#[tokio::test]
async fn a_channel_that_stays_down_keeps_the_message_for_a_later_run() {
    let scene = Scene::new("").await;
    scene.slack.fail_next(&[500, 503, 502]);
    scene.table.record_alert(&payment_alert("evt_9")).await.unwrap();
    scene.run(T0).await;
    assert!(scene.slack.texts().is_empty());
    let outbox = scene.table.outbox().await.unwrap();
    assert_eq!(outbox.len(), 1);
    // The first backoff (30 s) after the run's own two short retries.
    let due = outbox[0].due_at;
    assert!((T0 + 30..T0 + 40).contains(&due), "due at {due}");
    scene.run(T0 + 10).await;
    assert!(scene.slack.texts().is_empty(), "not before it is due");
    scene.run(due).await;
    assert_eq!(scene.slack.texts().len(), 1);
    assert!(scene.table.outbox().await.unwrap().is_empty());
}

#[tokio::test]
async fn an_archived_slack_channel_is_not_retried_and_the_alert_is_marked_undeliverable() {
    let slack = SlackStandIn::start().await;
    let secret = secret(&slack.archived_url()).await;
    let scene =
        Scene::with(&format!("[[channel]]\nname = \"team\"\ntype = \"slack\"\nsecret = \"{secret}\"\n"), slack).await;
    scene.table.record_alert(&payment_alert("evt_a")).await.unwrap();
    scene.run(T0).await;
    let alert = scene.table.alert("stripe", "evt_a").await.unwrap().unwrap();
    assert_eq!(alert.delivery, DeliveryState::Undeliverable);
    let deliveries = scene.table.deliveries(&alert).await.unwrap();
    assert_eq!(deliveries[0].error.as_deref(), Some("410: channel_is_archived"));
    assert!(scene.table.outbox().await.unwrap().is_empty());
}

/// A webhook receiver: records each POST's headers and body; answers 200, or holds the
/// request without answering while `hang` is set.
#[derive(Clone, Default)]
struct Receiver {
    seen: Arc<Mutex<Vec<(http::HeaderMap, Bytes)>>>,
    hang: Arc<std::sync::atomic::AtomicBool>,
}

impl Receiver {
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks/conveyor", listener.local_addr().unwrap());
        let receiver = self.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let receiver = receiver.clone();
                let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let receiver = receiver.clone();
                    async move {
                        let (parts, body) = request.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        receiver.seen.lock().unwrap().push((parts.headers, body));
                        if receiver.hang.load(std::sync::atomic::Ordering::SeqCst) {
                            std::future::pending::<()>().await;
                        }
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from("ok"))))
                    }
                });
                tokio::spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                });
            }
        });
        url
    }
}

#[tokio::test]
async fn a_killed_invocation_mid_delivery_sends_nothing_twice_and_webhooks_are_signed() {
    let slack = SlackStandIn::start().await;
    let receiver = Receiver::default();
    let hook = receiver.start().await;
    let slack_secret = secret(&slack.url()).await;
    let key_secret = secret("hook-signing-key").await;
    let scene = Scene::with(
        &format!(
            "[[channel]]\nname = \"team\"\ntype = \"slack\"\nsecret = \"{slack_secret}\"\n\n[[channel]]\nname = \"hook\"\ntype = \"webhook\"\nurl = \"{hook}\"\nsecret = \"{key_secret}\"\n"
        ),
        slack.clone(),
    )
    .await;
    scene.table.record_alert(&payment_alert("evt_k")).await.unwrap();
    receiver.hang.store(true, std::sync::atomic::Ordering::SeqCst);
    // The invocation sends to Slack, then hangs on the webhook and is killed there.
    let dispatch = scene.dispatch.clone();
    let running = tokio::spawn(async move { dispatch.run(T0).await });
    let started = Instant::now();
    while receiver.seen.lock().unwrap().is_empty() && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.abort();
    assert_eq!(slack.texts().len(), 1);
    receiver.hang.store(false, std::sync::atomic::Ordering::SeqCst);
    // Another run while the dead invocation's lease holds: nothing is sent.
    scene.run(T0 + 30).await;
    assert_eq!(receiver.seen.lock().unwrap().len(), 1);
    // After the lease: only the channel that did not confirm is tried again.
    scene.run(T0 + alert_dispatch::DELIVERY_LEASE_SECONDS + 1).await;
    assert_eq!(slack.texts().len(), 1, "Slack had it: not sent again");
    let seen = receiver.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    let delivery = |i: usize| seen[i].0.get("conveyor-delivery").unwrap().to_str().unwrap().to_owned();
    assert_eq!(delivery(0), delivery(1), "the receiver can tell the repeat by its delivery id");
    assert_eq!(delivery(1), "stripe/evt_k/hook");
    // The signature: Stripe's scheme over the exact body, with the channel's key.
    let (headers, body) = &seen[1];
    let signature = headers.get("conveyor-signature").unwrap().to_str().unwrap();
    let t: i64 = signature.split(',').next().unwrap().trim_start_matches("t=").parse().unwrap();
    assert_eq!(signature, conveyor_shared::signature::sign_conveyor(b"hook-signing-key", t, body));
    let payload: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(payload["alert"]["cause"], "card_declined");
    let alert = scene.table.alert("stripe", "evt_k").await.unwrap().unwrap();
    assert_eq!(alert.delivery, DeliveryState::Delivered);
}

#[tokio::test]
async fn email_goes_through_ses_from_a_verified_identity_only() {
    let sdk = sdk().await;
    let ses = aws_sdk_ses::Client::new(&sdk);
    let from = format!("{}@conveyor.example.com", unique_name("alerts").replace('-', "."));
    ses.verify_email_identity().email_address(&from).send().await.unwrap();
    let scene = Scene::with(
        &format!(
            "[[channel]]\nname = \"ops\"\ntype = \"email\"\nto = [\"ops@example.com\"]\nfrom = \"{from}\"\n\n[[channel]]\nname = \"unverified\"\ntype = \"email\"\nto = [\"ops@example.com\"]\nfrom = \"nobody@unverified.example.com\"\n\n[[route]]\nsources = [\"stripe\"]\nchannels = [\"ops\"]\n\n[[route]]\nsources = [\"cdn\"]\nchannels = [\"unverified\"]\n"
        ),
        SlackStandIn::start().await,
    )
    .await;
    scene.table.record_alert(&payment_alert("evt_mail")).await.unwrap();
    let mut cdn = payment_alert("cdn_1");
    cdn.source = AlertSource::Cdn;
    scene.table.record_alert(&cdn).await.unwrap();
    scene.run(T0).await;
    let sent = || async {
        let data: Value = get_json(&format!("{}/moto-api/data.json", endpoint())).await;
        data["ses"].to_string()
    };
    let ses = sent().await;
    assert!(ses.contains(&from), "the email from the verified identity is in SES: {ses:.2000}");
    assert!(ses.contains("Payment failed for evt_mail") && ses.contains("card_declined"), "{ses:.2000}");
    let alert = scene.table.alert("stripe", "evt_mail").await.unwrap().unwrap();
    assert_eq!(alert.delivery, DeliveryState::Delivered);
    let unverified = scene.table.alert("cdn", "cdn_1").await.unwrap().unwrap();
    assert_eq!(unverified.delivery, DeliveryState::Undeliverable, "SES refuses an unverified sender: not retried");
}

async fn get_json(url: &str) -> Value {
    let client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http::<Full<Bytes>>();
    let response = client.get(url.parse().unwrap()).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

/// What SNS hands a subscribed function when one of the stack's alarms changes state (the
/// shape of the AWS sample event, with a Conveyor alarm's message).
fn alarm_event(message_id: &str, state: &str) -> Value {
    let message = serde_json::json!({
        "AlarmName": "conveyor-DeployFanoutErrorsAlarm-1ABC",
        "AlarmDescription": "deploy-fanout reported errors: deployments may stall or agents may not be answered",
        "AWSAccountId": "123456789012",
        "NewStateValue": state,
        "NewStateReason": "Threshold Crossed: 1 out of the last 1 datapoints [3.0 (23/11/26 05:40:00)] was greater than the threshold (0.0).",
        "StateChangeTime": "2026-11-23T05:40:00.000+0000",
        "Region": "US East (N. Virginia)",
        "OldStateValue": if state == "OK" { "ALARM" } else { "OK" },
        "Trigger": {"MetricName": "Errors", "Namespace": "AWS/Lambda", "Statistic": "SUM",
                    "Dimensions": [{"value": "conveyor-DeployFanoutFunction-XYZ", "name": "FunctionName"}],
                    "Period": 300, "EvaluationPeriods": 1, "ComparisonOperator": "GreaterThanThreshold", "Threshold": 0.0}
    });
    serde_json::json!({"Records": [{
        "EventSource": "aws:sns", "EventVersion": "1.0",
        "EventSubscriptionArn": "arn:aws:sns:us-east-1:123456789012:conveyor-ConveyorAlarms:sub",
        "Sns": {"Type": "Notification", "MessageId": message_id,
                "TopicArn": "arn:aws:sns:us-east-1:123456789012:conveyor-ConveyorAlarms",
                "Subject": "ALARM", "Message": message.to_string(), "Timestamp": "2026-11-23T05:40:00.123Z",
                "SignatureVersion": "1", "Signature": "EXAMPLE", "SigningCertURL": "EXAMPLE", "UnsubscribeURL": "EXAMPLE",
                "MessageAttributes": {}}
    }]})
}

#[tokio::test]
async fn conveyors_own_alarms_reach_the_channels_once_in_the_same_format() {
    use conveyor_shared::lambda::{Capabilities, dispatch};
    let scene = Scene::new("").await;
    let capabilities = Capabilities::default().with_notifications(&scene.dispatch);
    dispatch(capabilities, alarm_event("m-1", "ALARM")).await.unwrap();
    // SNS delivers at least once: the same change again raises nothing new.
    dispatch(capabilities, alarm_event("m-1", "ALARM")).await.unwrap();
    dispatch(capabilities, alarm_event("m-2", "INSUFFICIENT_DATA")).await.unwrap();
    let not_an_alarm =
        serde_json::json!({"Records": [{"EventSource": "aws:sns", "Sns": {"MessageId": "m-3", "Message": "hello"}}]});
    dispatch(capabilities, not_an_alarm).await.unwrap();
    scene.run(T0).await;
    let texts = scene.slack.texts();
    assert_eq!(texts.len(), 1, "{texts:?}");
    let text = &texts[0];
    assert!(text.contains("[critical] Conveyor alarm conveyor-DeployFanoutErrorsAlarm-1ABC is in alarm"), "{text}");
    assert!(text.contains("Impact: deploy-fanout reported errors"), "{text}");
    assert!(text.contains("Action: Read the log group /aws/lambda/conveyor-DeployFanoutFunction-XYZ"), "{text}");
    dispatch(capabilities, alarm_event("m-4", "OK")).await.unwrap();
    scene.run(T0 + 60).await;
    let texts = scene.slack.texts();
    assert_eq!(texts.len(), 2, "{texts:?}");
    assert!(texts[1].contains("is back to OK"), "{}", texts[1]);
    // A function that is not subscribed to a topic refuses SNS events by name.
    let err = dispatch(Capabilities::default(), alarm_event("m-5", "ALARM")).await.unwrap_err();
    assert!(err.to_string().contains("SNS"), "{err}");
}

#[tokio::test]
async fn the_dev_server_delivers_an_alert_raised_by_another_function_at_once() {
    let slack = SlackStandIn::start().await;
    let app = conveyor_e2e::TestApp::spawn(&slack.channel("team").await).await;
    // Stamped by its source (Stripe's clock), not by this machine's: a month ahead here.
    let mut alert = payment_alert("evt_future");
    alert.created_at = conveyor_shared::unix_now() + 30 * 24 * 3600;
    app.table.record_alert(&alert).await.unwrap();
    let started = Instant::now();
    while slack.texts().is_empty() && started.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(slack.texts().len(), 1, "{:?}", slack.texts());
    assert!(slack.texts()[0].contains("Payment failed for evt_future"));
}

#[tokio::test]
async fn a_failed_payment_reaches_the_team() {
    let slack = SlackStandIn::start().await;
    let app = conveyor_e2e::TestApp::spawn(&slack.channel("team").await).await;
    for sample in ["subscription-created", "invoice-payment-failed"] {
        let body = std::fs::read(format!("{}/../events/stripe/{sample}.json", env!("CARGO_MANIFEST_DIR"))).unwrap();
        assert_eq!(app.deliver_stripe(&body, 0).await.status, 200);
    }
    let started = Instant::now();
    while slack.texts().is_empty() && started.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(slack.texts().iter().any(|t| t.contains("Payment failed for customer")), "{:?}", slack.texts());
}

/// A health endpoint for each instance: `/<instance id>/health` answers 200, or 503 for the
/// sick ones.
async fn fleet_health(sick: Arc<Mutex<Vec<String>>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let sick = sick.clone();
            let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let id = request.uri().path().trim_start_matches('/').split('/').next().unwrap_or_default().to_owned();
                let down = sick.lock().unwrap().contains(&id);
                async move {
                    let (status, body) =
                        if down { (503, r#"{"status": "DOWN"}"#) } else { (200, r#"{"status": "UP"}"#) };
                    let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
                    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
            });
        }
    });
    base
}

#[tokio::test]
async fn each_instance_is_checked_hosts_in_a_deploying_wave_are_left_to_it_and_one_is_rebooted_once_per_window() {
    use conveyor_e2e::{Fault, FaultProxy, launch_instances};
    use conveyor_shared::domain::DeploymentState;
    use conveyor_shared::domain::rollout::{Release, TargetRecord, TargetState};
    use conveyor_shared::store::DeploymentStart;

    let sdk = sdk().await;
    let tag = unique_name("fleet");
    let ids = launch_instances(&sdk, 3, &tag).await;
    let sick = Arc::new(Mutex::new(Vec::new()));
    let base = fleet_health(sick.clone()).await;
    let slack = SlackStandIn::start().await;
    let config = format!(
        "{}[[environment]]\nname = \"production\"\nbranch = \"main\"\nrepository = \"*\"\n[environment.instances]\ntags = {{ app = \"{tag}\" }}\n\n[[check]]\nname = \"hosts\"\nenvironment = \"production\"\nurl = \"{base}/{{instance_id}}/health\"\nconditions = [\"[STATUS] == 200\"]\nfailure_threshold = 2\nreboot = true\nreboot_every = \"30m\"\nchannels = [\"team\"]\n",
        slack.channel("team").await
    );
    // EC2 calls go through a proxy that counts the reboots.
    let reboots = FaultProxy::start(|seen| seen.body_has("Action=RebootInstances"), 0, Fault::unavailable()).await;
    let table = Table::from_sdk(&sdk, unique_name("conveyor-fleet-checks"));
    table.create_if_missing().await.unwrap();
    let config = Config::parse(&config, "conveyor.toml").unwrap();
    let function = alert_dispatch::REGISTRATION.name;
    let own = conveyor_e2e::function_sdk(function, table.name(), &config, &endpoint()).await;
    let proxied = conveyor_e2e::function_sdk(function, table.name(), &config, &reboots.url()).await;
    let dispatch = AlertDispatch::new(
        Table::from_sdk(&own, table.name()),
        Prober::new().unwrap(),
        Channels::new(&own).unwrap(),
        conveyor_shared::ec2::Ec2::new(&proxied),
        Arc::new(config),
    );
    // A deployment is working on the third instance (wave 0 started, not settled).
    let record = crate::local_aws::deployment("acme/shop", "ccc", T0, DeploymentState::Pending);
    table.create_deployment(&record).await.unwrap();
    let id = record.id();
    table.claim_planning("production", &id, "plan", T0, 60).await.unwrap();
    let release = Release {
        version: "ccc".into(),
        artifact: "s3://a/ccc.tar.gz".into(),
        sha256: "00".into(),
        artifact_version: None,
    };
    let target = |instance: &str, wave: usize| TargetRecord {
        environment: "production".into(),
        deployment: id.clone(),
        instance: instance.into(),
        wave,
        state: TargetState::Waiting,
        detail: None,
        release: release.clone(),
        previous: None,
        updated_at: T0,
    };
    table.write_targets(&[target(&ids[2], 0), target(&ids[0], 1)]).await.unwrap();
    let start = DeploymentStart {
        environment: "production",
        id: &id,
        planner: "plan",
        sizes: &[1, 1],
        sha256: "00",
        artifact_version: None,
        reason: "rolling",
        alert: None,
    };
    table.start_deployment(&start, T0).await.unwrap();

    *sick.lock().unwrap() = vec![ids[1].clone(), ids[2].clone()];
    let run = |minute: i64| dispatch.run(T0 + minute * 60);
    run(0).await.unwrap();
    run(1).await.unwrap();
    let texts = slack.texts();
    let down: Vec<&String> = texts.iter().filter(|t| t.contains("] Check ") && t.contains("is down")).collect();
    assert_eq!(down.len(), 1, "{texts:?}");
    assert!(down[0].contains(&format!("Check hosts/{} is down", ids[1])), "{}", down[0]);
    assert!(!texts.iter().any(|t| t.contains(&ids[2])), "the deploying wave's host is the deployment's: {texts:?}");
    // Self-healing: rebooted once, and said so; not again within the window.
    assert_eq!(reboots.calls(), 1);
    let rebooted: Vec<&String> = texts.iter().filter(|t| t.contains("Rebooted")).collect();
    assert_eq!(rebooted.len(), 1, "{texts:?}");
    assert!(rebooted[0].contains(&format!("Rebooted {} of production (self-healing)", ids[1])), "{}", rebooted[0]);
    for minute in 2..=10 {
        run(minute).await.unwrap();
    }
    assert_eq!(reboots.calls(), 1, "at most once per 30 minutes");
    run(32).await.unwrap();
    assert_eq!(reboots.calls(), 2, "once more after the window, while still down");
    // The sick instance is terminated: its check ends, and the outage is closed.
    aws_sdk_ec2::Client::new(&sdk).terminate_instances().instance_ids(&ids[1]).send().await.unwrap();
    run(33).await.unwrap();
    let name = format!("hosts/{}", ids[1]);
    assert!(!table.check_states().await.unwrap().contains_key(&name), "its state is forgotten");
    let incident = &table.incidents(&name, 1).await.unwrap()[0];
    assert_eq!(incident.resolved_at, Some(T0 + 33 * 60));
    assert!(slack.texts().iter().any(|t| t.contains(&format!("Check {name} ends: {} left the fleet", ids[1]))));
}

#[tokio::test]
async fn an_instance_whose_agent_fell_silent_is_told_once() {
    let sdk = sdk().await;
    let tag = unique_name("quiet-fleet");
    let ids = conveyor_e2e::launch_instances(&sdk, 2, &tag).await;
    let slack = SlackStandIn::start().await;
    let scene = Scene::with(
        &format!(
            "{}[[environment]]\nname = \"production\"\nbranch = \"main\"\nrepository = \"*\"\n[environment.instances]\ntags = {{ app = \"{tag}\" }}\n\n[[check]]\nname = \"agents\"\nenvironment = \"production\"\nagent_silent_for = \"15m\"\nfailure_threshold = 1\nchannels = [\"team\"]\n",
            slack.channel("team").await
        ),
        slack,
    )
    .await;
    scene.table.record_agent_seen("production", &ids[0], T0 - 60).await.unwrap();
    scene.table.record_agent_seen("production", &ids[1], T0 - 3600).await.unwrap();
    scene.run(T0).await;
    scene.run(T0 + 60).await;
    let texts = scene.slack.texts();
    assert_eq!(texts.len(), 1, "{texts:?}");
    assert!(texts[0].contains(&format!("Check agents/{} is down", ids[1])), "{}", texts[0]);
    assert!(texts[0].contains("has not polled for over 15m (last heard of at 2027-01-15T07:00:00Z)"), "{}", texts[0]);
    assert!(texts[0].contains("journalctl -u conveyor-agent"), "{}", texts[0]);
}
