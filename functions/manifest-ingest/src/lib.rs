//! Packer manifest ingest: `POST /providers/{provider}/manifests` takes a `manifest.json` as
//! Packer's manifest post-processor writes it (sent with `curl --data-binary`), and
//! `GET /providers/{provider}/images` answers the provider's current images and history.
//!
//! An upload is checked whole before anything changes: token, manifest, every build's
//! artifact id, and (with `?verify=true`) every AMI's state in EC2. Then the provider's image
//! map, a history entry and the run marker are written in one transaction under an optimistic
//! version, retried when a concurrent upload won the race. Launch templates configured for
//! the provider follow the new images.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use conveyor_shared::SdkConfig;
use conveyor_shared::config::{Config, LoadError, Provider, Settings};
use conveyor_shared::domain::packer::{self, Change, ImageMap, RunImages};
use conveyor_shared::ec2::{Ec2, TemplateUpdate};
use conveyor_shared::http::{self, BoxFuture, HttpFunction, Method, Request, Response, Route, StatusCode};
use conveyor_shared::store::{Backoff, ImageChange, ImageState, ImageWrite, StoreError, Table};
use conveyor_shared::token::{self, Scope};
use serde_json::json;

pub const ROUTES: &[Route] = &[
    Route { method: "POST", path: "/providers/{provider}/manifests" },
    Route { method: "GET", path: "/providers/{provider}/images" },
];

/// Manifests are small (appended runs grow them slowly); anything larger is refused.
pub const MAX_BODY_BYTES: usize = 5 * 1024 * 1024;
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

#[derive(Clone)]
pub struct ManifestIngest {
    table: Table,
    ec2: Ec2,
    config: Arc<Config>,
}

impl ManifestIngest {
    pub fn new(table: Table, ec2: Ec2, config: Arc<Config>) -> Self {
        Self { table, ec2, config }
    }

    pub fn from_settings(settings: &Settings, sdk: &SdkConfig) -> Result<Self, LoadError> {
        let config = Config::load(&settings.config_path)?;
        let table = Table::new(aws_sdk_dynamodb::Client::new(sdk), settings.table.clone());
        Ok(Self::new(table, Ec2::new(sdk), Arc::new(config)))
    }

