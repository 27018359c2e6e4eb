//! `conveyor publish` against the emulator's S3 and the table, with real files on disk.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use conveyor_cli::publish::{self, Publish, PublishFailure, Summary};
use conveyor_e2e::{Fault, FaultProxy, sdk, unique_name};
use conveyor_shared::config::{Config, Site};
use conveyor_shared::domain::publish::{PublishError, PublishState};
use conveyor_shared::s3::SiteBucket;
use conveyor_shared::store::Table;

pub(crate) struct Fixture {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) table: Table,
    pub(crate) s3: aws_sdk_s3::Client,
    pub(crate) bucket: String,
}

pub(crate) fn site_of(bucket: &str, extra: &str) -> Site {
    let text = format!("[[site]]\nname = \"web\"\nbucket = \"{bucket}\"\ndistribution = \"E2QWRUHEXAMPLE\"\n{extra}");
    Config::parse(&text, "conveyor.toml").unwrap().sites.remove(0)
}

impl Fixture {
    pub(crate) async fn new() -> Self {
        let sdk = sdk().await;
        let table = Table::from_sdk(&sdk, unique_name("conveyor-publish"));
        table.create_if_missing().await.unwrap();
        let s3 = aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(&sdk).force_path_style(true).build());
        let bucket = unique_name("site").to_lowercase();
        s3.create_bucket().bucket(&bucket).send().await.unwrap();
        Self { dir: tempfile::tempdir().unwrap(), table, s3, bucket }
    }

    fn site(&self) -> Site {
        site_of(&self.bucket, "")
    }

    pub(crate) fn write(&self, path: &str, content: &str) {
        let file = self.dir.path().join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, content).unwrap();
    }

    fn remove(&self, path: &str) {
        std::fs::remove_file(self.dir.path().join(path)).unwrap();
    }

    pub(crate) async fn publish_with(
        &self,
        site: &Site,
        endpoint: Option<&str>,
        dry_run: bool,
        max_delete: Option<usize>,
    ) -> Result<Summary, PublishFailure> {
        // As a CI job holding the published policy for `conveyor publish`, through `endpoint`
        // (a fault proxy), S3 and the table both.
        let endpoint = endpoint.map_or_else(conveyor_e2e::endpoint, str::to_owned);
        let sdk = conveyor_e2e::operator_sdk("publish", self.table.name(), &site.bucket, &endpoint).await;
        let (bucket, table) = (SiteBucket::new(&sdk, &site.bucket), Table::from_sdk(&sdk, self.table.name()));
        let request = Publish { site, dir: self.dir.path(), dry_run, max_delete, triggered_by: "test".into() };
        publish::publish(&table, &bucket, &request, 1_700_000_000, |_, _| {}).await
    }

    async fn publish(&self) -> Summary {
        self.publish_with(&self.site(), None, false, None).await.unwrap()
    }

    async fn keys(&self) -> Vec<String> {
        let listed = self.s3.list_objects_v2().bucket(&self.bucket).send().await.unwrap();
        let mut keys: Vec<String> = listed.contents().iter().filter_map(|o| o.key().map(str::to_owned)).collect();
        keys.sort();
        keys
    }

    /// Content type, cache control, the sha256 metadata and the body of `key`.
    async fn object(&self, key: &str) -> (String, String, String, String) {
        let object = self.s3.get_object().bucket(&self.bucket).key(key).send().await.unwrap();
        let header = |v: Option<&str>| v.unwrap_or_default().to_owned();
        let (content_type, cache_control) = (header(object.content_type()), header(object.cache_control()));
        let sha = object.metadata().and_then(|m| m.get("sha256").cloned()).unwrap_or_default();
        let body = String::from_utf8(object.body.collect().await.unwrap().into_bytes().to_vec()).unwrap();
        (content_type, cache_control, sha, body)
    }

    async fn publishes(&self) -> Vec<conveyor_shared::domain::publish::PublishRecord> {
        let mut records = Vec::new();
        for summary_id in self.record_ids().await {
            records.push(self.table.publish("web", &summary_id).await.unwrap().unwrap());
        }
        records
    }

    async fn record_ids(&self) -> Vec<String> {
        let items = aws_sdk_dynamodb::Client::new(&sdk().await)
            .query()
            .table_name(self.table.name())
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", aws_sdk_dynamodb::types::AttributeValue::S("SITE#web".into()))
            .send()
            .await
            .unwrap();
        items.items().iter().filter_map(|item| item.get("id").and_then(|v| v.as_s().ok()).cloned()).collect()
    }
}

