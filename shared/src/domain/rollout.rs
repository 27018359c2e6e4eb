//! Rollout planning: which instances get a release in which wave. Pure.
//!
//! Waves are cumulative shares of the fleet (`[1, "50%", "100%"]`: one canary, then up to
//! half, then all). After the last listed wave, waves of the last wave's size follow until
//! every instance is done, which is how `[1]` means one at a time. No wave takes more
//! instances out of service than `min_healthy` allows; such a wave is split.

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
    #[error("min_healthy {min_healthy} of {fleet} instances leaves none to update")]
    MinHealthyTooHigh { min_healthy: usize, fleet: usize },
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
    let keep = min_healthy.of(fleet);
    let max_wave = fleet.saturating_sub(keep);
    if max_wave == 0 {
        return Err(PlanError::MinHealthyTooHigh { min_healthy: keep, fleet });
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

/// Where one instance stands in a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetState {
    /// In a later wave; not touched yet.
    Waiting,
    /// Handed the new release; its agent has not reported yet.
    Assigned,
    /// Runs the new release and passed its health check.
    Succeeded,
    /// Reported a failed install or health check.
    Failed,
    /// Terminated during the deployment: not part of it any more, and no failure.
    Dropped,
}

/// One instance of a deployment, as the decision needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub instance: String,
    pub wave: usize,
    pub state: TargetState,
    /// What the agent said with its last report (a log tail, a health failure).
    pub detail: Option<String>,
}

/// What a running deployment does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do until agents report or the wave times out.
    Wait,
    /// The current wave passed: hand the next wave its release.
    StartWave(usize),
    /// Every wave passed.
    Succeed,
    /// A target failed or the wave timed out: restore every instance already changed.
    RollBack { reason: String },
}

