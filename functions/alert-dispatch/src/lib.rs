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

/// What one run checks.
#[derive(Default)]
struct RunChecks {
    checks: Vec<Check>,
    /// Outcomes known without fetching (heartbeats, hosts without the address).
    outcomes: BTreeMap<String, Result<(), String>>,
    /// Per environment check whose instances EC2 listed: the instances that run.
    present: BTreeMap<String, std::collections::BTreeSet<String>>,
    /// Environment checks whose instances must not be rebooted this run (what a deployment
    /// is doing is unknown).
    unhealable: std::collections::BTreeSet<String>,
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

    /// The checks of this run: the fixed ones, and one per running instance of each
    /// environment check, except instances a running deployment is working on (its health
    /// gate judges them) and instances launched within the last minutes. Heartbeats, and
    /// instances that cannot be checked, come decided.
    async fn checks_of_this_run(&self, now: i64) -> RunChecks {
        let mut run = RunChecks::default();
        // Per environment, once per run however many checks it has.
        let mut listed: BTreeMap<&str, Result<Vec<instances::Host>, String>> = BTreeMap::new();
        let mut owned_of: BTreeMap<&str, Result<std::collections::BTreeSet<String>, String>> = BTreeMap::new();
        for check in &self.config.checks {
            let Some(environment) = check.environment.as_deref().and_then(|name| self.config.environment(name)) else {
                run.checks.push(check.clone());
                continue;
            };
            if !listed.contains_key(environment.name.as_str()) {
                let hosts = self.ec2.running_hosts(&environment.instances.tags).await.map_err(|e| e.to_string());
                listed.insert(&environment.name, hosts);
                let owned = self.owned_by_deployment(environment, now).await.map_err(|e| e.to_string());
                owned_of.insert(&environment.name, owned);
            }
            let hosts = match listed[environment.name.as_str()].clone() {
                Ok(hosts) => hosts,
                Err(err) => {
                    // No observation: each instance keeps its state until EC2 answers again.
                    tracing::error!(check = %check.name, error = %err, "cannot list the environment's instances");
                    run.unhealable.insert(check.name.clone());
                    continue;
                }
            };
            run.present.insert(check.name.clone(), hosts.iter().map(|h| h.id.clone()).collect());
            let owned = match owned_of[environment.name.as_str()].clone() {
                Ok(owned) => owned,
                Err(err) => {
                    // Checked all the same, but nothing is rebooted: a deployment may be at work.
                    tracing::warn!(environment = %environment.name, error = %err, "cannot read the running deployment; checking every instance, rebooting none");
                    run.unhealable.insert(check.name.clone());
                    Default::default()
                }
            };
            let hosts: Vec<_> = hosts.into_iter().filter(|h| !owned.contains(&h.id)).collect();
            let hosts = instances::past_grace(hosts, now);
            if check.agent_silent_for.is_some() {
                let seen = match self.table.environment_instances(&environment.name).await {
                    Ok(records) => records
                        .into_iter()
                        .filter_map(|r| r.seen_at.max(r.reported_at).map(|at| (r.instance, at)))
                        .collect(),
                    Err(err) => {
                        tracing::error!(check = %check.name, error = %err, "cannot read when the agents were last heard of");
                        run.present.remove(&check.name);
                        continue;
                    }
                };
                let (heartbeats, decided) = instances::heartbeats(check, &hosts, &seen, now);
                run.checks.extend(heartbeats);
                run.outcomes.extend(decided);
                continue;
            }
            let (expanded, decided) = instances::expand(check, &hosts);
            run.checks.extend(expanded);
            run.outcomes.extend(decided);
        }
        run
    }

    /// The instances of `environment` in the started waves of its running deployment.
    async fn owned_by_deployment(
        &self,
        environment: &Environment,
        now: i64,
    ) -> Result<std::collections::BTreeSet<String>, StoreError> {
        let Some(lock) = self.table.lock(&environment.name).await?.filter(|lock| lock.live(now)) else {
            return Ok(Default::default());
        };
        let Some(deployment) = self.table.deployment(&environment.name, &lock.holder, false).await? else {
            return Ok(Default::default());
        };
        if !matches!(deployment.state, DeploymentState::InProgress | DeploymentState::RollingBack) {
            return Ok(Default::default());
        }
        let targets = self.table.deployment_targets(&environment.name, &lock.holder).await?;
        Ok(instances::in_active_waves(&targets, deployment.run.wave.unwrap_or(0)))
    }

