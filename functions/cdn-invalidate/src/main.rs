//! AWS Lambda entry point: read settings once, build clients once, serve the stream and
//! the schedule.

use cdn_invalidate::CdnInvalidate;
use conveyor_shared::config::Settings;
use conveyor_shared::lambda::{self, Capabilities};
use conveyor_shared::{load_aws_config, telemetry};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    telemetry::init(true);
    let function = CdnInvalidate::from_settings(&Settings::from_env(), &load_aws_config().await)?;
    lambda::serve(Capabilities::default().with_stream(&function).with_schedule(&function)).await
}
