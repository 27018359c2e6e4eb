//! Publishing a static site: what the bucket should hold, and the fewest changes that get it
//! there. Pure: the CLI hashes the files and lists the bucket, this decides.
//!
//! Content is compared by SHA-256. The bucket's listing gives each object's ETag, which is
//! an MD5 of the content only for single-part objects without KMS; so Conveyor keeps a
//! manifest of what it wrote (SHA-256, headers and the ETag S3 answered) and trusts an entry
//! only while the object still has the ETag recorded and was not written after the manifest
//! (a header change out of band keeps the ETag, not the time). An object changed behind
//! Conveyor's back, or never written by it, falls back to its ETag as MD5; when that matches,
//! its headers are unknown, so they are written again in place (a copy, no bytes sent).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::Site;

/// Where Conveyor keeps its manifest, under the site's prefix. Never published, never deleted.
pub const MANIFEST_KEY: &str = ".conveyor/manifest.json";

/// The headers S3 serves an object with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Headers {
    pub content_type: String,
    pub cache_control: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_encoding: Option<String>,
}

/// A file of the build, as it should be in the bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// The path in the site, `/`-separated (`assets/app.3f2a.js`).
    pub path: String,
    /// The object key: the site's prefix and the path.
    pub key: String,
    pub sha256: String,
    pub md5: String,
    pub size: u64,
    pub headers: Headers,
}

/// An object the bucket's listing shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub key: String,
    /// Without its quotes.
    pub etag: String,
    pub size: u64,
    /// When S3 last wrote it, in milliseconds since the epoch (S3's clock).
    pub last_modified: i64,
}

/// What Conveyor wrote for one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    pub sha256: String,
    pub etag: String,
    pub headers: Headers,
}

/// Every object of the site Conveyor wrote, as of its last publish.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The publish that wrote it: each publish's id chains to the one before, so publishing a
    /// build that was published before (a roll back, then forward again) is a new publish.
    #[serde(default)]
    pub publish: Option<String>,
    pub objects: BTreeMap<String, Recorded>,
    /// When S3 wrote the manifest (its listing's time): an object written after it was
    /// changed behind Conveyor's back. `None` trusts no entry.
    #[serde(skip)]
    pub written_at: Option<i64>,
}

/// Why a file is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Not in the bucket.
    New,
    /// In the bucket with other content.
    Content,
    /// Same content, other headers (or headers Conveyor cannot know): copied in place.
    Headers,
}

/// The changes a publish makes, in the order it makes them: uploads and header updates
/// first, deletions last, so no page links to an asset that is already gone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub uploads: Vec<(Desired, Reason)>,
    pub deletes: Vec<String>,
    pub unchanged: usize,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.uploads.is_empty() && self.deletes.is_empty()
    }

    /// Bytes the uploads send (header updates send none).
    pub fn bytes(&self) -> u64 {
        self.uploads.iter().filter(|(_, reason)| *reason != Reason::Headers).map(|(d, _)| d.size).sum()
    }

    /// The keys a viewer may have cached at their old state: changed content or headers,
    /// and deletions. A new key was never served (only, briefly, its 404), so it needs none.
    pub fn stale_keys(&self) -> Vec<String> {
        let changed = self.uploads.iter().filter(|(_, reason)| *reason != Reason::New).map(|(d, _)| d.key.clone());
        let keys: BTreeSet<String> = changed.chain(self.deletes.iter().cloned()).collect();
        keys.into_iter().collect()
    }
}

/// Why a publish stops before it writes anything.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error(
        "this publish would delete {count} objects from the bucket, over the limit of {limit}; check that {dir} is the whole build, then run again with --max-delete {count} (or raise max_delete for the site)"
    )]
    TooManyDeletes { count: usize, limit: usize, dir: String },
}

