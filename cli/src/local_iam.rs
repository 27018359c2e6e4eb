//! IAM in the local emulator. Each function runs with a session of a role whose policy is
//! that function's policy in the SAM template (the expanded template `make lint` writes),
//! with the template's references resolved to the emulator's resources; so a call that the
//! template does not allow fails locally exactly where it would fail in AWS. The emulator
//! enforces what the roles allow when it is started with IAM on (scripts/with-moto does).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use conveyor_shared::SdkConfig;
use conveyor_shared::config::{ChannelKind, Config};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The emulator's one account.
pub const ACCOUNT: &str = "123456789012";

/// Where `make lint` (scripts/check_template.py) writes the expanded template.
pub const EXPANDED_TEMPLATE: &str = "target/lint/expanded.json";

/// The logical id of the instance role agents prove their instance with.
const AGENT_ROLE: &str = "AgentRole";

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

/// The SAM-expanded template (CloudFormation JSON).
#[derive(Debug, Clone)]
pub struct Template {
    document: Value,
}

impl Template {
    pub fn load(path: &Path) -> Result<Self, IamError> {
        let read = |message: String| IamError::Read { path: path.to_owned(), message };
        let text = std::fs::read_to_string(path).map_err(|e| read(e.to_string()))?;
        Self::parse(&text).map_err(|e| read(e.to_string()))
    }

    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        Ok(Self { document: serde_json::from_str(text)? })
    }

    fn resources(&self) -> impl Iterator<Item = (&String, &Value)> {
        self.document.get("Resources").and_then(Value::as_object).into_iter().flatten()
    }

    /// The logical id of the role of `function` (as in `functions/<name>`): the expanded
    /// template names each function's code `s3://conveyor-placeholder/<name>.zip`.
    fn function_role(&self, function: &str) -> Result<String, IamError> {
        let key = format!("{function}.zip");
        let (_, resource) = self
            .resources()
            .find(|(_, r)| {
                r["Type"] == "AWS::Lambda::Function" && r["Properties"]["Code"]["S3Key"].as_str() == Some(key.as_str())
            })
            .ok_or_else(|| IamError::Missing(format!("function {function}")))?;
        resource["Properties"]["Role"]["Fn::GetAtt"][0]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| IamError::Missing(format!("role of function {function}")))
    }

    /// Every function the template deploys, by its crate's name.
    pub fn functions(&self) -> Vec<String> {
        self.resources()
            .filter(|(_, r)| r["Type"] == "AWS::Lambda::Function")
            .filter_map(|(_, r)| r["Properties"]["Code"]["S3Key"].as_str()?.strip_suffix(".zip").map(str::to_owned))
            .collect()
    }

    /// The identity policy of `function`'s role: every inline policy's statements in one
    /// document, resolved against `resources`.
    pub fn function_policy(&self, function: &str, resources: &Resources) -> Result<Value, IamError> {
        self.role_policy(&self.function_role(function)?, resources)
    }

    /// The identity policy of the agents' instance role.
    pub fn agent_policy(&self, resources: &Resources) -> Result<Value, IamError> {
        self.role_policy(AGENT_ROLE, resources)
    }

    /// One of the operators' policies the documentation publishes (`infra/policies/*.json`),
    /// its `${...}` references (as in `Fn::Sub`) resolved against `resources`.
    pub fn operator_policy(&self, document: &Value, resources: &Resources) -> Result<Value, IamError> {
        let resolver = Resolver { template: self, resources };
        resolver.substitute_strings(document)
    }

    fn role_policy(&self, logical_id: &str, resources: &Resources) -> Result<Value, IamError> {
        let role = self.document["Resources"]
            .get(logical_id)
            .filter(|r| r["Type"] == "AWS::IAM::Role")
            .ok_or_else(|| IamError::Missing(format!("role {logical_id}")))?;
        let resolver = Resolver { template: self, resources };
        let mut statements = Vec::new();
        for policy in role["Properties"]["Policies"].as_array().into_iter().flatten() {
            let document = resolver.resolve(&policy["PolicyDocument"])?.unwrap_or(Value::Null);
            statements.extend(document["Statement"].as_array().into_iter().flatten().cloned());
        }
        Ok(json!({"Version": "2012-10-17", "Statement": statements}))
    }
}

