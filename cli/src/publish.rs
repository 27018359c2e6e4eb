//! `conveyor publish DIR --site NAME`: the build in DIR into the site's bucket, sending only
//! what changed. The decisions are `conveyor_shared::domain::publish`'s; this reads the
//! files, asks the bucket and the table, and writes in the safe order:
//!
//! 1. the publish is recorded (`pending`) before the first write, keyed by the build and
//!    the state it is published over, so a run that dies part-way and is run again resumes
//!    the same publish (and ends in one invalidation); the stale keys of other runs that
//!    died part-way are folded into it;
//! 2. new and changed files, and header changes (copies in place, no bytes sent): assets
//!    first, HTML last, so no page goes out before what it loads;
//! 3. deletions, last, so no page links to an asset that is already gone;
//! 4. the publish is marked `uploaded`, which hands its stale keys to `cdn-invalidate`;
//! 5. Conveyor's manifest, which makes the next comparison cheap.
//!
//! Two different builds published to one site at the same time both end `uploaded`, but the
//! bucket holds a mix of them: serialise a site's publishes in CI (a concurrency group).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use conveyor_shared::config::Site;
use conveyor_shared::domain::invalidation;
use conveyor_shared::domain::publish::{
    self, Desired, MANIFEST_KEY, Plan, PublishError, PublishRecord, PublishState, Reason,
};
use conveyor_shared::s3::{S3Error, SiteBucket};
use conveyor_shared::store::{Put, StoreError, Table};
use serde::Serialize;
use sha2::Digest;

/// Files sent at once.
pub const CONCURRENCY: usize = 8;
/// S3's limit on one PutObject.
pub const MAX_FILE_BYTES: u64 = 5 * 1024 * 1024 * 1024;

/// What to publish, and how.
#[derive(Debug, Clone)]
pub struct Publish<'a> {
    pub site: &'a Site,
    pub dir: &'a Path,
    pub dry_run: bool,
    /// Overrides the site's `max_delete`.
    pub max_delete: Option<usize>,
    pub triggered_by: String,
}

