use bytes::Bytes;
use conveyor_e2e::{SECRET, TestApp, fixtures_dir, sample};
use conveyor_shared::signature::sign_github;
use conveyor_shared::store::Key;

pub(crate) const CONFIG: &str = r#"
[[environment]]
name = "production"
branch = "main"
repository = "acme/shop"

[[environment]]
name = "staging"
branch = "develop"
repository = "*"
"#;

pub(crate) const MAIN_SHA: &str = "3f4a9c2e7b1d5a6c8e0f2b4d6a8c0e1f3a5b7c9d";

#[tokio::test]
async fn ci_success_on_a_tracked_branch_creates_one_pending_deployment() {
    let app = TestApp::spawn(CONFIG).await;
    let answer = app.deliver("workflow_run", "d-1", &sample("github/workflow_run/ci-success-main.json")).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body["outcome"], "recorded");
    assert_eq!(answer.body["deployments"][0]["environment"], "production");

    let deployments = app.deployments("production").await;
    assert_eq!(deployments.len(), 1, "{deployments:?}");
    let deployment = &deployments[0];
    assert_eq!(deployment["state"], "pending");
    assert_eq!(deployment["sha"], MAIN_SHA);
    assert_eq!(deployment["version"], &MAIN_SHA[..12]);
    assert_eq!(deployment["artifact"], format!("s3://conveyor-artifacts/acme/shop/{MAIN_SHA}.tar.gz"));
    assert!(app.deployments("staging").await.is_empty());

    // The check suite of the same commit succeeds too: still exactly one deployment.
    let answer = app.deliver("check_suite", "d-2", &sample("github/check_suite/success-main.json")).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body["deployments"], serde_json::json!([]));
    assert_eq!(app.deployments("production").await.len(), 1);
    assert_eq!(app.builds().await.len(), 2, "both builds are recorded");
}

#[tokio::test]
async fn a_failed_build_is_recorded_and_deploys_nothing() {
    let app = TestApp::spawn(CONFIG).await;
    let answer = app.deliver("workflow_run", "d-fail", &sample("github/workflow_run/ci-failure-main.json")).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let builds = app.builds().await;
    assert_eq!(builds.len(), 1);
    assert_eq!(builds[0]["conclusion"], "failure");
    assert!(app.deployments("production").await.is_empty());
}

#[tokio::test]
async fn a_push_records_its_commits() {
    let app = TestApp::spawn(CONFIG).await;
    let answer = app.deliver("push", "d-push", &sample("github/push/main.json")).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let commit = app.table.get(Key::commit("acme/shop", MAIN_SHA)).await.unwrap().expect("commit recorded");
    assert_eq!(commit["title"].as_s().unwrap(), "Fix the cart total rounding");
    assert_eq!(commit["committed_at"].as_n().unwrap(), "1795165390");
    let first = app.table.get(Key::commit("acme/shop", "2e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d")).await.unwrap();
    assert!(first.is_some());
    let push = app.table.get(Key::push("acme/shop", "d-push")).await.unwrap().expect("push recorded");
    assert_eq!(push["ref_kind"].as_s().unwrap(), "branch");
}

#[tokio::test]
async fn a_tag_deletion_is_recorded_as_such() {
    let fixtures = fixtures_dir();
    let app = TestApp::spawn(CONFIG).await;
    let body = std::fs::read(fixtures.join("github/push/1.payload.json")).unwrap();
    assert_eq!(app.deliver("push", "d-tag", &body).await.status, 200);
    let push = app.table.get(Key::push("Codertocat/Hello-World", "d-tag")).await.unwrap().expect("push recorded");
    assert_eq!(push["ref_kind"].as_s().unwrap(), "tag");
    assert_eq!(push["ref_name"].as_s().unwrap(), "simple-tag");
    assert_eq!(push["deleted"].as_bool().unwrap(), &true);
}

