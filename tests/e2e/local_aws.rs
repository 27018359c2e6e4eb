use conveyor_e2e::{sdk, unique_name};
use conveyor_shared::config::SecretSource;
use conveyor_shared::domain::DeploymentState::{self, Failed, InProgress, Pending};
use conveyor_shared::domain::{DeploymentRecord, RunState};
use conveyor_shared::secrets;
use conveyor_shared::store::Transition::{Applied, Rejected};
use conveyor_shared::store::{Key, Put, Table, Transition};

#[tokio::test]
async fn the_table_is_created_once_with_its_index() {
    let sdk = sdk().await;
    let table = Table::from_sdk(&sdk, unique_name("conveyor-create"));
    assert!(table.create_if_missing().await.unwrap());
    assert!(!table.create_if_missing().await.unwrap(), "a second call finds it");
    let described = aws_sdk_dynamodb::Client::new(&sdk).describe_table().table_name(table.name()).send().await.unwrap();
    let described = described.table.unwrap();
    assert_eq!(described.global_secondary_indexes().len(), 1);
    assert!(described.stream_specification().is_some_and(|s| s.stream_enabled()));
}

#[tokio::test]
async fn conditional_puts_and_transitions() {
    let sdk = sdk().await;
    let table = Table::from_sdk(&sdk, unique_name("conveyor-cond"));
    table.create_if_missing().await.unwrap();
    let item = |state: &str| {
        std::collections::HashMap::from([
            ("pk".to_string(), aws_sdk_dynamodb::types::AttributeValue::S("ENV#p".into())),
            ("sk".to_string(), aws_sdk_dynamodb::types::AttributeValue::S("DEPLOYMENT#x".into())),
            ("state".to_string(), aws_sdk_dynamodb::types::AttributeValue::S(state.into())),
        ])
    };
    assert_eq!(table.put_if_absent(item("pending")).await.unwrap(), Put::Created);
    assert_eq!(table.put_if_absent(item("other")).await.unwrap(), Put::AlreadyExists);
    let key = || Key::deployment("p", "x");
    assert_eq!(table.transition(key(), Pending, InProgress, "started", 1).await.unwrap(), Transition::Applied);
    assert_eq!(table.transition(key(), Pending, InProgress, "again", 2).await.unwrap(), Transition::Rejected);
    let stored = table.get(key()).await.unwrap().unwrap();
    assert_eq!(stored["state"].as_s().unwrap(), "in_progress");
    assert_eq!(stored["history"].as_l().unwrap().len(), 1, "the transition is recorded with its reason");
    assert_eq!(
        table.transition(Key::deployment("p", "missing"), Pending, Failed, "r", 3).await.unwrap(),
        Transition::Rejected
    );
}

#[tokio::test]
async fn batch_puts_write_more_than_one_batch() {
    let sdk = sdk().await;
    let table = Table::from_sdk(&sdk, unique_name("conveyor-batch"));
    table.create_if_missing().await.unwrap();
    let commits: Vec<_> = (0..60)
        .map(|i| conveyor_shared::domain::CommitRecord {
            repository: "o/r".into(),
            sha: format!("{i:040}"),
            committed_at: i,
            git_ref: "refs/heads/main".into(),
            title: "t".into(),
            author: None,
        })
        .collect();
    table.record_commits(&commits).await.unwrap();
    for i in [0, 24, 25, 59] {
        assert!(table.get(Key::commit("o/r", &format!("{i:040}"))).await.unwrap().is_some(), "commit {i}");
    }
}

#[tokio::test]
async fn a_missing_table_is_named_in_the_error() {
    let sdk = sdk().await;
    let table = Table::from_sdk(&sdk, unique_name("conveyor-absent"));
    let err = table.get(Key::commit("o/r", "x")).await.unwrap_err();
    assert!(err.to_string().contains(table.name()), "{err}");
}

