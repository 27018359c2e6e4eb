//! Configuration: the user's declarative `conveyor.toml` and the runtime settings that each
//! function reads once at cold start.
//!
//! Everything in `conveyor.toml` is checked while it is parsed, so every error carries the
//! line and column of the offending value (`conveyor config check FILE`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{self, Deserializer};

use crate::secret::Secret;

mod checks;
mod settings;
mod site;
mod values;

pub use checks::{AGENT_SEEN_EVERY_SECONDS, Channel, ChannelKind, Check, HOST_PLACEHOLDERS, Route};
pub use settings::{
    DEFAULT_ENTITLEMENT_GRACE, DEFAULT_STRIPE_TOLERANCE, GITHUB_WEBHOOK_SECRET, STRIPE_WEBHOOK_SECRET, SecretSource,
    Settings, SettingsError, StripeMode, Timing, agent_roles_from_env, entitlement_grace_from_env,
    stripe_tolerance_from_env,
};
pub use site::{CacheRule, Site};
pub use values::{Seconds, WaveSize};

/// The parsed `conveyor.toml`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Config {
    pub environments: Vec<Environment>,
    pub providers: Vec<Provider>,
    pub sites: Vec<Site>,
    pub channels: Vec<Channel>,
    pub routes: Vec<Route>,
    pub checks: Vec<Check>,
}

/// A machine-image provider: the per-region image ids that Packer builds publish to it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    #[serde(deserialize_with = "resource_name")]
    pub name: String,
    /// EC2 launch templates that follow this provider's AMIs: each new image for the
    /// template's region becomes a new template version, set as the default.
    #[serde(default, rename = "launch_template")]
    pub launch_templates: Vec<LaunchTemplateTarget>,
    /// The AWS accounts (12 digits) whose AMIs `?verify=true` accepts; any owner when empty.
    #[serde(default, deserialize_with = "account_ids")]
    pub image_owners: Vec<String>,
}

fn account_ids<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    let ids = Vec::<String>::deserialize(deserializer)?;
    if let Some(bad) = ids.iter().find(|id| id.len() != 12 || !id.bytes().all(|b| b.is_ascii_digit())) {
        return Err(de::Error::custom(format!("image_owners: `{bad}` is not a 12-digit AWS account id")));
    }
    Ok(ids)
}

/// `us-east-1`, `eu-central-2`, `us-gov-west-1`, `cn-north-1`: an AWS region's shape.
fn valid_region(region: &str) -> bool {
    let parts: Vec<&str> = region.split('-').collect();
    let (Some(first), Some(last)) = (parts.first(), parts.last()) else { return false };
    (3..=4).contains(&parts.len())
        && first.len() == 2
        && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()))
        && last.bytes().all(|b| b.is_ascii_digit())
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchTemplateTarget {
    /// The launch template's name (or its id, `lt-...`).
    pub name: String,
    pub region: String,
}

/// Names used in keys and paths: 1 to 63 of a-z, 0-9 and -.
fn resource_name<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let name = String::deserialize(deserializer)?;
    if valid_name(&name) {
        Ok(name)
    } else {
        Err(de::Error::custom(format!("name `{name}` must be 1 to 63 characters of a-z, 0-9 and -")))
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A deployment target: a set of instances that runs what one branch builds.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, try_from = "RawEnvironment")]
pub struct Environment {
    pub name: String,
    /// The branch whose successful builds are deployed here.
    pub branch: String,
    /// Whose builds deploy here: one repository (`owner/name`), or any (`"*"`, said
    /// explicitly).
    pub repository: RepositoryFilter,
    /// Only these workflows' runs decide here (check suites are then ignored), and each must
    /// have passed; each named by its file path (`.github/workflows/ci.yml`, unambiguous) or
    /// its name. Every run of the branch decides when empty.
    pub require_workflow: Vec<String>,
    /// Where a build's artifact lives: an `s3://` URL template.
    pub artifact: ArtifactTemplate,
    /// How long a deployment waits for its artifact to appear before it fails (the upload
    /// may finish after the run that made it reported success).
    pub artifact_wait: Seconds,
    pub instances: InstanceFilter,
    pub rollout: Rollout,
    /// When set, sent to the agents with each release and used instead of their own
    /// `health_url` flags; when unset, each agent checks its own.
    pub health: Option<HealthCheck>,
}

