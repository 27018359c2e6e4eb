//! The fan-out under races, crashes and AWS faults, with time driven by the test: each test
//! has its own table and a fan-out that runs only when the test ticks it (no dev server), so
//! wave timeouts and takeovers are decided at a `now` of the test's choice.

use conveyor_e2e::{Fault, FaultProxy, Quiet, TestApp, endpoint, launch_instances, unique_name};
use conveyor_shared::domain::DeploymentState::{
    Failed, InProgress, Pending, RolledBack, RollingBack, Succeeded, Superseded,
};
use conveyor_shared::domain::fleet::LockPhase;
use conveyor_shared::domain::rollout::TargetState;
use conveyor_shared::http::HttpFunction;
use conveyor_shared::store::Counter;
use serde_json::json;

fn config(tag: &str, extra: &str) -> String {
    format!(
        "[[environment]]\nname = \"production\"\nbranch = \"main\"\nrepository = \"*\"\n[environment.instances]\ntags = {{ app = \"{tag}\" }}\n[environment.rollout]\n{extra}\n"
    )
}

fn sha(n: u8) -> String {
    format!("{n:02x}").repeat(20)
}

#[tokio::test]
async fn a_running_deployment_is_driven_to_its_end_by_the_tick_alone_and_nothing_starts_beside_it() {
    let tag = unique_name("tick");
    let quiet = Quiet::new(&config(&tag, "waves = [1, \"100%\"]\nwave_timeout = \"10m\"")).await;
    launch_instances(&quiet.sdk, 2, &tag).await;
    let fanout = quiet.fanout(&endpoint()).await;
    let now = 1_800_000_000;
    let first = quiet.queue("production", "acme/shop", &sha(1), now, None, Some(b"one")).await;

    fanout.tick(now).await.unwrap();
    assert_eq!(quiet.state(&first).await.state, InProgress, "the tick alone starts a queued deployment");
    let second = quiet.queue("production", "acme/shop", &sha(2), now + 30, None, Some(b"two")).await;
    // No agent ever reports. Long after a lock's old 15-minute expiry, nothing else starts.
    fanout.tick(now + 599).await.unwrap();
    assert_eq!(quiet.state(&second).await.state, Pending, "queued behind the running deployment");
    let lock = quiet.table.lock("production").await.unwrap().unwrap();
    assert_eq!((lock.holder, lock.phase), (first.id(), Some(LockPhase::Running)));

    fanout.tick(now + 601).await.unwrap();
    let rolling = quiet.state(&first).await;
    assert_eq!((rolling.state, rolling.run.rollback_wave), (RollingBack, Some(0)), "{rolling:?}");
    assert!(rolling.reason.contains("wave 1 timed out after 600 s"), "{}", rolling.reason);
    assert_eq!(quiet.state(&second).await.state, Pending, "a rollback still holds the environment");
    // The canary's agent never answers: its wave's turn to go back times out too.
    fanout.tick(now + 1202).await.unwrap();
    let ended = quiet.state(&first).await;
    assert_eq!(ended.state, RolledBack, "{ended:?}");
    assert!(ended.reason.contains("wave 1 timed out after 600 s"), "the reason stays: {}", ended.reason);
    assert_eq!(quiet.state(&second).await.state, InProgress, "the same tick starts the next one");
}

#[tokio::test]
async fn an_environment_that_fails_every_tick_never_stops_the_others() {
    let tag = unique_name("isolated");
    let config = format!(
        "[[environment]]\nname = \"broken\"\nbranch = \"main\"\nrepository = \"*\"\n\n{}",
        config(&tag, "waves = [\"100%\"]")
    );
    let quiet = Quiet::new(&config).await;
    // A deployment item of `broken` that no version of Conveyor wrote: every read of its
    // queue fails to decode.
    let bad = std::collections::HashMap::from([
        ("pk".to_string(), conveyor_shared::store::text("ENV#broken")),
        ("sk".to_string(), conveyor_shared::store::text("DEPLOYMENT#acme/shop#bad")),
        ("gsi1pk".to_string(), conveyor_shared::store::text("DEPLOYMENTS#broken")),
        ("gsi1sk".to_string(), conveyor_shared::store::text("000000000001#bad")),
        ("state".to_string(), conveyor_shared::store::text("exploded")),
    ]);
    quiet.table.put_if_absent(bad).await.unwrap();
    let queued = quiet.queue("production", "acme/shop", &sha(3), 100, None, None).await;
    let fanout = quiet.fanout(&endpoint()).await;

    // Past the artifact wait, so production's tick has something to write.
    let now = 100 + 1801;
    let err = fanout.tick(now).await.unwrap_err().to_string();
    assert!(err.contains("broken") && !err.contains("production"), "{err}");
    let ticked = quiet.state(&queued).await;
    assert_eq!(ticked.state, Failed, "production was ticked after broken failed: {ticked:?}");
    assert!(ticked.reason.contains("artifact is missing"), "{}", ticked.reason);
    let recorded = quiet.table.tick_error("broken", now).await.unwrap();
    assert!(recorded.is_some_and(|(error, at)| error.contains("decode") && at == now));
    assert_eq!(quiet.table.tick_error("production", now).await.unwrap(), None);
}

