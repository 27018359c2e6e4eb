//! The intake decision path (verify the signature, unwrap and parse the payload, plan the
//! writes; no I/O) on the largest real push payload, beside HMAC-SHA256 alone and
//! `serde_json::from_slice::<Value>` alone on the same bytes. Prints the ratio of the
//! decision path to the sum of the two; the goal is at most 2.
//!
//! Run with `make bench`.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use conveyor_shared::config::Config;
use conveyor_shared::domain::intake::{PlanContext, payload_json, plan};
use conveyor_shared::secret::SecretSet;
use conveyor_shared::signature::{sign_github, verify_github};
use criterion::{Criterion, Throughput};

const SECRET: &str = "bench-secret";

/// The largest push payload among the repository's fixtures and samples.
fn largest_push() -> (String, Vec<u8>) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let fixtures = root.join("fixtures/github/push");
    let mut candidates: Vec<PathBuf> =
        std::fs::read_dir(&fixtures).map(|dir| dir.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    candidates.push(root.join("events/github/push/main.json"));
    candidates
        .into_iter()
        .filter_map(|path| {
            let path = path.canonicalize().unwrap_or(path);
            std::fs::read(&path).ok().map(|bytes| (path.display().to_string(), bytes))
        })
        .max_by_key(|(_, bytes)| bytes.len())
        .expect("at least the repository's own push sample exists")
}

fn main() {
    let (name, body) = largest_push();
    let secrets = SecretSet::from_comma_separated(SECRET).expect("a secret");
    let signature = sign_github(SECRET.as_bytes(), &body);
    let config = Config::parse(include_str!("../../conveyor.example.toml"), "example").expect("valid example");
    let ctx = PlanContext { config: &config, artifacts_bucket: "artifacts", now: 1_795_300_000 };

    let decide = || {
        verify_github(&secrets, Some(&signature), &body).expect("valid signature");
        let payload = payload_json(Some("application/json"), &body).expect("json");
        plan("push", "bench-delivery", &payload, &ctx).expect("a plan")
    };
    let hmac = || sign_github(SECRET.as_bytes(), &body);
    let parse = || serde_json::from_slice::<serde_json::Value>(&body).expect("json");

    let mut criterion = Criterion::default().configure_from_args().measurement_time(Duration::from_secs(3));
    let mut group = criterion.benchmark_group(format!("intake ({} bytes)", body.len()));
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("decision path", |b| b.iter(|| black_box(decide())));
    group.bench_function("hmac-sha256 alone", |b| b.iter(|| black_box(hmac())));
    group.bench_function("serde_json Value alone", |b| b.iter(|| black_box(parse())));
    group.finish();
    criterion.final_summary();

    // The ratio, from interleaved rounds so that both sides see the same machine state.
    let per_call = |f: &dyn Fn()| {
        let rounds = 2_000;
        let start = Instant::now();
        for _ in 0..rounds {
            f();
        }
        start.elapsed().as_secs_f64() / f64::from(rounds)
    };
    let mut ratios = Vec::new();
    for _ in 0..7 {
        let decision = per_call(&|| {
            black_box(decide());
        });
        let hmac_time = per_call(&|| {
            black_box(hmac());
        });
        let parse_time = per_call(&|| {
            black_box(parse());
        });
        ratios.push(decision / (hmac_time + parse_time));
    }
    ratios.sort_by(f64::total_cmp);
    let median = ratios[ratios.len() / 2];
    println!("payload: {name} ({} bytes)", body.len());
    println!(
        "decision path / (hmac + serde_json Value) = {median:.2} (goal: at most 2.00) {}",
        if median <= 2.0 { "ok" } else { "OVER GOAL" }
    );
}
