//! `conveyor-agent`: runs on every instance, polls the deploy channel, installs releases.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use conveyor_agent::run::{Agent, AgentConfig};

#[derive(Parser)]
#[command(name = "conveyor-agent", version, about = "Conveyor's instance agent (outgoing HTTP(S) only)")]
struct Flags {
    /// A TOML file with the settings below (flags win over it).
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    server: Option<String>,
    /// The environment's token (`conveyor token create --environment`). Without it, the agent
    /// proves its instance with the instance profile (EC2 only).
    #[arg(long)]
    token_file: Option<PathBuf>,
    #[arg(long)]
    environment: Option<String>,
    #[arg(long)]
    app_dir: Option<PathBuf>,
    #[arg(long)]
    restart_command: Option<String>,
    #[arg(long)]
    health_url: Option<String>,
    #[arg(long)]
    instance_id: Option<String>,
    #[arg(long)]
    keep: Option<usize>,
    /// The user the release's hooks run as (default: the agent's; the restart command always
    /// runs as the agent).
    #[arg(long)]
    run_as: Option<String>,
}

fn settings(flags: Flags) -> Result<AgentConfig, String> {
    let mut table = match &flags.config {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?
            .parse::<toml::Table>()
            .map_err(|e| format!("{}: {e}", path.display()))?,
        None => toml::Table::new(),
    };
    let mut set = |key: &str, value: Option<toml::Value>| {
        if let Some(value) = value {
            table.insert(key.into(), value);
        }
    };
    let path = |p: Option<PathBuf>| p.map(|p| toml::Value::String(p.display().to_string()));
    set("server", flags.server.map(toml::Value::String));
    set("token_file", path(flags.token_file));
    set("environment", flags.environment.map(toml::Value::String));
    set("app_dir", path(flags.app_dir));
    set("restart_command", flags.restart_command.map(toml::Value::String));
    set("health_url", flags.health_url.map(toml::Value::String));
    set("instance_id", flags.instance_id.map(toml::Value::String));
    set("keep", flags.keep.map(|k| toml::Value::Integer(k as i64)));
    set("run_as", flags.run_as.map(toml::Value::String));
    table.try_into::<AgentConfig>().map_err(|e| format!("agent settings: {e} (give it as a flag or in --config)"))
}

#[tokio::main]
async fn main() -> ExitCode {
    let _ = tracing_subscriber::fmt().with_writer(std::io::stderr).with_target(false).try_init();
    let config = match settings(Flags::parse()) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    let agent = match Agent::start(config).await {
        Ok(agent) => agent,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    match agent.run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
