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
        Err(PlanError::MinHealthyTooHigh { setting: WaveSize::Percent(100), fleet: 2 })
    );
    let err = plan_waves(&fleet(3), &CANARY, WaveSize::Count(3)).unwrap_err();
    assert!(err.to_string().contains("min_healthy = 3 keeps all 3 instances"), "{err}");
    assert_eq!(plan_waves(&[], &CANARY, WaveSize::Count(0)), Err(PlanError::NoInstances));
}

#[test]
fn a_share_below_100_percent_works_for_every_fleet_size() {
    for fleet_size in 1..=40 {
        for share in [1, 25, 50, 75, 90, 99] {
            let waves = plan_waves(&fleet(fleet_size), &CANARY, WaveSize::Percent(share))
                .unwrap_or_else(|e| panic!("{share}% of {fleet_size}: {e}"));
            let kept = instances_kept(WaveSize::Percent(share), fleet_size);
            assert!(waves.iter().all(|w| w.len() <= fleet_size - kept), "{share}% of {fleet_size}");
        }
    }
    // As CodeDeploy rounds: 75% of 8 keeps 6 (waves of 2); of 1, 2 or 3 it updates one at a time.
    assert_eq!(instances_kept(WaveSize::Percent(75), 8), 6);
    assert_eq!(instances_kept(WaveSize::Percent(40), 9), 4);
    for n in 1..=3 {
        assert!(plan_waves(&fleet(n), &CANARY, WaveSize::Percent(75)).unwrap().iter().all(|w| w.len() == 1));
    }
}

fn progress(wave: usize, sizes: &[usize], succeeded: &[usize], failed: &[usize], dropped: &[usize]) -> Progress {
    Progress {
        state: crate::domain::DeploymentState::InProgress,
        started: true,
        wave,
        wave_started_at: 0,
        sizes: sizes.to_vec(),
        succeeded: succeeded.to_vec(),
        failed: failed.to_vec(),
        dropped: dropped.to_vec(),
        failure: None,
        rollback_wave: None,
        rollback_wave_started_at: 0,
        restored: vec![0; sizes.len()],
    }
}

#[test]
fn a_wave_passes_when_every_target_succeeded_or_was_dropped() {
    assert_eq!(next_step(&progress(0, &[1, 2, 1], &[1, 0, 0], &[0; 3], &[0; 3]), 600, 10, &[]), Step::StartWave(1));
    assert_eq!(next_step(&progress(1, &[1, 2, 1], &[1, 1, 0], &[0; 3], &[0; 3]), 600, 10, &[]), Step::Wait);
    let done = progress(1, &[1, 2], &[1, 1], &[0, 0], &[0, 1]);
    assert_eq!(next_step(&done, 600, 10, &[]), Step::Succeed, "a dropped instance is not waited for");
    let all_dropped = progress(0, &[1, 1], &[0, 0], &[0, 0], &[1, 0]);
    assert_eq!(next_step(&all_dropped, 600, 10, &[]), Step::StartWave(1));
}

#[test]
fn a_failure_or_a_timeout_rolls_back() {
    let failed = Progress {
        failure: Some("b failed in wave 2: health check: 500".into()),
        ..progress(1, &[1, 2], &[1, 1], &[0, 1], &[0, 0])
    };
    let Step::RollBack { reason } = next_step(&failed, 600, 10, &[]) else { panic!("rolls back") };
    assert!(reason.contains("b failed in wave 2: health check: 500"), "{reason}");
    let slow = progress(0, &[2, 1], &[1, 0], &[0, 0], &[0, 0]);
    assert_eq!(next_step(&slow, 600, 600, &[]), Step::Wait);
    let Step::RollBack { reason } = next_step(&slow, 600, 601, &["i-a".into()]) else { panic!("times out") };
    assert!(reason.contains("wave 1 timed out") && reason.contains("i-a"), "{reason}");
    let Step::RollBack { reason } = next_step(&slow, 600, 601, &[]) else { panic!("times out") };
    assert!(reason.contains("1 of 2 instances"), "{reason}");
    let last = progress(1, &[1, 1], &[1, 0], &[0, 1], &[0, 0]);
    assert!(matches!(next_step(&last, 600, 1, &[]), Step::RollBack { .. }), "a failure on the last host fails it");
}

