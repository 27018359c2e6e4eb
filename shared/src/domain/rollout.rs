//! Rollout planning: which instances get a release in which wave. Pure.
//!
//! Waves are cumulative shares of the fleet (`[1, "50%", "100%"]`: one canary, then up to
//! half, then all). After the last listed wave, waves of the last wave's size follow until
//! every instance is done, which is how `[1]` means one at a time. No wave takes more
//! instances out of service than `min_healthy` allows; such a wave is split.
//!
//! `min_healthy` rounds like CodeDeploy's `FLEET_PERCENT` (a share rounds up to whole
//! instances), with one difference: a share below 100% never keeps the whole fleet in
//! service, so it always lets one instance at a time through (`"75%"` of one, two or three
//! instances updates them one by one). A count as large as the fleet leaves nothing to
//! update: the planner fails the deployment and says so.
//!
//! What an instance should run is always one of two releases: the deployment's, or the
//! environment's last good release (`previous` on its target). Whatever order events come
//! in, an instance that is not handed the new release converges on the last good one.

use std::collections::BTreeMap;

use crate::config::WaveSize;

/// An instance as discovery found it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Instance {
    pub id: String,
    pub availability_zone: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("no running instance matches the environment's tags")]
    NoInstances,
    #[error(
        "min_healthy = {setting} keeps all {fleet} instances in service, so none can be updated: set it below {fleet} or use a share such as \"75%\""
    )]
    MinHealthyTooHigh { setting: WaveSize, fleet: usize },
}

/// How many of `fleet` instances `min_healthy` keeps in service (see the module docs).
pub fn instances_kept(min_healthy: WaveSize, fleet: usize) -> usize {
    match min_healthy {
        WaveSize::Percent(p) if p < 100 => min_healthy.of(fleet).min(fleet.saturating_sub(1)),
        other => other.of(fleet),
    }
}

/// The waves of a rollout: instance ids, canary first.
pub fn plan_waves(
    instances: &[Instance],
    waves: &[WaveSize],
    min_healthy: WaveSize,
) -> Result<Vec<Vec<String>>, PlanError> {
    let fleet = instances.len();
    if fleet == 0 {
        return Err(PlanError::NoInstances);
    }
    let max_wave = fleet.saturating_sub(instances_kept(min_healthy, fleet));
    if max_wave == 0 {
        return Err(PlanError::MinHealthyTooHigh { setting: min_healthy, fleet });
    }
    let order = spread_across_zones(instances);

    // Cumulative targets, then the sizes of the waves between them.
    let mut sizes = Vec::new();
    let mut done = 0;
    let mut last_size = 1;
    for wave in waves {
        let target = wave.of(fleet).max(1).min(fleet);
        if target > done {
            last_size = target - done;
            sizes.push(last_size);
            done = target;
        }
    }
    while done < fleet {
        let size = last_size.min(fleet - done);
        sizes.push(size);
        done += size;
    }
    // Split any wave larger than min_healthy allows.
    let sizes = sizes.into_iter().flat_map(|size| {
        let chunks = size.div_ceil(max_wave);
        (0..chunks).map(move |i| if i + 1 < chunks { max_wave } else { size - max_wave * (chunks - 1) })
    });
    let mut remaining = order.into_iter();
    Ok(sizes.map(|size| remaining.by_ref().take(size).collect()).filter(|w: &Vec<String>| !w.is_empty()).collect())
}

/// Instances ordered so that neighbours sit in different availability zones: a wave then
/// never takes out a zone before the others, and the canary is the first zone's first host.
fn spread_across_zones(instances: &[Instance]) -> Vec<String> {
    let mut zones: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for instance in instances {
        zones.entry(&instance.availability_zone).or_default().push(&instance.id);
    }
    for ids in zones.values_mut() {
        ids.sort_unstable();
    }
    let longest = zones.values().map(Vec::len).max().unwrap_or(0);
    (0..longest).flat_map(|i| zones.values().filter_map(move |ids| ids.get(i).map(|id| id.to_string()))).collect()
}

