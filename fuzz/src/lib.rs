//! Fuzz targets for every parser of outside input: what GitHub, Stripe, Packer's uploader,
//! an agent or an operator's `conveyor.toml` can send. Each takes the raw bytes a sender
//! controls and must answer (an error is an answer) without panicking, whatever they are.
//!
//! `make fuzz` runs each as a coverage-guided libFuzzer target (`fuzz_targets/`, built by
//! `scripts/fuzz.sh`); `make test` runs the smoke test below: every target over the real
//! payloads of `fixtures/` and `events/` and their mutations.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use conveyor_shared::config::Config;
use conveyor_shared::domain::checks::condition::{Condition, Observation};
use conveyor_shared::domain::{instance_proof, intake, packer, stripe};
use conveyor_shared::secret::SecretSet;
use conveyor_shared::signature;

/// The time every target judges at: fixed, so a finding replays.
const NOW: i64 = 1_800_000_000;

/// Splits `data` at its first newline: a header (as text) and the rest.
fn header_and_body(data: &[u8]) -> (String, &[u8]) {
    match data.iter().position(|b| *b == b'\n') {
        Some(at) => (String::from_utf8_lossy(&data[..at]).into_owned(), &data[at + 1..]),
        None => (String::from_utf8_lossy(data).into_owned(), &[]),
    }
}

fn environments() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let text = "[[environment]]\nname = \"production\"\nbranch = \"main\"\nrepository = \"acme/shop\"\nrequire_workflow = [\"CI\"]\n\n[[environment]]\nname = \"staging\"\nbranch = \"develop\"\nrepository = \"*\"\n";
        Config::parse(text, "fuzz.toml").unwrap_or_default()
    })
}

/// A GitHub delivery: the first byte picks the event and the content type, the rest is the
/// body as sent (JSON, or a form with `payload=`).
pub fn github(data: &[u8]) {
    const EVENTS: [&str; 8] =
        ["push", "workflow_run", "check_suite", "ping", "status", "merge_group", "issues", "create"];
    let Some((&selector, body)) = data.split_first() else { return };
    let event = EVENTS[usize::from(selector) % EVENTS.len()];
    let content_type = if selector & 0x80 == 0 { "application/json" } else { "application/x-www-form-urlencoded" };
    let Ok(payload) = intake::payload_json(Some(content_type), body) else { return };
    let ctx = intake::PlanContext { config: environments(), artifacts_bucket: "conveyor-artifacts", now: NOW };
    let _ = intake::plan(event, "delivery", &payload, &ctx);
}

/// A `Stripe-Signature` header (first line) over a body (the rest).
pub fn stripe_signature(data: &[u8]) {
    static SECRETS: OnceLock<Option<SecretSet>> = OnceLock::new();
    let Some(secrets) = SECRETS.get_or_init(|| SecretSet::from_comma_separated("whsec_fuzz,whsec_rolled")) else {
        return;
    };
    let (header, body) = header_and_body(data);
    let _ = signature::verify_stripe(secrets, Some(&header), body, NOW, 300);
}

/// A Stripe event body, and what Conveyor would do with it.
pub fn stripe_event(data: &[u8]) {
    if let Ok(event) = stripe::parse_event(data) {
        let _ = stripe::plan(&event);
    }
}

/// A Packer manifest as `curl --data-binary` uploads it.
pub fn packer_manifest(data: &[u8]) {
    let _ = packer::last_run(data);
}

/// A `conveyor.toml`.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Config::parse(text, "fuzz.toml");
    }
}

/// What an agent sends (a poll, a report) and what it is answered, as the other side reads
/// them.
pub fn agent_messages(data: &[u8]) {
    let _ = serde_json::from_slice::<conveyor_protocol::Poll>(data);
    let _ = serde_json::from_slice::<conveyor_protocol::Report>(data);
    let _ = serde_json::from_slice::<conveyor_protocol::PollAnswer>(data);
}

/// An instance proof as a poll carries it, checked before anything is sent to STS.
pub fn instance_proof(data: &[u8]) {
    if let Ok(proof) = serde_json::from_slice::<conveyor_protocol::InstanceProof>(data) {
        let _ = instance_proof::check(&proof, "production", NOW, "sts.us-east-1.amazonaws.com");
    }
}

/// A Gatus condition (first line) judged against an answer whose body is the rest.
pub fn gatus_condition(data: &[u8]) {
    let (text, body) = header_and_body(data);
    let Ok(condition) = Condition::parse(&text) else { return };
    let seen = Observation {
        status: Some(200),
        response_time: Duration::from_millis(120),
        body: String::from_utf8_lossy(body).into_owned(),
        certificate_expiration: Some(Duration::from_secs(86_400 * 30)),
        connected: true,
        ip: Some("127.0.0.1".into()),
    };
    let _ = condition.evaluate(&seen);
}

/// A fuzz target: raw bytes in, nothing out, never a panic.
pub type Target = fn(&[u8]);

/// Every target by name, for the smoke test.
pub const TARGETS: &[(&str, Target)] = &[
    ("github", github),
    ("stripe_signature", stripe_signature),
    ("stripe_event", stripe_event),
    ("packer_manifest", packer_manifest),
    ("config", config),
    ("agent_messages", agent_messages),
    ("instance_proof", instance_proof),
    ("gatus_condition", gatus_condition),
];