fn release(version: &str) -> Release {
    Release {
        version: version.into(),
        artifact: format!("s3://a/{version}.tar.gz"),
        sha256: "00".into(),
        artifact_version: None,
    }
}

fn target(wave: usize, state: TargetState) -> TargetRecord {
    TargetRecord {
        environment: "production".into(),
        deployment: "abc".into(),
        instance: "i-1".into(),
        wave,
        state,
        detail: None,
        release: release("new"),
        previous: Some(release("old")),
        updated_at: 0,
    }
}

fn deploy(version: &str, rollback: bool) -> Instruction {
    Instruction::Deploy { release: release(version), rollback }
}

#[test]
fn a_poll_is_handed_the_release_once_its_wave_starts() {
    use TargetState::*;
    let running = progress(0, &[1, 1], &[0, 0], &[0, 0], &[0, 0]);
    assert_eq!(
        instruct(&target(1, Waiting), Some(&running), Some("old")).instruction,
        Instruction::Nothing,
        "a wave that has not started polls at the idle pace"
    );
    assert_eq!(instruct(&target(0, Waiting), Some(&running), Some("old")).instruction, deploy("new", false));
    assert_eq!(
        instruct(&target(0, Waiting), Some(&running), Some("new")).instruction,
        Instruction::Wait,
        "a host that runs the release is never told to install it again: its report is on its way"
    );
    assert_eq!(
        instruct(&target(0, Succeeded), Some(&running), Some("new")).instruction,
        Instruction::Nothing,
        "a host that reported polls at the idle pace until the deployment ends"
    );
    assert_eq!(instruct(&target(0, Waiting), Some(&running), None).settle, None);
}

#[test]
fn an_ended_deployment_settles_each_target_once() {
    use crate::domain::DeploymentState as D;
    use TargetState::*;
    let ended = |state, wave| Progress { state, ..progress(wave, &[1, 1, 1], &[1, 0, 0], &[0, 1, 0], &[0; 3]) };
    let rolled_back = ended(D::RolledBack, 1);
    let decision = instruct(&target(0, Succeeded), Some(&rolled_back), Some("new"));
    assert_eq!(decision, Decision { instruction: deploy("old", true), settle: Some(RolledBack), restored: false });
    let decision = instruct(&target(1, Failed), Some(&rolled_back), Some("new"));
    assert_eq!(decision.instruction, deploy("old", true));
    let decision = instruct(&target(2, Waiting), Some(&rolled_back), Some("old"));
    assert_eq!(decision, Decision { instruction: Instruction::Nothing, settle: Some(Untouched), restored: false });
    let decision = instruct(&target(0, Succeeded), Some(&ended(D::Succeeded, 2)), Some("new"));
    assert_eq!(decision, Decision { instruction: Instruction::Nothing, settle: Some(Kept), restored: false });
    assert_eq!(instruct(&target(0, Waiting), None, Some("old")).settle, Some(Untouched));
}

#[test]
fn a_deployment_being_planned_means_wait() {
    use crate::domain::DeploymentState as D;
    use TargetState::*;
    let planning = Progress { state: D::Pending, started: false, ..progress(0, &[], &[], &[], &[]) };
    for wave in [0, 1, 2] {
        let decision = instruct(&target(wave, Waiting), Some(&planning), Some("old"));
        assert_eq!(decision.settle, None, "a target written before its deployment starts is not settled");
        assert!(!matches!(decision.instruction, Instruction::Deploy { .. }));
    }
    assert_eq!(instruct(&target(0, Waiting), Some(&planning), Some("old")).instruction, Instruction::Wait);
    let failed_before_start = Progress { state: D::Failed, ..planning };
    let decision = instruct(&target(0, Waiting), Some(&failed_before_start), Some("old"));
    assert_eq!(decision, Decision { instruction: Instruction::Nothing, settle: Some(Untouched), restored: false });
}