#[tokio::test]
async fn a_repeated_delivery_is_a_duplicate_with_no_effect() {
    let app = TestApp::spawn(CONFIG).await;
    let body = sample("github/workflow_run/ci-success-main.json");
    let first = app.deliver("workflow_run", "same-guid", &body).await;
    assert_eq!(first.body["duplicate"], false);
    let again = app.deliver("workflow_run", "same-guid", &body).await;
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.body["duplicate"], true);
    assert_eq!(app.builds().await.len(), 1);
    assert_eq!(app.deployments("production").await.len(), 1);
}

#[tokio::test]
async fn fifty_concurrent_copies_are_processed_once() {
    let app = TestApp::spawn(CONFIG).await;
    let body = sample("github/workflow_run/ci-success-main.json");
    let copies: Vec<_> = (0..50)
        .map(|_| {
            let (app, body) = (app.clone(), body.clone());
            tokio::spawn(async move { app.deliver("workflow_run", "burst", &body).await })
        })
        .collect();
    let mut answers = Vec::new();
    for copy in copies {
        answers.push(copy.await.unwrap());
    }
    // Copies that arrive while the first is processed are told to come back (409), not that
    // it is done; copies that arrive after it finished are duplicates.
    for answer in &answers {
        let in_flight = answer.status == 409 && answer.body["error"]["code"] == "in_progress";
        assert!(answer.status == 200 || in_flight, "{answer:?}");
    }
    let fresh = answers.iter().filter(|a| a.status == 200 && a.body["duplicate"] == false).count();
    assert_eq!(fresh, 1, "exactly one copy is processed");
    assert_eq!(app.builds().await.len(), 1);
    assert_eq!(app.deployments("production").await.len(), 1);
    let late = app.deliver("workflow_run", "burst", &body).await;
    assert_eq!((late.status, &late.body["duplicate"]), (200, &serde_json::json!(true)), "{late:?}");
}

#[tokio::test]
async fn a_delivery_still_being_processed_is_not_called_a_duplicate() {
    let app = TestApp::spawn(CONFIG).await;
    let body = sample("github/workflow_run/ci-success-main.json");
    // Another attempt holds the claim (it is processing, or it crashed a moment ago).
    let key = conveyor_shared::store::Key::delivery("4242", "held");
    let now = conveyor_shared::unix_now();
    let held = app.table.claim(key.clone(), "workflow_run", "other-attempt", now, 3600).await.unwrap();
    assert_eq!(held, conveyor_shared::store::Claim::Claimed);

    let answer = app.deliver("workflow_run", "held", &body).await;
    assert_eq!((answer.status, answer.body["error"]["code"].as_str()), (409, Some("in_progress")), "{answer:?}");
    assert!(app.builds().await.is_empty(), "nothing recorded while another attempt holds it");

    // An attempt that crashed holds it only until its lease (20 s) runs out.
    let crashed = conveyor_shared::store::Key::delivery("4242", "crashed");
    app.table.claim(crashed, "workflow_run", "dead-attempt", now - 21, 3600).await.unwrap();
    let taken_over = app.deliver("workflow_run", "crashed", &body).await;
    assert_eq!((taken_over.status, &taken_over.body["duplicate"]), (200, &serde_json::json!(false)), "{taken_over:?}");

    // The first attempt failed and gave its claim back: the redelivery is processed in full.
    app.table.release_claim(key, "other-attempt").await.unwrap();
    let redelivered = app.deliver("workflow_run", "held", &body).await;
    assert_eq!((redelivered.status, &redelivered.body["duplicate"]), (200, &serde_json::json!(false)));
    assert_eq!(app.builds().await.len(), 1, "the same build, recorded once");
    let again = app.deliver("workflow_run", "held", &body).await;
    assert_eq!((again.status, &again.body["duplicate"]), (200, &serde_json::json!(true)), "{again:?}");
}

