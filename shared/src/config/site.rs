//! `[[site]]`: a static site published to an S3 bucket behind a CloudFront distribution.

use super::*;

/// A site `conveyor publish DIR --site NAME` uploads. Only `name`, `bucket` and
/// `distribution` are required; the defaults serve a typical single-page app.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Site {
    #[serde(deserialize_with = "resource_name")]
    pub name: String,
    #[serde(deserialize_with = "bucket_name")]
    pub bucket: String,
    #[serde(deserialize_with = "distribution_id")]
    pub distribution: String,
    /// The bucket's region, when it is not the one Conveyor runs in.
    #[serde(default)]
    pub region: Option<String>,
    /// Where in the bucket the site lives (`""`: the bucket's root; else ends with `/`).
    #[serde(default, deserialize_with = "key_prefix")]
    pub prefix: String,
    /// The part of each key the distribution's origin path already stands for, so it is not
    /// part of the URL (usually the prefix, when the origin path points at it; else empty).
    #[serde(default, deserialize_with = "key_prefix")]
    pub origin_path: String,
    /// The document served for a directory (`/docs/` serves `docs/index.html`): a change of
    /// it also invalidates `/docs/` and `/docs`. Empty: the site serves none.
    #[serde(default = "default_index_document")]
    pub index_document: String,
    /// `Cache-Control` by glob over the path in the site, first match wins. When none is
    /// given: hashed build output (`assets/**`) is cached for a year, HTML is revalidated.
    #[serde(default = "default_cache_rules", rename = "cache")]
    pub cache_rules: Vec<CacheRule>,
    /// `Cache-Control` of a file no rule matches.
    #[serde(default = "default_cache_control")]
    pub default_cache_control: String,
    /// `"gzip"`: a `NAME.gz` of the build is published as `NAME`, with `Content-Encoding:
    /// gzip` and NAME's content type (every browser takes gzip; S3 cannot choose an encoding
    /// per viewer, so only one can be served).
    #[serde(default, deserialize_with = "precompressed")]
    pub precompressed: Option<String>,
    /// Extra or different content types by extension (`webmanifest = "application/manifest+json"`).
    #[serde(default)]
    pub content_types: BTreeMap<String, String>,
    /// Above this many invalidation paths, the whole site (`/*`) is invalidated instead.
    #[serde(default = "default_invalidation_budget")]
    pub invalidation_budget: usize,
    /// A publish that would delete more objects than this stops before deleting any
    /// (`--max-delete` overrides it).
    #[serde(default = "default_max_delete")]
    pub max_delete: usize,
    /// An invalidation still in progress this long after it was submitted raises an alert.
    #[serde(default = "default_invalidation_alert_after")]
    pub invalidation_alert_after: Seconds,
}

/// One `[[site.cache]]` rule.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheRule {
    #[serde(deserialize_with = "glob_pattern")]
    pub glob: String,
    #[serde(deserialize_with = "header_value")]
    pub cache_control: String,
}

/// Vite, webpack and most bundlers write fingerprinted files to `assets/`.
pub const IMMUTABLE: &str = "public, max-age=31536000, immutable";
pub const REVALIDATE: &str = "no-cache";
/// CloudFront's in-progress limit on file paths; a budget above it could never be met.
pub const MAX_INVALIDATION_BUDGET: usize = 3000;

fn default_index_document() -> String {
    "index.html".into()
}

fn default_cache_rules() -> Vec<CacheRule> {
    vec![
        CacheRule { glob: "assets/**".into(), cache_control: IMMUTABLE.into() },
        CacheRule { glob: "**/*.html".into(), cache_control: REVALIDATE.into() },
    ]
}

fn default_cache_control() -> String {
    "public, max-age=300".into()
}

fn default_invalidation_budget() -> usize {
    10
}

fn default_max_delete() -> usize {
    256
}

fn default_invalidation_alert_after() -> Seconds {
    Seconds(15 * 60)
}

/// S3's bucket naming rules: 3 to 63 lowercase letters, digits, dots and hyphens, starting
/// and ending with a letter or digit.
fn bucket_name<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let name = String::deserialize(deserializer)?;
    let edge_ok = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let valid = (3..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && edge_ok(name.as_bytes().first())
        && edge_ok(name.as_bytes().last())
        && !name.contains("..");
    if !valid {
        return Err(de::Error::custom(format!(
            "bucket: `{name}` is not an S3 bucket name (3 to 63 lowercase letters, digits, dots and hyphens)"
        )));
    }
    Ok(name)
}

