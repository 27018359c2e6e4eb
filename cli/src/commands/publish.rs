//! `conveyor publish DIR --site NAME`: a build to its site's bucket, only what changed.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use conveyor_cli::context::AwsFlags;
use conveyor_cli::publish::{self, Live, Publish, Summary};

/// Between reads of the publish while --wait waits.
const POLL: std::time::Duration = std::time::Duration::from_secs(5);
use conveyor_shared::config::Config;
use conveyor_shared::domain::publish::PublishState;
use conveyor_shared::s3::SiteBucket;

#[derive(Args)]
pub struct PublishArgs {
    /// The build's output directory (like ./dist).
    pub dir: PathBuf,
    /// The `[[site]]` of conveyor.toml to publish to.
    #[arg(long)]
    pub site: String,
    /// The configuration that defines the site.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Print what would change and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Stop, deleting nothing, when the publish would delete more objects than this (the
    /// site's max_delete, 256 by default).
    #[arg(long)]
    pub max_delete: Option<usize>,
    /// Then wait until the new version is live: its invalidation completed (exit 0), failed
    /// (1), or --timeout passed first (3).
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits (90s, 10m, 1h).
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    pub timeout: std::time::Duration,
    /// Print the summary as one JSON object.
    #[arg(long)]
    pub json: bool,
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    conveyor_shared::config::Seconds::parse(text).map(|s| std::time::Duration::from_secs(s.0))
}

impl PublishArgs {
    pub async fn run(self, aws: &AwsFlags) -> Result<ExitCode, String> {
        let settings = aws.settings(self.config.as_deref());
        let config = Config::load(&settings.config_path).map_err(|e| e.to_string())?;
        let site = config.site(&self.site).ok_or_else(|| {
            let known: Vec<_> = config.sites.iter().map(|s| s.name.as_str()).collect();
            format!(
                "no site `{}` in {} (known: {}); add a [[site]] with name, bucket and distribution",
                self.site,
                settings.config_path.display(),
                if known.is_empty() { "none".into() } else { known.join(", ") }
            )
        })?;
        let (_, table) = aws.table().await;
        let bucket = SiteBucket::for_site(&aws.sdk().await, site);
        let request = Publish {
            site,
            dir: &self.dir,
            dry_run: self.dry_run,
            max_delete: self.max_delete,
            triggered_by: triggered_by(),
        };
        let on_terminal = std::io::stderr().is_terminal() && !self.json;
        let progress = |done: usize, total: usize| {
            if on_terminal {
                eprint!("\r  writing {done}/{total}");
                if done == total {
                    eprintln!();
                }
            }
        };
        let summary = publish::publish(&table, &bucket, &request, conveyor_shared::unix_now(), progress)
            .await
            .map_err(|e| e.to_string())?;
        if !self.json {
            print!("{}", text(&summary));
        }
        // Nothing changed this time: an earlier publish of the same build may still be on its
        // way (a CI job run again), so wait on the site's newest open publish, if any.
        let open = match (&summary.publish, self.wait) {
            (None, true) => {
                let states = [PublishState::Pending, PublishState::Uploaded, PublishState::Invalidating];
                let open = table.publishes_in(&site.name, &states).await.map_err(|e| e.to_string())?;
                open.into_iter().max_by_key(|r| r.created_at).map(|r| r.id)
            }
            _ => None,
        };
        let (Some(id), true) = (summary.publish.as_ref().or(open.as_ref()), self.wait) else {
            if self.json {
                println!("{}", serde_json::to_string(&summary).map_err(|e| e.to_string())?);
            }
            return Ok(ExitCode::SUCCESS);
        };
        let progress = |record: &conveyor_shared::domain::publish::PublishRecord| {
            eprintln!("  publish {id}: {}", record.state.as_str());
        };
        let live = publish::wait_live(&table, &site.name, id, self.timeout, POLL, progress).await;
        if self.json {
            let record = match &live {
                Live::Completed(r) | Live::Failed(r) => Some(r.as_ref()),
                Live::TimedOut(r) => r.as_deref(),
            };
            println!("{}", serde_json::json!({"summary": summary, "record": record}));
        }
        match &live {
            Live::Completed(_) => eprintln!("  live: the invalidation completed"),
            Live::Failed(record) => eprintln!("  the invalidation failed: see `conveyor alerts` ({})", record.id),
            Live::TimedOut(_) => eprintln!("  still not live after {:?}", self.timeout),
        }
        Ok(ExitCode::from(live.exit_code()))
    }
}

/// Who published: the CI job when there is one, else the user.
fn triggered_by() -> String {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    match (var("GITHUB_REPOSITORY"), var("GITHUB_RUN_ID"), var("GITHUB_ACTOR")) {
        (Some(repository), Some(run), actor) => {
            format!("github:{repository}/actions/runs/{run}{}", actor.map(|a| format!(" ({a})")).unwrap_or_default())
        }
        _ => var("USER").map_or_else(|| "unknown".into(), |user| format!("user:{user}")),
    }
}

/// The one-screen summary.
fn text(summary: &Summary) -> String {
    let mut out = String::new();
    let head = if summary.dry_run { "would publish" } else { "published" };
    if !summary.dry_run && summary.publish.is_none() {
        out.push_str(&format!("site {}: nothing changed ({} files as they are)\n", summary.site, summary.unchanged));
        return out;
    }
    out.push_str(&format!(
        "site {}: {head} {} uploaded ({} bytes), {} headers updated, {} deleted, {} unchanged{}\n",
        summary.site,
        summary.uploaded.len(),
        summary.bytes,
        summary.headers_updated.len(),
        summary.deleted.len(),
        summary.unchanged,
        if summary.resumed { " (resumed an interrupted publish)" } else { "" }
    ));
    for (label, keys) in
        [("upload", &summary.uploaded), ("headers", &summary.headers_updated), ("delete", &summary.deleted)]
    {
        for key in keys.iter().take(20) {
            out.push_str(&format!("  {label:<8} {key}\n"));
        }
        if keys.len() > 20 {
            out.push_str(&format!("  {label:<8} ... and {} more\n", keys.len() - 20));
        }
    }
    if summary.invalidation.is_empty() {
        out.push_str("  nothing to invalidate (only new files)\n");
    } else {
        out.push_str(&format!("  invalidate: {}\n", summary.invalidation.join(" ")));
    }
    if let Some(id) = &summary.publish {
        out.push_str(&format!("  publish {id}\n"));
    }
    out
}
