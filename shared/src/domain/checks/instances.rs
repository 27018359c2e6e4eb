//! Checks of an environment's instances: one check per running instance (its state, its
//! messages, grouped per check so a fleet-wide failure is one message), hosts a deployment
//! is working on left to the deployment, and which instances self-healing reboots.

use std::collections::{BTreeMap, BTreeSet};

use super::run::StoredCheck;
use super::state::Health;
use crate::config::Check;
use crate::domain::alert::{Alert, AlertKind, AlertSource, Severity};
use crate::domain::rollout::TargetRecord;

/// A running instance and its addresses, as EC2 describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub id: String,
    pub private_ip: Option<String>,
    pub public_ip: Option<String>,
    /// Unix seconds.
    pub launched_at: Option<i64>,
}

/// The per-instance checks of `check` (an environment's): named `<check>/<instance id>`,
/// grouped under the check's group (or the check's name), the URL filled in. A host
/// without the address the URL needs cannot be checked: it comes back with that cause.
pub fn expand(check: &Check, hosts: &[Host]) -> (Vec<Check>, Vec<Decided>) {
    let mut checks = Vec::new();
    let mut decided = Vec::new();
    let environment = check.environment.clone().unwrap_or_default();
    for host in hosts {
        let name = instance_check_name(&check.name, &host.id);
        let mut url = check.url.replace("{instance_id}", &host.id);
        for (placeholder, address, what) in
            [("{private_ip}", &host.private_ip, "private"), ("{public_ip}", &host.public_ip, "public")]
        {
            match address {
                Some(address) => url = url.replace(placeholder, address),
                None if url.contains(placeholder) => {
                    decided.push((name.clone(), Err(format!("{} has no {what} IP address to check", host.id))));
                }
                None => {}
            }
        }
        checks.push(Check {
            name,
            url,
            group: Some(check.group.clone().unwrap_or_else(|| check.name.clone())),
            impact: Some(check.impact.clone().unwrap_or_else(|| {
                format!("instance {} of {environment} fails its checks: the users it serves are affected", host.id)
            })),
            ..check.clone()
        });
    }
    (checks, decided)
}

/// How long after its launch an instance is left to start: it is not checked before.
pub const LAUNCH_GRACE_SECONDS: i64 = 300;

/// The hosts old enough to be checked at `now`.
pub fn past_grace(hosts: Vec<Host>, now: i64) -> Vec<Host> {
    hosts.into_iter().filter(|h| h.launched_at.is_none_or(|at| now - at >= LAUNCH_GRACE_SECONDS)).collect()
}

/// The stored per-instance checks of `check` whose instance is gone (terminated or stopped:
/// not among the environment's running instances, `present`), with the message that closes
/// an announced outage.
pub fn gone<'s>(
    check: &str,
    stored: &'s BTreeMap<String, StoredCheck>,
    present: &BTreeSet<String>,
    now: i64,
) -> Vec<(&'s str, &'s StoredCheck, Option<Alert>)> {
    let prefix = format!("{check}/");
    stored
        .range(prefix.clone()..)
        .take_while(|(name, _)| name.starts_with(&prefix))
        .filter(|(name, _)| instance_of(name).is_some_and(|id| !present.contains(id)))
        .map(|(name, stored)| {
            let announced = stored.state.health == Health::Down && stored.state.announced;
            let alert = announced.then(|| {
                let instance = instance_of(name).unwrap_or_default();
                let since = stored.state.down_since.unwrap_or(now);
                Alert::new(
                    AlertSource::Check,
                    format!("{name}-{since}-gone"),
                    AlertKind::CheckRecovered,
                    Severity::Info,
                    now,
                )
                .summary(format!("Check {name} ends: {instance} left the fleet"))
                .cause(format!("{instance} no longer runs (terminated or stopped) while its check was down"))
                .impact("none any more from this instance")
                .action("Nothing to do, unless it was not meant to go")
                .label("since", since.to_string())
                .label("checks", name.clone())
                .label("instance", instance)
            });
            (name.as_str(), stored, alert)
        })
        .collect()
}

