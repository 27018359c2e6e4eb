//! The agent channel without a token: an agent on EC2 proves its instance with a signed STS
//! `GetCallerIdentity` (the emulator's STS answers whose session signed), and the dev server
//! (or a fan-out built here, behind a fault proxy) decides.

// Each test binary uses part of the support module.
#[allow(dead_code)]
mod support;

use conveyor_agent::proof::InstanceProof;
use conveyor_e2e::{Answer, TestApp};
use conveyor_shared::domain::fleet::EnrollmentProof;
use serde_json::json;

const CONFIG: &str = "[[environment]]\nname = \"production\"\nbranch = \"main\"\nrepository = \"*\"\n[environment.instances]\ntags = { app = \"TAG\" }\n\n[[environment]]\nname = \"staging\"\nbranch = \"develop\"\nrepository = \"*\"\n[environment.instances]\ntags = { app = \"TAG-staging\" }\n";

/// A dev server with environments `production` and `staging`, and instances of each.
async fn setup(production: i32, staging: i32) -> (TestApp, Vec<String>, Vec<String>) {
    let tag = conveyor_e2e::unique_name("proof");
    let app = TestApp::spawn(&CONFIG.replace("TAG", &tag)).await;
    let ours = conveyor_e2e::launch_instances(&app.sdk, production, &tag).await;
    let theirs = conveyor_e2e::launch_instances(&app.sdk, staging, &format!("{tag}-staging")).await;
    (app, ours, theirs)
}

fn poll_body(instance: &str, environment: &str, proof: Option<&InstanceProof>) -> String {
    let mut body = json!({"instance_id": instance, "environment": environment, "current": null});
    if let Some(proof) = proof {
        body["proof"] = serde_json::to_value(proof).unwrap();
    }
    body.to_string()
}

async fn post(app: &TestApp, path: &str, credential: Option<&str>, token: Option<&str>, body: String) -> Answer {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(credential) = credential {
        headers.push((deploy_fanout::CREDENTIAL_HEADER, credential));
    }
    if let Some(bearer) = &bearer {
        headers.push(("authorization", bearer));
    }
    app.request("POST", path, &headers, body).await
}

async fn prove(instance: &str, environment: &str) -> InstanceProof {
    support::instance_signer(instance).await.prove(environment, std::time::SystemTime::now()).unwrap()
}

