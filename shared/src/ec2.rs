//! EC2 adapter: image checks and launch templates, one regional client per call site.

use std::collections::BTreeMap;

use aws_sdk_ec2::Client;
use aws_sdk_ec2::config::Region;
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_ec2::types::{Filter, ImageState, RequestLaunchTemplateData};

use crate::domain::rollout::Instance;

use crate::SdkConfig;

#[derive(Debug, thiserror::Error)]
pub enum Ec2Error {
    #[error("EC2 {operation} in {region} failed: {message}")]
    Aws { operation: &'static str, region: String, message: String },
    #[error("launch template {name} in {region} has no default version")]
    NoDefaultVersion { name: String, region: String },
}

pub use crate::domain::checks::instances::Host;

impl Ec2Error {
    /// What a caller outside the account may be told: EC2's own text can name account ids
    /// and ARNs, so it stays in the function's log.
    pub fn public(&self) -> String {
        match self {
            Ec2Error::Aws { operation, region, .. } => {
                format!("EC2 {operation} failed in {region} (the function's log has EC2's answer)")
            }
            other => other.to_string(),
        }
    }
}

/// What happened to a launch template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateUpdate {
    /// A new version with the image, now the default.
    NewDefault { version: i64 },
    /// The default version already boots this image.
    Unchanged,
}

#[derive(Clone, Debug)]
pub struct Ec2 {
    /// The default region's client; other regions' are derived from its config.
    client: Client,
}

/// EC2 throttles per account (`RequestLimitExceeded`); the SDK's standard retry classifies
/// that as throttling and backs off. A deployment start can wait a little longer than the
/// default three attempts rather than fail.
const MAX_ATTEMPTS: u32 = 8;

impl Ec2 {
    pub fn new(sdk: &SdkConfig) -> Self {
        Self::from_conf(aws_sdk_ec2::config::Builder::from(sdk).build())
    }

    /// With a config of the caller's (interceptors in benchmarks); the retry policy is ours.
    pub fn from_conf(config: aws_sdk_ec2::Config) -> Self {
        let retry = aws_sdk_ec2::config::retry::RetryConfig::standard()
            .with_max_attempts(MAX_ATTEMPTS)
            .with_initial_backoff(std::time::Duration::from_millis(100))
            .with_max_backoff(std::time::Duration::from_secs(5));
        Self { client: Client::from_conf(config.to_builder().retry_config(retry).build()) }
    }

    /// The running instances that carry every one of `tags` (key to value), in `region` or
    /// the configured default. Pages of 1,000 are followed to the end; throttling
    /// (`RequestLimitExceeded`) is retried by the SDK's standard retry with backoff.
    pub async fn running_instances(
        &self,
        region: Option<&str>,
        tags: &BTreeMap<String, String>,
    ) -> Result<Vec<Instance>, Ec2Error> {
        self.describe_running(region, running_with(tags)).await
    }

    /// Whether instance `id` (in the default region) runs and carries every one of `tags`:
    /// one call, for an agent that proves it runs there.
    pub async fn runs_with_tags(&self, id: &str, tags: &BTreeMap<String, String>) -> Result<bool, Ec2Error> {
        let mut filters = running_with(tags);
        filters.push(Filter::builder().name("instance-id").values(id).build());
        Ok(!self.describe_running(None, filters).await?.is_empty())
    }

    /// Which of `ids` (in the default region) still run.
    pub async fn running_among(&self, ids: &[String]) -> Result<std::collections::HashSet<String>, Ec2Error> {
        let mut running = std::collections::HashSet::new();
        // EC2 takes at most 200 values per filter.
        for chunk in ids.chunks(200) {
            let filters = vec![
                Filter::builder().name("instance-id").set_values(Some(chunk.to_vec())).build(),
                Filter::builder().name("instance-state-name").values("running").build(),
            ];
            running.extend(self.describe_running(None, filters).await?.into_iter().map(|i| i.id));
        }
        Ok(running)
    }

    async fn describe_running(&self, region: Option<&str>, filters: Vec<Filter>) -> Result<Vec<Instance>, Ec2Error> {
        self.describe(region, filters, |i| {
            Some(Instance {
                id: i.instance_id()?.to_owned(),
                availability_zone: i.placement().and_then(|p| p.availability_zone()).unwrap_or("").to_owned(),
            })
        })
        .await
    }

