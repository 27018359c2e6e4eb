//! `conveyor config check`: every problem in conveyor.toml with its line and column.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use conveyor_shared::config::Config;

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Report every problem with its line and column; exit 1 when there is one.
    Check {
        /// The file to check.
        file: PathBuf,
    },
}
impl ConfigCommand {
    pub fn run(self) -> Result<ExitCode, String> {
        match self {
            ConfigCommand::Check { file } => match Config::load(&file) {
                Ok(config) => {
                    let names: Vec<_> = config.environments.iter().map(|e| e.name.as_str()).collect();
                    let providers: Vec<_> = config.providers.iter().map(|p| p.name.as_str()).collect();
                    println!(
                        "{}: ok ({} environments: {}; {} providers: {})",
                        file.display(),
                        names.len(),
                        names.join(", "),
                        providers.len(),
                        providers.join(", ")
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(err) => Err(err.to_string()),
            },
        }
    }
}
