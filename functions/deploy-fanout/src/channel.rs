//! The agent channel: `POST /agent/v1/poll` and `POST /agent/v1/report`.
//!
//! A poll reads the instance's target and, while a deployment involves it, the deployment,
//! both eventually consistent (half a read unit each, and an agent that misses the last
//! second's write polls again). A report is counted once: a repeated one changes nothing and
//! still answers 200, so an agent can send it until one is acknowledged. Reports never plan
//! the next deployment: the stream and the tick do.

use conveyor_protocol::{self as wire, Action, Outcome, Poll, PollAnswer, Report};
use conveyor_shared::config::AGENT_SEEN_EVERY_SECONDS;
use conveyor_shared::domain::DeploymentState;
use conveyor_shared::domain::fleet::EnrollmentProof;
use conveyor_shared::domain::instance_proof::{self, InstanceProof, ProofError};
use conveyor_shared::domain::rollout::{self, Instruction, ReportEffect, Step, TargetState};
use conveyor_shared::http::{self, Request, Response, StatusCode};
use conveyor_shared::store::{Counter, Put, Transition};
use conveyor_shared::token::{self, Scope};
use serde_json::json;

use crate::{Environment, Fanout, FanoutError};

trait AgentMessage {
    fn instance_id(&self) -> &str;
    fn environment(&self) -> &str;
    fn proof(&self) -> Option<&InstanceProof> {
        None
    }
}

impl AgentMessage for Poll {
    fn instance_id(&self) -> &str {
        &self.instance_id
    }
    fn environment(&self) -> &str {
        &self.environment
    }
    fn proof(&self) -> Option<&InstanceProof> {
        self.proof.as_ref()
    }
}

impl AgentMessage for Report {
    fn instance_id(&self) -> &str {
        &self.instance_id
    }
    fn environment(&self) -> &str {
        &self.environment
    }
}

/// Agent messages are small; anything larger is not one.
const MAX_MESSAGE_BYTES: usize = 64 * 1024;

fn parse_body<T: serde::de::DeserializeOwned + AgentMessage>(request: &Request) -> Result<T, Box<Response>> {
    let bad = |status, code, message: String| Box::new(http::error(status, code, message));
    if request.body().len() > MAX_MESSAGE_BYTES {
        return Err(bad(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "agent messages are at most 64 KB".into()));
    }
    let message: T = serde_json::from_slice(request.body())
        .map_err(|e| bad(StatusCode::BAD_REQUEST, "invalid_message", format!("the message is not valid: {e}")))?;
    let id = message.instance_id();
    let valid = !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !valid {
        return Err(bad(
            StatusCode::BAD_REQUEST,
            "invalid_message",
            "instance_id must look like i-0123456789abcdef0".into(),
        ));
    }
    Ok(message)
}

/// The header that carries an agent's instance credential.
pub use conveyor_protocol::CREDENTIAL_HEADER;

/// What a message was admitted with: its environment, and a credential to hand the agent
/// when this was the instance's first contact.
struct Admitted<'a> {
    env: &'a Environment,
    issued: Option<conveyor_shared::secret::Secret>,
}

impl Fanout {
    /// An agent's message, parsed (400, 413), the environment its token and body agree on
    /// (401, 403, 404), and the instance it speaks for, if its agent may (403). Without a
    /// token, and when instance proofs are on, the agent speaks with the credential it got
    /// for proving its instance, or proves it now.
    async fn accept<T: serde::de::DeserializeOwned + AgentMessage>(
        &self,
        request: &Request,
        first_contact: bool,
    ) -> Result<(T, Admitted<'_>), Box<Response>> {
        let message: T = parse_body(request)?;
        let instance = message.instance_id();
        if http::header(request, "authorization").is_some() || self.proofs.is_none() {
            let env = self.agent_environment(request, message.environment()).await.map_err(Box::new)?;
            let issued = self.bind(env, instance, request, first_contact).await.map_err(Box::new)?;
            return Ok((message, Admitted { env, issued }));
        }
        let env = self.config.environment(message.environment()).ok_or_else(|| {
            let name = message.environment();
            Box::new(http::error(StatusCode::NOT_FOUND, "unknown_environment", format!("no environment `{name}`")))
        })?;
        let issued = self.bind_proven(env, instance, request, message.proof()).await.map_err(Box::new)?;
        Ok((message, Admitted { env, issued }))
    }

