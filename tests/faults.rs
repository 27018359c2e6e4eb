//! A loopback proxy in front of the emulator (or any local server) that answers some
//! requests as AWS does on a bad day: throttling, conflicts, 5xx, connections dropped before
//! or during the answer, answers that never come, and what moto never shows (SSE-KMS ETags
//! that are not MD5s, 403 for a missing key without s3:ListBucket). Each test that wants one
//! starts its own, configured per service, operation and rate ([`Rule`]), or with one
//! predicate ([`FaultProxy::start`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// A request as the fault proxy sees it: method, path, query, headers and the whole body.
pub struct Seen<'a> {
    pub method: &'a hyper::Method,
    pub path: &'a str,
    pub query: &'a str,
    pub headers: &'a hyper::HeaderMap,
    pub body: &'a [u8],
}

/// Which AWS call a request is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// As in the signature's credential scope: `dynamodb`, `s3`, `ec2`, `cloudfront`, ...
    pub service: String,
    /// The API operation: `PutItem`, `GetObject`, `CreateInvalidation`, ...
    pub operation: String,
}

impl Seen<'_> {
    /// The DynamoDB operation (`X-Amz-Target: DynamoDB_20120810.<operation>`).
    pub fn dynamodb_operation(&self) -> Option<&str> {
        self.headers.get("x-amz-target")?.to_str().ok()?.strip_prefix("DynamoDB_20120810.")
    }

    /// Whether the body holds `text`.
    pub fn body_has(&self, text: &str) -> bool {
        String::from_utf8_lossy(self.body).contains(text)
    }

    fn has_query(&self, name: &str) -> bool {
        self.query.split('&').any(|pair| pair == name || pair.starts_with(&format!("{name}=")))
    }

    /// The service (from the signature's credential scope, or a presigned URL's) and the
    /// operation (from the target header, the Query API's `Action`, or S3's and
    /// CloudFront's REST paths).
    pub fn call(&self) -> Call {
        let authorization = self.headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
        let credential = authorization
            .split("Credential=")
            .nth(1)
            .map(str::to_owned)
            .or_else(|| {
                self.query
                    .split('&')
                    .find_map(|pair| pair.strip_prefix("X-Amz-Credential="))
                    .map(|c| c.replace("%2F", "/"))
            })
            .unwrap_or_default();
        let service =
            credential.split(',').next().unwrap_or_default().split('/').nth(3).unwrap_or("unknown").to_owned();
        let operation = if let Some(target) = self.headers.get("x-amz-target").and_then(|v| v.to_str().ok()) {
            target.rsplit('.').next().unwrap_or_default().to_owned()
        } else if let Some(action) = String::from_utf8_lossy(self.body)
            .split('&')
            .find_map(|pair| pair.strip_prefix("Action=").map(str::to_owned))
        {
            action
        } else if service == "s3" {
            self.s3_operation().to_owned()
        } else if service == "cloudfront" {
            self.cloudfront_operation().to_owned()
        } else {
            String::new()
        };
        Call { service, operation }
    }

    fn s3_operation(&self) -> &'static str {
        let has_key = self.path.trim_start_matches('/').contains('/');
        let method = self.method.as_str();
        match (method, has_key) {
            ("GET", false) if self.has_query("list-type") => "ListObjectsV2",
            ("GET", false) if self.has_query("versions") => "ListObjectVersions",
            ("GET", false) => "ListObjects",
            ("HEAD", false) => "HeadBucket",
            ("PUT", false) => "CreateBucket",
            ("POST", false) if self.has_query("delete") => "DeleteObjects",
            ("GET", true) => "GetObject",
            ("HEAD", true) => "HeadObject",
            ("PUT", true) if self.headers.contains_key("x-amz-copy-source") => "CopyObject",
            ("PUT", true) if self.has_query("partNumber") => "UploadPart",
            ("PUT", true) => "PutObject",
            ("POST", true) if self.has_query("uploads") => "CreateMultipartUpload",
            ("POST", true) if self.has_query("uploadId") => "CompleteMultipartUpload",
            ("DELETE", true) if self.has_query("uploadId") => "AbortMultipartUpload",
            ("DELETE", true) => "DeleteObject",
            _ => "",
        }
    }

    fn cloudfront_operation(&self) -> &'static str {
        let parts: Vec<&str> = self.path.split('/').filter(|p| !p.is_empty()).collect();
        match (self.method.as_str(), parts.as_slice()) {
            ("POST", [_, "distribution", _, "invalidation"]) => "CreateInvalidation",
            ("GET", [_, "distribution", _, "invalidation"]) => "ListInvalidations",
            ("GET", [_, "distribution", _, "invalidation", _]) => "GetInvalidation",
            ("GET", [_, "distribution", _, "config"]) => "GetDistributionConfig",
            ("GET", [_, "distribution", _]) => "GetDistribution",
            _ => "",
        }
    }
}

