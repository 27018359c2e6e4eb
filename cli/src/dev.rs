//! `conveyor dev`: every function's routes behind one local HTTP server, with the same paths
//! as the SAM template, against the local AWS emulator.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use conveyor_shared::SdkConfig;
use conveyor_shared::config::{
    Config, GITHUB_WEBHOOK_SECRET, LoadError, STRIPE_WEBHOOK_SECRET, SecretSource, Settings, SettingsError, StripeMode,
};
use conveyor_shared::ec2::Ec2;
use conveyor_shared::http::{self as api, HttpFunction, StatusCode};
use conveyor_shared::registration::Registration;
use conveyor_shared::secret::SecretSet;
use conveyor_shared::secrets::{KeyRing, SecretsError};
use conveyor_shared::store::{StoreError, Table};
use conveyor_shared::triggers::{ScheduledFunction, StreamFunction};

pub use crate::local_iam::FunctionSdks;
use crate::local_iam::{ACCOUNT, Resources, Template};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// The largest body the dev server reads; each function applies its own, smaller limit.
pub const MAX_REQUEST_BYTES: usize = 26 * 1024 * 1024;

/// The HTTP functions the dev server routes to.
pub type Functions = Arc<Vec<Arc<dyn HttpFunction>>>;

/// Every function of the project, by the trigger that runs it.
pub struct Catalog {
    pub http: Functions,
    pub streams: Vec<Arc<dyn StreamFunction>>,
    pub schedules: Vec<Arc<dyn ScheduledFunction>>,
}

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error(transparent)]
    Config(#[from] LoadError),
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Settings(SettingsError),
    #[error("cannot prepare the artifacts bucket: {0}")]
    Artifacts(String),
    #[error("cannot build an HTTP client: {0}")]
    Clients(String),
    #[error(transparent)]
    Sts(#[from] conveyor_shared::sts::StsError),
    #[error(
        "the AWS endpoint is not a local emulator ({0}): `conveyor dev` creates tables and must never touch a real AWS account; point AWS_ENDPOINT_URL (and any AWS_ENDPOINT_URL_<SERVICE>) at a loopback address"
    )]
    NotLocal(String),
    #[error(transparent)]
    Iam(#[from] crate::local_iam::IamError),
    #[error("cannot find secret {id} in the local emulator: {message}")]
    LocalSecret { id: String, message: String },
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
}

/// The webhook secrets of a local run. A function whose secret is not set is left out of
/// the dev server, with a warning that says what to set.
#[derive(Debug, Clone, Default)]
pub struct WebhookSecrets {
    pub github: Option<SecretSource>,
    pub stripe: Option<SecretSource>,
}

impl WebhookSecrets {
    pub fn from_env() -> Self {
        Self {
            github: SecretSource::from_env(GITHUB_WEBHOOK_SECRET).ok(),
            stripe: SecretSource::from_env(STRIPE_WEBHOOK_SECRET).ok(),
        }
    }
}