fn small_site(fixture: &Fixture) {
    fixture.write("index.html", "<h1>home</h1>");
    fixture.write("about/index.html", "<h1>about</h1>");
    fixture.write("assets/app.3f2a.js", "console.log(1)");
    fixture.write("favicon.ico", "icon");
    fixture.write("notes.txt", "notes");
}

#[tokio::test]
async fn a_first_publish_uploads_the_site_and_the_same_build_again_changes_nothing() {
    let fixture = Fixture::new().await;
    small_site(&fixture);
    let first = fixture.publish().await;
    assert_eq!(first.uploaded.len(), 5, "{first:?}");
    assert!(first.invalidation.is_empty(), "nothing was served before: {first:?}");
    let (content_type, cache_control, sha, body) = fixture.object("index.html").await;
    assert_eq!(
        (content_type.as_str(), cache_control.as_str(), body.as_str()),
        ("text/html; charset=utf-8", "no-cache", "<h1>home</h1>")
    );
    assert_eq!(sha.len(), 64);
    let (_, cache_control, _, _) = fixture.object("assets/app.3f2a.js").await;
    assert_eq!(cache_control, "public, max-age=31536000, immutable");
    let records = fixture.publishes().await;
    assert_eq!(records.len(), 1);
    assert_eq!((records[0].state, records[0].uploads), (PublishState::Uploaded, 5));

    let again = fixture.publish().await;
    assert_eq!((again.publish.as_deref(), again.uploaded.len(), again.deleted.len()), (None, 0, 0), "{again:?}");
    assert!(again.headers_updated.is_empty() && again.invalidation.is_empty(), "{again:?}");
    assert_eq!(again.unchanged, 5);
    assert_eq!(again.listing_pages, 1);
    assert_eq!(fixture.publishes().await.len(), 1, "an unchanged build records no publish");
}

#[tokio::test]
async fn three_changed_files_are_invalidated_by_their_paths_only() {
    let fixture = Fixture::new().await;
    small_site(&fixture);
    fixture.publish().await;
    fixture.write("about/index.html", "<h1>about us</h1>");
    fixture.write("assets/app.3f2a.js", "console.log(2)");
    fixture.write("notes.txt", "more notes");
    let changed = fixture.publish().await;
    assert_eq!(changed.uploaded, ["about/index.html", "assets/app.3f2a.js", "notes.txt"]);
    assert_eq!(changed.bytes, ("<h1>about us</h1>".len() + "console.log(2)".len() + "more notes".len()) as u64);
    assert_eq!(changed.invalidation, ["/about", "/about/", "/about/index.html", "/assets/app.3f2a.js", "/notes.txt"]);
    assert_eq!(fixture.object("notes.txt").await.3, "more notes");
    let latest = fixture.table.publish("web", changed.publish.as_deref().unwrap()).await.unwrap().unwrap();
    assert_eq!(latest.stale_keys, ["about/index.html", "assets/app.3f2a.js", "notes.txt"]);
    assert_eq!(latest.state, PublishState::Uploaded);
}

