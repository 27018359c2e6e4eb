//! `conveyor token`: create, list and revoke the tokens of providers and agents.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use conveyor_cli::context::AwsFlags;
use conveyor_cli::ops;
use conveyor_shared::config::Config;
use conveyor_shared::store::Table;

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a token for one provider's manifest uploads or one environment's agents: the
    /// token alone on stdout, shown only this once (what it is for goes to stderr).
    Create {
        /// The provider whose manifest uploads the token allows (a `[[provider]]` name).
        #[arg(long, required_unless_present = "environment", conflicts_with = "environment")]
        provider: Option<String>,
        /// The environment whose agents the token admits (a `[[environment]]` name).
        #[arg(long)]
        environment: Option<String>,
        /// conveyor.toml (default: CONVEYOR_CONFIG, then ./conveyor.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Let the token expire after this long ("90d", "12h"); it lasts until revoked without.
        #[arg(long)]
        expires_in: Option<String>,
    },
    /// List the tokens (id, scope, created, expires); never the tokens themselves.
    List {
        /// One JSON object per token.
        #[arg(long)]
        json: bool,
    },
    /// Revoke the token with this id (from `conveyor token list`): it stops working at once for
    /// manifest uploads, and within 5 minutes for agents (warm functions remember a checked
    /// token that long).
    Revoke {
        /// The token's id, as `conveyor token list` shows it.
        id: String,
    },
}
impl TokenCommand {
    pub async fn run(self, aws: &AwsFlags) -> Result<ExitCode, String> {
        match self {
            TokenCommand::List { json } => {
                let (settings, table) = aws.table().await;
                let tokens = table.tokens().await.map_err(|e| e.to_string())?;
                let now = conveyor_shared::unix_now();
                for token in &tokens {
                    if json {
                        println!("{}", serde_json::to_string(token).map_err(|e| e.to_string())?);
                        continue;
                    }
                    let expires = match token.expires_at {
                        None => "never expires".to_owned(),
                        Some(at) if at <= now => format!("expired {}", ops::when(at)),
                        Some(at) => format!("expires {}", ops::when(at)),
                    };
                    println!("{}  {}  created {}  {expires}", token.id, token.scope, ops::when(token.created_at));
                }
                if tokens.is_empty() && !json {
                    println!("no tokens in table {}", settings.table);
                }
                Ok(ExitCode::SUCCESS)
            }
            TokenCommand::Revoke { id } => {
                let (settings, table) = aws.table().await;
                match table.revoke_token(id.trim()).await.map_err(|e| e.to_string())? {
                    Some(token) => {
                        println!("revoked {} ({})", token.id, token.scope);
                        Ok(ExitCode::SUCCESS)
                    }
                    None => Err(format!(
                        "no token with id `{id}` in table {}: `conveyor token list` shows the ids",
                        settings.table
                    )),
                }
            }
            TokenCommand::Create { provider, environment, config, expires_in } => {
                let expires_at = match expires_in.as_deref() {
                    None => None,
                    Some(text) => {
                        let lasts = conveyor_shared::config::Seconds::parse(text).ok().filter(|s| s.0 > 0).ok_or_else(
                            || format!("--expires-in `{text}` is not a duration like \"90d\" or \"12h\""),
                        )?;
                        Some(conveyor_shared::unix_now() + i64::try_from(lasts.0).unwrap_or(i64::MAX / 2))
                    }
                };
                let settings = aws.settings(config.as_deref());
                let config = Config::load(&settings.config_path).map_err(|e| e.to_string())?;
                if let Some(provider) = &provider {
                    ops::known_provider(&config, provider).map_err(|e| e.to_string())?;
                }
                let table = Table::from_sdk(&aws.sdk().await, settings.table.clone());
                let (what, secret) = match (&provider, &environment) {
                    (Some(provider), _) => (
                        format!("provider {provider}"),
                        ops::create_provider_token(&table, &config, provider, expires_at)
                            .await
                            .map_err(|e| e.to_string())?,
                    ),
                    (None, Some(environment)) => (
                        format!("the agents of environment {environment}"),
                        ops::create_environment_token(&table, &config, environment, expires_at)
                            .await
                            .map_err(|e| e.to_string())?,
                    ),
                    (None, None) => return Err("name --provider or --environment".into()),
                };
                // The token alone on stdout (`TOKEN=$(conveyor token create ...)`); words on stderr.
                eprintln!(
                    "Token for {what} (table {}). It is shown only now; Conveyor keeps its hash.",
                    settings.table
                );
                println!("{}", String::from_utf8_lossy(secret.expose()));
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}
