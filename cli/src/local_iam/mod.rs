//! IAM in the local emulator. Each function runs with a session of a role whose policy is
//! that function's policy in the SAM template (the expanded template `make lint` writes),
//! with the template's references resolved to the emulator's resources; so a call that the
//! template does not allow fails locally exactly where it would fail in AWS. The emulator
//! enforces what the roles allow when it is started with IAM on (scripts/with-moto does).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use conveyor_shared::SdkConfig;
use conveyor_shared::config::{ChannelKind, Config};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

mod template;

pub use template::Template;

/// The emulator's one account.
pub const ACCOUNT: &str = "123456789012";

/// Where `make lint` (scripts/check_template.py) writes the expanded template.
pub const EXPANDED_TEMPLATE: &str = "target/lint/expanded.json";

#[derive(Debug, thiserror::Error)]
pub enum IamError {
    #[error("cannot read the expanded template {path}: {message} (run `make lint`, or scripts/expand-template)")]
    Read { path: PathBuf, message: String },
    #[error("the template has no {0}")]
    Missing(String),
    #[error("the template's {what} cannot be resolved: {why}")]
    Unresolved { what: String, why: String },
    #[error("the emulator answered {action} with {code}: {message}")]
    Refused { action: String, code: String, message: String },
    #[error("cannot reach the emulator's IAM: {0}")]
    Unreachable(String),
    #[error("no credentials to make the local roles with: {0}")]
    NoCredentials(String),
}

/// The emulator's resources that the template's references stand for.
#[derive(Debug, Clone)]
pub struct Resources {
    pub region: String,
    pub table: String,
    pub artifacts_bucket: String,
    /// Template parameters by name: a string, or a list of strings for a
    /// `CommaDelimitedList`; a parameter not given takes the template's default.
    pub parameters: BTreeMap<String, Value>,
}

impl Resources {
    pub fn new(region: &str, table: &str, artifacts_bucket: &str) -> Self {
        Self {
            region: region.to_owned(),
            table: table.to_owned(),
            artifacts_bucket: artifacts_bucket.to_owned(),
            parameters: BTreeMap::new(),
        }
    }

    /// The parameters an operator deploying `config` sets: its sites' distributions, its
    /// launch templates, the email identity its channels send from, self-healing when a
    /// check reboots.
    pub fn for_config(mut self, config: &Config) -> Self {
        let (region, account) = (self.region.clone(), ACCOUNT);
        let distributions: Vec<Value> = config
            .sites
            .iter()
            .map(|site| json!(format!("arn:aws:cloudfront::{account}:distribution/{}", site.distribution)))
            .collect();
        if !distributions.is_empty() {
            self.parameters.insert("SiteDistributionArns".into(), Value::Array(distributions));
        }
        // Locally templates are named, not listed by id: any launch template of the account.
        let templates: Vec<Value> = config
            .providers
            .iter()
            .flat_map(|p| &p.launch_templates)
            .map(|t| json!(format!("arn:aws:ec2:{}:{account}:launch-template/*", t.region)))
            .collect();
        if !templates.is_empty() {
            self.parameters.insert("LaunchTemplateArns".into(), Value::Array(templates));
        }
        // SES authorises a send against the sender's own identity when the address is
        // verified (as locally), else against its domain's.
        let sender = config.channels.iter().filter(|c| c.kind == ChannelKind::Email).find_map(|c| c.from.clone());
        if let Some(from) = sender {
            let address = from.rsplit('<').next().unwrap_or(&from).trim_end_matches('>').trim().to_owned();
            self.parameters.insert(
                "AlertEmailIdentityArn".into(),
                json!(format!("arn:aws:ses:{region}:{account}:identity/{address}")),
            );
        }
        if config.checks.iter().any(|check| check.reboot) {
            self.parameters.insert("EnableSelfHealing".into(), json!("true"));
        }
        self
    }

    /// Sets one template parameter.
    pub fn with(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.parameters.insert(name.to_owned(), value.into());
        self
    }
}

/// The emulator's IAM and STS, called as an administrator (the credentials the caller's
/// SDK configuration holds).
pub struct LocalIam {
    http: reqwest::Client,
    sdk: SdkConfig,
    endpoint: String,
    region: String,
    admin: Credentials,
}