    /// Admits a message without a token: with the credential of an instance-profile
    /// enrolment, or, on a poll, a proof of the instance that enrols its agent (replacing any
    /// credential before it, so a rebuilt host needs no operator).
    async fn bind_proven(
        &self,
        env: &Environment,
        instance: &str,
        request: &Request,
        proof: Option<&InstanceProof>,
    ) -> Result<Option<conveyor_shared::secret::Secret>, Response> {
        let presented = http::header(request, CREDENTIAL_HEADER).map(|c| token::hash(c.trim().as_bytes()));
        if presented.is_none() && proof.is_none() {
            // Nothing to check: answered before any read.
            return Err(http::error(
                StatusCode::UNAUTHORIZED,
                "missing_token",
                "send Authorization: Bearer <token>, or an instance proof (an agent on EC2 run without --token-file sends one with its first poll)",
            ));
        }
        let proven = Some(EnrollmentProof::InstanceProfile);
        if presented.as_ref().is_some_and(|hash| self.known_credential(&env.name, instance, hash) == proven) {
            return Ok(None);
        }
        let enrolled = self.table.enrollment(&env.name, instance).await.map_err(|err| http::problem(&err))?;
        if let (Some(hash), Some(enrolled)) = (&presented, &enrolled)
            && Some(enrolled.proof) == proven
            && enrolled.credential_hash == *hash
        {
            self.remember_credential(&env.name, instance, hash, EnrollmentProof::InstanceProfile);
            return Ok(None);
        }
        let Some(proof) = proof else {
            return Err(http::error(
                StatusCode::FORBIDDEN,
                "credential_refused",
                format!(
                    "this credential does not speak for {instance} (the instance was proven again since, or forgotten): poll with a new instance proof"
                ),
            ));
        };
        let signed_at = self.check_proof(env, instance, proof, enrolled.as_ref().and_then(|e| e.proven_at)).await?;
        let secret = token::generate().map_err(|err| http::problem(&err))?;
        let hash = token::hash(secret.expose());
        let replacing = enrolled.as_ref().map(|e| e.credential_hash.as_str());
        let now = conveyor_shared::unix_now();
        let enrolment = self.table.enroll_proven(&env.name, instance, &hash, replacing, signed_at, now);
        match enrolment.await.map_err(|err| http::problem(&err))? {
            Put::Created => {
                self.remember_credential(&env.name, instance, &hash, EnrollmentProof::InstanceProfile);
                tracing::info!(environment = %env.name, instance, "an agent proved its instance and enrolled");
                Ok(Some(secret))
            }
            Put::AlreadyExists => Err(http::error(
                StatusCode::CONFLICT,
                "enrollment_changed",
                format!("another agent enrolled {instance} meanwhile; poll again"),
            )),
        }
    }

    /// Whether `proof` shows that the sender runs on `instance`, an instance of `env`: the
    /// proof's shape and that it was not used before (`proven_at` of the current
    /// enrolment), then STS, then the trusted roles, then EC2 (the instance runs and carries
    /// the environment's tags). Answers when the proof was signed.
    async fn check_proof(
        &self,
        env: &Environment,
        instance: &str,
        proof: &InstanceProof,
        proven_at: Option<i64>,
    ) -> Result<i64, Response> {
        let refused = |err: ProofError| http::problem(&err);
        let Some(proofs) = &self.proofs else {
            return Err(http::error(
                StatusCode::UNAUTHORIZED,
                "missing_token",
                "instance proofs are off here: send Authorization: Bearer <token>",
            ));
        };
        let checked =
            instance_proof::check(proof, &env.name, conveyor_shared::unix_now(), proofs.sts.host()).map_err(refused)?;
        instance_proof::fresh(checked.signed_at, proven_at).map_err(refused)?;
        let arn = proofs.sts.caller_arn(proof, &checked.host).await.map_err(|err| http::problem(&err))?;
        instance_proof::admit(&arn, &proofs.roles, instance).map_err(refused)?;
        match self.ec2.runs_with_tags(instance, &env.instances.tags).await {
            Ok(true) => Ok(checked.signed_at),
            Ok(false) => {
                let tags: Vec<String> = env.instances.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
                Err(http::error(
                    StatusCode::FORBIDDEN,
                    "not_in_environment",
                    format!(
                        "instance {instance} is not a running instance of environment `{}` (tags {})",
                        env.name,
                        tags.join(", ")
                    ),
                ))
            }
            Err(err) => Err(http::problem(&FanoutError::Ec2(err))),
        }
    }