#[test]
fn a_host_left_on_a_rejected_release_goes_back_whatever_came_after() {
    use crate::domain::DeploymentState as D;
    use TargetState::*;
    // D1 ("new") rolled back; before this host polled, D2 ("newer") planned it into its
    // last wave and failed in its canary wave. The host still runs D1's release.
    let d2 = TargetRecord { release: release("newer"), ..target(2, Waiting) };
    let rolled_back = Progress { state: D::RolledBack, ..progress(0, &[1, 1, 1], &[0; 3], &[1, 0, 0], &[0; 3]) };
    let decision = instruct(&d2, Some(&rolled_back), Some("new"));
    assert_eq!(decision, Decision { instruction: deploy("old", true), settle: Some(Untouched), restored: false });
    let settled = TargetRecord { state: Untouched, ..d2 };
    assert_eq!(instruct(&settled, None, Some("new")).instruction, deploy("old", true));
    assert_eq!(instruct(&settled, None, Some("old")).instruction, Instruction::Nothing);
}

fn rolling_back(failed_wave: usize, restoring: usize, restored: &[usize]) -> Progress {
    Progress {
        state: crate::domain::DeploymentState::RollingBack,
        rollback_wave: Some(restoring),
        rollback_wave_started_at: 100,
        restored: restored.to_vec(),
        ..progress(failed_wave, &[1, 2, 2], &[1, 2, 0], &[0, 0, 1], &[0; 3])
    }
}

#[test]
fn a_rollback_restores_one_wave_at_a_time_newest_first() {
    use TargetState::*;
    // Wave 3 failed. It is restored first; waves 1 and 2 keep the release meanwhile.
    let back = rolling_back(2, 2, &[0, 0, 0]);
    assert_eq!(instruct(&target(2, Failed), Some(&back), Some("new")).instruction, deploy("old", true));
    assert_eq!(instruct(&target(1, Succeeded), Some(&back), Some("new")).instruction, Instruction::Nothing);
    assert_eq!(instruct(&target(0, Succeeded), Some(&back), Some("new")).instruction, Instruction::Nothing);
    // A host of the wave being restored that runs the last good release is counted back.
    let decision = instruct(&target(2, Failed), Some(&back), Some("old"));
    assert_eq!((decision.settle, decision.restored), (Some(RolledBack), true));
    let never_switched = instruct(&target(2, Waiting), Some(&back), Some("old"));
    assert!(never_switched.restored, "a host that never switched is back already");

    assert_eq!(next_step(&rolling_back(2, 2, &[0, 0, 1]), 600, 200, &[]), Step::Wait);
    assert_eq!(next_step(&rolling_back(2, 2, &[0, 0, 2]), 600, 200, &[]), Step::RestoreWave(1));
    assert_eq!(next_step(&rolling_back(2, 2, &[0, 0, 1]), 600, 701, &[]), Step::RestoreWave(1), "or time is up");
    assert_eq!(next_step(&rolling_back(2, 0, &[1, 2, 2]), 600, 200, &[]), Step::FinishRollback);
    // The wave after the restored ones goes back at its turn; one whose turn passed, at once.
    let later = rolling_back(2, 1, &[0, 0, 2]);
    assert_eq!(instruct(&target(1, Succeeded), Some(&later), Some("new")).instruction, deploy("old", true));
    let silent = instruct(&target(2, Waiting), Some(&later), Some("new"));
    assert_eq!((silent.instruction, silent.settle, silent.restored), (deploy("old", true), Some(RolledBack), false));
    // A wave never reached is untouched, and nothing is owed when there is no earlier release.
    let untouched = instruct(&target(2, Waiting), Some(&rolling_back(1, 1, &[0, 0, 0])), Some("old"));
    assert_eq!(untouched.settle, Some(Untouched));
    let first_ever = TargetRecord { previous: None, ..target(2, Failed) };
    assert!(instruct(&first_ever, Some(&back), Some("new")).restored);
}

