//! AWS Lambda entry point: read settings once, build clients once, serve every trigger.

use conveyor_shared::config::Settings;
use conveyor_shared::lambda::{self, Capabilities};
use conveyor_shared::{load_aws_config, telemetry};
use deploy_fanout::Fanout;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    telemetry::init(true);
    let function = Fanout::from_settings(&Settings::from_env(), &load_aws_config().await)?;
    lambda::serve(Capabilities::http(&function).with_stream(&function).with_schedule(&function)).await
}
