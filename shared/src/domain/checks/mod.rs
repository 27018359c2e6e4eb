//! Health checks: the conditions a run is judged by (Gatus's syntax) and a check's state
//! across runs (thresholds, reminders, one notice per transition).

pub mod certificate;
pub mod condition;
pub mod instances;
pub mod run;
pub mod state;

pub use condition::{Condition, Observation};
pub use run::{CheckAlert, CheckWrite, Incident, RunPlan, StoredCheck, plan_run, shown_url};
pub use state::{CheckState, Health, Notice, Thresholds, observe};
