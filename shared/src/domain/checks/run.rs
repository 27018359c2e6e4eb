//! One scheduled run of every check, decided at once: each check's next state, the
//! incidents that open and close, and the messages to send, muted under a down parent and
//! grouped. Pure: the function writes each message together with the states it reports, so
//! a message is raised exactly when its transition is stored.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::state::{CheckState, Health, Notice, observe};
use crate::config::Check;
use crate::domain::alert::{Alert, AlertKind, AlertSource, Severity};

/// A check's state as read, with the version its next write is conditional on (0: never
/// written).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredCheck {
    pub state: CheckState,
    pub version: u64,
}

/// An incident: opened when a check goes down, resolved when it comes back up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incident {
    Open { since: i64, cause: String },
    Resolve { since: i64, at: i64 },
}

/// A check's new state, written only if it is still at `expected_version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckWrite {
    pub check: String,
    pub expected_version: u64,
    pub state: CheckState,
    pub incident: Option<Incident>,
}

/// A message and the checks whose writes must land with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckAlert {
    pub alert: Alert,
    pub checks: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunPlan {
    pub writes: Vec<CheckWrite>,
    pub alerts: Vec<CheckAlert>,
}

/// At most this many checks in one message: each check's state and incident go into the
/// message's one DynamoDB transaction (at most 100 items, with the alert and its outbox
/// entry: 2 × 45 + 2).
pub const MAX_CHECKS_PER_ALERT: usize = 45;

/// A check in a message: its new state, and since when it has been down (or was).
type Member<'c> = (&'c Check, CheckState, i64);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Message {
    Down,
    StillDown,
    Recovered,
}

/// Decides one run: `outcomes` holds what each check that ran saw (`Ok`, or the cause).
pub fn plan_run(
    checks: &[Check],
    stored: &BTreeMap<String, StoredCheck>,
    outcomes: &BTreeMap<String, Result<(), String>>,
    now: i64,
) -> RunPlan {
    let before = |name: &str| stored.get(name).cloned().unwrap_or_default();
    let mut next: BTreeMap<&str, (StoredCheck, CheckState, Option<Notice>)> = BTreeMap::new();
    for check in checks {
        let Some(outcome) = outcomes.get(&check.name) else { continue };
        let was = before(&check.name);
        let (state, notice) = observe(&was.state, outcome.clone(), check.thresholds(), now);
        next.insert(&check.name, (was, state, notice));
    }
    let is_down = |name: &str| match next.get(name) {
        Some((_, state, _)) => state.health == Health::Down,
        None => before(name).state.health == Health::Down,
    };
    let muted: BTreeSet<&str> = checks
        .iter()
        .filter(|check| ancestors(checks, check).iter().any(|parent| is_down(parent)))
        .map(|check| check.name.as_str())
        .collect();

    let mut plan = RunPlan::default();
    let mut messages: BTreeMap<(String, Message), Vec<Member>> = BTreeMap::new();
    for check in checks {
        let Some((was, mut state, notice)) = next.remove(check.name.as_str()) else { continue };
        let muted = muted.contains(check.name.as_str());
        let mut incident = None;
        let mut since = state.down_since.or(state.failing_since).unwrap_or(now);
        let message = match notice {
            Some(Notice::Down { since, cause }) => {
                incident = Some(Incident::Open { since, cause });
                (!muted).then_some(Message::Down)
            }
            Some(Notice::Recovered { since: down_since, .. }) => {
                since = down_since;
                incident = Some(Incident::Resolve { since, at: now });
                was.state.announced.then_some(Message::Recovered)
            }
            Some(Notice::StillDown { .. }) if muted => None,
            Some(Notice::StillDown { .. }) if state.announced => Some(Message::StillDown),
            // Down while a parent was down, and the parent is up now: told late, not never.
            _ if state.health == Health::Down && !state.announced && !muted => {
                state.last_notice_at = Some(now);
                Some(Message::Down)
            }
            _ => None,
        };
        if message == Some(Message::Down) {
            state.announced = true;
        }
        if state != was.state || incident.is_some() {
            plan.writes.push(CheckWrite {
                check: check.name.clone(),
                expected_version: was.version,
                state: state.clone(),
                incident,
            });
        }
        if let Some(message) = message {
            let key = check.group.clone().unwrap_or_else(|| format!("check:{}", check.name));
            messages.entry((key, message)).or_default().push((check, state, since));
        }
    }
    for ((_, message), members) in messages {
        let parts = members.len().div_ceil(MAX_CHECKS_PER_ALERT);
        for (part, chunk) in members.chunks(MAX_CHECKS_PER_ALERT).enumerate() {
            plan.alerts.push(CheckAlert {
                alert: alert(message, chunk, now, (part + 1, parts)),
                checks: chunk.iter().map(|(c, _, _)| c.name.clone()).collect(),
            });
        }
    }
    plan
}

