//! `conveyor images rollback`: a provider's images as they were before.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use conveyor_cli::context::AwsFlags;
use conveyor_cli::ops;
use conveyor_shared::config::Config;
use conveyor_shared::ec2::Ec2;
use conveyor_shared::store::Table;

#[derive(Subcommand)]
pub enum ImagesCommand {
    /// Restore a provider's images as they were before the newest change (or at --to).
    Rollback {
        /// The provider, as in conveyor.toml.
        #[arg(long)]
        provider: String,
        /// The version to restore (see GET /providers/NAME/images).
        #[arg(long)]
        to: Option<i64>,
        /// conveyor.toml (default: CONVEYOR_CONFIG, then ./conveyor.toml).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}
impl ImagesCommand {
    pub async fn run(self, aws: &AwsFlags) -> Result<ExitCode, String> {
        match self {
            ImagesCommand::Rollback { provider, to, config } => {
                let settings = aws.settings(config.as_deref());
                let config = Config::load(&settings.config_path).map_err(|e| e.to_string())?;
                let sdk = aws.sdk().await;
                let table = Table::from_sdk(&sdk, settings.table.clone());
                let (change, templates, ok) = ops::rollback_images(&table, &Ec2::new(&sdk), &config, &provider, to)
                    .await
                    .map_err(|e| e.to_string())?;
                println!(
                    "provider {provider}: version {} restores the images of version {}",
                    change.version,
                    change.restored.unwrap_or_default()
                );
                for (region, diff) in &change.changes {
                    println!(
                        "  {region}: {} -> {}",
                        diff.old.as_deref().unwrap_or("(none)"),
                        diff.new.as_deref().unwrap_or("(none)")
                    );
                }
                for template in &templates {
                    println!("  launch template {template}");
                }
                Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
            }
        }
    }
}
