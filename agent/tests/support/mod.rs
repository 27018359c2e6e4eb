//! What the agent tests share: sessions of an IAM role from the emulator's STS, as EC2 hands
//! an instance profile's credentials to the instance (session name = instance id).

pub mod rig;

use conveyor_agent::proof::{AwsCredentials, Signer};

/// The role the dev server trusts by default (`conveyor dev`'s local agent role).
pub const AGENT_ROLE: &str = conveyor_cli::dev::LOCAL_AGENT_ROLE;

/// A session of `role` named `session` (an instance id, for an instance profile).
pub async fn assume(role: &str, session: &str) -> AwsCredentials {
    let endpoint = conveyor_e2e::endpoint();
    let caller = Signer {
        endpoint: endpoint.clone(),
        region: "us-east-1".into(),
        credentials: AwsCredentials {
            access_key_id: "test".into(),
            secret_access_key: "test".into(),
            session_token: None,
        },
    };
    let body = format!("Action=AssumeRole&RoleArn={role}&RoleSessionName={session}&Version=2011-06-15");
    let headers = caller.sign(&body, &[], std::time::SystemTime::now()).unwrap();
    let mut request = reqwest::Client::new().post(format!("{endpoint}/")).body(body);
    for (name, value) in headers.iter().filter(|(name, _)| *name != "host") {
        request = request.header(name, value);
    }
    let answer = request.send().await.unwrap().text().await.unwrap();
    let element = |name: &str| {
        let start =
            answer.find(&format!("<{name}>")).unwrap_or_else(|| panic!("no {name} in {answer}")) + name.len() + 2;
        answer[start..start + answer[start..].find('<').unwrap()].to_owned()
    };
    AwsCredentials {
        access_key_id: element("AccessKeyId"),
        secret_access_key: element("SecretAccessKey"),
        session_token: Some(element("SessionToken")),
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