    /// Checks that the sender may speak for `instance`; on a first contact (a poll of an
    /// instance with no binding credential yet) answers the credential to hand out.
    async fn bind(
        &self,
        env: &Environment,
        instance: &str,
        request: &Request,
        first_contact: bool,
    ) -> Result<Option<conveyor_shared::secret::Secret>, Response> {
        let presented = http::header(request, CREDENTIAL_HEADER).map(|c| token::hash(c.trim().as_bytes()));
        if presented.as_ref().is_some_and(|hash| self.known_credential(&env.name, instance, hash).is_some()) {
            return Ok(None);
        }
        let enrolled = self.table.enrollment(&env.name, instance).await.map_err(|err| http::problem(&err))?;
        let matches = |hash: &str| presented.as_deref() == Some(hash);
        let taken = || {
            http::error(
                StatusCode::FORBIDDEN,
                "instance_enrolled",
                format!(
                    "instance {instance} is bound to another agent: an agent speaks for its instance with the credential it got at first contact (`conveyor agent forget --environment {} --instance {instance}` lets a new agent enrol)",
                    env.name
                ),
            )
        };
        match enrolled {
            Some(enrolled) if enrolled.confirmed => {
                if !matches(&enrolled.credential_hash) {
                    return Err(taken());
                }
                self.remember_credential(&env.name, instance, &enrolled.credential_hash, enrolled.proof);
                Ok(None)
            }
            Some(enrolled) if matches(&enrolled.credential_hash) => {
                // Its first use: binding from now on.
                let hash = enrolled.credential_hash;
                let confirmed = self
                    .table
                    .confirm_enrollment(&env.name, instance, &hash)
                    .await
                    .map_err(|err| http::problem(&err))?;
                if confirmed == Transition::Rejected {
                    // Replaced by another first contact meanwhile.
                    return Err(taken());
                }
                self.remember_credential(&env.name, instance, &hash, EnrollmentProof::FirstContact);
                Ok(None)
            }
            // First contact, or the agent never got the first answer: issue a credential.
            _ if first_contact => {
                let secret = token::generate().map_err(|err| http::problem(&err))?;
                let hash = token::hash(secret.expose());
                let now = conveyor_shared::unix_now();
                match self.table.enroll(&env.name, instance, &hash, now).await.map_err(|err| http::problem(&err))? {
                    Put::Created => Ok(Some(secret)),
                    // Another agent confirmed its credential meanwhile.
                    Put::AlreadyExists => Err(taken()),
                }
            }
            // A report counts only from the instance's own agent: one that never polled (or
            // lost its credential) polls first, which enrols it.
            _ => Err(http::error(
                StatusCode::FORBIDDEN,
                "not_enrolled",
                format!(
                    "no agent is enrolled for {instance}: poll first, then report with the credential the poll answers"
                ),
            )),
        }
    }

    /// The environment a request's token and body agree on.
    async fn agent_environment(&self, request: &Request, claimed: &str) -> Result<&Environment, Response> {
        let now = conveyor_shared::unix_now();
        let scope = self.tokens.scope(request, now).await.map_err(|err| http::problem(&err))?;
        if scope != Scope::Environment(claimed.to_owned()).as_string() {
            return Err(http::error(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("the token is not for environment `{claimed}`"),
            ));
        }
        self.config.environment(claimed).ok_or_else(|| {
            http::error(StatusCode::NOT_FOUND, "unknown_environment", format!("no environment `{claimed}`"))
        })
    }

    pub(crate) async fn poll(&self, request: Request) -> Response {
        let (poll, Admitted { env, issued }) = match self.accept::<Poll>(&request, true).await {
            Ok(accepted) => accepted,
            Err(response) => return *response,
        };
        self.note_seen(&env.name, &poll.instance_id).await;
        let mut answer = match self.answer_poll(env, &poll).await {
            Ok(answer) => answer,
            Err(response) => return response,
        };
        if let Some(credential) = issued {
            // Shown once: the agent keeps it and sends it from now on.
            answer.credential = Some(String::from_utf8_lossy(credential.expose()).into_owned());
        }
        http::json(StatusCode::OK, &answer)
    }

    /// Records that the instance's agent polled, for heartbeat checks: at most once per
    /// [`AGENT_SEEN_EVERY_SECONDS`] per instance and container, so idle polls stay reads. A
    /// failed write is only logged: the poll is answered all the same.
    async fn note_seen(&self, environment: &str, instance: &str) {
        let now = conveyor_shared::unix_now();
        let key = (environment.to_owned(), instance.to_owned());
        let due = match self.seen.lock() {
            Ok(mut seen) => {
                let due = seen.get(&key).is_none_or(|at| now - at >= AGENT_SEEN_EVERY_SECONDS);
                if due {
                    seen.insert(key, now);
                }
                due
            }
            Err(_) => false,
        };
        if due && let Err(err) = self.table.record_agent_seen(environment, instance, now).await {
            tracing::warn!(%environment, %instance, error = %err, "cannot record the agent's poll");
        }
    }