/// Every check `check` depends on, directly or through others (the configuration refuses
/// cycles).
fn ancestors<'c>(checks: &'c [Check], check: &'c Check) -> BTreeSet<&'c str> {
    let mut seen = BTreeSet::new();
    let mut next: Vec<&str> = check.depends_on.iter().map(String::as_str).collect();
    while let Some(parent) = next.pop() {
        if seen.insert(parent)
            && let Some(found) = checks.iter().find(|c| c.name == parent)
        {
            next.extend(found.depends_on.iter().map(String::as_str));
        }
    }
    seen
}

/// Seconds as people read them: `4h 2m`.
pub fn duration(seconds: i64) -> String {
    humantime::format_duration(Duration::from_secs(seconds.max(0) as u64)).to_string()
}

fn impact_of(check: &Check) -> String {
    check
        .impact
        .clone()
        .unwrap_or_else(|| format!("{} fails its checks: whatever relies on it is affected", shown_url(&check.url)))
}

fn action_of(check: &Check) -> String {
    check.action.clone().unwrap_or_else(|| format!("Open {} and read the service's logs", shown_url(&check.url)))
}

/// A check's URL as messages show it: without a user part or query, which may hold a
/// credential (`https://user:pass@host/health?token=...`).
pub fn shown_url(url: &str) -> String {
    let (base, had_query) = match url.find(['?', '#']) {
        Some(at) => (&url[..at], true),
        None => (url, false),
    };
    let shown = match base.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.find('/').map_or((rest, ""), |at| rest.split_at(at));
            let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
            format!("{scheme}://{host}{path}")
        }
        None => base.to_owned(),
    };
    if had_query { format!("{shown}?…") } else { shown }
}