/// The answer the fault proxy gives instead of the emulator's.
#[derive(Clone, Debug)]
pub struct Fault {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Fault {
    /// EC2 over its request rate: HTTP 503 `RequestLimitExceeded`.
    pub fn ec2_throttled() -> Self {
        Self {
            status: 503,
            content_type: "text/xml;charset=UTF-8",
            body: "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message></Error></Errors><RequestID>throttled</RequestID></Response>".into(),
        }
    }

    /// A DynamoDB error of `kind` (`AccessDeniedException`, ...), as the service answers it.
    pub fn dynamodb(kind: &str, message: &str) -> Self {
        Self {
            status: 400,
            content_type: "application/x-amz-json-1.0",
            body: serde_json::json!({"__type": format!("com.amazonaws.dynamodb.v20120810#{kind}"), "message": message})
                .to_string(),
        }
    }

    /// A hot partition: `ProvisionedThroughputExceededException`.
    pub fn dynamodb_throughput_exceeded() -> Self {
        Self::dynamodb(
            "ProvisionedThroughputExceededException",
            "The level of configured provisioned throughput for the table was exceeded.",
        )
    }

    /// DynamoDB's own 500.
    pub fn dynamodb_internal() -> Self {
        Self { status: 500, ..Self::dynamodb("InternalServerError", "Internal server error") }
    }

    /// A write that met a transaction on the same item (`TransactionConflictException`).
    pub fn dynamodb_conflict() -> Self {
        Self::dynamodb("TransactionConflictException", "Transaction is ongoing for the item")
    }

    /// A transaction cancelled because other transactions held its items: what DynamoDB
    /// answers when concurrent transactions update one item (moto never does).
    pub fn transaction_conflict(items: usize) -> Self {
        let reasons: Vec<_> = (0..items)
            .map(|_| serde_json::json!({"Code": "TransactionConflict", "Message": "Transaction is ongoing for the item"}))
            .collect();
        Self {
            status: 400,
            content_type: "application/x-amz-json-1.0",
            body: serde_json::json!({
                "__type": "com.amazonaws.dynamodb.v20120810#TransactionCanceledException",
                "Message": "Transaction cancelled, please refer cancellation reasons for specific reasons [TransactionConflict]",
                "CancellationReasons": reasons,
            })
            .to_string(),
        }
    }

    /// Any JSON-protocol service throttling the caller (`ThrottlingException`).
    pub fn throttling(service: &str) -> Self {
        Self {
            status: 400,
            content_type: "application/x-amz-json-1.1",
            body: serde_json::json!({"__type": format!("com.amazonaws.{service}#ThrottlingException"), "message": "Rate exceeded"})
                .to_string(),
        }
    }

    /// Secrets Manager's own failure (`InternalServiceError`, 500).
    pub fn secrets_internal() -> Self {
        Self {
            status: 500,
            content_type: "application/x-amz-json-1.1",
            body: serde_json::json!({"__type": "InternalServiceError", "message": "An error occurred on the server side."})
                .to_string(),
        }
    }

    /// S3 asking the caller to slow down (503 `SlowDown`).
    pub fn s3_slow_down() -> Self {
        Self {
            status: 503,
            content_type: "application/xml",
            body: "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message><RequestId>slow</RequestId></Error>".into(),
        }
    }

    /// S3 refusing bytes whose checksum is not the one sent (`BadDigest`).
    pub fn s3_bad_digest() -> Self {
        Self {
            status: 400,
            content_type: "application/xml",
            body: "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>BadDigest</Code><Message>The sha256 you specified did not match the calculated checksum.</Message><RequestId>digest</RequestId></Error>".into(),
        }
    }