#[tokio::test]
async fn webhook_secrets_resolve_from_secrets_manager() {
    let sdk = sdk().await;
    let name = unique_name("conveyor/github");
    aws_sdk_secretsmanager::Client::new(&sdk)
        .create_secret()
        .name(&name)
        .secret_string("new-secret, old-secret")
        .send()
        .await
        .unwrap();
    let secret = secrets::resolve(&SecretSource::SecretsManager(name), &sdk).await.unwrap();
    assert_eq!(secret.expose_str(), "new-secret, old-secret");
    assert_eq!(conveyor_shared::secret::SecretSet::from_secret(&secret).map(|keys| keys.len()), Some(2));
    let err = secrets::resolve(&SecretSource::SecretsManager("conveyor/absent".into()), &sdk).await.unwrap_err();
    assert!(err.to_string().contains("conveyor/absent"), "{err}");
}

#[tokio::test]
async fn discovery_takes_only_running_instances_with_every_tag() {
    use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
    let sdk = sdk().await;
    let ec2 = aws_sdk_ec2::Client::new(&sdk);
    let app = unique_name("shop");
    let tags = |stage: &str| {
        TagSpecification::builder()
            .resource_type(ResourceType::Instance)
            .tags(Tag::builder().key("app").value(&app).build())
            .tags(Tag::builder().key("stage").value(stage).build())
            .build()
    };
    let launch = |count: i32, stage: &'static str| {
        ec2.run_instances()
            .image_id("ami-12c6146b")
            .min_count(count)
            .max_count(count)
            .tag_specifications(tags(stage))
            .send()
    };
    let mut running = 0;
    for _ in 0..3 {
        running += launch(500, "production").await.unwrap().instances().len();
    }
    launch(20, "staging").await.unwrap();
    let stopped = launch(10, "production").await.unwrap();
    let stopped_ids: Vec<String> =
        stopped.instances().iter().filter_map(|i| i.instance_id().map(str::to_owned)).collect();
    ec2.stop_instances().set_instance_ids(Some(stopped_ids.clone())).send().await.unwrap();

    let wanted = std::collections::BTreeMap::from([
        ("app".to_string(), app.clone()),
        ("stage".to_string(), "production".to_string()),
    ]);
    let found = conveyor_shared::ec2::Ec2::new(&sdk).running_instances(None, &wanted).await.unwrap();
    assert_eq!(running, 1500);
    assert_eq!(found.len(), 1500, "only the running production instances");
    assert!(found.iter().all(|i| !stopped_ids.contains(&i.id)));
    assert!(found.iter().all(|i| !i.availability_zone.is_empty()));
}

#[tokio::test]
async fn discovery_waits_out_ec2_throttling_and_names_it_when_it_persists() {
    let app = unique_name("throttled");
    conveyor_e2e::launch_instances(&sdk().await, 3, &app).await;
    let wanted = std::collections::BTreeMap::from([("app".to_string(), app)]);

    let proxy = conveyor_e2e::FaultProxy::throttle_ec2("DescribeInstances", 3).await;
    let ec2 = conveyor_shared::ec2::Ec2::new(&conveyor_e2e::sdk_at(&proxy.url()).await);
    let found = ec2.running_instances(None, &wanted).await.unwrap();
    assert_eq!(found.len(), 3, "the instances, once EC2 lets the call through");
    assert_eq!((proxy.faulted(), proxy.calls()), (3, 4), "three throttled calls, then one that passed");

    let proxy = conveyor_e2e::FaultProxy::throttle_ec2("DescribeInstances", u32::MAX).await;
    let ec2 = conveyor_shared::ec2::Ec2::new(&conveyor_e2e::sdk_at(&proxy.url()).await);
    let err = ec2.running_instances(None, &wanted).await.unwrap_err().to_string();
    assert!(err.contains("DescribeInstances") && err.contains("RequestLimitExceeded"), "{err}");
    assert_eq!(proxy.calls(), 8, "gives up after eight attempts");
}

