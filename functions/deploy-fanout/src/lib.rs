//! Deploy fan-out: rolls a pending deployment across its environment's EC2 instances in
//! waves, gates each wave on the agents' reports and health, and rolls back by itself.
//!
//! Three triggers, one function: deployments created or ended (table stream), the agent
//! channel ([`channel`]: `POST /agent/v1/poll`, `POST /agent/v1/report`), and a periodic
//! tick that times waves out, drops terminated instances and resumes whatever a crashed
//! invocation left half-done. Nothing is remembered between invocations (but agent tokens,
//! for a few minutes): every step reads the ledger, decides with
//! [`conveyor_shared::domain::rollout`], and writes conditionally.
//!
//! One deployment per environment at a time: the lock is taken with the planning claim and
//! turned into the running lock by the transaction that starts the deployment, and released
//! by the transaction that ends it (see [`conveyor_shared::store`]'s rollout module). Ending
//! also writes the last good release or the alert in that transaction, so a crash leaves
//! either a running deployment the next tick finishes, or an ended one with everything.
//!
//! Costs are per deployment, not per instance, wherever the fan-out acts by itself: targets
//! are written in batches, a wave starts with one update of the deployment's wave number,
//! and a wave's outcome is read from per-wave counters that each report updates in one
//! transaction with its target. Each agent learns its part at its next poll.

mod alerts;
mod channel;
mod settings;

pub use settings::StartError;

pub use channel::CREDENTIAL_HEADER;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use conveyor_shared::SdkConfig;
use conveyor_shared::auth::Tokens;
use conveyor_shared::config::{Config, Environment, Settings, Timing, agent_roles_from_env};
use conveyor_shared::domain::alert::AlertKind;
use conveyor_shared::domain::fleet::EnrollmentProof;
use conveyor_shared::domain::instance_proof::AgentRole;
use conveyor_shared::domain::rollout::{self, DeploymentPlan, Release, Step, TargetRecord, TargetState};
use conveyor_shared::domain::{DeploymentRecord, DeploymentState};
use conveyor_shared::ec2::{Ec2, Ec2Error};
use conveyor_shared::http::{self, BoxFuture, HttpFunction, Problem, Response, Route, Routed, StatusCode};
use conveyor_shared::registration::{Auth, Function, Registration};
use conveyor_shared::s3::{Artifacts, S3Error};
use conveyor_shared::store::{Counter, DeploymentEnd, DeploymentStart, StoreError, Table, Transition};
use conveyor_shared::sts::Sts;
use conveyor_shared::triggers::{ScheduledEvent, ScheduledFunction, StreamFunction, StreamRecord, new_text};

/// New deployments, as the template's stream mapping filters them.
pub const NEW_DEPLOYMENTS: &str =
    r#"{"eventName": ["INSERT"], "dynamodb": {"NewImage": {"sk": {"S": [{"prefix": "DEPLOYMENT#"}]}}}}"#;

/// Deployments that just ended (or failed while planned): the next queued one can start at
/// once instead of at the next tick.
pub const ENDED_DEPLOYMENTS: &str = r#"{"eventName": ["MODIFY"], "dynamodb": {"NewImage": {"sk": {"S": [{"prefix": "DEPLOYMENT#"}]}, "state": {"S": ["succeeded", "rolled_back", "failed"]}}, "OldImage": {"state": {"S": ["pending", "in_progress", "rolling_back"]}}}}"#;

/// An agent asks what to run.
const POLL: Route = Route::new("POST", conveyor_protocol::POLL_PATH, Auth::Function);
/// An agent says what it ran and how it went.
const REPORT: Route = Route::new("POST", conveyor_protocol::REPORT_PATH, Auth::Function);

/// The agent channel (a function URL; every message carries an agent credential, a token or
/// an instance proof), the stream of new and ended deployments, and a one-minute tick.
pub const REGISTRATION: Registration = Registration {
    name: "deploy-fanout",
    routes: &[POLL, REPORT],
    stream_filters: &[NEW_DEPLOYMENTS, ENDED_DEPLOYMENTS],
    schedule: Some(Duration::from_secs(60)),
    // s3:ListBucket: so that S3 answers 404, not 403, for an artifact never uploaded.
    permissions: &[
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:DeleteItem",
        "dynamodb:BatchWriteItem",
        "dynamodb:Query",
        "ec2:DescribeInstances",
        "s3:GetObject",
        "s3:GetObjectVersion",
        "s3:ListBucket",
    ],
};

