//! The deploy fan-out's costs:
//!
//! 1. CPU time to plan a deployment of 10,000 instances (waves, targets and their table
//!    items), with criterion.
//! 2. The AWS requests a whole deployment of N hosts makes, counted by an SDK interceptor on
//!    every client the fan-out uses, against the local emulator: planning, each agent
//!    message, and the fan-out's own work per wave. The budget for everything but the
//!    agents' own messages is ceil(N/25) batch writes + ceil(N/1000) discovery pages + a
//!    constant per deployment and per wave; the bench prints the counts beside it and
//!    fails if a count goes over.
//! 3. The cost of an idle poll: table reads per poll once the deployment is over.
//!
//! Run with `make bench` (it starts the emulator). Without `AWS_ENDPOINT_URL` only part 1
//! runs. `CONVEYOR_BENCH_FLEETS=10,100,250` (the default) picks the fleet sizes of part 2;
//! the emulator copies its tables for every transaction, so fleets beyond a few hundred
//! take minutes there (the counts do not depend on its speed).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_dynamodb::config::interceptors::BeforeDeserializationInterceptorContextRef;
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use bytes::Bytes;
use conveyor_shared::config::Timing;
use conveyor_shared::config::{Config, WaveSize};
use conveyor_shared::domain::rollout::{DeploymentPlan, Instance, Release, plan_waves};
use conveyor_shared::domain::{DeploymentRecord, DeploymentState, RunState};
use conveyor_shared::ec2::Ec2;
use conveyor_shared::http::HttpFunction;
use conveyor_shared::s3::Artifacts;
use conveyor_shared::store::Table;
use conveyor_shared::token::{self, Scope};
use criterion::Criterion;
use deploy_fanout::Fanout;
use serde_json::{Value, json};

/// Requests per deployment besides the batches and discovery pages. At the start: finding
/// the queued deployment, the lock, the planning claim, the artifact check, the last good
/// release, the start. At the end: the success, the new last good release, the lock, a look
/// for queued work.
const PER_DEPLOYMENT: usize = 10;
/// Requests of the fan-out's own per wave: moving the wave number on.
const PER_WAVE: usize = 1;

/// Every request the clients it is attached to sent and got an answer to, by service and
/// operation; retries count too.
#[derive(Debug, Default, Clone)]
struct RequestLog(Arc<Mutex<Vec<String>>>);

impl Intercept for RequestLog {
    fn name(&self) -> &'static str {
        "RequestLog"
    }

    // After a response came back: presigned URLs, which are never sent, do not count.
    fn read_before_deserialization(
        &self,
        _context: &BeforeDeserializationInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let operation = cfg.load::<Metadata>().map(|m| format!("{}.{}", m.service(), m.name())).unwrap_or_default();
        self.0.lock().map_err(|_| "request log poisoned")?.push(operation);
        Ok(())
    }
}

impl RequestLog {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().expect("request log"))
    }
}

fn plan_cpu(criterion: &mut Criterion) {
    let instances: Vec<Instance> = (0..10_000)
        .map(|i| Instance {
            id: format!("i-{i:017x}"),
            availability_zone: format!("us-east-1{}", ["a", "b", "c"][i % 3]),
        })
        .collect();
    let waves = [WaveSize::Count(1), WaveSize::Percent(50), WaveSize::Percent(100)];
    let release = Release {
        version: "0123456789ab".into(),
        artifact: "s3://a/b.tar.gz".into(),
        sha256: "00".repeat(32),
        artifact_version: None,
    };
    let plan = || {
        let waves = plan_waves(&instances, &waves, WaveSize::Percent(75)).expect("a plan");
        let targets = DeploymentPlan {
            environment: "production",
            deployment: "0123456789abcdef",
            release: &release,
            previous: Some(&release),
            now: 1_795_300_000,
        }
        .targets(&waves);
        // The items the batch writes send, as the store encodes them.
        targets
            .iter()
            .map(|t| serde_dynamo::to_item::<_, conveyor_shared::store::Item>(t).expect("an item"))
            .collect::<Vec<_>>()
    };
    let mut group = criterion.benchmark_group("fan-out");
    group.sample_size(30);
    group.bench_function("plan 10,000 targets (waves, records, items)", |b| b.iter(|| black_box(plan())));
    group.finish();
}

