//! A provider's machine images as use cases over the table and EC2: apply a Packer run,
//! roll back to an earlier version, and point launch templates at the current images. The
//! manifest-ingest function and `conveyor images rollback` both run these.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;

use crate::config::Provider;
use crate::domain::packer::{self, ImageChange, ImageMap, RunImages};
use crate::ec2::{Ec2, TemplateUpdate};
use crate::store::{Backoff, ImageWrite, StoreError, Table};

/// Optimistic writes tried before giving up under contention.
const MAX_ATTEMPTS: u32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum ImagesError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the images of provider {0} kept changing during {MAX_ATTEMPTS} attempts; retry")]
    Contended(String),
    #[error("provider {provider} has {problem}")]
    NothingToRollBack { provider: String, problem: String },
    #[error(
        "rolling provider {provider} back to version {version} would leave its launch templates in {} without an image (that version has none there): roll back to a version that has one (--to), or remove those templates from conveyor.toml first",
        regions.join(", ")
    )]
    WouldDropRegions { provider: String, version: i64, regions: Vec<String> },
    #[error(transparent)]
    Manifest(#[from] packer::ManifestError),
}

/// What an upload did to the image map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Changed(ImageChange),
    /// The run was applied before, or changes nothing.
    NoOp {
        reason: String,
    },
}

/// Applies the last run of a manifest to `provider`'s images. Idempotent per run.
pub async fn apply_run(table: &Table, provider: &str, run: &RunImages, now: i64) -> Result<Applied, ImagesError> {
    let already = || Applied::NoOp { reason: format!("run {} was applied before", run.run_uuid) };
    for attempt in 0..MAX_ATTEMPTS {
        if table.run_applied(provider, &run.run_uuid).await? {
            return Ok(already());
        }
        let (current, version) = current_images(table, provider).await?;
        let next = packer::merge(&current, &run.image_map());
        if next.len() > packer::MAX_REGIONS {
            return Err(ImagesError::Manifest(packer::ManifestError::TooManyRegions { count: next.len() }));
        }
        let changes = packer::diff(&current, &next);
        if changes.is_empty() {
            return Ok(Applied::NoOp { reason: "every image is current already".into() });
        }
        let change = ImageChange {
            provider: provider.to_owned(),
            version: version + 1,
            kind: "manifest".into(),
            restored: None,
            run_uuid: Some(run.run_uuid.clone()),
            previous: current,
            images: next,
            changes,
            at: now,
        };
        match table.write_images(&change).await? {
            ImageWrite::Applied => return Ok(Applied::Changed(change)),
            // Verified by the read at the top of the loop: a cancelled transaction's reasons
            // are not trusted alone to decide that nothing needs writing.
            ImageWrite::RunAlreadyApplied | ImageWrite::Conflict => backoff(attempt).await,
        }
    }
    Err(ImagesError::Contended(provider.to_owned()))
}

/// Restores the images as they were before the newest change that is not already undone
/// (or as they were at `to`), as a new version. Successive rollbacks walk further back.
pub async fn rollback(
    table: &Table,
    provider: &Provider,
    to: Option<i64>,
    now: i64,
) -> Result<ImageChange, ImagesError> {
    let regions = provider.launch_templates.iter().map(|t| t.region.as_str());
    let provider = provider.name.as_str();
    let nothing =
        |problem: &str| ImagesError::NothingToRollBack { provider: provider.to_owned(), problem: problem.to_owned() };
    for attempt in 0..MAX_ATTEMPTS {
        let history = table.image_history(provider, 1000).await?;
        let by_version: BTreeMap<i64, &ImageChange> = history.iter().map(|c| (c.version, c)).collect();
        let newest = history.first().ok_or_else(|| nothing("no image history"))?;
        let target = match to {
            Some(version) => version,
            None => {
                // Skip over rollbacks to the change they restored, then go one before it.
                let mut undone = newest;
                while let Some(restored) = undone.restored {
                    undone = by_version.get(&restored).copied().ok_or_else(|| nothing("a broken history"))?;
                }
                undone.version - 1
            }
        };
        if target < 1 {
            return Err(nothing("no earlier version to roll back to"));
        }
        let images = by_version
            .get(&target)
            .map(|c| c.images.clone())
            .ok_or_else(|| nothing(&format!("no version {target} in its history")))?;
        let (current, version) = current_images(table, provider).await?;
        let dropped = packer::regions_dropped(&current, &images, regions.clone());
        if !dropped.is_empty() {
            return Err(ImagesError::WouldDropRegions {
                provider: provider.to_owned(),
                version: target,
                regions: dropped,
            });
        }
        let change = ImageChange {
            provider: provider.to_owned(),
            version: version + 1,
            kind: "rollback".into(),
            restored: Some(target),
            run_uuid: None,
            changes: packer::diff(&current, &images),
            previous: current,
            images,
            at: now,
        };
        match table.write_images(&change).await? {
            ImageWrite::Applied => return Ok(change),
            ImageWrite::Conflict | ImageWrite::RunAlreadyApplied => backoff(attempt).await,
        }
    }
    Err(ImagesError::Contended(provider.to_owned()))
}

async fn current_images(table: &Table, provider: &str) -> Result<(ImageMap, i64), StoreError> {
    Ok(table.provider_images(provider).await?.map(|s| (s.images, s.version)).unwrap_or_default())
}

async fn backoff(attempt: u32) {
    let policy = Backoff { first: Duration::from_millis(20), max: Duration::from_millis(500), attempts: MAX_ATTEMPTS };
    tokio::time::sleep(policy.delay(attempt + 1)).await;
}

/// Points each of the provider's launch templates at the image of its region. Returns one
/// JSON line per template, and whether all succeeded.
pub async fn sync_launch_templates(
    ec2: &Ec2,
    provider: &Provider,
    images: &ImageMap,
) -> (Vec<serde_json::Value>, bool) {
    let mut results = Vec::new();
    let mut all_ok = true;
    for target in &provider.launch_templates {
        let Some(ami) = images.get(&target.region) else {
            results
                .push(json!({"name": target.name, "region": target.region, "result": "no image for this region yet"}));
            continue;
        };
        match ec2.point_launch_template(&target.region, &target.name, ami).await {
            Ok(TemplateUpdate::NewDefault { version }) => {
                tracing::info!(template = %target.name, region = %target.region, %ami, version, "launch template updated");
                results.push(
                    json!({"name": target.name, "region": target.region, "image": ami, "default_version": version}),
                );
            }
            Ok(TemplateUpdate::Unchanged) => {
                results
                    .push(json!({"name": target.name, "region": target.region, "image": ami, "result": "unchanged"}));
            }
            Err(err) => {
                tracing::error!(template = %target.name, error = %err, "launch template not updated");
                all_ok = false;
                results.push(json!({"name": target.name, "region": target.region, "error": err.public()}));
            }
        }
    }
    (results, all_ok)
}
