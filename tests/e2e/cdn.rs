//! `cdn-invalidate` against the emulator's CloudFront (which completes every invalidation at
//! once and never dedupes a caller reference: Conveyor's own claim must) and the table.

use std::sync::Arc;

use cdn_invalidate::CdnInvalidate;
use conveyor_e2e::{Fault, FaultProxy, sdk, unique_name};
use conveyor_shared::cloudfront::Cdn;
use conveyor_shared::config::{Config, Site};
use conveyor_shared::domain::alert::AlertKind;
use conveyor_shared::domain::invalidation::month_of;
use conveyor_shared::domain::publish::PublishState;

use crate::publish::{Fixture, site_of};

const NOW: i64 = 1_795_000_000;

async fn distribution() -> String {
    use aws_sdk_cloudfront::types::{
        DefaultCacheBehavior, DistributionConfig, Origin, Origins, S3OriginConfig, ViewerProtocolPolicy,
    };
    let client = aws_sdk_cloudfront::Client::new(&sdk().await);
    let origin = Origin::builder()
        .id("site")
        .domain_name("site.s3.amazonaws.com")
        .s3_origin_config(S3OriginConfig::builder().origin_access_identity("").build())
        .build()
        .unwrap();
    let config = DistributionConfig::builder()
        .caller_reference(unique_name("distribution"))
        .origins(Origins::builder().quantity(1).items(origin).build().unwrap())
        .default_cache_behavior(
            DefaultCacheBehavior::builder()
                .target_origin_id("site")
                .viewer_protocol_policy(ViewerProtocolPolicy::AllowAll)
                .build()
                .unwrap(),
        )
        .comment("conveyor test")
        .enabled(true)
        .build()
        .unwrap();
    let created = client.create_distribution().distribution_config(config).send().await.unwrap();
    created.distribution().unwrap().id().to_owned()
}

/// Invalidations CloudFront holds for `distribution`.
pub(crate) async fn invalidations(distribution: &str) -> usize {
    let client = aws_sdk_cloudfront::Client::new(&sdk().await);
    let listed = client.list_invalidations().distribution_id(distribution).send().await.unwrap();
    listed.invalidation_list().map_or(0, |l| l.quantity() as usize)
}

pub(crate) struct Cdns {
    pub(crate) fixture: Fixture,
    pub(crate) site: Site,
    pub(crate) distribution: String,
}

impl Cdns {
    /// A site on a distribution of its own, published once (all new: nothing to invalidate)
    /// and again with two changed files (stale: two paths).
    pub(crate) async fn new() -> Self {
        let fixture = Fixture::new().await;
        let distribution = distribution().await;
        let site = Self::site(&fixture, &distribution);
        fixture.write("index.html", "<h1>home</h1>");
        fixture.write("app.js", "1");
        fixture.write("style.css", "a");
        fixture.publish_with(&site, None, false, None).await.unwrap();
        Self { fixture, site, distribution }
    }

    fn site(fixture: &Fixture, distribution: &str) -> Site {
        let mut site = site_of(&fixture.bucket, "");
        site.distribution = distribution.to_owned();
        site
    }

    async fn change(&self, files: &[&str], content: &str) -> String {
        for file in files {
            self.fixture.write(file, content);
        }
        self.fixture.publish_with(&self.site, None, false, None).await.unwrap().publish.unwrap()
    }

    pub(crate) async fn function(&self, endpoint: Option<String>) -> CdnInvalidate {
        let config = Config { sites: vec![self.site.clone()], ..Config::default() };
        let endpoint = endpoint.unwrap_or_else(conveyor_e2e::endpoint);
        let sdk = conveyor_e2e::function_sdk(
            cdn_invalidate::REGISTRATION.name,
            self.fixture.table.name(),
            &config,
            &endpoint,
        )
        .await;
        let table = conveyor_shared::store::Table::from_sdk(&sdk, self.fixture.table.name());
        CdnInvalidate::new(table, Cdn::new(&sdk), Arc::new(config))
    }

    /// Sets this month's path count, as earlier publishes (of any site) would have.
    async fn set_month_paths(&self, month: &str, paths: i64) {
        use aws_sdk_dynamodb::types::AttributeValue;
        aws_sdk_dynamodb::Client::new(&sdk().await)
            .put_item()
            .table_name(self.fixture.table.name())
            .item("pk", AttributeValue::S("CDN#usage".into()))
            .item("sk", AttributeValue::S(format!("MONTH#{month}")))
            .item("paths", AttributeValue::N(paths.to_string()))
            .send()
            .await
            .unwrap();
    }

    pub(crate) async fn record(&self, id: &str) -> conveyor_shared::domain::publish::PublishRecord {
        self.fixture.table.publish("web", id).await.unwrap().unwrap()
    }
}

