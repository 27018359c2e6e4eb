//! `alert-dispatch`: runs the health checks in `conveyor.toml` every minute and sends every
//! alert (a check going down or up, a rollback, a failed payment, a failed invalidation) to
//! its channels, once.
//!
//! Triggers: the schedule (run the checks; send what is in the outbox: new alerts, and
//! messages a channel asked to have later) and new alert items (the table's stream, so an
//! alert raised by another function goes out at once). Both may reach one alert at the same
//! time: each channel's try is claimed first, so a message goes to a channel once; the
//! outbox entry goes only when every channel has it or refused it for good.

mod channels;
mod deliver;
mod fleet;

use fleet::RunChecks;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use conveyor_shared::SdkConfig;
use conveyor_shared::config::{Check, Config, Environment, LoadError, Settings};
use conveyor_shared::domain::DeploymentState;
use conveyor_shared::domain::alarm::{AlarmChange, alarm_alert};
use conveyor_shared::domain::alert::{Alert, AlertKind, AlertSource, DeliveryState, Severity};
use conveyor_shared::domain::checks::instances::{self, instance_of};
use conveyor_shared::domain::checks::{StoredCheck, plan_run};
use conveyor_shared::domain::dispatch::{self, Answer};
use conveyor_shared::ec2::Ec2;
use conveyor_shared::http::BoxFuture;
use conveyor_shared::probe::{ProbeError, Prober};
use conveyor_shared::registration::{Function, Registration};
use conveyor_shared::store::{
    ChannelDelivery, DeliveryRecord, Put, RunWritten, StoreError, Table, Transition, Tried, claim_token,
};
use conveyor_shared::triggers::{
    Notification, NotificationFunction, ScheduledEvent, ScheduledFunction, StreamFunction, StreamRecord, new_text,
};

pub use channels::Channels;

/// New alerts, whichever function raised them.
pub const NEW_ALERTS: &str = r#"{"eventName": ["INSERT"], "dynamodb": {"NewImage": {"sk": {"S": ["ALERT"]}}}}"#;

pub const REGISTRATION: Registration = Registration {
    name: "alert-dispatch",
    routes: &[],
    stream_filters: &[NEW_ALERTS],
    schedule: Some(Duration::from_secs(60)),
    permissions: &[
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:DeleteItem",
        "dynamodb:Query",
        "secretsmanager:GetSecretValue",
        "ses:SendEmail",
        "ec2:DescribeInstances",
        "ec2:RebootInstances",
    ],
};

/// How long an invocation holds the right to send one message to one channel: longer than
/// a try with its waits, so a live invocation never loses it; one that died is replaced
/// after this (and its message sent again: the receiver may have it, see the README).
pub const DELIVERY_LEASE_SECONDS: i64 = 60;
/// Checks probed at once: with each check's timeout at most 60 s, up to this many checks
/// are all probed within a minute.
const CONCURRENT_CHECKS: usize = 256;
/// Probes still running this long after the run started are given up (their checks keep
/// their state), so the states are written whatever else the run has to do.
const PROBE_BUDGET: Duration = Duration::from_secs(70);
/// After this long since the run started, a channel's "later" is left to the next run
/// instead of being waited out.
const WAITING_BUDGET: Duration = Duration::from_secs(80);
/// After this long since the run started, no further alert is started: the rest wait in the
/// outbox for the next run (a run must end within the function's 120 s, and one alert's
/// tries take at most about 15 s per channel).
const DELIVERY_BUDGET: Duration = Duration::from_secs(90);

/// One invocation's clock: the time it started at as the records see it (`now`), and how
/// long it has really been running. Leases and retry times are taken from [`Clock::at`], so
/// they stay true however long the run took before it got there.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    now: i64,
    started: Instant,
    /// The schedule waits out short "later"s; a stream record leaves them to the schedule
    /// (a batch of records must not wait for each).
    may_wait: bool,
}

impl Clock {
    pub fn scheduled(now: i64) -> Self {
        Self { now, started: Instant::now(), may_wait: true }
    }

    pub fn streamed(now: i64) -> Self {
        Self { now, started: Instant::now(), may_wait: false }
    }

    /// `now`, moved on by the time the invocation has spent.
    pub fn at(&self) -> i64 {
        self.now + self.started.elapsed().as_secs() as i64
    }

