use conveyor_e2e::TestApp;
use serde_json::{Value, json};

const CONFIG: &str = r#"
[[provider]]
name = "aws"

[[provider]]
name = "droplets"
"#;

pub(crate) fn build(name: &str, builder: &str, artifact: &str, run: &str) -> Value {
    json!({"name": name, "builder_type": builder, "build_time": 1724274325, "files": null,
           "artifact_id": artifact, "packer_run_uuid": run, "custom_data": null})
}

pub(crate) fn manifest(builds: Vec<Value>, last: &str) -> Vec<u8> {
    serde_json::to_vec_pretty(&json!({"builds": builds, "last_run_uuid": last})).unwrap()
}

#[tokio::test]
async fn a_single_region_manifest_sets_the_image_and_answers_the_diff() {
    let app = TestApp::spawn(CONFIG).await;
    let token = app.provider_token("aws").await;
    let body = manifest(vec![build("ubuntu", "amazon-ebs", "us-west-2:ami-0aee8bac10830769b", "run-1")], "run-1");
    let answer = app.upload_manifest("aws", &token, "", &body).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body["changed"], json!({"us-west-2": {"old": null, "new": "ami-0aee8bac10830769b"}}));
    let images = app.images("aws", &token).await;
    assert_eq!(images.body["images"], json!({"us-west-2": "ami-0aee8bac10830769b"}));
    assert_eq!(images.body["version"], 1);
}