/// Which repositories' builds deploy to an environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepositoryFilter {
    /// `repository = "*"`.
    Any,
    /// `repository = "owner/name"`.
    Only(String),
}

impl RepositoryFilter {
    /// GitHub keeps a repository's canonical casing (`Acme/Shop`) and treats owner and name
    /// case-insensitively, so the comparison does too.
    pub fn admits(&self, repository: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Only(only) => only.eq_ignore_ascii_case(repository),
        }
    }
}

/// One workflow, or a list of them.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// EC2 tag filters that pick an environment's instances.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceFilter {
    /// Tag key to accepted value. Default: `conveyor:environment = <environment name>`.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// How a release rolls across the fleet.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, try_from = "RawRollout")]
pub struct Rollout {
    /// Cumulative share of the fleet that runs the new release after each wave.
    pub waves: Vec<WaveSize>,
    /// Instances that must stay healthy throughout; never undercut.
    pub min_healthy: WaveSize,
    pub wave_timeout: Seconds,
}

/// What the agent checks on each instance after a release starts.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheck {
    /// A local URL on the instance, e.g. `http://127.0.0.1:8080/health`.
    pub url: String,
    pub expect_status: u16,
    pub timeout: Seconds,
    /// Attempts before the instance is declared unhealthy.
    pub attempts: u32,
    pub interval: Seconds,
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8080/health".into(),
            expect_status: 200,
            timeout: Seconds(5),
            attempts: 5,
            interval: Seconds(2),
        }
    }
}

/// An `s3://bucket/key` template with `{bucket}`, `{repository}`, `{sha}`, `{version}`,
/// `{branch}` and `{environment}` placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactTemplate(String);

/// What an artifact template is filled with.
pub struct ArtifactFields<'a> {
    pub bucket: &'a str,
    pub repository: &'a str,
    pub sha: &'a str,
    pub version: &'a str,
    pub branch: &'a str,
    pub environment: &'a str,
}

impl ArtifactTemplate {
    pub const DEFAULT: &'static str = "s3://{bucket}/{repository}/{sha}.tar.gz";
    const PLACEHOLDERS: [&'static str; 6] = ["bucket", "repository", "sha", "version", "branch", "environment"];

    pub fn parse(text: &str) -> Result<Self, String> {
        if !text.starts_with("s3://") {
            return Err(format!("artifact `{text}` must be an s3:// URL"));
        }
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            let close = rest[open..].find('}').ok_or_else(|| format!("unclosed `{{` in artifact `{text}`"))?;
            let name = &rest[open + 1..open + close];
            if !Self::PLACEHOLDERS.contains(&name) {
                return Err(format!(
                    "unknown placeholder `{{{name}}}` in artifact; use one of {}",
                    Self::PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(", ")
                ));
            }
            rest = &rest[open + close + 1..];
        }
        Ok(Self(text.to_owned()))
    }

    pub fn render(&self, fields: &ArtifactFields<'_>) -> String {
        self.0
            .replace("{bucket}", fields.bucket)
            .replace("{repository}", fields.repository)
            .replace("{sha}", fields.sha)
            .replace("{version}", fields.version)
            .replace("{branch}", fields.branch)
            .replace("{environment}", fields.environment)
    }
}

impl Default for ArtifactTemplate {
    fn default() -> Self {
        Self(Self::DEFAULT.to_owned())
    }
}

impl<'de> Deserialize<'de> for ArtifactTemplate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        ArtifactTemplate::parse(&text).map_err(de::Error::custom)
    }
}

