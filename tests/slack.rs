//! A local stand-in for Slack's incoming webhooks, behaving as Slack documents them: it
//! takes `{"text": ...}` or `{"text": ..., "blocks": [...]}` and answers `ok`; a malformed
//! payload gets 400 `invalid_payload`; an unknown hook 404 `channel_not_found`, an archived
//! one 410 `channel_is_archived`; more than one message a second on a hook gets 429 with
//! `Retry-After`. What it accepted is kept for the test (and printed by the binary).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::Value;

/// The hook every stand-in serves (an incoming-webhook URL's path).
pub const HOOK: &str = "/services/T0CONVEYOR/B0ALERTS/standin";
/// A hook whose channel was archived.
pub const ARCHIVED_HOOK: &str = "/services/T0CONVEYOR/B0ARCHIVED/standin";

type OnAccept = Box<dyn Fn(&Value) + Send>;

#[derive(Default)]
struct State {
    accepted: Vec<Value>,
    last_accepted: HashMap<String, Instant>,
    rate_limited: u32,
    /// Answers to give before any other (a 500 Slack had, say).
    faults: Vec<u16>,
    on_accept: Option<OnAccept>,
}

#[derive(Clone)]
pub struct SlackStandIn {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    min_interval: Duration,
}

impl SlackStandIn {
    /// Listens on a free loopback port (or `addr`), one message a second per hook.
    pub async fn start() -> Self {
        Self::on("127.0.0.1:0".parse().unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)))).await
    }

    pub async fn on(addr: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind the Slack stand-in");
        let addr = listener.local_addr().expect("the stand-in's address");
        let stand_in = Self { addr, state: Arc::default(), min_interval: Duration::from_secs(1) };
        let serving = stand_in.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let serving = serving.clone();
                let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let serving = serving.clone();
                    async move { Ok::<_, std::convert::Infallible>(serving.answer(request).await) }
                });
                tokio::spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                });
            }
        });
        stand_in
    }

    /// The incoming-webhook URL to store in the channel's secret.
    pub fn url(&self) -> String {
        format!("http://{}{HOOK}", self.addr)
    }

    /// A `[[channel]]` named `name` that posts here: its URL stored in the emulator's
    /// Secrets Manager, as a team would store Slack's.
    pub async fn channel(&self, name: &str) -> String {
        let secret = crate::store_secret("conveyor/slack", &self.url()).await;
        format!("[[channel]]\nname = \"{name}\"\ntype = \"slack\"\nsecret = \"{secret}\"\n\n")
    }

    pub fn archived_url(&self) -> String {
        format!("http://{}{ARCHIVED_HOOK}", self.addr)
    }

    /// Every message accepted so far, in order.
    pub fn accepted(&self) -> Vec<Value> {
        self.state.lock().map(|s| s.accepted.clone()).unwrap_or_default()
    }

    /// The fallback texts of the accepted messages.
    pub fn texts(&self) -> Vec<String> {
        self.accepted().iter().map(|m| m["text"].as_str().unwrap_or_default().to_owned()).collect()
    }

    /// How many messages were answered 429.
    pub fn rate_limited(&self) -> u32 {
        self.state.lock().map(|s| s.rate_limited).unwrap_or_default()
    }

    /// Answers the next messages with these statuses first.
    pub fn fail_next(&self, statuses: &[u16]) {
        if let Ok(mut state) = self.state.lock() {
            state.faults.extend_from_slice(statuses);
        }
    }

    /// Calls `f` with every message accepted (the binary prints them).
    pub fn on_accept(&self, f: impl Fn(&Value) + Send + 'static) {
        if let Ok(mut state) = self.state.lock() {
            state.on_accept = Some(Box::new(f));
        }
    }

    async fn answer(&self, request: hyper::Request<hyper::body::Incoming>) -> hyper::Response<Full<Bytes>> {
        let path = request.uri().path().to_owned();
        let post = request.method() == hyper::Method::POST;
        let body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let reply = |status: u16, text: &str| {
            let mut response = hyper::Response::new(Full::new(Bytes::from(text.to_owned())));
            *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
            response
        };
        if !post {
            return reply(405, "invalid_method");
        }
        match path.as_str() {
            HOOK => {}
            ARCHIVED_HOOK => return reply(410, "channel_is_archived"),
            _ => return reply(404, "channel_not_found"),
        }
        let Ok(mut state) = self.state.lock() else { return reply(500, "internal_error") };
        if !state.faults.is_empty() {
            let status = state.faults.remove(0);
            return reply(status, "internal_error");
        }
        if let Some(last) = state.last_accepted.get(&path)
            && last.elapsed() < self.min_interval
        {
            state.rate_limited += 1;
            let mut response = reply(429, "rate_limited");
            response.headers_mut().insert("retry-after", hyper::header::HeaderValue::from_static("1"));
            return response;
        }
        let message = match serde_json::from_slice::<Value>(&body) {
            Ok(message) if valid(&message) => message,
            _ => return reply(400, "invalid_payload"),
        };
        state.last_accepted.insert(path, Instant::now());
        if let Some(f) = &state.on_accept {
            f(&message);
        }
        state.accepted.push(message);
        reply(200, "ok")
    }
}

/// Slack's rules for an incoming-webhook payload, as far as a message needs them: a
/// non-empty `text`, or `blocks` of known types whose texts keep within Slack's limits.
fn valid(message: &Value) -> bool {
    let text_ok = message.get("text").is_none_or(|t| t.as_str().is_some_and(|t| t.chars().count() <= 40_000));
    let has_text = message.get("text").and_then(Value::as_str).is_some_and(|t| !t.is_empty());
    let blocks = match message.get("blocks") {
        None => return text_ok && has_text,
        Some(Value::Array(blocks)) if !blocks.is_empty() && blocks.len() <= 50 => blocks,
        Some(_) => return false,
    };
    let len = |v: &Value| v.as_str().map_or(usize::MAX, |s| s.chars().count());
    text_ok
        && blocks.iter().all(|block| match block["type"].as_str() {
            Some("header") => block["text"]["type"] == "plain_text" && len(&block["text"]["text"]) <= 150,
            Some("section") => {
                let text_ok = block.get("text").is_none_or(|t| len(&t["text"]) <= 3000);
                let fields_ok = block.get("fields").is_none_or(|f| {
                    f.as_array().is_some_and(|f| f.len() <= 10 && f.iter().all(|f| len(&f["text"]) <= 2000))
                });
                (block.get("text").is_some() || block.get("fields").is_some()) && text_ok && fields_ok
            }
            Some("context") => block["elements"].as_array().is_some_and(|e| !e.is_empty() && e.len() <= 10),
            Some("divider") => true,
            _ => false,
        })
}
