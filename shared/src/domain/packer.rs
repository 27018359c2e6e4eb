//! Packer manifests (the `manifest` post-processor's `manifest.json`): which images the last
//! run built, per region, and how they change a provider's image map.
//!
//! Runs are appended to the same file, so only builds of `last_run_uuid` count, and of those
//! the last entry per build name. Artifact ids by builder:
//! - `amazon-ebs` (and the other `amazon-*` builders): `region:ami-id[,region:ami-id...]`
//! - `digitalocean`: `region[,region...]:snapshot-id` (split on the last colon)
//! - `googlecompute`: the image name (global: region `global`)
//! - `azure-arm`: a managed image or disk resource id, or a VHD URI (region `global`)

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize)]
pub struct Manifest {
    #[serde(default)]
    pub builds: Vec<Build>,
    pub last_run_uuid: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Build {
    pub name: String,
    pub builder_type: String,
    pub build_time: Option<i64>,
    pub artifact_id: String,
    pub packer_run_uuid: Option<String>,
}

/// A provider's images: region to image id.
pub type ImageMap = BTreeMap<String, String>;

/// One region's change; `new` is `None` when a rollback removes the region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub old: Option<String>,
    pub new: Option<String>,
}

/// Why a manifest cannot be applied. `Invalid` is a 400 (not a manifest at all); the rest
/// are 422 and name the offending build.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("the body is not a Packer manifest: {0}")]
    Invalid(String),
    #[error("the manifest has no last_run_uuid, or no build of that run")]
    NoBuilds,
    #[error(
        "build `{build}`: builder `{builder}` is not supported (amazon-ebs, digitalocean, googlecompute, azure-arm)"
    )]
    UnknownBuilder { build: String, builder: String },
    #[error("build `{build}`: {reason}")]
    Malformed { build: String, reason: String },
    #[error("builds `{first}` and `{second}` both produce an image for region `{region}`")]
    RegionConflict { region: String, first: String, second: String },
    #[error("the run names images in {count} regions; a provider has at most {MAX_REGIONS}")]
    TooManyRegions { count: usize },
}

/// The most regions a provider's image map holds: every cloud has far fewer, and the map
/// (three times over, in its history entry) must stay one small item.
pub const MAX_REGIONS: usize = 100;

/// What the last run of a manifest publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunImages {
    pub run_uuid: String,
    /// Region to (image id, build name, builder type).
    pub images: BTreeMap<String, (String, String, String)>,
}

impl RunImages {
    pub fn image_map(&self) -> ImageMap {
        self.images.iter().map(|(region, (id, _, _))| (region.clone(), id.clone())).collect()
    }

    /// AMIs by region, for the EC2 checks.
    pub fn amis(&self) -> BTreeMap<String, String> {
        self.images
            .iter()
            .filter(|(_, (_, _, builder))| builder.starts_with("amazon-"))
            .map(|(region, (id, _, _))| (region.clone(), id.clone()))
            .collect()
    }
}

/// Parses a manifest and takes the images of its last run.
pub fn last_run(body: &[u8]) -> Result<RunImages, ManifestError> {
    let manifest: Manifest = serde_json::from_slice(body).map_err(|e| ManifestError::Invalid(e.to_string()))?;
    let run = manifest.last_run_uuid.filter(|u| !u.is_empty()).ok_or(ManifestError::NoBuilds)?;
    // Per build name, the last entry of the run wins.
    let mut latest: Vec<&Build> = Vec::new();
    for build in manifest.builds.iter().filter(|b| b.packer_run_uuid.as_deref() == Some(run.as_str())) {
        latest.retain(|b| b.name != build.name);
        latest.push(build);
    }
    if latest.is_empty() {
        return Err(ManifestError::NoBuilds);
    }
    let mut images: BTreeMap<String, (String, String, String)> = BTreeMap::new();
    for build in latest {
        for (region, id) in artifact_images(build)? {
            if let Some((_, first, _)) = images.get(&region) {
                return Err(ManifestError::RegionConflict { region, first: first.clone(), second: build.name.clone() });
            }
            images.insert(region, (id, build.name.clone(), build.builder_type.clone()));
            if images.len() > MAX_REGIONS {
                return Err(ManifestError::TooManyRegions { count: images.len() });
            }
        }
    }
    Ok(RunImages { run_uuid: run, images })
}