/// A check decided without fetching anything: its name and outcome.
pub type Decided = (String, Result<(), String>);

/// The heartbeat checks of `check` (one with `agent_silent_for`): one per running instance,
/// failing when its agent has not polled for that long (counted from the instance's launch
/// when it never has). `seen` holds when each instance's agent was last heard of.
pub fn heartbeats(check: &Check, hosts: &[Host], seen: &BTreeMap<String, i64>, now: i64) -> (Vec<Check>, Vec<Decided>) {
    let Some(silent_for) = check.agent_silent_for else { return (Vec::new(), Vec::new()) };
    let limit = silent_for.0 as i64;
    let environment = check.environment.clone().unwrap_or_default();
    let mut checks = Vec::new();
    let mut outcomes = Vec::new();
    for host in hosts {
        let name = instance_check_name(&check.name, &host.id);
        let heard = seen.get(&host.id).copied();
        // A stopped and started instance is judged from its new launch, not an old poll.
        let since = heard.max(host.launched_at).unwrap_or(now);
        let outcome = if now - since >= limit {
            // Fixed text (no "for how long"): a cause that changes every run would be a
            // write every run; the message says since when.
            Err(match heard {
                Some(at) if at == since => format!(
                    "the agent on {} has not polled for over {} (last heard of at {})",
                    host.id,
                    super::run::duration(limit),
                    crate::domain::dispatch::rfc3339(at)
                ),
                _ => format!(
                    "no agent has polled for {} since it was launched at {}",
                    host.id,
                    crate::domain::dispatch::rfc3339(since)
                ),
            })
        } else {
            Ok(())
        };
        outcomes.push((name.clone(), outcome));
        checks.push(Check {
            name,
            group: Some(check.group.clone().unwrap_or_else(|| check.name.clone())),
            impact: Some(check.impact.clone().unwrap_or_else(|| {
                format!("deployments to {environment} cannot reach {}: it keeps the release it has", host.id)
            })),
            action: Some(check.action.clone().unwrap_or_else(|| {
                format!(
                    "Look at the agent on {} (systemctl status conveyor-agent; journalctl -u conveyor-agent)",
                    host.id
                )
            })),
            ..check.clone()
        });
    }
    (checks, outcomes)
}

pub fn instance_check_name(check: &str, instance: &str) -> String {
    format!("{check}/{instance}")
}

/// The instance a per-instance check is about.
pub fn instance_of(name: &str) -> Option<&str> {
    name.rsplit_once('/').map(|(_, instance)| instance)
}

/// The instances a running deployment is working on (in a wave that has started, not yet
/// reported, or failed and being rolled back): their checks wait, the deployment's own
/// health gate judges them. Hosts that passed are checked again at once.
pub fn in_active_waves(targets: &[TargetRecord], wave: usize) -> BTreeSet<String> {
    use crate::domain::rollout::TargetState;
    targets
        .iter()
        .filter(|t| t.wave <= wave && matches!(t.state, TargetState::Waiting | TargetState::Failed))
        .map(|t| t.instance.clone())
        .collect()
}

