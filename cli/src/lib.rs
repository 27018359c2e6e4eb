//! The `conveyor` command's library, so that tests drive exactly what the binary runs: the
//! operator's commands (`ops`, `wait`) and, with the `dev` feature (on by default), the local
//! dev server with every function built in and the replay client.

pub mod context;
#[cfg(feature = "dev")]
pub mod dev;
#[cfg(feature = "dev")]
pub mod local_iam;
pub mod ops;
pub mod publish;
#[cfg(feature = "dev")]
pub mod replay;
#[cfg(feature = "dev")]
pub mod triggers;
pub mod wait;
