use conveyor_e2e::TestApp;
use serde_json::json;

const CONFIG: &str = "[[environment]]\nname = \"production\"\nbranch = \"main\"\nrepository = \"*\"\n\n[[environment]]\nname = \"staging\"\nbranch = \"develop\"\nrepository = \"*\"\n";

async fn token(app: &TestApp, environment: &str) -> String {
    let secret = conveyor_cli::ops::create_environment_token(&app.table, &app.config, environment, None).await.unwrap();
    String::from_utf8(secret.expose().to_vec()).unwrap()
}

async fn post(app: &TestApp, path: &str, token: &str, body: &str) -> conveyor_e2e::Answer {
    let authorization = format!("Bearer {token}");
    app.request(
        "POST",
        path,
        &[("authorization", &authorization), ("content-type", "application/json")],
        body.to_owned(),
    )
    .await
}

#[tokio::test]
async fn every_agent_endpoint_checks_token_environment_and_message() {
    let app = TestApp::spawn(CONFIG).await;
    let production = token(&app, "production").await;
    let staging = token(&app, "staging").await;
    let poll = json!({"instance_id": "i-0123456789abcdef0", "environment": "production", "current": null}).to_string();
    let report = json!({"instance_id": "i-0123456789abcdef0", "environment": "production", "version": "v1",
                        "outcome": "succeeded", "healthy": true, "current": "v1", "log": "ok"})
    .to_string();
    for (path, body) in [("/agent/v1/poll", &poll), ("/agent/v1/report", &report)] {
        let wrong = post(&app, path, "cvy_not_a_token", body).await;
        assert_eq!((wrong.status, wrong.body["error"]["code"].as_str()), (401, Some("invalid_token")), "{path}");
        let missing = app.request("POST", path, &[], body.clone()).await;
        assert_eq!(missing.status, 401, "{path}");
        let other = post(&app, path, &staging, body).await;
        assert_eq!((other.status, other.body["error"]["code"].as_str()), (403, Some("forbidden")), "{path}");
        let malformed = post(&app, path, &production, "{\"instance_id\": 5}").await;
        assert_eq!(
            (malformed.status, malformed.body["error"]["code"].as_str()),
            (400, Some("invalid_message")),
            "{path}"
        );
        let bad_id = body.replace("i-0123456789abcdef0", "../etc");
        assert_eq!(post(&app, path, &production, &bad_id).await.status, 400, "{path}");
    }
    // Nothing above changed the instance's record.
    assert!(app.table.instance("production", "i-0123456789abcdef0").await.unwrap().is_none());
}

#[tokio::test]
async fn an_instance_outside_every_deployment_gets_nothing() {
    let app = TestApp::spawn(CONFIG).await;
    let production = token(&app, "production").await;
    let poll = json!({"instance_id": "i-00000000000000001", "environment": "production", "current": "v1"}).to_string();
    let answer = post(&app, "/agent/v1/poll", &production, &poll).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body["action"], "none");
    assert_eq!(answer.body["poll_after"], 2, "the idle interval, not the busy one");
    // The poll is recorded for heartbeat checks, but not every poll: idle polls stay reads.
    let seen = app.table.instance("production", "i-00000000000000001").await.unwrap().unwrap().seen_at;
    assert!(seen.is_some());
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(post(&app, "/agent/v1/poll", &production, &poll).await.status, 200);
    let again = app.table.instance("production", "i-00000000000000001").await.unwrap().unwrap().seen_at;
    assert_eq!(again, seen, "recorded at most every few minutes");
}