#[derive(Debug, thiserror::Error)]
pub enum FanoutError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ec2(#[from] Ec2Error),
    #[error(transparent)]
    S3(#[from] S3Error),
    #[error("planning {0} outlived its claim; the next trigger plans it again")]
    ClaimExpired(String),
    #[error("the tick failed for {}: {}", .0.keys().cloned().collect::<Vec<_>>().join(", "), .0.values().cloned().collect::<Vec<_>>().join("; "))]
    Environments(BTreeMap<String, String>),
}

/// What an agent is told when its request could not be served: always 503, so the agent
/// polls again, with the cause's own code and message.
impl Problem for FanoutError {
    fn status(&self) -> StatusCode {
        StatusCode::SERVICE_UNAVAILABLE
    }
    fn code(&self) -> &'static str {
        match self {
            FanoutError::Store(err) => err.code(),
            FanoutError::Ec2(err) => err.code(),
            FanoutError::S3(err) => err.code(),
            FanoutError::ClaimExpired(_) | FanoutError::Environments(_) => "unavailable",
        }
    }
    fn public_message(&self) -> String {
        match self {
            FanoutError::Store(err) => err.public_message(),
            FanoutError::Ec2(err) => err.public_message(),
            FanoutError::S3(err) => err.public_message(),
            FanoutError::ClaimExpired(_) | FanoutError::Environments(_) => "send the request again".into(),
        }
    }
}

/// Agents on EC2 proving their instance: STS to ask, and the roles trusted.
#[derive(Clone, Debug)]
struct InstanceProofs {
    sts: Sts,
    roles: Arc<Vec<AgentRole>>,
}

/// How long a warm function trusts an agent token it found in the table. Polls come every few
/// seconds from every instance; with this an idle poll costs one table read, and a token
/// deleted from the table stops working within this time.
const TOKEN_CACHE: Duration = Duration::from_secs(300);
/// Tokens cached at most (one per environment in practice).
const TOKEN_CACHE_ENTRIES: usize = 256;
/// How long a warm function trusts an instance credential it checked: `conveyor agent forget`
/// takes effect within this time.
const CREDENTIAL_CACHE: Duration = Duration::from_secs(60);

/// An instance's credential hash, how its agent enrolled, and when it was read.
type CachedCredential = (String, EnrollmentProof, Instant);

/// Instance credentials cached at most (a warm function serves part of a fleet).
const CREDENTIAL_CACHE_ENTRIES: usize = 20_000;

#[derive(Clone)]
pub struct Fanout {
    table: Table,
    ec2: Ec2,
    artifacts: Artifacts,
    config: Arc<Config>,
    timing: Timing,
    /// Environment tokens, checked grants kept for [`TOKEN_CACHE`].
    tokens: Tokens,
    /// (environment, instance) to the hash of its agent's binding credential, when read.
    credentials: Arc<Mutex<HashMap<(String, String), CachedCredential>>>,
    /// Set when agents may prove their instance instead of presenting a token.
    proofs: Option<InstanceProofs>,
    /// (environment, instance) to when this container last recorded its agent's poll.
    seen: Arc<Mutex<HashMap<(String, String), i64>>>,
}

impl Fanout {
    pub fn new(table: Table, ec2: Ec2, artifacts: Artifacts, config: Arc<Config>, timing: Timing) -> Self {
        let tokens = Tokens::cached(table.clone(), TOKEN_CACHE, TOKEN_CACHE_ENTRIES);
        Self {
            table,
            ec2,
            artifacts,
            config,
            timing,
            tokens,
            credentials: Arc::default(),
            proofs: None,
            seen: Arc::default(),
        }
    }

