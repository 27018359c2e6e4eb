//! S3 adapter.
//!
//! Build artifacts: one per build at `<repository>/<sha>.tar.gz` in the artifacts bucket,
//! with its SHA-256 and version as object metadata, so the same bytes go to every host and
//! each host can check them. Sites ([`SiteBucket`]): the objects of a published site.

use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;

use crate::SdkConfig;

#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    #[error("S3 {operation} of {url} failed: {message}")]
    Aws { operation: &'static str, url: String, message: String },
    #[error("`{0}` is not an s3://bucket/key URL")]
    BadUrl(String),
    #[error("{0} has no sha256 metadata: upload it with `conveyor artifact push`")]
    NoChecksum(String),
    /// The bytes S3 received are not those whose SHA-256 was planned: the file changed while
    /// it was read (S3 refused it, or the file hashes otherwise after a multipart upload).
    #[error("{0}: the file changed while it was being uploaded (its SHA-256 is not the one planned); run again")]
    Changed(String),
    /// S3 answers 403 for a missing key when the caller may not list the bucket, so this is
    /// "missing or not readable": the caller cannot tell which.
    #[error(
        "the artifact at {0} cannot be read (S3 answered 403 Forbidden): check that it was uploaded (`conveyor artifact push`) and that the function's role may s3:GetObject and s3:ListBucket on the bucket"
    )]
    NotReadable(String),
}

/// An artifact as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    pub url: String,
    pub sha256: String,
    pub version: Option<String>,
    /// The object's S3 version id in a versioned bucket.
    pub version_id: Option<String>,
    pub size: i64,
}

/// The SHA-256 of the file at `path`, read in pieces (an artifact may be larger than memory).
pub fn file_sha256(path: &std::path::Path) -> std::io::Result<String> {
    use sha2::Digest;
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    let mut buffer = vec![0; 1024 * 1024];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buffer[..read]);
    }
}

/// `s3://bucket/key` split into bucket and key.
pub fn parse_url(url: &str) -> Result<(&str, &str), S3Error> {
    url.strip_prefix("s3://")
        .and_then(|rest| rest.split_once('/'))
        .filter(|(bucket, key)| bucket.len() >= 3 && !key.is_empty())
        .ok_or_else(|| S3Error::BadUrl(url.to_owned()))
}

#[derive(Clone, Debug)]
pub struct Artifacts {
    client: Client,
}

impl Artifacts {
    pub fn new(sdk: &SdkConfig) -> Self {
        Self::from_conf(aws_sdk_s3::config::Builder::from(sdk).build())
    }

    /// With a config of the caller's (interceptors in benchmarks).
    pub fn from_conf(config: aws_sdk_s3::Config) -> Self {
        // Path-style addressing works with every endpoint, the local emulator's included.
        let config = config.to_builder().force_path_style(true).timeout_config(crate::s3_timeouts()).build();
        Self { client: Client::from_conf(config) }
    }

    /// The artifact at `url`, or `None` when there is no such object.
    pub async fn head(&self, url: &str) -> Result<Option<Artifact>, S3Error> {
        let (bucket, key) = parse_url(url)?;
        let head = match self.client.head_object().bucket(bucket).key(key).send().await {
            Ok(head) => head,
            Err(err) if err.as_service_error().is_some_and(|e| e.is_not_found()) => return Ok(None),
            Err(err) if err.raw_response().is_some_and(|r| r.status().as_u16() == 403) => {
                return Err(S3Error::NotReadable(url.to_owned()));
            }
            Err(err) => {
                return Err(S3Error::Aws {
                    operation: "HeadObject",
                    url: url.to_owned(),
                    message: DisplayErrorContext(err).to_string(),
                });
            }
        };
        let metadata = head.metadata().cloned().unwrap_or_default();
        let sha256 = metadata.get("sha256").cloned().ok_or_else(|| S3Error::NoChecksum(url.to_owned()))?;
        Ok(Some(Artifact {
            url: url.to_owned(),
            sha256,
            version: metadata.get("version").cloned(),
            version_id: head.version_id().filter(|v| *v != "null").map(str::to_owned),
            size: head.content_length().unwrap_or_default(),
        }))
    }

    /// Uploads `bytes` to `url` with their SHA-256 and `version` as metadata.
    pub async fn put(&self, url: &str, bytes: Vec<u8>, sha256: &str, version: &str) -> Result<(), S3Error> {
        self.put_object(url, ByteStream::from(bytes), sha256, version).await
    }

