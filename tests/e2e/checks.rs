//! Health checks against local targets the test turns up and down: what a run observes,
//! how conditions judge it, and one notice per transition.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use conveyor_shared::config::{Check, Config};
use conveyor_shared::domain::checks::{CheckState, Health, Notice, observe};
use conveyor_shared::probe::Prober;
use http_body_util::Full;

/// A local health endpoint answering what the test sets, until it is stopped.
pub(crate) struct Target {
    pub(crate) url: String,
    answer: Arc<Mutex<(u16, &'static str)>>,
    server: tokio::task::JoinHandle<()>,
}

impl Target {
    pub(crate) async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/health", listener.local_addr().unwrap());
        let answer = Arc::new(Mutex::new((200, r#"{"status": "UP"}"#)));
        let shared = answer.clone();
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let shared = shared.clone();
                let service = hyper::service::service_fn(move |_request: hyper::Request<hyper::body::Incoming>| {
                    let (status, body) = *shared.lock().unwrap();
                    async move {
                        let response = hyper::Response::builder().status(status).body(Full::new(Bytes::from(body)));
                        Ok::<_, hyper::http::Error>(response.unwrap())
                    }
                });
                tokio::spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                });
            }
        });
        Self { url, answer, server }
    }

    pub(crate) fn answer(&self, status: u16, body: &'static str) {
        *self.answer.lock().unwrap() = (status, body);
    }
}

fn check(url: &str) -> Check {
    let text = format!(
        "[[check]]\nname = \"api\"\nurl = \"{url}\"\nconditions = [\"[STATUS] == 200\", \"[BODY].status == UP\", \"[RESPONSE_TIME] < 2000\"]\ntimeout = \"2s\"\n"
    );
    Config::parse(&text, "test.toml").unwrap().checks.remove(0)
}

#[tokio::test]
async fn a_target_going_down_and_up_gives_one_notice_each_way() {
    let target = Target::start().await;
    let check = check(&target.url);
    let prober = Prober::new().unwrap();
    let mut state = CheckState::default();
    let mut notices = Vec::new();
    let mut run = |now: i64, outcome: Result<(), String>| {
        let (next, notice) = observe(&state, outcome, check.thresholds(), now);
        state = next;
        notices.extend(notice);
    };
    run(0, prober.run(&check).await);
    target.answer(503, r#"{"status": "DOWN"}"#);
    for minute in 1..=4 {
        run(minute * 60, prober.run(&check).await);
    }
    target.answer(200, r#"{"status": "UP"}"#);
    for minute in 5..=6 {
        run(minute * 60, prober.run(&check).await);
    }
    assert_eq!(notices.len(), 2, "{notices:?}");
    let Notice::Down { since, cause } = &notices[0] else { panic!("{notices:?}") };
    assert_eq!(*since, 60, "down since the first failed run");
    assert_eq!(cause, "[STATUS] == 200 (was 503); [BODY].status == UP (was DOWN)");
    assert_eq!(notices[1], Notice::Recovered { since: 60, down_for: 300 });
}

#[tokio::test]
async fn a_target_that_cannot_be_reached_fails_with_the_reason() {
    let Target { url, server, .. } = Target::start().await;
    let check = check(&url);
    // Stopped: its port refuses connections.
    server.abort();
    let _ = server.await;
    let prober = Prober::new().unwrap();
    let cause = prober.run(&check).await.unwrap_err();
    assert!(cause.starts_with(&format!("cannot check {url}")), "{cause}");
    assert!(cause.to_lowercase().contains("connect"), "{cause}");
    let state = CheckState::default();
    let thresholds = check.thresholds();
    let (state, _) = observe(&state, Err(cause.clone()), thresholds, 0);
    let (state, _) = observe(&state, Err(cause.clone()), thresholds, 60);
    let (state, notice) = observe(&state, Err(cause.clone()), thresholds, 120);
    assert_eq!(state.health, Health::Down);
    assert_eq!(notice, Some(Notice::Down { since: 0, cause }));
}

#[tokio::test]
async fn a_target_slower_than_the_timeout_fails_in_time() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/health", listener.local_addr().unwrap());
    // Accepts and never answers.
    let _silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let mut slow = check(&url);
    slow.timeout = conveyor_shared::config::Seconds(1);
    let cause = Prober::new().unwrap().run(&slow).await.unwrap_err();
    assert!(cause.contains("no answer within 1000 ms"), "{cause}");
}

/// A TLS health endpoint on loopback whose certificate (for 127.0.0.1, from a CA of the
/// test's own) expires in `days`; answers the CA's certificate to trust.
async fn tls_target(days: i64) -> (String, Vec<u8>) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::new()).unwrap();
    params.subject_alt_names = vec![SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]))];
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(days);
    let leaf = params.signed_by(&key, &ca, &ca_key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()))
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/health", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else { return };
                let service = hyper::service::service_fn(|_request: hyper::Request<hyper::body::Incoming>| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(
                        r#"{"status": "UP"}"#,
                    ))))
                });
                let io = hyper_util::rt::TokioIo::new(tls);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
            });
        }
    });
    (url, ca.der().to_vec())
}

#[tokio::test]
async fn a_certificate_near_its_end_fails_the_expiration_condition() {
    let check_of = |url: &str| {
        let text = format!(
            "[[check]]\nname = \"tls\"\nurl = \"{url}\"\nconditions = [\"[STATUS] == 200\", \"[CERTIFICATE_EXPIRATION] > 240h\"]\ntimeout = \"5s\"\n"
        );
        Config::parse(&text, "test.toml").unwrap().checks.remove(0)
    };
    let (soon, ca) = tls_target(5).await;
    let prober = Prober::trusting(&ca).unwrap();
    let cause = prober.run(&check_of(&soon)).await.unwrap_err();
    // Five days, less the moments since the certificate was made: a duration, not milliseconds.
    assert!(
        cause == "[CERTIFICATE_EXPIRATION] > 240h (was 5days)"
            || cause == "[CERTIFICATE_EXPIRATION] > 240h (was 4days 23h)",
        "{cause}"
    );
    let (later, ca) = tls_target(30).await;
    assert_eq!(Prober::trusting(&ca).unwrap().run(&check_of(&later)).await, Ok(()));
    // Without the private CA the certificate is refused: the cause says so.
    let refused = Prober::new().unwrap().run(&check_of(&later)).await.unwrap_err();
    assert!(refused.starts_with("cannot check https://127.0.0.1"), "{refused}");
}
