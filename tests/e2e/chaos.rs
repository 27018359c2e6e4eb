//! The main scenario of each function on a bad day: 10% of the functions' AWS calls fail as
//! AWS fails them (throttling, conflicts, 5xx, dropped and cut connections, a hung answer;
//! `Rule::bad_day`), and every sender retries as the real one does. Each scenario ends in
//! the state it ends in on a good day: nothing lost, nothing done twice.

use std::time::{Duration, Instant};

use conveyor_e2e::{Answer, FaultProxy, Rule, TestApp, sample};
use serde_json::json;

/// The share of the functions' AWS calls that fail.
const BAD_DAY: f64 = 0.10;

async fn bad_day(seed: u64) -> FaultProxy {
    FaultProxy::chaos(Rule::bad_day(BAD_DAY), Vec::new(), seed).await
}

/// Sends until the answer is a 2xx, as a sender that retries does (Stripe, a CI step
/// uploading a manifest, an operator redelivering a GitHub delivery); a 4xx is final.
async fn until_accepted(what: &str, mut send: impl AsyncFnMut() -> Answer) -> Answer {
    let started = Instant::now();
    loop {
        let answer = send().await;
        if (200..300).contains(&answer.status) {
            return answer;
        }
        assert!(
            answer.status >= 500 || answer.status == 409 || answer.status == 429,
            "{what}: refused for good: {answer:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(120), "{what}: never accepted: {answer:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A read of the ledger API, retried as a dashboard or an operator would.
async fn read(app: &TestApp, path: &str) -> serde_json::Value {
    until_accepted(path, async || app.get(path).await).await.body
}

#[tokio::test]
async fn a_github_push_and_its_green_ci_make_one_deployment_on_a_bad_day() {
    let proxy = bad_day(11).await;
    let app = TestApp::spawn_through(super::intake::CONFIG, &proxy.url()).await;
    let push = sample("github/push/main.json");
    let ci = sample("github/workflow_run/ci-success-main.json");
    let suite = sample("github/check_suite/success-main.json");
    until_accepted("push", async || app.deliver("push", "chaos-push", &push).await).await;
    let answer = until_accepted("workflow run", async || app.deliver("workflow_run", "chaos-ci", &ci).await).await;
    assert_eq!(answer.body["duplicate"], json!(false), "{answer:?}");
    until_accepted("check suite", async || app.deliver("check_suite", "chaos-suite", &suite).await).await;

    let deployments = read(&app, "/api/v1/deployments?environment=production").await["deployments"].clone();
    assert_eq!(
        deployments.as_array().map(Vec::len),
        Some(1),
        "one deployment, whatever failed on the way: {deployments}"
    );
    assert_eq!(deployments[0]["sha"], super::intake::MAIN_SHA);
    let builds = read(&app, "/api/v1/builds").await["builds"].clone();
    assert_eq!(builds.as_array().map(Vec::len), Some(2), "both builds, once each: {builds}");
    // Delivered again after it was accepted: a duplicate, and nothing new.
    let again = until_accepted("redelivery", async || app.deliver("workflow_run", "chaos-ci", &ci).await).await;
    assert_eq!(again.body["duplicate"], json!(true), "{again:?}");
    let deployments = read(&app, "/api/v1/deployments?environment=production").await["deployments"].clone();
    assert_eq!(deployments.as_array().map(Vec::len), Some(1));
    assert!(proxy.faulted() > 0, "the proxy failed some calls: {} of {}", proxy.faulted(), proxy.calls());
}

#[tokio::test]
async fn a_stripe_lifecycle_ends_in_the_same_entitlement_on_a_bad_day() {
    use super::stripe::{event, subscription};
    let proxy = bad_day(23).await;
    let app = TestApp::spawn_through("", &proxy.url()).await;
    let lifecycle = [
        event("evt_c1", "customer.subscription.created", 100, subscription("trialing", "price_basic")),
        event("evt_c2", "customer.subscription.updated", 200, subscription("active", "price_pro")),
        event("evt_c3", "customer.subscription.updated", 300, subscription("past_due", "price_pro")),
        event("evt_c4", "customer.subscription.updated", 400, subscription("active", "price_pro")),
    ];
    for (n, body) in lifecycle.iter().enumerate() {
        until_accepted(&format!("event {n}"), async || app.deliver_stripe(body, 0).await).await;
    }
    // Stripe sends some of them again, out of order: nothing changes.
    for body in lifecycle.iter().rev() {
        until_accepted("a resend", async || app.deliver_stripe(body, 0).await).await;
    }
    let body = read(&app, "/api/v1/customers/cus_1").await;
    assert_eq!(body["entitled"], true, "{body}");
    let sub = &body["subscriptions"][0];
    assert_eq!((sub["status"].as_str(), sub["price"].as_str()), (Some("active"), Some("price_pro")), "{body}");
    assert_eq!(body["subscriptions"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn a_packer_manifest_sets_the_images_once_on_a_bad_day() {
    use super::manifests::{build, manifest};
    let proxy = bad_day(37).await;
    let app = TestApp::spawn_through("[[provider]]\nname = \"aws\"\n", &proxy.url()).await;
    let token = app.provider_token("aws").await;
    let runs = [
        manifest(vec![build("web", "amazon-ebs", "us-east-1:ami-11111111,eu-west-1:ami-22222222", "run-1")], "run-1"),
        manifest(vec![build("web", "amazon-ebs", "us-east-1:ami-33333333,eu-west-1:ami-22222222", "run-2")], "run-2"),
    ];
    for (n, body) in runs.iter().enumerate() {
        until_accepted(&format!("run {n}"), async || app.upload_manifest("aws", &token, "", body).await).await;
        // The uploader's retry after an answer it did not get changes nothing.
        let again =
            until_accepted("the same run again", async || app.upload_manifest("aws", &token, "", body).await).await;
        assert_eq!(again.body["changed"], json!({}), "{again:?}");
    }
    let images = until_accepted("images", async || app.images("aws", &token).await).await.body;
    assert_eq!(images["images"], json!({"us-east-1": "ami-33333333", "eu-west-1": "ami-22222222"}), "{images}");
    assert_eq!(images["version"], 2, "one version per run: {images}");
    assert_eq!(images["history"].as_array().map(Vec::len), Some(2), "{images}");
}

#[tokio::test]
async fn a_publish_goes_live_with_one_invalidation_on_a_bad_day() {
    use conveyor_shared::domain::publish::PublishState;
    let cdns = super::cdn::Cdns::new().await;
    let proxy = bad_day(41).await;
    let now = 1_795_000_000;
    cdns.fixture.write("app.js", "2");
    cdns.fixture.write("style.css", "2");
    // CI runs the publish again until it succeeds.
    let started = Instant::now();
    let id = loop {
        match cdns.fixture.publish_with(&cdns.site, Some(&proxy.url()), false, None).await {
            Ok(summary) => break summary.publish.expect("the changed files make a publish"),
            Err(failed) => assert!(started.elapsed() < Duration::from_secs(120), "never published: {failed}"),
        }
    };
    // The schedule runs cdn-invalidate every minute; a failed run is followed by the next.
    let function = cdns.function(Some(proxy.url())).await;
    let mut minute = 0;
    while cdns.record(&id).await.state != PublishState::Completed {
        minute += 1;
        assert!(minute < 60, "not live after an hour of runs: {:?}", cdns.record(&id).await);
        let _ = function.tick(now + minute * 60).await;
    }
    let record = cdns.record(&id).await;
    assert_eq!(record.invalidation_paths, ["/app.js", "/style.css"]);
    assert_eq!(super::cdn::invalidations(&cdns.distribution).await, 1, "one invalidation, never two");
}

#[tokio::test]
async fn a_check_going_down_and_up_is_told_once_each_way_on_a_bad_day() {
    use super::alerts::{Scene, T0, check};
    let target = super::checks::Target::start().await;
    let proxy = bad_day(53).await;
    let scene =
        Scene::calling(&check("api", &target.url, "failure_threshold = 2\nsuccess_threshold = 2"), &proxy.url()).await;
    // The schedule's run each minute; a failed run is retried twice for the same minute, as
    // Lambda retries an asynchronous invocation.
    let minute = async |n: i64| {
        for _ in 0..3 {
            if scene.dispatch.run(T0 + n * 60).await.is_ok() {
                return;
            }
        }
    };
    minute(0).await;
    target.answer(503, r#"{"status": "DOWN"}"#);
    for n in 1..=6 {
        minute(n).await;
    }
    target.answer(200, r#"{"status": "UP"}"#);
    for n in 7..=12 {
        minute(n).await;
    }
    let texts = scene.slack.texts();
    assert_eq!(texts.len(), 2, "one message down, one up, never a repeat: {texts:?}");
    assert!(texts[0].contains("Check api is down"), "{texts:?}");
    assert!(texts[1].contains("Check api back up"), "{texts:?}");
    let incidents = scene.table.incidents("api", 10).await.unwrap();
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    assert!(incidents[0].resolved_at.is_some(), "{incidents:?}");
}
