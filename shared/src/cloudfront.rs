//! CloudFront adapter: submit an invalidation and ask how it is going.

use aws_sdk_cloudfront::Client;
use aws_sdk_cloudfront::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_cloudfront::types::{InvalidationBatch, Paths};

use crate::SdkConfig;

#[derive(Debug, thiserror::Error)]
pub enum CdnError {
    /// Over CloudFront's limits on invalidations in progress: try again later.
    #[error("distribution {distribution} has too many invalidations in progress")]
    Busy { distribution: String },
    /// The function may not touch the distribution (it is not in the stack's
    /// `SiteDistributionArns`).
    #[error(
        "CloudFront refused access to distribution {distribution}: add its ARN to the stack's SiteDistributionArns parameter"
    )]
    Denied { distribution: String },
    /// The invalidation (or the distribution) is not known to CloudFront.
    #[error("CloudFront knows no {what} {id}")]
    NotFound { what: &'static str, id: String },
    #[error("CloudFront {operation} on distribution {distribution} failed: {message}")]
    Aws { operation: &'static str, distribution: String, message: String },
}

/// Where an invalidation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    InProgress,
    Completed,
}

#[derive(Clone, Debug)]
pub struct Cdn {
    client: Client,
}

impl Cdn {
    pub fn new(sdk: &SdkConfig) -> Self {
        Self::from_conf(aws_sdk_cloudfront::config::Builder::from(sdk).build())
    }

    pub fn from_conf(config: aws_sdk_cloudfront::Config) -> Self {
        Self { client: Client::from_conf(config) }
    }

    /// Submits an invalidation of `paths`; answers its id. CloudFront answers the existing
    /// invalidation for a `caller_reference` it has seen with the same paths, so a retry
    /// creates nothing (the local emulator does not: Conveyor's own claim covers it).
    pub async fn invalidate(
        &self,
        distribution: &str,
        caller_reference: &str,
        paths: &[String],
    ) -> Result<String, CdnError> {
        let paths = Paths::builder().quantity(paths.len() as i32).set_items(Some(paths.to_vec())).build();
        let batch = InvalidationBatch::builder().caller_reference(caller_reference).set_paths(paths.ok()).build();
        let batch = batch.map_err(|e| aws("CreateInvalidation", distribution, e))?;
        let created =
            self.client.create_invalidation().distribution_id(distribution).invalidation_batch(batch).send().await;
        match created {
            Ok(created) => Ok(created.invalidation().map(|i| i.id().to_owned()).unwrap_or_default()),
            Err(err) if err.code() == Some("TooManyInvalidationsInProgress") => {
                Err(CdnError::Busy { distribution: distribution.to_owned() })
            }
            Err(err) if err.code() == Some("NoSuchDistribution") => {
                Err(CdnError::NotFound { what: "distribution", id: distribution.to_owned() })
            }
            Err(err) if is_denied(err.code()) => Err(CdnError::Denied { distribution: distribution.to_owned() }),
            Err(err) => Err(aws("CreateInvalidation", distribution, err)),
        }
    }

    pub async fn progress(&self, distribution: &str, id: &str) -> Result<Progress, CdnError> {
        let answer = self.client.get_invalidation().distribution_id(distribution).id(id).send().await;
        match answer {
            // `Completed` in AWS; the emulator writes it in capitals.
            Ok(answer) => Ok(match answer.invalidation().map(|i| i.status().to_ascii_lowercase()) {
                Some(status) if status == "completed" => Progress::Completed,
                _ => Progress::InProgress,
            }),
            Err(err) if err.code() == Some("NoSuchInvalidation") => {
                Err(CdnError::NotFound { what: "invalidation", id: id.to_owned() })
            }
            Err(err) if err.code() == Some("NoSuchDistribution") => {
                Err(CdnError::NotFound { what: "distribution", id: distribution.to_owned() })
            }
            Err(err) if is_denied(err.code()) => Err(CdnError::Denied { distribution: distribution.to_owned() }),
            Err(err) => Err(aws("GetInvalidation", distribution, err)),
        }
    }
}

fn is_denied(code: Option<&str>) -> bool {
    matches!(code, Some("AccessDenied" | "AccessDeniedException"))
}

fn aws(operation: &'static str, distribution: &str, err: impl std::error::Error + 'static) -> CdnError {
    CdnError::Aws { operation, distribution: distribution.to_owned(), message: DisplayErrorContext(err).to_string() }
}
