//! A check's state across runs: thresholds to go down and to come up, reminders while down,
//! and exactly one notice per transition. Pure: the caller stores the state and delivers
//! the notice.
//!
//! Counters stop at their threshold, so a check that stays up (or stays down) leaves its
//! state unchanged from run to run: nothing is written while nothing changes.

use serde::{Deserialize, Serialize};

/// Up or down, as last decided.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    #[default]
    Up,
    Down,
}

/// What a check's thresholds and reminders are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Consecutive failed runs to go down.
    pub failure: u32,
    /// Consecutive passing runs to come up.
    pub success: u32,
    /// Seconds between reminders while down; none when absent.
    pub repeat: Option<i64>,
}

/// A check's state as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckState {
    pub health: Health,
    pub failures: u32,
    pub successes: u32,
    /// When the current run of failures began.
    pub failing_since: Option<i64>,
    /// When it went down (the incident's start).
    pub down_since: Option<i64>,
    pub last_notice_at: Option<i64>,
    /// What the latest failed run saw.
    pub cause: Option<String>,
    /// Whether the team was told it is down (not while a parent check was down): a resolved
    /// message follows only a down message.
    #[serde(default)]
    pub announced: bool,
}

/// What a run tells the team, if anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// It just went down: failing since `since`.
    Down { since: i64, cause: String },
    /// Still down after the reminder interval.
    StillDown { since: i64, cause: String },
    /// Back up after `down_for` seconds.
    Recovered { since: i64, down_for: i64 },
}

/// The state after one run at `now` (`Ok` when every condition held, else the cause), and
/// the notice it gives.
pub fn observe(
    state: &CheckState,
    outcome: Result<(), String>,
    thresholds: Thresholds,
    now: i64,
) -> (CheckState, Option<Notice>) {
    let mut next = state.clone();
    match outcome {
        Err(cause) => {
            next.successes = 0;
            next.failures = (next.failures + 1).min(thresholds.failure.max(1));
            let since = *next.failing_since.get_or_insert(now);
            next.cause = Some(cause.clone());
            match next.health {
                Health::Up if next.failures >= thresholds.failure.max(1) => {
                    next.health = Health::Down;
                    next.down_since = Some(since);
                    next.last_notice_at = Some(now);
                    (next, Some(Notice::Down { since, cause }))
                }
                Health::Down => {
                    let since = next.down_since.unwrap_or(since);
                    let due =
                        thresholds.repeat.zip(next.last_notice_at).is_some_and(|(every, last)| now - last >= every);
                    if due {
                        next.last_notice_at = Some(now);
                        (next, Some(Notice::StillDown { since, cause }))
                    } else {
                        (next, None)
                    }
                }
                Health::Up => (next, None),
            }
        }
        Ok(()) => {
            next.failures = 0;
            next.failing_since = None;
            next.successes = (next.successes + 1).min(thresholds.success.max(1));
            match next.health {
                Health::Down if next.successes >= thresholds.success.max(1) => {
                    let since = next.down_since.unwrap_or(now);
                    next.health = Health::Up;
                    next.down_since = None;
                    next.cause = None;
                    next.announced = false;
                    next.last_notice_at = Some(now);
                    (next, Some(Notice::Recovered { since, down_for: now - since }))
                }
                _ => (next, None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const THRESHOLDS: Thresholds = Thresholds { failure: 3, success: 2, repeat: Some(4 * 3600) };

    fn run(outcomes: &[(i64, bool)]) -> (CheckState, Vec<Notice>) {
        let mut state = CheckState::default();
        let mut notices = Vec::new();
        for (now, passed) in outcomes {
            let outcome = if *passed { Ok(()) } else { Err(format!("[STATUS] == 200 (was 503) at {now}")) };
            let (next, notice) = observe(&state, outcome, THRESHOLDS, *now);
            state = next;
            notices.extend(notice);
        }
        (state, notices)
    }

    #[test]
    fn three_failures_go_down_once_and_two_successes_come_up_once() {
        let (state, notices) =
            run(&[(0, false), (60, false), (120, false), (180, false), (240, true), (300, true), (360, true)]);
        assert_eq!(
            notices,
            [
                Notice::Down { since: 0, cause: "[STATUS] == 200 (was 503) at 120".into() },
                Notice::Recovered { since: 0, down_for: 300 },
            ]
        );
        assert_eq!(state.health, Health::Up);
    }

    #[test]
    fn a_blip_under_the_threshold_tells_nobody() {
        let (state, notices) = run(&[(0, false), (60, false), (120, true), (180, false)]);
        assert!(notices.is_empty());
        assert_eq!((state.health, state.failures, state.failing_since), (Health::Up, 1, Some(180)));
    }

    #[test]
    fn a_long_outage_reminds_at_the_interval() {
        let mut runs: Vec<(i64, bool)> = (0..=600).map(|minute| (minute * 60, false)).collect();
        runs.push((601 * 60, true));
        runs.push((602 * 60, true));
        let (_, notices) = run(&runs);
        let reminders = notices.iter().filter(|n| matches!(n, Notice::StillDown { .. })).count();
        // Down at minute 2; reminders at 4 h 2 min and 8 h 2 min; 10 h in all.
        assert_eq!(reminders, 2, "{notices:?}");
        assert!(matches!(notices.last(), Some(Notice::Recovered { since: 0, .. })));
    }

    #[test]
    fn a_steady_check_leaves_its_state_unchanged() {
        let (up, _) = run(&[(0, true), (60, true)]);
        let (again, notice) = observe(&up, Ok(()), THRESHOLDS, 120);
        assert_eq!((again, notice), (up, None), "nothing to write while it stays up");
        let (down, _) = run(&[(0, false), (60, false), (120, false)]);
        let (still, notice) = observe(&down, Err("[STATUS] == 200 (was 503) at 120".into()), THRESHOLDS, 180);
        assert_eq!((still, notice), (down, None), "nor while it stays down with the same cause");
    }
}
