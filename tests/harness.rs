//! One harness for every end-to-end test: the dev server's functions on a random loopback
//! port, each test with its own table in the local AWS emulator (moto), so tests never share
//! data and can run in parallel.
//!
//! The emulator is started once per test run by `make test` (scripts/with-moto) and found
//! through `CONVEYOR_TEST_AWS_ENDPOINT`.

pub mod faults;
pub mod slack;

pub use faults::{Call, Effect, Fault, FaultProxy, Rule, Seen};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use aws_sdk_dynamodb::config::{Credentials, Region};
use bytes::Bytes;
use conveyor_cli::dev;
use conveyor_cli::local_iam::{FunctionSdks, LocalIam, Resources, Template};
use conveyor_shared::SdkConfig;
use conveyor_shared::config::{Config, SecretSource, Settings};
use conveyor_shared::secret::Secret;
use conveyor_shared::signature::{sign_github, sign_stripe};
use conveyor_shared::store::Table;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

pub const SECRET: &str = "e2e-webhook-secret";
pub const STRIPE_SECRET: &str = "whsec_e2e";

/// The emulator's endpoint; a clear message when the tests were started without one.
pub fn endpoint() -> String {
    std::env::var("CONVEYOR_TEST_AWS_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "CONVEYOR_TEST_AWS_ENDPOINT is not set: run the tests with `make test`, which starts the local AWS emulator (moto) and sets it"
        )
    })
}

/// SDK configuration for the emulator: dummy credentials, a fixed region, loopback only.
pub async fn sdk() -> SdkConfig {
    sdk_at(&endpoint()).await
}

/// Like [`sdk`], through another endpoint (a [`FaultProxy`] in front of the emulator). The
/// emulator enforces IAM: these are its administrator's keys (scripts/with-moto sets them),
/// for set-up and inspection; the functions call AWS with their own roles ([`function_sdk`]).
pub async fn sdk_at(endpoint: &str) -> SdkConfig {
    let key = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run the tests with `make test`"))
    };
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .timeout_config(conveyor_shared::emulator_timeouts())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(
            key("AWS_ACCESS_KEY_ID"),
            key("AWS_SECRET_ACCESS_KEY"),
            None,
            None,
            "e2e",
        ))
        .load()
        .await
}

/// The SAM-expanded template the functions' roles are made from (`make test` writes it
/// before the tests run; `CONVEYOR_TEMPLATE` names another).
pub fn template() -> &'static Template {
    static TEMPLATE: std::sync::OnceLock<Template> = std::sync::OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let path = std::env::var_os("CONVEYOR_TEMPLATE").map(PathBuf::from).unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(conveyor_cli::local_iam::EXPANDED_TEMPLATE)
        });
        Template::load(&path).unwrap_or_else(|e| panic!("{e}"))
    })
}

/// The resources of a test's table as the template's references name them (webhook secrets
/// given inline, so the secret parameters name nothing).
pub fn resources(table: &str, config: &Config) -> Resources {
    Resources::new("us-east-1", table, ARTIFACTS_BUCKET)
        .for_config(config)
        .with("GitHubWebhookSecretArn", "arn:aws:secretsmanager:us-east-1:123456789012:secret:inline-github")
        .with("StripeWebhookSecretArn", "arn:aws:secretsmanager:us-east-1:123456789012:secret:inline-stripe")
}

/// The AWS configuration `function` runs with against `table`: a session of a role whose
/// policy is the function's policy in the template, calling `endpoint` (the emulator, or a
/// [`FaultProxy`] in front of it).
pub async fn function_sdk(function: &str, table: &str, config: &Config, endpoint: &str) -> SdkConfig {
    function_sdk_with(function, &resources(table, config), endpoint).await
}

/// Like [`function_sdk`], with the template's references resolved against `resources`.
pub async fn function_sdk_with(function: &str, resources: &Resources, endpoint: &str) -> SdkConfig {
    let admin = sdk_at(endpoint).await;
    let policy = template().function_policy(function, resources).unwrap();
    let iam = LocalIam::new(&admin).await.unwrap();
    iam.session(&conveyor_cli::local_iam::role_name(function, &resources.table), &policy, function).await.unwrap()
}

