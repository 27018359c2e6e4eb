//! `conveyor`: the operator's command. Each command lives in its own module under
//! `commands/`; this file names them and hands each its flags.

mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use conveyor_cli::context::AwsFlags;
use conveyor_shared::telemetry;

#[derive(Parser)]
#[command(name = "conveyor", version, about = "Delivery automation on AWS: the operator's tool")]
struct Cli {
    #[command(flatten)]
    aws: AwsFlags,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve every function locally, against the AWS emulator at AWS_ENDPOINT_URL.
    #[cfg(feature = "dev")]
    Dev(commands::dev::DevArgs),
    /// Sign a sample webhook and post it: GitHub deliveries with GITHUB_WEBHOOK_SECRET,
    /// Stripe events (files under a `stripe` folder) with STRIPE_WEBHOOK_SECRET.
    #[cfg(feature = "dev")]
    Replay(commands::replay::ReplayArgs),
    /// Check conveyor.toml.
    Config {
        #[command(subcommand)]
        command: commands::config::ConfigCommand,
    },
    /// Print every function's routes (with their auth), stream filters and schedules as JSON:
    /// what the SAM template must declare.
    #[cfg(feature = "dev")]
    Routes,
    /// Create access tokens for machine clients.
    Token {
        #[command(subcommand)]
        command: commands::token::TokenCommand,
    },
    /// Upload a build's artifact where the intake looks for it (the environment's template).
    Artifact {
        #[command(subcommand)]
        command: commands::artifact::ArtifactCommand,
    },
    /// Show an environment's deployments, waves and instances.
    Status(commands::status::StatusArgs),
    /// Follow a deployment wave by wave until it ends: exit 0 when it succeeded, 1 when it
    /// rolled back, failed, was superseded or skipped, 3 when --timeout passed first.
    Wait(commands::wait::WaitArgs),
    /// List the newest alerts (payments that failed, rollbacks, hosts that did not come back).
    Alerts(commands::alerts::AlertsArgs),
    /// Show every health check's state (down ones first), with since when and why.
    Checks(commands::checks::ChecksArgs),
    /// Manage the agents bound to instances.
    Agent {
        #[command(subcommand)]
        command: commands::agent::AgentCommand,
    },
    /// Manage providers' machine images.
    Images {
        #[command(subcommand)]
        command: commands::images::ImagesCommand,
    },
    /// Upload a site's build to its bucket: only files whose content or headers changed, then
    /// deletions (at most --max-delete); the changed paths are invalidated afterwards.
    Publish(commands::publish::PublishArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    telemetry::init(false);
    match run(Cli::parse()).await {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode, String> {
    let aws = &cli.aws;
    match cli.command {
        #[cfg(feature = "dev")]
        Command::Dev(args) => args.run(aws).await,
        #[cfg(feature = "dev")]
        Command::Replay(args) => args.run(aws).await,
        #[cfg(feature = "dev")]
        Command::Routes => commands::routes::run(),
        Command::Config { command } => command.run(),
        Command::Token { command } => command.run(aws).await,
        Command::Artifact { command } => command.run(aws).await,
        Command::Status(args) => args.run(aws).await,
        Command::Wait(args) => args.run(aws).await,
        Command::Alerts(args) => args.run(aws).await,
        Command::Checks(args) => args.run(aws).await,
        Command::Agent { command } => command.run(aws).await,
        Command::Images { command } => command.run(aws).await,
        Command::Publish(args) => args.run(aws).await,
    }
}