/// CloudFormation's intrinsic functions, as far as the template's policies use them.
struct Resolver<'t> {
    template: &'t Template,
    resources: &'t Resources,
}

impl Resolver<'_> {
    fn unresolved(what: impl std::fmt::Display, why: &str) -> IamError {
        IamError::Unresolved { what: what.to_string(), why: why.to_owned() }
    }

    /// `None` is `AWS::NoValue`: the element is left out.
    fn resolve(&self, value: &Value) -> Result<Option<Value>, IamError> {
        let Some(object) = value.as_object() else {
            let Some(items) = value.as_array() else { return Ok(Some(value.clone())) };
            let mut resolved = Vec::new();
            for item in items {
                match self.resolve(item)? {
                    Some(Value::Array(inner)) => resolved.extend(inner),
                    Some(one) => resolved.push(one),
                    None => {}
                }
            }
            return Ok(Some(Value::Array(resolved)));
        };
        if object.len() == 1 {
            let (name, argument) = object.iter().next().ok_or_else(|| Self::unresolved("an object", "empty"))?;
            match name.as_str() {
                "Ref" => return self.reference(argument.as_str().unwrap_or_default()),
                "Fn::GetAtt" => return self.attribute(argument).map(Some),
                "Fn::Sub" => return self.substitute(argument).map(|s| Some(Value::String(s))),
                "Fn::Join" => return self.join(argument).map(|s| Some(Value::String(s))),
                "Fn::If" => {
                    let parts = argument
                        .as_array()
                        .filter(|p| p.len() == 3)
                        .ok_or_else(|| Self::unresolved(value, "Fn::If takes three"))?;
                    let chosen = if self.condition_named(parts[0].as_str().unwrap_or_default())? {
                        &parts[1]
                    } else {
                        &parts[2]
                    };
                    return self.resolve(chosen);
                }
                unknown if unknown.starts_with("Fn::") => {
                    return Err(Self::unresolved(value, "an intrinsic function the local roles do not resolve"));
                }
                _ => {}
            }
        }
        let mut resolved = serde_json::Map::new();
        for (key, item) in object {
            if let Some(item) = self.resolve(item)? {
                resolved.insert(key.clone(), item);
            }
        }
        Ok(Some(Value::Object(resolved)))
    }

    fn reference(&self, name: &str) -> Result<Option<Value>, IamError> {
        let resources = self.resources;
        Ok(Some(match name {
            "AWS::NoValue" => return Ok(None),
            "AWS::Partition" => json!("aws"),
            "AWS::Region" => json!(resources.region),
            "AWS::AccountId" => json!(ACCOUNT),
            "AWS::URLSuffix" => json!("amazonaws.com"),
            "AWS::StackName" => json!("conveyor"),
            "Table" => json!(resources.table),
            "ArtifactsBucket" => json!(resources.artifacts_bucket),
            _ => {
                if let Some(given) = resources.parameters.get(name) {
                    return Ok(Some(given.clone()));
                }
                let parameter = &self.template.document["Parameters"][name];
                if parameter.is_null() {
                    // Another resource of the stack (a queue, a topic): nothing the
                    // functions call through these tests, so a name that matches nothing.
                    json!(format!("local-{name}"))
                } else {
                    let default = parameter["Default"].as_str().unwrap_or_default();
                    if parameter["Type"] == "CommaDelimitedList" {
                        Value::Array(default.split(',').map(|s| json!(s.trim())).collect())
                    } else {
                        json!(default)
                    }
                }
            }
        }))
    }

    fn attribute(&self, argument: &Value) -> Result<Value, IamError> {
        let (resource, attribute) = match argument {
            Value::String(dotted) => dotted.split_once('.').unwrap_or((dotted, "")),
            Value::Array(parts) if parts.len() == 2 => {
                (parts[0].as_str().unwrap_or_default(), parts[1].as_str().unwrap_or_default())
            }
            _ => return Err(Self::unresolved(argument, "Fn::GetAtt takes a resource and an attribute")),
        };
        let Resources { region, table, artifacts_bucket, .. } = self.resources;
        Ok(json!(match (resource, attribute) {
            ("Table", "Arn") => format!("arn:aws:dynamodb:{region}:{ACCOUNT}:table/{table}"),
            ("Table", "StreamArn") => format!("arn:aws:dynamodb:{region}:{ACCOUNT}:table/{table}/stream/*"),
            ("ArtifactsBucket", "Arn") => format!("arn:aws:s3:::{artifacts_bucket}"),
            ("AgentRole", "Arn") => crate::dev::LOCAL_AGENT_ROLE.to_owned(),
            _ => format!("arn:aws:local:{region}:{ACCOUNT}:{resource}/{attribute}"),
        }))
    }

    fn text(&self, value: &Value) -> Result<String, IamError> {
        match self.resolve(value)? {
            Some(Value::String(text)) => Ok(text),
            Some(Value::Array(items)) => Ok(items.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(",")),
            Some(other) => Ok(other.to_string()),
            None => Ok(String::new()),
        }
    }

    fn substitute(&self, argument: &Value) -> Result<String, IamError> {
        let (pattern, variables) = match argument {
            Value::String(pattern) => (pattern.as_str(), None),
            Value::Array(parts) if parts.len() == 2 => (parts[0].as_str().unwrap_or_default(), parts[1].as_object()),
            _ => return Err(Self::unresolved(argument, "Fn::Sub takes a string")),
        };
        let mut out = String::new();
        let mut rest = pattern;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after.find('}').ok_or_else(|| Self::unresolved(pattern, "an unclosed ${"))?;
            let name = &after[..end];
            if let Some(literal) = name.strip_prefix('!') {
                out.push_str("${");
                out.push_str(literal);
                out.push('}');
            } else if let Some(value) = variables.and_then(|v| v.get(name)) {
                out.push_str(&self.text(value)?);
            } else if name.contains('.') && !name.starts_with("AWS::") {
                out.push_str(self.attribute(&json!(name))?.as_str().unwrap_or_default());
            } else {
                out.push_str(&self.text(&json!({"Ref": name}))?);
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// Every string of `value` taken as an `Fn::Sub` pattern.
    fn substitute_strings(&self, value: &Value) -> Result<Value, IamError> {
        Ok(match value {
            Value::String(pattern) => Value::String(self.substitute(&json!(pattern))?),
            Value::Array(items) => {
                Value::Array(items.iter().map(|i| self.substitute_strings(i)).collect::<Result<_, _>>()?)
            }
            Value::Object(object) => Value::Object(
                object
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), self.substitute_strings(v)?)))
                    .collect::<Result<_, IamError>>()?,
            ),
            other => other.clone(),
        })
    }

    fn join(&self, argument: &Value) -> Result<String, IamError> {
        let parts = argument
            .as_array()
            .filter(|p| p.len() == 2)
            .ok_or_else(|| Self::unresolved(argument, "Fn::Join takes two"))?;
        let separator = parts[0].as_str().unwrap_or_default();
        let items = match self.resolve(&parts[1])? {
            Some(Value::Array(items)) => items,
            Some(one) => vec![one],
            None => Vec::new(),
        };
        let texts: Vec<String> =
            items.iter().map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned)).collect();
        Ok(texts.join(separator))
    }

    fn condition_named(&self, name: &str) -> Result<bool, IamError> {
        let condition = self.template.document["Conditions"]
            .get(name)
            .ok_or_else(|| Self::unresolved(name, "no such condition"))?;
        self.condition(condition)
    }

    fn condition(&self, condition: &Value) -> Result<bool, IamError> {
        let object = condition.as_object().ok_or_else(|| Self::unresolved(condition, "a condition is an object"))?;
        let (name, argument) = object.iter().next().ok_or_else(|| Self::unresolved(condition, "empty"))?;
        let parts = argument.as_array().cloned().unwrap_or_default();
        match name.as_str() {
            "Fn::Equals" if parts.len() == 2 => Ok(self.resolve(&parts[0])? == self.resolve(&parts[1])?),
            "Fn::Not" if parts.len() == 1 => Ok(!self.condition(&parts[0])?),
            "Fn::And" => parts.iter().try_fold(true, |all, c| Ok(all && self.condition(c)?)),
            "Fn::Or" => parts.iter().try_fold(false, |any, c| Ok(any || self.condition(c)?)),
            "Condition" => self.condition_named(argument.as_str().unwrap_or_default()),
            _ => Err(Self::unresolved(condition, "an unknown condition function")),
        }
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

    const TEMPLATE: &str = r#"{
      "Parameters": {
        "SecretArn": {"Type": "String"},
        "Distributions": {"Type": "CommaDelimitedList", "Default": ""}
      },
      "Conditions": {"HasDistributions": {"Fn::Not": [{"Fn::Equals": [{"Fn::Join": ["", {"Ref": "Distributions"}]}, ""]}]}},
      "Resources": {
        "ThingFunction": {"Type": "AWS::Lambda::Function", "Properties": {
          "Code": {"S3Bucket": "conveyor-placeholder", "S3Key": "thing.zip"},
          "Role": {"Fn::GetAtt": ["ThingFunctionRole", "Arn"]}}},
        "ThingFunctionRole": {"Type": "AWS::IAM::Role", "Properties": {"Policies": [
          {"PolicyName": "p0", "PolicyDocument": {"Statement": [
            {"Effect": "Allow", "Action": ["dynamodb:GetItem"], "Resource": [{"Fn::GetAtt": ["Table", "Arn"]}, {"Fn::Sub": "${Table.Arn}/index/gsi1"}]},
            {"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": {"Ref": "SecretArn"}},
            {"Fn::If": ["HasDistributions",
              {"Effect": "Allow", "Action": "cloudfront:CreateInvalidation", "Resource": {"Ref": "Distributions"}},
              {"Ref": "AWS::NoValue"}]},
            {"Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
             "Resource": {"Fn::Sub": "arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}:secret:conveyor/*"}}
          ]}}]}}
      }
    }"#;

    #[test]
    fn a_function_policy_is_its_template_policy_with_the_emulators_resources() {
        let template = Template::parse(TEMPLATE).unwrap();
        assert_eq!(template.functions(), ["thing"]);
        let resources = Resources::new("eu-west-1", "t1", "b1").with("SecretArn", "arn:secret");
        let policy = template.function_policy("thing", &resources).unwrap();
        assert_eq!(
            policy["Statement"],
            json!([
                {"Effect": "Allow", "Action": ["dynamodb:GetItem"], "Resource": [
                    "arn:aws:dynamodb:eu-west-1:123456789012:table/t1",
                    "arn:aws:dynamodb:eu-west-1:123456789012:table/t1/index/gsi1"]},
                {"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": "arn:secret"},
                {"Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
                 "Resource": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:conveyor/*"}
            ]),
            "a condition that does not hold leaves its statement out"
        );
        let with_distribution = resources.with("Distributions", json!(["arn:d1"]));
        let policy = template.function_policy("thing", &with_distribution).unwrap();
        assert_eq!(policy["Statement"][2]["Resource"], json!(["arn:d1"]));
        assert!(matches!(template.function_policy("other", &with_distribution), Err(IamError::Missing(_))));
    }

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
