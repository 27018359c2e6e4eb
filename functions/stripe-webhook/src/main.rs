//! AWS Lambda entry point: read settings once, build clients once, serve.

use conveyor_shared::config::stripe_tolerance_from_env;
use conveyor_shared::config::{STRIPE_WEBHOOK_SECRET, SecretSource, Settings};
use conveyor_shared::lambda::{self, Capabilities};
use conveyor_shared::{load_aws_config, telemetry};
use stripe_webhook::StripeWebhook;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    telemetry::init(true);
    let settings = Settings::from_env();
    let secret = SecretSource::from_env(STRIPE_WEBHOOK_SECRET)?;
    let tolerance = stripe_tolerance_from_env()?;
    let function = StripeWebhook::from_settings(&settings, &secret, tolerance, &load_aws_config().await).await?;
    lambda::serve(Capabilities::http(&function)).await
}
