//! EC2 adapter: image checks and launch templates, one regional client per call site.

use std::collections::BTreeMap;

use aws_sdk_ec2::Client;
use aws_sdk_ec2::config::Region;
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_ec2::types::{ImageState, RequestLaunchTemplateData};

use crate::SdkConfig;

#[derive(Debug, thiserror::Error)]
pub enum Ec2Error {
    #[error("EC2 {operation} in {region} failed: {message}")]
    Aws { operation: &'static str, region: String, message: String },
    #[error("launch template {name} in {region} has no default version")]
    NoDefaultVersion { name: String, region: String },
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
    sdk: SdkConfig,
}

impl Ec2 {
    pub fn new(sdk: &SdkConfig) -> Self {
        Self { sdk: sdk.clone() }
    }

    fn client(&self, region: &str) -> Client {
        let config = aws_sdk_ec2::config::Builder::from(&self.sdk).region(Region::new(region.to_owned())).build();
        Client::from_conf(config)
    }

    /// The AMIs (region to id) that are not `available` in their region, each with the reason.
    pub async fn unavailable_images(&self, amis: &BTreeMap<String, String>) -> Result<Vec<String>, Ec2Error> {
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
