//! The `conveyor` command's library: the local dev server and the replay client, so that
//! tests drive exactly what the binary runs.

pub mod dev;
pub mod ops;
pub mod replay;
pub mod triggers;