    /// The provider, when the request carries a token for it.
    async fn authorize(&self, request: &Request, provider: &str) -> Result<&Provider, Response> {
        let Some(presented) = token::bearer(http::header(request, "authorization")) else {
            return Err(http::error(StatusCode::UNAUTHORIZED, "missing_token", "send Authorization: Bearer <token>"));
        };
        let now = conveyor_shared::unix_now();
        let scope = match self.table.token_grant(&token::hash(presented.as_bytes()), now).await {
            Ok(Some(grant)) => grant.scope,
            Ok(None) => {
                return Err(http::error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_token",
                    "the token is not known (revoked, expired, or never created)",
                ));
            }
            Err(err) => return Err(store_failure(&err)),
        };
        let Some(found) = self.config.provider(provider) else {
            return Err(http::error(
                StatusCode::NOT_FOUND,
                "unknown_provider",
                format!("no provider `{provider}` in conveyor.toml"),
            ));
        };
        if scope != Scope::Provider(provider.to_owned()).as_string() {
            return Err(http::error(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("the token is not for provider `{provider}`"),
            ));
        }
        Ok(found)
    }

    async fn upload(&self, request: Request, provider: &str) -> Response {
        if request.body().len() > MAX_BODY_BYTES {
            return http::error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "a manifest may be at most 5 MB");
        }
        let provider = match self.authorize(&request, provider).await {
            Ok(provider) => provider,
            Err(response) => return response,
        };
        let verify = match http::query_param(&request, "verify").as_deref() {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return http::error(
                    StatusCode::BAD_REQUEST,
                    "invalid_parameter",
                    format!("verify must be true or false, not `{other}`"),
                );
            }
        };
        let run = match packer::last_run(request.body()) {
            Ok(run) => run,
            Err(err) => {
                let status = StatusCode::from_u16(err.status()).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY);
                return http::error(status, err.code(), err);
            }
        };
        // A provider that names its image owners has every upload checked, asked or not: a
        // leaked token must not point the launch templates at someone else's image.
        if verify || !provider.image_owners.is_empty() {
            match self.ec2.unavailable_images(&run.amis(), &provider.image_owners).await {
                Ok(problems) if problems.is_empty() => {}
                Ok(problems) => {
                    return http::error(StatusCode::UNPROCESSABLE_ENTITY, "image_unavailable", problems.join("; "));
                }
                Err(err) => {
                    tracing::error!(error = %err, "cannot verify the manifest's images");
                    return http::error(StatusCode::BAD_GATEWAY, "ec2_unavailable", err.public());
                }
            }
        }
        let now = conveyor_shared::unix_now();
        let applied = match apply_run(&self.table, &provider.name, &run, now).await {
            Ok(applied) => applied,
            Err(ImagesError::Store(err)) => return store_failure(&err),
            Err(err) => return http::error(StatusCode::SERVICE_UNAVAILABLE, "contended", err),
        };
        // Templates follow the current images, also on a repeated upload: that is how a
        // template update that failed before is retried.
        let current = match self.table.provider_images(&provider.name).await {
            Ok(state) => state.map(|s: ImageState| s.images).unwrap_or_default(),
            Err(err) => return store_failure(&err),
        };
        let (templates, templates_ok) = sync_launch_templates(&self.ec2, provider, &current).await;
        let mut body = match &applied {
            Applied::Changed(change) => {
                tracing::info!(provider = %provider.name, run = %run.run_uuid, version = change.version, "images updated");
                json!({"provider": provider.name, "run": run.run_uuid, "version": change.version, "changed": change.changes})
            }
            Applied::NoOp { reason } => {
                json!({"provider": provider.name, "run": run.run_uuid, "changed": BTreeMap::<String, Change>::new(), "unchanged": reason})
            }
        };
        if !provider.launch_templates.is_empty() {
            body["launch_templates"] = templates.into();
        }
        if !templates_ok {
            body["error"] = json!({
                "code": "launch_template_failed",
                "message": "the images were updated but a launch template was not; upload the same manifest again to retry",
            });
            return http::json(StatusCode::BAD_GATEWAY, &body);
        }
        http::json(StatusCode::OK, &body)
    }

    async fn images(&self, request: Request, provider: &str) -> Response {
        let provider = match self.authorize(&request, provider).await {
            Ok(provider) => provider,
            Err(response) => return response,
        };
        let state = match self.table.provider_images(&provider.name).await {
            Ok(state) => state,
            Err(err) => return store_failure(&err),
        };
        let history = match self.table.image_history(&provider.name, 10).await {
            Ok(history) => history,
            Err(err) => return store_failure(&err),
        };
        let history: Vec<_> = history
            .iter()
            .map(|c| json!({"version": c.version, "kind": c.kind, "run": c.run_uuid, "at": c.at, "changed": c.changes}))
            .collect();
        http::json(
            StatusCode::OK,
            &json!({
                "provider": provider.name,
                "version": state.as_ref().map_or(0, |s| s.version),
                "run": state.as_ref().and_then(|s| s.run_uuid.clone()),
                "images": state.map(|s| s.images).unwrap_or_default(),
                "history": history,
            }),
        )
    }
}

impl HttpFunction for ManifestIngest {
    fn name(&self) -> &'static str {
        "manifest-ingest"
    }

    fn routes(&self) -> &'static [Route] {
        ROUTES
    }

    fn handle(&self, request: Request) -> BoxFuture<'_, Response> {
        Box::pin(async move {
            let path = request.uri().path().to_owned();
            let param = |template: &str| {
                http::match_path(template, &path).and_then(|params| params.into_iter().next()).map(|(_, v)| v)
            };
            match *request.method() {
                Method::POST => {
                    if let Some(provider) = param("/providers/{provider}/manifests") {
                        return self.upload(request, &provider).await;
                    }
                }
                Method::GET => {
                    if let Some(provider) = param("/providers/{provider}/images") {
                        return self.images(request, &provider).await;
                    }
                }
                _ => {}
            }
            http::error(StatusCode::NOT_FOUND, "not_found", format!("no route for {} {path}", request.method()))
        })
    }
}

fn store_failure(err: &StoreError) -> Response {
    http::unavailable(err, "the ledger could not be read or written; nothing changed, retry")
}