/// Every function, built the way its Lambda `main` builds it, sharing one table.
pub async fn functions(
    config: Config,
    settings: &Settings,
    webhook_secrets: &WebhookSecrets,
    timing: conveyor_shared::config::Timing,
    sdks: &FunctionSdks,
) -> Result<Catalog, DevError> {
    // Each function calls AWS as itself: locally, with its template role's session.
    let name = |registration: &Registration| registration.name;
    let sdk_of = |registration: &Registration| sdks.of(name(registration));
    let table_of = |registration: &Registration| Table::from_sdk(sdk_of(registration), settings.table.clone());
    let config = Arc::new(config);
    let mut http: Vec<Arc<dyn HttpFunction>> = Vec::new();
    match &webhook_secrets.github {
        Some(source) => http.push(Arc::new(webhook_intake::Intake::new(
            table_of(&webhook_intake::REGISTRATION),
            KeyRing::load(source, sdk_of(&webhook_intake::REGISTRATION)).await?,
            config.clone(),
            settings.artifacts_bucket.clone(),
        ))),
        None => tracing::warn!("webhook-intake is off: set {GITHUB_WEBHOOK_SECRET} to serve it"),
    }
    match &webhook_secrets.stripe {
        Some(source) => http.push(Arc::new(
            stripe_webhook::StripeWebhook::new(
                table_of(&stripe_webhook::REGISTRATION),
                KeyRing::load(source, sdk_of(&stripe_webhook::REGISTRATION)).await?,
                conveyor_shared::config::stripe_tolerance_from_env().map_err(DevError::Settings)?,
            )
            // The local emulator takes test-mode events unless told otherwise.
            .serving(StripeMode::from_env(StripeMode::Test).map_err(DevError::Settings)?),
        )),
        None => tracing::warn!("stripe-webhook is off: set {STRIPE_WEBHOOK_SECRET} to serve it"),
    }
    let manifests = &manifest_ingest::REGISTRATION;
    http.push(Arc::new(manifest_ingest::ManifestIngest::new(
        table_of(manifests),
        Ec2::new(sdk_of(manifests)),
        config.clone(),
    )));
    http.push(Arc::new(ledger_api::LedgerApi::new(
        table_of(&ledger_api::REGISTRATION),
        config.clone(),
        conveyor_shared::config::entitlement_grace_from_env().map_err(DevError::Settings)?,
    )));
    let tick = timing.tick;
    let fanout_sdk = sdk_of(&deploy_fanout::REGISTRATION);
    let fanout = Arc::new(
        deploy_fanout::Fanout::new(
            table_of(&deploy_fanout::REGISTRATION),
            Ec2::new(fanout_sdk),
            conveyor_shared::s3::Artifacts::new(fanout_sdk),
            config.clone(),
            timing,
        )
        .trusting_instance_profiles(conveyor_shared::sts::Sts::new(fanout_sdk)?, local_agent_roles()?),
    );
    http.push(fanout.clone());
    let cdn = Arc::new(
        cdn_invalidate::CdnInvalidate::new(
            table_of(&cdn_invalidate::REGISTRATION),
            conveyor_shared::cloudfront::Cdn::new(sdk_of(&cdn_invalidate::REGISTRATION)),
            config.clone(),
        )
        .every(tick),
    );
    let alerts_sdk = sdk_of(&alert_dispatch::REGISTRATION);
    let alerts = Arc::new(
        alert_dispatch::AlertDispatch::new(
            table_of(&alert_dispatch::REGISTRATION),
            conveyor_shared::probe::Prober::new().map_err(|e| DevError::Clients(e.to_string()))?,
            alert_dispatch::Channels::new(alerts_sdk).map_err(|e| DevError::Clients(e.to_string()))?,
            Ec2::new(alerts_sdk),
            config.clone(),
        )
        .every(tick),
    );
    let streams: Vec<Arc<dyn StreamFunction>> = vec![fanout.clone(), cdn.clone(), alerts.clone()];
    let schedules: Vec<Arc<dyn ScheduledFunction>> = vec![fanout, cdn, alerts];
    Ok(Catalog { http: Arc::new(http), streams, schedules })
}

/// Each function's session of a role made in the emulator from its policy in `template` (the
/// expanded SAM template), with the references resolved to this run's table, bucket, secrets
/// and `config`'s sites, launch templates and email sender; `sdk` is the administrator's.
pub async fn local_roles(
    template: &Template,
    config: &Config,
    settings: &Settings,
    webhook_secrets: &WebhookSecrets,
    sdk: &SdkConfig,
) -> Result<FunctionSdks, DevError> {
    let region = sdk.region().map_or_else(|| "us-east-1".to_owned(), |r| r.to_string());
    let mut resources = Resources::new(&region, &settings.table, &settings.artifacts_bucket).for_config(config);
    for (parameter, source) in
        [("GitHubWebhookSecretArn", &webhook_secrets.github), ("StripeWebhookSecretArn", &webhook_secrets.stripe)]
    {
        let arn = match source {
            Some(SecretSource::SecretsManager(id)) => secret_arn(id, sdk).await?,
            // A secret given inline is read from no service: an ARN that names nothing.
            _ => format!("arn:aws:secretsmanager:{region}:{ACCOUNT}:secret:{parameter}-unused"),
        };
        resources = resources.with(parameter, arn);
    }
    // A function the template does not deploy would call with the administrator's keys.
    let deployed = template.functions();
    if let Some(missing) = REGISTRATIONS.iter().find(|r| !deployed.iter().any(|name| name == r.name)) {
        return Err(crate::local_iam::IamError::Missing(format!("function {}", missing.name)).into());
    }
    Ok(crate::local_iam::function_roles(template, &resources, sdk).await?)
}