/// A release as an instance runs it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Release {
    pub version: String,
    /// `s3://` URL of the artifact.
    pub artifact: String,
    pub sha256: String,
    /// The S3 object version the deployment pinned (versioned buckets), so every wave and
    /// every later rollback downloads the same bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_version: Option<String>,
}

/// Where one instance stands in its latest deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetState {
    /// Planned; once its wave starts the agent is handed the release, until it reports.
    Waiting,
    /// Runs the new release and passed its health check.
    Succeeded,
    /// Reported a failed install or health check.
    Failed,
    /// Terminated during the deployment: not part of it any more, and no failure.
    Dropped,
    /// Settled: the deployment succeeded and this instance keeps the release.
    Kept,
    /// Settled: the deployment rolled back and this instance goes back to `previous`.
    RolledBack,
    /// Settled: the deployment ended before this instance's wave; it runs (or goes back to)
    /// `previous`, the last good release.
    Untouched,
}

impl TargetState {
    /// Settled states need no look at the deployment to know what the instance should run.
    pub fn is_settled(self) -> bool {
        matches!(self, Self::Dropped | Self::Kept | Self::RolledBack | Self::Untouched)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Dropped => "dropped",
            Self::Kept => "kept",
            Self::RolledBack => "rolled_back",
            Self::Untouched => "untouched",
        }
    }
}

/// One instance's part in its latest deployment: one item per instance, written in batches
/// when a deployment is planned, and the only item an agent's poll reads.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TargetRecord {
    pub environment: String,
    /// The deployment (its sha).
    pub deployment: String,
    pub instance: String,
    pub wave: usize,
    pub state: TargetState,
    /// What the agent said with its last report (a log tail, a health failure).
    pub detail: Option<String>,
    pub release: Release,
    /// The environment's last good release when the deployment was planned: what a rollback
    /// gives back.
    pub previous: Option<Release>,
    pub updated_at: i64,
}

impl TargetRecord {
    /// What a settled target's instance should run. An untouched instance goes to the last
    /// good release too: it may still run a release an earlier deployment rolled back, if
    /// this deployment's plan replaced the target before the instance polled.
    fn settled_release(&self) -> Option<&Release> {
        match self.state {
            TargetState::Kept => Some(&self.release),
            TargetState::RolledBack | TargetState::Untouched => self.previous.as_ref(),
            _ => None,
        }
    }
}

/// What every target of one deployment shares.
#[derive(Debug, Clone, Copy)]
pub struct DeploymentPlan<'a> {
    pub environment: &'a str,
    pub deployment: &'a str,
    pub release: &'a Release,
    pub previous: Option<&'a Release>,
    pub now: i64,
}

impl DeploymentPlan<'_> {
    /// One waiting target per instance of `waves` (from [`plan_waves`]).
    pub fn targets(&self, waves: &[Vec<String>]) -> Vec<TargetRecord> {
        waves
            .iter()
            .enumerate()
            .flat_map(|(wave, ids)| ids.iter().map(move |id| (wave, id)))
            .map(|(wave, id)| TargetRecord {
                environment: self.environment.to_owned(),
                deployment: self.deployment.to_owned(),
                instance: id.clone(),
                wave,
                state: TargetState::Waiting,
                detail: None,
                release: self.release.clone(),
                previous: self.previous.cloned(),
                updated_at: self.now,
            })
            .collect()
    }
}

/// Where a deployment stands, as the poll and the gate need it: all of it lives on the
/// deployment record, so deciding never reads the targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub state: crate::domain::DeploymentState,
    /// Whether the deployment ever started (a deployment that failed while it was planned
    /// handed nothing out).
    pub started: bool,
    /// The current wave, from 0.
    pub wave: usize,
    pub wave_started_at: i64,
    /// Per wave: planned, succeeded, failed and dropped targets.
    pub sizes: Vec<usize>,
    pub succeeded: Vec<usize>,
    pub failed: Vec<usize>,
    pub dropped: Vec<usize>,
    /// The first failure reported, in words.
    pub failure: Option<String>,
    /// While rolling back: the wave being restored, since when, and per wave the targets
    /// back on the last good release.
    pub rollback_wave: Option<usize>,
    pub rollback_wave_started_at: i64,
    pub restored: Vec<usize>,
}

