//! Checks of a fleet: the checks of one run (each instance of an environment, heartbeats),
//! the hosts a running deployment owns, and self-healing reboots.

use super::*;

/// What one run checks.
#[derive(Default)]
pub(crate) struct RunChecks {
    pub(crate) checks: Vec<Check>,
    /// Outcomes known without fetching (heartbeats, hosts without the address).
    pub(crate) outcomes: BTreeMap<String, Result<(), String>>,
    /// Per environment check whose instances EC2 listed: the instances that run.
    pub(crate) present: BTreeMap<String, std::collections::BTreeSet<String>>,
    /// Environment checks whose instances must not be rebooted this run (what a deployment
    /// is doing is unknown).
    pub(crate) unhealable: std::collections::BTreeSet<String>,
}

impl AlertDispatch {
    /// The checks of this run: the fixed ones, and one per running instance of each
    /// environment check, except instances a running deployment is working on (its health
    /// gate judges them) and instances launched within the last minutes. Heartbeats, and
    /// instances that cannot be checked, come decided.
    pub(crate) async fn checks_of_this_run(&self, now: i64) -> RunChecks {
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
    pub(crate) async fn heal(&self, check: &Check, state: Option<StoredCheck>, now: i64) -> Result<(), StoreError> {
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
}