impl LocalIam {
    pub async fn new(sdk: &SdkConfig) -> Result<Self, IamError> {
        let endpoint = sdk
            .endpoint_url()
            .map(str::to_owned)
            .ok_or_else(|| IamError::Unreachable("no endpoint: local roles are made in the emulator only".into()))?;
        let provider = sdk.credentials_provider().ok_or_else(|| IamError::NoCredentials("none configured".into()))?;
        let admin = provider.provide_credentials().await.map_err(|e| IamError::NoCredentials(e.to_string()))?;
        let region = sdk.region().map_or_else(|| "us-east-1".to_owned(), |r| r.to_string());
        let http = reqwest::Client::builder().build().map_err(|e| IamError::Unreachable(e.to_string()))?;
        Ok(Self { http, sdk: sdk.clone(), endpoint, region, admin })
    }

    /// The SDK configuration of a fresh session of the role `name`, made (or updated) with
    /// `policy`; `session` names the session (an instance id, for an agent).
    pub async fn session(&self, name: &str, policy: &Value, session: &str) -> Result<SdkConfig, IamError> {
        let credentials = self.assume(name, policy, session).await?;
        Ok(self.sdk.to_builder().credentials_provider(SharedCredentialsProvider::new(credentials)).build())
    }

    /// Makes (or updates) the role `name` with `policy` and answers a session's credentials.
    pub async fn assume(&self, name: &str, policy: &Value, session: &str) -> Result<Credentials, IamError> {
        // Anyone in the account may assume it: locally the administrator plays EC2 and Lambda.
        let trust = json!({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]});
        let created = self
            .call(
                "iam",
                &[
                    ("Action", "CreateRole"),
                    ("RoleName", name),
                    ("AssumeRolePolicyDocument", &trust.to_string()),
                    ("MaxSessionDuration", "43200"),
                    ("Version", "2010-05-08"),
                ],
            )
            .await;
        match created {
            Err(IamError::Refused { code, .. }) if code == "EntityAlreadyExists" => {}
            other => {
                other?;
            }
        }
        if policy["Statement"].as_array().is_some_and(|s| !s.is_empty()) {
            self.call(
                "iam",
                &[
                    ("Action", "PutRolePolicy"),
                    ("RoleName", name),
                    ("PolicyName", "template"),
                    ("PolicyDocument", &policy.to_string()),
                    ("Version", "2010-05-08"),
                ],
            )
            .await?;
        }
        let arn = format!("arn:aws:iam::{ACCOUNT}:role/{name}");
        let answer = self
            .call(
                "sts",
                &[
                    ("Action", "AssumeRole"),
                    ("RoleArn", &arn),
                    ("RoleSessionName", session),
                    ("DurationSeconds", "43200"),
                    ("Version", "2011-06-15"),
                ],
            )
            .await?;
        let field = |name: &str| {
            element(&answer, name).ok_or_else(|| IamError::Unreachable(format!("AssumeRole answered without {name}")))
        };
        Ok(Credentials::new(
            field("AccessKeyId")?,
            field("SecretAccessKey")?,
            Some(field("SessionToken")?),
            None,
            "local-role",
        ))
    }

    /// One signed Query API call; answers the body of a 2xx.
    async fn call(&self, service: &str, params: &[(&str, &str)]) -> Result<String, IamError> {
        use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
        let action = params.iter().find(|(k, _)| *k == "Action").map_or("?", |(_, v)| v).to_owned();
        let body = query_body(params);
        let url = format!("{}/", self.endpoint.trim_end_matches('/'));
        let host = url.split("://").nth(1).unwrap_or_default().split('/').next().unwrap_or_default().to_owned();
        let headers = [("host", host.as_str()), ("content-type", "application/x-www-form-urlencoded; charset=utf-8")];
        let identity = self.admin.clone().into();
        let unsigned = |e: &dyn std::fmt::Display| IamError::Unreachable(format!("cannot sign {action}: {e}"));
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name(service)
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| unsigned(&e))?
            .into();
        let request = SignableRequest::new("POST", &url, headers.into_iter(), SignableBody::Bytes(body.as_bytes()))
            .map_err(|e| unsigned(&e))?;
        let (instructions, _) = sign(request, &params).map_err(|e| unsigned(&e))?.into_parts();
        let mut request = self.http.post(&url).body(body);
        for (name, value) in headers.into_iter().filter(|(name, _)| *name != "host") {
            request = request.header(name, value);
        }
        for (name, value) in instructions.headers() {
            request = request.header(name, value);
        }
        let response = request.send().await.map_err(|e| IamError::Unreachable(e.to_string()))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| IamError::Unreachable(e.to_string()))?;
        if status.is_success() {
            return Ok(text);
        }
        Err(IamError::Refused {
            action,
            code: element(&text, "Code").unwrap_or_else(|| format!("HTTP {}", status.as_u16())),
            message: element(&text, "Message").unwrap_or_default(),
        })
    }
}