/// The full ARN (with Secrets Manager's suffix) of the secret named `id`.
async fn secret_arn(id: &str, sdk: &SdkConfig) -> Result<String, DevError> {
    let described = aws_sdk_secretsmanager::Client::new(sdk).describe_secret().secret_id(id).send().await;
    let failed = |message: String| DevError::LocalSecret { id: id.to_owned(), message };
    described
        .map_err(|e| failed(aws_sdk_secretsmanager::error::DisplayErrorContext(e).to_string()))?
        .arn()
        .map(str::to_owned)
        .ok_or_else(|| failed("described without an ARN".into()))
}

/// The role whose sessions the emulator's STS issues to local agents proving an instance
/// (`CONVEYOR_AGENT_ROLES` wins): the emulator's account and the template's role name.
pub const LOCAL_AGENT_ROLE: &str = "arn:aws:iam::123456789012:role/conveyor-agent";

fn local_agent_roles() -> Result<Vec<conveyor_shared::domain::instance_proof::AgentRole>, DevError> {
    let roles = conveyor_shared::config::agent_roles_from_env().map_err(DevError::Settings)?;
    if !roles.is_empty() {
        return Ok(roles);
    }
    let role = LOCAL_AGENT_ROLE.parse().map_err(|value| {
        DevError::Settings(SettingsError::Invalid { name: "CONVEYOR_AGENT_ROLES", expected: "a role ARN", value })
    })?;
    Ok(vec![role])
}

/// Makes sure the table exists in the local emulator. Refuses anything but a loopback
/// endpoint, so a stray shell with real credentials cannot create resources in AWS.
pub async fn prepare_local_table(settings: &Settings, sdk: &SdkConfig) -> Result<bool, DevError> {
    // The SDK's own endpoint (`--endpoint-url`) is checked beside the environment's.
    let flagged = sdk.endpoint_url().map(|url| ("AWS_ENDPOINT_URL".to_owned(), url.to_owned()));
    ensure_local_endpoints(std::env::vars().chain(flagged))?;
    let table = Table::from_sdk(sdk, settings.table.clone());
    let created = table.create_if_missing().await?;
    conveyor_shared::s3::Artifacts::new(sdk)
        .create_bucket_if_missing(&settings.artifacts_bucket)
        .await
        .map_err(|e| DevError::Artifacts(e.to_string()))?;
    Ok(created)
}

/// Refuses to go on unless every endpoint the AWS SDK would use is on this machine:
/// `AWS_ENDPOINT_URL` must name a loopback host, and so must every per-service
/// `AWS_ENDPOINT_URL_<SERVICE>` (the SDK prefers those); `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS`
/// would make the SDK skip them all, so it is refused too.
pub fn ensure_local_endpoints(vars: impl IntoIterator<Item = (String, String)>) -> Result<(), DevError> {
    let mut global = None;
    for (name, value) in vars {
        if name == "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS" && !value.trim().eq_ignore_ascii_case("false") {
            return Err(DevError::NotLocal(format!("{name}={value} makes the SDK ignore the emulator")));
        }
        if name == "AWS_ENDPOINT_URL" {
            global = Some(value.clone());
        }
        if name.starts_with("AWS_ENDPOINT_URL") && !is_loopback_url(&value) {
            return Err(DevError::NotLocal(format!("{name}={value}")));
        }
    }
    match global {
        Some(_) => Ok(()),
        None => Err(DevError::NotLocal("AWS_ENDPOINT_URL is unset".into())),
    }
}

pub use crate::context::is_loopback_url;