/// Real inputs for `target` from the repository (`fixtures/`, `events/`, the example
/// configuration), shaped as the target reads them.
pub fn seeds(target: &str, repository: &std::path::Path) -> Vec<Vec<u8>> {
    let files = |dir: &str| -> Vec<Vec<u8>> {
        let mut found = Vec::new();
        let mut pending = vec![repository.join(dir)];
        while let Some(path) = pending.pop() {
            if path.is_dir() {
                if let Ok(entries) = std::fs::read_dir(&path) {
                    pending.extend(entries.flatten().map(|e| e.path()));
                }
            } else if path.extension().is_some_and(|e| e == "json" || e == "toml") {
                found.extend(std::fs::read(&path).ok());
            }
        }
        found
    };
    let prefixed = |prefix: u8, bodies: Vec<Vec<u8>>| -> Vec<Vec<u8>> {
        bodies.into_iter().map(|body| [vec![prefix], body].concat()).collect()
    };
    let mut seeds = match target {
        "github" => (0..8u8).flat_map(|event| prefixed(event, files("events/github"))).chain(files("fixtures/github")).collect(),
        "stripe_signature" => {
            let body = br#"{"id":"evt_1","object":"event"}"#;
            let header = signature::sign_stripe(b"whsec_fuzz", NOW, body);
            vec![[header.as_bytes(), b"\n", body].concat(), b"t=1800000000,v1=00,v0=ff\n{}".to_vec()]
        }
        "stripe_event" => [files("fixtures/stripe"), files("events/stripe")].concat(),
        "packer_manifest" => [files("fixtures/packer"), files("events/packer")].concat(),
        "config" => files("conveyor.example.toml"),
        "agent_messages" => vec![
            br#"{"instance_id":"i-0123456789abcdef0","environment":"production","current":null}"#.to_vec(),
            br#"{"instance_id":"i-0","environment":"production","version":"v1","outcome":"succeeded","healthy":true,"current":"v1","log":"ok"}"#.to_vec(),
        ],
        "instance_proof" => {
            let headers: BTreeMap<&str, &str> = BTreeMap::from([
                ("host", "sts.us-east-1.amazonaws.com"),
                ("content-type", "application/x-www-form-urlencoded; charset=utf-8"),
                ("x-amz-date", "20270115T080000Z"),
                ("x-conveyor-audience", "conveyor:production"),
                ("authorization", "AWS4-HMAC-SHA256 Credential=ASIA/20270115/us-east-1/sts/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-conveyor-audience, Signature=00"),
            ]);
            let proof = serde_json::json!({"headers": headers, "body": "Action=GetCallerIdentity&Version=2011-06-15"});
            vec![proof.to_string().into_bytes()]
        }
        "gatus_condition" => vec![
            b"[STATUS] == 200\n".to_vec(),
            b"[BODY].status == UP\n{\"status\": \"UP\"}".to_vec(),
            b"len([BODY].items) > 2\n{\"items\": [1, 2, 3]}".to_vec(),
            b"[CERTIFICATE_EXPIRATION] > 48h\n".to_vec(),
            b"[RESPONSE_TIME] < 300\n".to_vec(),
            b"[BODY] == pat(*ok*)\nall ok".to_vec(),
        ],
        _ => Vec::new(),
    };
    seeds.retain(|seed| !seed.is_empty());
    seeds
}

/// Writes `target`'s [`seeds`] into the corpus directory libFuzzer was given (its first
/// argument that is not a flag) when that directory is empty: the fuzzer starts from real
/// payloads. Called once, before libFuzzer reads the corpus.
pub fn seed_corpus(target: &str) {
    let Some(corpus) = std::env::args().skip(1).find(|arg| !arg.starts_with('-')) else { return };
    let corpus = std::path::PathBuf::from(corpus);
    let empty = std::fs::read_dir(&corpus).map(|mut entries| entries.next().is_none()).unwrap_or(false);
    if !empty {
        return;
    }
    let repository = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for (n, seed) in seeds(target, &repository).iter().enumerate() {
        // A seed that cannot be written only makes the start slower.
        let _ = std::fs::write(corpus.join(format!("seed-{n}")), seed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic mutations of a seed: bytes flipped, cut short, repeated, spliced.
    fn mutations(seed: &[u8], count: usize, state: &mut u64) -> Vec<Vec<u8>> {
        let mut next = || {
            *state ^= *state << 13;
            *state ^= *state >> 7;
            *state ^= *state << 17;
            *state
        };
        (0..count)
            .map(|_| {
                let mut input = seed.to_vec();
                for _ in 0..=(next() % 4) {
                    let at = if input.is_empty() { 0 } else { (next() as usize) % input.len() };
                    match next() % 5 {
                        0 if !input.is_empty() => input[at] ^= 1 << (next() % 8),
                        1 => input.truncate(at),
                        2 => {
                            const SYNTAX: &[u8] = b"{}[]\",:0-.\n\\u";
                            input.insert(at, SYNTAX[(next() as usize) % SYNTAX.len()]);
                        }
                        3 => {
                            let tail = input[at..].to_vec();
                            input.extend_from_slice(&tail);
                        }
                        _ if !input.is_empty() => input[at] = (next() % 256) as u8,
                        _ => {}
                    }
                }
                input
            })
            .collect()
    }

    #[test]
    fn every_target_takes_real_inputs_and_their_mutations_without_panicking() {
        let repository = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut state = 0x9E37_79B9_7F4A_7C15;
        for (name, target) in TARGETS {
            let seeds = seeds(name, &repository);
            assert!(!seeds.is_empty(), "{name} has seeds");
            for seed in &seeds {
                target(seed);
                for input in mutations(seed, 300, &mut state) {
                    target(&input);
                }
            }
        }
    }
}
