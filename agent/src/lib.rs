//! The instance agent: it polls the deploy channel over outgoing HTTP(S) only (nothing
//! listens on the instance), installs the release it is handed, and reports.
//!
//! - [`run`]: the polling loop and one deploy, step by step.
//! - [`releases`]: releases side by side under `releases/<version>/`, a `current` symlink
//!   switched atomically, crash recovery, pruning.
//! - [`hooks`]: the release's own hooks (`conveyor-hooks.toml` inside the artifact), each
//!   with a timeout and an output tail for the report.
//! - [`proof`]: without a token, proving the instance with its instance profile.

pub mod hooks;
pub mod proof;
pub mod releases;
pub mod run;
