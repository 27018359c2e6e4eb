//! `conveyor artifact push`: a build's artifact where the intake looks for it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use conveyor_cli::context::AwsFlags;
use conveyor_cli::ops;
use conveyor_shared::config::Config;

/// Artifacts larger than this go up in parts of this size.
const ARTIFACT_PART_SIZE: u64 = 64 * 1024 * 1024;

#[derive(Subcommand)]
pub enum ArtifactCommand {
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
impl ArtifactCommand {
    pub async fn run(self, aws: &AwsFlags) -> Result<ExitCode, String> {
        match self {
            ArtifactCommand::Push { file, sha, repository, environment, config, bucket } => {
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
        }
    }
}
