use super::*;

#[test]
fn an_expected_status_is_exact_and_otherwise_any_2xx_passes() {
    let check = |expect_status| HealthCheck {
        url: "http://127.0.0.1:1/health".into(),
        expect_status,
        timeout_seconds: 1,
        attempts: 1,
        interval_seconds: 0,
    };
    assert!(check(Some(204)).passes(204));
    assert!(!check(Some(204)).passes(200));
    assert!(check(None).passes(200));
    assert!(check(None).passes(204));
    assert!(!check(None).passes(503));
    let answer: PollAnswer = serde_json::from_value(serde_json::json!({
        "action": "deploy",
        "release": {"version": "v1", "url": "http://x/a.tar.gz", "sha256": "00"},
        "health": {"url": "http://127.0.0.1:9000/up", "expect_status": 204, "timeout_seconds": 5, "attempts": 3, "interval_seconds": 2},
        "poll_after": 2
    }))
    .unwrap();
    assert_eq!(answer.health.map(|h| (h.expect_status, h.attempts)), Some((Some(204), 3)));
}

#[test]
fn a_release_that_keeps_failing_is_tried_ever_more_slowly() {
    assert_eq!([0, 1, 2, 3, 7, 30].map(retry_pause), [0, 10, 20, 40, 600, 600]);
}

#[test]
fn a_refused_proof_is_told_from_a_passing_failure() {
    let answer = |status, code: &str| AgentError::Server {
        url: "u".into(),
        status,
        body: serde_json::json!({"error": {"code": code, "message": "m"}}).to_string(),
    };
    assert!(refused_proof(&answer(403, "proof_refused")));
    assert!(refused_proof(&answer(403, "not_in_environment")));
    assert!(!refused_proof(&answer(403, "credential_refused")), "a stale credential is proven again at once");
    assert!(!refused_proof(&answer(503, "store_unavailable")));
}

#[test]
fn only_an_instance_id_is_taken_from_imds() {
    assert_eq!(instance_id_or_error("i-0123456789abcdef0\n").as_deref(), Ok("i-0123456789abcdef0"));
    assert!(instance_id_or_error("<html>404 Not Found</html>").is_err());
    assert!(instance_id_or_error("").is_err());
}

#[test]
fn messages_from_a_newer_server_are_read() {
    let answer: PollAnswer = serde_json::from_value(serde_json::json!({
        "action": "none", "poll_after": 20, "something_new": {"a": 1}
    }))
    .unwrap();
    assert_eq!((answer.action, answer.poll_after), (conveyor_protocol::Action::None, 20));
}