/// Binds `addr` (port 0 picks a free port).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, DevError> {
    TcpListener::bind(addr).await.map_err(|source| DevError::Listen { addr, source })
}

/// Serves the catalog until `shutdown` completes: HTTP routes on `listener`, and the stream
/// mappings and schedules in the background.
pub async fn run(
    listener: TcpListener,
    catalog: Catalog,
    table: &str,
    sdk: &SdkConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), crate::triggers::TriggerError> {
    let region = sdk.region().map(|r| r.to_string()).unwrap_or_else(|| "us-east-1".into());
    let stream = async {
        crate::triggers::play_stream(catalog.streams, table, sdk).await?;
        // Nothing reads the stream: keep serving the rest.
        std::future::pending().await
    };
    tokio::select! {
        () = serve(listener, catalog.http, shutdown) => Ok(()),
        result = stream => result,
        () = crate::triggers::play_schedules(catalog.schedules, region) => Ok(()),
    }
}

/// Serves `functions` on `listener` until `shutdown` completes.
pub async fn serve(listener: TcpListener, functions: Functions, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => return,
        };
        let (stream, _) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!(error = %err, "accept failed");
                continue;
            }
        };
        let functions = functions.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let functions = functions.clone();
                async move { Ok::<_, std::convert::Infallible>(route(&functions, request).await) }
            });
            if let Err(err) = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await {
                tracing::debug!(error = %err, "connection closed with an error");
            }
        });
    }
}

async fn route(functions: &Functions, request: hyper::Request<Incoming>) -> hyper::Response<Full<Bytes>> {
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    let (method, path) = (parts.method.clone(), parts.uri.path().to_owned());
    let response = match Limited::new(body, MAX_REQUEST_BYTES).collect().await {
        Err(_) => {
            api::error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "the body is larger than any route accepts")
        }
        Ok(collected) => {
            let request = http::Request::from_parts(parts, collected.to_bytes());
            match api::owner(functions.iter().map(|f| f.as_ref()), &method, &path) {
                Some(function) => function.respond(request).await,
                None => api::error(StatusCode::NOT_FOUND, "not_found", format!("no route for {method} {path}")),
            }
        }
    };
    tracing::info!(%method, %path, status = response.status().as_u16(), ms = started.elapsed().as_millis() as u64, "request");
    response.map(Full::new)
}

/// Every function of the project: the one list that `conveyor dev` serves, `conveyor
/// routes` prints and the template check compares with `infra/template.yaml`. A new
/// function is its crate, its entry here (and in [`functions`], which builds it) and its
/// resource in the template.
pub const REGISTRATIONS: &[&Registration] = &[
    &webhook_intake::REGISTRATION,
    &stripe_webhook::REGISTRATION,
    &manifest_ingest::REGISTRATION,
    &ledger_api::REGISTRATION,
    &deploy_fanout::REGISTRATION,
    &cdn_invalidate::REGISTRATION,
    &alert_dispatch::REGISTRATION,
];

/// Every route, stream filter and schedule, as JSON: what `conveyor routes` prints.
pub fn routes_json() -> serde_json::Value {
    serde_json::Value::Array(REGISTRATIONS.iter().flat_map(|r| r.describe()).collect())
}

