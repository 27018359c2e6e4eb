//! `conveyor wait` follows a deployment in the ledger to its end, as a CI job would: exit 0
//! on success, 1 on any other end, 3 when its time runs out.

use std::time::Duration;

use conveyor_cli::wait::{self, Patience, Target, Waited};
use conveyor_e2e::{Quiet, endpoint, launch_instances, unique_name};
use conveyor_shared::store::{Counter, Table};

fn config(tag: &str) -> String {
    format!(
        "[[environment]]\nname = \"production\"\nbranch = \"main\"\nrepository = \"*\"\n[environment.instances]\ntags = {{ app = \"{tag}\" }}\n[environment.rollout]\nwaves = [\"100%\"]\n"
    )
}

fn sha(n: u8) -> String {
    format!("{n:02x}").repeat(20)
}

/// Follows `target` in a task, with a quick poll; answers how it ended and what it printed.
fn follow(quiet: &Quiet, target: Target, timeout: Duration) -> tokio::task::JoinHandle<(Waited, String)> {
    follow_table(quiet.table.clone(), target, timeout)
}

/// As a CI job holding the published policy for `conveyor wait`.
fn follow_table(table: Table, target: Target, timeout: Duration) -> tokio::task::JoinHandle<(Waited, String)> {
    tokio::spawn(async move {
        let sdk = conveyor_e2e::operator_sdk("wait", table.name(), "", &conveyor_e2e::endpoint()).await;
        let table = Table::from_sdk(&sdk, table.name());
        let mut out = Vec::new();
        let patience = Patience { timeout, poll: Duration::from_millis(50), since: 0 };
        let waited = wait::follow(&table, "production", &target, patience, &mut out, false).await;
        (waited, String::from_utf8(out).unwrap())
    })
}

#[tokio::test]
async fn waiting_on_a_commit_before_its_deployment_exists_ends_with_its_outcome() {
    let tag = unique_name("wait");
    let quiet = Quiet::new(&config(&tag)).await;
    launch_instances(&quiet.sdk, 2, &tag).await;
    let fanout = quiet.fanout(&endpoint()).await;
    let now = 1_800_000_000;
    // CI starts waiting as soon as it pushed (a short sha, as git prints it).
    let waiting = follow(&quiet, Target::parse(Some(&sha(1)[..12])).unwrap(), Duration::from_secs(60));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let deployment = quiet.queue("production", "acme/shop", &sha(1), now, None, Some(b"one")).await;
    fanout.tick(now).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    for target in quiet.table.deployment_targets("production", &deployment.id()).await.unwrap() {
        quiet.table.count_outcome(&target, Counter::Succeeded, None, now + 1).await.unwrap();
    }
    fanout.tick(now + 2).await.unwrap();
    let (waited, printed) = tokio::time::timeout(Duration::from_secs(30), waiting).await.unwrap().unwrap();
    assert_eq!(waited.exit_code(), 0, "{waited:?}\n{printed}");
    let lines: Vec<&str> = printed.lines().collect();
    assert!(lines[0].contains("no deployment of 010101010101 in production yet"), "{printed}");
    assert!(lines.iter().any(|l| l.contains("in_progress") && l.contains("wave 1 of 1")), "{printed}");
    assert!(lines.last().unwrap().contains("succeeded"), "{printed}");
    assert_eq!(lines.len(), lines.iter().collect::<std::collections::HashSet<_>>().len(), "a line per change");
}

#[tokio::test]
async fn a_superseded_deployment_fails_the_wait_and_a_missing_one_times_out() {
    let tag = unique_name("wait-superseded");
    let quiet = Quiet::new(&config(&tag)).await;
    launch_instances(&quiet.sdk, 1, &tag).await;
    let fanout = quiet.fanout(&endpoint()).await;
    let now = 1_800_000_000;
    let older = quiet.queue("production", "acme/shop", &sha(2), now, None, Some(b"two")).await;
    let waiting = follow(&quiet, Target::Commit(older.sha.clone()), Duration::from_secs(60));
    quiet.queue("production", "acme/shop", &sha(3), now + 1, None, Some(b"three")).await;
    fanout.tick(now + 2).await.unwrap();
    let (waited, printed) = tokio::time::timeout(Duration::from_secs(30), waiting).await.unwrap().unwrap();
    assert_eq!(waited.exit_code(), 1, "{waited:?}\n{printed}");
    assert!(printed.lines().last().unwrap().contains("superseded"), "{printed}");

    let never = follow(&quiet, Target::Commit(sha(4)), Duration::from_millis(300));
    let (waited, printed) = tokio::time::timeout(Duration::from_secs(30), never).await.unwrap().unwrap();
    assert_eq!(waited, Waited::TimedOut { last: None });
    assert_eq!(waited.exit_code(), 3);
    assert_eq!(printed.lines().count(), 1, "{printed}");
}

#[tokio::test]
async fn a_table_that_does_not_exist_is_its_own_exit_code() {
    let quiet = Quiet::new("").await;
    let missing = Table::from_sdk(&quiet.sdk, unique_name("no-such-table"));
    let (waited, printed) = follow_table(missing, Target::Newest, Duration::from_secs(30)).await.unwrap();
    assert!(
        matches!(&waited, Waited::Unreadable(message) if message.contains("no-such-table")),
        "{waited:?}\n{printed}"
    );
    assert_eq!(waited.exit_code(), 4);
}