/// Where a publish stands. `uploaded` hands it to `cdn-invalidate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PublishState {
    /// Recorded before the first write; a publish run again after a crash resumes it.
    Pending,
    /// Every object is in place; the stale keys wait for their invalidation.
    Uploaded,
    /// Its invalidation was submitted (`invalidation_id`); followed until it completes.
    Invalidating,
    /// Live everywhere: the invalidation completed (or nothing served had changed).
    Completed,
    /// CloudFront lost or refused the invalidation; an alert says what to do.
    Failed,
    /// Given up part-way (the run died) and folded into a later publish, which carries its
    /// stale keys.
    Superseded,
    /// A state a newer version of Conveyor wrote: listed, never acted on.
    #[serde(other)]
    Unknown,
}

impl PublishState {
    pub fn as_str(self) -> &'static str {
        match self {
            PublishState::Pending => "pending",
            PublishState::Uploaded => "uploaded",
            PublishState::Invalidating => "invalidating",
            PublishState::Completed => "completed",
            PublishState::Failed => "failed",
            PublishState::Unknown => "unknown",
            PublishState::Superseded => "superseded",
        }
    }
}

/// Above this many stale keys, or this many bytes of them, a publish records `whole_site`
/// instead of the keys: the list would crowd the item (400 KB at most), and no budget keeps
/// that many paths anyway.
pub const MAX_RECORDED_KEYS: usize = 2000;
pub const MAX_RECORDED_KEY_BYTES: usize = 200 * 1024;

/// A publish as the table records it (`SITE#<site>` / `PUBLISH#<id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishRecord {
    pub site: String,
    pub id: String,
    pub distribution: String,
    pub state: PublishState,
    /// The keys a viewer may have cached at their old state (see [`Plan::stale_keys`]).
    #[serde(default)]
    pub stale_keys: Vec<String>,
    /// Too many stale keys to list: the whole site is stale.
    #[serde(default)]
    pub whole_site: bool,
    pub uploads: usize,
    pub header_updates: usize,
    pub deletes: usize,
    pub bytes: u64,
    /// Who or what ran it (the CI job, or the user).
    pub triggered_by: String,
    pub created_at: i64,
    #[serde(default)]
    pub uploaded_at: Option<i64>,
    /// The CloudFront invalidation, once submitted.
    #[serde(default)]
    pub invalidation_id: Option<String>,
    #[serde(default)]
    pub invalidation_paths: Vec<String>,
    #[serde(default)]
    pub submitted_at: Option<i64>,
    #[serde(default)]
    pub completed_at: Option<i64>,
}

impl PublishRecord {
    pub fn new(site: &Site, id: &str, plan: &Plan, triggered_by: &str, now: i64) -> Self {
        let mut record = Self {
            site: site.name.clone(),
            id: id.to_owned(),
            distribution: site.distribution.clone(),
            state: PublishState::Pending,
            stale_keys: Vec::new(),
            whole_site: false,
            uploads: plan.uploads.iter().filter(|(_, r)| *r != Reason::Headers).count(),
            header_updates: plan.uploads.iter().filter(|(_, r)| *r == Reason::Headers).count(),
            deletes: plan.deletes.len(),
            bytes: plan.bytes(),
            triggered_by: triggered_by.to_owned(),
            created_at: now,
            uploaded_at: None,
            invalidation_id: None,
            invalidation_paths: Vec::new(),
            submitted_at: None,
            completed_at: None,
        };
        record.add_stale(plan.stale_keys());
        record
    }

    /// Adds keys found stale by a resumed run (objects the interrupted run had written).
    pub fn add_stale(&mut self, keys: impl IntoIterator<Item = String>) {
        if self.whole_site {
            return;
        }
        let all: BTreeSet<String> = self.stale_keys.drain(..).chain(keys).collect();
        if all.len() > MAX_RECORDED_KEYS || all.iter().map(String::len).sum::<usize>() > MAX_RECORDED_KEY_BYTES {
            self.whole_site = true;
        } else {
            self.stale_keys = all.into_iter().collect();
        }
    }
}

/// The key of a path in the site.
pub fn key_of(site: &Site, path: &str) -> String {
    format!("{}{path}", site.prefix)
}

