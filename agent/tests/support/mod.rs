//! What the agent tests share: sessions of an IAM role from the emulator's STS, as EC2 hands
//! an instance profile's credentials to the instance (session name = instance id).

pub mod rig;

use conveyor_agent::proof::{AwsCredentials, Signer};

/// The role the dev server trusts by default (`conveyor dev`'s local agent role).
pub const AGENT_ROLE: &str = conveyor_cli::dev::LOCAL_AGENT_ROLE;

/// A session of `role` named `session` (an instance id, for an instance profile), as EC2
/// hands it to the instance; in the emulator the administrator plays EC2. The role holds the
/// template's AgentRole policy.
pub async fn assume(role: &str, session: &str) -> AwsCredentials {
    let iam = conveyor_cli::local_iam::LocalIam::new(&conveyor_e2e::sdk().await).await.unwrap();
    let resources = conveyor_cli::local_iam::Resources::new("us-east-1", "unused", "unused");
    let policy = conveyor_e2e::template().agent_policy(&resources).unwrap();
    let name = role.rsplit('/').next().unwrap();
    let credentials = iam.assume(name, &policy, session).await.unwrap();
    AwsCredentials {
        access_key_id: credentials.access_key_id().to_owned(),
        secret_access_key: credentials.secret_access_key().to_owned(),
        session_token: credentials.session_token().map(str::to_owned),
    }
}

/// Signs proofs as the agent on `instance` does, with its instance profile session.
pub async fn instance_signer(instance: &str) -> Signer {
    signer(assume(AGENT_ROLE, instance).await, &conveyor_e2e::endpoint())
}

/// A signer for STS at `endpoint` with `credentials`.
pub fn signer(credentials: AwsCredentials, endpoint: &str) -> Signer {
    Signer { endpoint: endpoint.to_owned(), region: "us-east-1".into(), credentials }
}
