//! The read-only ledger API, behind API Gateway's IAM auth: recent builds, an environment's
//! deployments, and what a customer's subscriptions entitle them to. It has a function of its
//! own so that it keeps answering whichever webhook is configured (or not), and so that it
//! can be given read permissions only.

use std::sync::Arc;

use conveyor_shared::SdkConfig;
use conveyor_shared::config::{self, Config, LoadError, Settings, SettingsError};
use conveyor_shared::domain::stripe::{self, SubscriptionState};
use conveyor_shared::http::{self, BoxFuture, HttpFunction, Request, Response, Route, Routed, StatusCode};
use conveyor_shared::registration::{Auth, Function, Registration};
use conveyor_shared::store::Table;
use serde_json::json;

const BUILDS: Route = Route::new("GET", "/api/v1/builds", Auth::Iam);
const DEPLOYMENTS: Route = Route::new("GET", "/api/v1/deployments", Auth::Iam);
const CUSTOMER: Route = Route::new("GET", "/api/v1/customers/{customer}", Auth::Iam);

pub const REGISTRATION: Registration = Registration {
    name: "ledger-api",
    routes: &[BUILDS, DEPLOYMENTS, CUSTOMER],
    stream_filters: &[],
    schedule: None,
    permissions: &["dynamodb:Query"],
};

/// Listings answer at most this many items.
const MAX_LIMIT: i32 = 200;
const DEFAULT_LIMIT: i32 = 50;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] LoadError),
    #[error(transparent)]
    Settings(#[from] SettingsError),
}

#[derive(Clone)]
pub struct LedgerApi {
    table: Table,
    config: Arc<Config>,
    /// Seconds a subscription still entitles after its paid period ends.
    grace: i64,
}

impl LedgerApi {
    pub fn new(table: Table, config: Arc<Config>, grace: i64) -> Self {
        Self { table, config, grace }
    }

    /// Loads `conveyor.toml` and the entitlement grace, and builds the table client.
    pub fn from_settings(settings: &Settings, sdk: &SdkConfig) -> Result<Self, StartupError> {
        let config = Config::load(&settings.config_path)?;
        let grace = config::entitlement_grace_from_env()?;
        Ok(Self::new(Table::from_sdk(sdk, settings.table.clone()), Arc::new(config), grace))
    }

    async fn builds(&self, request: Request) -> Response {
        let limit = match limit(&request) {
            Ok(limit) => limit,
            Err(message) => return http::error(StatusCode::BAD_REQUEST, "invalid_parameter", message),
        };
        match self.table.recent_builds(limit).await {
            Ok(builds) => http::json(StatusCode::OK, &json!({"builds": builds})),
            Err(err) => http::problem(&err),
        }
    }

    async fn deployments(&self, request: Request) -> Response {
        let limit = match limit(&request) {
            Ok(limit) => limit,
            Err(message) => return http::error(StatusCode::BAD_REQUEST, "invalid_parameter", message),
        };
        let Some(environment) = http::query_param(&request, "environment") else {
            return http::error(StatusCode::BAD_REQUEST, "missing_parameter", "add ?environment=NAME");
        };
        if self.config.environment(&environment).is_none() {
            let known: Vec<_> = self.config.environments.iter().map(|e| e.name.as_str()).collect();
            return http::error(
                StatusCode::NOT_FOUND,
                "unknown_environment",
                format!("no environment `{environment}` in conveyor.toml (known: {})", known.join(", ")),
            );
        }
        match self.table.recent_deployments(&environment, limit).await {
            Ok(deployments) => {
                http::json(StatusCode::OK, &json!({"environment": environment, "deployments": deployments}))
            }
            Err(err) => http::problem(&err),
        }
    }

    async fn customer(&self, customer: &str) -> Response {
        let valid = !customer.is_empty()
            && customer.len() <= 255
            && customer.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid {
            return http::error(StatusCode::BAD_REQUEST, "invalid_customer", "a customer id looks like cus_...");
        }
        match self.table.customer_subscriptions(customer).await {
            Ok(subscriptions) if subscriptions.is_empty() => http::error(
                StatusCode::NOT_FOUND,
                "unknown_customer",
                format!("no subscription is known for {customer}"),
            ),
            Ok(subscriptions) => {
                let now = conveyor_shared::unix_now();
                let entitles = |s: &SubscriptionState| {
                    stripe::entitled(s.status.as_deref(), s.current_period_end, now, self.grace)
                };
                let entitled = subscriptions.iter().any(entitles);
                let list: Vec<_> = subscriptions
                    .iter()
                    .map(|s| {
                        json!({
                            "subscription": s.subscription,
                            "status": s.status,
                            "price": s.price,
                            "product": s.product,
                            "items": s.items.as_deref().unwrap_or_default(),
                            "entitled": entitles(s),
                            "current_period_end": s.current_period_end,
                            "cancel_at_period_end": s.cancel_at_period_end.unwrap_or(false),
                            "updated_by": s.last_event_type,
                        })
                    })
                    .collect();
                http::json(StatusCode::OK, &json!({"customer": customer, "entitled": entitled, "subscriptions": list}))
            }
            Err(err) => http::problem(&err),
        }
    }
}

impl Function for LedgerApi {
    fn registration(&self) -> &'static Registration {
        &REGISTRATION
    }
}

impl HttpFunction for LedgerApi {
    fn handle(&self, routed: Routed) -> BoxFuture<'_, Response> {
        Box::pin(async move {
            match *routed.route {
                BUILDS => self.builds(routed.request).await,
                DEPLOYMENTS => self.deployments(routed.request).await,
                CUSTOMER => self.customer(routed.param("customer")).await,
                _ => http::unhandled(&routed),
            }
        })
    }
}

fn limit(request: &Request) -> Result<i32, String> {
    match http::query_param(request, "limit") {
        None => Ok(DEFAULT_LIMIT),
        Some(text) => match text.parse::<i32>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(format!("limit must be a number from 1 to {MAX_LIMIT}")),
        },
    }
}