#[test]
fn a_settled_target_needs_no_deployment() {
    use TargetState::*;
    for state in [Kept, RolledBack, Untouched, Dropped] {
        assert!(!needs_progress(&target(0, state)));
    }
    assert_eq!(
        instruct(&target(0, Kept), None, Some("new")),
        Decision { instruction: Instruction::Nothing, settle: None, restored: false }
    );
    assert_eq!(instruct(&target(0, Kept), None, Some("old")).instruction, deploy("new", false), "drift is repaired");
    assert_eq!(instruct(&target(0, RolledBack), None, Some("new")).instruction, deploy("old", true));
    assert_eq!(instruct(&target(0, RolledBack), None, Some("old")).instruction, Instruction::Nothing);
    let first_ever = TargetRecord { previous: None, ..target(0, RolledBack) };
    assert_eq!(instruct(&first_ever, None, Some("new")).instruction, Instruction::Nothing);
    assert_eq!(instruct(&target(0, Untouched), None, Some("old")).instruction, Instruction::Nothing);
    assert_eq!(instruct(&target(0, Untouched), None, Some("new")).instruction, deploy("old", true));
}

#[test]
fn only_a_report_on_the_release_of_a_started_wave_counts() {
    use TargetState::*;
    let running = progress(0, &[1, 1], &[0, 0], &[0, 0], &[0, 0]);
    assert_eq!(judge_report(&target(0, Waiting), &running, "new", true), ReportEffect::Record(Succeeded));
    assert_eq!(judge_report(&target(0, Waiting), &running, "new", false), ReportEffect::Record(Failed));
    assert_eq!(judge_report(&target(0, Waiting), &running, "old", true), ReportEffect::Ignore);
    assert_eq!(judge_report(&target(1, Waiting), &running, "new", true), ReportEffect::Ignore);
    assert_eq!(judge_report(&target(0, Succeeded), &running, "new", false), ReportEffect::Ignore, "once");
    let ended = Progress { state: crate::domain::DeploymentState::RolledBack, ..running };
    assert_eq!(judge_report(&target(0, Waiting), &ended, "new", true), ReportEffect::Ignore);
}

#[test]
fn neighbours_are_in_different_zones() {
    let instances = vec![
        Instance { id: "i-1".into(), availability_zone: "a".into() },
        Instance { id: "i-2".into(), availability_zone: "a".into() },
        Instance { id: "i-3".into(), availability_zone: "b".into() },
        Instance { id: "i-4".into(), availability_zone: "b".into() },
    ];
    let waves =
        plan_waves(&instances, &[WaveSize::Count(1), WaveSize::Count(2), WaveSize::Percent(100)], WaveSize::Count(0))
            .unwrap();
    assert_eq!(waves, [vec!["i-1"], vec!["i-3"], vec!["i-2", "i-4"]]);
}

#[test]
fn a_timeout_in_a_fleet_of_ten_thousand_names_a_few_hosts_and_counts_the_rest() {
    let silent: Vec<String> = (0..10_000).map(|i| format!("i-{i:017x}")).collect();
    let all_at_once = progress(0, &[10_000], &[0], &[0], &[0]);
    let Step::RollBack { reason } = next_step(&all_at_once, 600, 601, &silent) else { panic!("times out") };
    assert!(reason.contains("i-00000000000000000") && reason.contains("and 9980 more"), "{reason}");
    assert!(reason.contains("10000 of 10000 instances"), "{reason}");
    assert!(reason.len() < 1024, "the record every poll reads stays small: {} bytes", reason.len());
}
