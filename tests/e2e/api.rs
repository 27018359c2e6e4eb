use conveyor_e2e::{TestApp, sample};

const CONFIG: &str = "[[environment]]\nname = \"production\"\nbranch = \"main\"\nrepository = \"*\"\n";

#[tokio::test]
async fn listing_errors_are_clear() {
    let app = TestApp::spawn(CONFIG).await;
    let answer = app.get("/api/v1/deployments").await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.body["error"]["code"], "missing_parameter");
    let answer = app.get("/api/v1/deployments?environment=nowhere").await;
    assert_eq!(answer.status, 404);
    assert!(answer.body["error"]["message"].as_str().unwrap().contains("production"));
    let answer = app.get("/api/v1/builds?limit=0").await;
    assert_eq!(answer.status, 400);
    let answer = app.get("/api/v1/nothing").await;
    assert_eq!(answer.status, 404);
    assert_eq!(answer.body["error"]["code"], "not_found");
    let answer = app.request("DELETE", "/webhooks/github", &[], "").await;
    assert_eq!(answer.status, 405);
}

#[tokio::test]
async fn builds_are_listed_newest_first_and_limited() {
    let app = TestApp::spawn(CONFIG).await;
    app.deliver("workflow_run", "a", &sample("github/workflow_run/ci-failure-main.json")).await;
    let mut newer: serde_json::Value =
        serde_json::from_slice(&sample("github/workflow_run/ci-success-main.json")).unwrap();
    newer["workflow_run"]["updated_at"] = "2026-11-21T00:00:00Z".into();
    app.deliver("workflow_run", "b", newer.to_string().as_bytes()).await;
    let builds = app.builds().await;
    assert_eq!(builds.len(), 2);
    assert_eq!(builds[0]["conclusion"], "success");
    let answer = app.get("/api/v1/builds?limit=1").await;
    assert_eq!(answer.body["builds"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn replay_signs_a_sample_as_github_would() {
    let app = TestApp::spawn(CONFIG).await;
    let file = conveyor_e2e::events_dir().join("github/workflow_run/ci-success-main.json");
    let sender = conveyor_cli::replay::Sender::of(&file).unwrap();
    let conveyor_cli::replay::Sender::GitHub { event } = sender else { panic!("a GitHub sample") };
    assert_eq!(event, "workflow_run");
    let secret = conveyor_shared::secret::Secret::new(conveyor_e2e::SECRET);
    let body = conveyor_cli::replay::read(&file).unwrap();
    let reply =
        conveyor_cli::replay::post(&app.url("/webhooks/github"), &event, "r-1", body.clone(), &secret).await.unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    let wrong = conveyor_shared::secret::Secret::new("wrong");
    let reply = conveyor_cli::replay::post(&app.url("/webhooks/github"), &event, "r-2", body, &wrong).await.unwrap();
    assert_eq!(reply.status, 401);
    assert!(!reply.body.contains("wrong"), "the secret never appears in an answer");
}