/// A Query API body, encoded as botocore encodes it (everything but `A-Za-z0-9-_.~`):
/// the emulator checks the signature over the parameters it decoded and encoded again.
fn query_body(params: &[(&str, &str)]) -> String {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');
    let encode = |text: &str| utf8_percent_encode(text, UNRESERVED).to_string().replace("%20", "+");
    params.iter().map(|(name, value)| format!("{}={}", encode(name), encode(value))).collect::<Vec<_>>().join("&")
}

/// The text of the first `<name>` element of an XML answer.
fn element(text: &str, name: &str) -> Option<String> {
    let (open, close) = (format!("<{name}>"), format!("</{name}>"));
    let start = text.find(&open)? + open.len();
    let len = text[start..].find(&close)?;
    Some(text[start..start + len].trim().to_owned())
}

/// Each function's AWS configuration: in AWS its execution role's; locally a session of
/// the role [`function_roles`] made from the template.
#[derive(Clone)]
pub struct FunctionSdks {
    shared: SdkConfig,
    own: HashMap<String, SdkConfig>,
}

impl FunctionSdks {
    /// Every function with `sdk` (the caller's own credentials).
    pub fn shared(sdk: &SdkConfig) -> Self {
        Self { shared: sdk.clone(), own: HashMap::new() }
    }

    pub fn of(&self, function: &str) -> &SdkConfig {
        self.own.get(function).unwrap_or(&self.shared)
    }

    /// The configuration every function's calls fall back to (the dev server's own work:
    /// reading the table's stream as Lambda does).
    pub fn caller(&self) -> &SdkConfig {
        &self.shared
    }

    /// The same sessions, with `sdk` as [`FunctionSdks::caller`].
    pub fn calling_as(self, sdk: &SdkConfig) -> Self {
        Self { shared: sdk.clone(), ..self }
    }
}

/// A role name unique to `function` on `table` (roles of concurrent tests never meet),
/// within IAM's 64 characters.
pub fn role_name(function: &str, table: &str) -> String {
    let digest = hex::encode(Sha256::digest(table.as_bytes()));
    format!("conveyor-{function}-{}", &digest[..12])
}

/// Makes one role per function of `template`, with its policy resolved against
/// `resources`, and answers every function's session; `sdk` is the administrator's.
pub async fn function_roles(
    template: &Template,
    resources: &Resources,
    sdk: &SdkConfig,
) -> Result<FunctionSdks, IamError> {
    let iam = LocalIam::new(sdk).await?;
    let mut own = HashMap::new();
    for function in template.functions() {
        let policy = template.function_policy(&function, resources)?;
        let session = iam.session(&role_name(&function, &resources.table), &policy, &function).await?;
        own.insert(function, session);
    }
    // The agents' instance role, which EC2 (played by the administrator) lets instances assume.
    let agent = template.agent_policy(resources)?;
    iam.assume(crate::dev::LOCAL_AGENT_ROLE.rsplit('/').next().unwrap_or("conveyor-agent"), &agent, "agent-role-check")
        .await?;
    Ok(FunctionSdks { shared: sdk.clone(), own })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_bodies_are_encoded_as_botocore_encodes_them() {
        assert_eq!(
            query_body(&[("Action", "PutRolePolicy"), ("PolicyDocument", r#"{"Resource":"arn:*"} x~"#)]),
            "Action=PutRolePolicy&PolicyDocument=%7B%22Resource%22%3A%22arn%3A%2A%22%7D+x~"
        );
    }

    #[test]
    fn role_names_are_unique_per_table_and_fit_iam() {
        let a = role_name("alert-dispatch", "conveyor-test-1234-999999999-12");
        assert_ne!(a, role_name("alert-dispatch", "conveyor-test-1234-999999999-13"));
        assert!(a.len() <= 64, "{a}");
    }
}
