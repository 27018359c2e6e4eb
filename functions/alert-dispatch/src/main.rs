//! AWS Lambda entry point: read settings once, build clients once, serve the stream, the
//! schedule and the alarm topic.

use alert_dispatch::AlertDispatch;
use conveyor_shared::config::Settings;
use conveyor_shared::lambda::{self, Capabilities};
use conveyor_shared::{load_aws_config, telemetry};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    telemetry::init(true);
    let function = AlertDispatch::from_settings(&Settings::from_env(), &load_aws_config().await)?;
    lambda::serve(Capabilities::default().with_stream(&function).with_schedule(&function).with_notifications(&function))
        .await
}
