//! AWS Lambda entry point: read settings once, build clients once, serve.

use conveyor_shared::config::Settings;
use conveyor_shared::lambda::{self, Capabilities};
use conveyor_shared::{load_aws_config, telemetry};
use manifest_ingest::ManifestIngest;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    telemetry::init(true);
    let settings = Settings::from_env();
    let function = ManifestIngest::from_settings(&settings, &load_aws_config().await)?;
    lambda::serve(Capabilities::http(&function)).await
}
