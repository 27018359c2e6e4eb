//! `conveyor status`: an environment's deployments, waves and instances.

use std::process::ExitCode;

use clap::Args;
use conveyor_cli::context::AwsFlags;
use conveyor_cli::ops;

#[derive(Args)]
pub struct StatusArgs {
    /// The environment, as in conveyor.toml.
    #[arg(long)]
    pub environment: String,
    /// One JSON object: recent deployments, the lock, the tick's last error, the shown
    /// deployment's targets and the instances.
    #[arg(long)]
    pub json: bool,
}

impl StatusArgs {
    pub async fn run(self, aws: &AwsFlags) -> Result<ExitCode, String> {
        let Self { environment, json } = self;
        let (_, table) = aws.table().await;
        if json {
            let status = ops::status_json(&table, &environment).await.map_err(|e| e.to_string())?;
            println!("{}", serde_json::to_string(&status).map_err(|e| e.to_string())?);
        } else {
            print!("{}", ops::status(&table, &environment).await.map_err(|e| e.to_string())?);
        }
        Ok(ExitCode::SUCCESS)
    }
}
