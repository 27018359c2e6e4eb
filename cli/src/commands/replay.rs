//! `conveyor replay`: sign a sample webhook and post it, or record it straight into the table.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use conveyor_cli::context::AwsFlags;
use conveyor_cli::{dev, replay};
use conveyor_shared::config::{Config, GITHUB_WEBHOOK_SECRET, STRIPE_WEBHOOK_SECRET};
use conveyor_shared::store::Table;

#[derive(Args)]
pub struct ReplayArgs {
    /// A payload file: events/github/<event>/*.json or events/stripe/*.json.
    pub file: PathBuf,
    /// Where to post (default: http://127.0.0.1:3000/webhooks/github or .../stripe).
    #[arg(long)]
    pub url: Option<String>,
    /// The X-GitHub-Event to send (default: the file's folder name).
    #[arg(long)]
    pub event: Option<String>,
    /// The X-GitHub-Delivery GUID (default: a new one; repeat one to test dedupe).
    #[arg(long)]
    pub delivery: Option<String>,
    /// Record a GitHub push straight into the table (CONVEYOR_TABLE, AWS credentials) with
    /// the intake's own code instead of posting it: for a push over Lambda's 6 MB that AWS
    /// refused, saved from GitHub's delivery log (give its GUID with --delivery).
    #[arg(long, requires = "delivery", conflicts_with = "url")]
    pub record: bool,
    /// conveyor.toml, with --record (default: CONVEYOR_CONFIG, then ./conveyor.toml).
    #[arg(long, requires = "record")]
    pub config: Option<PathBuf>,
}

impl ReplayArgs {
    pub async fn run(self, aws: &AwsFlags) -> Result<ExitCode, String> {
        let Self { file, url, event, delivery, record, config } = self;
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
                    "--record writes to the table CONVEYOR_TABLE names: set it to the stack's TableName output".into(),
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
