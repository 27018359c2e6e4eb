//! `conveyor status`: an environment's deployments, waves and instances.

use std::process::ExitCode;

use clap::Args;
use conveyor_cli::context::AwsFlags;
use conveyor_cli::ops;
use conveyor_shared::domain::invalidation;

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
        // CloudFront bills invalidation paths per account past 1,000 a month.
        let month = invalidation::month_of(conveyor_shared::unix_now());
        let paths = table.month_paths(&month).await.map_err(|e| e.to_string())?;
        if json {
            let mut status = ops::status_json(&table, &environment).await.map_err(|e| e.to_string())?;
            status["cdn_invalidation_paths"] =
                serde_json::json!({"month": month, "paths": paths, "free": invalidation::FREE_PATHS_PER_MONTH});
            println!("{}", serde_json::to_string(&status).map_err(|e| e.to_string())?);
        } else {
            print!("{}", ops::status(&table, &environment).await.map_err(|e| e.to_string())?);
            println!(
                "CloudFront invalidation paths in {month}: {paths} of the {} free (the account's)",
                invalidation::FREE_PATHS_PER_MONTH
            );
        }
        Ok(ExitCode::SUCCESS)
    }
}