/// A deployment of `fleet` hosts played to the end, with the agents' messages sent straight
/// to the handler. Prints the counts; answers whether they kept to the budget.
async fn deployment_requests(sdk: &aws_config::SdkConfig, fleet: usize) -> bool {
    let log = RequestLog::default();
    let dynamodb = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(sdk).interceptor(log.clone()).build(),
    );
    let name = format!("conveyor-bench-{fleet}-{}", std::process::id());
    let table = Table::new(dynamodb, name);
    table.create_if_missing().await.expect("a table");
    let artifacts = Artifacts::from_conf(aws_sdk_s3::config::Builder::from(sdk).interceptor(log.clone()).build());
    let ec2 = Ec2::from_conf(aws_sdk_ec2::config::Builder::from(sdk).interceptor(log.clone()).build());

    let tag = format!("bench-{fleet}-{}", std::process::id());
    let raw_ec2 = aws_sdk_ec2::Client::new(sdk);
    let mut launched = 0;
    while launched < fleet {
        let count = (fleet - launched).min(500) as i32;
        raw_ec2
            .run_instances()
            .image_id("ami-12c6146b")
            .min_count(count)
            .max_count(count)
            .tag_specifications(
                aws_sdk_ec2::types::TagSpecification::builder()
                    .resource_type(aws_sdk_ec2::types::ResourceType::Instance)
                    .tags(aws_sdk_ec2::types::Tag::builder().key("app").value(&tag).build())
                    .build(),
            )
            .send()
            .await
            .expect("instances");
        launched += count as usize;
    }
    artifacts.create_bucket_if_missing("conveyor-bench").await.expect("a bucket");
    let sha = format!("{fleet:040x}");
    let artifact = format!("s3://conveyor-bench/shop/{sha}.tar.gz");
    artifacts.put(&artifact, b"release".to_vec(), &"ab".repeat(32), &sha[..12]).await.expect("an artifact");
    let config = Config::parse(
        &format!(
            "[[environment]]\nname = \"production\"\nbranch = \"main\"\nrepository = \"*\"\n[environment.instances]\ntags = {{ app = \"{tag}\" }}\n[environment.rollout]\nwaves = [1, \"50%\", \"100%\"]\n"
        ),
        "bench.toml",
    )
    .expect("a config");
    let env = config.environments[0].clone();
    let secret = "bench-agent-token";
    table
        .create_token(&token::hash(secret.as_bytes()), &Scope::Environment("production".into()).as_string(), 0, None)
        .await
        .expect("a token");
    let now = conveyor_shared::unix_now();
    let deployment = DeploymentRecord {
        environment: "production".into(),
        repository: "acme/shop".into(),
        sha: sha.clone(),
        branch: "main".into(),
        version: sha[..12].into(),
        artifact,
        state: DeploymentState::Pending,
        reason: "bench".into(),
        build: "bench".into(),
        created_at: now,
        pushed_at: None,
        run: RunState::default(),
    };
    table.create_deployment(&deployment).await.expect("a deployment");
    let fanout = Fanout::new(table.clone(), ec2, artifacts, Arc::new(config), Timing::default());
    log.take();

    fanout.start_next(&env, now).await.expect("planned");
    let planning = log.take();
    let targets = table.deployment_targets("production", &deployment.id()).await.expect("targets");
    let waves = targets.iter().map(|t| t.wave).max().map_or(0, |w| w + 1);
    log.take();

    // Each agent keeps the credential its first poll is issued and sends it from then on.
    let credentials: Mutex<BTreeMap<String, String>> = Mutex::default();
    let send = |path: &'static str, body: Value| {
        let instance = body["instance_id"].as_str().unwrap_or_default().to_owned();
        let mut request = http::Request::builder()
            .method("POST")
            .uri(path)
            .header("authorization", format!("Bearer {secret}"))
            .header("content-type", "application/json");
        if let Some(credential) = credentials.lock().expect("credentials").get(&instance) {
            request = request.header(deploy_fanout::CREDENTIAL_HEADER, credential.as_str());
        }
        let request = request.body(Bytes::from(body.to_string())).expect("a request");
        let (fanout, credentials) = (&fanout, &credentials);
        async move {
            let response = fanout.respond(request).await;
            assert!(response.status().is_success(), "{path}: {:?}", response.body());
            let answer = serde_json::from_slice::<Value>(response.body()).expect("json");
            if let Some(credential) = answer["credential"].as_str() {
                credentials.lock().expect("credentials").insert(instance, credential.to_owned());
            }
            answer
        }
    };
    let (mut polls, mut reports) = (Vec::new(), Vec::new());
    // Agents enrol at their first poll, long before a rollout in a running fleet: that cost
    // is the agents' once, not the rollout's. A first poll enrols, the second confirms.
    for target in &targets {
        let poll = json!({"instance_id": target.instance, "environment": "production", "current": "previous"});
        send("/agent/v1/poll", poll.clone()).await;
        send("/agent/v1/poll", poll).await;
    }
    // The wave-0 agents were handed the release by those polls; the rollout below hands it
    // out again (a poll that reports nothing changes nothing).
    log.take();
    // A poll of an instance whose wave has not started yet (it is told the idle interval).
    let mut waiting_poll = None;
    if let Some(later) = targets.iter().find(|t| t.wave > 0) {
        let poll = json!({"instance_id": later.instance, "environment": "production", "current": null});
        let answer = send("/agent/v1/poll", poll).await;
        assert_eq!(answer["action"], "none", "{answer}");
        waiting_poll = Some(log.take().len());
    }
    for wave in 0..waves {
        for target in targets.iter().filter(|t| t.wave == wave) {
            let answer = send(
                "/agent/v1/poll",
                json!({"instance_id": target.instance, "environment": "production", "current": null}),
            )
            .await;
            assert_eq!(answer["action"], "deploy", "wave {wave}: {answer}");
            polls.push(log.take().len());
            send(
                "/agent/v1/report",
                json!({"instance_id": target.instance, "environment": "production", "version": &sha[..12],
                       "outcome": "succeeded", "healthy": true, "current": &sha[..12], "log": "ok"}),
            )
            .await;
            reports.push(log.take().len());
        }
    }
    let finished = table.deployment("production", &deployment.id(), true).await.expect("read").expect("a deployment");
    assert_eq!(finished.state, DeploymentState::Succeeded, "{finished:?}");
    log.take();
    // The first poll after the end settles the target; the ones after are idle.
    let idle = json!({"instance_id": targets[0].instance, "environment": "production", "current": &sha[..12]});
    send("/agent/v1/poll", idle.clone()).await;
    let settling = log.take().len();
    send("/agent/v1/poll", idle).await;
    let idle_poll = log.take();

    let report_base = reports.iter().copied().min().unwrap_or(0);
    let per_wave_work: usize = reports.iter().map(|r| r - report_base).sum();
    let batches = fleet.div_ceil(25);
    let pages = fleet.div_ceil(1000);
    let budget = batches + pages + PER_DEPLOYMENT + PER_WAVE * waves;
    let fanout_own = planning.len() + per_wave_work;
    let mut by_operation: BTreeMap<&str, usize> = BTreeMap::new();
    for operation in &planning {
        *by_operation.entry(operation).or_default() += 1;
    }
    println!("fleet of {fleet} in {waves} waves");
    println!("  planning: {} requests {by_operation:?}", planning.len());
    println!("  wave changes and the end, beyond the reports themselves: {per_wave_work} requests");
    println!(
        "  the fan-out's own: {fanout_own}, budget ceil(N/25) + ceil(N/1000) + {PER_DEPLOYMENT} + {PER_WAVE} per wave = {budget} (ratio {:.2})",
        fanout_own as f64 / budget as f64
    );
    println!(
        "  per agent message: poll with work {}..{} requests, report {report_base}..{}",
        polls.iter().min().unwrap_or(&0),
        polls.iter().max().unwrap_or(&0),
        reports.iter().max().unwrap_or(&0)
    );
    println!("  after the end: the settling poll {settling} requests, an idle poll {idle_poll:?}");
    let idle_reads = idle_poll.len();
    if let Some(waiting) = waiting_poll {
        let busy = polls.iter().copied().min().unwrap_or(0);
        print_poll_rates(busy, waiting, idle_reads);
    }
    fanout_own <= budget && idle_reads <= 1
}