/// Headers of a signed JSON delivery, with the signature over `body`.
fn signed(event: &'static str, delivery: &'static str, body: &[u8]) -> Vec<(&'static str, String)> {
    vec![
        ("content-type", "application/json".into()),
        ("x-github-event", event.into()),
        ("x-github-delivery", delivery.into()),
        ("x-github-hook-id", "4242".into()),
        ("x-hub-signature-256", sign_github(SECRET.as_bytes(), body)),
    ]
}

async fn post(app: &TestApp, headers: &[(&str, String)], body: Vec<u8>) -> conveyor_e2e::Answer {
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    app.request("POST", "/webhooks/github", &headers, Bytes::from(body)).await
}

/// After a rejection, the same delivery id must still be processed in full.
async fn assert_nothing_written(app: &TestApp, delivery: &'static str) {
    assert!(app.builds().await.is_empty());
    assert!(app.deployments("production").await.is_empty());
    let body = sample("github/workflow_run/ci-success-main.json");
    let answer = app.deliver("workflow_run", delivery, &body).await;
    assert_eq!(answer.body["duplicate"], false, "the rejected delivery left no dedupe record: {answer:?}");
}

#[tokio::test]
async fn bad_signatures_are_401_and_write_nothing() {
    let app = TestApp::spawn(CONFIG).await;
    let body = sample("github/workflow_run/ci-success-main.json");
    let mut headers = signed("workflow_run", "d-sig", &body);
    headers[4].1 = sign_github(b"not the secret", &body);
    let answer = post(&app, &headers, body.clone()).await;
    assert_eq!(answer.status, 401);
    assert_eq!(answer.body["error"]["code"], "invalid_signature");
    headers.remove(4);
    let answer = post(&app, &headers, body.clone()).await;
    assert_eq!(answer.status, 401);
    assert!(answer.body["error"]["message"].as_str().unwrap().contains("missing"));
    // Signed over other bytes than those sent (a re-serialised body does not verify).
    let mut tampered = body.clone();
    tampered.push(b' ');
    let answer = post(&app, &signed("workflow_run", "d-sig", &body), tampered).await;
    assert_eq!(answer.status, 401);
    assert_nothing_written(&app, "d-sig").await;
}

#[tokio::test]
async fn malformed_json_under_a_valid_signature_is_400_naming_the_problem() {
    let app = TestApp::spawn(CONFIG).await;
    let body =
        br#"{"action": "completed", "workflow_run": {"id": 1}, "repository": {"full_name": "acme/shop"}}"#.to_vec();
    let answer = post(&app, &signed("workflow_run", "d-bad", &body), body).await;
    assert_eq!(answer.status, 400, "{answer:?}");
    assert_eq!(answer.body["error"]["code"], "invalid_payload");
    assert!(answer.body["error"]["message"].as_str().unwrap().contains("head_sha"), "{answer:?}");
    let body = b"{\"zen\": ".to_vec();
    let answer = post(&app, &signed("ping", "d-bad", &body), body).await;
    assert_eq!(answer.status, 400);
    assert_nothing_written(&app, "d-bad").await;
}

#[tokio::test]
async fn oversized_and_unsupported_bodies_are_refused() {
    let app = TestApp::spawn(CONFIG).await;
    let huge = vec![b' '; 25 * 1024 * 1024 + 1];
    let answer = post(&app, &signed("push", "d-huge", &huge), huge).await;
    assert_eq!(answer.status, 413, "{answer:?}");
    assert_eq!(answer.body["error"]["code"], "payload_too_large");

    let body = sample("github/workflow_run/ci-success-main.json");
    let mut headers = signed("workflow_run", "d-type", &body);
    headers[0].1 = "text/plain".into();
    let answer = post(&app, &headers, body).await;
    assert_eq!(answer.status, 415);
    assert_eq!(answer.body["error"]["code"], "unsupported_content_type");

    let body = sample("github/workflow_run/ci-success-main.json");
    let mut headers = signed("workflow_run", "d-type", &body);
    headers.remove(2);
    let answer = post(&app, &headers, body).await;
    assert_eq!(answer.status, 400);
    assert!(answer.body["error"]["message"].as_str().unwrap().contains("X-GitHub-Delivery"));
    assert_nothing_written(&app, "d-type").await;
}