    fn past(&self, budget: Duration) -> bool {
        self.started.elapsed() > budget
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] LoadError),
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error("cannot build the HTTP client for channels: {0}")]
    Channels(#[from] reqwest::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum DispatchFailure {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the run failed for {}", .0.join("; "))]
    Parts(Vec<String>),
}

/// What one scheduled run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunReport {
    pub checks: RunWritten,
    /// Alerts in the outbox that this run finished (every channel has them).
    pub settled: usize,
}

#[derive(Clone)]
pub struct AlertDispatch {
    table: Table,
    prober: Prober,
    channels: Channels,
    ec2: Ec2,
    config: Arc<Config>,
    every: Duration,
}

impl AlertDispatch {
    pub fn new(table: Table, prober: Prober, channels: Channels, ec2: Ec2, config: Arc<Config>) -> Self {
        Self { table, prober, channels, ec2, config, every: REGISTRATION.schedule.unwrap_or(Duration::from_secs(60)) }
    }

    /// Runs the schedule at another rate (`conveyor dev`'s `CONVEYOR_TICK_SECONDS`).
    pub fn every(self, every: Duration) -> Self {
        Self { every, ..self }
    }

    pub fn from_settings(settings: &Settings, sdk: &SdkConfig) -> Result<Self, StartupError> {
        let config = Config::load(&settings.config_path)?;
        Ok(Self::new(
            Table::from_sdk(sdk, settings.table.clone()),
            Prober::new()?,
            Channels::new(sdk)?,
            Ec2::new(sdk),
            Arc::new(config),
        ))
    }

    /// One scheduled run: every check, then every alert waiting in the outbox.
    pub async fn run(&self, now: i64) -> Result<RunReport, DispatchFailure> {
        let clock = Clock::scheduled(now);
        let mut failures = Vec::new();
        let mut report = RunReport::default();
        match self.run_checks(clock).await {
            Ok(written) => {
                if written.failed > 0 {
                    failures.push(format!("{} check messages could not be stored (logged above)", written.failed));
                }
                report.checks = written;
            }
            Err(err) => failures.push(format!("checks: {err}")),
        }
        match self.deliver_outbox(clock).await {
            Ok(settled) => report.settled = settled,
            Err(err) => failures.push(format!("outbox: {err}")),
        }
        if failures.is_empty() { Ok(report) } else { Err(DispatchFailure::Parts(failures)) }
    }

    /// Probes every check at once (bounded), decides, and stores the decision with its
    /// messages. Nothing is written for a check whose state did not change.
    pub async fn run_checks(&self, clock: Clock) -> Result<RunWritten, StoreError> {
        if self.config.checks.is_empty() {
            return Ok(RunWritten::default());
        }
        let stored = self.table.check_states().await?;
        let RunChecks { checks, mut outcomes, present, unhealable } = self.checks_of_this_run(clock.now).await;
        // Heartbeats and unreachable hosts are decided already; the rest are fetched, from a
        // place that moves each run, so a run out of time never starves the same checks.
        let mut to_probe: Vec<Check> = checks.iter().filter(|c| !outcomes.contains_key(&c.name)).cloned().collect();
        if !to_probe.is_empty() {
            let shift = (clock.now / 60).rem_euclid(to_probe.len() as i64) as usize;
            to_probe.rotate_left(shift);
        }
        outcomes.extend(self.probe_all(&to_probe, clock).await);
        let plan = plan_run(&checks, &stored, &outcomes, clock.now);
        let written = self.table.write_check_run(&plan, clock.now).await?;
        if written.lost > 0 {
            tracing::info!(lost = written.lost, "an overlapping run stored some checks first; its decision stands");
        }
        // Instances that left the fleet: their state goes, an announced outage is closed.
        for (parent, instances) in &present {
            for (name, gone, closing) in instances::gone(parent, &stored, instances, clock.now) {
                if let Err(err) = self.table.forget_check(name, gone, closing.as_ref(), clock.now).await {
                    tracing::error!(check = %name, error = %err, "cannot forget the check of an instance that left");
                }
            }
        }
        // Self-healing acts only on states this run stored, or found stored.
        let writes: BTreeMap<&str, &conveyor_shared::domain::checks::CheckWrite> =
            plan.writes.iter().map(|w| (w.check.as_str(), w)).collect();
        let state_of = |name: &str| -> Option<StoredCheck> {
            match writes.get(name) {
                Some(write) if written.stored.contains(name) => {
                    Some(StoredCheck { state: write.state.clone(), version: write.expected_version + 1 })
                }
                Some(_) => None,
                None => stored.get(name).cloned(),
            }
        };
        let healable: Vec<Check> = checks
            .iter()
            .filter(|c| c.name.rsplit_once('/').is_some_and(|(parent, _)| !unhealable.contains(parent)))
            .cloned()
            .collect();
        for check in instances::reboots_due(&healable, state_of) {
            if clock.past(PROBE_BUDGET) {
                tracing::warn!("self-healing waits for the next run: this one is out of time");
                break;
            }
            if let Err(err) = self.heal(check, state_of(&check.name), clock.at()).await {
                tracing::error!(check = %check.name, error = %err, "self-healing could not be recorded");
            }
        }
        Ok(written)
    }