/// The table reads per second that polls cost at scale, from the reads one poll makes in each
/// situation (measured above), at the production intervals: the hot item is the deployment
/// record, which every poll of an instance in an unsettled deployment reads.
fn print_poll_rates(busy_reads: usize, waiting_reads: usize, idle_reads: usize) {
    let timing = Timing::default();
    let (busy, idle) = (timing.busy_poll as f64, timing.idle_poll as f64);
    println!(
        "  poll read rates at the production intervals (busy {busy} s, idle {idle} s; reads are eventually consistent, 0.5 RCU):"
    );
    for fleet in [1_000usize, 10_000] {
        // The canary strategy's largest wave is the last half of the fleet.
        let wave = fleet / 2;
        let during = wave as f64 / busy * busy_reads as f64 + (fleet - wave) as f64 / idle * waiting_reads as f64;
        let deployment_item = wave as f64 / busy + (fleet - wave) as f64 / idle;
        let idle_fleet = fleet as f64 / idle * idle_reads as f64;
        println!(
            "    {fleet:>6} instances: {during:>7.0} reads/s during the largest wave ({:.0} RCU/s on the deployment item, {:.0}% of one item's 3,000), {idle_fleet:>5.0} reads/s idle",
            deployment_item * 0.5,
            deployment_item * 0.5 / 3_000.0 * 100.0
        );
    }
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args().measurement_time(Duration::from_secs(5));
    plan_cpu(&mut criterion);
    criterion.final_summary();

    if std::env::var_os("AWS_ENDPOINT_URL").is_none() {
        println!("AWS_ENDPOINT_URL is not set: request counts skipped (make bench starts the emulator)");
        return;
    }
    let fleets: Vec<usize> = std::env::var("CONVEYOR_BENCH_FLEETS")
        .unwrap_or_else(|_| "10,100,250".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let within = runtime.block_on(async {
        let sdk = conveyor_shared::load_aws_config().await;
        let mut within = true;
        for fleet in fleets {
            within &= deployment_requests(&sdk, fleet).await;
        }
        within
    });
    if !within {
        eprintln!("a request count went over its budget");
        std::process::exit(1);
    }
}