/// A CloudFront distribution id: `E` and then upper-case letters and digits (`E2QWRUHEXAMPLE`).
fn distribution_id<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let id = String::deserialize(deserializer)?;
    let valid = (8..=20).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
    if !valid {
        return Err(de::Error::custom(format!(
            "distribution: `{id}` is not a CloudFront distribution id (like E2QWRUHEXAMPLE; the console lists it as ID)"
        )));
    }
    Ok(id)
}

fn key_prefix<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let prefix = String::deserialize(deserializer)?;
    if prefix.starts_with('/') || (!prefix.is_empty() && !prefix.ends_with('/')) || prefix.contains("//") {
        return Err(de::Error::custom(format!(
            "`{prefix}` is not a key prefix: no leading `/`, and it ends with `/` (like \"site/\")"
        )));
    }
    Ok(prefix)
}

fn precompressed<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let encoding = String::deserialize(deserializer)?;
    if encoding != "gzip" {
        return Err(de::Error::custom(format!(
            "precompressed: `{encoding}` cannot be served: S3 and CloudFront cannot pick an encoding per viewer, so only \"gzip\" (which every browser takes) is; for brotli let CloudFront compress"
        )));
    }
    Ok(Some(encoding))
}

fn glob_pattern<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let pattern = String::deserialize(deserializer)?;
    glob::Pattern::new(&pattern).map_err(|err| de::Error::custom(format!("glob `{pattern}`: {err}")))?;
    if pattern.starts_with('/') {
        return Err(de::Error::custom(format!(
            "glob `{pattern}`: globs match paths in the site, without a leading `/`"
        )));
    }
    Ok(pattern)
}

fn header_value<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let value = String::deserialize(deserializer)?;
    check_header_value(&value).map_err(de::Error::custom)?;
    Ok(value)
}

fn check_header_value(value: &str) -> Result<(), String> {
    if value.trim().is_empty() || !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(format!("`{value}` is not a header value (printable ASCII, not empty)"));
    }
    Ok(())
}

impl Site {
    /// The problems serde cannot see alone.
    pub(super) fn check(&self) -> Result<(), String> {
        if !self.origin_path.is_empty() && !self.prefix.starts_with(&self.origin_path) {
            return Err(format!(
                "site `{}`: origin_path `{}` must be the start of prefix `{}`",
                self.name, self.origin_path, self.prefix
            ));
        }
        if !(1..=MAX_INVALIDATION_BUDGET).contains(&self.invalidation_budget) {
            return Err(format!(
                "site `{}`: invalidation_budget must be from 1 to {MAX_INVALIDATION_BUDGET} paths",
                self.name
            ));
        }
        if self.index_document.contains('/') {
            return Err(format!("site `{}`: index_document is a file name, not a path", self.name));
        }
        if let Err(problem) = check_header_value(&self.default_cache_control) {
            return Err(format!("site `{}`: default_cache_control: {problem}", self.name));
        }
        if let Some(region) = &self.region
            && !valid_region(region)
        {
            return Err(format!("site `{}`: `{region}` is not an AWS region (like us-east-1)", self.name));
        }
        for (extension, content_type) in &self.content_types {
            let lower = extension.trim_start_matches('.').to_ascii_lowercase();
            if *extension != lower || check_header_value(content_type).is_err() || !content_type.contains('/') {
                return Err(format!(
                    "site `{}`: content_types: write `{lower}` = \"type/subtype\" (the extension in lower case, without its dot)",
                    self.name,
                ));
            }
        }
        Ok(())
    }

    /// A site named `web` on bucket `acme-web` with `extra` configuration, for tests.
    #[cfg(test)]
    pub(crate) fn sample(extra: &str) -> Site {
        let text =
            format!("[[site]]\nname = \"web\"\nbucket = \"acme-web\"\ndistribution = \"E2QWRUHEXAMPLE\"\n{extra}");
        match Config::parse(&text, "conveyor.toml") {
            Ok(mut config) => config.sites.remove(0),
            Err(err) => panic!("{err}"),
        }
    }

    /// The `Cache-Control` for a path in the site.
    pub fn cache_control(&self, path: &str) -> &str {
        let options =
            glob::MatchOptions { case_sensitive: true, require_literal_separator: true, ..Default::default() };
        self.cache_rules
            .iter()
            .find(|rule| glob::Pattern::new(&rule.glob).is_ok_and(|p| p.matches_with(path, options)))
            .map_or(self.default_cache_control.as_str(), |rule| rule.cache_control.as_str())
    }
}