    /// One PUT of an artifact with its metadata.
    async fn put_object(&self, url: &str, body: ByteStream, sha256: &str, version: &str) -> Result<(), S3Error> {
        let (bucket, key) = parse_url(url)?;
        self.client
            .put_object()
            .bucket(bucket)
            .key(key)
            .checksum_sha256(checksum_sha256(sha256))
            .content_type("application/gzip")
            .metadata("sha256", sha256)
            .metadata("version", version)
            .body(body)
            .send()
            .await
            .map_err(|e| S3Error::Aws {
                operation: "PutObject",
                url: url.to_owned(),
                message: DisplayErrorContext(e).to_string(),
            })?;
        Ok(())
    }

    /// Uploads the file at `path` to `url` with its SHA-256 and `version` as metadata, streamed
    /// from disk: one PUT up to `part_size` bytes, a multipart upload above (aborted if a
    /// part fails, so no half-object is left). `progress` hears the bytes sent so far.
    pub async fn upload_file(
        &self,
        url: &str,
        path: &std::path::Path,
        sha256: &str,
        version: &str,
        part_size: u64,
        progress: impl FnMut(u64),
    ) -> Result<(), S3Error> {
        let (bucket, key) = parse_url(url)?;
        let write = ObjectWrite {
            sha256,
            content_type: "application/gzip",
            cache_control: None,
            content_encoding: None,
            metadata: &[("sha256", sha256), ("version", version)],
        };
        write_file(&self.client, bucket, key, path, &write, part_size, progress).await?;
        Ok(())
    }

    /// Creates `bucket`, versioned as the template makes it, unless it exists. For the local
    /// emulator: in AWS the template owns it.
    pub async fn create_bucket_if_missing(&self, bucket: &str) -> Result<bool, S3Error> {
        use aws_sdk_s3::types::{BucketVersioningStatus, VersioningConfiguration};
        if self.client.head_bucket().bucket(bucket).send().await.is_ok() {
            return Ok(false);
        }
        let aws = |operation, message| S3Error::Aws { operation, url: format!("s3://{bucket}"), message };
        self.client
            .create_bucket()
            .bucket(bucket)
            .send()
            .await
            .map_err(|e| aws("CreateBucket", DisplayErrorContext(e).to_string()))?;
        self.client
            .put_bucket_versioning()
            .bucket(bucket)
            .versioning_configuration(
                VersioningConfiguration::builder().status(BucketVersioningStatus::Enabled).build(),
            )
            .send()
            .await
            .map_err(|e| aws("PutBucketVersioning", DisplayErrorContext(e).to_string()))?;
        Ok(true)
    }