    /// What S3 answers a caller without `s3:ListBucket` for a missing key.
    pub fn s3_forbidden() -> Self {
        Self { status: 403, content_type: "application/xml", body: String::new() }
    }

    /// A CloudFront refusal: `TooManyInvalidationsInProgress`, `Throttling`, ...
    pub fn cloudfront(code: &str) -> Self {
        Self {
            status: 400,
            content_type: "text/xml",
            body: format!(
                "<?xml version=\"1.0\"?><ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>injected</Message></Error><RequestId>cf</RequestId></ErrorResponse>"
            ),
        }
    }

    /// A busy server: 503 with a JSON error, as the functions answer when the ledger is busy.
    pub fn unavailable() -> Self {
        Self {
            status: 503,
            content_type: "application/json",
            body: r#"{"error": {"code": "store_unavailable", "message": "injected"}}"#.into(),
        }
    }
}

/// What the proxy does with a request a rule picked.
#[derive(Clone, Debug)]
pub enum Effect {
    /// This answer instead of the emulator's.
    Answer(Fault),
    /// The connection closes before any answer (the request may not have been sent on).
    Drop,
    /// The request is done, and its answer breaks off after the headers and part of the body.
    Cut,
    /// No answer ever comes; the connection stays open.
    Hang,
    /// The request's body changes on the way (a byte more), as a file that changed while it
    /// was read: a checksum the caller sent no longer holds.
    Corrupt,
}

/// A fault for a share of one service's calls (of one operation, or of all).
#[derive(Clone, Debug)]
pub struct Rule {
    pub service: &'static str,
    pub operation: Option<&'static str>,
    /// From 0 (never) to 1 (every call).
    pub rate: f64,
    pub effect: Effect,
}

impl Rule {
    pub fn new(service: &'static str, rate: f64, effect: Effect) -> Self {
        Self { service, operation: None, rate, effect }
    }

    pub fn only(self, operation: &'static str) -> Self {
        Self { operation: Some(operation), ..self }
    }

    fn applies(&self, call: &Call) -> bool {
        call.service == self.service && self.operation.is_none_or(|op| op == call.operation)
    }