pub(crate) fn deployment(repository: &str, sha: &str, created_at: i64, state: DeploymentState) -> DeploymentRecord {
    DeploymentRecord {
        environment: "production".into(),
        repository: repository.into(),
        sha: sha.into(),
        branch: "main".into(),
        version: sha.into(),
        artifact: format!("s3://a/{sha}.tar.gz"),
        state,
        reason: "CI succeeded on main".into(),
        build: "b".into(),
        created_at,
        pushed_at: None,
        run: RunState::default(),
    }
}

#[tokio::test]
async fn the_lock_is_taken_and_given_up_with_the_deployments_state() {
    use conveyor_shared::domain::alert::{Alert, AlertKind, AlertSource, Severity};
    use conveyor_shared::domain::fleet::LockPhase;
    use conveyor_shared::store::{DeploymentEnd, DeploymentStart};
    let sdk = sdk().await;
    let table = Table::from_sdk(&sdk, unique_name("conveyor-lock"));
    table.create_if_missing().await.unwrap();
    let (a, b) = (deployment("acme/shop", "aaa", 100, Pending), deployment("acme/shop", "bbb", 110, Pending));
    for d in [&a, &b] {
        table.create_deployment(d).await.unwrap();
    }
    let (a_id, b_id) = (a.id(), b.id());
    assert_eq!(table.claim_planning("production", &a_id, "plan-a", 100, 60).await.unwrap(), Applied);
    assert_eq!(table.claim_planning("production", &b_id, "plan-b", 120, 60).await.unwrap(), Rejected, "a holds it");
    assert_eq!(table.claim_planning("production", &a_id, "plan-a2", 120, 60).await.unwrap(), Rejected, "claimed");
    let recent = table.recent_deployments("production", 10).await.unwrap();
    assert!(table.supersede_queued(&b, &recent, 130).await.unwrap().is_empty(), "a claimed deployment stays");

    let start = |planner| DeploymentStart {
        environment: "production",
        id: &a_id,
        planner,
        sizes: &[1, 2],
        sha256: "00",
        artifact_version: Some("v1"),
        reason: "rolling",
        alert: None,
    };
    assert_eq!(table.start_deployment(&start("plan-x"), 140).await.unwrap(), Rejected, "only the claim's holder");
    assert_eq!(table.start_deployment(&start("plan-a"), 140).await.unwrap(), Applied);
    let lock = table.lock("production").await.unwrap().unwrap();
    assert_eq!((lock.holder.as_str(), lock.phase, lock.expires_at), (a_id.as_str(), Some(LockPhase::Running), None));
    assert!(lock.live(1_000_000), "a running deployment's lock never expires");
    assert_eq!(
        table.claim_planning("production", &b_id, "plan-b", 1_000_000, 60).await.unwrap(),
        Rejected,
        "nothing starts beside a running deployment, however long it runs"
    );
    let started = table.deployment("production", &a_id, true).await.unwrap().unwrap();
    assert_eq!((started.state, started.run.artifact_version.as_deref()), (InProgress, Some("v1")));

    let alert =
        Alert::new(AlertSource::Deploy, "production-aaa", AlertKind::DeploymentRolledBack, Severity::Critical, 150)
            .summary("rolled back")
            .action("look");
    let end = DeploymentEnd {
        environment: "production",
        id: &a_id,
        from: InProgress,
        to: DeploymentState::RolledBack,
        reason: "canary failed",
        planner: None,
        last_release: None,
        alert: Some(&alert),
    };
    assert_eq!(table.end_deployment(&end, 150).await.unwrap(), Applied);
    assert_eq!(table.end_deployment(&end, 151).await.unwrap(), Rejected, "ends once");
    assert!(table.lock("production").await.unwrap().is_none(), "an ended deployment holds no lock");
    assert_eq!(
        table.recent_alerts(5).await.unwrap(),
        std::slice::from_ref(&alert),
        "the alert came with the transition"
    );

    // A planner that fails gives the lock up at once; one that crashed is replaced after its claim.
    assert_eq!(table.claim_planning("production", &b_id, "plan-b", 160, 60).await.unwrap(), Applied);
    table.release_planning("production", &b_id, "plan-b").await.unwrap();
    assert!(table.lock("production").await.unwrap().is_none());
    assert_eq!(table.claim_planning("production", &b_id, "plan-b2", 161, 60).await.unwrap(), Applied);
    assert_eq!(table.claim_planning("production", &b_id, "plan-b3", 222, 60).await.unwrap(), Applied, "crashed");
    let failed = DeploymentEnd {
        environment: "production",
        id: &b_id,
        from: Pending,
        to: DeploymentState::Failed,
        reason: "no artifact",
        planner: Some("plan-b2"),
        last_release: None,
        alert: None,
    };
    assert_eq!(table.end_deployment(&failed, 230).await.unwrap(), Rejected, "a replaced planner changes nothing");
    let failed = DeploymentEnd { planner: Some("plan-b3"), ..failed };
    assert_eq!(table.end_deployment(&failed, 230).await.unwrap(), Applied);
    assert!(table.lock("production").await.unwrap().is_none());
    assert!(table.last_release("production").await.unwrap().is_none(), "no deployment succeeded");
}

