//! The STS adapter: sends an agent's signed `GetCallerIdentity` request (an
//! [`InstanceProof`], checked beforehand by [`crate::domain::instance_proof::check`]) and
//! reads whose it is.

use std::time::Duration;

use aws_config::SdkConfig;

use crate::domain::instance_proof::InstanceProof;

#[derive(Debug, thiserror::Error)]
pub enum StsError {
    /// STS said no: the signature, the credentials or the session are not valid. Only the
    /// code is kept: STS's message for a bad signature quotes the signed request.
    #[error("STS refused the instance proof ({code})")]
    Refused { code: String },
    /// STS could not be asked (network, throttling, a 5xx): worth trying again.
    #[error("STS could not be asked about the instance proof: {0}")]
    Unavailable(String),
    /// The HTTP client could not be built (no TLS roots, say): the function cannot start.
    #[error("cannot build the HTTP client for STS: {0}")]
    Client(String),
}

#[derive(Clone, Debug)]
pub struct Sts {
    http: reqwest::Client,
    /// The configured endpoint's scheme and host: the emulator locally (plain HTTP),
    /// `sts.<region>.amazonaws.com` in AWS.
    scheme: String,
    host: String,
}

/// Longest wait for STS before the agent is told to try again.
const TIMEOUT: Duration = Duration::from_secs(3);

/// An answer from STS is small; anything larger is not one.
const MAX_ANSWER_BYTES: usize = 16 * 1024;

impl Sts {
    pub fn new(sdk: &SdkConfig) -> Result<Self, StsError> {
        let endpoint = sdk.endpoint_url().map(str::to_owned).unwrap_or_else(|| {
            let region = sdk.region().map_or_else(|| "us-east-1".to_owned(), |r| r.to_string());
            format!("https://sts.{region}.amazonaws.com")
        });
        let (scheme, rest) = endpoint.split_once("://").unwrap_or(("https", endpoint.as_str()));
        let host = rest.split('/').next().unwrap_or_default().to_owned();
        // Redirects are not followed: the proof is good for the host it was signed for only.
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| StsError::Client(e.to_string()))?;
        Ok(Self { http, scheme: scheme.to_owned(), host })
    }

    /// The host of the configured STS endpoint.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Sends `proof` to `host` (one [`check`](crate::domain::instance_proof::check) accepted)
    /// and answers the caller's ARN.
    pub async fn caller_arn(&self, proof: &InstanceProof, host: &str) -> Result<String, StsError> {
        // The configured endpoint keeps its scheme (plain HTTP to the local emulator); AWS's
        // STS hosts are always HTTPS.
        let scheme = if host == self.host { self.scheme.as_str() } else { "https" };
        let mut request = self.http.post(format!("{scheme}://{host}/")).body(proof.body.clone());
        for (name, value) in &proof.headers {
            if name != "host" {
                request = request.header(name, value);
            }
        }
        let unavailable = |e: &dyn std::fmt::Display| StsError::Unavailable(e.to_string());
        let response = request.send().await.map_err(|e| unavailable(&e))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| unavailable(&e))?;
        let text = String::from_utf8_lossy(&body[..body.len().min(MAX_ANSWER_BYTES)]);
        let element = |name: &str| {
            let (open, close) = (format!("<{name}>"), format!("</{name}>"));
            let start = text.find(&open)? + open.len();
            let len = text[start..].find(&close)?;
            Some(text[start..start + len].trim().to_owned())
        };
        if status.is_success() {
            return element("Arn").ok_or_else(|| StsError::Unavailable("STS answered without an Arn".into()));
        }
        let code = element("Code")
            .filter(|code| code.len() <= 64 && code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.'))
            .unwrap_or_else(|| format!("HTTP {}", status.as_u16()));
        let throttled = code.contains("Throttl") || code == "RequestLimitExceeded";
        if status.is_server_error() || throttled {
            return Err(StsError::Unavailable(code));
        }
        Err(StsError::Refused { code })
    }
}