#[tokio::test]
async fn an_uploaded_publish_is_invalidated_once_and_followed_to_completed() {
    let cdns = Cdns::new().await;
    let function = cdns.function(None).await;
    // The first publish had only new files: done without an invalidation.
    function.tick(NOW).await.unwrap();
    assert_eq!(invalidations(&cdns.distribution).await, 0);
    let id = cdns.change(&["app.js", "style.css"], "2").await;
    assert_eq!(cdns.record(&id).await.state, PublishState::Uploaded);

    function.tick(NOW).await.unwrap();
    let submitted = cdns.record(&id).await;
    assert_eq!(submitted.state, PublishState::Invalidating);
    assert_eq!(submitted.invalidation_paths, ["/app.js", "/style.css"]);
    assert_eq!(invalidations(&cdns.distribution).await, 1);
    assert_eq!(cdns.fixture.table.month_paths(&month_of(NOW)).await.unwrap(), 2);

    function.tick(NOW + 60).await.unwrap();
    let done = cdns.record(&id).await;
    assert_eq!((done.state, done.completed_at), (PublishState::Completed, Some(NOW + 60)));
    function.tick(NOW + 120).await.unwrap();
    assert_eq!(invalidations(&cdns.distribution).await, 1, "nothing is submitted twice");
    assert_eq!(cdns.fixture.table.month_paths(&month_of(NOW)).await.unwrap(), 2);
}

#[tokio::test]
async fn runs_racing_for_one_publish_submit_one_invalidation() {
    let cdns = Cdns::new().await;
    let function = cdns.function(None).await;
    function.tick(NOW).await.unwrap();
    cdns.change(&["app.js"], "2").await;
    // The stream and the schedule (and a retried schedule) at once: the emulator would make
    // one invalidation per call; the claim lets one through.
    let (a, b, c) = tokio::join!(function.tick(NOW), function.tick(NOW), function.tick(NOW));
    a.unwrap();
    b.unwrap();
    c.unwrap();
    assert_eq!(invalidations(&cdns.distribution).await, 1);
}

#[tokio::test]
async fn two_publishes_racing_for_one_distribution_both_get_invalidated() {
    let cdns = Cdns::new().await;
    let function = cdns.function(None).await;
    function.tick(NOW).await.unwrap();
    let first = cdns.change(&["app.js"], "2").await;
    let second = cdns.change(&["style.css"], "3").await;
    function.tick(NOW).await.unwrap();
    assert_eq!(invalidations(&cdns.distribution).await, 2);
    for id in [&first, &second] {
        assert_eq!(cdns.record(id).await.state, PublishState::Invalidating, "{id}");
    }
    assert_eq!(cdns.record(&first).await.invalidation_paths, ["/app.js"]);
    assert_eq!(cdns.record(&second).await.invalidation_paths, ["/style.css"]);
}

#[tokio::test]
async fn a_slow_invalidation_raises_one_alert_and_a_lost_one_fails_the_publish() {
    let cdns = Cdns::new().await;
    cdns.function(None).await.tick(NOW).await.unwrap();
    let id = cdns.change(&["app.js"], "2").await;
    cdns.function(None).await.tick(NOW).await.unwrap();
    // CloudFront still at work long after: the emulator never is, so a proxy answers for it.
    let gets =
        |seen: &conveyor_e2e::Seen<'_>| seen.method == hyper::Method::GET && seen.path.contains("/invalidation/");
    let in_progress = Fault {
        status: 200,
        content_type: "text/xml",
        body: r#"<?xml version="1.0" encoding="UTF-8"?><Invalidation xmlns="http://cloudfront.amazonaws.com/doc/2020-05-31/"><Id>I1</Id><Status>InProgress</Status><CreateTime>2026-11-18T00:00:00Z</CreateTime><InvalidationBatch><Paths><Quantity>1</Quantity><Items><Path>/app.js</Path></Items></Paths><CallerReference>r</CallerReference></InvalidationBatch></Invalidation>"#.into(),
    };
    let slow = FaultProxy::start(gets, u32::MAX, in_progress).await;
    let function = cdns.function(Some(slow.url())).await;
    function.tick(NOW + 600).await.unwrap();
    let alerts = |kind| {
        let table = cdns.fixture.table.clone();
        async move { table.recent_alerts(50).await.unwrap().into_iter().filter(|a| a.kind == kind).count() }
    };
    assert_eq!(alerts(AlertKind::InvalidationSlow).await, 0, "not overdue at 10 minutes");
    function.tick(NOW + 16 * 60).await.unwrap();
    function.tick(NOW + 17 * 60).await.unwrap();
    assert_eq!(alerts(AlertKind::InvalidationSlow).await, 1, "overdue: told once");
    assert_eq!(cdns.record(&id).await.state, PublishState::Invalidating);

    let lost = Fault {
        status: 404,
        content_type: "text/xml",
        body: r#"<?xml version="1.0"?><ErrorResponse xmlns="http://cloudfront.amazonaws.com/doc/2020-05-31/"><Error><Type>Sender</Type><Code>NoSuchInvalidation</Code><Message>The specified invalidation does not exist.</Message></Error><RequestId>r</RequestId></ErrorResponse>"#.into(),
    };
    let gone = FaultProxy::start(gets, u32::MAX, lost).await;
    cdns.function(Some(gone.url())).await.tick(NOW + 18 * 60).await.unwrap();
    assert_eq!(cdns.record(&id).await.state, PublishState::Failed);
    assert_eq!(alerts(AlertKind::InvalidationFailed).await, 1);
}

