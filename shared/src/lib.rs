//! Conveyor's shared library.
//!
//! Pure decisions live in [`domain`], [`config`] and [`signature`]; input/output lives in one
//! adapter per service ([`store`] for the DynamoDB table, [`secrets`] for Secrets Manager).
//! [`http`] is the small request/response vocabulary every HTTP function speaks, so the same
//! handler runs behind API Gateway in AWS and behind `conveyor dev` locally.

pub mod auth;
pub mod config;
pub mod domain;
pub mod http;
pub mod registration;
pub mod secret;
pub mod secrets;
pub mod signature;
pub mod store;
pub mod telemetry;
pub mod token;
pub mod triggers;

#[cfg(feature = "cloudfront")]
pub mod cloudfront;
#[cfg(feature = "ec2")]
pub mod ec2;
#[cfg(feature = "lambda")]
pub mod lambda;
#[cfg(feature = "probe")]
pub mod probe;
#[cfg(feature = "ec2")]
pub mod provider_images;
#[cfg(feature = "s3")]
pub mod s3;
#[cfg(feature = "ses")]
pub mod ses;
#[cfg(feature = "sts")]
pub mod sts;

pub use aws_config::{BehaviorVersion, SdkConfig};

/// The AWS configuration every function and the CLI start from: region, credentials and,
/// when `AWS_ENDPOINT_URL` is set, the local emulator's endpoint; calls bounded by
/// [`aws_timeouts`].
pub async fn load_aws_config() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest()).timeout_config(aws_timeouts()).load().await
}

/// How long an AWS API call may wait: a connection within 3 s, each attempt within 3 s (an
/// answer that never comes is given up and the SDK tries again, instead of holding a
/// function until Lambda kills it; Conveyor's calls to DynamoDB, EC2, CloudFront, Secrets
/// Manager and SES answer in milliseconds), and the whole call, retries included, within
/// 7 s, inside the 9 s a webhook function has. S3's transfers carry file bodies and take
/// [`s3_timeouts`] instead.
pub fn aws_timeouts() -> aws_config::timeout::TimeoutConfig {
    aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(std::time::Duration::from_secs(3))
        .operation_attempt_timeout(std::time::Duration::from_secs(3))
        .operation_timeout(std::time::Duration::from_secs(7))
        .build()
}

/// The bounds of calls to the local emulator, which answers one request at a time (its first
/// EC2 call loads its images for seconds): a request may wait behind many others there.
/// Tests and `conveyor dev` use these; what runs in AWS uses [`aws_timeouts`].
pub fn emulator_timeouts() -> aws_config::timeout::TimeoutConfig {
    aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(std::time::Duration::from_secs(3))
        .operation_attempt_timeout(std::time::Duration::from_secs(15))
        .operation_timeout(std::time::Duration::from_secs(60))
        .build()
}

/// S3's bound: only the connection's. An upload of a 64 MiB part from a slow CI runner or
/// a download of a large artifact may rightly take minutes.
pub fn s3_timeouts() -> aws_config::timeout::TimeoutConfig {
    aws_config::timeout::TimeoutConfig::builder().connect_timeout(std::time::Duration::from_secs(3)).build()
}

/// The current time in Unix seconds.
pub fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}
