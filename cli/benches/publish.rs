//! What re-publishing a 2,000-file site with one changed file costs:
//!
//! 1. Local hashing (SHA-256 and MD5 of every file, which every publish does) beside
//!    `sha256sum` over the same files, as a ratio.
//! 2. With the emulator (`make bench` starts it): the S3 requests of the re-publish, counted
//!    by an SDK interceptor, and the bytes sent. The budget is the listing's pages
//!    (ceil((files + 1)/1000): the manifest is listed too), the manifest read, one upload and the manifest write; the bench
//!    fails if a count goes over, or if more bytes than the changed file's are sent.
//!
//! `CONVEYOR_BENCH_FILES` (default 2000) sets the site's size.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use aws_sdk_s3::config::interceptors::BeforeDeserializationInterceptorContextRef;
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use conveyor_cli::publish::{self, Publish};
use conveyor_shared::config::{Config, Site};
use conveyor_shared::s3::SiteBucket;
use conveyor_shared::store::Table;

/// Every S3 request answered, by operation.
#[derive(Debug, Default, Clone)]
struct RequestLog(Arc<Mutex<Vec<String>>>);

impl Intercept for RequestLog {
    fn name(&self) -> &'static str {
        "RequestLog"
    }

    fn read_before_deserialization(
        &self,
        _context: &BeforeDeserializationInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let operation = cfg.load::<Metadata>().map(|m| m.name().to_owned()).unwrap_or_default();
        self.0.lock().map_err(|_| "request log poisoned")?.push(operation);
        Ok(())
    }
}

impl RequestLog {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().expect("request log"))
    }
}

fn site(bucket: &str) -> Site {
    let text = format!("[[site]]\nname = \"bench\"\nbucket = \"{bucket}\"\ndistribution = \"E2QWRUHEXAMPLE\"\n");
    Config::parse(&text, "bench.toml").expect("a site").sites.remove(0)
}

/// A site of `count` files of 1 to 32 KB in a few directories, like a bundler's output.
fn write_site(dir: &std::path::Path, count: usize) {
    for i in 0..count {
        let path = match i % 4 {
            0 => format!("assets/chunk-{i:05}.js"),
            1 => format!("assets/img/pic-{i:05}.png"),
            2 => format!("docs/page-{i:05}/index.html"),
            _ => format!("static/file-{i:05}.css"),
        };
        let file = dir.join(path);
        std::fs::create_dir_all(file.parent().expect("a parent")).expect("a directory");
        let size = 1024 + (i * 7919) % (31 * 1024);
        let body: Vec<u8> = (0..size).map(|b| ((b * 31 + i) % 251) as u8).collect();
        std::fs::write(file, body).expect("a file");
    }
}

fn hashing(dir: &std::path::Path, site: &Site) {
    let started = Instant::now();
    let files = publish::scan(site, dir).expect("a scan");
    let ours = started.elapsed();
    let paths: Vec<_> = files.iter().map(|(_, path)| path.clone()).collect();
    let started = Instant::now();
    let status = std::process::Command::new("sha256sum")
        .args(&paths)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("sha256sum runs");
    let theirs = started.elapsed();
    assert!(status.success(), "sha256sum failed");
    let bytes: u64 = files.iter().map(|(d, _)| d.size).sum();
    println!(
        "hashing {} files ({:.1} MB): conveyor {:.0} ms (SHA-256 and MD5, one read), sha256sum {:.0} ms: ratio {:.2}",
        files.len(),
        bytes as f64 / 1e6,
        ours.as_secs_f64() * 1e3,
        theirs.as_secs_f64() * 1e3,
        ours.as_secs_f64() / theirs.as_secs_f64().max(1e-9),
    );
}

async fn republish(dir: &std::path::Path, count: usize) {
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let bucket = format!("bench-site-{}", std::process::id());
    let log = RequestLog::default();
    let config = aws_sdk_s3::config::Builder::from(&sdk).interceptor(log.clone()).build();
    let site_bucket = SiteBucket::from_conf(config.clone(), &bucket);
    aws_sdk_s3::Client::from_conf(config.to_builder().force_path_style(true).build())
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("a bucket");
    let table = Table::from_sdk(&sdk, format!("conveyor-bench-publish-{}", std::process::id()));
    table.create_if_missing().await.expect("a table");
    let site = site(&bucket);
    let request = Publish { site: &site, dir, dry_run: false, max_delete: None, triggered_by: "bench".into() };
    let started = Instant::now();
    let first = publish::publish(&table, &site_bucket, &request, 1_795_000_000, |_, _| {}).await.expect("a publish");
    println!(
        "first publish: {} files, {} bytes in {:.1} s",
        first.uploaded.len(),
        first.bytes,
        started.elapsed().as_secs_f64()
    );
    log.take();

    let changed = dir.join("static/file-00003.css");
    std::fs::write(&changed, "body { color: #123 }").expect("a change");
    let size = std::fs::metadata(&changed).expect("the file").len();
    let started = Instant::now();
    let again = publish::publish(&table, &site_bucket, &request, 1_795_000_100, |_, _| {}).await.expect("a publish");
    let elapsed = started.elapsed();
    let requests = log.take();
    let count_of = |operation: &str| requests.iter().filter(|r| *r == operation).count();
    // The listing holds the files and Conveyor's manifest.
    let pages = (count + 1).div_ceil(1000);
    println!(
        "re-publish with one changed file: {} uploaded, {} bytes (the file is {size}), {:.2} s",
        again.uploaded.len(),
        again.bytes,
        elapsed.as_secs_f64()
    );
    let (lists, gets, puts) = (count_of("ListObjectsV2"), count_of("GetObject"), count_of("PutObject"));
    println!(
        "S3 requests: {} in all: ListObjectsV2 {lists} (budget {pages}), GetObject {gets} (the manifest), PutObject {puts} (1 file + the manifest), other {}",
        requests.len(),
        requests.len() - lists - gets - puts,
    );
    assert_eq!(again.bytes, size, "only the changed file's bytes are sent");
    assert!(requests.len() <= pages + 3, "over the budget of {} requests: {requests:?}", pages + 3);
}

fn main() {
    let count: usize = std::env::var("CONVEYOR_BENCH_FILES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let dir = tempfile::tempdir().expect("a directory");
    write_site(dir.path(), count);
    hashing(dir.path(), &site("bench-site"));
    if std::env::var_os("AWS_ENDPOINT_URL").is_none() {
        println!("(no AWS_ENDPOINT_URL: the S3 request count needs the emulator; `make bench` starts it)");
        return;
    }
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(republish(dir.path(), count));
}