fn malformed(build: &Build, reason: impl Into<String>) -> ManifestError {
    ManifestError::Malformed { build: build.name.clone(), reason: reason.into() }
}

/// The (region, image id) pairs of one build's `artifact_id`.
pub fn artifact_images(build: &Build) -> Result<Vec<(String, String)>, ManifestError> {
    let id = build.artifact_id.trim();
    match build.builder_type.as_str() {
        "amazon-ebs" | "amazon-ebssurrogate" | "amazon-chroot" | "amazon-instance" => id
            .split(',')
            .map(|pair| {
                let (region, ami) = pair
                    .trim()
                    .split_once(':')
                    .ok_or_else(|| malformed(build, format!("`{pair}` is not region:ami-id")))?;
                if !aws_region(region) {
                    return Err(malformed(build, format!("`{region}` is not an AWS region")));
                }
                let hex = ami.strip_prefix("ami-").unwrap_or("");
                if !(8..=17).contains(&hex.len()) || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(malformed(build, format!("`{ami}` is not an AMI id")));
                }
                Ok((region.to_owned(), ami.to_owned()))
            })
            .collect(),
        "digitalocean" => {
            let (regions, snapshot) =
                id.rsplit_once(':').ok_or_else(|| malformed(build, format!("`{id}` is not regions:snapshot-id")))?;
            if snapshot.is_empty() || !snapshot.bytes().all(|b| b.is_ascii_digit()) {
                return Err(malformed(build, format!("`{snapshot}` is not a snapshot id")));
            }
            regions
                .split(',')
                .map(|region| {
                    let region = region.trim();
                    let ok = (2..=8).contains(&region.len())
                        && region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
                    if ok {
                        Ok((region.to_owned(), snapshot.to_owned()))
                    } else {
                        Err(malformed(build, format!("`{region}` is not a DigitalOcean region")))
                    }
                })
                .collect()
        }
        "googlecompute" => {
            let ok = (1..=63).contains(&id.len())
                && id.starts_with(|c: char| c.is_ascii_lowercase())
                && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !id.ends_with('-');
            if ok {
                Ok(vec![("global".into(), id.to_owned())])
            } else {
                Err(malformed(build, format!("`{id}` is not a Compute Engine image name")))
            }
        }
        "azure-arm" => {
            let resource_id =
                id.starts_with("/subscriptions/") && id.to_ascii_lowercase().contains("/providers/microsoft.compute/");
            let vhd = id.starts_with("https://") && id.to_ascii_lowercase().ends_with(".vhd");
            if resource_id || vhd {
                Ok(vec![("global".into(), id.to_owned())])
            } else {
                Err(malformed(build, format!("`{id}` is neither an Azure resource id nor a VHD URI")))
            }
        }
        other => Err(ManifestError::UnknownBuilder { build: build.name.clone(), builder: other.to_owned() }),
    }
}

/// `us-east-1`, `eu-central-2`, `us-gov-west-1`, `ap-southeast-4`, ...
fn aws_region(region: &str) -> bool {
    let parts: Vec<&str> = region.split('-').collect();
    parts.len() >= 3
        && parts[0].len() == 2
        && parts[..parts.len() - 1].iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
        && parts.last().is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The map after `run` is applied to `current`: the run's regions replaced, others kept.
pub fn merge(current: &ImageMap, run: &ImageMap) -> ImageMap {
    let mut next = current.clone();
    next.extend(run.iter().map(|(k, v)| (k.clone(), v.clone())));
    next
}

/// The regions a launch template follows that `current` has an image for and `target` has
/// not: moving to `target` would leave those templates on an image the ledger no longer
/// names.
pub fn regions_dropped<'a>(
    current: &ImageMap,
    target: &ImageMap,
    template_regions: impl IntoIterator<Item = &'a str>,
) -> Vec<String> {
    let mut dropped: Vec<String> = template_regions
        .into_iter()
        .filter(|region| current.contains_key(*region) && !target.contains_key(*region))
        .map(str::to_owned)
        .collect();
    dropped.sort();
    dropped.dedup();
    dropped
}