/// The one message for `members` (one check, or several of one group) at `now`; a group
/// too large for one message is sent in `part.1` parts, each with an id of its own.
fn alert(message: Message, members: &[Member], now: i64, part: (usize, usize)) -> Alert {
    let (first, first_state, _) = &members[0];
    let since = members.iter().map(|(_, _, since)| *since).min().unwrap_or(now);
    let names: Vec<&str> = members.iter().map(|(c, _, _)| c.name.as_str()).collect();
    let grouped = members.len() > 1;
    let (of, parts) = part;
    let subject = match (&first.group, grouped) {
        (Some(group), true) if parts > 1 => {
            format!("{} checks of group {group} (part {of} of {parts}: {})", members.len(), names.join(", "))
        }
        (Some(group), true) => format!("{} checks of group {group} ({})", members.len(), names.join(", ")),
        _ => format!("Check {}", first.name),
    };
    let key = match (&first.group, grouped) {
        (Some(group), true) if parts > 1 => format!("group-{group}-{now}-{of}of{parts}"),
        (Some(group), true) => format!("group-{group}-{now}"),
        _ => format!("{}-{since}", first.name),
    };
    let per_check = |text: &dyn Fn(&Check, &CheckState) -> String| -> String {
        if grouped {
            members.iter().map(|(c, s, _)| format!("{}: {}", c.name, text(c, s))).collect::<Vec<_>>().join("\n")
        } else {
            text(first, first_state)
        }
    };
    let distinct = |text: &dyn Fn(&Check) -> String| -> String {
        let mut seen: Vec<String> = Vec::new();
        for (check, _, _) in members {
            let line = text(check);
            if !seen.contains(&line) {
                seen.push(line);
            }
        }
        seen.join("\n")
    };
    let cause_of = |_: &Check, s: &CheckState| s.cause.clone().unwrap_or_else(|| "its conditions failed".into());
    let (kind, severity, id, summary, cause, impact, action) = match message {
        Message::Down => (
            AlertKind::CheckDown,
            Severity::Critical,
            format!("{key}-down"),
            format!("{subject} {} down", if grouped { "are" } else { "is" }),
            per_check(&cause_of),
            distinct(&impact_of),
            distinct(&action_of),
        ),
        Message::StillDown => (
            AlertKind::CheckStillDown,
            Severity::Warning,
            format!("{key}-reminder-{now}"),
            format!("{subject} still down after {}", duration(now - since)),
            per_check(&cause_of),
            distinct(&impact_of),
            distinct(&action_of),
        ),
        Message::Recovered => (
            AlertKind::CheckRecovered,
            Severity::Info,
            format!("{key}-resolved"),
            format!("{subject} back up after {}", duration(now - since)),
            per_check(&|c: &Check, _: &CheckState| format!("all {} conditions pass again", c.conditions.len())),
            "none any more".to_owned(),
            "Nothing to do: the incident is resolved".to_owned(),
        ),
    };
    let mut alert = Alert::new(AlertSource::Check, id, kind, severity, now)
        .summary(summary)
        .cause(cause)
        .impact(impact)
        .action(action)
        .label("since", since.to_string())
        .label("checks", names.join(","));
    if !grouped {
        alert = alert.label("url", shown_url(&first.url));
    }
    if let Some(group) = &first.group {
        alert = alert.label("group", group.clone());
    }
    if message == Message::Recovered {
        alert = alert.label("down_for", duration(now - since));
        alert.resolved_at = Some(now);
    }
    let mut channels: Vec<String> = Vec::new();
    for (check, _, _) in members {
        for channel in &check.channels {
            if !channels.contains(channel) {
                channels.push(channel.clone());
            }
        }
    }
    alert.channels = channels;
    alert
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn checks(text: &str) -> Vec<Check> {
        Config::parse(text, "t.toml").unwrap().checks
    }

    const EDGE_AND_API: &str = r#"
[[check]]
name = "edge"
url = "https://edge.example.com/"
conditions = ["[STATUS] == 200"]
failure_threshold = 1
success_threshold = 1

[[check]]
name = "api"
url = "https://api.example.com/health"
conditions = ["[STATUS] == 200"]
failure_threshold = 1
success_threshold = 1
depends_on = ["edge"]
action = "Restart the API"
impact = "Customers cannot sign in"
"#;

    /// Runs the plan over `runs` (each a list of (check, passed)), storing what it writes.
    fn runs(checks: &[Check], runs: &[&[(&str, bool)]]) -> Vec<Vec<Alert>> {
        let mut stored: BTreeMap<String, StoredCheck> = BTreeMap::new();
        let mut sent = Vec::new();
        for (i, run) in runs.iter().enumerate() {
            let outcomes = run
                .iter()
                .map(|(name, ok)| (name.to_string(), if *ok { Ok(()) } else { Err(format!("{name} answered 503")) }))
                .collect();
            let plan = plan_run(checks, &stored, &outcomes, 60 * i as i64);
            for write in plan.writes {
                let version = stored.get(&write.check).map_or(0, |s| s.version);
                assert_eq!(version, write.expected_version);
                stored.insert(write.check, StoredCheck { state: write.state, version: version + 1 });
            }
            sent.push(plan.alerts.into_iter().map(|a| a.alert).collect());
        }
        sent
    }

    #[test]
    fn a_down_parent_mutes_its_child_and_the_child_is_told_once_the_parent_is_back() {
        let checks = checks(EDGE_AND_API);
        let sent = runs(
            &checks,
            &[
                &[("edge", false), ("api", false)],
                &[("edge", false), ("api", false)],
                &[("edge", true), ("api", false)],
                &[("edge", true), ("api", true)],
            ],
        );
        let kinds: Vec<Vec<(AlertKind, String)>> = sent
            .iter()
            .map(|run| {
                let mut kinds: Vec<_> = run.iter().map(|a| (a.kind, a.labels["checks"].clone())).collect();
                kinds.sort_by_key(|(_, check)| check.clone());
                kinds
            })
            .collect();
        assert_eq!(
            kinds,
            [
                vec![(AlertKind::CheckDown, "edge".into())],
                vec![],
                vec![(AlertKind::CheckDown, "api".into()), (AlertKind::CheckRecovered, "edge".into())],
                vec![(AlertKind::CheckRecovered, "api".into())],
            ]
        );
        let api_down = sent[2].iter().find(|a| a.kind == AlertKind::CheckDown).unwrap();
        assert_eq!(
            (api_down.impact.as_str(), api_down.action.as_str()),
            ("Customers cannot sign in", "Restart the API")
        );
        assert_eq!(api_down.labels["since"], "0", "down since its first failed run");
    }

    #[test]
    fn a_muted_child_that_recovers_first_says_nothing() {
        let checks = checks(EDGE_AND_API);
        let sent = runs(
            &checks,
            &[&[("edge", false), ("api", false)], &[("edge", false), ("api", true)], &[("edge", true), ("api", true)]],
        );
        let all: Vec<String> = sent.iter().flatten().map(|a| a.id.clone()).collect();
        assert_eq!(all, ["edge-0-down", "edge-0-resolved"]);
    }

    #[test]
    fn checks_of_a_group_failing_together_make_one_message() {
        let checks = checks(
            r#"
[[check]]
name = "web-a"
url = "https://a.example.com/"
conditions = ["[STATUS] == 200"]
failure_threshold = 1
group = "web"

[[check]]
name = "web-b"
url = "https://b.example.com/"
conditions = ["[STATUS] == 200"]
failure_threshold = 1
group = "web"

[[check]]
name = "db"
url = "https://db.example.com/"
conditions = ["[STATUS] == 200"]
failure_threshold = 1
"#,
        );
        let sent = runs(&checks, &[&[("web-a", false), ("web-b", false), ("db", false)]]);
        assert_eq!(sent[0].len(), 2, "{:?}", sent[0]);
        let group = sent[0].iter().find(|a| a.labels.contains_key("group")).unwrap();
        assert_eq!(group.summary, "2 checks of group web (web-a, web-b) are down");
        assert_eq!(group.cause, "web-a: web-a answered 503\nweb-b: web-b answered 503");
        assert_eq!(group.labels["checks"], "web-a,web-b");
    }

    #[test]
    fn a_group_too_large_for_one_message_is_sent_in_parts_each_its_own_alert() {
        let mut text = String::new();
        for i in 0..100 {
            text.push_str(&format!(
                "[[check]]\nname = \"c{i}\"\nurl = \"https://h{i}.example.com/\"\nconditions = [\"[STATUS] == 200\"]\nfailure_threshold = 1\ngroup = \"fleet\"\n"
            ));
        }
        let checks = checks(&text);
        let outcomes = checks.iter().map(|c| (c.name.clone(), Err("503".to_string()))).collect();
        let plan = plan_run(&checks, &BTreeMap::new(), &outcomes, 60);
        let ids: Vec<&str> = plan.alerts.iter().map(|a| a.alert.id.as_str()).collect();
        assert_eq!(ids, ["group-fleet-60-1of3-down", "group-fleet-60-2of3-down", "group-fleet-60-3of3-down"]);
        assert_eq!(plan.alerts.iter().map(|a| a.checks.len()).sum::<usize>(), 100, "every check in one of them");
        assert!(plan.alerts[1].alert.summary.starts_with("45 checks of group fleet (part 2 of 3: c45, "));
    }

    #[test]
    fn urls_lose_their_credentials_in_messages() {
        assert_eq!(
            shown_url("https://user:pw@api.example.com/health?token=s3cret"),
            "https://api.example.com/health?…"
        );
        assert_eq!(shown_url("https://api.example.com/health"), "https://api.example.com/health");
        assert_eq!(shown_url("http://127.0.0.1:8080"), "http://127.0.0.1:8080");
    }

    #[test]
    fn a_steady_run_writes_nothing_and_a_lost_race_is_seen_by_version() {
        let checks = checks(EDGE_AND_API);
        let stored: BTreeMap<String, StoredCheck> = BTreeMap::new();
        let up: BTreeMap<String, Result<(), String>> =
            [("edge".to_string(), Ok(())), ("api".to_string(), Ok(()))].into();
        let first = plan_run(&checks, &stored, &up, 0);
        assert_eq!(first.writes.len(), 2, "first sight: counters start");
        let stored: BTreeMap<String, StoredCheck> =
            first.writes.into_iter().map(|w| (w.check, StoredCheck { state: w.state, version: 1 })).collect();
        assert_eq!(plan_run(&checks, &stored, &up, 60), RunPlan::default(), "no write while nothing changes");
        let down: BTreeMap<String, Result<(), String>> = [("edge".to_string(), Err("503".to_string()))].into();
        let plan = plan_run(&checks, &stored, &down, 120);
        assert_eq!(plan.writes[0].expected_version, 1, "conditional on what was read");
        assert_eq!(plan.writes[0].incident, Some(Incident::Open { since: 120, cause: "503".into() }));
    }
}