    /// The running instances that carry every one of `tags`, with their addresses (for
    /// health checks of each instance).
    pub async fn running_hosts(&self, tags: &BTreeMap<String, String>) -> Result<Vec<Host>, Ec2Error> {
        self.describe(None, running_with(tags), |i| {
            Some(Host {
                id: i.instance_id()?.to_owned(),
                private_ip: i.private_ip_address().map(str::to_owned),
                public_ip: i.public_ip_address().map(str::to_owned),
                launched_at: i.launch_time().map(|t| t.secs()),
            })
        })
        .await
    }

    /// Reboots one instance (self-healing). EC2 answers at once; the reboot follows.
    pub async fn reboot(&self, id: &str) -> Result<(), Ec2Error> {
        self.client.reboot_instances().instance_ids(id).send().await.map_err(|err| Ec2Error::Aws {
            operation: "RebootInstances",
            region: self.client.config().region().map(|r| r.to_string()).unwrap_or_default(),
            message: DisplayErrorContext(err).to_string(),
        })?;
        Ok(())
    }

    async fn describe<T>(
        &self,
        region: Option<&str>,
        filters: Vec<Filter>,
        read: fn(&aws_sdk_ec2::types::Instance) -> Option<T>,
    ) -> Result<Vec<T>, Ec2Error> {
        let client = match region {
            Some(region) => self.client(region),
            None => self.client.clone(),
        };
        let region_name = region
            .map(str::to_owned)
            .or_else(|| self.client.config().region().map(|r| r.to_string()))
            .unwrap_or_default();
        paginate(|token| {
            let request =
                client.describe_instances().set_filters(Some(filters.clone())).max_results(1000).set_next_token(token);
            let region_name = region_name.clone();
            async move {
                let page = request.send().await.map_err(|err| Ec2Error::Aws {
                    operation: "DescribeInstances",
                    region: region_name,
                    message: DisplayErrorContext(err).to_string(),
                })?;
                let items = page.reservations().iter().flat_map(|r| r.instances()).filter_map(read).collect();
                Ok((items, page.next_token().map(str::to_owned)))
            }
        })
        .await
    }

    fn client(&self, region: &str) -> Client {
        Client::from_conf(self.client.config().to_builder().region(Region::new(region.to_owned())).build())
    }

    /// The AMIs (region to id) that are not `available` in their region, or (when `owners` is
    /// not empty) not owned by one of `owners`, each with the reason.
    pub async fn unavailable_images(
        &self,
        amis: &BTreeMap<String, String>,
        owners: &[String],
    ) -> Result<Vec<String>, Ec2Error> {
        let mut problems = Vec::new();
        for (region, ami) in amis {
            let result = self.client(region).describe_images().image_ids(ami).send().await;
            let images = match result {
                Ok(output) => output.images.unwrap_or_default(),
                Err(err) if err.code().is_some_and(|c| c.starts_with("InvalidAMIID")) => Vec::new(),
                Err(err) => {
                    return Err(Ec2Error::Aws {
                        operation: "DescribeImages",
                        region: region.clone(),
                        message: DisplayErrorContext(err).to_string(),
                    });
                }
            };
            match images.iter().find(|image| image.image_id() == Some(ami.as_str())) {
                None => problems.push(format!("{ami} does not exist in {region}")),
                Some(image) if image.state() != Some(&ImageState::Available) => problems.push(format!(
                    "{ami} in {region} is {}, not available",
                    image.state().map(|s| s.as_str()).unwrap_or("in an unknown state")
                )),
                Some(image) if !owners.is_empty() && !owners.iter().any(|o| image.owner_id() == Some(o.as_str())) => {
                    problems.push(format!("{ami} in {region} is not owned by one of the provider's image_owners"));
                }
                Some(_) => {}
            }
        }
        Ok(problems)
    }

