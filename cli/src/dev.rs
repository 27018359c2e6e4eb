//! `conveyor dev`: every function's routes behind one local HTTP server, with the same paths
//! as the SAM template, against the local AWS emulator.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use conveyor_shared::SdkConfig;
use conveyor_shared::config::{
    Config, GITHUB_WEBHOOK_SECRET, LoadError, STRIPE_WEBHOOK_SECRET, SecretSource, Settings, SettingsError,
};
use conveyor_shared::ec2::Ec2;
use conveyor_shared::http::{self as api, Dispatch, HttpFunction, StatusCode};
use conveyor_shared::secrets::{Secrets, SecretsError};
use conveyor_shared::store::{StoreError, Table};
use conveyor_shared::triggers::{ScheduledFunction, StreamFunction};
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
    #[error(transparent)]
    Sts(#[from] conveyor_shared::sts::StsError),
    #[error(
        "AWS_ENDPOINT_URL is not set to a local emulator ({0}): `conveyor dev` creates tables and must never touch a real AWS account"
    )]
    NotLocal(String),
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
    timing: deploy_fanout::Timing,
    sdk: &SdkConfig,
) -> Result<Catalog, DevError> {
    let table = Table::new(aws_sdk_dynamodb::Client::new(sdk), settings.table.clone());
    let config = Arc::new(config);
    let mut http: Vec<Arc<dyn HttpFunction>> = Vec::new();
    match &webhook_secrets.github {
        Some(source) => http.push(Arc::new(webhook_intake::Intake::new(
            table.clone(),
            Secrets::load(source, sdk).await?,
            config.clone(),
            settings.artifacts_bucket.clone(),
        ))),
        None => tracing::warn!("webhook-intake is off: set {GITHUB_WEBHOOK_SECRET} to serve it"),
    }
    match &webhook_secrets.stripe {
        Some(source) => http.push(Arc::new(
            stripe_webhook::StripeWebhook::new(
                table.clone(),
                Secrets::load(source, sdk).await?,
                stripe_webhook::tolerance_from_env().map_err(DevError::Settings)?,
            )
            .serving(
                // The local emulator takes test-mode events unless told otherwise.
                stripe_webhook::Mode::from_env(stripe_webhook::Mode::Test).map_err(DevError::Settings)?,
                stripe_webhook::grace_from_env().map_err(DevError::Settings)?,
            ),
        )),
        None => tracing::warn!("stripe-webhook is off: set {STRIPE_WEBHOOK_SECRET} to serve it"),
    }
    http.push(Arc::new(manifest_ingest::ManifestIngest::new(table.clone(), Ec2::new(sdk), config.clone())));
    let fanout = Arc::new(
        deploy_fanout::Fanout::new(
            table.clone(),
            Ec2::new(sdk),
            conveyor_shared::s3::Artifacts::new(sdk),
            config.clone(),
            timing,
        )
        .trusting_instance_profiles(conveyor_shared::sts::Sts::new(sdk)?, local_agent_roles()?),
    );
    http.push(fanout.clone());
    let streams: Vec<Arc<dyn StreamFunction>> = vec![fanout.clone()];
    let schedules: Vec<Arc<dyn ScheduledFunction>> = vec![fanout];
    Ok(Catalog { http: Arc::new(http), streams, schedules })
}

/// The role whose sessions the emulator's STS issues to local agents proving an instance
/// (`CONVEYOR_AGENT_ROLES` wins): the emulator's account and the template's role name.
pub const LOCAL_AGENT_ROLE: &str = "arn:aws:iam::123456789012:role/conveyor-agent";

fn local_agent_roles() -> Result<Vec<conveyor_shared::domain::instance_proof::AgentRole>, DevError> {
    let roles = deploy_fanout::agent_roles_from_env().map_err(DevError::Settings)?;
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
    let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap_or_default();
    let host = endpoint.split("://").nth(1).unwrap_or("").split([':', '/']).next().unwrap_or("");
    if !(host == "localhost" || host.starts_with("127.") || host == "[::1]") {
        return Err(DevError::NotLocal(if endpoint.is_empty() { "unset".into() } else { endpoint }));
    }
    let table = Table::new(aws_sdk_dynamodb::Client::new(sdk), settings.table.clone());
    let created = table.create_if_missing().await?;
    conveyor_shared::s3::Artifacts::new(sdk)
        .create_bucket_if_missing(&settings.artifacts_bucket)
        .await
        .map_err(|e| DevError::Artifacts(e.to_string()))?;
    Ok(created)
}