#[tokio::test]
async fn form_encoded_deliveries_are_accepted() {
    let app = TestApp::spawn(CONFIG).await;
    let json = String::from_utf8(sample("github/workflow_run/ci-success-main.json")).unwrap();
    let form: String = form_encode(&json);
    let body = form.into_bytes();
    let mut headers = signed("workflow_run", "d-form", &body);
    headers[0].1 = "application/x-www-form-urlencoded".into();
    let answer = post(&app, &headers, body).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(app.deployments("production").await.len(), 1);
}

fn form_encode(json: &str) -> String {
    let mut out = String::from("payload=");
    for byte in json.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => out.push(byte as char),
            b' ' => out.push('+'),
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

#[tokio::test]
async fn ping_answers_200_and_other_events_202() {
    let app = TestApp::spawn(CONFIG).await;
    let answer = app.deliver("ping", "d-ping", &sample("github/ping/hook-created.json")).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body["zen"], "Keep it logically awesome.");
    let answer = app.deliver("star", "d-star", br#"{"action": "created"}"#).await;
    assert_eq!(answer.status, 202, "{answer:?}");
    assert_eq!(answer.body["outcome"], "ignored");
    let delivery = app.table.get(Key::delivery("4242", "d-star")).await.unwrap().expect("delivery logged");
    assert_eq!(delivery["outcome"].as_s().unwrap(), "ignored");
    assert!(delivery.contains_key("ttl"));
}

#[tokio::test]
async fn every_real_github_payload_is_accepted() {
    let fixtures = fixtures_dir();
    let app = TestApp::spawn("[[environment]]\nname = \"prod\"\nbranch = \"master\"\nrepository = \"*\"\n").await;
    let mut posted = 0;
    for folder in std::fs::read_dir(fixtures.join("github")).unwrap().flatten() {
        let event = folder.file_name().to_string_lossy().into_owned();
        for file in std::fs::read_dir(folder.path()).unwrap().flatten() {
            let body = std::fs::read(file.path()).unwrap();
            let delivery = format!("fixture-{posted}");
            let answer = app.deliver(&event, &delivery, &body).await;
            assert!((200..300).contains(&answer.status), "{}: {answer:?}", file.path().display());
            posted += 1;
        }
    }
    assert!(posted >= 40, "only {posted} fixtures");
    // workflow_run/completed on master succeeded: one deployment for that sha.
    assert!(!app.deployments("prod").await.is_empty());
}

fn push(before: &str, after: &str, pushed_at: i64) -> Vec<u8> {
    serde_json::json!({
        "ref": "refs/heads/main", "before": before, "after": after, "created": false, "deleted": false,
        "forced": false,
        "commits": [{"id": after, "timestamp": "2026-11-22T10:00:00Z", "message": "change", "author": {"name": "Ann"}}],
        "head_commit": {"id": after, "timestamp": "2026-11-22T10:00:00Z", "message": "change"},
        "repository": {"full_name": "acme/shop", "pushed_at": pushed_at}
    })
    .to_string()
    .into_bytes()
}

fn ci_success(sha: &str, run: u64) -> Vec<u8> {
    serde_json::json!({
        "action": "completed",
        "workflow_run": {"id": run, "name": "CI", "workflow_id": 1, "head_branch": "main", "head_sha": sha,
                         "run_attempt": 1, "conclusion": "success", "updated_at": "2026-11-22T10:05:00Z",
                         "head_repository": {"full_name": "acme/shop"}},
        "repository": {"full_name": "acme/shop"}
    })
    .to_string()
    .into_bytes()
}

#[tokio::test]
async fn an_older_commits_late_ci_success_is_recorded_and_deploys_nothing() {
    let app = TestApp::spawn(CONFIG).await;
    let (base, older, newer) = ("a".repeat(40), "b".repeat(40), "c".repeat(40));
    // The pushes arrive out of order; GitHub's `pushed_at` orders them.
    assert_eq!(app.deliver("push", "p-2", &push(&older, &newer, 1_800_000_100)).await.status, 200);
    assert_eq!(app.deliver("push", "p-1", &push(&base, &older, 1_800_000_000)).await.status, 200);
    let head = app.table.branch_head("acme/shop", "main").await.unwrap().unwrap();
    assert_eq!(head.sha, newer, "the late delivery of the older push does not move the head back");

    // The older commit's CI finishes last (or is re-run): recorded, with why, never deployed.
    let answer = app.deliver("workflow_run", "ci-older", &ci_success(&older, 11)).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body["deployments"][0]["state"], "skipped", "{answer:?}");
    let deployments = app.deployments("production").await;
    let skipped = deployments.iter().find(|d| d["sha"] == older.as_str()).unwrap();
    assert_eq!(skipped["state"], "skipped");
    assert!(skipped["reason"].as_str().unwrap().contains("no longer the head of main"), "{skipped}");

    let answer = app.deliver("workflow_run", "ci-newer", &ci_success(&newer, 12)).await;
    assert_eq!(answer.body["deployments"][0]["state"], "pending", "{answer:?}");
    let deployments = app.deployments("production").await;
    let newest = deployments.iter().find(|d| d["sha"] == newer.as_str()).unwrap();
    assert_eq!(newest["pushed_at"], 1_800_000_100, "ordered by its push");

    // A commit the ledger never saw pushed (its push still on its way) still deploys.
    let unseen = "d".repeat(40);
    let answer = app.deliver("workflow_run", "ci-unseen", &ci_success(&unseen, 13)).await;
    assert_eq!(answer.body["deployments"][0]["state"], "pending", "{answer:?}");
}