/// The AWS configuration of an operator or CI job that runs `conveyor <command>` with the
/// policy the documentation publishes for it (`infra/policies/<policy>.json`), against
/// `table` (and `site_bucket`, for a publish), calling `endpoint`.
pub async fn operator_sdk(policy: &str, table: &str, site_bucket: &str, endpoint: &str) -> SdkConfig {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../infra/policies/{policy}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let document: Value = serde_json::from_str(&text).unwrap();
    let resources = Resources::new("us-east-1", table, ARTIFACTS_BUCKET).with("SiteBucket", site_bucket);
    let resolved = template().operator_policy(&document, &resources).unwrap();
    let admin = sdk_at(endpoint).await;
    let iam = LocalIam::new(&admin).await.unwrap();
    let role = conveyor_cli::local_iam::role_name(&format!("cli-{policy}"), &format!("{table}/{site_bucket}"));
    iam.session(&role, &resolved, policy).await.unwrap()
}

/// The artifacts bucket every test shares (each test's keys are its own).
pub const ARTIFACTS_BUCKET: &str = "conveyor-artifacts";

/// Launches `count` running instances in the emulator tagged `app = <app>`; answers their ids.
pub async fn launch_instances(sdk: &SdkConfig, count: i32, app: &str) -> Vec<String> {
    use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
    let launched = aws_sdk_ec2::Client::new(sdk)
        .run_instances()
        .image_id("ami-12c6146b")
        .min_count(count)
        .max_count(count)
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Instance)
                .tags(Tag::builder().key("app").value(app).build())
                .build(),
        )
        .send()
        .await
        .unwrap();
    launched.instances().iter().filter_map(|i| i.instance_id().map(str::to_owned)).collect()
}

/// Stores `value` in the emulator's Secrets Manager under a new name starting with
/// `prefix`; answers the name.
pub async fn store_secret(prefix: &str, value: &str) -> String {
    let name = unique_name(prefix);
    aws_sdk_secretsmanager::Client::new(&sdk().await)
        .create_secret()
        .name(&name)
        .secret_string(value)
        .send()
        .await
        .unwrap();
    name
}

/// A name no other test in this or a concurrent run uses.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{prefix}-{}-{nanos}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// The real payloads kept in the repository (`fixtures/`).
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

/// The repository's own sample events.
pub fn events_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../events")
}

/// A running dev server with its own table.
#[derive(Clone)]
pub struct TestApp {
    pub addr: SocketAddr,
    pub table: Table,
    /// The administrator's: for set-up and for looking at what the functions did.
    pub sdk: SdkConfig,
    /// Each function's own (its role's session).
    pub sdks: FunctionSdks,
    pub config: Config,
    pub artifacts: conveyor_shared::s3::Artifacts,
    pub artifacts_bucket: String,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

/// An HTTP answer: status and parsed JSON body (`Value::Null` when the body is not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl TestApp {
    /// Starts the dev server's functions with `config` (TOML) on a random port.
    pub async fn spawn(config: &str) -> TestApp {
        Self::spawn_with(config, |_| {}).await
    }

    /// Like [`TestApp::spawn`], with a chance to add functions to the catalog first.
    pub async fn spawn_with(config: &str, extend: impl FnOnce(&mut dev::Catalog)) -> TestApp {
        Self::spawn_calling(config, extend, &endpoint()).await
    }

    /// Like [`TestApp::spawn`], with every function's AWS calls sent to `aws` (a
    /// [`FaultProxy`] in front of the emulator); set-up, inspection and the stream that
    /// `conveyor dev` plays (Lambda's part) still go straight to the emulator.
    pub async fn spawn_through(config: &str, aws: &str) -> TestApp {
        Self::spawn_calling(config, |_| {}, aws).await
    }