/// Settings for a local run: `--config` wins over `CONVEYOR_CONFIG`.
pub fn local_settings(config_path: Option<&std::path::Path>) -> Settings {
    let mut settings = Settings::from_env();
    if let Some(path) = config_path {
        settings.config_path = path.to_owned();
    }
    settings
}

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
            match api::dispatch(functions.iter().map(|f| f.as_ref()), &method, &path) {
                Dispatch::To(function) => function.handle(request).await,
                Dispatch::MethodNotAllowed => api::error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    format!("{path} does not take {method}"),
                ),
                Dispatch::NotFound => {
                    api::error(StatusCode::NOT_FOUND, "not_found", format!("no route for {method} {path}"))
                }
            }
        }
    };
    tracing::info!(%method, %path, status = response.status().as_u16(), ms = started.elapsed().as_millis() as u64, "request");
    response.map(Full::new)
}

/// Every function's routes, by function name: what `conveyor routes` prints for the
/// template check, without building clients. `functions` must serve exactly these.
pub fn route_table() -> Vec<(&'static str, &'static [api::Route])> {
    vec![
        ("webhook-intake", webhook_intake::ROUTES),
        ("stripe-webhook", stripe_webhook::ROUTES),
        ("manifest-ingest", manifest_ingest::ROUTES),
        ("deploy-fanout", deploy_fanout::ROUTES),
    ]
}

/// Every function's stream filters, by function name: what the template's stream mappings
/// must declare.
pub fn stream_table() -> Vec<(&'static str, &'static [&'static str])> {
    vec![("deploy-fanout", &[deploy_fanout::NEW_DEPLOYMENTS, deploy_fanout::ENDED_DEPLOYMENTS])]
}

/// The route and stream tables as JSON.
pub fn routes_json() -> serde_json::Value {
    let routes = route_table().into_iter().flat_map(|(name, routes)| {
        routes.iter().map(move |r| serde_json::json!({"function": name, "method": r.method, "path": r.path}))
    });
    let streams = stream_table().into_iter().flat_map(|(name, filters)| {
        filters.iter().map(move |f| serde_json::json!({"function": name, "stream_filter": f}))
    });
    serde_json::Value::Array(routes.chain(streams).collect())
}

/// The first inline secret of `name`, for signing replays.
pub fn replay_secret(name: &'static str) -> Option<conveyor_shared::secret::Secret> {
    match SecretSource::from_env(name).ok()? {
        SecretSource::Inline(set) => set.iter().next().cloned(),
        SecretSource::SecretsManager(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use conveyor_shared::secret::SecretSet;

    #[tokio::test]
    async fn the_route_table_is_what_the_functions_serve() {
        let settings = Settings { table: "t".into(), config_path: "c.toml".into(), artifacts_bucket: "b".into() };
        let inline = || Some(SecretSource::Inline(SecretSet::from_comma_separated("s").unwrap()));
        let all = WebhookSecrets { github: inline(), stripe: inline() };
        // No request is sent: building clients needs no network.
        let sdk = SdkConfig::builder().behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest()).build();
        let catalog =
            functions(Config::default(), &settings, &all, deploy_fanout::Timing::default(), &sdk).await.unwrap();
        let served: Vec<_> = catalog.http.iter().map(|f| (f.name(), f.routes())).collect();
        assert_eq!(served, route_table());
        let streams: Vec<_> = catalog.streams.iter().map(|f| (f.name(), f.filters())).collect();
        assert_eq!(streams, stream_table());
        let none =
            functions(Config::default(), &settings, &WebhookSecrets::default(), deploy_fanout::Timing::default(), &sdk)
                .await
                .unwrap();
        let names: Vec<_> = none.http.iter().map(|f| f.name()).collect();
        assert_eq!(names, ["manifest-ingest", "deploy-fanout"], "a function without its webhook secret is left out");
    }
}