fn code(answer: &Answer) -> (u16, &str) {
    (answer.status, answer.body["error"]["code"].as_str().unwrap_or(""))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_proven_to_aws_enrols_without_a_token_and_only_its_agent_speaks_for_it() {
    let (app, ours, _) = setup(2, 0).await;
    let (a, b) = (ours[0].as_str(), ours[1].as_str());

    let nothing = post(&app, "/agent/v1/poll", None, None, poll_body(a, "production", None)).await;
    assert_eq!(code(&nothing), (401, "missing_token"), "{nothing:?}");

    let proof = prove(a, "production").await;
    // Someone else's proof does not speak for another instance, and enrols nothing.
    let stolen = post(&app, "/agent/v1/poll", None, None, poll_body(b, "production", Some(&proof))).await;
    assert_eq!(code(&stolen), (403, "proof_refused"), "{stolen:?}");
    assert!(stolen.body["error"]["message"].as_str().unwrap().contains(&format!("signed by instance {a}")));
    assert!(app.table.enrollment("production", b).await.unwrap().is_none());

    let enrolled = post(&app, "/agent/v1/poll", None, None, poll_body(a, "production", Some(&proof))).await;
    assert_eq!(enrolled.status, 200, "{enrolled:?}");
    let credential = enrolled.body["credential"].as_str().expect("a credential for the proven instance").to_owned();
    let stored = app.table.enrollment("production", a).await.unwrap().unwrap();
    assert_eq!((stored.proof, stored.confirmed), (EnrollmentProof::InstanceProfile, true));
    // The same proof again (a replay of a captured one) enrols nothing.
    let replayed = post(&app, "/agent/v1/poll", None, None, poll_body(a, "production", Some(&proof))).await;
    assert_eq!(code(&replayed), (403, "proof_refused"), "{replayed:?}");
    assert!(replayed.body["error"]["message"].as_str().unwrap().contains("used already"), "{replayed:?}");

    // From now on the credential alone speaks for the instance, polls and reports alike.
    let again = post(&app, "/agent/v1/poll", Some(&credential), None, poll_body(a, "production", None)).await;
    assert_eq!((again.status, again.body.get("credential")), (200, None), "{again:?}");
    let report = json!({"instance_id": a, "environment": "production", "version": "v1", "outcome": "succeeded",
                        "healthy": true, "current": null, "log": ""});
    let reported = post(&app, "/agent/v1/report", Some(&credential), None, report.to_string()).await;
    assert_eq!(reported.status, 200, "{reported:?}");
    let forged = post(&app, "/agent/v1/report", Some("made-up"), None, report.to_string()).await;
    assert_eq!(code(&forged), (403, "credential_refused"), "{forged:?}");

    // The environment's token does not let its holder take a proven instance over.
    let token = conveyor_cli::ops::create_environment_token(&app.table, &app.config, "production", None).await.unwrap();
    let token = String::from_utf8(token.expose().to_vec()).unwrap();
    let takeover = post(&app, "/agent/v1/poll", None, Some(&token), poll_body(a, "production", None)).await;
    assert_eq!(code(&takeover), (403, "instance_enrolled"), "{takeover:?}");

    // A rebuilt host proves the instance again (a later proof): a new credential, and the
    // old one stops.
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(2);
    let proof = support::instance_signer(a).await.prove("production", later).unwrap();
    let renewed = post(&app, "/agent/v1/poll", None, None, poll_body(a, "production", Some(&proof))).await;
    let renewed = renewed.body["credential"].as_str().expect("a new credential").to_owned();
    assert_ne!(renewed, credential);
    let old = post(&app, "/agent/v1/poll", Some(&credential), None, poll_body(a, "production", None)).await;
    assert_eq!(code(&old), (403, "credential_refused"), "{old:?}");
    let new = post(&app, "/agent/v1/poll", Some(&renewed), None, poll_body(a, "production", None)).await;
    assert_eq!(new.status, 200, "{new:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_proof_for_another_environment_role_or_time_enrols_nothing() {
    let (app, ours, theirs) = setup(1, 1).await;
    let (ours, theirs) = (ours[0].as_str(), theirs[0].as_str());
    let refused = |answer: &Answer, expected: &str| {
        assert_eq!(code(answer), (403, expected), "{answer:?}");
    };

    // An instance of staging proving itself to production.
    let outside = post(
        &app,
        "/agent/v1/poll",
        None,
        None,
        poll_body(theirs, "production", Some(&prove(theirs, "production").await)),
    )
    .await;
    refused(&outside, "not_in_environment");
    assert!(
        outside.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not a running instance of environment `production`")
    );

    // A proof made for staging, replayed to production.
    let replayed =
        post(&app, "/agent/v1/poll", None, None, poll_body(ours, "production", Some(&prove(ours, "staging").await)))
            .await;
    refused(&replayed, "proof_refused");

    // A session of a role the stack does not trust, even named after the instance.
    let admin = support::assume("arn:aws:iam::123456789012:role/admin", ours).await;
    let proof =
        support::signer(admin, &conveyor_e2e::endpoint()).prove("production", std::time::SystemTime::now()).unwrap();
    let untrusted = post(&app, "/agent/v1/poll", None, None, poll_body(ours, "production", Some(&proof))).await;
    refused(&untrusted, "proof_refused");
    assert!(untrusted.body["error"]["message"].as_str().unwrap().contains("role `admin`"), "{untrusted:?}");

    // A proof signed 20 minutes ago.
    let then = std::time::SystemTime::now() - std::time::Duration::from_secs(20 * 60);
    let stale = support::instance_signer(ours).await.prove("production", then).unwrap();
    refused(
        &post(&app, "/agent/v1/poll", None, None, poll_body(ours, "production", Some(&stale))).await,
        "proof_refused",
    );

    // A proof pointed at another host is never sent there.
    let mut elsewhere = prove(ours, "production").await;
    elsewhere.headers.insert("host".into(), "169.254.169.254".into());
    refused(
        &post(&app, "/agent/v1/poll", None, None, poll_body(ours, "production", Some(&elsewhere))).await,
        "proof_refused",
    );

    // Something that is not a proof at all.
    let mut other_action = prove(ours, "production").await;
    other_action.body = "Action=AssumeRole&Version=2011-06-15".into();
    let invalid = post(&app, "/agent/v1/poll", None, None, poll_body(ours, "production", Some(&other_action))).await;
    assert_eq!(code(&invalid), (400, "invalid_proof"), "{invalid:?}");

    for (instance, environment) in [(ours, "production"), (ours, "staging"), (theirs, "production")] {
        assert!(app.table.enrollment(environment, instance).await.unwrap().is_none(), "{instance} in {environment}");
    }
}

/// A fan-out whose STS, EC2 and table calls go through `proxy`.
async fn fanout_behind(quiet: &conveyor_e2e::Quiet, proxy: &conveyor_e2e::FaultProxy) -> deploy_fanout::Fanout {
    let sdk = conveyor_e2e::sdk_at(&proxy.url()).await;
    let role = support::AGENT_ROLE.parse().unwrap();
    quiet
        .fanout(&proxy.url())
        .await
        .trusting_instance_profiles(conveyor_shared::sts::Sts::new(&sdk).unwrap(), vec![role])
}

async fn poll_directly(fanout: &deploy_fanout::Fanout, body: String) -> Answer {
    use conveyor_shared::http::HttpFunction;
    let request = http::Request::post("/agent/v1/poll").body(bytes::Bytes::from(body)).unwrap();
    let response = fanout.respond(request).await;
    Answer { status: response.status().as_u16(), body: serde_json::from_slice(response.body()).unwrap_or_default() }
}

#[tokio::test(flavor = "multi_thread")]
async fn sts_refusing_the_signature_or_unreachable_enrols_nothing_and_says_which() {
    let tag = conveyor_e2e::unique_name("proof-sts");
    let quiet = conveyor_e2e::Quiet::new(&CONFIG.replace("TAG", &tag)).await;
    let instance = conveyor_e2e::launch_instances(&quiet.sdk, 1, &tag).await.remove(0);
    let calls_sts = |seen: &conveyor_e2e::Seen<'_>| seen.body_has("Action=GetCallerIdentity");

    // What AWS's STS answers a signature that does not match (the emulator checks none).
    let refused = conveyor_e2e::Fault {
        status: 403,
        content_type: "text/xml",
        body: "<ErrorResponse><Error><Type>Sender</Type><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match the signature you provided.</Message></Error></ErrorResponse>".into(),
    };
    let proxy = conveyor_e2e::FaultProxy::start(calls_sts, 1, refused).await;
    let fanout = fanout_behind(&quiet, &proxy).await;
    let signer = support::signer(support::assume(support::AGENT_ROLE, &instance).await, &proxy.url());
    let proof = signer.prove("production", std::time::SystemTime::now()).unwrap();
    let answer = poll_directly(&fanout, poll_body(&instance, "production", Some(&proof))).await;
    assert_eq!(code(&answer), (403, "proof_refused"), "{answer:?}");
    assert!(answer.body["error"]["message"].as_str().unwrap().contains("SignatureDoesNotMatch"), "{answer:?}");
    assert!(quiet.table.enrollment("production", &instance).await.unwrap().is_none());

    // STS throttling: the agent is told to try again, and nothing is enrolled.
    let throttled = conveyor_e2e::Fault {
        status: 400,
        content_type: "text/xml",
        body: "<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message></Error></ErrorResponse>".into(),
    };
    let proxy = conveyor_e2e::FaultProxy::start(calls_sts, 1, throttled).await;
    let fanout = fanout_behind(&quiet, &proxy).await;
    let signer = support::signer(support::assume(support::AGENT_ROLE, &instance).await, &proxy.url());
    let proof = signer.prove("production", std::time::SystemTime::now()).unwrap();
    let answer = poll_directly(&fanout, poll_body(&instance, "production", Some(&proof))).await;
    assert_eq!(answer.status, 503, "{answer:?}");
    assert!(quiet.table.enrollment("production", &instance).await.unwrap().is_none());

    // The same proof once STS answers: enrolled.
    let answer = poll_directly(&fanout, poll_body(&instance, "production", Some(&proof))).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(answer.body["credential"].is_string());
    assert_eq!(proxy.faulted(), 1);
}