    /// The answer to a poll.
    async fn answer_poll(&self, env: &Environment, poll: &Poll) -> Result<PollAnswer, Response> {
        let decision = self.decide_poll(env, poll).await.map_err(|err| http::problem(&err))?;
        let (release, rollback) = match decision {
            Instruction::Deploy { release, rollback } => (release, rollback),
            Instruction::Wait => return Ok(PollAnswer::wait(self.timing.busy_poll)),
            Instruction::Nothing => return Ok(PollAnswer::wait(self.timing.idle_poll)),
        };
        let pinned = release.artifact_version.as_deref();
        let url = self
            .artifacts
            .presigned_get(&release.artifact, pinned, self.timing.presign)
            .await
            .map_err(|err| http::problem(&err))?;
        Ok(PollAnswer {
            action: Action::Deploy,
            release: Some(wire::Release { version: release.version, url, sha256: release.sha256 }),
            rollback,
            credential: None,
            health: env.health.as_ref().map(|health| wire::HealthCheck {
                url: health.url.clone(),
                expect_status: Some(health.expect_status),
                timeout_seconds: health.timeout.0,
                attempts: health.attempts,
                interval_seconds: health.interval.0,
            }),
            poll_after: self.timing.busy_poll,
        })
    }

    /// An idle poll reads the instance's target only; the deployment is read while one
    /// involves the instance, and an ended deployment settles the target once.
    async fn decide_poll(&self, env: &Environment, poll: &Poll) -> Result<Instruction, FanoutError> {
        let Some(target) = self.table.target(&env.name, &poll.instance_id, false).await? else {
            return Ok(Instruction::Nothing);
        };
        let progress = if rollout::needs_progress(&target) {
            self.table.deployment(&env.name, &target.deployment, false).await?.map(|d| d.progress())
        } else {
            None
        };
        let decision = rollout::instruct(&target, progress.as_ref(), poll.current.as_deref());
        let now = conveyor_shared::unix_now();
        let settled = if decision.restored {
            // Back on the last good release while its deployment rolls back: counted in its
            // wave, and the rollback moves on once the wave is back.
            let counted = self.table.count_outcome(&target, Counter::Restored, None, now).await?;
            if counted == Transition::Applied {
                self.advance(env, &target.deployment, now, &[]).await?;
            }
            counted
        } else if let Some(to) = decision.settle {
            self.table.settle_target(&target, to, now).await?
        } else {
            Transition::Applied
        };
        // A rejected settle means the reads were stale (they are eventually consistent): act
        // on nothing and ask again soon rather than on what may be an old picture.
        Ok(if settled == Transition::Rejected { Instruction::Wait } else { decision.instruction })
    }

    pub(crate) async fn report(&self, request: Request) -> Response {
        let (report, Admitted { env, .. }) = match self.accept::<Report>(&request, false).await {
            Ok(accepted) => accepted,
            Err(response) => return *response,
        };
        let now = conveyor_shared::unix_now();
        match self.record_report(env, &report, now).await {
            Ok(step) => http::json(StatusCode::OK, &json!({"ok": true, "step": format!("{step:?}")})),
            Err(err) => http::problem(&err),
        }
    }

    async fn record_report(&self, env: &Environment, report: &Report, now: i64) -> Result<Step, FanoutError> {
        let succeeded = report.outcome == Outcome::Succeeded && report.healthy;
        self.table
            .record_agent_state(&env.name, &report.instance_id, report.current.as_deref(), report.healthy, now)
            .await?;
        let Some(target) = self.table.target(&env.name, &report.instance_id, true).await? else {
            return Ok(Step::Wait);
        };
        let Some(deployment) = self.table.deployment(&env.name, &target.deployment, true).await? else {
            return Ok(Step::Wait);
        };
        let counter = match rollout::judge_report(&target, &deployment.progress(), &report.version, succeeded) {
            ReportEffect::Ignore => {
                if !succeeded && deployment.state != DeploymentState::InProgress {
                    self.alert_failed_rollback(env, &deployment, &target, &report.version, report.log.as_deref(), now)
                        .await?;
                }
                return Ok(Step::Wait);
            }
            ReportEffect::Record(TargetState::Succeeded) => Counter::Succeeded,
            ReportEffect::Record(_) => Counter::Failed,
        };
        let detail = match counter {
            Counter::Succeeded => format!("runs {} and is healthy", report.version),
            _ => report.log.clone().unwrap_or_else(|| "failed without a log".into()),
        };
        if self.table.count_outcome(&target, counter, Some(&detail), now).await? == Transition::Rejected {
            // Counted before (a retried report), or the deployment ended meanwhile.
            return Ok(Step::Wait);
        }
        self.advance(env, &deployment.id(), now, &[]).await
    }
}
