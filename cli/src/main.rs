//! `conveyor`: the operator's command.

#[cfg(feature = "dev")]
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use conveyor_cli::context::AwsFlags;
#[cfg(feature = "dev")]
use conveyor_cli::{dev, replay};
use conveyor_cli::{ops, wait};
use conveyor_shared::config::Config;
#[cfg(feature = "dev")]
use conveyor_shared::config::{GITHUB_WEBHOOK_SECRET, STRIPE_WEBHOOK_SECRET};
use conveyor_shared::ec2::Ec2;
use conveyor_shared::store::Table;
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
    Dev {
        /// Where to listen (port 0 picks a free one).
        #[arg(long, default_value = "127.0.0.1:3000")]
        listen: SocketAddr,
        /// conveyor.toml (default: CONVEYOR_CONFIG, then ./conveyor.toml).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Sign a sample webhook and post it: GitHub deliveries with GITHUB_WEBHOOK_SECRET,
    /// Stripe events (files under a `stripe` folder) with STRIPE_WEBHOOK_SECRET.
    #[cfg(feature = "dev")]
    Replay {
        /// A payload file: events/github/<event>/*.json or events/stripe/*.json.
        file: PathBuf,
        /// Where to post (default: http://127.0.0.1:3000/webhooks/github or .../stripe).
        #[arg(long)]
        url: Option<String>,
        /// The X-GitHub-Event to send (default: the file's folder name).
        #[arg(long)]
        event: Option<String>,
        /// The X-GitHub-Delivery GUID (default: a new one; repeat one to test dedupe).
        #[arg(long)]
        delivery: Option<String>,
        /// Record a GitHub push straight into the table (CONVEYOR_TABLE, AWS credentials) with
        /// the intake's own code instead of posting it: for a push over Lambda's 6 MB that AWS
        /// refused, saved from GitHub's delivery log (give its GUID with --delivery).
        #[arg(long, requires = "delivery", conflicts_with = "url")]
        record: bool,
        /// conveyor.toml, with --record (default: CONVEYOR_CONFIG, then ./conveyor.toml).
        #[arg(long, requires = "record")]
        config: Option<PathBuf>,
    },
    /// Check conveyor.toml.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Print every function's routes (with their auth), stream filters and schedules as JSON:
    /// what the SAM template must declare.
    #[cfg(feature = "dev")]
    Routes,
    /// Create access tokens for machine clients.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Upload a build's artifact where the intake looks for it (the environment's template).
    Artifact {
        #[command(subcommand)]
        command: ArtifactCommand,
    },
    /// Show an environment's deployments, waves and instances.
    Status {
        /// The environment, as in conveyor.toml.
        #[arg(long)]
        environment: String,
    },
    /// Follow a deployment wave by wave until it ends: exit 0 when it succeeded, 1 when it
    /// rolled back, failed, was superseded or skipped, 3 when --timeout passed first.
    Wait {
        /// The environment, as in conveyor.toml.
        #[arg(long)]
        environment: String,
        /// The deployment of this commit (7 to 40 hex digits); it may not exist yet. Default:
        /// the environment's newest deployment that has not ended, or the next one.
        #[arg(long)]
        sha: Option<String>,
        /// How long to wait ("30m", "1h30m").
        #[arg(long, default_value = "30m")]
        timeout: String,
        /// conveyor.toml, to check the environment's name (default: CONVEYOR_CONFIG, then
        /// ./conveyor.toml; not checked when there is none).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print the deployment as JSON on stdout when it ends (progress stays on stderr).
        #[arg(long)]
        json: bool,
    },
    /// List the newest alerts (payments that failed, rollbacks, hosts that did not come back).
    Alerts {
        /// How many, newest first.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(i32).range(1..=500))]
        limit: i32,
        /// One JSON object per alert.
        #[arg(long)]
        json: bool,
    },
    /// Manage the agents bound to instances.
    Agent {
        #[command(subcommand)]
        command: AgentCommand,
    },
    /// Manage providers' machine images.
    Images {
        #[command(subcommand)]
        command: ImagesCommand,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
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

#[derive(Subcommand)]
enum AgentCommand {
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

/// Artifacts larger than this go up in parts of this size.
const ARTIFACT_PART_SIZE: u64 = 64 * 1024 * 1024;

#[derive(Subcommand)]
enum ArtifactCommand {
    /// Upload FILE (a .tar.gz) as the artifact of commit SHA where the intake will look for
    /// it, with its sha256 and version; streamed from disk, multipart above 64 MiB.
    Push {
        file: PathBuf,
        /// The full 40-digit commit sha (git rev-parse HEAD).
        #[arg(long)]
        sha: String,
        /// owner/name, as GitHub names the repository.
        #[arg(long)]
        repository: String,
        /// The environment whose `artifact` template names the key (default template without).
        #[arg(long)]
        environment: Option<String>,
        /// The configuration that defines --environment.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The artifacts bucket: the stack output ArtifactsBucketName.
        #[arg(long, env = "CONVEYOR_ARTIFACTS_BUCKET")]
        bucket: Option<String>,
    },
}

#[derive(Subcommand)]
enum ImagesCommand {
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

#[derive(Subcommand)]
enum ConfigCommand {
    /// Report every problem with its line and column; exit 1 when there is one.
    Check {
        /// The file to check.
        file: PathBuf,
    },
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
        Command::Config { command: ConfigCommand::Check { file } } => match Config::load(&file) {
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
        Command::Token { command: TokenCommand::List { json } } => {
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
        Command::Token { command: TokenCommand::Revoke { id } } => {
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
        Command::Token { command: TokenCommand::Create { provider, environment, config, expires_in } } => {
            let expires_at = match expires_in.as_deref() {
                None => None,
                Some(text) => {
                    let lasts = conveyor_shared::config::Seconds::parse(text)
                        .ok()
                        .filter(|s| s.0 > 0)
                        .ok_or_else(|| format!("--expires-in `{text}` is not a duration like \"90d\" or \"12h\""))?;
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
            eprintln!("Token for {what} (table {}). It is shown only now; Conveyor keeps its hash.", settings.table);
            println!("{}", String::from_utf8_lossy(secret.expose()));
            Ok(ExitCode::SUCCESS)
        }
        Command::Artifact { command: ArtifactCommand::Push { file, sha, repository, environment, config, bucket } } => {
            let bucket = bucket.filter(|b| !b.trim().is_empty()).ok_or(
                "name the artifacts bucket with --bucket or CONVEYOR_ARTIFACTS_BUCKET (the stack output ArtifactsBucketName)",
            )?;
            let loaded = match &environment {
                Some(_) => {
                    let settings = aws.settings(config.as_deref());
                    Some(Config::load(&settings.config_path).map_err(|e| e.to_string())?)
                }
                None => None,
            };
            let environment = match (&environment, &loaded) {
                (Some(name), Some(config)) => Some(config.environment(name).ok_or_else(|| {
                    let known: Vec<_> = config.environments.iter().map(|e| e.name.as_str()).collect();
                    format!("no environment `{name}` in the configuration (known: {})", known.join(", "))
                })?),
                _ => None,
            };
            let target = ops::ArtifactTarget { bucket: &bucket, repository: &repository, sha: &sha, environment };
            let artifacts = conveyor_shared::s3::Artifacts::new(&aws.sdk().await);
            let size = std::fs::metadata(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?.len();
            let show = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let progress = |sent: u64| {
                if show {
                    let percent = (sent * 100).checked_div(size).unwrap_or(100);
                    eprint!("\ruploading {}: {} of {} MiB ({percent}%)", file.display(), sent >> 20, size >> 20);
                }
            };
            let (url, sha256) = ops::push_artifact_file(&artifacts, &target, &file, ARTIFACT_PART_SIZE, progress)
                .await
                .map_err(|e| e.to_string())?;
            if show {
                eprintln!();
            }
            println!("{url} sha256={sha256}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Agent { command: AgentCommand::Forget { environment, instance } } => {
            let (_, table) = aws.table().await;
            let forgot = table.forget_enrollment(&environment, &instance).await.map_err(|e| e.to_string())?;
            if forgot {
                println!("{instance} in {environment}: forgotten; the next agent to poll for it enrols");
            } else {
                println!("{instance} in {environment}: no agent was enrolled");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { environment } => {
            let (_, table) = aws.table().await;
            print!("{}", ops::status(&table, &environment).await.map_err(|e| e.to_string())?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Images { command: ImagesCommand::Rollback { provider, to, config } } => {
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
        Command::Wait { environment, sha, timeout, json, config } => {
            let settings = aws.settings(config.as_deref());
            let known = match (config.is_some() || settings.config_path.exists())
                .then(|| Config::load(&settings.config_path))
            {
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
        Command::Alerts { limit, json } => {
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
        #[cfg(feature = "dev")]
        Command::Routes => {
            println!("{}", serde_json::to_string_pretty(&dev::routes_json()).map_err(|e| e.to_string())?);
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "dev")]
        Command::Dev { listen, config } => {
            let settings = aws.settings(config.as_deref());
            let config = Config::load(&settings.config_path).map_err(|e| e.to_string())?;
            let sdk = aws.sdk().await;
            if dev::prepare_local_table(&settings, &sdk).await.map_err(|e| e.to_string())? {
                println!("created table {} in the local emulator", settings.table);
            }
            let functions = dev::functions(
                config,
                &settings,
                &dev::WebhookSecrets::from_env(),
                deploy_fanout::Timing::from_env(),
                &sdk,
            )
            .await
            .map_err(|e| e.to_string())?;
            let listener = dev::bind(listen).await.map_err(|e| e.to_string())?;
            let addr = listener.local_addr().map_err(|e| e.to_string())?;
            println!("conveyor dev listening on http://{addr} (table {})", settings.table);
            for function in functions.http.iter() {
                for route in function.routes() {
                    println!("  {:6} {:34} -> {}", route.method, route.path, function.name());
                }
            }
            for function in &functions.streams {
                println!("  {:6} {:34} -> {}", "STREAM", format!("table {}", settings.table), function.name());
            }
            for function in &functions.schedules {
                println!("  {:6} {:34} -> {}", "EVERY", format!("{:?}", function.every()), function.name());
            }
            dev::run(listener, functions, &settings.table, &sdk, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .map_err(|e| e.to_string())?;
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "dev")]
        Command::Replay { file, url, event, delivery, record, config } => {
            let sender = match event {
                Some(event) => replay::Sender::GitHub { event },
                None => replay::Sender::of(&file).map_err(|e| e.to_string())?,
            };
            if record {
                // Only pushes can outgrow Lambda's 6 MB; a build event could start a deployment
                // and is always small enough to be redelivered by GitHub.
                let replay::Sender::GitHub { event } = &sender else {
                    return Err("--record takes GitHub pushes (Stripe events are at most 1 MB)".into());
                };
                if event != "push" {
                    return Err(format!(
                        "--record takes `push` deliveries only (this is `{event}`): redeliver other events from GitHub"
                    ));
                }
                if std::env::var("CONVEYOR_TABLE").map_or(true, |t| t.trim().is_empty()) {
                    return Err(
                        "--record writes to the table CONVEYOR_TABLE names: set it to the stack's TableName output"
                            .into(),
                    );
                }
                let settings = aws.settings(config.as_deref());
                eprintln!(
                    "recording into table {} with {} (it must match the conveyor.toml the stack runs)",
                    settings.table,
                    settings.config_path.display()
                );
                let loaded = Config::load(&settings.config_path).map_err(|e| e.to_string())?;
                let table = Table::from_sdk(&aws.sdk().await, settings.table.clone());
                let body = replay::read(&file).map_err(|e| e.to_string())?;
                let delivery = delivery.unwrap_or_default();
                let reply = replay::record_github(
                    table,
                    std::sync::Arc::new(loaded),
                    &settings.artifacts_bucket,
                    event,
                    &delivery,
                    body,
                )
                .await?;
                println!(
                    "{event} {delivery} {} -> recorded in {}: {} {}",
                    file.display(),
                    settings.table,
                    reply.status,
                    reply.body
                );
                return Ok(if reply.status < 300 { ExitCode::SUCCESS } else { ExitCode::FAILURE });
            }
            let url = url.unwrap_or_else(|| format!("http://127.0.0.1:3000{}", sender.path()));
            let body = replay::read(&file).map_err(|e| e.to_string())?;
            let (label, reply) = match &sender {
                replay::Sender::GitHub { event } => {
                    let secret = dev::replay_secret(GITHUB_WEBHOOK_SECRET).ok_or(
                        "replay signs GitHub deliveries with GITHUB_WEBHOOK_SECRET; set it to the dev server's secret",
                    )?;
                    let delivery = delivery.unwrap_or_else(replay::new_delivery_id);
                    let reply = replay::post(&url, event, &delivery, body, &secret).await;
                    (format!("{event} {delivery}"), reply)
                }
                replay::Sender::Stripe => {
                    let secret = dev::replay_secret(STRIPE_WEBHOOK_SECRET).ok_or(
                        "replay signs Stripe events with STRIPE_WEBHOOK_SECRET; set it to the dev server's secret",
                    )?;
                    ("stripe".to_string(), replay::post_stripe(&url, body, &secret).await)
                }
            };
            let reply = reply.map_err(|e| e.to_string())?;
            println!("{label} {} -> {} {}", file.display(), reply.status, reply.body);
            Ok(if reply.status < 300 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
    }
}
