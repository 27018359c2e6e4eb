//! `cdn-invalidate`: turns each uploaded site publish into the cheapest correct CloudFront
//! invalidation, submits it once, and follows it to `Completed`.
//!
//! Triggers: a publish becoming `uploaded` (the table's stream) and a one-minute schedule,
//! which submits what the stream missed or had to hold back (CloudFront's in-progress
//! limits) and follows every submitted invalidation. Both may handle one publish at once:
//! one invocation is elected to submit it (a claim on the record), CloudFront is asked with
//! a caller reference derived from the publish, and the invalidation id is recorded only by
//! the claim's holder, so a publish is never invalidated twice.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use conveyor_shared::SdkConfig;
use conveyor_shared::cloudfront::{Cdn, CdnError, Progress};
use conveyor_shared::config::{Config, LoadError, Settings, Site};
use conveyor_shared::domain::alert::{Alert, AlertKind, AlertSource, Severity};
use conveyor_shared::domain::invalidation::{self, FREE_PATHS_PER_MONTH, InProgress, Invalidation, Step};
use conveyor_shared::domain::publish::{PublishRecord, PublishState};
use conveyor_shared::http::BoxFuture;
use conveyor_shared::registration::{Function, Registration};
use conveyor_shared::store::{StoreError, Table, Transition, claim_token};
use conveyor_shared::triggers::{ScheduledEvent, ScheduledFunction, StreamFunction, StreamRecord, new_text};

/// Publishes that just became `uploaded`.
pub const UPLOADED_PUBLISHES: &str = r#"{"eventName": ["MODIFY"], "dynamodb": {"NewImage": {"sk": {"S": [{"prefix": "PUBLISH#"}]}, "state": {"S": ["uploaded"]}}, "OldImage": {"state": {"S": ["pending"]}}}}"#;

pub const REGISTRATION: Registration = Registration {
    name: "cdn-invalidate",
    routes: &[],
    stream_filters: &[UPLOADED_PUBLISHES],
    schedule: Some(Duration::from_secs(60)),
    permissions: &[
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:Query",
        "cloudfront:CreateInvalidation",
        "cloudfront:GetInvalidation",
    ],
};

/// How long an invocation holds the right to submit a publish's invalidation; one that died
/// holding it is replaced after this.
const SUBMIT_CLAIM_SECONDS: i64 = 60;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] LoadError),
}

#[derive(Debug, thiserror::Error)]
pub enum CdnFailure {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Cdn(#[from] CdnError),
    #[error("the run failed for {}", .0.join("; "))]
    Sites(Vec<String>),
}

#[derive(Clone)]
pub struct CdnInvalidate {
    table: Table,
    cdn: Cdn,
    config: Arc<Config>,
    every: Duration,
}

impl CdnInvalidate {
    pub fn new(table: Table, cdn: Cdn, config: Arc<Config>) -> Self {
        Self { table, cdn, config, every: REGISTRATION.schedule.unwrap_or(Duration::from_secs(60)) }
    }

    /// Runs the schedule at another rate (`conveyor dev`'s `CONVEYOR_TICK_SECONDS`).
    pub fn every(self, every: Duration) -> Self {
        Self { every, ..self }
    }

    pub fn from_settings(settings: &Settings, sdk: &SdkConfig) -> Result<Self, StartupError> {
        let config = Config::load(&settings.config_path)?;
        Ok(Self::new(Table::from_sdk(sdk, settings.table.clone()), Cdn::new(sdk), Arc::new(config)))
    }

    /// Every site's publishes that wait for or follow an invalidation, moved on.
    pub async fn tick(&self, now: i64) -> Result<(), CdnFailure> {
        let mut open: Vec<(&Site, PublishRecord)> = Vec::new();
        let mut failures = Vec::new();
        for site in &self.config.sites {
            match self.table.publishes_in(&site.name, &[PublishState::Uploaded, PublishState::Invalidating]).await {
                Ok(records) => open.extend(records.into_iter().map(|r| (site, r))),
                Err(err) => failures.push(format!("site {}: {err}", site.name)),
            }
        }
        // What Conveyor has in progress, per distribution (sites may share one).
        let mut in_progress: BTreeMap<String, InProgress> = BTreeMap::new();
        for (_, record) in open.iter().filter(|(_, r)| r.state == PublishState::Invalidating) {
            in_progress.entry(record.distribution.clone()).or_default().add(&record.invalidation_paths);
        }
        // Follow first (a completed one frees room), then submit, oldest first.
        open.sort_by_key(|(_, r)| (r.state != PublishState::Invalidating, r.created_at));
        for (site, record) in open {
            let counted = in_progress.entry(record.distribution.clone()).or_default();
            if let Err(err) = self.advance(site, record, counted, now).await {
                failures.push(format!("site {}: {err}", site.name));
            }
        }
        if failures.is_empty() { Ok(()) } else { Err(CdnFailure::Sites(failures)) }
    }

