//! The rig of the rollout tests: a fleet of real agent processes, a health endpoint that
//! answers from the release each instance runs, and the dev server they talk to.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use conveyor_e2e::TestApp;
use http_body_util::Full;
use serde_json::{Value, json};

/// The agents, killed when the test ends.
pub struct Fleet {
    pub agents: Vec<(String, Child)>,
    /// The server the agents talk to.
    pub server: String,
    pub root: tempfile::TempDir,
    pub auth: Auth,
    pub health: SocketAddr,
}

/// How the agents show who they are.
pub enum Auth {
    /// The environment's token, in this file.
    Token(PathBuf),
    /// Each instance's instance profile session (environment variables, as the AWS SDKs
    /// read them): the agents prove their instance.
    InstanceProfile(HashMap<String, conveyor_agent::proof::AwsCredentials>),
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for (_, child) in &mut self.agents {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Fleet {
    pub fn current(&self, instance: &str) -> Option<String> {
        std::fs::read_link(self.root.path().join(instance).join("current"))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
    }

    pub fn all_run(&self, version: &str) -> bool {
        self.agents.iter().all(|(id, _)| self.current(id).as_deref() == Some(version))
    }
}

/// Serves `GET /<instance>/health`: 200 when the instance's current release says `ok` in
/// its `health.txt` and the instance is not on the sick list, 500 otherwise.
pub async fn health_server(root: PathBuf, sick: Arc<Mutex<HashSet<String>>>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let (root, sick) = (root.clone(), sick.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let instance = request.uri().path().trim_matches('/').split('/').next().unwrap_or("").to_owned();
                    let healthy = !sick.lock().unwrap().contains(&instance)
                        && std::fs::read_to_string(root.join(&instance).join("current/health.txt"))
                            .is_ok_and(|s| s.trim() == "ok");
                    let status = if healthy { 200 } else { 500 };
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder().status(status).body(Full::new(Bytes::new())).unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// A release: a `.tar.gz` with `health.txt` and a hook file. A `slow` release takes three
/// seconds to validate on each instance, so that a test can act while it rolls; a
/// `stalling` one sits in its after-install hook (unpacked, not switched to) for 20 s, a
/// `stalling-long` one for 30 s.
pub fn artifact(kind: &str) -> Vec<u8> {
    let (health, validate) = match kind {
        "slow" | "stalling" | "stalling-long" => ("ok", "sleep 3; test -f health.txt"),
        "counted" => ("ok", ""),
        other => (other, "test -f health.txt"),
    };
    let mut hooks = format!("[validate]\ncommand = \"{validate}\"\n");
    match kind {
        "stalling" => hooks.push_str("[after_install]\ncommand = \"sleep 20\"\ntimeout = 60\n"),
        // Longer than the rig's 20 s wave timeout.
        "stalling-long" => hooks.push_str("[after_install]\ncommand = \"sleep 30\"\ntimeout = 60\n"),
        // Counts its validations in APP_DIR/validations.log.
        "counted" => hooks = "[validate]\ncommand = \"echo $CONVEYOR_VERSION >> ../../validations.log\"\n".into(),
        _ => {}
    }
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    for (name, body) in [("health.txt", health), ("conveyor-hooks.toml", hooks.as_str())] {
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, name, body.as_bytes()).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

pub struct Rig {
    pub app: TestApp,
    /// The team's Slack channel, where alert-dispatch (in the dev server) posts.
    pub slack: conveyor_e2e::slack::SlackStandIn,
    pub fleet: Fleet,
    pub repository: String,
    pub instances: Vec<String>,
    pub sick: Arc<Mutex<HashSet<String>>>,
}

pub async fn rig(instances: i32) -> Rig {
    rig_with(instances, false).await
}

/// A rig whose agents prove their instances (no token) when `proven`.
pub async fn rig_with(instances: i32, proven: bool) -> Rig {
    rig_calling(instances, proven, &conveyor_e2e::endpoint()).await
}

/// A rig whose functions send their AWS calls to `aws` (a fault proxy).
pub async fn rig_calling(instances: i32, proven: bool, aws: &str) -> Rig {
    let tag = conveyor_e2e::unique_name("shop");
    let slack = conveyor_e2e::slack::SlackStandIn::start().await;
    let config = format!(
        "{}[[environment]]\nname = \"production\"\nbranch = \"main\"\nrepository = \"*\"\n[environment.instances]\ntags = {{ app = \"{tag}\" }}\n[environment.rollout]\nwaves = [1, \"50%\", \"100%\"]\nwave_timeout = \"20s\"\n",
        slack.channel("team").await
    );
    let app = TestApp::spawn_through(&config, aws).await;
    let ids = conveyor_e2e::launch_instances(&app.sdk, instances, &tag).await;
    let root = tempfile::tempdir().unwrap();
    let sick = Arc::new(Mutex::new(HashSet::new()));
    let health = health_server(root.path().to_owned(), sick.clone()).await;
    let auth = if proven {
        let mut sessions = HashMap::new();
        for id in &ids {
            sessions.insert(id.clone(), super::assume(super::AGENT_ROLE, id).await);
        }
        Auth::InstanceProfile(sessions)
    } else {
        let token =
            conveyor_cli::ops::create_environment_token(&app.table, &app.config, "production", None).await.unwrap();
        let token_file = root.path().join("token");
        std::fs::write(&token_file, token.expose()).unwrap();
        Auth::Token(token_file)
    };
    let mut fleet = Fleet { agents: Vec::new(), server: app.url(""), root, auth, health };
    for id in &ids {
        fleet.agents.push((id.clone(), spawn_agent(&fleet, id)));
    }
    Rig { app, slack, fleet, repository: format!("acme/{tag}"), instances: ids, sick }
}

pub fn spawn_agent(fleet: &Fleet, id: &str) -> Child {
    let mut agent = Command::new(env!("CARGO_BIN_EXE_conveyor-agent"));
    match &fleet.auth {
        Auth::Token(file) => {
            agent.arg("--token-file").arg(file);
        }
        Auth::InstanceProfile(sessions) => {
            let session = &sessions[id];
            agent
                .env("AWS_ACCESS_KEY_ID", &session.access_key_id)
                .env("AWS_SECRET_ACCESS_KEY", &session.secret_access_key)
                .env("AWS_SESSION_TOKEN", session.session_token.as_deref().unwrap_or_default());
        }
    }
    agent
        .args(["--server", &fleet.server])
        .args(["--environment", "production", "--instance-id", id])
        .arg("--app-dir")
        .arg(fleet.root.path().join(id))
        .args(["--health-url", &format!("http://{}/{id}/health", fleet.health)])
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap()
}

impl Rig {
    /// Uploads a build and tells Conveyor its CI succeeded on main.
    pub async fn ship(&self, sha: &str, health: &str) {
        let bytes = artifact(health);
        conveyor_e2e::push_artifact(&self.app.artifacts_bucket, &self.repository, sha, bytes).await;
        let body = json!({
            "action": "completed",
            "workflow_run": {"id": 1, "name": "CI", "workflow_id": 1, "head_branch": "main", "head_sha": sha,
                             "run_attempt": 1, "conclusion": "success", "updated_at": "2026-11-22T00:00:00Z",
                             "head_repository": {"full_name": self.repository}},
            "repository": {"full_name": self.repository}
        });
        // Delivered again while the answer is a 5xx, as an operator redelivers it.
        for _ in 0..120 {
            let answer = self.app.deliver("workflow_run", &format!("ship-{sha}"), body.to_string().as_bytes()).await;
            if answer.status == 200 {
                return;
            }
            assert!(answer.status >= 500 || answer.status == 409, "{answer:?}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!("the CI success of {sha} was never accepted");
    }

    pub async fn deployment(&self, sha: &str) -> Value {
        // The ledger API may answer 5xx on a bad day: asked again.
        for _ in 0..120 {
            let answer = self.app.get("/api/v1/deployments?environment=production").await;
            if answer.status == 200 {
                let all = answer.body["deployments"].as_array().cloned().unwrap_or_default();
                return all.into_iter().find(|d| d["sha"] == sha).unwrap_or(Value::Null);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!("the ledger API never answered");
    }

    /// Waits until the deployment of `sha` reaches a final state.
    pub async fn finished(&self, sha: &str) -> Value {
        for _ in 0..240 {
            let deployment = self.deployment(sha).await;
            if ["succeeded", "rolled_back", "failed", "superseded"]
                .contains(&deployment["state"].as_str().unwrap_or(""))
            {
                return deployment;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!("the deployment of {sha} did not finish: {}", self.deployment(sha).await);
    }

    pub async fn wait_until(&self, what: &str, check: impl Fn() -> bool) {
        for _ in 0..240 {
            if check() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!("timed out waiting until {what}");
    }

    pub async fn targets(&self, sha: &str) -> Vec<conveyor_shared::domain::rollout::TargetRecord> {
        let id = conveyor_shared::domain::deployment_id(&self.repository, sha);
        self.app.table.deployment_targets("production", &id).await.unwrap()
    }
}

/// Never handed the release: still waiting, or settled as untouched by a poll.
pub fn untouched(state: conveyor_shared::domain::rollout::TargetState) -> bool {
    use conveyor_shared::domain::rollout::TargetState::{Untouched, Waiting};
    matches!(state, Waiting | Untouched)
}

pub fn sha(n: u8) -> String {
    format!("{n:02x}").repeat(20)
}

impl Rig {
    /// Stops the agent of `instance`, as if its machine died.
    pub fn kill_agent(&mut self, instance: &str) {
        if let Some((_, child)) = self.fleet.agents.iter_mut().find(|(id, _)| id == instance) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits until the deployment of `sha` runs.
    pub async fn running(&self, sha: &str) {
        for _ in 0..240 {
            if self.deployment(sha).await["state"] == "in_progress" {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the deployment of {sha} did not start");
    }

    pub async fn wave_of(&self, sha: &str, wave: usize) -> Vec<String> {
        self.targets(sha).await.into_iter().filter(|t| t.wave == wave).map(|t| t.instance).collect()
    }
}

impl Rig {
    /// Starts the agent of `instance` again, as after a reboot or a crash.
    pub fn restart_agent(&mut self, instance: &str) {
        // The old process was killed and waited for by `kill_agent`.
        self.fleet.agents.retain(|(id, _)| id != instance);
        let child = spawn_agent(&self.fleet, instance);
        self.fleet.agents.push((instance.to_owned(), child));
    }
}