/// What a publish did (or, for a dry run, would do).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub site: String,
    /// The publish's id; none when nothing changed or for a dry run.
    pub publish: Option<String>,
    pub dry_run: bool,
    /// This run finished a publish an earlier run had started.
    pub resumed: bool,
    pub uploaded: Vec<String>,
    pub headers_updated: Vec<String>,
    pub deleted: Vec<String>,
    pub unchanged: usize,
    pub bytes: u64,
    /// The invalidation `cdn-invalidate` will submit.
    pub invalidation: Vec<String>,
    /// Pages of the bucket's listing read.
    pub listing_pages: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishFailure {
    #[error("{0} is not a directory: name the build's output directory (like ./dist)")]
    NotADirectory(PathBuf),
    #[error("cannot read {path}: {source}; nothing was published")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{0}: the file name is not UTF-8, which S3 keys must be; rename it")]
    NotUtf8(PathBuf),
    #[error(
        "{0} has a `.conveyor/` directory, where Conveyor keeps the site's manifest in the bucket; remove it from the build"
    )]
    Reserved(PathBuf),
    #[error(
        "{0} is a link to a directory, which is not followed (its files would be deleted from the site); copy them into the build"
    )]
    LinkedDirectory(PathBuf),
    #[error("{0} holds no file: build the site first (publishing an empty build would delete the whole site)")]
    Empty(PathBuf),
    #[error(
        "{path} is {size} bytes, over the 5 GB Conveyor publishes (S3 copies at most 5 GB in one request, which a header change needs); nothing was published"
    )]
    TooLarge { path: PathBuf, size: u64 },
    #[error(
        "{0} changed while it was being published (S3 received other bytes than were hashed); run the publish again"
    )]
    ChangedMeanwhile(String),
    #[error("an upload stopped unexpectedly: {0}")]
    Task(String),
    #[error(transparent)]
    Plan(#[from] PublishError),
    #[error(transparent)]
    S3(#[from] S3Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Every file under `dir` as the site should hold it, sorted by path. Any file that cannot
/// be read fails the scan, before anything is written.
pub fn scan(site: &Site, dir: &Path) -> Result<Vec<(Desired, PathBuf)>, PublishFailure> {
    if !dir.is_dir() {
        return Err(PublishFailure::NotADirectory(dir.to_owned()));
    }
    if dir.join(".conveyor").exists() {
        return Err(PublishFailure::Reserved(dir.to_owned()));
    }
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(current) = pending.pop() {
        let read = |source| PublishFailure::Read { path: current.clone(), source };
        for entry in std::fs::read_dir(&current).map_err(read)? {
            let entry = entry.map_err(read)?;
            let path = entry.path();
            // Follows links to files; a link to a directory is not followed (it could loop).
            let kind = entry.file_type().map_err(|source| PublishFailure::Read { path: path.clone(), source })?;
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_symlink() && !path.exists() {
                let source = std::io::Error::new(std::io::ErrorKind::NotFound, "a link to nothing");
                return Err(PublishFailure::Read { path, source });
            } else if kind.is_symlink() && path.is_dir() {
                return Err(PublishFailure::LinkedDirectory(path));
            } else if kind.is_file() || (kind.is_symlink() && path.is_file()) {
                let relative = path.strip_prefix(dir).unwrap_or(&path);
                let parts: Option<Vec<&str>> = relative.components().map(|c| c.as_os_str().to_str()).collect();
                let site_path = parts.ok_or_else(|| PublishFailure::NotUtf8(path.clone()))?.join("/");
                files.push((site_path, path));
            }
        }
    }
    if files.is_empty() {
        return Err(PublishFailure::Empty(dir.to_owned()));
    }
    files.sort();
    if site.precompressed.is_some() {
        files = serve_precompressed(files);
    }
    files
        .into_iter()
        .map(|(site_path, path)| {
            let (sha256, md5, size) =
                digests(&path).map_err(|source| PublishFailure::Read { path: path.clone(), source })?;
            if size > MAX_FILE_BYTES {
                return Err(PublishFailure::TooLarge { path, size });
            }
            let mut headers = publish::headers_for(site, &site_path);
            if site.precompressed.is_some() && path.extension().is_some_and(|ext| ext == "gz") {
                headers.content_encoding = Some("gzip".into());
            }
            let desired =
                Desired { key: publish::key_of(site, &site_path), headers, path: site_path, sha256, md5, size };
            Ok((desired, path))
        })
        .collect()
}

/// With pre-compressed files served: each `NAME.gz` stands for `NAME` (its bytes are
/// published under NAME's key, gzip-encoded), and NAME's own bytes are left out.
fn serve_precompressed(files: Vec<(String, PathBuf)>) -> Vec<(String, PathBuf)> {
    let compressed: std::collections::BTreeSet<String> =
        files.iter().filter_map(|(site_path, _)| site_path.strip_suffix(".gz").map(str::to_owned)).collect();
    let mut served: Vec<(String, PathBuf)> = files
        .into_iter()
        .filter(|(site_path, _)| !compressed.contains(site_path))
        .map(|(site_path, path)| match site_path.strip_suffix(".gz") {
            Some(original) => (original.to_owned(), path),
            None => (site_path, path),
        })
        .collect();
    served.sort();
    served
}

/// SHA-256 and MD5 (hex) and size of a file, in one read.
pub fn digests(path: &Path) -> std::io::Result<(String, String, u64)> {
    let mut file = std::fs::File::open(path)?;
    let (mut sha256, mut md5) = (sha2::Sha256::new(), md5::Md5::new());
    let mut buffer = vec![0; 256 * 1024];
    let mut size = 0u64;
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            return Ok((hex::encode(sha256.finalize()), hex::encode(md5.finalize()), size));
        }
        sha256.update(&buffer[..read]);
        md5.update(&buffer[..read]);
        size += read as u64;
    }
}

