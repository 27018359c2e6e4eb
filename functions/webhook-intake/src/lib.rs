//! GitHub webhook intake (`POST /webhooks/github`). The ledger it writes is read through
//! the `ledger-api` function.
//!
//! A delivery is handled in the order that keeps bad input from changing anything:
//! size, signature (over the raw bytes), headers, content type, parse and plan (pure), and
//! only then the table: claim the delivery id, record what the plan says, mark it done.

use std::sync::Arc;

use conveyor_shared::SdkConfig;
use conveyor_shared::config::{Config, Environment, LoadError, SecretSource, Settings, SettingsError};
use conveyor_shared::domain::DeploymentRecord;
use conveyor_shared::domain::DeploymentState;
use conveyor_shared::domain::gate::{self, Gate};
use conveyor_shared::domain::intake::{self, BuildOrder, MAX_BODY_BYTES, Outcome, PlanContext};
use conveyor_shared::http::{self, BoxFuture, HttpFunction, Request, Response, Route, Routed, StatusCode};
use conveyor_shared::registration::{Auth, Function, Registration};
use conveyor_shared::secrets::{KeyRing, SecretsError};
use conveyor_shared::signature;
use conveyor_shared::store::{Claimed, DELIVERY_TTL_SECONDS, Handled, Key, Put, StoreError, Table, Transition};
use serde_json::json;

/// GitHub's webhook deliveries.
const GITHUB: Route = Route::new("POST", "/webhooks/github", Auth::Function);