#[tokio::test]
async fn a_changed_cache_rule_rewrites_only_the_matching_files_headers() {
    let fixture = Fixture::new().await;
    small_site(&fixture);
    fixture.publish().await;
    let before = fixture.s3.head_object().bucket(&fixture.bucket).key("favicon.ico").send().await.unwrap();
    let site = site_of(
        &fixture.bucket,
        "[[site.cache]]\nglob = \"*.ico\"\ncache_control = \"public, max-age=86400\"\n\
         [[site.cache]]\nglob = \"assets/**\"\ncache_control = \"public, max-age=31536000, immutable\"\n\
         [[site.cache]]\nglob = \"**/*.html\"\ncache_control = \"no-cache\"\n",
    );
    let summary = fixture.publish_with(&site, None, false, None).await.unwrap();
    assert!(summary.uploaded.is_empty(), "{summary:?}");
    assert_eq!(summary.headers_updated, ["favicon.ico"]);
    assert_eq!(summary.bytes, 0, "a header change sends no bytes");
    assert_eq!(summary.invalidation, ["/favicon.ico"]);
    let (_, cache_control, sha, body) = fixture.object("favicon.ico").await;
    assert_eq!((cache_control.as_str(), body.as_str()), ("public, max-age=86400", "icon"));
    assert_eq!(sha.len(), 64, "the metadata is written again with the headers");
    assert_eq!(before.e_tag().map(str::len), Some(34));
    let again = fixture.publish_with(&site, None, false, None).await.unwrap();
    assert!(again.publish.is_none(), "{again:?}");
}

#[tokio::test]
async fn deletions_over_the_limit_stop_before_anything_is_deleted_and_a_dry_run_changes_nothing() {
    let fixture = Fixture::new().await;
    small_site(&fixture);
    fixture.publish().await;
    let before = fixture.keys().await;
    for path in ["about/index.html", "assets/app.3f2a.js", "favicon.ico", "notes.txt"] {
        fixture.remove(path);
    }
    fixture.write("index.html", "<h1>new home</h1>");
    let err = fixture.publish_with(&fixture.site(), None, false, Some(3)).await.unwrap_err();
    assert!(matches!(err, PublishFailure::Plan(PublishError::TooManyDeletes { count: 4, limit: 3, .. })), "{err}");
    assert!(err.to_string().contains("--max-delete 4"), "{err}");
    assert_eq!(fixture.keys().await, before, "nothing deleted");
    assert_eq!(fixture.object("index.html").await.3, "<h1>home</h1>", "nothing uploaded either");

    let dry = fixture.publish_with(&fixture.site(), None, true, Some(10)).await.unwrap();
    assert!(dry.dry_run && dry.publish.is_none());
    assert_eq!((dry.uploaded.as_slice(), dry.deleted.len()), (["index.html".to_string()].as_slice(), 4));
    assert_eq!(fixture.keys().await, before, "a dry run changes nothing");
    assert_eq!(fixture.publishes().await.len(), 1, "and records nothing");

    let done = fixture.publish_with(&fixture.site(), None, false, Some(4)).await.unwrap();
    assert_eq!(done.deleted.len(), 4);
    assert_eq!(fixture.keys().await, [".conveyor/manifest.json", "index.html"]);
}

#[tokio::test]
async fn keys_with_unsafe_characters_are_invalidated_by_encoded_paths() {
    let fixture = Fixture::new().await;
    fixture.write("a b.html", "1");
    fixture.write("café/menü.txt", "1");
    fixture.write("notes#1.txt", "1");
    fixture.publish().await;
    for path in ["a b.html", "café/menü.txt", "notes#1.txt"] {
        fixture.write(path, "2");
    }
    let changed = fixture.publish().await;
    assert_eq!(changed.invalidation, ["/a%20b.html", "/caf%C3%A9/men%C3%BC.txt", "/notes%231.txt"]);
    assert_eq!(fixture.object("café/menü.txt").await.3, "2");
}