/// The headers a path is served with: its content type by extension (the site's own types
/// first) and the first cache rule that matches it.
pub fn headers_for(site: &Site, path: &str) -> Headers {
    let name = path.rsplit('/').next().unwrap_or(path);
    let extension = name.rsplit_once('.').map(|(_, ext)| ext.to_ascii_lowercase()).unwrap_or_default();
    let content_type =
        site.content_types.get(&extension).cloned().unwrap_or_else(|| content_type_of(&extension).to_owned());
    Headers { content_type, cache_control: site.cache_control(path).to_owned(), content_encoding: None }
}

/// The usual content types of a web build; anything else is `application/octet-stream`.
fn content_type_of(extension: &str) -> &'static str {
    match extension {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" | "cjs" => "text/javascript; charset=utf-8",
        "json" | "map" => "application/json",
        "webmanifest" => "application/manifest+json",
        "txt" => "text/plain; charset=utf-8",
        "md" => "text/markdown; charset=utf-8",
        "csv" => "text/csv; charset=utf-8",
        "xml" => "application/xml",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "ico" => "image/x-icon",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        "otf" => "font/otf",
        "wasm" => "application/wasm",
        "pdf" => "application/pdf",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "mp3" => "audio/mpeg",
        "zip" => "application/zip",
        _ => "application/octet-stream",
    }
}

/// The changes that make the bucket (`remote`, the objects under the site's prefix) hold
/// exactly `desired`; `manifest` is what Conveyor wrote last time. Refused, with nothing
/// to do, when it would delete more than `max_delete` objects.
pub fn plan(
    site: &Site,
    desired: &[Desired],
    remote: &[Remote],
    manifest: &Manifest,
    max_delete: usize,
    dir: &str,
) -> Result<Plan, PublishError> {
    let remote: BTreeMap<&str, &Remote> = remote.iter().map(|r| (r.key.as_str(), r)).collect();
    let mut plan = Plan::default();
    for file in desired {
        let reason = match remote.get(file.key.as_str()) {
            None => Some(Reason::New),
            Some(object) => {
                let written_since = manifest.written_at.is_none_or(|at| object.last_modified > at);
                compare(file, object, manifest.objects.get(&file.key).filter(|_| !written_since))
            }
        };
        match reason {
            Some(reason) => plan.uploads.push((file.clone(), reason)),
            None => plan.unchanged += 1,
        }
    }
    let wanted: BTreeSet<&str> = desired.iter().map(|d| d.key.as_str()).collect();
    let manifest_key = key_of(site, MANIFEST_KEY);
    plan.deletes = remote
        .keys()
        .filter(|key| !wanted.contains(*key) && **key != manifest_key)
        .map(|key| (*key).to_owned())
        .collect();
    if plan.deletes.len() > max_delete {
        return Err(PublishError::TooManyDeletes { count: plan.deletes.len(), limit: max_delete, dir: dir.to_owned() });
    }
    Ok(plan)
}

fn compare(file: &Desired, object: &Remote, recorded: Option<&Recorded>) -> Option<Reason> {
    match recorded {
        // The object is as Conveyor wrote it: the manifest knows its content and headers.
        Some(recorded) if !object.etag.is_empty() && recorded.etag == object.etag => {
            if recorded.sha256 != file.sha256 {
                Some(Reason::Content)
            } else if recorded.headers != file.headers {
                Some(Reason::Headers)
            } else {
                None
            }
        }
        // Written by someone else (or Conveyor's write was not recorded): its ETag is the MD5
        // of its content only for a single-part upload without KMS; its headers are unknown.
        _ if is_plain_md5(&object.etag) && object.etag == file.md5 && object.size == file.size => Some(Reason::Headers),
        _ => Some(Reason::Content),
    }
}