/// What a running (or rolling back) deployment does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do until agents report or the wave times out.
    Wait,
    /// The current wave passed: start the next one.
    StartWave(usize),
    /// Every wave passed.
    Succeed,
    /// A target failed or the wave timed out: restore the waves reached so far, starting with
    /// the current one.
    RollBack { reason: String },
    /// Rolling back: the wave being restored is back (or timed out): restore this one next.
    RestoreWave(usize),
    /// Rolling back: every wave reached is back; the deployment ends `rolled_back`.
    FinishRollback,
}

/// Decides the next step of a running deployment. `waiting_for` names the current wave's
/// instances that have not reported, when the caller knows them (for the timeout reason).
pub fn next_step(progress: &Progress, timeout_seconds: i64, now: i64, waiting_for: &[String]) -> Step {
    if progress.state == crate::domain::DeploymentState::RollingBack {
        return next_rollback_step(progress, timeout_seconds, now);
    }
    let wave = progress.wave;
    let count = |counts: &[usize]| counts.get(wave).copied().unwrap_or(0);
    if count(&progress.failed) > 0 {
        let reason = progress.failure.clone().unwrap_or_else(|| format!("an instance failed in wave {}", wave + 1));
        return Step::RollBack { reason };
    }
    let planned = count(&progress.sizes);
    let settled = count(&progress.succeeded) + count(&progress.dropped);
    if settled >= planned {
        return if wave + 1 >= progress.sizes.len() { Step::Succeed } else { Step::StartWave(wave + 1) };
    }
    if now - progress.wave_started_at > timeout_seconds {
        let missing = planned - settled;
        // At most a few names: this reason is in the record every poll reads; the silent
        // hosts are the wave's targets still waiting.
        let who = if waiting_for.is_empty() {
            format!("{missing} of {planned} instances")
        } else {
            format!("{} ({missing} of {planned} instances)", super::text::some_of(waiting_for, ", "))
        };
        return Step::RollBack {
            reason: format!("wave {} timed out after {timeout_seconds} s waiting for {who}", wave + 1),
        };
    }
    Step::Wait
}

/// A rolling-back deployment restores one wave at a time: the next when every target of the
/// current one is back on the last good release (or was dropped), or when the wave's time is
/// up (a host that cannot go back raises its own alert).
fn next_rollback_step(progress: &Progress, timeout_seconds: i64, now: i64) -> Step {
    let wave = progress.rollback_wave.unwrap_or(progress.wave);
    let count = |counts: &[usize]| counts.get(wave).copied().unwrap_or(0);
    let back = count(&progress.restored) + count(&progress.dropped) >= count(&progress.sizes);
    let late = now - progress.rollback_wave_started_at > timeout_seconds;
    match (back || late, wave) {
        (false, _) => Step::Wait,
        (true, 0) => Step::FinishRollback,
        (true, wave) => Step::RestoreWave(wave - 1),
    }
}

/// What a poll answers an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instruction {
    /// Install and switch to this release.
    Deploy { release: Release, rollback: bool },
    /// The instance's wave runs and its part is not settled: poll again soon.
    Wait,
    /// Nothing to do now (idle, or a wave that has not started): poll again at the idle pace.
    Nothing,
}

/// A poll's answer, and the state to settle the target in (once) when its deployment has
/// ended, so that later polls need only the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub instruction: Instruction,
    pub settle: Option<TargetState>,
    /// The settle counts the target as restored in its rolling-back deployment's wave.
    pub restored: bool,
}

/// Whether answering a poll needs the deployment's progress besides the target.
pub fn needs_progress(target: &TargetRecord) -> bool {
    !target.state.is_settled()
}

