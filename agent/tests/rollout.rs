//! Rollouts with real agent processes: four agents play four EC2 instances registered in the
//! emulator, the dev server plays the fan-out's triggers, and a health endpoint on loopback
//! answers for each instance from the release it runs.

// Each test binary uses part of the support module.
#[allow(dead_code)]
mod support;

use support::rig::*;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn releases_roll_out_in_waves_and_a_broken_one_rolls_back() {
    let rig = rig(4).await;
    let (good, better, broken) = (sha(1), sha(2), sha(3));

    rig.ship(&good, "ok").await;
    let deployment = rig.finished(&good).await;
    assert_eq!(deployment["state"], "succeeded", "{deployment}");
    assert!(rig.fleet.all_run(&good[..12]));
    let mut waves: Vec<usize> = rig.targets(&good).await.iter().map(|t| t.wave).collect();
    waves.sort();
    assert_eq!(waves, [0, 1, 2, 2], "a canary, then up to half, then the rest");

    rig.ship(&better, "ok").await;
    assert_eq!(rig.finished(&better).await["state"], "succeeded");
    assert!(rig.fleet.all_run(&better[..12]));

    rig.ship(&broken, "broken").await;
    let deployment = rig.finished(&broken).await;
    assert_eq!(deployment["state"], "rolled_back", "{deployment}");
    assert!(deployment["reason"].as_str().unwrap().contains("failed in wave 1"), "{deployment}");
    let targets = rig.targets(&broken).await;
    assert!(targets.iter().filter(|t| t.wave > 0).all(|t| untouched(t.state)), "later waves untouched");
    rig.wait_until("the canary is back on the last good release", || rig.fleet.all_run(&better[..12])).await;
    // `conveyor status`: why it stopped, and which host runs what.
    let runs_better = |status: &str| {
        rig.instances.iter().all(|id| {
            let line = status.lines().rfind(|l| l.contains(id.as_str())).unwrap_or("");
            line.contains(&format!("runs {}", &better[..12]))
        })
    };
    let mut status = String::new();
    for _ in 0..40 {
        // The canary's report of its rollback may still be on its way.
        status = conveyor_cli::ops::status(&rig.app.operator_table("status").await, "production").await.unwrap();
        if runs_better(&status) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(runs_better(&status), "{status}");
    let stopped = status.lines().find(|l| l.contains(&broken[..12]) && l.contains("rolled_back")).unwrap_or("");
    assert!(stopped.contains("failed in wave 1"), "{status}");
    assert!(!status.lines().any(|l| l.contains(" waiting ")), "no wave is shown as waiting: {status}");
    let alerts = rig.app.table.recent_alerts(10).await.unwrap();
    assert!(alerts.iter().any(|a| a.kind.as_str() == "deployment_rolled_back"), "{alerts:?}");
    // The team's chat heard every step, and why the fleet went back, and where to.
    let said = |text: &str| rig.slack.texts().into_iter().find(|t| t.contains(text));
    rig.wait_until("the rollback reaches the team's Slack", || said("rolled back").is_some()).await;
    let rollback = said("rolled back").unwrap();
    assert!(
        rollback.contains(&format!("[critical] Deployment of {} to production rolled back", &broken[..12])),
        "{rollback}"
    );
    assert!(rollback.contains("Cause: ") && rollback.contains("failed in wave 1"), "{rollback}");
    assert!(rollback.contains(&format!("going back to {}", &better[..12])), "{rollback}");
    assert!(rollback.contains("Action: Read the failing instance's log tail"), "{rollback}");
    for event in [
        format!("Deployment of {} to production started", &good[..12]),
        format!("Deployment of {} to production succeeded", &better[..12]),
    ] {
        rig.wait_until("deployment events reach the team's Slack", || said(&event).is_some()).await;
    }
    // The same facts as data (`conveyor status --json`).
    let data = conveyor_cli::ops::status_json(&rig.app.operator_table("status").await, "production").await.unwrap();
    let states: Vec<&str> =
        data["deployments"].as_array().unwrap().iter().filter_map(|d| d["state"].as_str()).collect();
    assert!(states.contains(&"rolled_back") && states.contains(&"succeeded"), "{data}");
    let instances = data["instances"].as_array().unwrap();
    assert_eq!(instances.len(), rig.instances.len(), "{data}");
    assert!(instances.iter().all(|i| i["current"] == better[..12]), "{data}");
}

#[tokio::test(flavor = "multi_thread")]
async fn health_failing_in_wave_two_restores_waves_one_and_two() {
    let rig = rig(4).await;
    let (good, next) = (sha(4), sha(5));
    rig.ship(&good, "ok").await;
    assert_eq!(rig.finished(&good).await["state"], "succeeded");

    // The instance of wave 2 in the next rollout is unhealthy whatever it runs.
    let plan = rig.targets(&good).await;
    let wave_two = plan.iter().find(|t| t.wave == 1).unwrap().instance.clone();
    rig.sick.lock().unwrap().insert(wave_two.clone());
    rig.ship(&next, "ok").await;
    let deployment = rig.finished(&next).await;
    assert_eq!(deployment["state"], "rolled_back", "{deployment}");
    assert!(deployment["reason"].as_str().unwrap().contains(&wave_two), "{deployment}");
    let targets = rig.targets(&next).await;
    assert!(targets.iter().filter(|t| t.wave == 2).all(|t| untouched(t.state)), "wave 3 untouched");
    rig.wait_until("waves 1 and 2 are restored", || rig.fleet.all_run(&good[..12])).await;
    assert!(rig.instances.len() == 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_canary_whose_agent_died_times_out_and_rolls_back() {
    let mut rig = rig(4).await;
    let (good, next) = (sha(6), sha(7));
    rig.ship(&good, "ok").await;
    assert_eq!(rig.finished(&good).await["state"], "succeeded");
    // The plan is the same for the same fleet: the canary of `next` is this one.
    let canary = rig.wave_of(&good, 0).await.remove(0);
    rig.kill_agent(&canary);
    rig.ship(&next, "ok").await;
    let deployment = rig.finished(&next).await;
    assert_eq!(deployment["state"], "rolled_back", "{deployment}");
    assert!(deployment["reason"].as_str().unwrap().contains("timed out"), "{deployment}");
    assert!(rig.wave_of(&next, 1).await.iter().all(|id| rig.fleet.current(id).as_deref() == Some(&good[..12])));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_terminated_mid_deployment_is_dropped_not_failed() {
    let mut rig = rig(4).await;
    let (good, next) = (sha(8), sha(9));
    rig.ship(&good, "ok").await;
    assert_eq!(rig.finished(&good).await["state"], "succeeded");
    let doomed = rig.wave_of(&good, 2).await.remove(0);
    rig.ship(&next, "slow").await;
    rig.running(&next).await;
    // The last wave's instance goes away while the canary validates.
    rig.kill_agent(&doomed);
    aws_sdk_ec2::Client::new(&rig.app.sdk).terminate_instances().instance_ids(&doomed).send().await.unwrap();
    let deployment = rig.finished(&next).await;
    assert_eq!(deployment["state"], "succeeded", "{deployment}");
    let targets = rig.targets(&next).await;
    let dropped = targets.iter().find(|t| t.instance == doomed).unwrap();
    assert_eq!(dropped.state, conveyor_shared::domain::rollout::TargetState::Dropped);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_newer_build_supersedes_the_queued_one() {
    let rig = rig(2).await;
    let (first, queued, newest) = (sha(10), sha(11), sha(12));
    rig.ship(&first, "slow").await;
    rig.running(&first).await;
    rig.ship(&queued, "ok").await;
    rig.ship(&newest, "ok").await;
    let deployment = rig.finished(&first).await;
    assert_eq!(deployment["state"], "succeeded", "{deployment}");
    let superseded = rig.finished(&queued).await;
    assert_eq!(superseded["state"], "superseded", "{superseded}");
    assert!(superseded["reason"].as_str().unwrap().contains(&newest[..12]), "{superseded}");
    assert_eq!(rig.finished(&newest).await["state"], "succeeded");
    assert!(rig.fleet.all_run(&newest[..12]));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_killed_mid_install_restarts_on_the_old_release_and_says_so() {
    let mut rig = rig(2).await;
    let (good, next) = (sha(13), sha(14));
    rig.ship(&good, "ok").await;
    assert_eq!(rig.finished(&good).await["state"], "succeeded");
    let canary = rig.wave_of(&good, 0).await.remove(0);
    let app_dir = rig.fleet.root.path().join(&canary);

    rig.ship(&next, "stalling").await;
    // Unpacked and inside its after-install hook: the deploy has begun, the switch has not.
    rig.wait_until("the canary's agent is mid-install", || {
        app_dir.join("agent-in-flight.json").exists() && app_dir.join("releases").join(&next[..12]).is_dir()
    })
    .await;
    rig.kill_agent(&canary);
    assert_eq!(rig.fleet.current(&canary).as_deref(), Some(&good[..12]), "the old release still runs, whole");

    rig.restart_agent(&canary);
    let deployment = rig.finished(&next).await;
    assert_eq!(deployment["state"], "rolled_back", "{deployment}");
    let reason = deployment["reason"].as_str().unwrap();
    assert!(reason.contains("stopped while deploying") && reason.contains(&good[..12]), "{reason}");
    assert!(rig.fleet.all_run(&good[..12]));
    let leftovers: Vec<_> = std::fs::read_dir(app_dir.join("releases"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "no half-unpacked release: {leftovers:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn hosts_left_on_a_rejected_release_end_on_the_last_good_one_whatever_comes_next() {
    let rig = rig(4).await;
    let (good, rejected, next) = (sha(15), sha(16), sha(17));
    rig.ship(&good, "ok").await;
    assert_eq!(rig.finished(&good).await["state"], "succeeded");
    // The last wave's first instance fails the next release's health check: the release is
    // rejected only after the canary and the second wave run it.
    let late = rig.wave_of(&good, 2).await.remove(0);
    rig.sick.lock().unwrap().insert(late.clone());
    rig.ship(&rejected, "slow").await;
    rig.running(&rejected).await;
    // Queued while the rejected one rolls: it starts as soon as that one ends, and may plan
    // its targets before the rejected release's hosts have polled for their rollback.
    rig.ship(&next, "broken").await;
    assert_eq!(rig.finished(&rejected).await["state"], "rolled_back");
    rig.sick.lock().unwrap().clear();
    let deployment = rig.finished(&next).await;
    assert_eq!(deployment["state"], "rolled_back", "its canary fails: {deployment}");
    rig.wait_until("every instance runs the last good release", || rig.fleet.all_run(&good[..12])).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_re_upload_during_a_rollout_changes_nothing_the_later_waves_get() {
    let rig = rig(3).await;
    let release = sha(18);
    rig.ship(&release, "slow").await;
    rig.running(&release).await;
    // The same key gets other bytes while the canary validates: later waves still get the
    // pinned version (their checksum would not match otherwise).
    conveyor_e2e::push_artifact(&rig.app.artifacts_bucket, &rig.repository, &release, artifact("broken")).await;
    let deployment = rig.finished(&release).await;
    assert_eq!(deployment["state"], "succeeded", "{deployment}");
    assert!(rig.fleet.all_run(&release[..12]));
    for id in &rig.instances {
        let health = std::fs::read_to_string(rig.fleet.root.path().join(id).join("current/health.txt")).unwrap();
        assert_eq!(health.trim(), "ok", "{id} runs the bytes the deployment pinned");
    }
}

/// When each instance went back to `good` after running `bad`, sampled every 20 ms from the
/// agents' `current` links until `stop` is set.
fn watch_returns(
    root: PathBuf,
    instances: Vec<String>,
    bad: String,
    good: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<std::collections::HashMap<String, std::time::Instant>> {
    std::thread::spawn(move || {
        let mut was_bad = HashSet::new();
        let mut returned = std::collections::HashMap::new();
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            for id in &instances {
                let current = std::fs::read_link(root.join(id).join("current"))
                    .ok()
                    .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
                match current.as_deref() {
                    Some(v) if v == bad => {
                        was_bad.insert(id.clone());
                    }
                    Some(v) if v == good && was_bad.contains(id) => {
                        returned.entry(id.clone()).or_insert_with(std::time::Instant::now);
                    }
                    _ => {}
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        returned
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rollback_restores_one_wave_at_a_time_and_a_host_that_cannot_go_back_raises_an_alert() {
    let rig = rig(4).await;
    let (good, bad) = (sha(19), sha(20));
    rig.ship(&good, "ok").await;
    assert_eq!(rig.finished(&good).await["state"], "succeeded");
    // The last wave's first host is unhealthy whatever it runs: the release fails in wave 3,
    // after waves 1 and 2 run it, and that host cannot pass its way back either.
    let waves: Vec<Vec<String>> =
        vec![rig.wave_of(&good, 0).await, rig.wave_of(&good, 1).await, rig.wave_of(&good, 2).await];
    let sick = waves[2][0].clone();
    rig.sick.lock().unwrap().insert(sick.clone());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = watch_returns(
        rig.fleet.root.path().to_owned(),
        rig.instances.clone(),
        bad[..12].to_owned(),
        good[..12].to_owned(),
        stop.clone(),
    );
    rig.ship(&bad, "ok").await;
    let deployment = rig.finished(&bad).await;
    assert_eq!(deployment["state"], "rolled_back", "{deployment}");
    assert!(deployment["reason"].as_str().unwrap().contains("failed in wave 3"), "{deployment}");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let returned = watcher.join().unwrap();
    assert!(rig.fleet.all_run(&good[..12]), "every host is back when the rollback ends");

    // Newest wave first, one wave at a time: wave 2's host only goes back once wave 3 is
    // back, and the canary last.
    let when = |id: &String| returned.get(id).copied();
    let last_of_wave_three = waves[2].iter().filter_map(when).max().expect("wave 3 ran the release");
    let wave_two = when(&waves[1][0]).expect("wave 2 ran the release");
    let canary = when(&waves[0][0]).expect("the canary ran the release");
    assert!(last_of_wave_three <= wave_two && wave_two <= canary, "restored out of order: {returned:?}");

    let alerts = rig.app.table.recent_alerts(20).await.unwrap();
    let failed_back: Vec<_> = alerts.iter().filter(|a| a.kind.as_str() == "rollback_failed").collect();
    assert_eq!(failed_back.len(), 1, "{alerts:?}");
    assert!(
        failed_back[0].summary.contains(&sick) && failed_back[0].summary.contains(&good[..12]),
        "{:?}",
        failed_back[0]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_never_switches_to_a_release_the_server_gave_up_on() {
    let rig = rig(2).await;
    let (good, abandoned) = (sha(21), sha(22));
    rig.ship(&good, "ok").await;
    assert_eq!(rig.finished(&good).await["state"], "succeeded");
    let canary = rig.wave_of(&good, 0).await.remove(0);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Records any moment the canary runs the abandoned release (it must never).
    let watcher = watch_returns(
        rig.fleet.root.path().to_owned(),
        vec![canary.clone()],
        abandoned[..12].to_owned(),
        good[..12].to_owned(),
        stop.clone(),
    );
    // Its install hook outlasts the wave's timeout: the deployment rolls back meanwhile.
    rig.ship(&abandoned, "stalling-long").await;
    let deployment = rig.finished(&abandoned).await;
    assert_eq!(deployment["state"], "rolled_back", "{deployment}");
    assert!(deployment["reason"].as_str().unwrap().contains("timed out"), "{deployment}");
    let release_dir = rig.fleet.root.path().join(&canary).join("releases").join(&abandoned[..12]);
    rig.wait_until("the canary's agent gave the release up", || !release_dir.exists()).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(watcher.join().unwrap().is_empty(), "the canary never switched to the abandoned release");
    assert_eq!(rig.fleet.current(&canary).as_deref(), Some(&good[..12]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_report_whose_answer_is_lost_is_sent_again_and_the_host_is_not_deployed_twice() {
    let mut rig = rig(2).await;
    let (good, next) = (sha(23), sha(24));
    rig.ship(&good, "ok").await;
    assert_eq!(rig.finished(&good).await["state"], "succeeded");
    // The canary's agent talks through a proxy that answers its first two reports 503.
    let canary = rig.wave_of(&good, 0).await.remove(0);
    let proxy = conveyor_e2e::FaultProxy::before(
        rig.app.url(""),
        |seen| seen.path == "/agent/v1/report",
        2,
        conveyor_e2e::Fault::unavailable(),
    )
    .await;
    rig.kill_agent(&canary);
    rig.fleet.server = proxy.url();
    rig.restart_agent(&canary);

    rig.ship(&next, "counted").await;
    let deployment = rig.finished(&next).await;
    assert_eq!(deployment["state"], "succeeded", "{deployment}");
    assert_eq!(proxy.faulted(), 2, "two reports were lost");
    assert!(proxy.calls() >= 3, "and sent again until one was acknowledged");
    let validations = std::fs::read_to_string(rig.fleet.root.path().join(&canary).join("validations.log")).unwrap();
    assert_eq!(validations.lines().count(), 1, "deployed once: {validations}");
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_on_ec2_prove_their_instance_and_a_rebuilt_host_enrols_again_by_itself() {
    use conveyor_shared::domain::fleet::EnrollmentProof;
    let mut rig = rig_with(3, true).await;
    let (first, second) = (sha(0x31), sha(0x32));

    rig.ship(&first, "ok").await;
    assert_eq!(rig.finished(&first).await["state"], "succeeded");
    assert!(rig.fleet.all_run(&first[..12]));
    for id in &rig.instances {
        let enrolled = rig.app.table.enrollment("production", id).await.unwrap().expect("enrolled");
        assert_eq!((enrolled.proof, enrolled.confirmed), (EnrollmentProof::InstanceProfile, true), "{id}");
    }

    // A host rebuilt with the same instance id from an old backup: its credential is not the
    // enrolled one, and no operator acts.
    let rebuilt = rig.instances[0].clone();
    let before = rig.app.table.enrollment("production", &rebuilt).await.unwrap().unwrap().credential_hash;
    rig.kill_agent(&rebuilt);
    std::fs::write(rig.fleet.root.path().join(&rebuilt).join("agent-credential"), "from-an-old-backup").unwrap();
    rig.restart_agent(&rebuilt);

    rig.ship(&second, "ok").await;
    assert_eq!(rig.finished(&second).await["state"], "succeeded");
    assert!(rig.fleet.all_run(&second[..12]));
    let after = rig.app.table.enrollment("production", &rebuilt).await.unwrap().unwrap().credential_hash;
    assert_ne!(before, after, "the rebuilt host proved its instance and got a new credential");
}

/// The rollout of real agents on a bad day: 10% of the functions' AWS calls fail as AWS
/// fails them. A good release still reaches every host, a broken one still rolls back to it,
/// and no host is deployed twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_rollout_and_a_rollback_end_the_same_on_a_bad_day() {
    use conveyor_e2e::{FaultProxy, Rule};
    let proxy = FaultProxy::chaos(Rule::bad_day(0.10), Vec::new(), 61).await;
    let rig = rig_calling(3, false, &proxy.url()).await;
    let (good, broken) = (sha(1), sha(3));
    rig.ship(&good, "ok").await;
    let deployment = rig.finished(&good).await;
    assert_eq!(deployment["state"], "succeeded", "{deployment}");
    assert!(rig.fleet.all_run(&good[..12]));
    let targets = rig.targets(&good).await;
    assert_eq!(targets.len(), 3, "one target per host: {targets:?}");
    rig.ship(&broken, "broken").await;
    let deployment = rig.finished(&broken).await;
    assert_eq!(deployment["state"], "rolled_back", "{deployment}");
    rig.wait_until("every host is back on the good release", || rig.fleet.all_run(&good[..12])).await;
    assert!(proxy.faulted() > 0, "faults were injected: {} of {} calls", proxy.faulted(), proxy.calls());
}