    /// A share of the calls AWS fails on a bad day, for every service Conveyor calls: each
    /// kind of fault each service answers, connections dropped before and during answers,
    /// and a few answers that never come (the SDK's per-attempt timeout ends them).
    pub fn bad_day(rate: f64) -> Vec<Rule> {
        use Effect::{Answer, Cut, Drop, Hang};
        let share = |n: f64| rate * n;
        vec![
            Rule::new("dynamodb", share(0.25), Answer(Fault::dynamodb_throughput_exceeded())),
            Rule::new("dynamodb", share(0.15), Answer(Fault::throttling("dynamodb"))),
            Rule::new("dynamodb", share(0.15), Answer(Fault::dynamodb_internal())),
            Rule::new("dynamodb", share(0.2), Answer(Fault::transaction_conflict(1))).only("TransactWriteItems"),
            Rule::new("dynamodb", share(0.1), Answer(Fault::dynamodb_conflict())).only("UpdateItem"),
            Rule::new("dynamodb", share(0.1), Drop),
            Rule::new("dynamodb", share(0.1), Cut),
            Rule::new("dynamodb", share(0.02), Hang),
            Rule::new("ec2", share(0.7), Answer(Fault::ec2_throttled())),
            Rule::new("ec2", share(0.3), Drop),
            Rule::new("s3", share(0.6), Answer(Fault::s3_slow_down())),
            Rule::new("s3", share(0.2), Drop),
            Rule::new("s3", share(0.2), Cut),
            Rule::new("cloudfront", share(0.5), Answer(Fault::cloudfront("Throttling"))),
            Rule::new("cloudfront", share(0.3), Answer(Fault::cloudfront("TooManyInvalidationsInProgress")))
                .only("CreateInvalidation"),
            Rule::new("cloudfront", share(0.2), Drop),
            Rule::new("secretsmanager", share(0.5), Answer(Fault::secrets_internal())),
            Rule::new("secretsmanager", share(0.5), Answer(Fault::throttling("secretsmanager"))),
            Rule::new("ses", share(1.0), Drop),
        ]
    }
}

/// How the proxy changes what the emulator answered.
#[derive(Clone, Debug)]
pub enum Rewrite {
    /// Objects of this bucket are SSE-KMS encrypted: their ETags are not MD5s of their bytes
    /// (in headers and in listings, copy and upload results), as S3 gives them.
    KmsEtags { bucket: String },
    /// The caller lacks `s3:ListBucket` on this bucket: a missing key is 403, not 404.
    MissingKeyForbidden { bucket: String },
}

impl Rewrite {
    fn bucket(&self) -> &str {
        match self {
            Rewrite::KmsEtags { bucket } | Rewrite::MissingKeyForbidden { bucket } => bucket,
        }
    }
}

/// The ETag S3 gives an SSE-KMS object: 32 hex digits that are not its MD5 (stable for the
/// same content, as S3's are for one upload), keeping a multipart suffix. Each digit is
/// turned half-way round, so the same function turns it back: what a caller sends back to
/// S3 (the parts of a multipart upload) reaches the emulator as the ETags it gave.
pub fn kms_etag(etag: &str) -> String {
    let turned: String = etag
        .chars()
        .map(|c| match c.to_digit(16) {
            Some(digit) if c.is_ascii_hexdigit() && !c.is_ascii_uppercase() => {
                char::from_digit((digit + 8) % 16, 16).unwrap_or(c)
            }
            _ => c,
        })
        .collect();
    // Only the digest is turned, not the part count after a dash.
    match (etag.split_once('-'), turned.split_once('-')) {
        (Some((_, count)), Some((digest, _))) => format!("{digest}-{count}"),
        _ => turned,
    }
}

/// Every `<ETag>` of an XML body turned with [`kms_etag`].
fn turn_listed_etags(text: &str) -> Option<String> {
    if !text.contains("<ETag>") {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("<ETag>") {
        let after = &rest[start + 6..];
        let Some(end) = after.find("</ETag>") else { break };
        out.push_str(&rest[..start + 6]);
        out.push_str(&kms_etag(&after[..end]));
        rest = &after[end..];
    }
    out.push_str(rest);
    Some(out)
}

type Matcher = dyn Fn(&Seen<'_>) -> bool + Send + Sync;
type Decide = dyn Fn(&Seen<'_>) -> Option<Effect> + Send + Sync;
type Answer = hyper::Response<BoxBody<Bytes, std::io::Error>>;

/// A loopback proxy: each request is decided (passed on, or given a fault), and the
/// emulator's answers are rewritten as [`Rewrite`]s say.
pub struct FaultProxy {
    addr: SocketAddr,
    calls: Arc<AtomicU32>,
    faulted: Arc<AtomicU32>,
}

impl FaultProxy {
    /// Answers the first `times` requests that `matches` with `fault`, and passes everything
    /// else to the emulator.
    pub async fn start(matches: impl Fn(&Seen<'_>) -> bool + Send + Sync + 'static, times: u32, fault: Fault) -> Self {
        Self::before(crate::endpoint(), matches, times, fault).await
    }

    /// Like [`FaultProxy::start`], in front of `upstream` (the dev server, say).
    pub async fn before(
        upstream: String,
        matches: impl Fn(&Seen<'_>) -> bool + Send + Sync + 'static,
        times: u32,
        fault: Fault,
    ) -> Self {
        let (calls, faulted) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        let matches: Arc<Matcher> = Arc::new(matches);
        let (counted, injected) = (calls.clone(), faulted.clone());
        let decide = move |seen: &Seen<'_>| {
            if !matches(seen) {
                return None;
            }
            counted.fetch_add(1, Ordering::SeqCst);
            if injected.fetch_add(1, Ordering::SeqCst) < times {
                return Some(Effect::Answer(fault.clone()));
            }
            injected.fetch_sub(1, Ordering::SeqCst);
            None
        };
        Self::serve(upstream, Arc::new(decide), Vec::new(), calls, faulted).await
    }

    /// In front of the emulator: each call that a rule covers is faulted at the rule's rate
    /// (rules are tried in order; a seeded generator decides, `CONVEYOR_CHAOS_SEED` replays a
    /// run), and the answers are rewritten as `rewrites` say.
    pub async fn chaos(rules: Vec<Rule>, rewrites: Vec<Rewrite>, seed: u64) -> Self {
        let seed = std::env::var("CONVEYOR_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(seed);
        let (calls, faulted) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        let random = Mutex::new(seed.max(1));
        let (counted, injected) = (calls.clone(), faulted.clone());
        let decide = move |seen: &Seen<'_>| {
            let call = seen.call();
            // Set-up and the roles' sessions are not the code under test.
            if matches!(call.service.as_str(), "iam" | "sts" | "unknown") {
                return None;
            }
            counted.fetch_add(1, Ordering::SeqCst);
            let draw = {
                let mut state = random.lock().ok()?;
                // xorshift64*: enough to spread faults, and replayable from its seed.
                *state ^= *state >> 12;
                *state ^= *state << 25;
                *state ^= *state >> 27;
                (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
            };
            let mut threshold = 0.0;
            for rule in rules.iter().filter(|rule| rule.applies(&call)) {
                threshold += rule.rate;
                if draw < threshold {
                    injected.fetch_add(1, Ordering::SeqCst);
                    return Some(rule.effect.clone());
                }
            }
            None
        };
        Self::serve(crate::endpoint(), Arc::new(decide), rewrites, calls, faulted).await
    }

    /// Only rewrites the emulator's answers (no fault).
    pub async fn rewriting(rewrites: Vec<Rewrite>) -> Self {
        Self::chaos(Vec::new(), rewrites, 1).await
    }

    async fn serve(
        upstream: String,
        decide: Arc<Decide>,
        rewrites: Vec<Rewrite>,
        calls: Arc<AtomicU32>,
        faulted: Arc<AtomicU32>,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let rewrites = Arc::new(rewrites);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (client, upstream, decide, rewrites) =
                    (client.clone(), upstream.clone(), decide.clone(), rewrites.clone());
                let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let (client, upstream, decide, rewrites) =
                        (client.clone(), upstream.clone(), decide.clone(), rewrites.clone());
                    async move {
                        let (parts, body) = request.into_parts();
                        let body = body.collect().await.map_err(std::io::Error::other)?.to_bytes();
                        let seen = Seen {
                            method: &parts.method,
                            path: parts.uri.path(),
                            query: parts.uri.query().unwrap_or_default(),
                            headers: &parts.headers,
                            body: &body,
                        };
                        let effect = decide(&seen);
                        let bucket =
                            parts.uri.path().trim_start_matches('/').split('/').next().unwrap_or_default().to_owned();
                        let call = seen.call();
                        let operation = call.operation.clone();
                        let mut body = body;
                        match effect {
                            Some(Effect::Answer(fault)) => return Ok(answer(fault)),
                            Some(Effect::Drop) => return Err(std::io::Error::other("dropped by the fault proxy")),
                            Some(Effect::Hang) => std::future::pending::<()>().await,
                            Some(Effect::Corrupt) => body = corrupted(&body),
                            Some(Effect::Cut) | None => {}
                        }
                        // The parts' ETags a caller sends back reach the emulator as it gave them.
                        let kms =
                            rewrites.iter().any(|r| matches!(r, Rewrite::KmsEtags { .. }) && r.bucket() == bucket);
                        let completing = kms && operation == "CompleteMultipartUpload";
                        if let Some(text) = turn_listed_etags(&String::from_utf8_lossy(&body)).filter(|_| completing) {
                            body = Bytes::from(text);
                        }
                        // S3 checks a checksum the caller sent against the bytes it got (moto
                        // does not).
                        if call.service == "s3" && !checksum_holds(&parts.headers, &body) {
                            return Ok(answer(Fault::s3_bad_digest()));
                        }
                        let uri = format!("{upstream}{}", parts.uri.path_and_query().map_or("/", |p| p.as_str()));
                        // Every header goes on as sent, Host included: the caller signed it.
                        let mut forward = hyper::Request::builder().method(parts.method).uri(uri);
                        for (name, value) in &parts.headers {
                            forward = forward.header(name, value);
                        }
                        let answered = client
                            .request(forward.body(Full::new(body)).map_err(std::io::Error::other)?)
                            .await
                            .map_err(std::io::Error::other)?;
                        let (mut parts, body) = answered.into_parts();
                        let mut body = body.collect().await.map_err(std::io::Error::other)?.to_bytes();
                        for rewrite in rewrites.iter().filter(|r| r.bucket() == bucket) {
                            (parts, body) = rewritten(rewrite, &operation, parts, body);
                        }
                        if matches!(effect, Some(Effect::Cut)) {
                            return Ok(cut(parts, body));
                        }
                        Ok::<_, std::io::Error>(hyper::Response::from_parts(
                            parts,
                            Full::new(body).map_err(|never| match never {}).boxed(),
                        ))
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                );
            }
        });
        Self { addr, calls, faulted }
    }

    /// Throttles the first `times` calls of one EC2 action.
    pub async fn throttle_ec2(action: &'static str, times: u32) -> Self {
        let wanted = format!("Action={action}");
        Self::start(
            move |seen| String::from_utf8_lossy(seen.body).split('&').any(|pair| pair == wanted),
            times,
            Fault::ec2_throttled(),
        )
        .await
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests seen that a fault could have hit (matching ones, for [`FaultProxy::start`]).
    pub fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }

    /// Requests given a fault.
    pub fn faulted(&self) -> u32 {
        self.faulted.load(Ordering::SeqCst)
    }
}

fn corrupted(body: &Bytes) -> Bytes {
    let mut changed = body.to_vec();
    changed.push(b'!');
    Bytes::from(changed)
}

/// Whether the SHA-256 a request names (`x-amz-checksum-sha256`) is that of its payload.
/// A request without one passes.
fn checksum_holds(headers: &hyper::HeaderMap, body: &[u8]) -> bool {
    use sha2::Digest;
    let Some(expected) = headers.get("x-amz-checksum-sha256").and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let digest = sha2::Sha256::digest(body);
    aws_smithy_types::base64::encode(digest.as_slice()) == expected
}

fn answer(fault: Fault) -> Answer {
    let mut response = hyper::Response::new(Full::new(Bytes::from(fault.body)).map_err(|never| match never {}).boxed());
    *response.status_mut() =
        hyper::StatusCode::from_u16(fault.status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static(fault.content_type));
    response
}

/// The answer's status and headers, then half its body, then a broken connection.
fn cut(parts: hyper::http::response::Parts, body: Bytes) -> Answer {
    let half = body.slice(..body.len() / 2);
    let frames = futures_util::stream::iter([
        Ok(hyper::body::Frame::data(half)),
        Err(std::io::Error::other("connection cut by the fault proxy")),
    ]);
    hyper::Response::from_parts(parts, StreamBody::new(frames).boxed())
}

fn rewritten(
    rewrite: &Rewrite,
    operation: &str,
    mut parts: hyper::http::response::Parts,
    body: Bytes,
) -> (hyper::http::response::Parts, Bytes) {
    match rewrite {
        Rewrite::KmsEtags { .. } => {
            let etag = parts.headers.get("etag").and_then(|v| v.to_str().ok()).map(kms_etag);
            if let Some(value) = etag.and_then(|etag| hyper::header::HeaderValue::from_str(&etag).ok()) {
                parts.headers.insert("etag", value);
            }
            match turn_listed_etags(&String::from_utf8_lossy(&body)) {
                Some(text) => {
                    parts.headers.remove("content-length");
                    (parts, Bytes::from(text))
                }
                None => (parts, body),
            }
        }
        Rewrite::MissingKeyForbidden { .. } => {
            if parts.status == hyper::StatusCode::NOT_FOUND && matches!(operation, "GetObject" | "HeadObject") {
                parts.status = hyper::StatusCode::FORBIDDEN;
                let denied = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>";
                parts.headers.remove("content-length");
                let body = if operation == "HeadObject" { Bytes::new() } else { Bytes::from_static(denied.as_bytes()) };
                return (parts, body);
            }
            (parts, body)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kms_etag_is_not_the_md5_and_keeps_the_part_count() {
        let md5 = "\"5d41402abc4b2a76b9719d911017c592\"";
        let kms = kms_etag(md5);
        assert_ne!(kms, md5);
        assert_eq!(kms.len(), md5.len());
        assert_eq!(kms, kms_etag(md5), "stable for the same object");
        assert_eq!(kms_etag(&kms), md5, "turned back by the same function");
        assert!(kms_etag("\"5d41402abc4b2a76b9719d911017c592-3\"").ends_with("-3\""));
    }
}
