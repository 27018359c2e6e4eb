//! One scheduled run of 200 health checks against local targets, with the emulator's table
//! behind a counting proxy (`make bench` starts the emulator):
//!
//! 1. The run's time against its slowest check's timeout, as a ratio: checks run at once, so
//!    a run takes about the slowest check (here one target never answers), not their sum.
//! 2. The table requests of a run once every check is steady: two reads (the checks'
//!    partition and the outbox) and no write. The bench fails if a steady run writes.
//!
//! `CONVEYOR_BENCH_CHECKS` (default 200) sets the number of checks.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alert_dispatch::{AlertDispatch, Channels};
use bytes::Bytes;
use conveyor_e2e::{Fault, FaultProxy, sdk, unique_name};
use conveyor_shared::config::Config;
use conveyor_shared::probe::Prober;
use conveyor_shared::store::Table;
use http_body_util::Full;

const TIMEOUT_SECONDS: u64 = 2;

/// One listener for every target: `/ok/N` answers after a few milliseconds, `/silent`
/// never answers.
async fn targets() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the targets");
    let base = format!("http://{}", listener.local_addr().expect("an address"));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = hyper::service::service_fn(|request: hyper::Request<hyper::body::Incoming>| async move {
                let path = request.uri().path().to_owned();
                if path == "/silent" {
                    std::future::pending::<()>().await;
                }
                let n: u64 = path.rsplit('/').next().and_then(|n| n.parse().ok()).unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(5 + n % 50)).await;
                Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(r#"{"status": "UP"}"#))))
            });
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
            });
        }
    });
    base
}

fn config(base: &str, count: usize) -> Config {
    let mut text = String::new();
    for i in 0..count {
        let path = if i == 0 { "/silent".to_owned() } else { format!("/ok/{i}") };
        text.push_str(&format!(
            "[[check]]\nname = \"check-{i}\"\nurl = \"{base}{path}\"\nconditions = [\"[STATUS] == 200\", \"[BODY].status == UP\"]\ntimeout = \"{TIMEOUT_SECONDS}s\"\n\n"
        ));
    }
    Config::parse(&text, "bench.toml").expect("the bench's checks")
}

#[tokio::main]
async fn main() {
    let count: usize = std::env::var("CONVEYOR_BENCH_CHECKS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let base = targets().await;
    let operations: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = operations.clone();
    let proxy = FaultProxy::start(
        move |request| {
            if let (Ok(mut seen), Some(operation)) = (seen.lock(), request.dynamodb_operation()) {
                seen.push(operation.to_owned());
            }
            false
        },
        0,
        Fault::unavailable(),
    )
    .await;
    let name = unique_name("conveyor-bench-checks");
    Table::from_sdk(&sdk().await, name.clone()).create_if_missing().await.expect("a table");
    let config = config(&base, count);
    // The function's own role, as in AWS.
    let sdk = conveyor_e2e::function_sdk(alert_dispatch::REGISTRATION.name, &name, &config, &proxy.url()).await;
    let dispatch = AlertDispatch::new(
        Table::from_sdk(&sdk, name),
        Prober::new().expect("a prober"),
        Channels::new(&sdk).expect("channels"),
        conveyor_shared::ec2::Ec2::new(&sdk),
        Arc::new(config),
    );
    // Until every check is steady: the silent one goes down on its third failed run.
    let now = 1_800_000_000;
    let mut last = Duration::ZERO;
    let mut writes = Vec::new();
    let mut reads = Vec::new();
    for run in 0..5 {
        operations.lock().expect("operations").clear();
        let started = Instant::now();
        dispatch.run(now + run * 60).await.expect("a run");
        last = started.elapsed();
        let ops = std::mem::take(&mut *operations.lock().expect("operations"));
        writes = ops.iter().filter(|op| !matches!(op.as_str(), "Query" | "GetItem")).cloned().collect();
        reads = ops.iter().filter(|op| matches!(op.as_str(), "Query" | "GetItem")).cloned().collect();
        println!(
            "run {}: {:>6} ms, table requests: {} reads, {} writes",
            run + 1,
            last.as_millis(),
            reads.len(),
            writes.len()
        );
    }
    let ratio = last.as_secs_f64() / TIMEOUT_SECONDS as f64;
    println!(
        "{count} checks, steady run: {} ms for a slowest timeout of {TIMEOUT_SECONDS} s: ratio {ratio:.2} (1.00 = the slowest check alone)",
        last.as_millis()
    );
    println!("steady run's table requests: {} reads ({}), {} writes", reads.len(), reads.join(", "), writes.len());
    if !writes.is_empty() {
        eprintln!("a steady run wrote to the table: {writes:?}");
        std::process::exit(1);
    }
}