#[tokio::test]
async fn a_newer_build_supersedes_the_queued_ones_of_its_repository_only() {
    let sdk = sdk().await;
    let table = Table::from_sdk(&sdk, unique_name("conveyor-supersede"));
    table.create_if_missing().await.unwrap();
    let running = deployment("acme/shop", "aaa", 100, InProgress);
    let queued = deployment("acme/shop", "bbb", 200, Pending);
    let other_repository = deployment("acme/admin", "abc", 250, Pending);
    let newest = deployment("Acme/Shop", "ccc", 300, Pending);
    for d in [&running, &queued, &other_repository, &newest] {
        table.create_deployment(d).await.unwrap();
    }
    let recent = table.recent_deployments("production", 100).await.unwrap();
    assert_eq!(table.supersede_queued(&newest, &recent, 301).await.unwrap(), ["acme/shop#bbb"]);
    let other = table.deployment("production", &other_repository.id(), true).await.unwrap().unwrap();
    assert_eq!(other.state, Pending, "another repository's build is not superseded");
    let states: Vec<_> =
        table.recent_deployments("production", 10).await.unwrap().into_iter().map(|d| (d.sha, d.state)).collect();
    assert_eq!(
        states,
        [
            ("ccc".to_string(), Pending),
            ("abc".to_string(), Pending),
            ("bbb".to_string(), DeploymentState::Superseded),
            ("aaa".to_string(), InProgress)
        ]
    );
    let stored = table.get(Key::deployment("production", "acme/shop#bbb")).await.unwrap().unwrap();
    assert!(stored["reason"].as_s().unwrap().starts_with("superseded by ccc"));
    let recent = table.recent_deployments("production", 100).await.unwrap();
    assert!(table.supersede_queued(&newest, &recent, 302).await.unwrap().is_empty(), "idempotent");
}