#[tokio::test]
async fn a_deployment_ends_whole_or_not_at_all_and_the_next_tick_finishes_it() {
    let tag = unique_name("crash");
    let quiet = Quiet::new(&config(&tag, "waves = [\"100%\"]")).await;
    launch_instances(&quiet.sdk, 1, &tag).await;
    let fanout = quiet.fanout(&endpoint()).await;
    let now = 1_800_000_000;
    let first = quiet.queue("production", "acme/shop", &sha(4), now, None, Some(b"four")).await;
    fanout.tick(now).await.unwrap();
    for target in quiet.table.deployment_targets("production", &first.id()).await.unwrap() {
        quiet.table.count_outcome(&target, Counter::Succeeded, Some("healthy"), now + 1).await.unwrap();
    }

    // The transaction that ends it is refused (as IAM would refuse it); nothing of it lands.
    let proxy = FaultProxy::start(
        |seen| seen.dynamodb_operation() == Some("TransactWriteItems") && seen.body_has(r#"{"S":"succeeded"}"#),
        1,
        Fault::dynamodb("AccessDeniedException", "injected: not allowed"),
    )
    .await;
    let faulty = quiet.fanout(&proxy.url()).await;
    assert!(faulty.tick(now + 2).await.is_err());
    assert_eq!(proxy.faulted(), 1);
    assert_eq!(quiet.state(&first).await.state, InProgress, "not half-ended");
    assert!(quiet.table.lock("production").await.unwrap().is_some(), "still its environment's");
    assert!(quiet.table.last_release("production").await.unwrap().is_none());

    faulty.tick(now + 3).await.unwrap();
    assert_eq!(quiet.state(&first).await.state, Succeeded);
    assert!(quiet.table.lock("production").await.unwrap().is_none());
    let last = quiet.table.last_release("production").await.unwrap().unwrap();
    assert_eq!(last.version, first.version);

    // The next deployment's rollback target is the release that just succeeded.
    let second = quiet.queue("production", "acme/shop", &sha(5), now + 4, None, Some(b"five")).await;
    fanout.tick(now + 5).await.unwrap();
    let targets = quiet.table.deployment_targets("production", &second.id()).await.unwrap();
    assert!(!targets.is_empty());
    assert!(targets.iter().all(|t| t.previous.as_ref().map(|p| p.version.as_str()) == Some(first.version.as_str())));
}

#[tokio::test]
async fn queued_builds_start_in_commit_order_whatever_their_shas() {
    let tag = unique_name("order");
    let quiet = Quiet::new(&config(&tag, "waves = [\"100%\"]")).await;
    launch_instances(&quiet.sdk, 1, &tag).await;
    let now = 1_800_000_000;
    // Both CI successes arrive in the same second; the later push carries the smaller sha.
    let older = quiet.queue("production", "acme/shop", &sha(0xee), now, Some(now - 20), Some(b"old")).await;
    let newer = quiet.queue("production", "acme/shop", &sha(0x11), now, Some(now - 10), Some(b"new")).await;
    quiet.fanout(&endpoint()).await.tick(now).await.unwrap();
    assert_eq!(quiet.state(&newer).await.state, InProgress);
    let superseded = quiet.state(&older).await;
    assert_eq!(superseded.state, Superseded);
    assert!(superseded.reason.contains(&newer.version), "{}", superseded.reason);
}

#[tokio::test]
async fn an_unreadable_artifact_fails_the_deployment_with_what_to_check() {
    let tag = unique_name("forbidden");
    let quiet = Quiet::new(&config(&tag, "waves = [\"100%\"]")).await;
    launch_instances(&quiet.sdk, 1, &tag).await;
    let queued = quiet.queue("production", "acme/shop", &sha(6), 100, None, None).await;
    // Without s3:ListBucket, S3 answers a missing key with 403, not 404.
    let proxy = FaultProxy::start(|seen| seen.method == hyper::Method::HEAD, u32::MAX, Fault::s3_forbidden()).await;
    quiet.fanout(&proxy.url()).await.tick(200).await.unwrap();
    let failed = quiet.state(&queued).await;
    assert_eq!(failed.state, Failed, "not left pending: {failed:?}");
    for words in [queued.artifact.as_str(), "403", "s3:ListBucket", "conveyor artifact push"] {
        assert!(failed.reason.contains(words), "`{words}` in {}", failed.reason);
    }
    assert!(quiet.table.lock("production").await.unwrap().is_none(), "a failed start holds no lock");
}

/// Sends an agent's message straight to the function (its HTTP handler, no server), with the
/// instance's credential when the agent has one.
async fn send(
    fanout: &deploy_fanout::Fanout,
    token: &str,
    credential: Option<&str>,
    path: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let mut request = http::Request::builder()
        .method("POST")
        .uri(path)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json");
    if let Some(credential) = credential {
        request = request.header(deploy_fanout::CREDENTIAL_HEADER, credential);
    }
    let request = request.body(bytes::Bytes::from(body.to_string())).unwrap();
    let response = fanout.respond(request).await;
    (response.status().as_u16(), serde_json::from_slice(response.body()).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread")]
async fn reports_that_meet_transaction_conflicts_are_all_counted_and_none_is_refused() {
    let tag = unique_name("conflict");
    let quiet = Quiet::new(&config(&tag, "waves = [\"100%\"]")).await;
    let ids = launch_instances(&quiet.sdk, 4, &tag).await;
    let now = conveyor_shared::unix_now();
    let queued = quiet.queue("production", "acme/shop", &sha(7), now, None, Some(b"seven")).await;
    quiet.fanout(&endpoint()).await.tick(now).await.unwrap();
    let token =
        conveyor_cli::ops::create_environment_token(&quiet.table, &quiet.config, "production", None).await.unwrap();
    let token = String::from_utf8(token.expose().to_vec()).unwrap();

    // Every report's transaction updates the deployment's counters: in DynamoDB they cancel
    // each other. The first six are cancelled with TransactionConflict.
    let proxy = FaultProxy::start(
        |seen| seen.dynamodb_operation() == Some("TransactWriteItems") && seen.body_has("#counter"),
        6,
        Fault::transaction_conflict(2),
    )
    .await;
    let faulty = quiet.fanout(&proxy.url()).await;
    // Each agent enrols with its first poll, as agents do, then reports with its credential.
    let mut credentials = std::collections::HashMap::new();
    for id in &ids {
        let poll = json!({"instance_id": id, "environment": "production", "current": null});
        let (status, answer) = send(&faulty, &token, None, "/agent/v1/poll", poll).await;
        assert_eq!(status, 200, "{answer}");
        credentials.insert(id.clone(), answer["credential"].as_str().unwrap().to_owned());
    }
    let mut reports = tokio::task::JoinSet::new();
    for id in &ids {
        let (faulty, token, credential) = (faulty.clone(), token.clone(), credentials[id].clone());
        let body = json!({"instance_id": id, "environment": "production", "version": queued.version,
                          "outcome": "succeeded", "healthy": true, "current": queued.version, "log": "ok"});
        reports.spawn(async move { send(&faulty, &token, Some(&credential), "/agent/v1/report", body).await });
    }
    let answers = reports.join_all().await;
    assert!(answers.iter().all(|(status, _)| *status == 200), "{answers:?}");
    assert_eq!(proxy.faulted(), 6, "the conflicts happened");
    let done = quiet.state(&queued).await;
    assert_eq!(done.state, Succeeded, "{done:?}");
    assert_eq!(done.run.succeeded, [4], "each report counted once");

    // A report sent again (its answer was lost) changes nothing and is still acknowledged.
    let again = json!({"instance_id": ids[0], "environment": "production", "version": queued.version,
                       "outcome": "succeeded", "healthy": true, "current": queued.version});
    assert_eq!(send(&faulty, &token, Some(&credentials[&ids[0]]), "/agent/v1/report", again).await.0, 200);
    assert_eq!(quiet.state(&queued).await.run.succeeded, [4]);
}

#[tokio::test(flavor = "multi_thread")]
async fn polls_while_a_deployment_is_planned_drop_no_instance() {
    let tag = unique_name("planning");
    let app = TestApp::spawn(&config(&tag, "waves = [1, \"100%\"]")).await;
    let ids = launch_instances(&app.sdk, 150, &tag).await;
    let token = conveyor_cli::ops::create_environment_token(&app.table, &app.config, "production", None).await.unwrap();
    let authorization = format!("Bearer {}", String::from_utf8(token.expose().to_vec()).unwrap());
    let (repository, sha) = ("acme/shop", sha(8));
    conveyor_e2e::push_artifact(&app.artifacts_bucket, repository, &sha, b"eight".to_vec()).await;
    // Every agent polls in a tight loop while the stream's planner writes 150 targets in
    // batches and starts the deployment.
    let polling = {
        let (app, ids, authorization) = (app.clone(), ids.clone(), authorization.clone());
        tokio::spawn(async move {
            let mut answers = Vec::new();
            for _ in 0..200 {
                for id in &ids {
                    let body = json!({"instance_id": id, "environment": "production", "current": null}).to_string();
                    let answer =
                        app.request("POST", "/agent/v1/poll", &[("authorization", &authorization)], body).await;
                    answers.push((id.clone(), answer.body["action"].clone(), answer.body["poll_after"].clone()));
                }
                let deployments = app.deployments("production").await;
                if deployments.first().is_some_and(|d| d["state"] == "in_progress") {
                    break;
                }
            }
            answers
        })
    };
    let ship = json!({
        "action": "completed",
        "workflow_run": {"id": 1, "name": "CI", "workflow_id": 1, "head_branch": "main", "head_sha": sha,
                         "run_attempt": 1, "conclusion": "success", "updated_at": "2026-11-22T00:00:00Z",
                         "head_repository": {"full_name": repository}},
        "repository": {"full_name": repository}
    });
    assert_eq!(app.deliver("workflow_run", "planning-race", ship.to_string().as_bytes()).await.status, 200);
    let answers = polling.await.unwrap();
    let id = conveyor_shared::domain::deployment_id(repository, &sha);
    let targets = app.table.deployment_targets("production", &id).await.unwrap();
    assert_eq!(targets.len(), ids.len());
    assert!(
        targets.iter().all(|t| t.state == TargetState::Waiting),
        "no target was settled while its deployment was planned: {:?}",
        targets.iter().filter(|t| t.state != TargetState::Waiting).map(|t| &t.instance).collect::<Vec<_>>()
    );
    assert!(answers.len() >= ids.len(), "the agents polled during planning");
    let canary = &targets.iter().find(|t| t.wave == 0).unwrap().instance;
    // Only the canary is ever handed the release (once the deployment runs: the loop may poll
    // a little past the start).
    assert!(answers.iter().all(|(id, action, _)| action == "none" || id == canary), "only the canary deploys");

    // Once it runs: the canary is handed the release; a later wave polls at the idle pace.
    let poll = |id: &str| {
        let body = json!({"instance_id": id, "environment": "production", "current": null}).to_string();
        let (app, authorization) = (app.clone(), authorization.clone());
        async move { app.request("POST", "/agent/v1/poll", &[("authorization", &authorization)], body).await }
    };
    let later = &targets.iter().find(|t| t.wave == 1).unwrap().instance;
    assert_eq!(poll(canary).await.body["action"], "deploy");
    let waiting = poll(later).await;
    assert_eq!((waiting.body["action"].as_str(), waiting.body["poll_after"].as_u64()), (Some("none"), Some(2)));
}

#[tokio::test]
async fn the_stream_alone_starts_a_new_deployment_and_the_next_when_one_ends() {
    use conveyor_shared::triggers::{StreamEvent, handle_batch};
    let tag = unique_name("stream");
    let quiet = Quiet::new(&config(&tag, "waves = [\"100%\"]")).await;
    launch_instances(&quiet.sdk, 1, &tag).await;
    let fanout = quiet.fanout(&endpoint()).await;
    let now = conveyor_shared::unix_now();
    let first = quiet.queue("production", "acme/shop", &sha(9), now, None, Some(b"nine")).await;
    let second = quiet.queue("production", "acme/shop", &sha(10), now + 1, None, Some(b"ten")).await;
    // A stream record as Lambda delivers it (DynamoDB images), for the newest deployment.
    let record = |event: &str, sk: String, state: &str, old: Option<&str>| {
        let mut dynamodb =
            json!({"NewImage": {"sk": {"S": sk}, "environment": {"S": "production"}, "state": {"S": state}}});
        if let Some(old) = old {
            dynamodb["OldImage"] = json!({"state": {"S": old}});
        }
        dynamodb["SequenceNumber"] = json!("100");
        dynamodb["SizeBytes"] = json!(64);
        let record = json!({"eventID": "1", "eventName": event, "eventSource": "aws:dynamodb", "awsRegion": "us-east-1", "dynamodb": dynamodb});
        serde_json::from_value::<StreamEvent>(json!({"Records": [record]})).unwrap()
    };
    let new = record("INSERT", format!("DEPLOYMENT#{}", second.id()), "pending", None);
    assert!(handle_batch(&fanout, &new).await.batch_item_failures.is_empty());
    assert_eq!(quiet.state(&second).await.state, InProgress, "the newest starts");
    assert_eq!(quiet.state(&first).await.state, Superseded);
    // It ends; the stream of that change starts whatever is queued next (here: nothing).
    for target in quiet.table.deployment_targets("production", &second.id()).await.unwrap() {
        quiet.table.count_outcome(&target, Counter::Succeeded, None, now + 2).await.unwrap();
    }
    fanout.advance(&quiet.config.environments[0], &second.id(), now + 3, &[]).await.unwrap();
    assert_eq!(quiet.state(&second).await.state, Succeeded);
    let third = quiet.queue("production", "acme/shop", &sha(11), now + 4, None, Some(b"eleven")).await;
    let ended = record("MODIFY", format!("DEPLOYMENT#{}", second.id()), "succeeded", Some("in_progress"));
    assert!(handle_batch(&fanout, &ended).await.batch_item_failures.is_empty());
    assert_eq!(quiet.state(&third).await.state, InProgress, "started by the record of the one that ended");
}

#[tokio::test]
async fn a_deployment_waits_for_its_artifact_then_fails_naming_where_it_looked() {
    let tag = unique_name("artifact-wait");
    let waiting = |tag: &str| {
        config(tag, "waves = [\"100%\"]")
            .replace("repository = \"*\"\n", "repository = \"*\"\nartifact_wait = \"10m\"\n")
    };
    let quiet = Quiet::new(&waiting(&tag)).await;
    launch_instances(&quiet.sdk, 1, &tag).await;
    let fanout = quiet.fanout(&endpoint()).await;
    let built = 1_800_000_000;

    // CI said success before the upload finished: the deployment waits, holding no lock.
    let late = quiet.queue("production", "acme/shop", &sha(7), built, None, None).await;
    fanout.tick(built + 60).await.unwrap();
    assert_eq!(quiet.state(&late).await.state, Pending);
    assert!(quiet.table.lock("production").await.unwrap().is_none(), "waiting holds no lock");
    conveyor_e2e::push_artifact(&quiet.bucket, "acme/shop", &sha(7), b"seven".to_vec()).await;
    fanout.tick(built + 120).await.unwrap();
    assert_eq!(quiet.state(&late).await.state, InProgress, "started once the artifact is there");

    // One that never comes fails after the wait, saying where it looked.
    let other = unique_name("artifact-never");
    let quiet = Quiet::new(&waiting(&other)).await;
    let fanout = quiet.fanout(&endpoint()).await;
    let never = quiet.queue("production", "acme/shop", &sha(8), built, None, None).await;
    fanout.tick(built + 9 * 60).await.unwrap();
    assert_eq!(quiet.state(&never).await.state, Pending);
    fanout.tick(built + 10 * 60).await.unwrap();
    let failed = quiet.state(&never).await;
    assert_eq!(failed.state, Failed);
    for words in [never.artifact.as_str(), "600 s after the build", "conveyor artifact push"] {
        assert!(failed.reason.contains(words), "`{words}` in {}", failed.reason);
    }
}