    /// A URL that lets an agent download the artifact for `expires`, without credentials;
    /// with `version_id`, that version of the object and no other.
    pub async fn presigned_get(
        &self,
        url: &str,
        version_id: Option<&str>,
        expires: Duration,
    ) -> Result<String, S3Error> {
        let (bucket, key) = parse_url(url)?;
        let aws = |message: String| S3Error::Aws { operation: "presign GetObject", url: url.to_owned(), message };
        let config = PresigningConfig::expires_in(expires).map_err(|e| aws(e.to_string()))?;
        let request = self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .set_version_id(version_id.map(str::to_owned))
            .presigned(config)
            .await
            .map_err(|e| aws(DisplayErrorContext(e).to_string()))?;
        Ok(request.uri().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_bucket_and_key() {
        assert_eq!(parse_url("s3://artifacts/acme/shop/abc.tar.gz").unwrap(), ("artifacts", "acme/shop/abc.tar.gz"));
        assert!(parse_url("s3://ab/x").is_err(), "bucket names have 3+ characters");
        assert!(parse_url("https://x/y").is_err());
        assert!(parse_url("s3://bucket/").is_err());
    }
}

/// How an object is written: its headers and its metadata.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ObjectWrite<'a> {
    /// The SHA-256 (hex) the bytes must have: S3 itself refuses others (`ChecksumSHA256`),
    /// whatever the bucket's encryption does to the ETag.
    pub sha256: &'a str,
    pub content_type: &'a str,
    pub cache_control: Option<&'a str>,
    pub content_encoding: Option<&'a str>,
    pub metadata: &'a [(&'a str, &'a str)],
}

/// Writes the file at `path` as `bucket/key`, streamed from disk: one PutObject up to
/// `part_size` (at least S3's 5 MiB), parts above it, aborted on failure (parts are billed
/// until then). Answers S3's ETag, without quotes.
pub(crate) async fn write_file(
    client: &Client,
    bucket: &str,
    key: &str,
    path: &std::path::Path,
    write: &ObjectWrite<'_>,
    part_size: u64,
    mut progress: impl FnMut(u64),
) -> Result<String, S3Error> {
    use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
    let url = format!("s3://{bucket}/{key}");
    let aws = |operation, message: String| S3Error::Aws { operation, url: url.clone(), message };
    let read = |e: std::io::Error| aws("read", format!("{}: {e}", path.display()));
    let size = std::fs::metadata(path).map_err(read)?.len();
    let part_size = part_size.max(5 * 1024 * 1024);
    let metadata = || Some(write.metadata.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
    if size <= part_size {
        let body = ByteStream::from_path(path).await.map_err(|e| aws("read", e.to_string()))?;
        let written = client
            .put_object()
            .bucket(bucket)
            .key(key)
            .checksum_sha256(checksum_sha256(write.sha256))
            .content_type(write.content_type)
            .set_cache_control(write.cache_control.map(str::to_owned))
            .set_content_encoding(write.content_encoding.map(str::to_owned))
            .set_metadata(metadata())
            .body(body)
            .send()
            .await
            .map_err(|e| match e.code() {
                Some("BadDigest" | "XAmzContentChecksumMismatch") => S3Error::Changed(url.clone()),
                _ => aws("PutObject", DisplayErrorContext(e).to_string()),
            })?;
        progress(size);
        return Ok(written.e_tag().unwrap_or_default().trim_matches('"').to_owned());
    }
    let upload = client
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .content_type(write.content_type)
        .set_cache_control(write.cache_control.map(str::to_owned))
        .set_content_encoding(write.content_encoding.map(str::to_owned))
        .set_metadata(metadata())
        .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Sha256)
        .send()
        .await
        .map_err(|e| aws("CreateMultipartUpload", DisplayErrorContext(e).to_string()))?;
    let upload_id = upload.upload_id().unwrap_or_default().to_owned();
    let mut parts = Vec::new();
    let sent = async {
        use sha2::Digest;
        use std::io::Read;
        // Each part is read once, into memory: it is sent with its own SHA-256 (S3 refuses
        // other bytes) and feeds the whole file's, which must be the planned one before the
        // upload is completed; otherwise nothing becomes visible.
        let mut file = std::fs::File::open(path).map_err(read)?;
        let mut whole = sha2::Sha256::new();
        let mut offset = 0;
        for number in 1.. {
            if offset >= size {
                break;
            }
            let length = part_size.min(size - offset);
            let mut bytes = vec![0; usize::try_from(length).map_err(|e| aws("read", e.to_string()))?];
            file.read_exact(&mut bytes).map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => S3Error::Changed(url.clone()),
                _ => read(e),
            })?;
            whole.update(&bytes);
            let checksum = aws_smithy_types::base64::encode(sha2::Sha256::digest(&bytes).as_slice());
            let part = client
                .upload_part()
                .bucket(bucket)
                .key(key)
                .upload_id(&upload_id)
                .part_number(number)
                .checksum_sha256(&checksum)
                .body(ByteStream::from(bytes))
                .send()
                .await
                .map_err(|e| match e.code() {
                    Some("BadDigest" | "XAmzContentChecksumMismatch") => S3Error::Changed(url.clone()),
                    _ => aws("UploadPart", DisplayErrorContext(e).to_string()),
                })?;
            parts.push(
                CompletedPart::builder()
                    .set_e_tag(part.e_tag().map(str::to_owned))
                    .checksum_sha256(checksum)
                    .part_number(number)
                    .build(),
            );
            offset += length;
            progress(offset);
        }
        // More bytes than were planned (the file grew) or other ones: never completed.
        let mut rest = [0u8; 1];
        if hex::encode(whole.finalize()) != write.sha256 || file.read(&mut rest).map_err(read)? > 0 {
            return Err(S3Error::Changed(url.clone()));
        }
        let done = client
            .complete_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(&upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .send()
            .await
            .map_err(|e| aws("CompleteMultipartUpload", DisplayErrorContext(e).to_string()))?;
        Ok(done.e_tag().unwrap_or_default().trim_matches('"').to_owned())
    }
    .await;
    if sent.is_err() {
        let _ = client.abort_multipart_upload().bucket(bucket).key(key).upload_id(&upload_id).send().await;
    }
    sent
}

/// `ChecksumSHA256` as S3 takes it: the digest in base64 (`sha256` is hex; a malformed one
/// gives a checksum S3 refuses, never a skipped check).
fn checksum_sha256(sha256: &str) -> String {
    aws_smithy_types::base64::encode(hex::decode(sha256).unwrap_or_else(|_| sha256.as_bytes().to_vec()))
}

mod site;
pub use site::{SiteBucket, Written};