#[tokio::test]
async fn a_release_goes_out_with_the_environments_health_check() {
    use conveyor_shared::domain::rollout::{DeploymentPlan, Release};
    use conveyor_shared::domain::{DeploymentRecord, DeploymentState, RunState};
    // The test plans and starts the deployment itself: no tick or stream may race it.
    let app = TestApp::spawn_with(
        "[[environment]]\nname = \"production\"\nbranch = \"main\"\nrepository = \"*\"\n[environment.health]\nurl = \"http://127.0.0.1:9000/up\"\nexpect_status = 204\n",
        |catalog| {
            catalog.streams.clear();
            catalog.schedules.clear();
        },
    )
    .await;
    let production = token(&app, "production").await;
    let (sha, now) = ("ab".repeat(20), conveyor_shared::unix_now());
    let release = Release {
        version: sha[..12].into(),
        artifact: format!("s3://{}/acme/shop/{sha}.tar.gz", app.artifacts_bucket),
        sha256: "cd".repeat(32),
        artifact_version: None,
    };
    let deployment = DeploymentRecord {
        environment: "production".into(),
        repository: "acme/shop".into(),
        sha: sha.clone(),
        branch: "main".into(),
        version: release.version.clone(),
        artifact: release.artifact.clone(),
        state: DeploymentState::Pending,
        reason: "CI succeeded on main".into(),
        build: "b".into(),
        created_at: now,
        pushed_at: None,
        run: RunState::default(),
    };
    app.table.create_deployment(&deployment).await.unwrap();
    let id = deployment.id();
    let waves = vec![vec!["i-00000000000000001".to_string()]];
    let plan = DeploymentPlan { environment: "production", deployment: &id, release: &release, previous: None, now };
    let claimed = app.table.claim_planning("production", &id, "test-planner", now, 60).await.unwrap();
    assert_eq!(claimed, conveyor_shared::store::Transition::Applied);
    app.table.write_targets(&plan.targets(&waves)).await.unwrap();
    let start = conveyor_shared::store::DeploymentStart {
        environment: "production",
        id: &id,
        planner: "test-planner",
        sizes: &[1],
        sha256: &release.sha256,
        artifact_version: None,
        reason: "rolling",
        alert: None,
    };
    app.table.start_deployment(&start, now).await.unwrap();

    let poll = json!({"instance_id": "i-00000000000000001", "environment": "production", "current": null}).to_string();
    let answer = post(&app, "/agent/v1/poll", &production, &poll).await;
    assert_eq!(answer.body["action"], "deploy", "{answer:?}");
    assert_eq!(answer.body["release"]["version"], release.version.as_str());
    assert_eq!(
        answer.body["health"],
        json!({"url": "http://127.0.0.1:9000/up", "expect_status": 204, "timeout_seconds": 5, "attempts": 5, "interval_seconds": 2})
    );
}

async fn post_as(app: &TestApp, path: &str, token: &str, credential: Option<&str>, body: &str) -> conveyor_e2e::Answer {
    let authorization = format!("Bearer {token}");
    let mut headers = vec![("authorization", authorization.as_str()), ("content-type", "application/json")];
    if let Some(credential) = credential {
        headers.push((deploy_fanout::CREDENTIAL_HEADER, credential));
    }
    app.request("POST", path, &headers, body.to_owned()).await
}

#[tokio::test]
async fn an_agent_speaks_only_for_the_instance_it_enrolled() {
    let app = TestApp::spawn(CONFIG).await;
    let production = token(&app, "production").await;
    let instance = "i-0aaaaaaaaaaaaaaa1";
    let poll = json!({"instance_id": instance, "environment": "production", "current": null}).to_string();
    let report = json!({"instance_id": instance, "environment": "production", "version": "v1",
                        "outcome": "succeeded", "healthy": true, "current": "v1"})
    .to_string();

    // A report from an agent that never polled is not counted: it enrols by polling first.
    let unenrolled = post_as(&app, "/agent/v1/report", &production, None, &report).await;
    assert_eq!((unenrolled.status, unenrolled.body["error"]["code"].as_str()), (403, Some("not_enrolled")));

    // First contact: a credential, shown once. Its answer may be lost, so until the agent
    // uses one, a first contact again is answered with a new one.
    let lost = post_as(&app, "/agent/v1/poll", &production, None, &poll).await;
    let lost = lost.body["credential"].as_str().expect("a credential at first contact").to_owned();
    let kept = post_as(&app, "/agent/v1/poll", &production, None, &poll).await;
    let kept = kept.body["credential"].as_str().expect("issued again").to_owned();
    assert_ne!(lost, kept);
    let used = post_as(&app, "/agent/v1/poll", &production, Some(&kept), &poll).await;
    assert_eq!((used.status, used.body.get("credential")), (200, None), "{used:?}");

    // Now only that agent speaks for the instance, whoever else holds the token.
    for (path, body) in [("/agent/v1/poll", &poll), ("/agent/v1/report", &report)] {
        for credential in [None, Some(lost.as_str()), Some("made-up")] {
            let other = post_as(&app, path, &production, credential, body).await;
            assert_eq!(
                (other.status, other.body["error"]["code"].as_str()),
                (403, Some("instance_enrolled")),
                "{path} with {credential:?}"
            );
        }
        assert_eq!(post_as(&app, path, &production, Some(&kept), body).await.status, 200, "{path}");
    }
    let stored = app.table.enrollment("production", instance).await.unwrap().unwrap();
    assert!(stored.confirmed && stored.credential_hash != kept, "only a hash is kept");

    // An operator lets a new agent enrol (a rebuilt host).
    assert!(app.table.forget_enrollment("production", instance).await.unwrap());
    let again = post_as(&app, "/agent/v1/poll", &production, None, &poll).await;
    assert!(again.body["credential"].is_string(), "{again:?}");
}