/// The preset rollout strategies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// One instance, then half, then all: `[1, "50%", "100%"]`.
    #[default]
    Canary,
    OneAtATime,
    HalfAtATime,
    AllAtOnce,
}

impl Strategy {
    fn waves(self) -> Vec<WaveSize> {
        match self {
            Strategy::Canary => vec![WaveSize::Count(1), WaveSize::Percent(50), WaveSize::Percent(100)],
            // Cumulative waves of one: expanded per fleet size when a deployment is planned.
            Strategy::OneAtATime => vec![WaveSize::Count(1)],
            Strategy::HalfAtATime => vec![WaveSize::Percent(50), WaveSize::Percent(100)],
            Strategy::AllAtOnce => vec![WaveSize::Percent(100)],
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRollout {
    strategy: Option<Strategy>,
    waves: Option<Vec<WaveSize>>,
    #[serde(default = "no_minimum")]
    min_healthy: WaveSize,
    #[serde(default = "default_wave_timeout")]
    wave_timeout: Seconds,
}

fn no_minimum() -> WaveSize {
    WaveSize::Count(0)
}

fn default_wave_timeout() -> Seconds {
    Seconds(600)
}

impl Default for Rollout {
    fn default() -> Self {
        Self { waves: Strategy::default().waves(), min_healthy: no_minimum(), wave_timeout: default_wave_timeout() }
    }
}

impl TryFrom<RawRollout> for Rollout {
    type Error = String;

    fn try_from(raw: RawRollout) -> Result<Self, String> {
        let waves = match (raw.strategy, raw.waves) {
            (Some(_), Some(_)) => {
                return Err("set either `strategy` or `waves`, not both".into());
            }
            (Some(strategy), None) => strategy.waves(),
            (None, Some(waves)) => {
                if waves.is_empty() {
                    return Err("`waves` needs at least one wave, e.g. [1, \"50%\", \"100%\"]".into());
                }
                if waves.last() != Some(&WaveSize::Percent(100)) {
                    return Err("the last wave must be \"100%\" so that every instance gets the release".into());
                }
                if waves.contains(&WaveSize::Count(0)) {
                    return Err("a wave of 0 instances deploys nothing; remove it".into());
                }
                waves
            }
            (None, None) => Strategy::default().waves(),
        };
        if raw.wave_timeout.0 == 0 {
            return Err("`wave_timeout` must be longer than 0s".into());
        }
        if raw.min_healthy == WaveSize::Percent(100) {
            return Err(
                "min_healthy = \"100%\" keeps every instance in service, so no instance can ever be updated: use a share below 100% (\"75%\" updates one at a time in fleets of up to four) or a count below the fleet size".into(),
            );
        }
        Ok(Self { waves, min_healthy: raw.min_healthy, wave_timeout: raw.wave_timeout })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnvironment {
    name: String,
    branch: String,
    repository: Option<String>,
    require_workflow: Option<OneOrMany>,
    #[serde(default)]
    artifact: ArtifactTemplate,
    #[serde(default = "default_artifact_wait")]
    artifact_wait: Seconds,
    instances: Option<InstanceFilter>,
    #[serde(default)]
    rollout: Rollout,
    health: Option<HealthCheck>,
}

fn default_artifact_wait() -> Seconds {
    Seconds(30 * 60)
}

/// The tag that marks an instance as part of an environment when no tags are configured.
pub const ENVIRONMENT_TAG: &str = "conveyor:environment";

impl TryFrom<RawEnvironment> for Environment {
    type Error = String;

    fn try_from(raw: RawEnvironment) -> Result<Self, String> {
        if !valid_name(&raw.name) {
            return Err(format!("environment name `{}` must be 1 to 63 characters of a-z, 0-9 and -", raw.name));
        }
        if raw.branch.trim().is_empty() {
            return Err(format!("environment `{}` needs a `branch`", raw.name));
        }
        if raw.branch.starts_with("refs/") {
            return Err(format!("write the branch of environment `{}` without `refs/heads/`", raw.name));
        }
        let repository = match raw.repository.as_deref().map(str::trim) {
            None => {
                return Err(format!(
                    "environment `{}` needs `repository = \"owner/name\"` (the repository whose builds deploy there), or `repository = \"*\"` to let any repository's builds deploy there",
                    raw.name
                ));
            }
            Some("*") => RepositoryFilter::Any,
            Some(repository) => {
                let parts: Vec<&str> = repository.split('/').collect();
                if parts.len() != 2 || parts.iter().any(|p| p.is_empty() || p.contains('*')) {
                    return Err(format!("repository `{repository}` must look like owner/name (or be \"*\")"));
                }
                RepositoryFilter::Only(repository.to_owned())
            }
        };
        let require_workflow = match raw.require_workflow {
            None => Vec::new(),
            Some(OneOrMany::One(one)) => vec![one.trim().to_owned()],
            Some(OneOrMany::Many(many)) => many.iter().map(|w| w.trim().to_owned()).collect(),
        };
        if let Some(blank) = require_workflow.iter().find(|w| w.trim().is_empty()) {
            return Err(format!(
                "require_workflow of environment `{}` has an empty entry `{blank}`: name a workflow by its file (.github/workflows/ci.yml) or its name",
                raw.name
            ));
        }
        let mut instances = raw.instances.unwrap_or(InstanceFilter { tags: BTreeMap::new() });
        if instances.tags.is_empty() {
            instances.tags.insert(ENVIRONMENT_TAG.into(), raw.name.clone());
        }
        Ok(Self {
            name: raw.name,
            branch: raw.branch,
            repository,
            require_workflow,
            artifact: raw.artifact,
            artifact_wait: raw.artifact_wait,
            instances,
            rollout: raw.rollout,
            health: raw.health,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    environment: Vec<toml::Spanned<Environment>>,
    #[serde(default)]
    provider: Vec<toml::Spanned<Provider>>,
    #[serde(default)]
    site: Vec<toml::Spanned<Site>>,
    #[serde(default)]
    channel: Vec<toml::Spanned<Channel>>,
    #[serde(default)]
    route: Vec<toml::Spanned<Route>>,
    #[serde(default)]
    check: Vec<toml::Spanned<Check>>,
}

/// A configuration error with its position in the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}:{line}:{column}: {message}\n{excerpt}")]
pub struct ConfigError {
    pub origin: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
    /// The offending line with a caret under the column.
    pub excerpt: String,
}

/// Why the configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read configuration file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

impl Config {
    /// Parses `text`; `origin` names the file in error messages.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|err| {
            let offset = err.span().map_or(0, |span| span.start);
            ConfigError::at(text, origin, offset, err.message())
        })?;
        let mut seen: Vec<&str> = Vec::new();
        for env in &raw.environment {
            if seen.contains(&env.get_ref().name.as_str()) {
                return Err(ConfigError::at(
                    text,
                    origin,
                    env.span().start,
                    &format!("environment `{}` is defined twice", env.get_ref().name),
                ));
            }
            seen.push(&env.get_ref().name);
        }
        let mut seen: Vec<&str> = Vec::new();
        for provider in &raw.provider {
            if seen.contains(&provider.get_ref().name.as_str()) {
                return Err(ConfigError::at(
                    text,
                    origin,
                    provider.span().start,
                    &format!("provider `{}` is defined twice", provider.get_ref().name),
                ));
            }
            seen.push(&provider.get_ref().name);
            let mut targets: Vec<(&str, &str)> = Vec::new();
            for target in &provider.get_ref().launch_templates {
                let problem = if !valid_region(&target.region) {
                    Some(format!(
                        "launch template `{}` of provider `{}`: `{}` is not an AWS region (like us-east-1)",
                        target.name,
                        provider.get_ref().name,
                        target.region
                    ))
                } else if targets.contains(&(target.name.as_str(), target.region.as_str())) {
                    Some(format!(
                        "launch template `{}` in {} is listed twice for provider `{}`",
                        target.name,
                        target.region,
                        provider.get_ref().name
                    ))
                } else {
                    None
                };
                if let Some(problem) = problem {
                    return Err(ConfigError::at(text, origin, provider.span().start, &problem));
                }
                targets.push((&target.name, &target.region));
            }
        }
        let mut seen: Vec<&Site> = Vec::new();
        for spanned in &raw.site {
            let site = spanned.get_ref();
            // One site's deletions must never reach another's objects.
            let overlapping = seen.iter().find(|other| {
                other.bucket == site.bucket
                    && (other.prefix.starts_with(&site.prefix) || site.prefix.starts_with(&other.prefix))
            });
            let problem = if seen.iter().any(|other| other.name == site.name) {
                Some(format!("site `{}` is defined twice", site.name))
            } else if let Some(other) = overlapping {
                Some(format!(
                    "sites `{}` and `{}` share bucket {} with overlapping prefixes (`{}`, `{}`): a publish of one would delete the other's files; give each its own prefix",
                    other.name, site.name, site.bucket, other.prefix, site.prefix
                ))
            } else {
                site.check().err()
            };
            if let Some(problem) = problem {
                return Err(ConfigError::at(text, origin, spanned.span().start, &problem));
            }
            seen.push(site);
        }
        let channels: Vec<&Channel> = raw.channel.iter().map(toml::Spanned::get_ref).collect();
        for (i, spanned) in raw.channel.iter().enumerate() {
            if let Some(problem) = checks::channel_problem(&channels, i) {
                return Err(ConfigError::at(text, origin, spanned.span().start, &problem));
            }
        }
        for (i, spanned) in raw.route.iter().enumerate() {
            if let Some(problem) = checks::route_problem(spanned.get_ref(), &channels, i) {
                return Err(ConfigError::at(text, origin, spanned.span().start, &problem));
            }
        }
        let all_checks: Vec<&Check> = raw.check.iter().map(toml::Spanned::get_ref).collect();
        let environments: Vec<&str> = raw.environment.iter().map(|e| e.get_ref().name.as_str()).collect();
        for (i, spanned) in raw.check.iter().enumerate() {
            if let Some(problem) = checks::check_problem(&all_checks, &channels, &environments, i) {
                return Err(ConfigError::at(text, origin, spanned.span().start, &problem));
            }
        }
        Ok(Config {
            environments: raw.environment.into_iter().map(toml::Spanned::into_inner).collect(),
            providers: raw.provider.into_iter().map(toml::Spanned::into_inner).collect(),
            sites: raw.site.into_iter().map(toml::Spanned::into_inner).collect(),
            channels: raw.channel.into_iter().map(toml::Spanned::into_inner).collect(),
            routes: raw.route.into_iter().map(toml::Spanned::into_inner).collect(),
            checks: raw.check.into_iter().map(toml::Spanned::into_inner).collect(),
        })
    }

    pub fn load(path: &Path) -> Result<Self, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read { path: path.to_owned(), source })?;
        Ok(Self::parse(&text, &path.display().to_string())?)
    }

    pub fn provider(&self, name: &str) -> Option<&Provider> {
        self.providers.iter().find(|p| p.name == name)
    }

    pub fn environment(&self, name: &str) -> Option<&Environment> {
        self.environments.iter().find(|e| e.name == name)
    }

    pub fn site(&self, name: &str) -> Option<&Site> {
        self.sites.iter().find(|s| s.name == name)
    }
}

impl ConfigError {
    fn at(text: &str, origin: &str, offset: usize, message: &str) -> Self {
        let offset = offset.min(text.len());
        let before = &text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        let line_text = text[line_start..].lines().next().unwrap_or("");
        let excerpt = format!("  | {line_text}\n  | {}^", " ".repeat(column - 1));
        Self { origin: origin.to_owned(), line, column, message: message.trim().to_owned(), excerpt }
    }
}

#[cfg(test)]
mod tests;