/// The regions whose image differs between `old` and `new`.
pub fn diff(old: &ImageMap, new: &ImageMap) -> BTreeMap<String, Change> {
    old.keys()
        .chain(new.keys())
        .filter(|region| old.get(*region) != new.get(*region))
        .map(|region| (region.clone(), Change { old: old.get(region).cloned(), new: new.get(region).cloned() }))
        .collect()
}

/// A provider's current images.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageState {
    pub provider: String,
    pub images: ImageMap,
    /// Starts at 1 and grows by one with every change: the optimistic lock.
    pub version: i64,
    pub run_uuid: Option<String>,
    pub updated_at: i64,
}

/// One change of a provider's images, kept so that a bad image can be rolled back.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageChange {
    pub provider: String,
    pub version: i64,
    /// `manifest` or `rollback`.
    pub kind: String,
    /// For a rollback: the version whose images it restored.
    pub restored: Option<i64>,
    pub run_uuid: Option<String>,
    pub previous: ImageMap,
    pub images: ImageMap,
    pub changes: std::collections::BTreeMap<String, Change>,
    pub at: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Problem;

    #[test]
    fn a_rollback_may_not_drop_a_region_a_launch_template_follows() {
        let map = |pairs: &[(&str, &str)]| -> ImageMap {
            pairs.iter().map(|(r, a)| (r.to_string(), a.to_string())).collect()
        };
        let current = map(&[("us-east-1", "ami-2"), ("eu-west-1", "ami-3")]);
        let older = map(&[("eu-west-1", "ami-1")]);
        assert_eq!(regions_dropped(&current, &older, ["us-east-1", "us-east-1"]), ["us-east-1"]);
        assert!(regions_dropped(&current, &older, ["eu-west-1"]).is_empty());
        assert!(regions_dropped(&older, &current, ["us-east-1"]).is_empty(), "adding a region drops nothing");
    }
    use serde_json::json;

    fn manifest(builds: serde_json::Value, last: &str) -> Vec<u8> {
        json!({"builds": builds, "last_run_uuid": last}).to_string().into_bytes()
    }

    fn build(name: &str, builder: &str, artifact: &str, run: &str) -> serde_json::Value {
        json!({"name": name, "builder_type": builder, "build_time": 1724274325, "files": null,
               "artifact_id": artifact, "packer_run_uuid": run, "custom_data": null})
    }

    #[test]
    fn the_reference_example() {
        let body = br#"{"builds":[{"name":"ubuntu","builder_type":"amazon-ebs","build_time":1724274325,
          "files":null,"artifact_id":"us-west-2:ami-0aee8bac10830769b",
          "packer_run_uuid":"89e6893a-0000","custom_data":null}],
         "last_run_uuid":"89e6893a-0000"}"#;
        let run = last_run(body).unwrap();
        assert_eq!(run.image_map(), ImageMap::from([("us-west-2".into(), "ami-0aee8bac10830769b".into())]));
    }

    #[test]
    fn multi_region_amis_and_appended_runs() {
        let body = manifest(
            json!([
                build("ubuntu", "amazon-ebs", "us-east-1:ami-11111111", "run-1"),
                build("ubuntu", "amazon-ebs", "eu-west-1:ami-22222222,us-east-1:ami-33333333", "run-2"),
                build("ubuntu", "amazon-ebs", "eu-west-1:ami-44444444,us-east-1:ami-55555555", "run-2"),
            ]),
            "run-2",
        );
        let run = last_run(&body).unwrap();
        assert_eq!(run.run_uuid, "run-2");
        assert_eq!(
            run.image_map(),
            ImageMap::from([("eu-west-1".into(), "ami-44444444".into()), ("us-east-1".into(), "ami-55555555".into())])
        );
    }

    #[test]
    fn digitalocean_splits_on_the_last_colon() {
        let body = manifest(json!([build("web", "digitalocean", "nyc3,ams3,sfo3:155234567", "r")]), "r");
        let map = last_run(&body).unwrap().image_map();
        assert_eq!(map.len(), 3);
        assert_eq!(map["ams3"], "155234567");
    }

    #[test]
    fn google_and_azure_are_global() {
        let body = manifest(json!([build("g", "googlecompute", "shop-web-1724274325", "r")]), "r");
        assert_eq!(last_run(&body).unwrap().image_map()["global"], "shop-web-1724274325");
        let azure = "/subscriptions/0000/resourceGroups/images/providers/Microsoft.Compute/images/shop-web";
        let body = manifest(json!([build("a", "azure-arm", azure, "r")]), "r");
        assert_eq!(last_run(&body).unwrap().image_map()["global"], azure);
        let vhd = "https://store.blob.core.windows.net/system/Microsoft.Compute/Images/images/shop-osDisk.vhd";
        assert!(last_run(&manifest(json!([build("a", "azure-arm", vhd, "r")]), "r")).is_ok());
    }

    #[test]
    fn rejections_name_the_build() {
        let check = |b: serde_json::Value| last_run(&manifest(json!([b]), "r")).unwrap_err();
        let err = check(build("vbox", "virtualbox-iso", "x", "r"));
        assert_eq!((err.status().as_u16(), err.code()), (422, "unknown_builder"));
        assert!(err.to_string().contains("vbox"));
        assert_eq!(check(build("u", "amazon-ebs", "us-east-1:ami-xyz", "r")).code(), "malformed_artifact");
        let err = check(build("u", "amazon-ebs", "moon-base:ami-11111111", "r"));
        assert!(err.to_string().contains("moon-base"), "{err}");
        assert_eq!(check(build("u", "amazon-ebs", "ami-11111111", "r")).code(), "malformed_artifact");
        assert_eq!(check(build("d", "digitalocean", "nyc3:abc", "r")).code(), "malformed_artifact");
        assert_eq!(check(build("g", "googlecompute", "Bad_Name", "r")).code(), "malformed_artifact");
        assert_eq!(check(build("z", "azure-arm", "not-an-id", "r")).code(), "malformed_artifact");
        let two = manifest(
            json!([
                build("a", "amazon-ebs", "us-east-1:ami-11111111", "r"),
                build("b", "amazon-ebs", "us-east-1:ami-22222222", "r")
            ]),
            "r",
        );
        assert_eq!(last_run(&two).unwrap_err().code(), "region_conflict");
        assert_eq!(
            last_run(&manifest(json!([build("a", "amazon-ebs", "us-east-1:ami-11111111", "old")]), "new")).unwrap_err(),
            ManifestError::NoBuilds
        );
        assert_eq!(last_run(b"nope").unwrap_err().status(), 400);
    }

    #[test]
    fn merge_and_diff() {
        let old = ImageMap::from([("a".into(), "1".into()), ("b".into(), "2".into())]);
        let run = ImageMap::from([("b".into(), "3".into()), ("c".into(), "4".into())]);
        let next = merge(&old, &run);
        assert_eq!(next.len(), 3);
        let changes = diff(&old, &next);
        assert_eq!(changes.len(), 2);
        assert_eq!(changes["b"], Change { old: Some("2".into()), new: Some("3".into()) });
        assert_eq!(changes["c"].old, None);
        assert!(diff(&next, &next).is_empty());
        assert_eq!(diff(&next, &old)["c"], Change { old: Some("4".into()), new: None }, "a removed region");
    }
}
