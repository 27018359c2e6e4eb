//! Logging set-up: JSON lines in Lambda (CloudWatch), readable text locally.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber once. `RUST_LOG` overrides the default `info` level.
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Logs go to stderr, so that a command's output on stdout stays clean for pipes.
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_writer(std::io::stderr);
    // A second initialisation (tests, embedded dev server) keeps the first subscriber.
    let _ = if json { builder.json().flatten_event(true).without_time().try_init() } else { builder.try_init() };
}