    /// One publish's next step.
    pub async fn advance(
        &self,
        site: &Site,
        record: PublishRecord,
        in_progress: &mut InProgress,
        now: i64,
    ) -> Result<(), CdnFailure> {
        let alert_after = site.invalidation_alert_after.0 as i64;
        match invalidation::step(site, &record, *in_progress, alert_after, now) {
            Step::NothingToInvalidate => {
                self.table
                    .end_publish(&record, PublishState::Completed, "nothing the distribution serves changed", now)
                    .await?;
            }
            Step::Submit(invalidation) => {
                if self.submit(site, &record, &invalidation, now).await? {
                    in_progress.add(&invalidation.paths);
                }
            }
            Step::Wait(invalidation) => tracing::info!(
                site = %site.name,
                publish = %record.id,
                paths = invalidation.paths.len(),
                "over CloudFront's in-progress limits: the invalidation waits for a later run"
            ),
            Step::Follow { id, overdue } => self.follow(site, &record, &id, overdue, in_progress, now).await?,
            Step::Done => {}
        }
        Ok(())
    }

    /// Submits the invalidation when this invocation wins the claim; answers whether it did.
    async fn submit(
        &self,
        site: &Site,
        record: &PublishRecord,
        invalidation: &Invalidation,
        now: i64,
    ) -> Result<bool, CdnFailure> {
        let token = claim_token(&record.id, now);
        if self.table.claim_submission(record, &token, now, SUBMIT_CLAIM_SECONDS).await? == Transition::Rejected {
            return Ok(false);
        }
        // The same publish and paths always send the same reference: CloudFront answers a
        // retry with the invalidation it already made (other paths, after a configuration
        // change, make another reference, never `InvalidationBatchAlreadyExists`).
        let reference = format!("conveyor-{}-{}", record.id, invalidation.digest());
        let id = match self.cdn.invalidate(&record.distribution, &reference, &invalidation.paths).await {
            Ok(id) => id,
            Err(CdnError::Busy { .. }) => {
                tracing::info!(site = %site.name, publish = %record.id, "CloudFront is busy with other invalidations: the next run submits it");
                // Given back, so the next run (a minute on) tries instead of waiting out the claim.
                self.table.release_submission(record, &token).await?;
                return Ok(false);
            }
            // No such distribution: trying again changes nothing; the alert says what to fix.
            Err(err @ (CdnError::NotFound { .. } | CdnError::Denied { .. })) => {
                self.table.end_publish(record, PublishState::Failed, &err.to_string(), now).await?;
                self.table.record_alert(&failed_alert(site, record, &err.to_string(), now)).await?;
                return Ok(false);
            }
            Err(err) => {
                self.table.release_submission(record, &token).await?;
                return Err(err.into());
            }
        };
        let recorded = self.table.record_submission(record, &token, &id, &invalidation.paths, now).await?;
        let paths = invalidation.paths.len();
        tracing::info!(site = %site.name, publish = %record.id, invalidation = %id, paths, ?recorded, "invalidation submitted");
        if recorded == Transition::Applied {
            // Read after the count went up: of racing publishes, the one that saw the total
            // over the free paths raises it; its id makes it one alert a month.
            let month = invalidation::month_of(now);
            let total = self.table.month_paths(&month).await?;
            if total > FREE_PATHS_PER_MONTH {
                self.table.record_alert(&over_free_alert(site, &month, total, now)).await?;
            } else if total >= NEAR_FREE_PATHS {
                self.table.record_alert(&near_free_alert(site, &month, total, now)).await?;
            }
        }
        Ok(recorded == Transition::Applied)
    }

