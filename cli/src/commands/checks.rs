//! `conveyor checks`: every health check's state as alert-dispatch last stored it, down
//! ones first, with the open incident's start and cause.

use std::process::ExitCode;

use clap::Args;
use conveyor_cli::context::AwsFlags;
use conveyor_cli::ops;

#[derive(Args)]
pub struct ChecksArgs {
    /// One JSON object per check.
    #[arg(long)]
    pub json: bool,
}

impl ChecksArgs {
    pub async fn run(self, aws: &AwsFlags) -> Result<ExitCode, String> {
        let (settings, table) = aws.table().await;
        let states = table.check_states().await.map_err(|e| e.to_string())?;
        if self.json {
            for (name, stored) in &states {
                let mut value = serde_json::to_value(&stored.state).map_err(|e| e.to_string())?;
                value["check"] = name.clone().into();
                println!("{value}");
            }
        } else if states.is_empty() {
            println!("no check has run yet in table {} (alert-dispatch runs them every minute)", settings.table);
        } else {
            print!("{}", ops::checks_text(&states));
        }
        Ok(ExitCode::SUCCESS)
    }
}