    /// Lets agents whose instance profile has one of `roles` prove their instance through
    /// `sts` instead of presenting an environment token (no roles: tokens only).
    pub fn trusting_instance_profiles(mut self, sts: Sts, roles: Vec<AgentRole>) -> Self {
        self.proofs = (!roles.is_empty()).then(|| InstanceProofs { sts, roles: Arc::new(roles) });
        self
    }

    pub fn from_settings(settings: &Settings, sdk: &SdkConfig) -> Result<Self, StartError> {
        let config = Config::load(&settings.config_path)?;
        let table = Table::from_sdk(sdk, settings.table.clone());
        Ok(Self::new(table, Ec2::new(sdk), Artifacts::new(sdk), Arc::new(config), Timing::from_env())
            .trusting_instance_profiles(Sts::new(sdk)?, agent_roles_from_env()?))
    }

    /// The scope of a presented token's hash, from the cache or the table; none for a token
    /// that is unknown, revoked (within the cache time) or expired.
    /// How the agent enrolled, when a warm function has seen `hash` bind `instance` within
    /// the cache time (an idle poll then costs no read for it).
    fn known_credential(&self, environment: &str, instance: &str, hash: &str) -> Option<EnrollmentProof> {
        let key = (environment.to_owned(), instance.to_owned());
        let cache = self.credentials.lock().ok()?;
        let (known, proof, read) = cache.get(&key)?;
        (known == hash && read.elapsed() < CREDENTIAL_CACHE).then_some(*proof)
    }

    fn remember_credential(&self, environment: &str, instance: &str, hash: &str, proof: EnrollmentProof) {
        if let Ok(mut cache) = self.credentials.lock() {
            if cache.len() >= CREDENTIAL_CACHE_ENTRIES {
                cache.clear();
            }
            cache.insert((environment.to_owned(), instance.to_owned()), (hash.to_owned(), proof, Instant::now()));
        }
    }

    /// Starts the next queued deployment of `env` when none is planned or running. Per
    /// repository, the newest queued build (in commit order) supersedes the older ones;
    /// between repositories that share an environment, the one queued first goes first.
    pub async fn start_next(&self, env: &Environment, now: i64) -> Result<(), FanoutError> {
        let recent = self.table.recent_deployments(&env.name, 100).await?;
        let mut newest: BTreeMap<String, &DeploymentRecord> = BTreeMap::new();
        for queued in recent.iter().filter(|d| d.state == DeploymentState::Pending) {
            let slot = newest.entry(queued.repository.to_ascii_lowercase()).or_insert(queued);
            if queued.queue_order() > slot.queue_order() {
                *slot = queued;
            }
        }
        for candidate in newest.values() {
            for id in self.table.supersede_queued(candidate, &recent, now).await? {
                tracing::info!(environment = %env.name, deployment = %id, by = %candidate.id(), "queued deployment superseded");
            }
        }
        let Some(next) = newest.values().min_by_key(|d| (d.created_at, d.id())) else { return Ok(()) };
        self.begin(env, next, now).await
    }

    /// Claims `deployment` for planning (with the environment's lock) and plans it. Another
    /// deployment's lock, or another planner, leaves it queued.
    async fn begin(&self, env: &Environment, deployment: &DeploymentRecord, now: i64) -> Result<(), FanoutError> {
        let id = deployment.id();
        // The claim is timed from now (not from when the caller's work began), and so is the
        // planner's fence against outliving it.
        let now = now.max(conveyor_shared::unix_now());
        let claimed_at = Instant::now();
        let token = conveyor_shared::store::claim_token(&id, now);
        let claim = self.table.claim_planning(&env.name, &id, &token, now, self.timing.planning_claim).await?;
        if claim == Transition::Rejected {
            tracing::debug!(environment = %env.name, deployment = %id, "queued behind the lock or another planner");
            return Ok(());
        }
        let planned = self.plan(env, deployment, &token, now, claimed_at).await;
        if planned.is_err() {
            // Let the next trigger plan it again at once rather than when the claim expires.
            self.table.release_planning(&env.name, &id, &token).await?;
        }
        planned
    }

