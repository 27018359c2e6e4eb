//! The `conveyor` binary as a user runs it.

use std::process::Command;

fn conveyor(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_conveyor"))
        .args(args)
        .env_remove("GITHUB_WEBHOOK_SECRET")
        .env_remove("GITHUB_WEBHOOK_SECRET_ID")
        .env_remove("STRIPE_WEBHOOK_SECRET")
        .env_remove("STRIPE_WEBHOOK_SECRET_ID")
        .output()
        .expect("the conveyor binary runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn repo_file(path: &str) -> String {
    format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn config_check_accepts_the_shipped_example() {
    let (code, stdout, stderr) = conveyor(&["config", "check", &repo_file("conveyor.example.toml")]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("ok (2 environments: staging, production; 1 providers: aws-images)"), "{stdout}");
}

#[test]
fn config_check_points_at_the_problem() {
    let dir = std::env::temp_dir().join(format!("conveyor-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("conveyor.toml");
    std::fs::write(
        &file,
        "[[environment]]\nname = \"prod\"\nbranch = \"main\"\nrepository = \"*\"\n\n[environment.rollout]\nwave_timeout = \"soon\"\n",
    )
    .unwrap();
    let (code, _, stderr) = conveyor(&["config", "check", file.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stderr.contains("conveyor.toml:7:16"), "{stderr}");
    assert!(stderr.contains("\"soon\" is not a duration") || stderr.contains("`soon` is not a duration"), "{stderr}");
    assert!(stderr.contains("^"), "the line is shown with a caret: {stderr}");
    let (code, _, stderr) = conveyor(&["config", "check", dir.join("absent.toml").to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stderr.contains("cannot read configuration file"), "{stderr}");
}

#[test]
fn replay_without_a_secret_says_what_to_set() {
    let (code, _, stderr) = conveyor(&["replay", &repo_file("events/github/push/main.json")]);
    assert_eq!(code, 1);
    assert!(stderr.contains("GITHUB_WEBHOOK_SECRET"), "{stderr}");
    let (code, _, stderr) = conveyor(&["replay", &repo_file("events/stripe/subscription-created.json")]);
    assert_eq!(code, 1);
    assert!(stderr.contains("STRIPE_WEBHOOK_SECRET"), "{stderr}");
}

#[test]
fn routes_are_printed_as_json() {
    let (code, stdout, stderr) = conveyor(&["routes"]);
    assert_eq!(code, 0, "{stderr}");
    let routes: serde_json::Value = serde_json::from_str(&stdout).expect("JSON on stdout");
    assert!(routes.as_array().unwrap().iter().any(|r| r["path"] == "/webhooks/github"));
}

#[test]
fn token_create_names_the_known_providers() {
    let (code, stdout, stderr) =
        conveyor(&["token", "create", "--provider", "gcp", "--config", &repo_file("conveyor.example.toml")]);
    assert_eq!(code, 1);
    assert!(stdout.is_empty(), "no token is printed: {stdout}");
    assert!(stderr.contains("no provider `gcp`") && stderr.contains("aws-images"), "{stderr}");
}

#[test]
fn artifact_push_says_what_to_fix_before_touching_aws() {
    let file = repo_file("conveyor.example.toml");
    // No bucket: the command names the flag, the variable and the stack output.
    let output = Command::new(env!("CARGO_BIN_EXE_conveyor"))
        .args(["artifact", "push", &file, "--sha", &"a".repeat(40), "--repository", "acme/shop"])
        .env_remove("CONVEYOR_ARTIFACTS_BUCKET")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_ne!(output.status.code(), Some(0));
    assert!(stderr.contains("--bucket") && stderr.contains("CONVEYOR_ARTIFACTS_BUCKET"), "{stderr}");
    // A short sha: the full one is asked for; nothing is uploaded (no endpoint is reachable).
    let (code, stdout, stderr) =
        conveyor(&["artifact", "push", &file, "--sha", "abc1234", "--repository", "acme/shop", "--bucket", "b-1"]);
    assert_eq!(code, 1);
    assert!(stdout.is_empty());
    assert!(stderr.contains("not a full commit sha") && stderr.contains("40 hex digits"), "{stderr}");
    let (code, _, stderr) = conveyor(&[
        "artifact",
        "push",
        &file,
        "--sha",
        &"a".repeat(40),
        "--repository",
        "acme/shop",
        "--bucket",
        "b-1",
        "--environment",
        "nowhere",
        "--config",
        &file,
    ]);
    assert_eq!(code, 1);
    assert!(stderr.contains("no environment `nowhere`") && stderr.contains("production"), "{stderr}");
}