#[tokio::test]
async fn appended_runs_apply_only_the_last_and_a_repeat_is_a_no_op() {
    let app = TestApp::spawn(CONFIG).await;
    let token = app.provider_token("aws").await;
    let first = manifest(
        vec![build("ubuntu", "amazon-ebs", "us-east-1:ami-11111111,eu-west-1:ami-22222222", "run-1")],
        "run-1",
    );
    assert_eq!(app.upload_manifest("aws", &token, "", &first).await.status, 200);
    // Packer appends the next run to the same file.
    let appended = manifest(
        vec![
            build("ubuntu", "amazon-ebs", "us-east-1:ami-11111111,eu-west-1:ami-22222222", "run-1"),
            build("ubuntu", "amazon-ebs", "us-east-1:ami-33333333,eu-west-1:ami-22222222", "run-2"),
        ],
        "run-2",
    );
    let answer = app.upload_manifest("aws", &token, "", &appended).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body["changed"], json!({"us-east-1": {"old": "ami-11111111", "new": "ami-33333333"}}));
    let again = app.upload_manifest("aws", &token, "", &appended).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body["changed"], json!({}));
    assert!(again.body["unchanged"].as_str().unwrap().contains("applied before"));
    let images = app.images("aws", &token).await.body;
    assert_eq!(images["version"], 2);
    assert_eq!(images["history"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn digitalocean_snapshots_cover_every_region() {
    let app = TestApp::spawn(CONFIG).await;
    let token = app.provider_token("droplets").await;
    let body = manifest(vec![build("web", "digitalocean", "nyc3,ams3,sgp1:155234567", "do-1")], "do-1");
    let answer = app.upload_manifest("droplets", &token, "", &body).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(
        app.images("droplets", &token).await.body["images"],
        json!({"ams3": "155234567", "nyc3": "155234567", "sgp1": "155234567"})
    );
}

#[tokio::test]
async fn every_rejection_changes_nothing() {
    let app = TestApp::spawn(CONFIG).await;
    let token = app.provider_token("aws").await;
    let other = app.provider_token("droplets").await;
    let good = manifest(vec![build("ubuntu", "amazon-ebs", "us-east-1:ami-11111111", "r")], "r");
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        ("aws", "", good.clone(), 401, "invalid_token"),
        ("aws", "cvy_0000", good.clone(), 401, "invalid_token"),
        ("aws", &other, good.clone(), 403, "forbidden"),
        ("nowhere", &token, good.clone(), 404, "unknown_provider"),
        ("aws", &token, b"not json".to_vec(), 400, "invalid_manifest"),
        ("aws", &token, manifest(vec![build("vbox", "virtualbox-iso", "x", "r")], "r"), 422, "unknown_builder"),
        (
            "aws",
            &token,
            manifest(vec![build("ubuntu", "amazon-ebs", "us-east-1:ami-nothex!", "r")], "r"),
            422,
            "malformed_artifact",
        ),
        (
            "aws",
            &token,
            manifest(vec![build("ubuntu", "amazon-ebs", "mars-north-1x:ami-11111111", "r")], "r"),
            422,
            "malformed_artifact",
        ),
        ("aws", &token, vec![b' '; 5 * 1024 * 1024 + 1], 413, "payload_too_large"),
    ];
    for (provider, presented, body, status, code) in cases {
        let answer = if presented.is_empty() {
            app.request("POST", &format!("/providers/{provider}/manifests"), &[], body).await
        } else {
            app.upload_manifest(provider, presented, "", &body).await
        };
        assert_eq!(answer.status, status, "{code}: {answer:?}");
        if status != 401 || !presented.is_empty() {
            assert_eq!(answer.body["error"]["code"], code, "{answer:?}");
        }
    }
    let bad_region = app
        .upload_manifest(
            "aws",
            &token,
            "",
            &manifest(vec![build("base", "amazon-ebs", "mars-north-1x:ami-11111111", "r")], "r"),
        )
        .await;
    assert!(bad_region.body["error"]["message"].as_str().unwrap().contains("base"), "the build is named");
    assert_eq!(app.images("aws", &other).await.status, 403, "reads take the provider's token too");
    assert_eq!(app.images("aws", &token).await.body["version"], 0, "nothing changed");
}

#[tokio::test]
async fn concurrent_uploads_all_land() {
    let app = TestApp::spawn(CONFIG).await;
    let token = app.provider_token("aws").await;
    let regions =
        ["us-east-1", "us-east-2", "us-west-1", "us-west-2", "eu-west-1", "eu-west-2", "eu-central-1", "ap-south-1"];
    let uploads: Vec<_> = regions
        .iter()
        .enumerate()
        .map(|(i, region)| {
            let (app, token) = (app.clone(), token.clone());
            let body = manifest(
                vec![build("base", "amazon-ebs", &format!("{region}:ami-{:08x}", i + 1), &format!("run-{i}"))],
                &format!("run-{i}"),
            );
            tokio::spawn(async move { app.upload_manifest("aws", &token, "", &body).await })
        })
        .collect();
    for upload in uploads {
        let answer = upload.await.unwrap();
        assert_eq!(answer.status, 200, "{answer:?}");
    }
    let images = app.images("aws", &token).await.body;
    assert_eq!(images["images"].as_object().unwrap().len(), regions.len(), "no lost update: {images}");
    assert_eq!(images["version"], regions.len());
}

#[tokio::test]
async fn verify_checks_each_ami_in_its_region_before_writing() {
    let app = TestApp::spawn(CONFIG).await;
    let token = app.provider_token("aws").await;
    let ec2 = aws_sdk_ec2::Client::new(&app.sdk);
    let registered = ec2
        .register_image()
        .name(conveyor_e2e::unique_name("shop-web"))
        .root_device_name("/dev/sda1")
        .send()
        .await
        .unwrap();
    let ami = registered.image_id().unwrap().to_owned();

    let wrong_region = manifest(vec![build("base", "amazon-ebs", &format!("eu-west-1:{ami}"), "v-1")], "v-1");
    let answer = app.upload_manifest("aws", &token, "?verify=true", &wrong_region).await;
    assert_eq!(answer.status, 422, "{answer:?}");
    assert_eq!(answer.body["error"]["code"], "image_unavailable");
    assert!(answer.body["error"]["message"].as_str().unwrap().contains("eu-west-1"));
    assert_eq!(app.images("aws", &token).await.body["version"], 0);

    let right = manifest(vec![build("base", "amazon-ebs", &format!("us-east-1:{ami}"), "v-2")], "v-2");
    let answer = app.upload_manifest("aws", &token, "?verify=true", &right).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let answer = app.upload_manifest("aws", &token, "?verify=maybe", &right).await;
    assert_eq!(answer.status, 400);
}

#[tokio::test]
async fn launch_templates_follow_new_images() {
    let template = conveyor_e2e::unique_name("shop-web");
    let config = format!(
        "[[provider]]\nname = \"aws\"\n[[provider.launch_template]]\nname = \"{template}\"\nregion = \"us-east-1\"\n"
    );
    let app = TestApp::spawn(&config).await;
    let token = app.provider_token("aws").await;
    let ec2 = aws_sdk_ec2::Client::new(&app.sdk);
    ec2.create_launch_template()
        .launch_template_name(&template)
        .launch_template_data(
            aws_sdk_ec2::types::RequestLaunchTemplateData::builder()
                .image_id("ami-00000001")
                .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let body =
        manifest(vec![build("base", "amazon-ebs", "us-east-1:ami-0000000a,eu-west-1:ami-0000000b", "lt-1")], "lt-1");
    let answer = app.upload_manifest("aws", &token, "", &body).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body["launch_templates"][0]["default_version"], 2);
    let default = ec2
        .describe_launch_template_versions()
        .launch_template_name(&template)
        .versions("$Default")
        .send()
        .await
        .unwrap();
    let data = default.launch_template_versions()[0].launch_template_data().unwrap();
    assert_eq!(data.image_id(), Some("ami-0000000a"));
    // The new version is based on the default one (SourceVersion); the emulator copies
    // only the overrides, so the rest of the template is not asserted here.

    // A missing template is a clear error; the images are in and a re-upload retries it.
    let app = TestApp::spawn("[[provider]]\nname = \"aws\"\n[[provider.launch_template]]\nname = \"absent-template\"\nregion = \"us-east-1\"\n").await;
    let token = app.provider_token("aws").await;
    let answer = app.upload_manifest("aws", &token, "", &body).await;
    assert_eq!(answer.status, 502, "{answer:?}");
    assert_eq!(answer.body["error"]["code"], "launch_template_failed");
    // EC2's own text (which can name accounts and ARNs) stays in the function's log.
    let error = answer.body["launch_templates"][0]["error"].as_str().unwrap();
    assert_eq!(error, "EC2 DescribeLaunchTemplateVersions failed in us-east-1 (the function's log has EC2's answer)");
    assert_eq!(app.images("aws", &token).await.body["version"], 1);
}

#[tokio::test]
async fn a_rollback_that_would_leave_a_launch_template_without_an_image_is_refused() {
    let template = conveyor_e2e::unique_name("shop-web");
    let config = format!(
        "[[provider]]\nname = \"aws\"\n[[provider.launch_template]]\nname = \"{template}\"\nregion = \"us-east-1\"\n"
    );
    let app = TestApp::spawn(&config).await;
    let token = app.provider_token("aws").await;
    let ec2 = aws_sdk_ec2::Client::new(&app.sdk);
    ec2.create_launch_template()
        .launch_template_name(&template)
        .launch_template_data(aws_sdk_ec2::types::RequestLaunchTemplateData::builder().image_id("ami-00000001").build())
        .send()
        .await
        .unwrap();
    // Version 1 has no image for the template's region; version 2 adds one.
    let first = manifest(vec![build("base", "amazon-ebs", "eu-west-1:ami-0000000b", "r-1")], "r-1");
    assert_eq!(app.upload_manifest("aws", &token, "", &first).await.status, 200);
    let second =
        manifest(vec![build("base", "amazon-ebs", "us-east-1:ami-0000000a,eu-west-1:ami-0000000c", "r-2")], "r-2");
    assert_eq!(app.upload_manifest("aws", &token, "", &second).await.status, 200);

    let ec2_adapter = conveyor_shared::ec2::Ec2::new(&app.sdk);
    let err = conveyor_cli::ops::rollback_images(&app.table, &ec2_adapter, &app.config, "aws", None).await.unwrap_err();
    let message = err.to_string();
    assert!(message.contains("version 1") && message.contains("us-east-1") && message.contains("--to"), "{message}");
    let images = app.images("aws", &token).await.body;
    assert_eq!((images["version"].as_i64(), images["images"]["us-east-1"].as_str()), (Some(2), Some("ami-0000000a")));
}

#[tokio::test]
async fn verify_refuses_images_of_accounts_the_provider_does_not_name() {
    let app = TestApp::spawn("[[provider]]\nname = \"aws\"\nimage_owners = [\"111111111111\"]\n").await;
    let token = app.provider_token("aws").await;
    let ec2 = aws_sdk_ec2::Client::new(&app.sdk);
    let registered = ec2
        .register_image()
        .name(conveyor_e2e::unique_name("foreign"))
        .root_device_name("/dev/sda1")
        .send()
        .await
        .unwrap();
    let ami = registered.image_id().unwrap().to_owned();
    let body = manifest(vec![build("base", "amazon-ebs", &format!("us-east-1:{ami}"), "o-1")], "o-1");
    // Checked whether or not the uploader asks for it.
    let answer = app.upload_manifest("aws", &token, "", &body).await;
    assert_eq!((answer.status, answer.body["error"]["code"].as_str()), (422, Some("image_unavailable")), "{answer:?}");
    assert!(answer.body["error"]["message"].as_str().unwrap().contains("image_owners"), "{answer:?}");
    assert_eq!(app.images("aws", &token).await.body["version"], 0, "nothing written");

    // The emulator's account owns what it registers.
    let ours = TestApp::spawn("[[provider]]\nname = \"aws\"\nimage_owners = [\"123456789012\"]\n").await;
    let token = ours.provider_token("aws").await;
    assert_eq!(ours.upload_manifest("aws", &token, "?verify=true", &body).await.status, 200);
}

#[tokio::test]
async fn rollback_walks_back_through_the_history() {
    let app = TestApp::spawn(CONFIG).await;
    let token = app.provider_token("aws").await;
    for run in 1..=3 {
        let body = manifest(
            vec![build("base", "amazon-ebs", &format!("us-east-1:ami-0000000{run}"), &format!("r{run}"))],
            &format!("r{run}"),
        );
        assert_eq!(app.upload_manifest("aws", &token, "", &body).await.status, 200);
    }
    let ec2 = conveyor_shared::ec2::Ec2::new(&app.sdk);
    let rollback = || conveyor_cli::ops::rollback_images(&app.table, &ec2, &app.config, "aws", None);
    let (change, _, _) = rollback().await.unwrap();
    assert_eq!(change.images["us-east-1"], "ami-00000002");
    assert_eq!(change.version, 4);
    let (change, _, _) = rollback().await.unwrap();
    assert_eq!(change.images["us-east-1"], "ami-00000001");
    let err = rollback().await.unwrap_err();
    assert!(err.to_string().contains("no earlier version"), "{err}");
    let images = app.images("aws", &token).await.body;
    assert_eq!(images["images"]["us-east-1"], "ami-00000001");
    assert_eq!(images["history"][0]["kind"], "rollback");
    let err = conveyor_cli::ops::rollback_images(&app.table, &ec2, &app.config, "gcp", None).await.unwrap_err();
    assert!(err.to_string().contains("known: aws, droplets"), "{err}");
}

#[tokio::test]
async fn tokens_are_listed_without_their_secret_revoked_at_once_and_expire() {
    let app = TestApp::spawn(CONFIG).await;
    let body = manifest(vec![build("ubuntu", "amazon-ebs", "us-west-2:ami-0aee8bac10830769b", "run-1")], "run-1");
    let token = app.provider_token("aws").await;
    let now = conveyor_shared::unix_now();
    // `conveyor token create|list|revoke`, with the policy the docs publish for them.
    let operator = app.operator_table("token").await;
    let short =
        conveyor_cli::ops::create_provider_token(&operator, &app.config, "aws", Some(now + 3600)).await.unwrap();
    let short = String::from_utf8(short.expose().to_vec()).unwrap();
    let lapsed = conveyor_cli::ops::create_provider_token(&operator, &app.config, "aws", Some(now - 1)).await.unwrap();
    let lapsed = String::from_utf8(lapsed.expose().to_vec()).unwrap();

    let listed = operator.tokens().await.unwrap();
    assert_eq!(listed.len(), 3, "{listed:?}");
    for grant in &listed {
        assert_eq!(grant.scope, "provider:aws");
        assert!(!token.contains(&grant.id) && !short.contains(&grant.id), "an id is not part of the token");
    }
    assert_eq!(listed.iter().filter(|g| g.expires_at.is_some()).count(), 2);

    // An expired token is refused like an unknown one.
    let expired = app.upload_manifest("aws", &lapsed, "", &body).await;
    assert_eq!((expired.status, expired.body["error"]["code"].as_str()), (401, Some("invalid_token")), "{expired:?}");
    assert_eq!(app.upload_manifest("aws", &short, "", &body).await.status, 200);

    // Revoked: refused at once.
    let id = conveyor_shared::token::id_of(&conveyor_shared::token::hash(short.as_bytes()));
    let revoked = operator.revoke_token(&id).await.unwrap().expect("the token was there");
    assert_eq!(revoked.id, id);
    let refused = app.upload_manifest("aws", &short, "", &body).await;
    assert_eq!(refused.status, 401, "{refused:?}");
    assert!(operator.revoke_token(&id).await.unwrap().is_none(), "revoking twice finds nothing");
    assert_eq!(app.upload_manifest("aws", &token, "", &body).await.status, 200, "other tokens go on working");
    assert_eq!(operator.tokens().await.unwrap().len(), 2);
}