    async fn spawn_calling(config: &str, extend: impl FnOnce(&mut dev::Catalog), aws: &str) -> TestApp {
        // Warnings and errors of the functions show with a failing test's output.
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
        let sdk = sdk().await;
        let settings = Settings {
            table: unique_name("conveyor-test"),
            config_path: "unused.toml".into(),
            artifacts_bucket: ARTIFACTS_BUCKET.into(),
        };
        let inline = |list: String| Some(SecretSource::Inline(Secret::new(list)));
        let secrets = dev::WebhookSecrets {
            github: inline(format!("rotated-out,{SECRET}")),
            stripe: inline(format!("whsec_rotated_out,{STRIPE_SECRET}")),
        };
        let table = Table::from_sdk(&sdk, settings.table.clone());
        assert!(table.create_if_missing().await.unwrap(), "a fresh table is created");
        let artifacts = conveyor_shared::s3::Artifacts::new(&sdk);
        artifacts.create_bucket_if_missing(&settings.artifacts_bucket).await.unwrap();
        let config = Config::parse(config, "test.toml").unwrap();
        let timing = conveyor_shared::config::Timing {
            planning_claim: 60,
            presign: std::time::Duration::from_secs(300),
            busy_poll: 1,
            idle_poll: 2,
            tick: std::time::Duration::from_secs(1),
        };
        // Every function calls the emulator with its own role, as in AWS.
        let through = sdk_at(aws).await;
        let sdks = dev::local_roles(template(), &config, &settings, &secrets, &through).await.unwrap().calling_as(&sdk);
        let mut catalog = dev::functions(config.clone(), &settings, &secrets, timing, &sdks).await.unwrap();
        extend(&mut catalog);
        let listener = dev::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (table_name, run_sdk) = (settings.table.clone(), sdks.caller().clone());
        tokio::spawn(async move {
            dev::run(listener, catalog, &table_name, &run_sdk, std::future::pending()).await.unwrap();
        });
        let client = Client::builder(TokioExecutor::new()).build_http();
        TestApp {
            addr,
            table,
            sdk,
            sdks,
            config,
            artifacts,
            artifacts_bucket: settings.artifacts_bucket.clone(),
            client,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Answer {
        let mut request = hyper::Request::builder().method(method).uri(self.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = self.client.request(request.body(Full::new(body.into())).unwrap()).await.unwrap();
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        Answer { status, body: serde_json::from_slice(&bytes).unwrap_or(Value::Null) }
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.request("GET", path, &[], Bytes::new()).await
    }

    /// Posts a GitHub delivery signed with the configured secret, as JSON.
    pub async fn deliver(&self, event: &str, delivery: &str, body: &[u8]) -> Answer {
        let signature = sign_github(SECRET.as_bytes(), body);
        self.request(
            "POST",
            "/webhooks/github",
            &[
                ("content-type", "application/json"),
                ("x-github-event", event),
                ("x-github-delivery", delivery),
                ("x-github-hook-id", "4242"),
                ("x-hub-signature-256", &signature),
            ],
            Bytes::copy_from_slice(body),
        )
        .await
    }

    /// Posts a Stripe event signed `age` seconds ago with the configured endpoint secret.
    pub async fn deliver_stripe(&self, body: &[u8], age: i64) -> Answer {
        let signature = sign_stripe(STRIPE_SECRET.as_bytes(), conveyor_shared::unix_now() - age, body);
        self.request(
            "POST",
            "/webhooks/stripe",
            &[("content-type", "application/json; charset=utf-8"), ("stripe-signature", &signature)],
            Bytes::copy_from_slice(body),
        )
        .await
    }

    /// This test's table as an operator reaches it with the published policy of a command
    /// (`infra/policies/<policy>.json`).
    pub async fn operator_table(&self, policy: &str) -> Table {
        let sdk = operator_sdk(policy, self.table.name(), "", &endpoint()).await;
        Table::from_sdk(&sdk, self.table.name())
    }

    /// A fresh token for `provider`, made as `conveyor token create` makes it.
    pub async fn provider_token(&self, provider: &str) -> String {
        let sdk = operator_sdk("token", self.table.name(), "", &endpoint()).await;
        let table = Table::from_sdk(&sdk, self.table.name());
        let secret = conveyor_cli::ops::create_provider_token(&table, &self.config, provider, None).await.unwrap();
        String::from_utf8(secret.expose().to_vec()).unwrap()
    }

    /// Uploads a manifest as `curl --data-binary @manifest.json -H "Authorization: Bearer ..."`.
    pub async fn upload_manifest(&self, provider: &str, token: &str, query: &str, body: &[u8]) -> Answer {
        let authorization = format!("Bearer {token}");
        self.request(
            "POST",
            &format!("/providers/{provider}/manifests{query}"),
            &[("content-type", "application/x-www-form-urlencoded"), ("authorization", &authorization)],
            Bytes::copy_from_slice(body),
        )
        .await
    }

    pub async fn images(&self, provider: &str, token: &str) -> Answer {
        let authorization = format!("Bearer {token}");
        self.request(
            "GET",
            &format!("/providers/{provider}/images"),
            &[("authorization", &authorization)],
            Bytes::new(),
        )
        .await
    }

    pub async fn deployments(&self, environment: &str) -> Vec<Value> {
        let answer = self.get(&format!("/api/v1/deployments?environment={environment}")).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        answer.body["deployments"].as_array().cloned().unwrap_or_default()
    }

    pub async fn builds(&self) -> Vec<Value> {
        let answer = self.get("/api/v1/builds").await;
        assert_eq!(answer.status, 200, "{answer:?}");
        answer.body["builds"].as_array().cloned().unwrap_or_default()
    }
}

/// Reads a sample from the repository's `events/` folder.
pub fn sample(path: &str) -> Vec<u8> {
    std::fs::read(events_dir().join(path)).unwrap()
}

/// A table, a versioned artifacts bucket and a configuration of their own, with no dev server
/// (so no tick runs by itself): for tests that drive the fan-out with a `now` of their choice.
pub struct Quiet {
    pub sdk: SdkConfig,
    pub table: Table,
    pub artifacts: conveyor_shared::s3::Artifacts,
    pub bucket: String,
    pub config: Config,
}

impl Quiet {
    pub async fn new(config: &str) -> Self {
        let sdk = sdk().await;
        let table = Table::from_sdk(&sdk, unique_name("conveyor-quiet"));
        table.create_if_missing().await.unwrap();
        let artifacts = conveyor_shared::s3::Artifacts::new(&sdk);
        let bucket = ARTIFACTS_BUCKET.to_string();
        artifacts.create_bucket_if_missing(&bucket).await.unwrap();
        Self { sdk, table, artifacts, bucket, config: Config::parse(config, "test.toml").unwrap() }
    }

    /// A fan-out on this table whose AWS calls go to `endpoint` (the emulator, or a
    /// [`FaultProxy`] in front of it).
    pub async fn fanout(&self, endpoint: &str) -> deploy_fanout::Fanout {
        let sdk = function_sdk(deploy_fanout::REGISTRATION.name, self.table.name(), &self.config, endpoint).await;
        deploy_fanout::Fanout::new(
            Table::from_sdk(&sdk, self.table.name()),
            conveyor_shared::ec2::Ec2::new(&sdk),
            conveyor_shared::s3::Artifacts::new(&sdk),
            std::sync::Arc::new(self.config.clone()),
            conveyor_shared::config::Timing::default(),
        )
    }

    /// A pending deployment of `sha` as the intake creates it, with the artifact uploaded
    /// (unless `artifact` is `None`).
    pub async fn queue(
        &self,
        environment: &str,
        repository: &str,
        sha: &str,
        created_at: i64,
        pushed_at: Option<i64>,
        artifact: Option<&[u8]>,
    ) -> conveyor_shared::domain::DeploymentRecord {
        use conveyor_shared::domain::{DeploymentRecord, DeploymentState, RunState};
        let url = format!("s3://{}/{repository}/{sha}.tar.gz", self.bucket);
        if let Some(bytes) = artifact {
            push_artifact(&self.bucket, repository, sha, bytes.to_vec()).await;
        }
        let deployment = DeploymentRecord {
            environment: environment.into(),
            repository: repository.into(),
            sha: sha.into(),
            branch: "main".into(),
            version: DeploymentRecord::version_for(sha),
            artifact: url,
            state: DeploymentState::Pending,
            reason: "CI succeeded on main".into(),
            build: "workflow_run:1:1:1".into(),
            created_at,
            pushed_at,
            run: RunState::default(),
        };
        self.table.create_deployment(&deployment).await.unwrap();
        deployment
    }

    pub async fn state(
        &self,
        deployment: &conveyor_shared::domain::DeploymentRecord,
    ) -> conveyor_shared::domain::DeploymentRecord {
        self.table.deployment(&deployment.environment, &deployment.id(), true).await.unwrap().unwrap()
    }
}

/// Uploads `bytes` as the artifact of `sha` in `repository`, as `conveyor artifact push` does
/// (default template) from a CI job holding its published policy. Answers the URL.
pub async fn push_artifact(bucket: &str, repository: &str, sha: &str, bytes: Vec<u8>) -> String {
    assert_eq!(bucket, ARTIFACTS_BUCKET, "the published policy names the stack's artifacts bucket");
    let ci = conveyor_shared::s3::Artifacts::new(&operator_sdk("artifact-push", "", "", &endpoint()).await);
    let target = conveyor_cli::ops::ArtifactTarget { bucket, repository, sha, environment: None };
    conveyor_cli::ops::push_artifact(&ci, &target, bytes).await.unwrap().0
}
