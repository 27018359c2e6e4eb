//! Pure domain code: what an outside event means and what Conveyor records for it.
//! Nothing here performs I/O; the functions decide here and act through [`crate::store`].

pub mod alarm;
pub mod alert;
pub mod checks;
pub mod dispatch;
pub mod fleet;
pub mod gate;
pub mod github;
pub mod instance_proof;
pub mod intake;
pub mod invalidation;
pub mod packer;
pub mod publish;
pub mod records;
pub mod rollout;
pub mod stripe;
pub mod text;

pub use records::{
    BranchHead, BuildRecord, CommitRecord, DeploymentRecord, DeploymentState, PushRecord, RefKind, RunState,
    deployment_id,
};