pub const REGISTRATION: Registration = Registration {
    name: "webhook-intake",
    routes: &[GITHUB],
    stream_filters: &[],
    schedule: None,
    permissions: &[
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:DeleteItem",
        "dynamodb:BatchWriteItem",
        "dynamodb:Query",
        "secretsmanager:GetSecretValue",
    ],
};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Config(#[from] LoadError),
    #[error(transparent)]
    Secrets(#[from] SecretsError),
}

/// The intake function: everything it needs, built once at cold start.
#[derive(Clone)]
pub struct Intake {
    table: Table,
    secrets: KeyRing,
    config: Arc<Config>,
    artifacts_bucket: String,
}

impl Intake {
    pub fn new(
        table: Table,
        secrets: impl Into<KeyRing>,
        config: Arc<Config>,
        artifacts_bucket: impl Into<String>,
    ) -> Self {
        Self { table, secrets: secrets.into(), config, artifacts_bucket: artifacts_bucket.into() }
    }

    /// Loads `conveyor.toml`, resolves the webhook secrets and builds the table client.
    pub async fn from_settings(
        settings: &Settings,
        secret: &SecretSource,
        sdk: &SdkConfig,
    ) -> Result<Self, StartupError> {
        let config = Config::load(&settings.config_path)?;
        let secrets = KeyRing::load(secret, sdk).await?;
        let table = Table::from_sdk(sdk, settings.table.clone());
        Ok(Self::new(table, secrets, Arc::new(config), settings.artifacts_bucket.clone()))
    }

    async fn github(&self, request: Request) -> Response {
        let body = request.body();
        if body.len() > MAX_BODY_BYTES {
            return http::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the body is over GitHub's 25 MB limit",
            );
        }
        let signature = http::header(&request, "x-hub-signature-256");
        if let Err(err) = self.secrets.verify(|secrets| signature::verify_github(secrets, signature, body)).await {
            return http::problem(&err);
        }
        let (Some(event), Some(guid)) =
            (http::header(&request, "x-github-event"), http::header(&request, "x-github-delivery"))
        else {
            let missing =
                if http::header(&request, "x-github-event").is_none() { "X-GitHub-Event" } else { "X-GitHub-Delivery" };
            return http::problem(&intake::IntakeError::MissingHeader(missing));
        };
        // Redeliveries keep their GUID and every hook on an event shares it: dedupe on both.
        let hook_id = http::header(&request, "x-github-hook-id").unwrap_or("none");
        let payload = match intake::payload_json(http::header(&request, "content-type"), body) {
            Ok(payload) => payload,
            Err(err) => return http::problem(&err),
        };
        let now = conveyor_shared::unix_now();
        let ctx = PlanContext { config: &self.config, artifacts_bucket: &self.artifacts_bucket, now };
        let plan = match intake::plan(event, guid, &payload, &ctx) {
            Ok(plan) => plan,
            Err(err) => return http::problem(&err),
        };
        if let Outcome::Ping { zen } = &plan.outcome {
            return http::json(StatusCode::OK, &json!({"ok": true, "event": "ping", "zen": zen}));
        }

        let work = || async {
            let (created, gates) = self.apply(&plan, now).await?;
            let (outcome, detail) = match &plan.outcome {
                Outcome::Ignored(reason) => ("ignored", reason.clone()),
                _ => ("recorded", String::new()),
            };
            Ok(Handled { value: (created, gates), outcome, detail })
        };
        let key = Key::delivery(hook_id, guid);
        let Handled { value: (created, gates), outcome, detail } =
            match self.table.run_claimed(key, event, now, DELIVERY_TTL_SECONDS, work).await {
                Claimed::Done(handled) => handled,
                Claimed::Duplicate => {
                    tracing::info!(event, delivery = guid, hook_id, "duplicate delivery");
                    return http::json(
                        StatusCode::OK,
                        &json!({"ok": true, "duplicate": true, "delivery": guid, "event": event}),
                    );
                }
                Claimed::InFlight { retry_after } => {
                    tracing::info!(event, delivery = guid, hook_id, "delivery being processed by another attempt");
                    return http::in_flight(retry_after);
                }
                // Given back: a redelivery is processed in full.
                Claimed::Failed(err) => return http::problem(&err),
            };
        let status = if outcome == "ignored" { StatusCode::ACCEPTED } else { StatusCode::OK };
        tracing::info!(event, delivery = guid, outcome, deployments = created.len(), "delivery handled");
        let deployments: Vec<_> = created
            .iter()
            .map(|d| json!({"environment": d.environment, "sha": d.sha, "version": d.version, "state": d.state, "reason": d.reason}))
            .collect();
        let mut body = json!({"ok": true, "duplicate": false, "delivery": guid, "event": event, "outcome": outcome, "deployments": deployments});
        if !gates.is_empty() {
            body["gate"] = json!(gates);
        }
        if !detail.is_empty() {
            body["reason"] = detail.into();
        }
        http::json(status, &body)
    }

    /// Records the plan. Every write is keyed by a natural key, so a retry repeats nothing.
    /// Returns the deployments that this call created (skipped ones included), and what the
    /// gate said for each environment the run's commit may deploy to.
    async fn apply(
        &self,
        plan: &intake::Plan,
        now: i64,
    ) -> Result<(Vec<DeploymentRecord>, std::collections::BTreeMap<String, String>), StoreError> {
        self.table.record_commits(&plan.commits).await?;
        if let Some(push) = &plan.push {
            self.table.record_push(push).await?;
        }
        if let Some(head) = &plan.head
            && self.table.advance_branch_head(head).await? == Transition::Rejected
        {
            tracing::info!(repository = %head.repository, branch = %head.branch, "a later push of this branch is known already");
        }
        if let Some(build) = &plan.build {
            self.table.record_build(build).await?;
            if !build.succeeded() {
                tracing::warn!(repository = %build.repository, sha = %build.sha, build = %build.name, conclusion = %build.conclusion, "build did not succeed");
            }
        }
        let mut created = Vec::new();
        let mut gates = std::collections::BTreeMap::new();
        let Some(run) = &plan.run else { return Ok((created, gates)) };
        // Recorded unless a report that ranks as high is; the gate is decided either way, so
        // a redelivery after a crash finishes what the first attempt started.
        self.table.record_run(run, now).await?;
        let runs = self.table.runs_of(&run.repository, &run.sha).await?;
        for planned in &plan.deployments {
            let Some(env) = self.config.environment(&planned.environment) else { continue };
            let said = match gate::decide(env, &runs) {
                Gate::Deploy(reason) => {
                    let deployment = self.ordered(&DeploymentRecord { reason, ..planned.clone() }).await?;
                    match self.table.create_deployment(&deployment).await? {
                        Put::Created if deployment.state == DeploymentState::Skipped => {
                            created.push(deployment.clone());
                            format!("every run passed, but not deployed: {}", deployment.reason)
                        }
                        Put::Created => {
                            tracing::info!(environment = %deployment.environment, sha = %deployment.sha, reason = %deployment.reason, "deployment created");
                            // A run that failed meanwhile wrote its run before this read, or
                            // reads after this create: one of the two sees the other.
                            let again = self.table.runs_of(&run.repository, &run.sha).await?;
                            match gate::decide(env, &again) {
                                Gate::Cancel(reason) => self.cancel(env, &deployment.id(), &reason, now).await?,
                                _ => {
                                    created.push(deployment);
                                    "every run passed: deployment queued".to_owned()
                                }
                            }
                        }
                        Put::AlreadyExists => "every run passed (the deployment exists already)".to_owned(),
                    }
                }
                Gate::Wait(running) if running.is_empty() => "no run that counts here has passed yet".to_owned(),
                Gate::Wait(running) => format!("waiting for {}", running.join(", ")),
                Gate::Cancel(reason) => {
                    // Told once per run, commit and environment (redeliveries raise nothing).
                    self.table.record_alert(&intake::ci_failed_alert(&env.name, run, &reason, now)).await?;
                    self.cancel(env, &planned.id(), &reason, now).await?
                }
            };
            gates.insert(env.name.clone(), said);
        }
        Ok((created, gates))
    }

    /// Cancels the commit's deployment in `env` if it has not started (a run failed), and
    /// says what happened.
    async fn cancel(&self, env: &Environment, id: &str, failure: &str, now: i64) -> Result<String, StoreError> {
        let reason = format!("cancelled before it started: {failure}");
        Ok(match self.table.cancel_queued(&env.name, id, &reason, now).await? {
            Transition::Applied => {
                tracing::warn!(environment = %env.name, deployment = %id, %reason, "queued deployment cancelled");
                reason
            }
            // None queued, or it has started (the rollout's own health gate decides then).
            Transition::Rejected => format!("{failure} (no deployment of this commit was waiting to start)"),
        })
    }

    /// The planned deployment, stamped with when its commit became the branch's head, or
    /// skipped when the ledger knows a newer head (never deploy an older commit over it).
    async fn ordered(&self, planned: &DeploymentRecord) -> Result<DeploymentRecord, StoreError> {
        let head = self.table.branch_head(&planned.repository, &planned.branch).await?;
        let known = match &head {
            Some(head) if head.sha != planned.sha => self.table.commit_known(&planned.repository, &planned.sha).await?,
            _ => false,
        };
        Ok(match intake::order_build(head.as_ref(), &planned.sha, known) {
            BuildOrder::Head { pushed_at } => DeploymentRecord { pushed_at, ..planned.clone() },
            BuildOrder::Stale(reason) => {
                DeploymentRecord { state: DeploymentState::Skipped, reason, ..planned.clone() }
            }
        })
    }
}

impl Function for Intake {
    fn registration(&self) -> &'static Registration {
        &REGISTRATION
    }
}

impl HttpFunction for Intake {
    fn handle(&self, routed: Routed) -> BoxFuture<'_, Response> {
        Box::pin(async move {
            match *routed.route {
                GITHUB => self.github(routed.request).await,
                _ => http::unhandled(&routed),
            }
        })
    }
}