    /// Reboots the instance of a down per-instance check, at most once per its window, and
    /// says so (or why it could not) on the check's channels.
    async fn heal(&self, check: &Check, state: Option<StoredCheck>, now: i64) -> Result<(), StoreError> {
        let Some(instance) = instance_of(&check.name) else { return Ok(()) };
        let window = check.reboot_every.0 as i64;
        if self.table.claim_reboot(instance, &check.name, now, window).await? == Put::AlreadyExists {
            return Ok(());
        }
        let environment = check.environment.clone().unwrap_or_default();
        let cause = state.and_then(|s| s.state.cause).unwrap_or_else(|| "its conditions failed".into());
        let every = conveyor_shared::domain::checks::run::duration(window);
        let alert = match self.ec2.reboot(instance).await {
            Ok(()) => {
                tracing::warn!(%instance, check = %check.name, "self-healing: instance rebooted");
                Alert::new(AlertSource::Check, format!("{}-reboot-{now}", check.name), AlertKind::InstanceRebooted, Severity::Warning, now)
                    .summary(format!("Rebooted {instance} of {environment} (self-healing)"))
                    .cause(format!("check {} is down: {cause}", check.name))
                    .impact(format!("{instance} is away for the minutes a reboot takes; it is rebooted at most once every {every}"))
                    .action("Nothing now; if it stays down after the reboot, look at the instance (the check keeps reminding)")
            }
            Err(err) => {
                tracing::error!(%instance, check = %check.name, error = %err, "self-healing: the reboot failed");
                Alert::new(AlertSource::Check, format!("{}-reboot-{now}", check.name), AlertKind::RebootFailed, Severity::Critical, now)
                    .summary(format!("Could not reboot {instance} of {environment} (self-healing)"))
                    .cause(format!("check {} is down ({cause}); the reboot failed: {}", check.name, err.public()))
                    .impact(format!("{instance} stays down until someone looks"))
                    .action(format!(
                        "Reboot {instance} by hand; to let Conveyor do it, deploy the stack with EnableSelfHealing=true (it grants ec2:RebootInstances)"
                    ))
            }
        }
        .label("instance", instance)
        .label("environment", environment)
        .label("checks", check.name.clone());
        let mut alert = alert;
        alert.channels = check.channels.clone();
        self.table.record_alert(&alert).await?;
        Ok(())
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

    /// Sends every due alert in the outbox; answers how many it finished. One alert that
    /// cannot be read or sent does not hold up the others.
    pub async fn deliver_outbox(&self, clock: Clock) -> Result<usize, DispatchFailure> {
        let mut settled = 0;
        let mut failures = Vec::new();
        for entry in self.table.outbox().await?.into_iter().filter(|e| e.due_at <= clock.at()) {
            if clock.past(DELIVERY_BUDGET) {
                tracing::warn!("alerts are left in the outbox for the next run: this one is out of time");
                break;
            }
            let alert = match self.find(&entry.source, &entry.id).await {
                Ok(Some(alert)) => alert,
                Ok(None) => {
                    tracing::warn!(source = %entry.source, id = %entry.id, "an outbox entry whose alert is gone: dropped");
                    if let Err(err) = self.table.drop_outbox_entry(&entry.source, &entry.id).await {
                        failures.push(format!("alert {}/{}: {err}", entry.source, entry.id));
                    }
                    continue;
                }
                Err(err) => {
                    failures.push(format!("alert {}/{}: {err}", entry.source, entry.id));
                    continue;
                }
            };
            match self.deliver(&alert, clock).await {
                Ok(true) => settled += 1,
                Ok(false) => {}
                Err(err) => failures.push(format!("alert {}/{}: {err}", entry.source, entry.id)),
            }
        }
        if failures.is_empty() { Ok(settled) } else { Err(DispatchFailure::Parts(failures)) }
    }

    async fn find(&self, source: &str, id: &str) -> Result<Option<Alert>, StoreError> {
        self.table.alert(source, id).await
    }

    /// Sends `alert` to each of its channels that does not have it yet and may be tried now;
    /// answers whether the alert is finished (every channel has it or refused it for good).
    pub async fn deliver(&self, alert: &Alert, clock: Clock) -> Result<bool, StoreError> {
        let routed = dispatch::channels_for(alert, &self.config.channels, &self.config.routes);
        if routed.len() < alert.channels.len() {
            tracing::warn!(alert = %alert.id, chosen = ?alert.channels, "some of the alert's channels are no longer configured");
        }
        if routed.is_empty() {
            // Silenced by a route on purpose: done. Chosen channels that are all gone, or no
            // channel at all: nobody was told, so it is kept as undeliverable.
            let state = if self.config.channels.is_empty() || !alert.channels.is_empty() {
                tracing::error!(alert = %alert.id, "no configured channel to send the alert to");
                DeliveryState::Undeliverable
            } else {
                DeliveryState::Delivered
            };
            self.table.settle_alert(alert, state, clock.at()).await?;
            return Ok(true);
        }
        let before = self.table.deliveries(alert).await?;
        for name in &routed {
            let record = before.iter().find(|r| r.channel == *name);
            if !may_try(record, clock.at()) {
                continue;
            }
            let now = clock.at();
            let token = claim_token(&format!("{}/{}", alert.id, name), now);
            if self.table.claim_delivery(alert, name, &token, now, DELIVERY_LEASE_SECONDS).await?
                == Transition::Rejected
            {
                continue;
            }
            let Some(channel) = self.config.channels.iter().find(|c| c.name == *name) else { continue };
            let delivery = format!("{}/{}/{}", alert.source.as_str(), alert.id, name);
            let mut answer = self.channels.send(channel, alert, &delivery).await;
            // A short wait the channel asks for (Slack's 429 Retry-After), or a 5xx, is
            // waited out here a couple of times; longer ones go to a later run. No answer at
            // all is not tried again here: the channel may have the message.
            for pause in [1, 2] {
                let wait = match &answer {
                    Answer::Later { after: Some(after), .. } if *after <= channels::WAIT_IN_RUN => *after,
                    Answer::Later { after: None, .. } => pause,
                    _ => break,
                };
                if !clock.may_wait || clock.past(WAITING_BUDGET) {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(wait as u64)).await;
                answer = self.channels.send(channel, alert, &delivery).await;
            }
            let attempts = record.map_or(0, |r| r.attempts) + 1;
            let now = clock.at();
            let tried = match answer {
                Answer::Delivered => Tried::Delivered,
                Answer::Later { after, reason } => {
                    Tried::Later { retry_at: dispatch::next_try(now, attempts, after), reason }
                }
                Answer::NoAnswer(reason) => Tried::Later { retry_at: dispatch::next_try(now, attempts, None), reason },
                Answer::Refused(reason) => Tried::Refused(reason),
            };
            match &tried {
                Tried::Delivered => tracing::info!(alert = %alert.id, channel = %name, "alert delivered"),
                Tried::Later { retry_at, reason } => {
                    tracing::warn!(alert = %alert.id, channel = %name, retry_at, %reason, "the channel cannot take the alert now")
                }
                Tried::Refused(reason) => {
                    tracing::error!(alert = %alert.id, channel = %name, %reason, "the channel refused the alert; fix the channel")
                }
            }
            self.table.finish_delivery(alert, name, &token, &tried, now).await?;
        }
        let after = self.table.deliveries(alert).await?;
        match outcome(&routed, &after, clock.at()) {
            Outcome::Settled(state) => {
                self.table.settle_alert(alert, state, clock.at()).await?;
                Ok(true)
            }
            Outcome::WaitUntil(due) => {
                self.table.postpone_alert(alert, due).await?;
                Ok(false)
            }
            Outcome::InFlight => Ok(false),
        }
    }
}

/// Whether a channel may be tried now: never tried, waiting and due, or held by an
/// invocation whose lease ran out.
fn may_try(record: Option<&DeliveryRecord>, now: i64) -> bool {
    match record {
        None => true,
        Some(record) => match record.state {
            ChannelDelivery::Delivered | ChannelDelivery::Refused | ChannelDelivery::Unknown => false,
            ChannelDelivery::Waiting => record.retry_at.is_none_or(|at| at <= now),
            ChannelDelivery::Sending => record.lease_until.is_none_or(|until| until < now),
        },
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Settled(DeliveryState),
    /// Some channel waits: the outbox entry is due again then.
    WaitUntil(i64),
    /// Another invocation is sending to some channel: it settles the alert.
    InFlight,
}

/// Where an alert stands once this invocation tried its channels.
fn outcome(routed: &[&str], records: &[DeliveryRecord], now: i64) -> Outcome {
    let state = |name: &str| records.iter().find(|r| r.channel == name);
    let mut refused = false;
    let mut due: Option<i64> = None;
    let mut in_flight = false;
    for name in routed {
        match state(name) {
            Some(r) if r.state == ChannelDelivery::Delivered => {}
            Some(r) if r.state == ChannelDelivery::Refused => refused = true,
            Some(r) if r.state == ChannelDelivery::Waiting => {
                let at = r.retry_at.unwrap_or(now);
                due = Some(due.map_or(at, |d: i64| d.min(at)));
            }
            Some(r) if r.state == ChannelDelivery::Sending => {
                in_flight = true;
                let at = r.lease_until.unwrap_or(now);
                due = Some(due.map_or(at, |d: i64| d.min(at)));
            }
            // Not tried (this invocation lost the claim race and the winner has not written).
            _ => in_flight = true,
        }
    }
    match (in_flight, due) {
        (false, None) => {
            Outcome::Settled(if refused { DeliveryState::Undeliverable } else { DeliveryState::Delivered })
        }
        (false, Some(due)) => Outcome::WaitUntil(due),
        (true, _) => Outcome::InFlight,
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
                let Some(alert) = self.find(source, id).await? else { return Ok(()) };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record(
        channel: &str,
        state: ChannelDelivery,
        retry_at: Option<i64>,
        lease_until: Option<i64>,
    ) -> DeliveryRecord {
        DeliveryRecord { channel: channel.into(), state, attempts: 1, retry_at, lease_until, error: None }
    }

    #[test]
    fn an_alert_is_finished_only_when_every_channel_has_it_or_refused_it() {
        let delivered = record("team", ChannelDelivery::Delivered, None, None);
        let refused = record("ops", ChannelDelivery::Refused, None, None);
        let waiting = record("pager", ChannelDelivery::Waiting, Some(130), None);
        let sending = record("pager", ChannelDelivery::Sending, None, Some(160));
        assert_eq!(
            outcome(&["team"], std::slice::from_ref(&delivered), 100),
            Outcome::Settled(DeliveryState::Delivered)
        );
        assert_eq!(
            outcome(&["team", "ops"], &[delivered.clone(), refused.clone()], 100),
            Outcome::Settled(DeliveryState::Undeliverable)
        );
        assert_eq!(outcome(&["team", "pager"], &[delivered.clone(), waiting], 100), Outcome::WaitUntil(130));
        assert_eq!(outcome(&["team", "pager"], &[delivered.clone(), sending], 100), Outcome::InFlight);
        assert_eq!(outcome(&["team", "pager"], &[delivered], 100), Outcome::InFlight, "not tried yet");
    }

    #[test]
    fn a_channel_is_tried_again_only_when_due_or_abandoned() {
        assert!(may_try(None, 100));
        assert!(!may_try(Some(&record("t", ChannelDelivery::Delivered, None, None)), 100));
        assert!(!may_try(Some(&record("t", ChannelDelivery::Refused, None, None)), 100));
        assert!(!may_try(Some(&record("t", ChannelDelivery::Waiting, Some(130), None)), 100));
        assert!(may_try(Some(&record("t", ChannelDelivery::Waiting, Some(130), None)), 130));
        assert!(!may_try(Some(&record("t", ChannelDelivery::Sending, None, Some(160))), 100));
        assert!(may_try(Some(&record("t", ChannelDelivery::Sending, None, Some(160))), 161), "its holder died");
    }
}