    async fn probe_all(&self, checks: &[Check], clock: Clock) -> BTreeMap<String, Result<(), String>> {
        let limit = Arc::new(tokio::sync::Semaphore::new(CONCURRENT_CHECKS));
        let mut running = tokio::task::JoinSet::new();
        for check in checks.iter().cloned() {
            let (prober, limit) = (self.prober.clone(), limit.clone());
            running.spawn(async move {
                let _permit = limit.acquire_owned().await;
                let outcome = prober.run(&check).await;
                (check.name, outcome)
            });
        }
        let mut outcomes = BTreeMap::new();
        let deadline = tokio::time::Instant::from_std(clock.started + PROBE_BUDGET);
        loop {
            match tokio::time::timeout_at(deadline, running.join_next()).await {
                Ok(Some(Ok((name, outcome)))) => {
                    outcomes.insert(name, outcome);
                }
                // A probe that panicked is no observation: the check keeps its state.
                Ok(Some(Err(err))) => tracing::error!(error = %err, "a check's probe stopped"),
                Ok(None) => break,
                Err(_) => {
                    tracing::error!(
                        unfinished = running.len(),
                        "checks still running when the run's time for probing ran out keep their state; fewer or faster checks"
                    );
                    running.abort_all();
                    break;
                }
            }
        }
        outcomes
    }
}

impl Function for AlertDispatch {
    fn registration(&self) -> &'static Registration {
        &REGISTRATION
    }
}

impl StreamFunction for AlertDispatch {
    fn handle_record<'a>(&'a self, record: &'a StreamRecord) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let (Some(source), Some(id)) = (new_text(record, "source"), new_text(record, "id")) else { return Ok(()) };
            let now = conveyor_shared::unix_now();
            let work = async {
                // Read again: the schedule may have sent it already.
                let Some(alert) = self.table.alert(source, id).await? else { return Ok(()) };
                if alert.delivery != DeliveryState::Pending {
                    return Ok(());
                }
                self.deliver(&alert, Clock::streamed(now)).await.map(|_| ())
            };
            work.await.map_err(|err: StoreError| err.to_string())
        })
    }
}

impl NotificationFunction for AlertDispatch {
    /// A CloudWatch alarm of Conveyor's own, through the stack's alarm topic: raised as an
    /// alert (once per alarm change), which the stream then delivers like any other.
    fn handle_notification<'a>(&'a self, message: &'a Notification) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let change = match AlarmChange::parse(&message.message) {
                Ok(change) => change,
                Err(err) => {
                    // Not an alarm (a test message from the console, say): nothing to raise,
                    // and retrying would not make it one.
                    tracing::warn!(message_id = %message.message_id, error = %err, "an SNS message that is not a CloudWatch alarm change");
                    return Ok(());
                }
            };
            let Some(alert) = alarm_alert(&change, conveyor_shared::unix_now()) else { return Ok(()) };
            self.table.record_alert(&alert).await.map(|_| ()).map_err(|err| err.to_string())
        })
    }
}

impl ScheduledFunction for AlertDispatch {
    fn every(&self) -> Duration {
        self.every
    }

    fn tick<'a>(&'a self, _event: &'a ScheduledEvent) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move { self.run(conveyor_shared::unix_now()).await.map(|_| ()).map_err(|e| e.to_string()) })
    }
}