/// Decides a poll from the instance's target, its deployment's progress (read only when
/// [`needs_progress`]), and the release the agent runs now.
pub fn instruct(target: &TargetRecord, progress: Option<&Progress>, current: Option<&str>) -> Decision {
    use crate::domain::DeploymentState as D;
    let run = |release: Option<&Release>, rollback: bool| match release {
        Some(release) if current != Some(release.version.as_str()) => {
            Instruction::Deploy { release: release.clone(), rollback }
        }
        _ => Instruction::Nothing,
    };
    let settled = |state: TargetState| {
        let settled = TargetRecord { state, ..target.clone() };
        // Going back to the last good release is a rollback (the agent says so in its log;
        // the release is usually still on disk, so it switches without a download).
        let rollback = matches!(state, TargetState::RolledBack | TargetState::Untouched);
        Decision {
            instruction: run(settled.settled_release(), rollback),
            settle: (state != target.state).then_some(state),
            restored: false,
        }
    };
    let pending = |instruction| Decision { instruction, settle: None, restored: false };
    if target.state.is_settled() {
        return settled(target.state);
    }
    let Some(progress) = progress else { return settled(TargetState::Untouched) };
    let reached = progress.started && target.wave <= progress.wave;
    match progress.state {
        // Being planned: the target may be written before the deployment starts. The canary
        // wave hears soon; the others at the idle pace.
        D::Pending if target.wave == 0 => pending(Instruction::Wait),
        D::Pending => pending(Instruction::Nothing),
        D::InProgress if !reached => pending(Instruction::Nothing),
        D::InProgress => match target.state {
            // The agent runs it already: its report is on its way (agents retry reports until
            // one is acknowledged), so a lost answer never restarts a healthy host.
            TargetState::Waiting if current == Some(target.release.version.as_str()) => pending(Instruction::Wait),
            TargetState::Waiting => pending(Instruction::Deploy { release: target.release.clone(), rollback: false }),
            // Reported: nothing to do until the deployment ends, so the idle pace (every poll
            // of a rollout reads the deployment record: this keeps it under its read limit).
            _ => pending(Instruction::Nothing),
        },
        D::RollingBack if !reached => settled(TargetState::Untouched),
        D::RollingBack => {
            let restoring = progress.rollback_wave.unwrap_or(progress.wave);
            let back = target.previous.as_ref().is_none_or(|p| current == Some(p.version.as_str()));
            if target.wave > restoring {
                // Its wave's turn ended without it (a silent host): it goes back when it can.
                settled(TargetState::RolledBack)
            } else if target.wave < restoring {
                // Keeps the release until its wave's turn, so no more hosts restart at once
                // than going forward did; it hears of its turn at the idle pace.
                pending(Instruction::Nothing)
            } else if back {
                Decision { restored: true, ..settled(TargetState::RolledBack) }
            } else {
                let previous = target.previous.clone();
                pending(
                    previous.map_or(Instruction::Nothing, |release| Instruction::Deploy { release, rollback: true }),
                )
            }
        }
        D::Succeeded if target.state == TargetState::Succeeded => settled(TargetState::Kept),
        D::RolledBack | D::Failed if reached => settled(TargetState::RolledBack),
        _ => settled(TargetState::Untouched),
    }
}

/// What an agent's report does to its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportEffect {
    /// Count the target as succeeded or failed in its wave.
    Record(TargetState),
    /// A report about another release (a rollback, an old retry) or a wave not started.
    Ignore,
}

pub fn judge_report(target: &TargetRecord, progress: &Progress, version: &str, succeeded: bool) -> ReportEffect {
    let counts = progress.state == crate::domain::DeploymentState::InProgress
        && target.state == TargetState::Waiting
        && target.wave <= progress.wave
        && target.release.version == version;
    match (counts, succeeded) {
        (true, true) => ReportEffect::Record(TargetState::Succeeded),
        (true, false) => ReportEffect::Record(TargetState::Failed),
        (false, _) => ReportEffect::Ignore,
    }
}

#[cfg(test)]
mod tests;