    async fn plan(
        &self,
        env: &Environment,
        deployment: &DeploymentRecord,
        token: &str,
        now: i64,
        claimed_at: Instant,
    ) -> Result<(), FanoutError> {
        let id = deployment.id();
        let id = id.as_str();
        let fail = |reason: String| async move {
            tracing::warn!(environment = %env.name, deployment = %id, %reason, "deployment failed before it started");
            let event = alerts::deployment_event(env, deployment, AlertKind::DeploymentFailed, &reason, now);
            let end = DeploymentEnd {
                environment: &env.name,
                id,
                from: DeploymentState::Pending,
                to: DeploymentState::Failed,
                reason: &reason,
                planner: Some(token),
                last_release: None,
                alert: Some(&event),
            };
            self.table.end_deployment(&end, now).await?;
            Ok::<_, FanoutError>(())
        };
        let artifact = match self.artifacts.head(&deployment.artifact).await {
            Ok(Some(artifact)) => artifact,
            Ok(None) => {
                let waited = now - deployment.created_at;
                let wait = i64::try_from(env.artifact_wait.0).unwrap_or(i64::MAX);
                if waited < wait {
                    // The upload may finish after CI reported success: stay queued (the lock
                    // is given back) and look again at the next tick.
                    tracing::info!(environment = %env.name, deployment = %id, artifact = %deployment.artifact, waited, "waiting for the build's artifact");
                    self.table.release_planning(&env.name, id, token).await?;
                    return Ok(());
                }
                return fail(format!(
                    "the build's artifact is missing at {} {waited} s after the build (artifact_wait is {} s): upload it with `conveyor artifact push`",
                    deployment.artifact, env.artifact_wait.0
                ))
                .await;
            }
            Err(err @ (S3Error::NoChecksum(_) | S3Error::NotReadable(_) | S3Error::BadUrl(_))) => {
                return fail(err.to_string()).await;
            }
            Err(err) => return Err(err.into()),
        };
        let instances = self.ec2.running_instances(None, &env.instances.tags).await?;
        let waves = match rollout::plan_waves(&instances, &env.rollout.waves, env.rollout.min_healthy) {
            Ok(waves) => waves,
            Err(err) => return fail(err.to_string()).await,
        };
        let release = Release {
            version: deployment.version.clone(),
            artifact: deployment.artifact.clone(),
            sha256: artifact.sha256,
            artifact_version: artifact.version_id,
        };
        // A rollback gives back the environment's last good release, whose artifact is known.
        let previous = self.table.last_release(&env.name).await?;
        let targets = DeploymentPlan {
            environment: &env.name,
            deployment: id,
            release: &release,
            previous: previous.as_ref(),
            now,
        }
        .targets(&waves);
        // Fenced: a planner that has outlived its claim (another may have taken over) stops
        // before it overwrites anything. The margin covers one batch of writes.
        let claim = Duration::from_secs(self.timing.planning_claim.max(1) as u64);
        let margin = Duration::from_secs(5).min(claim / 2);
        for batch in targets.chunks(conveyor_shared::store::BATCH_SIZE * 4) {
            if claimed_at.elapsed() + margin >= claim {
                return Err(FanoutError::ClaimExpired(id.to_owned()));
            }
            self.table.write_targets(batch).await?;
        }
        let sizes: Vec<usize> = waves.iter().map(Vec::len).collect();
        let reason = format!("rolling {} out to {} instances in {} waves", release.version, targets.len(), waves.len());
        let start = DeploymentStart {
            environment: &env.name,
            id,
            planner: token,
            sizes: &sizes,
            sha256: &release.sha256,
            artifact_version: release.artifact_version.as_deref(),
            reason: &reason,
            alert: Some(&alerts::deployment_event(env, deployment, AlertKind::DeploymentStarted, &reason, now)),
        };
        if self.table.start_deployment(&start, now).await? == Transition::Applied {
            tracing::info!(environment = %env.name, deployment = %id, %reason, "deployment started");
        } else {
            tracing::warn!(environment = %env.name, deployment = %id, "planning took over by another invocation");
        }
        Ok(())
    }

