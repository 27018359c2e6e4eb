//! Health checks: the conditions a run is judged by (Gatus's syntax) and a check's state
//! across runs (thresholds, reminders, one notice per transition).

pub mod condition;
pub mod state;

pub use condition::{Condition, Observation};
pub use state::{CheckState, Health, Notice, Thresholds, observe};
