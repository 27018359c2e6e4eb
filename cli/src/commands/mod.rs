//! One module per command: its flags (with help on each) and what it does.

pub mod agent;
pub mod alerts;
pub mod artifact;
pub mod checks;
pub mod config;
#[cfg(feature = "dev")]
pub mod dev;
pub mod images;
pub mod publish;
#[cfg(feature = "dev")]
pub mod replay;
#[cfg(feature = "dev")]
pub mod routes;
pub mod status;
pub mod token;
pub mod wait;