    async fn follow(
        &self,
        site: &Site,
        record: &PublishRecord,
        id: &str,
        overdue: bool,
        in_progress: &mut InProgress,
        now: i64,
    ) -> Result<(), CdnFailure> {
        match self.cdn.progress(&record.distribution, id).await {
            Ok(Progress::Completed) => {
                let took = now - record.submitted_at.unwrap_or(now);
                self.table
                    .end_publish(
                        record,
                        PublishState::Completed,
                        &format!("invalidation {id} completed in about {took} s"),
                        now,
                    )
                    .await?;
                *in_progress = InProgress {
                    files: in_progress
                        .files
                        .saturating_sub(record.invalidation_paths.iter().filter(|p| !p.ends_with('*')).count()),
                    wildcards: in_progress
                        .wildcards
                        .saturating_sub(record.invalidation_paths.iter().filter(|p| p.ends_with('*')).count()),
                };
                tracing::info!(site = %site.name, publish = %record.id, invalidation = %id, took, "invalidation completed");
            }
            Ok(Progress::InProgress) if overdue => {
                self.table.record_alert(&slow_alert(site, record, id, now)).await?;
            }
            Ok(Progress::InProgress) => {}
            Err(err @ (CdnError::NotFound { .. } | CdnError::Denied { .. })) => {
                self.table.end_publish(record, PublishState::Failed, &err.to_string(), now).await?;
                self.table.record_alert(&failed_alert(site, record, &err.to_string(), now)).await?;
            }
            Err(err) => return Err(err.into()),
        }
        Ok(())
    }
}

/// Paths in a month from which Conveyor warns that the free 1,000 are near.
const NEAR_FREE_PATHS: i64 = FREE_PATHS_PER_MONTH * 9 / 10;

fn near_free_alert(site: &Site, month: &str, total: i64, now: i64) -> Alert {
    Alert::new(AlertSource::Cdn, format!("near-free-paths-{month}"), AlertKind::InvalidationPathsOverFree, Severity::Info, now)
        .summary(format!("CloudFront invalidation paths for {month} are at {total} of the free {FREE_PATHS_PER_MONTH}"))
        .cause(format!("a publish of site {} brought this month's paths to {total}", site.name))
        .impact("past 1,000 paths this month, CloudFront bills each path (per account)")
        .action("lower the site's invalidation_budget so large publishes invalidate `/*` (one path), or publish less often this month")
        .label("site", site.name.clone())
        .label("month", month)
}

fn over_free_alert(site: &Site, month: &str, total: i64, now: i64) -> Alert {
    Alert::new(AlertSource::Cdn, format!("free-paths-{month}"), AlertKind::InvalidationPathsOverFree, Severity::Warning, now)
        .summary(format!("CloudFront invalidation paths for {month} pass the free {FREE_PATHS_PER_MONTH}"))
        .cause(format!("a publish of site {} brings this month's paths to {total}", site.name))
        .impact("each path over 1,000 this month is billed by CloudFront (per account)")
        .action("lower the site's invalidation_budget so large publishes invalidate `/*` (one path), or fingerprint assets so they never need invalidating")
        .label("site", site.name.clone())
        .label("month", month)
}

fn slow_alert(site: &Site, record: &PublishRecord, id: &str, now: i64) -> Alert {
    Alert::new(
        AlertSource::Cdn,
        format!("{}-{}-slow", site.name, record.id),
        AlertKind::InvalidationSlow,
        Severity::Warning,
        now,
    )
    .summary(format!("The invalidation of site {}'s publish is still in progress", site.name))
    .cause(format!(
        "invalidation {id} on distribution {} has run over {} s",
        record.distribution, site.invalidation_alert_after.0
    ))
    .impact("some viewers may still get the previous version of the changed files")
    .action("check the invalidation in the CloudFront console; it usually completes within minutes")
    .label("site", site.name.clone())
    .label("publish", record.id.clone())
    .label("distribution", record.distribution.clone())
}

fn failed_alert(site: &Site, record: &PublishRecord, cause: &str, now: i64) -> Alert {
    Alert::new(
        AlertSource::Cdn,
        format!("{}-{}-failed", site.name, record.id),
        AlertKind::InvalidationFailed,
        Severity::Critical,
        now,
    )
    .summary(format!("The invalidation of site {}'s publish failed", site.name))
    .cause(cause)
    .impact("viewers may keep getting the previous version of the changed files until their cache time runs out")
    .action(format!("check that distribution {} exists and serves the site, then publish again", record.distribution))
    .label("site", site.name.clone())
    .label("publish", record.id.clone())
    .label("distribution", record.distribution.clone())
}

impl Function for CdnInvalidate {
    fn registration(&self) -> &'static Registration {
        &REGISTRATION
    }
}

impl StreamFunction for CdnInvalidate {
    fn handle_record<'a>(&'a self, record: &'a StreamRecord) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let (Some(site_name), Some(id)) = (new_text(record, "site"), new_text(record, "id")) else { return Ok(()) };
            let Some(site) = self.config.site(site_name) else {
                tracing::warn!(site = %site_name, "a publish of a site not in conveyor.toml");
                return Ok(());
            };
            let now = conveyor_shared::unix_now();
            let work = async {
                // Read again: the image may be older than the record (the tick moves it too).
                let Some(publish) = self.table.publish(&site.name, id).await? else { return Ok(()) };
                // What is in progress on the distribution, whichever site it serves.
                let mut in_progress = InProgress::default();
                for sharing in self.config.sites.iter().filter(|s| s.distribution == site.distribution) {
                    for running in self.table.publishes_in(&sharing.name, &[PublishState::Invalidating]).await? {
                        in_progress.add(&running.invalidation_paths);
                    }
                }
                self.advance(site, publish, &mut in_progress, now).await
            };
            work.await.map_err(|err: CdnFailure| err.to_string())
        })
    }
}

impl ScheduledFunction for CdnInvalidate {
    fn every(&self) -> Duration {
        self.every
    }

    fn tick<'a>(&'a self, _event: &'a ScheduledEvent) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move { CdnInvalidate::tick(self, conveyor_shared::unix_now()).await.map_err(|e| e.to_string()) })
    }
}
