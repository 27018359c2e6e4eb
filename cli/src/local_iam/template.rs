//! The SAM-expanded template, read for each function's policy, with CloudFormation's
//! intrinsic functions resolved against the emulator's resources.

use std::path::Path;

use serde_json::{Value, json};

use super::{ACCOUNT, IamError, Resources};

/// The logical id of the instance role agents prove their instance with.
const AGENT_ROLE: &str = "AgentRole";

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
}
