//! DynamoDB refuses an item over 400 KB (the emulator too). Every record that grows with its
//! input is written here at its largest, through the same store calls the functions make,
//! and stays within the limit: reasons, alert texts and labels, image maps.

use conveyor_e2e::{Quiet, TestApp};
use conveyor_shared::domain::alert::{Alert, AlertKind, AlertSource, Severity};
use serde_json::json;

const CONFIG: &str = "[[environment]]\nname = \"production\"\nbranch = \"main\"\nrepository = \"*\"\n";

#[tokio::test]
async fn a_reason_of_any_length_is_kept_short_in_the_record_and_its_history() {
    use conveyor_shared::domain::DeploymentState;
    let quiet = Quiet::new(CONFIG).await;
    let queued = quiet.queue("production", "acme/shop", &"a".repeat(40), 100, None, None).await;
    // A newer build whose reason names every run of a huge CI matrix.
    let mut newest = queued.clone();
    newest.sha = "b".repeat(40);
    newest.created_at = 200;
    newest.reason = "x".repeat(1024 * 1024);
    let superseded = quiet.table.supersede_queued(&newest, std::slice::from_ref(&queued), 300).await.unwrap();
    assert_eq!(superseded, [queued.id()], "written despite a 1 MB reason");
    let stored = quiet.state(&queued).await;
    assert_eq!(stored.state, DeploymentState::Superseded);
    assert!(stored.reason.chars().count() <= conveyor_shared::store::MAX_REASON_CHARS, "{}", stored.reason.len());
}

#[tokio::test]
async fn an_alert_of_any_size_is_recorded_with_its_texts_bounded() {
    let quiet = Quiet::new(CONFIG).await;
    let hosts: Vec<String> = (0..10_000).map(|i| format!("i-{i:017x}")).collect();
    let alert = Alert::new(AlertSource::Deploy, "huge", AlertKind::RollbackIncomplete, Severity::Critical, 100)
        .summary("s".repeat(10_000))
        .cause(hosts.join(", "))
        .impact("i".repeat(500_000))
        .action("a".repeat(500_000))
        .label("instances", hosts.join(","));
    quiet.table.record_alert(&alert).await.unwrap();
    let stored = quiet.table.alert("deploy", "huge").await.unwrap().unwrap();
    assert!(stored.cause.chars().count() <= conveyor_shared::domain::alert::MAX_TEXT_CHARS);
    assert!(stored.summary.chars().count() <= conveyor_shared::domain::alert::MAX_SUMMARY_CHARS);
    assert!(stored.labels["instances"].chars().count() <= conveyor_shared::domain::alert::MAX_LABEL_CHARS);
}

#[tokio::test]
async fn a_manifest_naming_more_regions_than_any_cloud_has_is_refused_and_changes_nothing() {
    use super::manifests::{build, manifest};
    let app = TestApp::spawn("[[provider]]\nname = \"aws\"\n").await;
    let token = app.provider_token("aws").await;
    let regions: Vec<String> = (0..=conveyor_shared::domain::packer::MAX_REGIONS)
        .map(|n| format!("zz-fake{}-{n}", "abcdefghijklmnopqrstuvwxyz".chars().nth(n % 26).unwrap()))
        .collect();
    let artifact: Vec<String> = regions.iter().enumerate().map(|(n, r)| format!("{r}:ami-{n:08x}")).collect();
    let body = manifest(vec![build("web", "amazon-ebs", &artifact.join(","), "run-1")], "run-1");
    let answer = app.upload_manifest("aws", &token, "", &body).await;
    assert_eq!((answer.status, &answer.body["error"]["code"]), (422, &json!("too_many_regions")), "{answer:?}");
    let images = app.images("aws", &token).await;
    assert_eq!(images.body["version"], 0, "{images:?}");
}