/// A `workflow_run` delivery of acme/shop on main, as GitHub sends one.
fn run_event(action: &str, workflow: u64, run: u64, name: &str, attempt: u64, conclusion: Option<&str>) -> Vec<u8> {
    serde_json::json!({
        "action": action,
        "workflow_run": {
            "id": run, "name": name, "workflow_id": workflow, "head_branch": "main", "head_sha": MAIN_SHA,
            "path": format!(".github/workflows/{}.yml", name.to_lowercase()), "run_attempt": attempt,
            "status": if action == "completed" { "completed" } else { action }, "conclusion": conclusion,
            "updated_at": format!("2026-11-22T10:{:02}:00Z", run % 60),
            "head_repository": {"full_name": "Acme/Shop"}
        },
        "repository": {"full_name": "Acme/Shop"}
    })
    .to_string()
    .into_bytes()
}

#[tokio::test]
async fn a_commit_deploys_when_every_run_passed_and_a_failed_run_cancels_it_until_a_rerun_passes() {
    // No fan-out: deployments stay as the intake leaves them.
    let app = TestApp::spawn_with(CONFIG, |catalog| {
        catalog.streams.clear();
        catalog.schedules.clear();
    })
    .await;
    let state = |app: &TestApp| {
        let app = app.clone();
        async move { app.deployments("production").await.first().map(|d| (d["state"].clone(), d["reason"].clone())) }
    };

    // The build starts; a quick lint passes: nothing deploys yet (the artifact is not there).
    let build_started = app.deliver("workflow_run", "g-1", &run_event("requested", 1, 11, "Build", 1, None)).await;
    assert_eq!(build_started.status, 200, "{build_started:?}");
    let lint = app.deliver("workflow_run", "g-2", &run_event("completed", 2, 12, "Lint", 1, Some("success"))).await;
    assert_eq!(lint.body["deployments"], serde_json::json!([]), "{lint:?}");
    assert_eq!(lint.body["gate"]["production"], "waiting for workflow Build (.github/workflows/build.yml)");
    assert_eq!(state(&app).await, None);

    // The build passes: every run seen passed. The repository's casing is GitHub's, not the config's.
    let built = app.deliver("workflow_run", "g-3", &run_event("completed", 1, 11, "Build", 1, Some("success"))).await;
    assert_eq!(built.body["deployments"][0]["environment"], "production", "{built:?}");
    assert_eq!(state(&app).await.unwrap().0, "pending");

    // A late `in_progress` of the build changes nothing.
    let late = app.deliver("workflow_run", "g-4", &run_event("in_progress", 1, 11, "Build", 1, None)).await;
    assert_eq!(late.body["gate"]["production"], "every run passed (the deployment exists already)", "{late:?}");

    // The tests fail before the deployment started: it is cancelled, with the reason.
    let tests = app.deliver("workflow_run", "g-5", &run_event("completed", 3, 13, "Tests", 1, Some("failure"))).await;
    assert_eq!(tests.status, 200, "{tests:?}");
    let (cancelled, reason) = state(&app).await.unwrap();
    assert_eq!(cancelled, "skipped");
    assert_eq!(reason, "cancelled before it started: workflow Tests (.github/workflows/tests.yml) concluded failure");

    // The tests are re-run (attempt 2) and pass: the deployment is back.
    let rerun = app.deliver("workflow_run", "g-6", &run_event("requested", 3, 13, "Tests", 2, None)).await;
    assert_eq!(rerun.body["gate"]["production"], "waiting for workflow Tests (.github/workflows/tests.yml)");
    assert_eq!(state(&app).await.unwrap().0, "skipped");
    let passed = app.deliver("workflow_run", "g-7", &run_event("completed", 3, 13, "Tests", 2, Some("success"))).await;
    assert_eq!(passed.body["deployments"][0]["environment"], "production", "{passed:?}");
    let (pending, reason) = state(&app).await.unwrap();
    assert_eq!((pending.as_str(), reason.as_str()), (Some("pending"), Some("Build, Lint, Tests passed on main")));

    // The first attempt's failure, redelivered late, does not undo the re-run.
    let stale = app.deliver("workflow_run", "g-8", &run_event("completed", 3, 13, "Tests", 1, Some("failure"))).await;
    assert_eq!(stale.body["gate"]["production"], "every run passed (the deployment exists already)", "{stale:?}");
    assert_eq!(state(&app).await.unwrap().0, "pending");
}

