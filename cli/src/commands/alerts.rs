//! `conveyor alerts`: the newest alerts, what, cause, impact and action.

use std::process::ExitCode;

use clap::Args;
use conveyor_cli::context::AwsFlags;
use conveyor_cli::ops;

#[derive(Args)]
pub struct AlertsArgs {
    /// How many, newest first.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(i32).range(1..=500))]
    pub limit: i32,
    /// One JSON object per alert.
    #[arg(long)]
    pub json: bool,
}

impl AlertsArgs {
    pub async fn run(self, aws: &AwsFlags) -> Result<ExitCode, String> {
        let Self { limit, json } = self;
        let (settings, table) = aws.table().await;
        let alerts = table.recent_alerts(limit).await.map_err(|e| e.to_string())?;
        for alert in &alerts {
            if json {
                println!("{}", serde_json::to_string(alert).map_err(|e| e.to_string())?);
            } else {
                print!("{}", ops::alert_text(alert));
            }
        }
        if alerts.is_empty() && !json {
            println!("no alerts in table {}", settings.table);
        }
        Ok(ExitCode::SUCCESS)
    }
}
