//! Stripe webhooks (`POST /webhooks/stripe`): each customer's subscriptions, in the ledger
//! the `ledger-api` function reads (`GET /api/v1/customers/{customer}`).
//!
//! The Stripe model is a small serde model of the fields used
//! ([`conveyor_shared::domain::stripe`], where the choice against `async-stripe` is explained).
//! Order of checks: size, signature and timestamp (over the raw bytes), envelope; then the
//! event id is claimed (dedupe), the change applied in event order, the claim marked done.

use conveyor_shared::SdkConfig;
use conveyor_shared::config::{SecretSource, Settings, SettingsError, StripeMode};
use conveyor_shared::domain::stripe::{self, StripePlan};
use conveyor_shared::http::{self, BoxFuture, HttpFunction, Request, Response, Route, Routed, StatusCode};
use conveyor_shared::registration::{Auth, Function, Registration};
use conveyor_shared::secrets::{KeyRing, SecretsError};
use conveyor_shared::signature::verify_stripe;
use conveyor_shared::store::{Claimed, Handled, Key, Ordered, STRIPE_EVENT_TTL_SECONDS, Table};
use serde_json::json;

/// Stripe's webhook events.
const STRIPE: Route = Route::new("POST", "/webhooks/stripe", Auth::Function);

pub const REGISTRATION: Registration = Registration {
    name: "stripe-webhook",
    routes: &[STRIPE],
    stream_filters: &[],
    schedule: None,
    permissions: &[
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:DeleteItem",
        "secretsmanager:GetSecretValue",
    ],
};

/// Events are small; anything larger than this is not from Stripe.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Secrets(#[from] SecretsError),
}

#[derive(Clone)]
pub struct StripeWebhook {
    table: Table,
    secrets: KeyRing,
    tolerance: i64,
    mode: StripeMode,
}

impl StripeWebhook {
    /// Serves test-mode events; see [`StripeWebhook::serving`]. In Lambda,
    /// [`StripeWebhook::from_settings`] serves live mode unless `STRIPE_MODE=test`.
    pub fn new(table: Table, secrets: impl Into<KeyRing>, tolerance: i64) -> Self {
        Self { table, secrets: secrets.into(), tolerance, mode: StripeMode::Test }
    }

    /// Serves `mode`'s events.
    pub fn serving(mut self, mode: StripeMode) -> Self {
        self.mode = mode;
        self
    }

    pub async fn from_settings(
        settings: &Settings,
        secret: &SecretSource,
        tolerance: i64,
        sdk: &SdkConfig,
    ) -> Result<Self, StartupError> {
        let secrets = KeyRing::load(secret, sdk).await?;
        let table = Table::from_sdk(sdk, settings.table.clone());
        Ok(Self::new(table, secrets, tolerance).serving(StripeMode::from_env(StripeMode::Live)?))
    }

    async fn webhook(&self, request: Request) -> Response {
        let body = request.body();
        if body.len() > MAX_BODY_BYTES {
            return http::error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "the body is over 1 MB");
        }
        let now = conveyor_shared::unix_now();
        let header = http::header(&request, "stripe-signature");
        if let Err(err) = self.secrets.verify(|secrets| verify_stripe(secrets, header, body, now, self.tolerance)).await
        {
            return http::problem(&err);
        }
        let event = match stripe::parse_event(body) {
            Ok(event) => event,
            Err(err) => return http::problem(&err),
        };
        let mode = if event.livemode { StripeMode::Live } else { StripeMode::Test };
        if mode != self.mode {
            // Answered 200 so Stripe does not retry it; nothing is recorded.
            let reason = format!(
                "a {}-mode event at a {}-mode endpoint (STRIPE_MODE): nothing recorded",
                mode.name(),
                self.mode.name()
            );
            // An error: one such event is a stray test, but a mismatched STRIPE_MODE drops them all.
            tracing::error!(event = %event.id, kind = %event.kind, %reason, "Stripe event of the other mode");
            return http::json(
                StatusCode::OK,
                &json!({"ok": true, "duplicate": false, "event": event.id, "outcome": "ignored", "reason": reason}),
            );
        }
        let work = || async {
            let (outcome, detail) = match stripe::plan(&event) {
                StripePlan::Ignored(reason) => ("ignored", reason),
                StripePlan::Apply { change, alert } => {
                    let ordered = self.table.apply_subscription_change(&change, now).await?;
                    if let Some(alert) = &alert {
                        self.table.record_alert(alert).await?;
                    }
                    match ordered {
                        Ordered::Applied => (
                            "applied",
                            format!("{} is {}", change.subscription, change.status.as_deref().unwrap_or("unchanged")),
                        ),
                        Ordered::Stale => {
                            ("stale", format!("a newer event for {} was applied first", change.subscription))
                        }
                    }
                }
            };
            Ok(Handled { value: (), outcome, detail })
        };
        let claimed = self
            .table
            .run_claimed(Key::stripe_event(&event.id), &event.kind, now, STRIPE_EVENT_TTL_SECONDS, work)
            .await;
        let Handled { outcome, detail, .. } = match claimed {
            Claimed::Done(handled) => handled,
            Claimed::Duplicate => {
                tracing::info!(event = %event.id, kind = %event.kind, "duplicate Stripe event");
                return http::json(StatusCode::OK, &json!({"ok": true, "duplicate": true, "event": event.id}));
            }
            Claimed::InFlight { retry_after } => {
                tracing::info!(event = %event.id, kind = %event.kind, "Stripe event being processed by another attempt");
                return http::in_flight(retry_after);
            }
            // Given back: Stripe's retry applies it in full.
            Claimed::Failed(err) => return http::problem(&err),
        };
        tracing::info!(event = %event.id, kind = %event.kind, outcome, %detail, "Stripe event handled");
        http::json(
            StatusCode::OK,
            &json!({"ok": true, "duplicate": false, "event": event.id, "type": event.kind, "outcome": outcome, "detail": detail}),
        )
    }
}

impl Function for StripeWebhook {
    fn registration(&self) -> &'static Registration {
        &REGISTRATION
    }
}

impl HttpFunction for StripeWebhook {
    fn handle(&self, routed: Routed) -> BoxFuture<'_, Response> {
        Box::pin(async move {
            match *routed.route {
                STRIPE => self.webhook(routed.request).await,
                _ => http::unhandled(&routed),
            }
        })
    }
}