#[tokio::test]
async fn passing_the_free_paths_of_the_month_raises_one_warning() {
    let cdns = Cdns::new().await;
    let function = cdns.function(None).await;
    function.tick(NOW).await.unwrap();
    // 999 paths this month already (the count is the account's, across every site).
    let month = month_of(NOW);
    cdns.set_month_paths(&month, 999).await;
    cdns.change(&["app.js", "style.css"], "2").await;
    function.tick(NOW).await.unwrap();
    assert_eq!(cdns.fixture.table.month_paths(&month).await.unwrap(), 1001);
    let near = cdns.fixture.table.recent_alerts(50).await.unwrap();
    assert!(
        near.iter().all(|a| a.severity != conveyor_shared::domain::alert::Severity::Info),
        "999 was set by hand: no publish saw the month near 1,000"
    );
    cdns.change(&["app.js"], "3").await;
    function.tick(NOW + 60).await.unwrap();
    let warnings = cdns.fixture.table.recent_alerts(50).await.unwrap();
    let over: Vec<_> = warnings
        .iter()
        .filter(|a| {
            a.kind == AlertKind::InvalidationPathsOverFree
                && a.severity == conveyor_shared::domain::alert::Severity::Warning
        })
        .collect();
    assert_eq!(over.len(), 1, "told when the month passes 1,000, not at every publish after");
}

#[tokio::test]
async fn waiting_on_a_publish_ends_when_it_is_live_or_out_of_time() {
    use conveyor_cli::publish::{Live, wait_live};
    use std::time::Duration;
    let cdns = Cdns::new().await;
    let function = cdns.function(None).await;
    function.tick(NOW).await.unwrap();
    let id = cdns.change(&["app.js"], "2").await;
    let waiting =
        wait_live(&cdns.fixture.table, "web", &id, Duration::from_secs(20), Duration::from_millis(50), |_| {});
    let driving = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        function.tick(NOW).await.unwrap();
        function.tick(NOW + 60).await.unwrap();
    };
    let (live, ()) = tokio::join!(waiting, driving);
    assert!(matches!(live, Live::Completed(_)), "{live:?}");
    assert_eq!(live.exit_code(), 0);

    let stuck = cdns.change(&["app.js"], "3").await;
    let timed =
        wait_live(&cdns.fixture.table, "web", &stuck, Duration::from_millis(300), Duration::from_millis(50), |_| {})
            .await;
    assert!(matches!(&timed, Live::TimedOut(Some(last)) if last.state == PublishState::Uploaded), "{timed:?}");
    assert_eq!(timed.exit_code(), 3);
}

#[tokio::test]
async fn a_site_naming_a_missing_distribution_fails_its_publish_with_an_alert() {
    let fixture = Fixture::new().await;
    let site = Cdns::site(&fixture, "E0NOSUCHDISTRO");
    fixture.write("a.txt", "1");
    fixture.publish_with(&site, None, false, None).await.unwrap();
    fixture.write("a.txt", "2");
    let id = fixture.publish_with(&site, None, false, None).await.unwrap().publish.unwrap();
    let cdns = Cdns { fixture, site, distribution: "E0NOSUCHDISTRO".into() };
    let function = cdns.function(None).await;
    function.tick(NOW).await.unwrap();
    function.tick(NOW + 60).await.unwrap();
    assert_eq!(cdns.record(&id).await.state, PublishState::Failed);
    let alerts = cdns.fixture.table.recent_alerts(50).await.unwrap();
    let failed: Vec<_> = alerts.iter().filter(|a| a.kind == AlertKind::InvalidationFailed).collect();
    assert_eq!(failed.len(), 1, "{alerts:?}");
    assert!(failed[0].action.contains("E0NOSUCHDISTRO"), "{:?}", failed[0]);
}