/// Decides the next step of a deployment in wave `wave` (started at `wave_started_at`).
pub fn next_step(targets: &[Target], wave: usize, wave_started_at: i64, timeout_seconds: i64, now: i64) -> Step {
    let current: Vec<&Target> = targets.iter().filter(|t| t.wave == wave && t.state != TargetState::Dropped).collect();
    if let Some(failed) = current.iter().find(|t| t.state == TargetState::Failed) {
        return Step::RollBack {
            reason: format!(
                "{} failed in wave {}: {}",
                failed.instance,
                wave + 1,
                failed.detail.as_deref().unwrap_or("no detail reported")
            ),
        };
    }
    let pending: Vec<&str> =
        current.iter().filter(|t| t.state != TargetState::Succeeded).map(|t| t.instance.as_str()).collect();
    if pending.is_empty() {
        let last_wave = targets.iter().map(|t| t.wave).max().unwrap_or(0);
        return if wave >= last_wave { Step::Succeed } else { Step::StartWave(wave + 1) };
    }
    if now - wave_started_at > timeout_seconds {
        return Step::RollBack {
            reason: format!("wave {} timed out after {timeout_seconds} s waiting for {}", wave + 1, pending.join(", ")),
        };
    }
    Step::Wait
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(n: usize) -> Vec<Instance> {
        (0..n).map(|i| Instance { id: format!("i-{i:02}"), availability_zone: ["a", "b"][i % 2].into() }).collect()
    }

    fn sizes(waves: &[Vec<String>]) -> Vec<usize> {
        waves.iter().map(Vec::len).collect()
    }

    const CANARY: [WaveSize; 3] = [WaveSize::Count(1), WaveSize::Percent(50), WaveSize::Percent(100)];

    #[test]
    fn canary_then_half_then_the_rest() {
        let waves = plan_waves(&fleet(4), &CANARY, WaveSize::Count(0)).unwrap();
        assert_eq!(sizes(&waves), [1, 1, 2]);
        assert_eq!(waves[0], ["i-00"], "the canary comes first");
        assert_eq!(sizes(&plan_waves(&fleet(10), &CANARY, WaveSize::Count(0)).unwrap()), [1, 4, 5]);
        assert_eq!(sizes(&plan_waves(&fleet(1), &CANARY, WaveSize::Count(0)).unwrap()), [1]);
    }

    #[test]
    fn every_instance_exactly_once() {
        for n in 2..40 {
            let waves = plan_waves(&fleet(n), &CANARY, WaveSize::Percent(25)).unwrap();
            let mut all: Vec<_> = waves.concat();
            all.sort();
            all.dedup();
            assert_eq!(all.len(), n);
            assert_eq!(waves.iter().map(Vec::len).sum::<usize>(), n);
        }
    }

    #[test]
    fn presets() {
        assert_eq!(sizes(&plan_waves(&fleet(3), &[WaveSize::Count(1)], WaveSize::Count(0)).unwrap()), [1, 1, 1]);
        let half = [WaveSize::Percent(50), WaveSize::Percent(100)];
        assert_eq!(sizes(&plan_waves(&fleet(5), &half, WaveSize::Count(0)).unwrap()), [3, 2]);
        assert_eq!(sizes(&plan_waves(&fleet(5), &[WaveSize::Percent(100)], WaveSize::Count(0)).unwrap()), [5]);
    }

    #[test]
    fn min_healthy_is_never_undercut() {
        let waves = plan_waves(&fleet(8), &[WaveSize::Percent(100)], WaveSize::Percent(75)).unwrap();
        assert_eq!(sizes(&waves), [2, 2, 2, 2]);
        let waves = plan_waves(&fleet(4), &CANARY, WaveSize::Count(3)).unwrap();
        assert!(waves.iter().all(|w| w.len() <= 1));
        assert_eq!(
            plan_waves(&fleet(2), &CANARY, WaveSize::Percent(100)),
            Err(PlanError::MinHealthyTooHigh { min_healthy: 2, fleet: 2 })
        );
        assert_eq!(plan_waves(&[], &CANARY, WaveSize::Count(0)), Err(PlanError::NoInstances));
    }

    fn target(instance: &str, wave: usize, state: TargetState) -> Target {
        Target { instance: instance.into(), wave, state, detail: None }
    }

    #[test]
    fn a_wave_passes_when_every_target_succeeded() {
        use TargetState::*;
        let targets =
            [target("a", 0, Succeeded), target("b", 1, Assigned), target("c", 1, Succeeded), target("d", 2, Waiting)];
        assert_eq!(next_step(&targets, 0, 0, 600, 10), Step::StartWave(1));
        assert_eq!(next_step(&targets, 1, 0, 600, 10), Step::Wait);
        let done = [target("a", 0, Succeeded), target("b", 1, Succeeded), target("c", 1, Dropped)];
        assert_eq!(next_step(&done, 1, 0, 600, 10), Step::Succeed, "a dropped instance is not waited for");
        let all_dropped = [target("a", 0, Dropped), target("b", 1, Waiting)];
        assert_eq!(next_step(&all_dropped, 0, 0, 600, 10), Step::StartWave(1));
    }

    #[test]
    fn a_failure_or_a_timeout_rolls_back() {
        use TargetState::*;
        let failed =
            [Target { detail: Some("health check: 500".into()), ..target("b", 1, Failed) }, target("c", 1, Succeeded)];
        let Step::RollBack { reason } = next_step(&failed, 1, 0, 600, 10) else { panic!("rolls back") };
        assert!(reason.contains("b failed in wave 2: health check: 500"), "{reason}");
        let slow = [target("a", 0, Assigned)];
        assert_eq!(next_step(&slow, 0, 0, 600, 600), Step::Wait);
        let Step::RollBack { reason } = next_step(&slow, 0, 0, 600, 601) else { panic!("times out") };
        assert!(reason.contains("timed out") && reason.contains('a'), "{reason}");
        let last = [target("a", 0, Succeeded), target("z", 1, Failed)];
        assert!(matches!(next_step(&last, 1, 0, 600, 1), Step::RollBack { .. }), "a failure on the last host fails it");
    }

    #[test]
    fn neighbours_are_in_different_zones() {
        let instances = vec![
            Instance { id: "i-1".into(), availability_zone: "a".into() },
            Instance { id: "i-2".into(), availability_zone: "a".into() },
            Instance { id: "i-3".into(), availability_zone: "b".into() },
            Instance { id: "i-4".into(), availability_zone: "b".into() },
        ];
        let waves = plan_waves(
            &instances,
            &[WaveSize::Count(1), WaveSize::Count(2), WaveSize::Percent(100)],
            WaveSize::Count(0),
        )
        .unwrap();
        assert_eq!(waves, [vec!["i-1"], vec!["i-3"], vec!["i-2", "i-4"]]);
    }
}
