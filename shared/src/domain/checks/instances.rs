//! Checks of an environment's instances: one check per running instance (its state, its
//! messages, grouped per check so a fleet-wide failure is one message), hosts a deployment
//! is working on left to the deployment, and which instances self-healing reboots.

use std::collections::{BTreeMap, BTreeSet};

use super::run::StoredCheck;
use super::state::Health;
use crate::config::Check;
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
pub fn expand(check: &Check, hosts: &[Host]) -> (Vec<Check>, Vec<(String, String)>) {
    let mut checks = Vec::new();
    let mut unreachable = Vec::new();
    for host in hosts {
        let name = instance_check_name(&check.name, &host.id);
        let mut url = check.url.replace("{instance_id}", &host.id);
        for (placeholder, address, what) in
            [("{private_ip}", &host.private_ip, "private"), ("{public_ip}", &host.public_ip, "public")]
        {
            if url.contains(placeholder) {
                match address {
                    Some(address) => url = url.replace(placeholder, address),
                    None => {
                        unreachable.push((name.clone(), format!("{} has no {what} IP address to check", host.id)));
                        break;
                    }
                }
            }
        }
        if unreachable.last().is_some_and(|(n, _)| *n == name) {
            continue;
        }
        let environment = check.environment.clone().unwrap_or_default();
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
    (checks, unreachable)
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
        let since = heard.or(host.launched_at).unwrap_or(now);
        let outcome = if now - since >= limit {
            Err(match heard {
                Some(at) => format!(
                    "the agent on {} has not polled for {} (last heard of at {})",
                    host.id,
                    super::run::duration(now - at),
                    crate::domain::dispatch::rfc3339(at)
                ),
                None => format!(
                    "no agent has polled for {} since it was launched {} ago",
                    host.id,
                    super::run::duration(now - since)
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

/// The instances a running deployment is working on (a wave that has started, not settled
/// yet): their checks wait, the deployment's own health gate judges them.
pub fn in_active_waves(targets: &[TargetRecord], wave: usize) -> BTreeSet<String> {
    targets.iter().filter(|t| t.wave <= wave && !t.state.is_settled()).map(|t| t.instance.clone()).collect()
}

/// The per-instance checks (of checks with `reboot`) that are down now: the instances
/// self-healing reboots, each at most once per window (the store's claim decides that).
pub fn reboots_due(checks: &[Check], state_of: impl Fn(&str) -> Option<StoredCheck>) -> Vec<&Check> {
    checks
        .iter()
        .filter(|c| c.reboot && c.environment.is_some())
        .filter(|c| state_of(&c.name).is_some_and(|s| s.state.health == Health::Down))
        .collect()
}

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
        assert!(quiet.contains("has not polled for 18m 20s"), "{quiet}");
        assert!(outcomes[3].1.as_ref().unwrap_err().contains("no agent has polled"));
    }

    #[test]
    fn each_instance_is_a_check_of_its_own_in_one_group() {
        let (checks, unreachable) = expand(&check(), &[host("i-1", Some("10.0.0.1")), host("i-2", None)]);
        assert_eq!(checks.len(), 1);
        assert_eq!(checks[0].name, "hosts/i-1");
        assert_eq!(checks[0].url, "http://10.0.0.1:8080/health?id=i-1");
        assert_eq!(checks[0].group.as_deref(), Some("hosts"));
        assert!(checks[0].impact.as_deref().unwrap().contains("instance i-1 of production"));
        assert_eq!(unreachable, [("hosts/i-2".to_string(), "i-2 has no private IP address to check".to_string())]);
        assert_eq!(instance_of("hosts/i-1"), Some("i-1"));
    }

    #[test]
    fn only_down_instances_of_rebooting_checks_are_rebooted() {
        let (checks, _) = expand(&check(), &[host("i-1", Some("10.0.0.1")), host("i-2", Some("10.0.0.2"))]);
        let down = StoredCheck { state: CheckState { health: Health::Down, ..CheckState::default() }, version: 3 };
        let due = reboots_due(&checks, |name| (name == "hosts/i-2").then(|| down.clone()));
        assert_eq!(due.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["hosts/i-2"]);
        let mut quiet = checks.clone();
        quiet.iter_mut().for_each(|c| c.reboot = false);
        assert!(reboots_due(&quiet, |_| Some(down.clone())).is_empty(), "off by default");
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