    /// Makes `ami` the image of the launch template's default version. `template` is a name
    /// or an id (`lt-...`).
    pub async fn point_launch_template(
        &self,
        region: &str,
        template: &str,
        ami: &str,
    ) -> Result<TemplateUpdate, Ec2Error> {
        let client = self.client(region);
        let by_id = template.starts_with("lt-");
        let aws =
            |operation: &'static str, message: String| Ec2Error::Aws { operation, region: region.to_owned(), message };

        let mut describe = client.describe_launch_template_versions().versions("$Default");
        describe = if by_id { describe.launch_template_id(template) } else { describe.launch_template_name(template) };
        let current = describe
            .send()
            .await
            .map_err(|e| aws("DescribeLaunchTemplateVersions", DisplayErrorContext(e).to_string()))?;
        let default = current
            .launch_template_versions()
            .first()
            .ok_or_else(|| Ec2Error::NoDefaultVersion { name: template.to_owned(), region: region.to_owned() })?;
        if default.launch_template_data().and_then(|d| d.image_id()) == Some(ami) {
            return Ok(TemplateUpdate::Unchanged);
        }

        let mut create = client
            .create_launch_template_version()
            .source_version(default.version_number().map(|v| v.to_string()).unwrap_or_else(|| "$Default".into()))
            .version_description(format!("conveyor: image {ami}"))
            .launch_template_data(RequestLaunchTemplateData::builder().image_id(ami).build());
        create = if by_id { create.launch_template_id(template) } else { create.launch_template_name(template) };
        let created =
            create.send().await.map_err(|e| aws("CreateLaunchTemplateVersion", DisplayErrorContext(e).to_string()))?;
        let version = created
            .launch_template_version()
            .and_then(|v| v.version_number())
            .ok_or_else(|| aws("CreateLaunchTemplateVersion", "the answer has no version number".into()))?;

        let mut modify = client.modify_launch_template().default_version(version.to_string());
        modify = if by_id { modify.launch_template_id(template) } else { modify.launch_template_name(template) };
        modify.send().await.map_err(|e| aws("ModifyLaunchTemplate", DisplayErrorContext(e).to_string()))?;
        Ok(TemplateUpdate::NewDefault { version })
    }
}

/// Filters for the running instances that carry every one of `tags`.
fn running_with(tags: &BTreeMap<String, String>) -> Vec<Filter> {
    let mut filters: Vec<Filter> =
        tags.iter().map(|(key, value)| Filter::builder().name(format!("tag:{key}")).values(value).build()).collect();
    filters.push(Filter::builder().name("instance-state-name").values("running").build());
    filters
}

/// Collects every page: `fetch` gets the previous page's token (none for the first) and
/// answers its items and the next token. Stops on a missing or repeated token.
pub async fn paginate<T, F, Fut>(mut fetch: F) -> Result<Vec<T>, Ec2Error>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, Option<String>), Ec2Error>>,
{
    let mut items = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let (page, next) = fetch(token.clone()).await?;
        items.extend(page);
        match next {
            Some(next) if !next.is_empty() && Some(&next) != token.as_ref() => token = Some(next),
            _ => return Ok(items),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pages_are_followed_to_the_end() {
        let pages = [(vec![1, 2], Some("a")), (vec![3], Some("b")), (vec![4, 5], None)];
        let mut asked = Vec::new();
        let all = paginate(|token| {
            asked.push(token.clone());
            let index = asked.len() - 1;
            let (items, next) = pages[index].clone();
            async move { Ok((items, next.map(str::to_owned))) }
        })
        .await
        .unwrap();
        assert_eq!(all, [1, 2, 3, 4, 5]);
        assert_eq!(asked, [None, Some("a".to_owned()), Some("b".to_owned())]);
    }

    #[tokio::test]
    async fn a_repeated_token_ends_the_loop() {
        let mut calls = 0;
        let all = paginate(|_| {
            calls += 1;
            async { Ok((vec![1], Some("same".to_owned()))) }
        })
        .await
        .unwrap();
        assert_eq!((all.len(), calls), (2, 2));
    }

    #[tokio::test]
    async fn an_error_stops_the_walk() {
        let result: Result<Vec<u8>, _> = paginate(|_| async {
            Err(Ec2Error::Aws {
                operation: "DescribeInstances",
                region: "r".into(),
                message: "RequestLimitExceeded".into(),
            })
        })
        .await;
        assert!(result.is_err());
    }
}
