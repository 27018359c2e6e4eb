//! AWS Lambda entry point: read settings once, build clients once, serve.

use conveyor_shared::config::{GITHUB_WEBHOOK_SECRET, SecretSource, Settings};
use conveyor_shared::lambda::{self, Capabilities};
use conveyor_shared::{load_aws_config, telemetry};
use webhook_intake::Intake;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    telemetry::init(true);
    let settings = Settings::from_env();
    let secret = SecretSource::from_env(GITHUB_WEBHOOK_SECRET)?;
    let intake = Intake::from_settings(&settings, &secret, &load_aws_config().await).await?;
    lambda::serve(Capabilities::http(&intake)).await
}