    /// Takes the running (or rolling back) deployment `id` of `env` one step further. The
    /// wave's hand-out needs no writes: each agent's poll sees the wave number on the
    /// deployment.
    pub async fn advance(
        &self,
        env: &Environment,
        id: &str,
        now: i64,
        waiting_for: &[String],
    ) -> Result<Step, FanoutError> {
        let Some(deployment) = self.table.deployment(&env.name, id, true).await? else { return Ok(Step::Wait) };
        if !matches!(deployment.state, DeploymentState::InProgress | DeploymentState::RollingBack) {
            return Ok(Step::Wait);
        }
        let progress = deployment.progress();
        let step = rollout::next_step(&progress, env.rollout.wave_timeout.0 as i64, now, waiting_for);
        match &step {
            Step::Wait => {}
            Step::StartWave(next) => {
                if self.table.advance_wave(&env.name, id, progress.wave, now).await? == Transition::Applied {
                    tracing::info!(environment = %env.name, deployment = %id, wave = next + 1, "next wave");
                }
            }
            Step::Succeed => {
                let planned: usize = progress.sizes.iter().sum();
                let dropped: usize = progress.dropped.iter().sum();
                let reason = match dropped {
                    0 => format!("{} runs on all {planned} instances", deployment.version),
                    _ => format!("{} runs on {} instances ({dropped} dropped)", deployment.version, planned - dropped),
                };
                let release = Release {
                    version: deployment.version.clone(),
                    artifact: deployment.artifact.clone(),
                    sha256: deployment.run.sha256.clone().unwrap_or_default(),
                    artifact_version: deployment.run.artifact_version.clone(),
                };
                let event = alerts::deployment_event(env, &deployment, AlertKind::DeploymentSucceeded, &reason, now);
                let end = DeploymentEnd {
                    environment: &env.name,
                    id,
                    from: DeploymentState::InProgress,
                    to: DeploymentState::Succeeded,
                    reason: &reason,
                    planner: None,
                    last_release: Some(&release),
                    alert: Some(&event),
                };
                if self.table.end_deployment(&end, now).await? == Transition::Applied {
                    tracing::info!(environment = %env.name, deployment = %id, %reason, "deployment succeeded");
                }
            }
            Step::RollBack { reason } => {
                // The waves so far go back to `previous`, one wave at a time, newest first.
                let alert = self.rollback_alert(env, &deployment, reason, now).await?;
                if self.table.begin_rollback(&deployment, reason, &alert, now).await? == Transition::Applied {
                    tracing::warn!(environment = %env.name, deployment = %id, %reason, "rolling back");
                }
            }
            Step::RestoreWave(wave) => {
                self.alert_not_back(env, &deployment, wave + 1, now).await?;
                if self.table.restore_wave(&env.name, id, wave + 1, now).await? == Transition::Applied {
                    tracing::info!(environment = %env.name, deployment = %id, wave = wave + 1, "restoring the next wave");
                }
            }
            Step::FinishRollback => {
                self.alert_not_back(env, &deployment, 0, now).await?;
                let end = DeploymentEnd {
                    environment: &env.name,
                    id,
                    from: DeploymentState::RollingBack,
                    to: DeploymentState::RolledBack,
                    reason: &deployment.reason,
                    planner: None,
                    last_release: None,
                    alert: None,
                };
                if self.table.end_deployment(&end, now).await? == Transition::Applied {
                    tracing::warn!(environment = %env.name, deployment = %id, reason = %deployment.reason, "rolled back");
                }
            }
        }
        Ok(step)
    }

    /// Every environment on its own: an error in one is logged and recorded on it, and the
    /// others are still ticked. Fails (after ticking all) when any environment failed.
    pub async fn tick(&self, now: i64) -> Result<(), FanoutError> {
        let mut failed = BTreeMap::new();
        let started = Instant::now();
        for env in &self.config.environments {
            // Each environment's work is timed from when it starts, not from the tick's start.
            let now = now + started.elapsed().as_secs() as i64;
            if let Err(err) = self.tick_environment(env, now).await {
                tracing::error!(environment = %env.name, error = %err, "tick failed for this environment");
                if let Err(record) = self.table.record_tick_error(&env.name, &err.to_string(), now).await {
                    tracing::error!(environment = %env.name, error = %record, "cannot record the tick's error");
                }
                failed.insert(env.name.clone(), err.to_string());
            }
        }
        if failed.is_empty() { Ok(()) } else { Err(FanoutError::Environments(failed)) }
    }