/// Publishes (see the module's documentation). `progress` is told (done, total) as writes end.
pub async fn publish(
    table: &Table,
    bucket: &SiteBucket,
    request: &Publish<'_>,
    now: i64,
    progress: impl Fn(usize, usize),
) -> Result<Summary, PublishFailure> {
    let site = request.site;
    let files = scan(site, request.dir)?;
    let desired: Vec<Desired> = files.iter().map(|(d, _)| d.clone()).collect();
    let (remote, listing_pages) = bucket.list(&site.prefix).await?;
    let manifest_key = publish::key_of(site, MANIFEST_KEY);
    let mut manifest = bucket.manifest(&manifest_key).await?;
    manifest.written_at = remote.iter().find(|r| r.key == manifest_key).map(|r| r.last_modified);
    let max_delete = request.max_delete.unwrap_or(site.max_delete);
    let plan = publish::plan(site, &desired, &remote, &manifest, max_delete, &request.dir.display().to_string())?;
    let mut summary = summarize(site, &plan, listing_pages, request.dry_run);
    if request.dry_run {
        return Ok(summary);
    }
    let id = publish::publish_id(site, &manifest, &desired);
    if plan.is_empty() {
        // Nothing to write, but a run of this publish may have died after its last write and
        // before marking it: mark it now, or its stale keys are never invalidated.
        return match table.publish(&site.name, &id).await? {
            Some(record) if record.state == PublishState::Pending => {
                let invalidation = finish(table, bucket, site, record, &desired, &remote, &BTreeMap::new()).await?;
                Ok(Summary { publish: Some(id), resumed: true, invalidation, ..summary })
            }
            _ => Ok(summary),
        };
    }

    let mut record = PublishRecord::new(site, &id, &plan, &request.triggered_by, now);
    let paths: BTreeMap<&str, &Path> = files.iter().map(|(d, path)| (d.key.as_str(), path.as_path())).collect();
    if table.open_publish(&record).await? == Put::AlreadyExists {
        summary.resumed = true;
        match table.publish(&site.name, &id).await? {
            // It got as far as `uploaded`: only put the objects right again.
            Some(earlier) if earlier.state != PublishState::Pending => {
                let etags = write(bucket, &plan, &paths, &progress).await?;
                bucket.delete(&plan.deletes).await?;
                let next = publish::next_manifest(&desired, &remote, &etags, Some(&id));
                bucket.put_manifest(&manifest_key, &next).await?;
                return Ok(Summary { publish: Some(id), invalidation: invalidation_of(site, &earlier), ..summary });
            }
            // Resumed: its record keeps the first run's stale keys.
            Some(mut earlier) => {
                earlier.add_stale(plan.stale_keys());
                record = earlier;
            }
            None => {}
        }
    }
    summary.publish = Some(id);
    let etags = write(bucket, &plan, &paths, &progress).await?;
    bucket.delete(&plan.deletes).await?;
    summary.invalidation = finish(table, bucket, site, record, &desired, &remote, &etags).await?;
    Ok(summary)
}

/// Marks `record` uploaded, with the stale keys of the site's other publishes that died
/// part-way folded in, then writes the manifest. Answers the invalidation's paths.
async fn finish(
    table: &Table,
    bucket: &SiteBucket,
    site: &Site,
    mut record: PublishRecord,
    desired: &[Desired],
    remote: &[publish::Remote],
    etags: &BTreeMap<String, String>,
) -> Result<Vec<String>, PublishFailure> {
    let now = conveyor_shared::unix_now();
    let pending = table.pending_publishes(&site.name).await?;
    let others: Vec<PublishRecord> = pending.into_iter().filter(|other| other.id != record.id).collect();
    for other in &others {
        record.whole_site |= other.whole_site;
        record.add_stale(other.stale_keys.iter().cloned());
    }
    // Rejected: another run of the same publish marked it first; that is the same end.
    table.finish_upload(&record, now).await?;
    for other in &others {
        table.supersede_publish(other, &record.id, now).await?;
    }
    let next = publish::next_manifest(desired, remote, etags, Some(&record.id));
    bucket.put_manifest(&publish::key_of(site, MANIFEST_KEY), &next).await?;
    Ok(invalidation_of(site, &record))
}

fn invalidation_of(site: &Site, record: &PublishRecord) -> Vec<String> {
    if record.whole_site {
        return vec!["/*".into()];
    }
    invalidation::plan(site, &record.stale_keys).map(|i| i.paths).unwrap_or_default()
}

fn summarize(site: &Site, plan: &Plan, listing_pages: usize, dry_run: bool) -> Summary {
    let keys = |want: fn(Reason) -> bool| -> Vec<String> {
        plan.uploads.iter().filter(|(_, r)| want(*r)).map(|(d, _)| d.key.clone()).collect()
    };
    Summary {
        site: site.name.clone(),
        publish: None,
        dry_run,
        resumed: false,
        uploaded: keys(|r| r != Reason::Headers),
        headers_updated: keys(|r| r == Reason::Headers),
        deleted: plan.deletes.clone(),
        unchanged: plan.unchanged,
        bytes: plan.bytes(),
        invalidation: invalidation::plan(site, &plan.stale_keys()).map(|i| i.paths).unwrap_or_default(),
        listing_pages,
    }
}

