//! Proving the instance to the server without a token: a `GetCallerIdentity` request to STS
//! signed with the instance profile's credentials, which the server sends to STS to learn
//! the caller (`assumed-role/<role>/<instance-id>`). The credentials never leave the
//! instance; the signed request is good for 15 minutes, for this environment only (the
//! signed `x-conveyor-audience` header).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use crate::run::AgentError;

const IMDS: &str = "http://169.254.169.254/latest";
const GET_CALLER_IDENTITY: &str = "Action=GetCallerIdentity&Version=2011-06-15";
const CONTENT_TYPE: &str = "application/x-www-form-urlencoded; charset=utf-8";

/// A signed request, as the poll carries it (`"proof"`).
pub use conveyor_protocol::InstanceProof;

/// Temporary AWS credentials.
pub struct AwsCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

/// Where the proof is signed for, and with what.
pub struct Signer {
    pub endpoint: String,
    pub region: String,
    pub credentials: AwsCredentials,
}

impl Signer {
    /// From the environment the AWS SDKs read (`AWS_ACCESS_KEY_ID`, `AWS_REGION`,
    /// `AWS_ENDPOINT_URL_STS` or `AWS_ENDPOINT_URL`), else from the instance metadata service
    /// (the instance profile's credentials, the instance's region): read anew for each proof,
    /// since instance profile credentials rotate.
    pub async fn discover(http: &reqwest::Client) -> Result<Self, AgentError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let credentials = match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
            (Some(access_key_id), Some(secret_access_key)) => {
                AwsCredentials { access_key_id, secret_access_key, session_token: var("AWS_SESSION_TOKEN") }
            }
            _ => instance_profile_credentials(http).await?,
        };
        let region = match var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION")) {
            Some(region) => region,
            None => imds_get(http, "meta-data/placement/region")
                .await
                .map_err(|e| AgentError::Config(format!("cannot read the region from IMDSv2 ({e}); set AWS_REGION")))?,
        };
        let endpoint = var("AWS_ENDPOINT_URL_STS")
            .or_else(|| var("AWS_ENDPOINT_URL"))
            .unwrap_or_else(|| format!("https://sts.{region}.amazonaws.com"));
        Ok(Self { endpoint, region, credentials })
    }

    /// Signs a `GetCallerIdentity` for `environment`'s agent channel, at `now`.
    pub fn prove(&self, environment: &str, now: SystemTime) -> Result<InstanceProof, AgentError> {
        let audience = [("x-conveyor-audience", format!("conveyor:{environment}"))];
        let headers = self.sign(GET_CALLER_IDENTITY, &audience, now)?;
        Ok(InstanceProof { headers, body: GET_CALLER_IDENTITY.to_owned() })
    }

    /// Signs an STS query `body` (POSTed to the endpoint) with `extra` headers; answers every
    /// header the request is sent with, names in lower case.
    pub fn sign(
        &self,
        body: &str,
        extra: &[(&str, String)],
        now: SystemTime,
    ) -> Result<BTreeMap<String, String>, AgentError> {
        use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
        let failed = |e: &dyn std::fmt::Display| AgentError::Config(format!("cannot sign the instance proof: {e}"));
        let host = self.endpoint.split("://").nth(1).unwrap_or(&self.endpoint).split('/').next().unwrap_or_default();
        let mut headers: BTreeMap<String, String> =
            [("host", host.to_owned()), ("content-type", CONTENT_TYPE.to_owned())]
                .into_iter()
                .chain(extra.iter().cloned())
                .map(|(name, value)| (name.to_owned(), value))
                .collect();
        let credentials = &self.credentials;
        let identity = aws_credential_types::Credentials::new(
            &credentials.access_key_id,
            &credentials.secret_access_key,
            credentials.session_token.clone(),
            None,
            "conveyor-agent",
        )
        .into();
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("sts")
            .time(now)
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| failed(&e))?
            .into();
        let request = SignableRequest::new(
            "POST",
            &self.endpoint,
            headers.iter().map(|(name, value)| (name.as_str(), value.as_str())),
            SignableBody::Bytes(body.as_bytes()),
        )
        .map_err(|e| failed(&e))?;
        let (instructions, _) = sign(request, &params).map_err(|e| failed(&e))?.into_parts();
        for (name, value) in instructions.headers() {
            headers.insert(name.to_ascii_lowercase(), value.to_owned());
        }
        Ok(headers)
    }
}

/// The instance profile's current credentials (IMDSv2).
async fn instance_profile_credentials(http: &reqwest::Client) -> Result<AwsCredentials, AgentError> {
    let fail = |e: String| {
        AgentError::Config(format!(
            "cannot read the instance profile's credentials from IMDSv2 ({e}): attach the agent role's instance profile, or give the agent --token-file"
        ))
    };
    let roles = imds_get(http, "meta-data/iam/security-credentials/").await.map_err(fail)?;
    let role = roles.lines().next().map(str::trim).filter(|r| !r.is_empty()).ok_or_else(|| fail("no role".into()))?;
    let document = imds_get(http, &format!("meta-data/iam/security-credentials/{role}")).await.map_err(fail)?;
    let value: serde_json::Value = serde_json::from_str(&document).map_err(|e| fail(e.to_string()))?;
    let field = |name: &str| value[name].as_str().map(str::to_owned).ok_or_else(|| fail(format!("no {name}")));
    Ok(AwsCredentials {
        access_key_id: field("AccessKeyId")?,
        secret_access_key: field("SecretAccessKey")?,
        session_token: Some(field("Token")?),
    })
}

/// One IMDSv2 read (a session token first). Errors say what failed, never a value.
pub async fn imds_get(http: &reqwest::Client, path: &str) -> Result<String, String> {
    let timeout = Duration::from_secs(2);
    let token = http
        .put(format!("{IMDS}/api/token"))
        .header("X-aws-ec2-metadata-token-ttl-seconds", "300")
        .timeout(timeout)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| e.to_string())?
        .text()
        .await
        .map_err(|e| e.to_string())?;
    http.get(format!("{IMDS}/{path}"))
        .header("X-aws-ec2-metadata-token", token)
        .timeout(timeout)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| e.to_string())?
        .text()
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_signs_the_audience_and_host_and_carries_no_secret_key() {
        let signer = Signer {
            endpoint: "https://sts.eu-west-1.amazonaws.com".into(),
            region: "eu-west-1".into(),
            credentials: AwsCredentials {
                access_key_id: "ASIAEXAMPLE".into(),
                secret_access_key: "very-secret".into(),
                session_token: Some("session".into()),
            },
        };
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        let proof = signer.prove("production", at).unwrap();
        assert_eq!(proof.body, GET_CALLER_IDENTITY);
        assert_eq!(proof.headers["host"], "sts.eu-west-1.amazonaws.com");
        assert_eq!(proof.headers["x-conveyor-audience"], "conveyor:production");
        assert_eq!(proof.headers["x-amz-security-token"], "session");
        let authorization = &proof.headers["authorization"];
        assert!(authorization.starts_with("AWS4-HMAC-SHA256 Credential=ASIAEXAMPLE/"), "{authorization}");
        assert!(authorization.contains("/eu-west-1/sts/aws4_request"), "{authorization}");
        let signed = authorization.split("SignedHeaders=").nth(1).unwrap().split(',').next().unwrap();
        assert!(signed.split(';').any(|h| h == "host") && signed.contains("x-conveyor-audience"), "{signed}");
        assert!(!format!("{proof:?}").contains("very-secret"));
    }
}