    /// Drives the environment's running deployment (drops terminated instances, times its wave
    /// out, finishes it), then starts queued work.
    async fn tick_environment(&self, env: &Environment, now: i64) -> Result<(), FanoutError> {
        if let Some(lock) = self.table.lock(&env.name).await? {
            match self.table.deployment(&env.name, &lock.holder, true).await? {
                Some(deployment) if deployment.state == DeploymentState::InProgress => {
                    let waiting = self.drop_terminated(env, &deployment, now).await?;
                    self.advance(env, &lock.holder, now, &waiting).await?;
                }
                Some(deployment) if deployment.state == DeploymentState::RollingBack => {
                    self.drop_terminated(env, &deployment, now).await?;
                    self.advance(env, &lock.holder, now, &[]).await?;
                }
                // Ended, but still named by a lock an older version left: give it up.
                Some(deployment) if deployment.state.is_final() => {
                    self.table.release_stale_lock(&env.name, &lock.holder).await?;
                }
                _ => {}
            }
        }
        self.start_next(env, now).await
    }

    /// Drops the targets of the wave in play whose instances no longer run (going forward:
    /// the ones that have not reported; rolling back: the ones not yet back); answers the
    /// ones still waited for.
    async fn drop_terminated(
        &self,
        env: &Environment,
        deployment: &DeploymentRecord,
        now: i64,
    ) -> Result<Vec<String>, FanoutError> {
        let rolling_back = deployment.state == DeploymentState::RollingBack;
        let (wave, counter) = match rolling_back {
            true => (deployment.run.rollback_wave.unwrap_or(0), Counter::DroppedWhileRollingBack),
            false => (deployment.run.wave.unwrap_or(0), Counter::Dropped),
        };
        let in_play = |t: &TargetRecord| match rolling_back {
            true => !t.state.is_settled(),
            false => t.state == TargetState::Waiting,
        };
        let waiting: Vec<TargetRecord> = self
            .table
            .deployment_targets(&env.name, &deployment.id())
            .await?
            .into_iter()
            .filter(|t| t.wave == wave && in_play(t))
            .collect();
        if waiting.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = waiting.iter().map(|t| t.instance.clone()).collect();
        let running = self.ec2.running_among(&ids).await?;
        let mut still = Vec::new();
        for target in waiting {
            if running.contains(&target.instance) {
                still.push(target.instance);
                continue;
            }
            tracing::info!(environment = %env.name, instance = %target.instance, "instance gone: dropped from the deployment");
            self.table.count_outcome(&target, counter, Some("no longer running"), now).await?;
        }
        Ok(still)
    }
}

impl Function for Fanout {
    fn registration(&self) -> &'static Registration {
        &REGISTRATION
    }
}

impl HttpFunction for Fanout {
    fn handle(&self, routed: Routed) -> BoxFuture<'_, Response> {
        Box::pin(async move {
            match *routed.route {
                POLL => self.poll(routed.request).await,
                REPORT => self.report(routed.request).await,
                _ => http::unhandled(&routed),
            }
        })
    }
}

impl StreamFunction for Fanout {
    fn handle_record<'a>(&'a self, record: &'a StreamRecord) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let Some(name) = new_text(record, "environment") else { return Ok(()) };
            let Some(env) = self.config.environment(name) else {
                tracing::warn!(environment = %name, "a deployment for an environment not in conveyor.toml");
                return Ok(());
            };
            // The time of each record's work, not of the batch: claims are timed from it.
            self.start_next(env, conveyor_shared::unix_now()).await.map_err(|e| e.to_string())
        })
    }
}

impl ScheduledFunction for Fanout {
    fn every(&self) -> Duration {
        self.timing.tick
    }

    fn tick<'a>(&'a self, _event: &'a ScheduledEvent) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move { Fanout::tick(self, conveyor_shared::unix_now()).await.map_err(|e| e.to_string()) })
    }
}