fn is_plain_md5(etag: &str) -> bool {
    etag.len() == 32 && etag.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The manifest after a publish: each desired key with the ETag the bucket now holds.
/// `etags` are those S3 answered to this publish's writes; an object left as it was keeps
/// its listed ETag.
pub fn next_manifest(
    desired: &[Desired],
    remote: &[Remote],
    etags: &BTreeMap<String, String>,
    publish: Option<&str>,
) -> Manifest {
    let listed: BTreeMap<&str, &str> = remote.iter().map(|r| (r.key.as_str(), r.etag.as_str())).collect();
    let objects = desired
        .iter()
        .filter_map(|file| {
            let etag = etags.get(&file.key).map(String::as_str).or_else(|| listed.get(file.key.as_str()).copied())?;
            Some((
                file.key.clone(),
                Recorded { sha256: file.sha256.clone(), etag: etag.to_owned(), headers: file.headers.clone() },
            ))
        })
        .collect();
    Manifest { publish: publish.map(str::to_owned), objects, written_at: None }
}

/// A publish's id: the same build published over the same recorded state is the same
/// publish, so running it again (after a crash, say) resumes it instead of starting another.
pub fn publish_id(site: &Site, manifest: &Manifest, desired: &[Desired]) -> String {
    let mut hash = Sha256::new();
    for part in [site.name.as_str(), manifest.publish.as_deref().unwrap_or("")] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    for (key, recorded) in &manifest.objects {
        for part in [key.as_str(), &recorded.sha256, &recorded.etag, &headers_line(&recorded.headers)] {
            hash.update(part.as_bytes());
            hash.update([0]);
        }
    }
    hash.update([1]);
    let mut files: Vec<&Desired> = desired.iter().collect();
    files.sort_by(|a, b| a.key.cmp(&b.key));
    for file in files {
        for part in [file.key.as_str(), &file.sha256, &headers_line(&file.headers)] {
            hash.update(part.as_bytes());
            hash.update([0]);
        }
    }
    hex::encode(&hash.finalize()[..10])
}

fn headers_line(headers: &Headers) -> String {
    format!(
        "{}\n{}\n{}",
        headers.content_type,
        headers.cache_control,
        headers.content_encoding.as_deref().unwrap_or("")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(extra: &str) -> Site {
        Site::sample(extra)
    }

    fn file(site: &Site, path: &str, content: &str) -> Desired {
        Desired {
            path: path.into(),
            key: key_of(site, path),
            sha256: hex::encode(Sha256::digest(content.as_bytes())),
            md5: format!("md5-of-{content}"),
            size: content.len() as u64,
            headers: headers_for(site, path),
        }
    }

    /// The bucket and manifest right after a publish of `files`.
    fn published(files: &[Desired]) -> (Vec<Remote>, Manifest) {
        let remote: Vec<Remote> = files
            .iter()
            .map(|f| Remote {
                key: f.key.clone(),
                etag: format!("etag-{}", &f.sha256[..8]),
                size: f.size,
                last_modified: 1_000,
            })
            .collect();
        let mut manifest = next_manifest(files, &remote, &BTreeMap::new(), Some("earlier"));
        manifest.written_at = Some(2_000);
        (remote, manifest)
    }

    #[test]
    fn the_defaults_serve_a_single_page_app() {
        let site = site("");
        assert_eq!(headers_for(&site, "index.html").cache_control, "no-cache");
        assert_eq!(headers_for(&site, "docs/guide/index.html").cache_control, "no-cache");
        assert_eq!(headers_for(&site, "assets/app.3f2a9c.js").cache_control, "public, max-age=31536000, immutable");
        assert_eq!(headers_for(&site, "assets/fonts/a.woff2").content_type, "font/woff2");
        assert_eq!(headers_for(&site, "favicon.ico").cache_control, "public, max-age=300");
        assert_eq!(headers_for(&site, "index.html").content_type, "text/html; charset=utf-8");
        assert_eq!(headers_for(&site, "LICENSE").content_type, "application/octet-stream");
        assert_eq!(headers_for(&site, "v1.2/LICENSE").content_type, "application/octet-stream", "the name's extension");
    }

    #[test]
    fn rules_apply_in_order_and_content_types_can_be_added() {
        let site = site(
            "[site.content_types]\nwebmanifest = \"application/x-web-app-manifest+json\"\n\
             [[site.cache]]\nglob = \"static/*.css\"\ncache_control = \"public, max-age=60\"\n\
             [[site.cache]]\nglob = \"static/**\"\ncache_control = \"public, max-age=600\"\n",
        );
        assert_eq!(headers_for(&site, "static/a.css").cache_control, "public, max-age=60");
        assert_eq!(headers_for(&site, "static/css/a.css").cache_control, "public, max-age=600");
        assert_eq!(
            headers_for(&site, "index.html").cache_control,
            "public, max-age=300",
            "rules given replace the defaults"
        );
        assert_eq!(headers_for(&site, "app.webmanifest").content_type, "application/x-web-app-manifest+json");
    }

    #[test]
    fn a_first_publish_uploads_everything_and_a_second_nothing() {
        let site = site("");
        let files = vec![file(&site, "index.html", "<h1>hi"), file(&site, "assets/a.js", "x")];
        let first = plan(&site, &files, &[], &Manifest::default(), 256, "dist").unwrap();
        assert_eq!(first.uploads.iter().map(|(_, r)| *r).collect::<Vec<_>>(), [Reason::New, Reason::New]);
        assert!(first.stale_keys().is_empty(), "nothing was served before");
        let (remote, manifest) = published(&files);
        let again = plan(&site, &files, &remote, &manifest, 256, "dist").unwrap();
        assert!(again.is_empty());
        assert_eq!(again.unchanged, 2);
        assert_eq!(publish_id(&site, &manifest, &files), publish_id(&site, &manifest, &files));
        assert_ne!(publish_id(&site, &manifest, &files), publish_id(&site, &Manifest::default(), &files));
    }

    #[test]
    fn changed_content_headers_and_deletions_are_told_apart() {
        let site = site("");
        let before = vec![file(&site, "index.html", "v1"), file(&site, "about.txt", "a"), file(&site, "old.txt", "o")];
        let (remote, manifest) = published(&before);
        let mut after =
            vec![file(&site, "index.html", "v2"), file(&site, "about.txt", "a"), file(&site, "new.txt", "n")];
        after[1].headers.cache_control = "public, max-age=1".into();
        let plan = plan(&site, &after, &remote, &manifest, 256, "dist").unwrap();
        let reasons: Vec<_> = plan.uploads.iter().map(|(d, r)| (d.path.as_str(), *r)).collect();
        assert_eq!(
            reasons,
            [("index.html", Reason::Content), ("about.txt", Reason::Headers), ("new.txt", Reason::New)]
        );
        assert_eq!(plan.deletes, ["old.txt"]);
        assert_eq!(plan.bytes(), 2 + 1, "a header change sends no bytes");
        assert_eq!(plan.stale_keys(), ["about.txt", "index.html", "old.txt"]);
    }

    #[test]
    fn an_object_changed_behind_conveyors_back_is_compared_by_its_etag() {
        let site = site("");
        let md5 = "0123456789abcdef0123456789abcdef";
        let mine = Desired { md5: md5.into(), ..file(&site, "a.txt", "same") };
        let (remote, manifest) = published(std::slice::from_ref(&mine));
        let recorded = manifest.objects.get("a.txt");
        // Re-uploaded by hand with other content: neither the manifest nor the MD5 holds.
        let other = Remote { etag: "fedcba9876543210fedcba9876543210".into(), ..remote[0].clone() };
        assert_eq!(compare(&mine, &other, recorded), Some(Reason::Content));
        // Re-uploaded by hand with the same content: the MD5 holds, the headers are unknown,
        // so they are written again in place.
        let same = Remote { etag: md5.into(), ..remote[0].clone() };
        assert_eq!(compare(&mine, &same, recorded), Some(Reason::Headers));
        assert_eq!(compare(&mine, &same, None), Some(Reason::Headers), "never written by Conveyor");
        // A multipart upload's ETag is no MD5 of the content.
        let multipart = Remote { etag: format!("{md5}-3"), ..remote[0].clone() };
        assert_eq!(compare(&mine, &multipart, None), Some(Reason::Content));
        assert_eq!(compare(&mine, &remote[0], recorded), None, "as Conveyor wrote it");
    }

    #[test]
    fn deletions_over_the_limit_stop_the_publish_and_the_manifest_is_never_deleted() {
        let site = site("prefix = \"www/\"\n");
        let before: Vec<Desired> = (0..5).map(|i| file(&site, &format!("p{i}.html"), "x")).collect();
        let (mut remote, manifest) = published(&before);
        remote.push(Remote {
            key: "www/.conveyor/manifest.json".into(),
            etag: "m".into(),
            size: 1,
            last_modified: 2_000,
        });
        let after = vec![file(&site, "p0.html", "x")];
        let err = plan(&site, &after, &remote, &manifest, 3, "dist").unwrap_err();
        assert_eq!(err, PublishError::TooManyDeletes { count: 4, limit: 3, dir: "dist".into() });
        assert!(err.to_string().contains("--max-delete 4"), "{err}");
        let allowed = plan(&site, &after, &remote, &manifest, 4, "dist").unwrap();
        assert_eq!(allowed.deletes, ["www/p1.html", "www/p2.html", "www/p3.html", "www/p4.html"]);
    }

    #[test]
    fn an_object_rewritten_after_the_manifest_is_not_trusted_to_it() {
        let site = site("");
        let md5 = "0123456789abcdef0123456789abcdef";
        let files = vec![Desired { md5: md5.into(), ..file(&site, "a.txt", "same") }];
        let (mut remote, manifest) = published(&files);
        remote[0].etag = md5.into();
        let mut recorded = manifest.clone();
        recorded.objects.get_mut("a.txt").unwrap().etag = md5.into();
        assert!(plan(&site, &files, &remote, &recorded, 256, "dist").unwrap().is_empty());
        // Its headers were changed by hand after the manifest: same bytes, same ETag, later.
        remote[0].last_modified = 3_000;
        let plan = plan(&site, &files, &remote, &recorded, 256, "dist").unwrap();
        assert_eq!(plan.uploads.iter().map(|(_, r)| *r).collect::<Vec<_>>(), [Reason::Headers]);
        // An empty ETag is never a match.
        let blank = Remote { etag: String::new(), ..remote[0].clone() };
        let blank_record = Recorded { etag: String::new(), ..recorded.objects["a.txt"].clone() };
        assert_eq!(compare(&files[0], &blank, Some(&blank_record)), Some(Reason::Content));
    }

    #[test]
    fn publishing_a_build_again_after_another_is_a_new_publish() {
        let site = site("");
        let a = vec![file(&site, "index.html", "a")];
        let b = vec![file(&site, "index.html", "b")];
        let mut ids = Vec::new();
        let mut manifest = Manifest::default();
        for build in [&a, &b, &a, &b] {
            let id = publish_id(&site, &manifest, build);
            let (remote, _) = published(build);
            manifest = next_manifest(build, &remote, &BTreeMap::new(), Some(&id));
            ids.push(id);
        }
        let distinct: BTreeSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), 4, "A, B, A, B: four publishes: {ids:?}");
    }

    #[test]
    fn too_many_or_too_long_stale_keys_make_the_whole_site_stale() {
        let site = site("");
        let plan = Plan::default();
        let mut record = PublishRecord::new(&site, "id", &plan, "test", 0);
        record.add_stale((0..10).map(|i| format!("k{i}")));
        assert_eq!((record.stale_keys.len(), record.whole_site), (10, false));
        record.add_stale((0..300).map(|i| format!("{i}-{}", "x".repeat(1000))));
        assert!(record.whole_site && record.stale_keys.is_empty(), "300 keys of 1 KB are over 200 KB");
    }
}
