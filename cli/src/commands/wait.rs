//! `conveyor wait`: follow a deployment to its end, for a CI job (the logic is in the library's `wait`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use conveyor_cli::context::AwsFlags;
use conveyor_cli::{ops, wait};
use conveyor_shared::config::Config;

#[derive(Args)]
pub struct WaitArgs {
    /// The environment, as in conveyor.toml.
    #[arg(long)]
    pub environment: String,
    /// The deployment of this commit (7 to 40 hex digits); it may not exist yet. Default:
    /// the environment's newest deployment that has not ended, or the next one.
    #[arg(long)]
    pub sha: Option<String>,
    /// How long to wait ("30m", "1h30m").
    #[arg(long, default_value = "30m")]
    pub timeout: String,
    /// conveyor.toml, to check the environment's name (default: CONVEYOR_CONFIG, then
    /// ./conveyor.toml; not checked when there is none).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Print the deployment as JSON on stdout when it ends (progress stays on stderr).
    #[arg(long)]
    pub json: bool,
}

impl WaitArgs {
    pub async fn run(self, aws: &AwsFlags) -> Result<ExitCode, String> {
        let Self { environment, sha, timeout, config, json } = self;
        let settings = aws.settings(config.as_deref());
        let known =
            match (config.is_some() || settings.config_path.exists()).then(|| Config::load(&settings.config_path)) {
                None => Ok(()),
                Some(Err(err)) => Err(err.to_string()),
                Some(Ok(config)) if config.environment(&environment).is_some() => Ok(()),
                Some(Ok(config)) => {
                    let names: Vec<_> = config.environments.iter().map(|e| e.name.as_str()).collect();
                    Err(format!(
                        "no environment `{environment}` in {} (known: {})",
                        settings.config_path.display(),
                        names.join(", ")
                    ))
                }
            };
        let parsed = known.and_then(|()| wait::Target::parse(sha.as_deref())).and_then(|target| {
            let timeout = conveyor_shared::config::Seconds::parse(&timeout)
                .ok()
                .filter(|s| s.0 > 0)
                .ok_or_else(|| format!("--timeout `{timeout}` is not a duration like \"30m\" or \"2h\""))?;
            Ok((target, timeout))
        });
        // A usage error exits 2, never 1, which says the deployment failed.
        let (target, timeout) = match parsed {
            Ok(parsed) => parsed,
            Err(message) => {
                eprintln!("error: {message}");
                return Ok(ExitCode::from(2));
            }
        };
        let (_, table) = aws.table().await;
        let waited = wait::follow(
            &table,
            &environment,
            &target,
            wait::Patience {
                timeout: std::time::Duration::from_secs(timeout.0),
                poll: wait::POLL,
                since: conveyor_shared::unix_now(),
            },
            &mut std::io::stderr(),
            wait::stderr_is_terminal(),
        )
        .await;
        match &waited {
            wait::Waited::Ended(deployment) if json => {
                println!("{}", serde_json::to_string(deployment).map_err(|e| e.to_string())?);
            }
            wait::Waited::Ended(_) => {}
            wait::Waited::TimedOut { .. } => eprintln!("gave up after {}", ops::duration(timeout.0)),
            wait::Waited::Unreadable(message) => eprintln!("error: {message}"),
        }
        Ok(ExitCode::from(waited.exit_code()))
    }
}
