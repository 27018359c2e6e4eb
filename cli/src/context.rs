//! What every command that talks to AWS shares: the table, region, profile and endpoint,
//! each a flag beside the environment variable people already set.

use std::path::Path;

use clap::Args;
use conveyor_shared::SdkConfig;
use conveyor_shared::config::Settings;
use conveyor_shared::store::Table;

#[derive(Debug, Clone, Default, Args)]
pub struct AwsFlags {
    /// The Conveyor table (the stack output TableName).
    #[arg(long, global = true, env = "CONVEYOR_TABLE", value_name = "NAME")]
    pub table: Option<String>,
    /// The AWS region (default: the profile's).
    #[arg(long, global = true, env = "AWS_REGION", value_name = "REGION")]
    pub region: Option<String>,
    /// The AWS profile whose credentials to use.
    #[arg(long, global = true, env = "AWS_PROFILE", value_name = "PROFILE")]
    pub profile: Option<String>,
    /// Send every AWS call here (a local emulator, say) instead of AWS.
    #[arg(long, global = true, env = "AWS_ENDPOINT_URL", value_name = "URL")]
    pub endpoint_url: Option<String>,
}

impl AwsFlags {
    /// The runtime settings, with `--table` and `config` (`--config`) applied over the
    /// environment's.
    pub fn settings(&self, config: Option<&Path>) -> Settings {
        let mut settings = Settings::from_env();
        if let Some(table) = self.table.as_deref().filter(|t| !t.trim().is_empty()) {
            settings.table = table.to_owned();
        }
        if let Some(path) = config {
            settings.config_path = path.to_owned();
        }
        settings
    }

    /// The AWS configuration: the SDK's defaults, with the flags over them.
    pub async fn sdk(&self) -> SdkConfig {
        // The local emulator answers one request at a time (and its first EC2 call loads its
        // images for seconds): calls to it get the emulator's patience, not AWS's bounds.
        let local = self.endpoint_url.as_deref().is_some_and(is_loopback_url);
        let timeouts = if local { conveyor_shared::emulator_timeouts() } else { conveyor_shared::aws_timeouts() };
        let mut loader = aws_config::defaults(conveyor_shared::BehaviorVersion::latest()).timeout_config(timeouts);
        if let Some(region) = self.region.clone().filter(|r| !r.trim().is_empty()) {
            loader = loader.region(aws_config::Region::new(region));
        }
        if let Some(profile) = self.profile.as_deref().filter(|p| !p.trim().is_empty()) {
            loader = loader.profile_name(profile);
        }
        if let Some(endpoint) = self.endpoint_url.as_deref().filter(|e| !e.trim().is_empty()) {
            loader = loader.endpoint_url(endpoint);
        }
        loader.load().await
    }

    /// The table named by `--table` (or `CONVEYOR_TABLE`), reached with [`AwsFlags::sdk`].
    pub async fn table(&self) -> (Settings, Table) {
        let settings = self.settings(None);
        let table = Table::from_sdk(&self.sdk().await, settings.table.clone());
        (settings, table)
    }
}

/// Whether `url` is an http(s) URL whose host is this machine: `localhost`, or a loopback
/// address (`127.0.0.0/8`, `[::1]`). Hosts that only begin like one (`127.0.0.1.example.com`,
/// a user part as in `127.0.0.1@host`) are not.
pub fn is_loopback_url(url: &str) -> bool {
    let Ok(uri) = url.trim().parse::<http::Uri>() else {
        return false;
    };
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return false;
    }
    let Some(authority) = uri.authority() else {
        return false;
    };
    if authority.as_str().contains('@') {
        return false;
    }
    let host = authority.host();
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    host.eq_ignore_ascii_case("localhost") || bare.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}