#[tokio::test]
async fn a_publish_cut_off_half_way_resumes_as_the_same_publish() {
    let fixture = Fixture::new().await;
    for i in 0..20 {
        fixture.write(&format!("page-{i:02}.html"), "v1");
    }
    fixture.publish().await;
    for i in 0..20 {
        fixture.write(&format!("page-{i:02}.html"), "v2");
    }
    // S3 refuses every write after the fifth: the run stops with five pages written, as if
    // it had been killed there (nothing runs after a failed write).
    let allowed = Arc::new(AtomicU32::new(0));
    let counter = allowed.clone();
    let writes = move |seen: &conveyor_e2e::Seen<'_>| {
        seen.method == hyper::Method::PUT && seen.path.contains("page-") && counter.fetch_add(1, Ordering::SeqCst) >= 5
    };
    let proxy = FaultProxy::start(writes, u32::MAX, Fault::s3_forbidden()).await;
    let cut = fixture.publish_with(&fixture.site(), Some(&proxy.url()), false, None).await.unwrap_err();
    assert!(matches!(cut, PublishFailure::S3(_)), "{cut}");
    let records = fixture.publishes().await;
    let pending: Vec<_> = records.iter().filter(|r| r.state == PublishState::Pending).collect();
    assert_eq!(pending.len(), 1, "{records:?}");

    let resumed = fixture.publish().await;
    assert!(resumed.resumed, "{resumed:?}");
    assert_eq!(resumed.publish.as_deref(), Some(pending[0].id.as_str()), "the same publish");
    assert_eq!(resumed.uploaded.len() + resumed.headers_updated.len(), 20 - 5 + 5, "{resumed:?}");
    for i in 0..20 {
        assert_eq!(fixture.object(&format!("page-{i:02}.html")).await.3, "v2");
    }
    let records = fixture.publishes().await;
    assert_eq!(records.len(), 2, "the first publish and this one: {records:?}");
    let finished = records.iter().find(|r| r.id == pending[0].id).unwrap();
    assert_eq!(finished.state, PublishState::Uploaded);
    assert_eq!(finished.stale_keys.len(), 20, "every page, once: {finished:?}");
    assert_eq!(resumed.invalidation, ["/*"], "20 pages are over the budget of 10");
    let settled = fixture.publish().await;
    assert!(settled.publish.is_none(), "{settled:?}");
}

#[tokio::test]
async fn the_same_publish_run_twice_at_once_is_one_publish() {
    let fixture = Fixture::new().await;
    small_site(&fixture);
    let site = fixture.site();
    let (a, b) =
        tokio::join!(fixture.publish_with(&site, None, false, None), fixture.publish_with(&site, None, false, None));
    let (a, b) = (a.unwrap(), b.unwrap());
    // However the two interleave, they are one publish: the second joins the first (or, if
    // the first ended before it looked, finds nothing to do).
    let ids: std::collections::BTreeSet<_> = [a.publish.clone(), b.publish.clone()].into_iter().flatten().collect();
    assert_eq!(ids.len(), 1, "{a:?} {b:?}");
    let records = fixture.publishes().await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].state, PublishState::Uploaded);
    assert_eq!(fixture.keys().await.len(), 6);
}

#[tokio::test]
async fn a_build_published_again_after_another_is_a_new_publish_with_its_stale_keys() {
    let fixture = Fixture::new().await;
    let mut ids = Vec::new();
    for content in ["a", "b", "a", "b"] {
        fixture.write("index.html", content);
        ids.push(fixture.publish().await.publish.expect("a publish"));
    }
    let distinct: std::collections::BTreeSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), 4, "{ids:?}");
    let records = fixture.publishes().await;
    assert!(records.iter().all(|r| r.state == PublishState::Uploaded), "{records:?}");
    let last = fixture.table.publish("web", &ids[3]).await.unwrap().unwrap();
    assert_eq!(last.stale_keys, ["index.html"]);
}

#[tokio::test]
async fn a_publish_that_dies_after_its_deletions_is_marked_by_the_next_run() {
    let fixture = Fixture::new().await;
    small_site(&fixture);
    fixture.publish().await;
    fixture.remove("notes.txt");
    // The table refuses the mark (`uploaded`): the run dies after its deletions.
    let marks = |seen: &conveyor_e2e::Seen<'_>| seen.dynamodb_operation() == Some("UpdateItem");
    let proxy = FaultProxy::start(marks, u32::MAX, Fault::dynamodb("AccessDeniedException", "not allowed")).await;
    let died = fixture.publish_with(&fixture.site(), Some(&proxy.url()), false, None).await.unwrap_err();
    assert!(matches!(died, PublishFailure::Store(_)), "{died}");
    assert!(!fixture.keys().await.contains(&"notes.txt".to_string()), "deleted before the run died");

    // Nothing is left to write, but the publish is still pending: the next run marks it.
    let next = fixture.publish().await;
    assert!(next.resumed && next.uploaded.is_empty() && next.deleted.is_empty(), "{next:?}");
    assert_eq!(next.invalidation, ["/notes.txt"]);
    let record = fixture.table.publish("web", next.publish.as_deref().unwrap()).await.unwrap().unwrap();
    assert_eq!(
        (record.state, record.stale_keys.as_slice()),
        (PublishState::Uploaded, ["notes.txt".to_string()].as_slice())
    );
    assert!(fixture.publish().await.publish.is_none(), "and then nothing is left");
}

