//! A site's bucket: list what it holds, write files with their headers, rewrite headers in
//! place, delete, and keep Conveyor's manifest beside the site.

use std::path::Path;

use aws_sdk_s3::Client;
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{Delete, MetadataDirective, ObjectIdentifier};

use super::{ObjectWrite, S3Error, write_file};
use crate::SdkConfig;
use crate::domain::publish::{Headers, Manifest, Remote};

/// Files above this go up in parts of this size.
pub const PART_SIZE: u64 = 64 * 1024 * 1024;
/// DeleteObjects takes at most this many keys.
const DELETE_BATCH: usize = 1000;

/// What S3 answered to a write: the object's new ETag, without quotes.
pub type Written = String;

#[derive(Clone, Debug)]
pub struct SiteBucket {
    client: Client,
    bucket: String,
}

impl SiteBucket {
    pub fn new(sdk: &SdkConfig, bucket: &str) -> Self {
        Self::from_conf(aws_sdk_s3::config::Builder::from(sdk).build(), bucket)
    }

    /// The bucket of `site`, in the site's region when it names one.
    pub fn for_site(sdk: &SdkConfig, site: &crate::config::Site) -> Self {
        let mut config = aws_sdk_s3::config::Builder::from(sdk);
        if let Some(region) = &site.region {
            config = config.region(aws_sdk_s3::config::Region::new(region.clone()));
        }
        Self::from_conf(config.build(), &site.bucket)
    }

    pub fn from_conf(config: aws_sdk_s3::Config, bucket: &str) -> Self {
        // Path-style addressing works with every endpoint, the local emulator's included.
        let config = config.to_builder().force_path_style(true).timeout_config(crate::s3_timeouts()).build();
        Self { client: Client::from_conf(config), bucket: bucket.to_owned() }
    }

    fn error(&self, operation: &'static str, key: &str, err: impl std::error::Error + 'static) -> S3Error {
        S3Error::Aws {
            operation,
            url: format!("s3://{}/{key}", self.bucket),
            message: DisplayErrorContext(err).to_string(),
        }
    }

    /// Every object under `prefix`, and the number of listing pages it took.
    pub async fn list(&self, prefix: &str) -> Result<(Vec<Remote>, usize), S3Error> {
        let mut objects = Vec::new();
        let mut pages = 0;
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| self.error("ListObjectsV2", prefix, e))?;
            pages += 1;
            for object in page.contents() {
                let Some(key) = object.key() else { continue };
                objects.push(Remote {
                    key: key.to_owned(),
                    etag: object.e_tag().unwrap_or_default().trim_matches('"').to_owned(),
                    size: object.size().unwrap_or_default().max(0) as u64,
                    last_modified: object.last_modified().and_then(|at| at.to_millis().ok()).unwrap_or(i64::MAX),
                });
            }
            match page.next_continuation_token() {
                Some(next) if page.is_truncated() == Some(true) => token = Some(next.to_owned()),
                _ => return Ok((objects, pages)),
            }
        }
    }

    /// Writes the file at `path` as `key`, with its headers and its SHA-256 as metadata; in
    /// parts above [`PART_SIZE`].
    pub async fn upload(&self, key: &str, path: &Path, headers: &Headers, sha256: &str) -> Result<Written, S3Error> {
        let write = ObjectWrite {
            sha256,
            content_type: &headers.content_type,
            cache_control: Some(&headers.cache_control),
            content_encoding: headers.content_encoding.as_deref(),
            metadata: &[("sha256", sha256)],
        };
        write_file(&self.client, &self.bucket, key, path, &write, PART_SIZE, |_| {}).await
    }

    /// Gives `key` new headers without sending its bytes again (a copy onto itself).
    pub async fn rewrite_headers(&self, key: &str, headers: &Headers, sha256: &str) -> Result<Written, S3Error> {
        // The copy source is `bucket/key`, URL-encoded as a path.
        let source = format!("{}/{}", self.bucket, percent_encoding::utf8_percent_encode(key, COPY_SOURCE));
        let copied = self
            .client
            .copy_object()
            .bucket(&self.bucket)
            .key(key)
            .copy_source(source)
            .metadata_directive(MetadataDirective::Replace)
            .content_type(&headers.content_type)
            .cache_control(&headers.cache_control)
            .set_content_encoding(headers.content_encoding.clone())
            .metadata("sha256", sha256)
            .send()
            .await
            .map_err(|e| self.error("CopyObject", key, e))?;
        let etag = copied.copy_object_result().and_then(|r| r.e_tag()).unwrap_or_default();
        Ok(etag.trim_matches('"').to_owned())
    }

    /// Deletes `keys`, a thousand per request; any key S3 could not delete fails the call.
    pub async fn delete(&self, keys: &[String]) -> Result<(), S3Error> {
        for batch in keys.chunks(DELETE_BATCH) {
            let objects = batch
                .iter()
                .map(|key| ObjectIdentifier::builder().key(key).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| self.error("DeleteObjects", &batch[0], e))?;
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| self.error("DeleteObjects", &batch[0], e))?;
            let answer = self
                .client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| self.error("DeleteObjects", &batch[0], e))?;
            if let Some(failed) = answer.errors().first() {
                return Err(S3Error::Aws {
                    operation: "DeleteObjects",
                    url: format!("s3://{}/{}", self.bucket, failed.key().unwrap_or_default()),
                    message: format!(
                        "{} of {} keys not deleted: {}",
                        answer.errors().len(),
                        batch.len(),
                        failed.message().unwrap_or_else(|| failed.code().unwrap_or("no reason given"))
                    ),
                });
            }
        }
        Ok(())
    }

    /// Conveyor's manifest at `key`; an empty one when there is none or it cannot be read
    /// (it is only a shortcut: every entry is checked against the object's ETag).
    pub async fn manifest(&self, key: &str) -> Result<Manifest, S3Error> {
        let object = match self.client.get_object().bucket(&self.bucket).key(key).send().await {
            Ok(object) => object,
            Err(err) if err.as_service_error().is_some_and(|e| e.is_no_such_key()) => return Ok(Manifest::default()),
            Err(err) => return Err(self.error("GetObject", key, err)),
        };
        let bytes = object.body.collect().await.map_err(|e| self.error("GetObject", key, e))?.into_bytes();
        Ok(serde_json::from_slice(&bytes).unwrap_or_else(|err| {
            tracing::warn!(%key, error = %err, "the site manifest cannot be read; every object is compared by its ETag");
            Manifest::default()
        }))
    }

    pub async fn put_manifest(&self, key: &str, manifest: &Manifest) -> Result<(), S3Error> {
        let body = serde_json::to_vec(manifest).map_err(|e| self.error("PutObject", key, e))?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/json")
            .cache_control("no-store")
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| self.error("PutObject", key, e))?;
        Ok(())
    }
}

/// What a copy source keeps as it is: a key's unreserved characters and its `/`.
const COPY_SOURCE: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'/').remove(b'-').remove(b'_').remove(b'.').remove(b'~');
