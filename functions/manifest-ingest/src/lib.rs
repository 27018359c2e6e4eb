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

use conveyor_shared::SdkConfig;
use conveyor_shared::auth::Tokens;
use conveyor_shared::config::{Config, LoadError, Provider, Settings};
use conveyor_shared::domain::packer::ImageState;
use conveyor_shared::domain::packer::{self, Change};
use conveyor_shared::ec2::Ec2;
use conveyor_shared::http::{self, BoxFuture, HttpFunction, Request, Response, Route, Routed, StatusCode};
use conveyor_shared::provider_images::{Applied, apply_run, sync_launch_templates};
use conveyor_shared::registration::{Auth, Function, Registration};
use conveyor_shared::store::Table;
use conveyor_shared::token::Scope;
use serde_json::json;

const UPLOAD: Route = Route::new("POST", "/providers/{provider}/manifests", Auth::Function);
const IMAGES: Route = Route::new("GET", "/providers/{provider}/images", Auth::Function);

/// Both routes take a provider token (`Authorization: Bearer`), checked by the function.
pub const REGISTRATION: Registration = Registration {
    name: "manifest-ingest",
    routes: &[UPLOAD, IMAGES],
    stream_filters: &[],
    schedule: None,
    permissions: &[
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:Query",
        "ec2:DescribeImages",
        "ec2:DescribeLaunchTemplateVersions",
        "ec2:CreateLaunchTemplateVersion",
        "ec2:ModifyLaunchTemplate",
    ],
};

/// Manifests are small (appended runs grow them slowly); anything larger is refused.
pub const MAX_BODY_BYTES: usize = 5 * 1024 * 1024;
#[derive(Clone)]
pub struct ManifestIngest {
    table: Table,
    ec2: Ec2,
    config: Arc<Config>,
    /// Provider tokens, read on every upload: a revoked token stops working at once.
    tokens: Tokens,
}

impl ManifestIngest {
    pub fn new(table: Table, ec2: Ec2, config: Arc<Config>) -> Self {
        Self { tokens: Tokens::uncached(table.clone()), table, ec2, config }
    }

    pub fn from_settings(settings: &Settings, sdk: &SdkConfig) -> Result<Self, LoadError> {
        let config = Config::load(&settings.config_path)?;
        let table = Table::from_sdk(sdk, settings.table.clone());
        Ok(Self::new(table, Ec2::new(sdk), Arc::new(config)))
    }

    /// The provider, when the request carries a token for it.
    async fn authorize(&self, request: &Request, provider: &str) -> Result<&Provider, Response> {
        let now = conveyor_shared::unix_now();
        let scope = self.tokens.scope(request, now).await.map_err(|err| http::problem(&err))?;
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

    async fn upload(&self, request: &Request, provider: &str) -> Response {
        if request.body().len() > MAX_BODY_BYTES {
            return http::error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "a manifest may be at most 5 MB");
        }
        let provider = match self.authorize(request, provider).await {
            Ok(provider) => provider,
            Err(response) => return response,
        };
        let verify = match http::query_param(request, "verify").as_deref() {
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
            Err(err) => return http::problem(&err),
        };
        // A provider that names its image owners has every upload checked, asked or not: a
        // leaked token must not point the launch templates at someone else's image.
        if verify || !provider.image_owners.is_empty() {
            match self.ec2.unavailable_images(&run.amis(), &provider.image_owners).await {
                Ok(problems) if problems.is_empty() => {}
                Ok(problems) => {
                    return http::error(StatusCode::UNPROCESSABLE_ENTITY, "image_unavailable", problems.join("; "));
                }
                Err(err) => return http::problem(&err),
            }
        }
        let now = conveyor_shared::unix_now();
        let applied = match apply_run(&self.table, &provider.name, &run, now).await {
            Ok(applied) => applied,
            Err(err) => return http::problem(&err),
        };
        // Templates follow the current images, also on a repeated upload: that is how a
        // template update that failed before is retried.
        let current = match self.table.provider_images(&provider.name).await {
            Ok(state) => state.map(|s: ImageState| s.images).unwrap_or_default(),
            Err(err) => return http::problem(&err),
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

    async fn images(&self, request: &Request, provider: &str) -> Response {
        let provider = match self.authorize(request, provider).await {
            Ok(provider) => provider,
            Err(response) => return response,
        };
        let state = match self.table.provider_images(&provider.name).await {
            Ok(state) => state,
            Err(err) => return http::problem(&err),
        };
        let history = match self.table.image_history(&provider.name, 10).await {
            Ok(history) => history,
            Err(err) => return http::problem(&err),
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

impl Function for ManifestIngest {
    fn registration(&self) -> &'static Registration {
        &REGISTRATION
    }
}

impl HttpFunction for ManifestIngest {
    fn handle(&self, routed: Routed) -> BoxFuture<'_, Response> {
        Box::pin(async move {
            match *routed.route {
                UPLOAD => self.upload(&routed.request, routed.param("provider")).await,
                IMAGES => self.images(&routed.request, routed.param("provider")).await,
                _ => http::unhandled(&routed),
            }
        })
    }
}