#[tokio::test]
async fn a_publish_abandoned_part_way_is_folded_into_the_next_build() {
    let fixture = Fixture::new().await;
    small_site(&fixture);
    fixture.publish().await;
    fixture.write("notes.txt", "v2");
    fixture.write("favicon.ico", "v2");
    let puts = |seen: &conveyor_e2e::Seen<'_>| seen.method == hyper::Method::PUT && !seen.path.contains(".conveyor");
    let proxy = FaultProxy::start(puts, u32::MAX, Fault::s3_forbidden()).await;
    fixture.publish_with(&fixture.site(), Some(&proxy.url()), false, None).await.unwrap_err();
    let abandoned = fixture.publishes().await.into_iter().find(|r| r.state == PublishState::Pending).unwrap();
    assert_eq!(abandoned.stale_keys, ["favicon.ico", "notes.txt"]);

    // Another build is published instead (notes.txt back as it was): a new publish, which
    // carries the abandoned one's stale keys, since a viewer may hold either.
    fixture.write("notes.txt", "notes");
    fixture.write("favicon.ico", "v3");
    let next = fixture.publish().await;
    assert_ne!(next.publish.as_deref(), Some(abandoned.id.as_str()));
    let record = fixture.table.publish("web", next.publish.as_deref().unwrap()).await.unwrap().unwrap();
    assert_eq!(record.stale_keys, ["favicon.ico", "notes.txt"]);
    let folded = fixture.table.publish("web", &abandoned.id).await.unwrap().unwrap();
    assert_eq!(folded.state, PublishState::Superseded);
}

#[tokio::test]
async fn headers_changed_behind_conveyors_back_are_put_right() {
    let fixture = Fixture::new().await;
    small_site(&fixture);
    fixture.publish().await;
    // S3 keeps times to the second: the hand-made change must come after the manifest's.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let etag = |fixture: &Fixture| {
        let request = fixture.s3.head_object().bucket(&fixture.bucket).key("index.html").send();
        async move { request.await.unwrap().e_tag().map(str::to_owned) }
    };
    let before = etag(&fixture).await;
    fixture
        .s3
        .copy_object()
        .bucket(&fixture.bucket)
        .key("index.html")
        .copy_source(format!("{}/index.html", fixture.bucket))
        .metadata_directive(aws_sdk_s3::types::MetadataDirective::Replace)
        .content_type("text/html")
        .cache_control("public, max-age=86400")
        .send()
        .await
        .unwrap();
    assert_eq!(etag(&fixture).await, before, "same bytes, same ETag: only the time tells");
    let fixed = fixture.publish().await;
    assert_eq!(fixed.headers_updated, ["index.html"], "{fixed:?}");
    let (content_type, cache_control, _, _) = fixture.object("index.html").await;
    assert_eq!((content_type.as_str(), cache_control.as_str()), ("text/html; charset=utf-8", "no-cache"));
}

#[tokio::test]
async fn precompressed_files_are_served_under_their_own_names_gzip_encoded() {
    let fixture = Fixture::new().await;
    fixture.write("index.html", "<h1>x</h1>");
    fixture.write("assets/app.js", "console.log(1)");
    fixture.write("assets/app.js.gz", "gzip bytes of app.js");
    fixture.write("assets/only.css.gz", "gzip bytes of only.css");
    let site = site_of(&fixture.bucket, "precompressed = \"gzip\"\n");
    fixture.publish_with(&site, None, false, None).await.unwrap();
    assert_eq!(fixture.keys().await, [".conveyor/manifest.json", "assets/app.js", "assets/only.css", "index.html"]);
    let object = fixture.s3.get_object().bucket(&fixture.bucket).key("assets/app.js").send().await.unwrap();
    assert_eq!(object.content_encoding(), Some("gzip"));
    assert_eq!(object.content_type(), Some("text/javascript; charset=utf-8"));
    let body = object.body.collect().await.unwrap().into_bytes();
    assert_eq!(&body[..], b"gzip bytes of app.js");
    let (content_type, _, _, _) = fixture.object("assets/only.css").await;
    assert_eq!(content_type, "text/css; charset=utf-8");
    let index = fixture.s3.head_object().bucket(&fixture.bucket).key("index.html").send().await.unwrap();
    assert_eq!(index.content_encoding(), None, "a file with no .gz beside it goes as it is");
    assert!(
        fixture.publish_with(&site, None, false, None).await.unwrap().publish.is_none(),
        "and nothing changes after"
    );
}