#[tokio::test]
async fn a_push_too_large_for_lambda_is_recorded_from_the_delivery_log_once() {
    let app = TestApp::spawn(CONFIG).await;
    // Over Lambda's 6 MB: AWS answers GitHub 413 before the function runs.
    let commits: Vec<_> = (0..2_000)
        .map(|n| {
            serde_json::json!({"id": format!("{n:040x}"), "timestamp": "2026-11-22T10:00:00Z",
                               "message": "x".repeat(3_300), "author": {"name": "Ann"}})
        })
        .collect();
    let body = serde_json::json!({
        "ref": "refs/heads/main", "before": "0".repeat(40), "after": format!("{:040x}", 1_999),
        "created": false, "deleted": false, "forced": false, "commits": commits,
        "head_commit": null, "repository": {"full_name": "acme/shop", "pushed_at": 1_795_000_000}
    })
    .to_string()
    .into_bytes();
    assert!(body.len() > 6 * 1024 * 1024, "{} bytes", body.len());
    let record = || {
        let config = std::sync::Arc::new(app.config.clone());
        conveyor_cli::replay::record_github(
            app.table.clone(),
            config,
            &app.artifacts_bucket,
            "push",
            "huge-push",
            body.clone(),
        )
    };
    let first = record().await.unwrap();
    assert_eq!(first.status, 200, "{}", first.body);
    assert!(app.table.commit_known("acme/shop", &format!("{:040x}", 1_999)).await.unwrap());
    assert!(app.table.commit_known("acme/shop", &format!("{:040x}", 0)).await.unwrap());
    let again = record().await.unwrap();
    assert!(again.body.contains("\"duplicate\":true"), "{}", again.body);
}