/// The first inline secret of `name`, for signing replays.
pub fn replay_secret(name: &'static str) -> Option<conveyor_shared::secret::Secret> {
    match SecretSource::from_env(name).ok()? {
        SecretSource::Inline(secret) => SecretSet::from_secret(&secret)?.iter().next().cloned(),
        SecretSource::SecretsManager(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use conveyor_shared::secret::Secret;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn only_loopback_endpoints_pass_the_guard() {
        for local in ["http://127.0.0.1:5000", "http://localhost:4566/", "http://[::1]:5000", "https://127.1.2.3"] {
            assert!(is_loopback_url(local), "{local} is on this machine");
        }
        for remote in [
            "http://127.0.0.1.example.com:5000",
            "http://127.0.0.1@evil.example.com",
            "http://user@127.0.0.1:5000",
            "https://dynamodb.eu-west-1.amazonaws.com",
            "http://[::2]:5000",
            "ftp://127.0.0.1",
            "127.0.0.1:5000",
            "",
        ] {
            assert!(!is_loopback_url(remote), "{remote} must be refused");
        }
    }

    #[test]
    fn per_service_endpoints_cannot_bypass_the_guard() {
        assert!(ensure_local_endpoints(vars(&[("AWS_ENDPOINT_URL", "http://127.0.0.1:5000")])).is_ok());
        assert!(ensure_local_endpoints(vars(&[])).is_err(), "no endpoint means real AWS");
        let refused = ensure_local_endpoints(vars(&[
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:5000"),
            ("AWS_ENDPOINT_URL_DYNAMODB", "https://dynamodb.us-east-1.amazonaws.com"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(refused.contains("AWS_ENDPOINT_URL_DYNAMODB"), "{refused}");
        assert!(
            ensure_local_endpoints(vars(&[
                ("AWS_ENDPOINT_URL", "http://127.0.0.1:5000"),
                ("AWS_ENDPOINT_URL_S3", "http://localhost:5001"),
            ]))
            .is_ok()
        );
        let ignored =
            vars(&[("AWS_ENDPOINT_URL", "http://127.0.0.1:5000"), ("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true")]);
        assert!(ensure_local_endpoints(ignored).is_err());
    }

    #[tokio::test]
    async fn the_route_table_is_what_the_functions_serve() {
        let settings = Settings { table: "t".into(), config_path: "c.toml".into(), artifacts_bucket: "b".into() };
        let inline = || Some(SecretSource::Inline(Secret::new("s")));
        let all = WebhookSecrets { github: inline(), stripe: inline() };
        // No request is sent: building clients needs no network.
        let sdk = SdkConfig::builder().behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest()).build();
        let sdks = FunctionSdks::shared(&sdk);
        let catalog = functions(Config::default(), &settings, &all, conveyor_shared::config::Timing::default(), &sdks)
            .await
            .unwrap();
        let registered = |has: fn(&Registration) -> bool| -> Vec<&'static str> {
            REGISTRATIONS.iter().filter(|r| has(r)).map(|r| r.name).collect()
        };
        let served: Vec<_> = catalog.http.iter().map(|f| f.name()).collect();
        assert_eq!(served, registered(|r| !r.routes.is_empty()));
        let streams: Vec<_> = catalog.streams.iter().map(|f| f.name()).collect();
        assert_eq!(streams, registered(|r| !r.stream_filters.is_empty()));
        let schedules: Vec<_> = catalog.schedules.iter().map(|f| f.name()).collect();
        assert_eq!(schedules, registered(|r| r.schedule.is_some()));
        for function in catalog.http.iter() {
            assert!(REGISTRATIONS.contains(&function.registration()), "{} is not in the list", function.name());
            // Every declared route reaches its handler (a bad request is refused before any
            // I/O): none falls through to `unhandled_route`, 404 or 405.
            for route in function.routes() {
                let path: Vec<&str> =
                    route.path.split('/').map(|part| if part.starts_with('{') { "-" } else { part }).collect();
                let path = path.join("/");
                let request = http::Request::builder()
                    .method(route.method)
                    .uri(format!("{path}?limit=0"))
                    .body(Bytes::new())
                    .unwrap();
                let response = function.respond(request).await;
                let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
                assert!(
                    response.status().is_client_error()
                        && !matches!(response.status().as_u16(), 404 | 405)
                        && body["error"]["code"] != "unhandled_route",
                    "{} {}: {} {body}",
                    route.method,
                    route.path,
                    response.status()
                );
            }
        }
        let none = functions(
            Config::default(),
            &settings,
            &WebhookSecrets::default(),
            conveyor_shared::config::Timing::default(),
            &sdks,
        )
        .await
        .unwrap();
        let names: Vec<_> = none.http.iter().map(|f| f.name()).collect();
        assert_eq!(
            names,
            ["manifest-ingest", "ledger-api", "deploy-fanout"],
            "a function without its webhook secret is left out; the ledger API stays"
        );
    }
}