#[tokio::test]
async fn an_artifact_goes_where_the_intake_looks_streamed_in_parts() {
    use conveyor_shared::domain::intake::{self, PlanContext};
    let sdk = sdk().await;
    let artifacts = conveyor_shared::s3::Artifacts::new(&sdk);
    let bucket = unique_name("artifacts").to_lowercase().chars().take(50).collect::<String>();
    artifacts.create_bucket_if_missing(&bucket).await.unwrap();
    let config = conveyor_shared::config::Config::parse(
        "[[environment]]\nname = \"production\"\nbranch = \"main\"\nrepository = \"*\"\nartifact = \"s3://{bucket}/{environment}/{branch}/{version}/{sha}.tgz\"\n",
        "t.toml",
    )
    .unwrap();
    let sha = "0123456789abcdef0123456789abcdef01234567";
    // Where the intake will look, from a real CI success.
    let success = serde_json::json!({
        "action": "completed",
        "workflow_run": {"id": 1, "name": "CI", "workflow_id": 1, "head_branch": "main", "head_sha": sha,
                         "run_attempt": 1, "conclusion": "success", "head_repository": {"full_name": "acme/shop"}},
        "repository": {"full_name": "acme/shop"}
    });
    let ctx = PlanContext { config: &config, artifacts_bucket: &bucket, now: 1 };
    let plan = intake::plan("workflow_run", "d", success.to_string().as_bytes(), &ctx).unwrap();
    let expected = &plan.deployments[0].artifact;

    // Eleven MiB in parts of five: three parts, the progress ending at the file's size.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("build.tar.gz");
    let bytes: Vec<u8> = (0..11 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    std::fs::write(&file, &bytes).unwrap();
    let target = conveyor_cli::ops::ArtifactTarget {
        bucket: &bucket,
        repository: "acme/shop",
        sha,
        environment: config.environment("production"),
    };
    let mut seen = Vec::new();
    let (url, sha256) =
        conveyor_cli::ops::push_artifact_file(&artifacts, &target, &file, 5 * 1024 * 1024, |sent| seen.push(sent))
            .await
            .unwrap();
    assert_eq!(&url, expected, "the key the intake renders");
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(seen.last().copied(), Some(bytes.len() as u64));
    assert_eq!(sha256, conveyor_shared::s3::file_sha256(&file).unwrap());
    let stored = artifacts.head(&url).await.unwrap().unwrap();
    assert_eq!((stored.sha256, stored.size), (sha256, bytes.len() as i64));
    assert!(stored.version_id.is_some(), "a versioned bucket: the deployment can pin it");
}

/// Serves DescribeInstances as EC2 does for a large fleet: `pages` pages of `per_page`
/// instances, chained by NextToken (moto answers everything in one page). Records the
/// NextToken of every request it got.
async fn paging_ec2(pages: usize, per_page: usize) -> (String, std::sync::Arc<std::sync::Mutex<Vec<Option<String>>>>) {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let recorded = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let recorded = recorded.clone();
            let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let recorded = recorded.clone();
                async move {
                    let body = request.into_body().collect().await?.to_bytes();
                    let form: std::collections::HashMap<String, String> =
                        form_urlencoded::parse(&body).into_owned().collect();
                    let token = form.get("NextToken").cloned();
                    recorded.lock().unwrap().push(token.clone());
                    let page: usize = token.as_deref().and_then(|t| t.strip_prefix("page-")?.parse().ok()).unwrap_or(0);
                    let instances: String = (0..per_page)
                        .map(|i| {
                            format!(
                                "<item><instanceId>i-{page:04}{i:013}</instanceId><instanceState><code>16</code><name>running</name></instanceState><placement><availabilityZone>us-east-1{}</availabilityZone></placement></item>",
                                ['a', 'b', 'c'][i % 3]
                            )
                        })
                        .collect();
                    let next = if page + 1 < pages {
                        format!("<nextToken>page-{}</nextToken>", page + 1)
                    } else {
                        String::new()
                    };
                    let xml = format!(
                        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><DescribeInstancesResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>r</requestId><reservationSet><item><reservationId>r-{page}</reservationId><instancesSet>{instances}</instancesSet></item></reservationSet>{next}</DescribeInstancesResponse>"
                    );
                    Ok::<_, hyper::Error>(
                        hyper::Response::builder()
                            .header("content-type", "text/xml;charset=UTF-8")
                            .body(http_body_util::Full::new(bytes::Bytes::from(xml)))
                            .unwrap(),
                    )
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    (url, seen)
}

#[tokio::test]
async fn discovery_follows_every_page_of_a_large_fleet() {
    let (url, seen) = paging_ec2(3, 1000).await;
    let ec2 = conveyor_shared::ec2::Ec2::new(&conveyor_e2e::sdk_at(&url).await);
    let wanted = std::collections::BTreeMap::from([("app".to_string(), "shop".to_string())]);
    let found = ec2.running_instances(None, &wanted).await.unwrap();
    assert_eq!(found.len(), 3000, "every page's instances");
    let distinct: std::collections::HashSet<_> = found.iter().map(|i| &i.id).collect();
    assert_eq!(distinct.len(), 3000);
    assert_eq!(*seen.lock().unwrap(), [None, Some("page-1".to_string()), Some("page-2".to_string())]);
}

/// `conveyor artifact push` into an SSE-KMS bucket (ETags that are not MD5s, as the proxy
/// gives them), in one piece and in parts, with the published policy: the deployment finds
/// the artifact and its checksum.
#[tokio::test]
async fn an_artifact_pushed_into_a_kms_bucket_is_found_with_its_checksum() {
    use conveyor_e2e::faults::Rewrite;
    let bucket = conveyor_e2e::ARTIFACTS_BUCKET;
    let kms = conveyor_e2e::FaultProxy::rewriting(vec![Rewrite::KmsEtags { bucket: bucket.into() }]).await;
    let admin = conveyor_shared::s3::Artifacts::new(&sdk().await);
    admin.create_bucket_if_missing(bucket).await.unwrap();
    let ci =
        conveyor_shared::s3::Artifacts::new(&conveyor_e2e::operator_sdk("artifact-push", "", "", &kms.url()).await);
    let config = conveyor_shared::config::Config::parse(
        "[[environment]]\nname = \"production\"\nbranch = \"main\"\nrepository = \"*\"\n",
        "t.toml",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (size, parts) in [(1024usize, 1usize), (11 * 1024 * 1024, 3)] {
        let sha = format!("{:040x}", size);
        let file = dir.path().join(format!("{size}.tar.gz"));
        std::fs::write(&file, (0..size).map(|i| (i % 251) as u8).collect::<Vec<_>>()).unwrap();
        let target = conveyor_cli::ops::ArtifactTarget {
            bucket,
            repository: &unique_name("acme/kms"),
            sha: &sha,
            environment: config.environment("production"),
        };
        let mut sent = Vec::new();
        let (url, sha256) =
            conveyor_cli::ops::push_artifact_file(&ci, &target, &file, 5 * 1024 * 1024, |n| sent.push(n))
                .await
                .unwrap();
        assert_eq!(sent.len(), parts);
        // Read as deploy-fanout reads it, with its role.
        let fanout = conveyor_e2e::function_sdk("deploy-fanout", &unique_name("kms"), &config, &kms.url()).await;
        let reader = conveyor_shared::s3::Artifacts::new(&fanout);
        let stored = reader.head(&url).await.unwrap().unwrap();
        assert_eq!((stored.sha256, stored.size), (sha256, size as i64));
    }
}

/// A part whose bytes are not the ones read (changed on the way) is refused by S3 through
/// the part's checksum, and the upload is abandoned: nothing becomes visible under the key.
#[tokio::test]
async fn a_multipart_upload_with_a_changed_part_leaves_nothing_behind() {
    use conveyor_e2e::{Effect, FaultProxy, Rule};
    let bucket = conveyor_e2e::ARTIFACTS_BUCKET;
    conveyor_shared::s3::Artifacts::new(&sdk().await).create_bucket_if_missing(bucket).await.unwrap();
    let changing = FaultProxy::chaos(vec![Rule::new("s3", 1.0, Effect::Corrupt).only("UploadPart")], vec![], 3).await;
    let ci = conveyor_shared::s3::Artifacts::new(
        &conveyor_e2e::operator_sdk("artifact-push", "", "", &changing.url()).await,
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.tar.gz");
    std::fs::write(&file, vec![7u8; 11 * 1024 * 1024]).unwrap();
    let sha = "c".repeat(40);
    let repository = unique_name("acme/changed");
    let target = conveyor_cli::ops::ArtifactTarget { bucket, repository: &repository, sha: &sha, environment: None };
    let failed = conveyor_cli::ops::push_artifact_file(&ci, &target, &file, 5 * 1024 * 1024, |_| {}).await.unwrap_err();
    assert!(failed.to_string().contains("changed while it was being uploaded"), "{failed}");
    let url = format!("s3://{bucket}/{repository}/{sha}.tar.gz");
    let admin = conveyor_shared::s3::Artifacts::new(&sdk().await);
    assert!(admin.head(&url).await.unwrap().is_none(), "nothing under the key");
}