fn cloudfront_error(status: u16, code: &str) -> Fault {
    Fault {
        status,
        content_type: "text/xml",
        body: format!(
            r#"<?xml version="1.0"?><ErrorResponse xmlns="http://cloudfront.amazonaws.com/doc/2020-05-31/"><Error><Type>Sender</Type><Code>{code}</Code><Message>{code}</Message></Error><RequestId>r</RequestId></ErrorResponse>"#
        ),
    }
}

fn creates(seen: &conveyor_e2e::Seen<'_>) -> bool {
    seen.method == hyper::Method::POST && seen.path.ends_with("/invalidation")
}

#[tokio::test]
async fn a_busy_cloudfront_holds_the_invalidation_back_and_a_refusal_fails_it() {
    let cdns = Cdns::new().await;
    cdns.function(None).await.tick(NOW).await.unwrap();
    let id = cdns.change(&["app.js"], "2").await;
    let busy = FaultProxy::start(creates, u32::MAX, cloudfront_error(400, "TooManyInvalidationsInProgress")).await;
    cdns.function(Some(busy.url())).await.tick(NOW).await.unwrap();
    assert_eq!(cdns.record(&id).await.state, PublishState::Uploaded, "held back, not failed");
    // The busy run gave its claim back: the very next run submits it.
    cdns.function(None).await.tick(NOW + 1).await.unwrap();
    assert_eq!(cdns.record(&id).await.state, PublishState::Invalidating);
    assert_eq!(invalidations(&cdns.distribution).await, 1);

    // A distribution the stack may not touch: failed at once, with what to fix.
    let refused = cdns.change(&["style.css"], "3").await;
    let denied = FaultProxy::start(creates, u32::MAX, cloudfront_error(403, "AccessDenied")).await;
    cdns.function(Some(denied.url())).await.tick(NOW + 120).await.unwrap();
    assert_eq!(cdns.record(&refused).await.state, PublishState::Failed);
    let alerts = cdns.fixture.table.recent_alerts(50).await.unwrap();
    let failed = alerts.iter().find(|a| a.kind == AlertKind::InvalidationFailed).expect("an alert");
    assert!(failed.cause.contains("SiteDistributionArns"), "{failed:?}");
}

#[tokio::test]
async fn a_stream_record_of_an_uploaded_publish_submits_its_invalidation() {
    use conveyor_shared::triggers::{StreamFunction, StreamRecord};
    let cdns = Cdns::new().await;
    cdns.function(None).await.tick(NOW).await.unwrap();
    let id = cdns.change(&["app.js"], "2").await;
    let record: StreamRecord = serde_json::from_value(serde_json::json!({
        "eventID": "1",
        "eventName": "MODIFY",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "dynamodb": {
            "Keys": {"pk": {"S": "SITE#web"}, "sk": {"S": format!("PUBLISH#{id}")}},
            "NewImage": {"site": {"S": "web"}, "id": {"S": id}, "state": {"S": "uploaded"}},
            "OldImage": {"site": {"S": "web"}, "id": {"S": id}, "state": {"S": "pending"}},
            "SequenceNumber": "1",
            "SizeBytes": 1,
            "StreamViewType": "NEW_AND_OLD_IMAGES"
        }
    }))
    .unwrap();
    let function = cdns.function(None).await;
    function.handle_record(&record).await.unwrap();
    assert_eq!(cdns.record(&id).await.state, PublishState::Invalidating);
    // The same record again (Lambda retries) and the schedule: still one invalidation.
    function.handle_record(&record).await.unwrap();
    function.tick(conveyor_shared::unix_now()).await.unwrap();
    assert_eq!(invalidations(&cdns.distribution).await, 1);
}

#[tokio::test]
async fn nearing_the_free_paths_of_the_month_is_told_once_before_they_pass() {
    use conveyor_shared::domain::alert::Severity;
    let cdns = Cdns::new().await;
    let function = cdns.function(None).await;
    function.tick(NOW).await.unwrap();
    let month = month_of(NOW);
    cdns.set_month_paths(&month, 897).await;
    cdns.change(&["app.js", "style.css"], "2").await;
    function.tick(NOW).await.unwrap();
    cdns.change(&["app.js"], "3").await;
    function.tick(NOW + 60).await.unwrap();
    let alerts = cdns.fixture.table.recent_alerts(50).await.unwrap();
    let near: Vec<_> = alerts
        .iter()
        .filter(|a| a.severity == Severity::Info && a.kind == AlertKind::InvalidationPathsOverFree)
        .collect();
    assert_eq!(near.len(), 1, "{alerts:?}");
    assert!(near[0].summary.contains("900 of the free 1000"), "{:?}", near[0]);
}