/// Sends the plan's uploads and header changes, [`CONCURRENCY`] at a time, HTML after
/// everything else; answers each key's new ETag. The first failure stops the publish (what
/// was written stays: a new run finds it in place).
async fn write(
    bucket: &SiteBucket,
    plan: &Plan,
    paths: &BTreeMap<&str, &Path>,
    progress: &impl Fn(usize, usize),
) -> Result<BTreeMap<String, String>, PublishFailure> {
    let is_page = |file: &Desired| file.headers.content_type.starts_with("text/html");
    let (pages, assets): (Vec<_>, Vec<_>) = plan.uploads.iter().partition(|(file, _)| is_page(file));
    let total = plan.uploads.len();
    let mut etags = BTreeMap::new();
    for phase in [assets, pages] {
        let mut running = tokio::task::JoinSet::new();
        let mut queue = phase.into_iter();
        loop {
            while running.len() < CONCURRENCY {
                let Some((file, reason)) = queue.next() else { break };
                let (bucket, file, reason) = (bucket.clone(), file.clone(), *reason);
                let path = paths.get(file.key.as_str()).map(|p| p.to_path_buf()).unwrap_or_default();
                running.spawn(async move { send(&bucket, file, reason, &path).await });
            }
            let Some(done) = running.join_next().await else { break };
            let (key, etag) = done.map_err(|join| PublishFailure::Task(join.to_string()))??;
            etags.insert(key, etag);
            progress(etags.len(), total);
        }
    }
    Ok(etags)
}

async fn send(
    bucket: &SiteBucket,
    file: Desired,
    reason: Reason,
    path: &Path,
) -> Result<(String, String), PublishFailure> {
    // An upload carries the SHA-256 that was planned, and S3 refuses other bytes (whatever
    // the bucket's encryption makes of the ETag): a file that changed meanwhile is never
    // recorded in the manifest.
    let written = match reason {
        Reason::Headers => bucket.rewrite_headers(&file.key, &file.headers, &file.sha256).await,
        Reason::New | Reason::Content => bucket.upload(&file.key, path, &file.headers, &file.sha256).await,
    };
    match written {
        Ok(etag) => Ok((file.key, etag)),
        Err(S3Error::Changed(_)) => Err(PublishFailure::ChangedMeanwhile(file.key)),
        Err(other) => Err(other.into()),
    }
}

/// How waiting for a publish to go live ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Live {
    /// Its invalidation completed (or it needed none): the new version is what viewers get.
    Completed(Box<PublishRecord>),
    /// Its invalidation failed; an alert says what to do.
    Failed(Box<PublishRecord>),
    TimedOut(Option<Box<PublishRecord>>),
}

impl Live {
    /// As `conveyor wait`: 0 live, 1 failed, 3 out of time.
    pub fn exit_code(&self) -> u8 {
        match self {
            Live::Completed(_) => 0,
            Live::Failed(_) => 1,
            Live::TimedOut(_) => 3,
        }
    }
}

/// Follows publish `id` of `site` until it is live or failed, reading the table every
/// `poll`; a read that fails is tried again until `timeout`.
pub async fn wait_live(
    table: &Table,
    site: &str,
    id: &str,
    timeout: std::time::Duration,
    poll: std::time::Duration,
    mut progress: impl FnMut(&PublishRecord),
) -> Live {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last: Option<Box<PublishRecord>> = None;
    loop {
        match table.publish(site, id).await {
            Ok(Some(record)) => {
                if last.as_ref().is_none_or(|l| l.state != record.state) {
                    progress(&record);
                }
                match record.state {
                    PublishState::Completed => return Live::Completed(Box::new(record)),
                    PublishState::Failed => return Live::Failed(Box::new(record)),
                    _ => last = Some(Box::new(record)),
                }
            }
            Ok(None) => {}
            Err(err) => tracing::warn!(error = %err, "cannot read the publish; trying again"),
        }
        if tokio::time::Instant::now() + poll > deadline {
            return Live::TimedOut(last);
        }
        tokio::time::sleep(poll).await;
    }
}
