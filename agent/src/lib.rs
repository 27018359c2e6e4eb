//! The instance agent's building blocks. The polling loop that drives them against the
//! deploy channel comes with the `deploy-fanout` function.
//!
//! - [`releases`]: releases side by side under `releases/<version>/`, a `current` symlink
//!   switched atomically, crash recovery, pruning.
//! - [`hooks`]: the release's own hooks (`conveyor-hooks.toml` inside the artifact), each
//!   with a timeout and an output tail for the report.

pub mod hooks;
pub mod releases;
