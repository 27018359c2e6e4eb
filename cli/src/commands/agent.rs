//! `conveyor agent forget`: let a new agent enrol for an instance.

use std::process::ExitCode;

use clap::Subcommand;
use conveyor_cli::context::AwsFlags;

#[derive(Subcommand)]
pub enum AgentCommand {
    /// Let a new agent enrol for INSTANCE (its host was rebuilt, or its credential file lost):
    /// the agent that polls for it next is issued a new credential.
    Forget {
        /// The environment the instance belongs to.
        #[arg(long)]
        environment: String,
        /// The instance id (i-...).
        #[arg(long)]
        instance: String,
    },
}
impl AgentCommand {
    pub async fn run(self, aws: &AwsFlags) -> Result<ExitCode, String> {
        match self {
            AgentCommand::Forget { environment, instance } => {
                let (_, table) = aws.table().await;
                let forgot = table.forget_enrollment(&environment, &instance).await.map_err(|e| e.to_string())?;
                if forgot {
                    println!("{instance} in {environment}: forgotten; the next agent to poll for it enrols");
                } else {
                    println!("{instance} in {environment}: no agent was enrolled");
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}