#[test]
fn a_file_that_cannot_be_read_stops_the_publish_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ok.txt"), "ok").unwrap();
    std::os::unix::fs::symlink(dir.path().join("gone.css"), dir.path().join("style.css")).unwrap();
    let site = site_of("acme-web", "");
    let err = publish::scan(&site, dir.path()).unwrap_err();
    assert!(err.to_string().contains("style.css") && err.to_string().contains("nothing was published"), "{err}");
    let missing = publish::scan(&site, Path::new("/nonexistent/dist")).unwrap_err();
    assert!(missing.to_string().contains("is not a directory"), "{missing}");

    let linked = tempfile::tempdir().unwrap();
    std::fs::write(linked.path().join("index.html"), "x").unwrap();
    std::os::unix::fs::symlink(dir.path(), linked.path().join("docs")).unwrap();
    let err = publish::scan(&site, linked.path()).unwrap_err();
    assert!(err.to_string().contains("link to a directory"), "{err}");
    let empty = tempfile::tempdir().unwrap();
    let err = publish::scan(&site, empty.path()).unwrap_err();
    assert!(err.to_string().contains("holds no file"), "{err}");
}

/// A bucket with SSE-KMS gives objects ETags that are not MD5s (the proxy answers as S3
/// does; moto gives MD5s): a publish still goes through, and publishing the same build again
/// changes nothing.
#[tokio::test]
async fn a_kms_encrypted_bucket_takes_a_publish_and_the_same_build_again_changes_nothing() {
    use conveyor_e2e::faults::Rewrite;
    let fixture = Fixture::new().await;
    let kms = FaultProxy::rewriting(vec![Rewrite::KmsEtags { bucket: fixture.bucket.clone() }]).await;
    small_site(&fixture);
    let site = fixture.site();
    let first = fixture.publish_with(&site, Some(&kms.url()), false, None).await.unwrap();
    assert_eq!(first.uploaded.len(), 5, "{first:?}");
    assert_eq!(fixture.publishes().await[0].state, PublishState::Uploaded);
    fixture.write("index.html", "<h1>home, again</h1>");
    let second = fixture.publish_with(&site, Some(&kms.url()), false, None).await.unwrap();
    assert_eq!(second.uploaded, ["index.html"], "{second:?}");
    let again = fixture.publish_with(&site, Some(&kms.url()), false, None).await.unwrap();
    assert_eq!((again.publish.as_deref(), again.uploaded.len()), (None, 0), "{again:?}");
}

/// Bytes that are not the ones hashed (a file written to while the publish read it) are
/// refused by S3 through the checksum the upload carries; nothing records them.
#[tokio::test]
async fn bytes_that_are_not_the_planned_ones_are_refused_and_never_recorded() {
    use conveyor_e2e::{Effect, Rule};
    let fixture = Fixture::new().await;
    small_site(&fixture);
    let site = fixture.site();
    let changing = FaultProxy::chaos(vec![Rule::new("s3", 1.0, Effect::Corrupt).only("PutObject")], vec![], 7).await;
    let failed = fixture.publish_with(&site, Some(&changing.url()), false, None).await.unwrap_err();
    assert!(matches!(failed, PublishFailure::ChangedMeanwhile(_)), "{failed}");
    assert!(
        fixture.keys().await.iter().all(|k| !k.ends_with(".html")),
        "no changed page was stored: {:?}",
        fixture.keys().await
    );
    // The next run, with the file at rest, publishes it.
    let summary = fixture.publish_with(&site, None, false, None).await.unwrap();
    assert_eq!(summary.uploaded.len(), 5, "{summary:?}");
}
