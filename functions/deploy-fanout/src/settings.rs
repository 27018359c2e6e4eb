//! Why the fan-out cannot start. What it reads from its environment (timings, the roles
//! whose instances may prove themselves) is read in `conveyor_shared::config::settings`.

use conveyor_shared::config::{LoadError, SettingsError};

/// Why the function cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Sts(#[from] conveyor_shared::sts::StsError),
}