/// The per-instance checks (of checks with `reboot`) that are down now and were announced
/// (not muted under a down parent): the instances self-healing reboots, each at most once
/// per window (the store's claim decides that). When more than half of a check's instances
/// are down, none is rebooted: something they share is down, and rebooting the fleet would
/// make it worse. At most [`MAX_REBOOTS_PER_RUN`] per check in one run.
pub fn reboots_due(checks: &[Check], state_of: impl Fn(&str) -> Option<StoredCheck>) -> Vec<&Check> {
    let mut due = Vec::new();
    let mut by_parent: BTreeMap<&str, (usize, Vec<&Check>)> = BTreeMap::new();
    for check in checks.iter().filter(|c| c.reboot && c.environment.is_some() && c.agent_silent_for.is_none()) {
        let Some(parent) = check.name.rsplit_once('/').map(|(parent, _)| parent) else { continue };
        let entry = by_parent.entry(parent).or_default();
        entry.0 += 1;
        if state_of(&check.name).is_some_and(|s| s.state.health == Health::Down && s.state.announced) {
            entry.1.push(check);
        }
    }
    for (parent, (instances, down)) in by_parent {
        if down.len() * 2 > instances {
            if !down.is_empty() {
                tracing::warn!(
                    check = parent,
                    down = down.len(),
                    instances,
                    "most instances are down: no self-healing reboots"
                );
            }
            continue;
        }
        due.extend(down.into_iter().take(MAX_REBOOTS_PER_RUN));
    }
    due
}

