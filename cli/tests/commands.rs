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
    assert_eq!(stdout.lines().count(), 1, "one line per check: {stdout}");
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
    let routes = routes.as_array().unwrap();
    assert!(routes.iter().any(|r| r["path"] == "/webhooks/github" && r["auth"] == "function"));
    assert!(routes.iter().any(|r| r["path"] == "/api/v1/builds" && r["auth"] == "iam"));
    assert!(routes.iter().any(|r| r["function"] == "deploy-fanout" && r["schedule"] == "rate(1 minute)"));
    assert_eq!(routes.iter().filter(|r| r["function"] == "deploy-fanout" && r["stream_filter"].is_string()).count(), 2);
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

#[test]
fn wait_refuses_a_bad_sha_as_a_usage_error_not_as_a_failed_deployment() {
    let (code, _, stderr) = conveyor(&["wait", "--environment", "production", "--sha", "main"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("not a commit sha"), "{stderr}");
    let (code, _, stderr) = conveyor(&["wait", "--environment", "production", "--timeout", "soon"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--timeout `soon`"), "{stderr}");
}

#[test]
fn the_dev_server_refuses_a_real_aws_endpoint_given_as_a_flag_or_per_service() {
    let example = repo_file("conveyor.example.toml");
    let dev = |extra_env: &[(&str, &str)], args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_conveyor"));
        command
            .args(["dev", "--listen", "127.0.0.1:0", "--config", &example])
            .args(args)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env_remove("AWS_ENDPOINT_URL")
            .env_remove("AWS_PROFILE");
        for (name, value) in extra_env {
            command.env(name, value);
        }
        let output = command.output().expect("the conveyor binary runs");
        (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stderr).into_owned())
    };
    let (code, stderr) = dev(&[], &["--endpoint-url", "https://dynamodb.us-east-1.amazonaws.com"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("not a local emulator") && stderr.contains("amazonaws.com"), "{stderr}");
    let (code, stderr) = dev(
        &[("AWS_ENDPOINT_URL_DYNAMODB", "http://127.0.0.1.example.com:5000")],
        &["--endpoint-url", "http://127.0.0.1:9"],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("AWS_ENDPOINT_URL_DYNAMODB"), "{stderr}");
}

#[test]
fn a_mistyped_command_gets_a_suggestion() {
    let (code, _, stderr) = conveyor(&["staus"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("similar") && stderr.contains("status"), "{stderr}");
}