/// Reboots one check's self-healing may start in one run.
pub const MAX_REBOOTS_PER_RUN: usize = 3;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::domain::checks::CheckState;

    fn check() -> Check {
        Config::parse(
            "[[environment]]\nname = \"production\"\nbranch = \"main\"\nrepository = \"*\"\n\n[[check]]\nname = \"hosts\"\nenvironment = \"production\"\nurl = \"http://{private_ip}:8080/health?id={instance_id}\"\nconditions = [\"[STATUS] == 200\"]\nreboot = true\n",
            "t.toml",
        )
        .unwrap()
        .checks
        .remove(0)
    }

    fn host(id: &str, ip: Option<&str>) -> Host {
        Host { id: id.into(), private_ip: ip.map(str::to_owned), public_ip: None, launched_at: Some(0) }
    }

    #[test]
    fn an_agent_silent_past_the_limit_fails_and_a_new_instance_has_its_grace() {
        let check = Config::parse(
            "[[environment]]\nname = \"production\"\nbranch = \"main\"\nrepository = \"*\"\n\n[[check]]\nname = \"agents\"\nenvironment = \"production\"\nagent_silent_for = \"10m\"\n",
            "t.toml",
        )
        .unwrap()
        .checks
        .remove(0);
        let mut new = host("i-new", None);
        new.launched_at = Some(1000);
        let hosts = [host("i-quiet", None), host("i-busy", None), new, host("i-never", None)];
        let seen = BTreeMap::from([("i-quiet".to_string(), 100), ("i-busy".to_string(), 1100)]);
        let (checks, outcomes) = heartbeats(&check, &hosts, &seen, 1200);
        assert_eq!(checks.len(), 4);
        assert_eq!(checks[0].name, "agents/i-quiet");
        let failing: Vec<&str> = outcomes.iter().filter(|(_, o)| o.is_err()).map(|(n, _)| n.as_str()).collect();
        assert_eq!(failing, ["agents/i-quiet", "agents/i-never"]);
        let quiet = outcomes[0].1.as_ref().unwrap_err();
        assert!(quiet.contains("has not polled for over 10m (last heard of at 1970-01-01T00:01:40Z)"), "{quiet}");
        assert!(outcomes[3].1.as_ref().unwrap_err().contains("no agent has polled"));
    }

    #[test]
    fn each_instance_is_a_check_of_its_own_in_one_group() {
        let (checks, unreachable) = expand(&check(), &[host("i-1", Some("10.0.0.1")), host("i-2", None)]);
        assert_eq!(checks.len(), 2, "an instance without the address is a check too, failing");
        assert_eq!(checks[0].name, "hosts/i-1");
        assert_eq!(checks[0].url, "http://10.0.0.1:8080/health?id=i-1");
        assert_eq!(checks[0].group.as_deref(), Some("hosts"));
        assert!(checks[0].impact.as_deref().unwrap().contains("instance i-1 of production"));
        assert_eq!(unreachable, [("hosts/i-2".to_string(), Err("i-2 has no private IP address to check".to_string()))]);
        let young = Host { launched_at: Some(1000), ..host("i-3", None) };
        assert_eq!(past_grace(vec![host("i-1", None), young], 1100).len(), 1, "a new instance is left to start");
        assert_eq!(instance_of("hosts/i-1"), Some("i-1"));
    }

    #[test]
    fn only_announced_down_instances_are_rebooted_and_never_most_of_the_fleet() {
        let hosts: Vec<Host> = (1..=8).map(|i| host(&format!("i-{i}"), Some("10.0.0.1"))).collect();
        let (checks, _) = expand(&check(), &hosts);
        let down = |announced| StoredCheck {
            state: CheckState { health: Health::Down, announced, ..CheckState::default() },
            version: 3,
        };
        let due = reboots_due(&checks, |name| match name {
            "hosts/i-2" => Some(down(true)),
            "hosts/i-3" => Some(down(false)),
            _ => None,
        });
        assert_eq!(due.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["hosts/i-2"], "a muted one is not");
        let four =
            |name: &str| ["hosts/i-1", "hosts/i-2", "hosts/i-3", "hosts/i-4"].contains(&name).then(|| down(true));
        assert_eq!(reboots_due(&checks, four).len(), MAX_REBOOTS_PER_RUN, "a few per run");
        let five = |name: &str| {
            ["hosts/i-1", "hosts/i-2", "hosts/i-3", "hosts/i-4", "hosts/i-5"].contains(&name).then(|| down(true))
        };
        assert!(reboots_due(&checks, five).is_empty(), "most of the fleet down: something shared is");
        let mut quiet = checks.clone();
        quiet.iter_mut().for_each(|c| c.reboot = false);
        assert!(reboots_due(&quiet, |_| Some(down(true))).is_empty(), "off by default");
    }

    #[test]
    fn instances_that_left_the_fleet_are_forgotten_and_an_announced_outage_is_closed() {
        let down = StoredCheck {
            state: CheckState { health: Health::Down, announced: true, down_since: Some(50), ..CheckState::default() },
            version: 4,
        };
        let stored = BTreeMap::from([
            ("hosts/i-1".to_string(), StoredCheck::default()),
            ("hosts/i-2".to_string(), down),
            ("hosts/i-3".to_string(), StoredCheck::default()),
            ("hosts-b/i-9".to_string(), StoredCheck::default()),
            ("other".to_string(), StoredCheck::default()),
        ]);
        let present = BTreeSet::from(["i-1".to_string()]);
        let gone = gone("hosts", &stored, &present, 100);
        let names: Vec<&str> = gone.iter().map(|(name, _, _)| *name).collect();
        assert_eq!(names, ["hosts/i-2", "hosts/i-3"], "another check's instances are not this one's");
        let closing = gone[0].2.as_ref().unwrap();
        assert_eq!(closing.summary, "Check hosts/i-2 ends: i-2 left the fleet");
        assert!(gone[1].2.is_none(), "nobody was told it was down: nothing to close");
    }

    #[test]
    fn instance_check_mistakes_are_named() {
        let bad = |check: &str| {
            Config::parse(&format!("[[environment]]\nname = \"production\"\nbranch = \"main\"\nrepository = \"*\"\n\n[[check]]\nname = \"c\"\nconditions = [\"[STATUS] == 200\"]\n{check}"), "t.toml")
                .unwrap_err()
                .message
        };
        assert!(bad("url = \"http://{private_ip}/\"\n").contains("add `environment`"));
        assert!(bad("url = \"http://x/\"\nenvironment = \"production\"\n").contains("names the host"));
        assert!(bad("url = \"http://{private_ip}/\"\nenvironment = \"staging\"\n").contains("is no [[environment]]"));
        assert!(bad("url = \"http://x/\"\nreboot = true\n").contains("`reboot` needs `environment`"));
        assert!(
            bad("url = \"http://{private_ip}/\"\nenvironment = \"production\"\nreboot_every = \"1m\"\n")
                .contains("at least 5m")
        );
    }
}
