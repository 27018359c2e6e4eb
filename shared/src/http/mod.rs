//! The HTTP vocabulary shared by every HTTP function, in AWS (through `lambda_http`) and
//! locally (through `conveyor dev`): one request type, one response type, the route table
//! each function declares (the same paths as the SAM template), and one request pipeline:
//! [`HttpFunction::respond`] matches the route (answering 404 and 405 itself) and hands the
//! function a [`Routed`] request; a domain error becomes its JSON answer through
//! [`problem`] (the mapping of each error is in `problems.rs`).

mod problems;

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use serde::Serialize;

use crate::registration::{Auth, Function};

pub use http::{Method, StatusCode};

pub type Request = http::Request<Bytes>;
pub type Response = http::Response<Bytes>;
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A route as API Gateway declares it: a method and a path with `{name}` parameters, and
/// who checks the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub auth: Auth,
}

impl Route {
    pub const fn new(method: &'static str, path: &'static str, auth: Auth) -> Self {
        Self { method, path, auth }
    }
}

/// A request matched to one of the function's routes, with the route's `{name}` parameters.
#[derive(Debug)]
pub struct Routed {
    pub route: &'static Route,
    params: Vec<(String, String)>,
    pub request: Request,
}

impl Routed {
    /// The value of the route's `{name}` parameter (never empty: an empty segment does not
    /// match); "" for a name the route does not declare.
    pub fn param(&self, name: &str) -> &str {
        debug_assert!(self.route.path.contains(&format!("{{{name}}}")), "{} has no {{{name}}}", self.route.path);
        self.params.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str()).unwrap_or_default()
    }
}

/// A function that answers HTTP requests for its registration's routes.
pub trait HttpFunction: Function {
    fn routes(&self) -> &'static [Route] {
        self.registration().routes
    }

    /// Answers a request matched to one of [`Self::routes`]; `routed.route` is the route, so
    /// the function matches on its route constants.
    fn handle(&self, routed: Routed) -> BoxFuture<'_, Response>;

    /// The pipeline's entry: matches the request to a route, or answers 404 (no route has
    /// the path) or 405 (with `Allow`) without calling the function.
    fn respond(&self, request: Request) -> BoxFuture<'_, Response> {
        match route(self.routes(), request) {
            Ok(routed) => self.handle(routed),
            Err(response) => Box::pin(std::future::ready(*response)),
        }
    }
}

/// Matches `request` to one of `routes`.
pub fn route(routes: &'static [Route], request: Request) -> Result<Routed, Box<Response>> {
    let path = request.uri().path().to_owned();
    let mut allowed = Vec::new();
    for route in routes {
        let Some(params) = match_path(route.path, &path) else { continue };
        if route.method == request.method().as_str() {
            return Ok(Routed { route, params, request });
        }
        if !allowed.contains(&route.method) {
            allowed.push(route.method);
        }
    }
    let method = request.method();
    if allowed.is_empty() {
        return Err(Box::new(error(StatusCode::NOT_FOUND, "not_found", format!("no route for {method} {path}"))));
    }
    let mut response = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{path} does not take {method}; it takes {}", allowed.join(", ")),
    );
    if let Ok(value) = http::HeaderValue::from_str(&allowed.join(", ")) {
        response.headers_mut().insert(http::header::ALLOW, value);
    }
    Err(Box::new(response))
}

/// The answer to a route a function declares but does not handle: a defect, caught by the
/// test in `cli/src/dev.rs` that sends a request to every declared route.
pub fn unhandled(routed: &Routed) -> Response {
    tracing::error!(method = routed.route.method, path = routed.route.path, "a declared route has no handler");
    error(StatusCode::INTERNAL_SERVER_ERROR, "unhandled_route", "this route is declared but not served")
}

/// An error as a caller is told it: the status, a stable code that scripts match on, and a
/// message. Each domain error's mapping is written once, in `problems.rs`.
pub trait Problem: std::fmt::Display {
    fn status(&self) -> StatusCode;
    fn code(&self) -> &'static str;
    /// What the caller may read. For a 5xx the full error is logged and only this is
    /// answered, so internals (table names, AWS messages) never reach the caller unless an
    /// error's mapping says its text is safe.
    fn public_message(&self) -> String {
        if self.status().is_server_error() {
            "the request could not be served now; send it again".into()
        } else {
            self.to_string()
        }
    }
}

/// The JSON answer to a domain error.
pub fn problem(err: &(impl Problem + ?Sized)) -> Response {
    let status = err.status();
    if status.is_server_error() {
        tracing::error!(error = %err, code = err.code(), "request failed");
    }
    error(status, err.code(), err.public_message())
}

/// A JSON response.
pub fn json(status: StatusCode, body: &impl Serialize) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    http::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Bytes::from(bytes))
        .unwrap_or_else(|_| http::Response::new(Bytes::new()))
}

/// The error body every function answers with: `{"error": {"code": ..., "message": ...}}`.
pub fn error(status: StatusCode, code: &str, message: impl std::fmt::Display) -> Response {
    json(status, &serde_json::json!({"error": {"code": code, "message": message.to_string()}}))
}

/// 409 for an outside event that another invocation is processing right now: not a
/// duplicate yet, so the sender retries (Stripe by itself; GitHub shows the delivery as
/// failed, to redeliver), and a crashed attempt is never mistaken for a finished one.
pub fn in_flight(retry_after: i64) -> Response {
    let mut response = error(
        StatusCode::CONFLICT,
        "in_progress",
        format!("another attempt is processing this event; send it again in {retry_after} s"),
    );
    if let Ok(value) = http::HeaderValue::from_str(&retry_after.to_string()) {
        response.headers_mut().insert(http::header::RETRY_AFTER, value);
    }
    response
}

/// A header's value, when present and valid text.
pub fn header<'r>(request: &'r Request, name: &str) -> Option<&'r str> {
    request.headers().get(name).and_then(|v| v.to_str().ok())
}

/// A query parameter's decoded value.
pub fn query_param(request: &Request, name: &str) -> Option<String> {
    let query = request.uri().query()?;
    form_urlencoded::parse(query.as_bytes()).find(|(key, _)| key == name).map(|(_, value)| value.into_owned())
}

/// Matches `path` against a route `template` and returns its `{name}` parameters.
pub fn match_path(template: &str, path: &str) -> Option<Vec<(String, String)>> {
    let mut params = Vec::new();
    let mut template_parts = template.trim_end_matches('/').split('/');
    let mut path_parts = path.trim_end_matches('/').split('/');
    loop {
        match (template_parts.next(), path_parts.next()) {
            (None, None) => return Some(params),
            (Some(t), Some(p)) if t.starts_with('{') && t.ends_with('}') && !p.is_empty() => {
                params.push((t[1..t.len() - 1].to_owned(), p.to_owned()));
            }
            (Some(t), Some(p)) if t == p => {}
            _ => return None,
        }
    }
}

/// The function among `functions` that serves `method` on `path`, or else one that serves
/// `path` with another method (it answers 405): the dev server's router, as API Gateway's
/// is in AWS.
pub fn owner<'f, F: HttpFunction + ?Sized>(
    functions: impl IntoIterator<Item = &'f F> + Clone,
    method: &Method,
    path: &str,
) -> Option<&'f F> {
    let serves = |function: &&F, any_method: bool| {
        function
            .routes()
            .iter()
            .any(|route| (any_method || route.method == method.as_str()) && match_path(route.path, path).is_some())
    };
    functions.clone().into_iter().find(|f| serves(f, false)).or_else(|| functions.into_iter().find(|f| serves(f, true)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_match_templates_with_parameters() {
        assert_eq!(match_path("/webhooks/github", "/webhooks/github"), Some(vec![]));
        assert_eq!(match_path("/webhooks/github", "/webhooks/github/"), Some(vec![]));
        assert_eq!(
            match_path("/providers/{provider}/images", "/providers/aws/images"),
            Some(vec![("provider".into(), "aws".into())])
        );
        assert_eq!(match_path("/providers/{provider}/images", "/providers//images"), None);
        assert_eq!(match_path("/webhooks/github", "/webhooks/stripe"), None);
        assert_eq!(match_path("/webhooks/github", "/webhooks"), None);
    }

    const POST_A: Route = Route::new("POST", "/a", Auth::Function);
    const GET_ITEM: Route = Route::new("GET", "/items/{item}", Auth::Function);
    const PUT_ITEM: Route = Route::new("PUT", "/items/{item}", Auth::Function);
    const FIXED: crate::registration::Registration = crate::registration::Registration {
        name: "fixed",
        routes: &[POST_A, GET_ITEM, PUT_ITEM],
        stream_filters: &[],
        schedule: None,
        permissions: &[],
    };
    struct Fixed;
    impl Function for Fixed {
        fn registration(&self) -> &'static crate::registration::Registration {
            &FIXED
        }
    }
    impl HttpFunction for Fixed {
        fn handle(&self, routed: Routed) -> BoxFuture<'_, Response> {
            Box::pin(async move {
                match *routed.route {
                    POST_A => json(StatusCode::OK, &"a"),
                    GET_ITEM => json(StatusCode::OK, &routed.param("item")),
                    _ => unhandled(&routed),
                }
            })
        }
    }

    fn request(method: &str, path: &str) -> Request {
        http::Request::builder().method(method).uri(path).body(Bytes::new()).unwrap()
    }

    async fn answer(method: &str, path: &str) -> (StatusCode, serde_json::Value, Option<String>) {
        let response = Fixed.respond(request(method, path)).await;
        let allow = response.headers().get(http::header::ALLOW).map(|v| v.to_str().unwrap().to_owned());
        (response.status(), serde_json::from_slice(response.body()).unwrap(), allow)
    }

    #[tokio::test]
    async fn requests_reach_their_route_with_its_parameters() {
        assert_eq!(answer("POST", "/a").await.1, "a");
        assert_eq!(answer("GET", "/items/42/").await.1, "42");
    }

    #[tokio::test]
    async fn unknown_paths_and_wrong_methods_are_answered_without_the_function() {
        let (status, body, _) = answer("GET", "/b").await;
        assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
        let (status, body, allow) = answer("DELETE", "/items/1").await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed"))
        );
        assert_eq!(allow.as_deref(), Some("GET, PUT"));
        // Declared but not handled: a defect that answers 500, never another route's answer.
        let (status, body, _) = answer("PUT", "/items/1").await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::INTERNAL_SERVER_ERROR, Some("unhandled_route"))
        );
    }

    #[test]
    fn the_owner_of_a_path_serves_every_method_of_it() {
        let functions = [Fixed];
        assert!(owner(&functions, &Method::GET, "/items/7").is_some());
        assert!(owner(&functions, &Method::DELETE, "/a").is_some(), "it answers 405");
        assert!(owner(&functions, &Method::GET, "/b").is_none());
    }

    #[test]
    fn query_parameters_are_decoded() {
        let request = http::Request::builder().uri("/x?environment=prod%2Deu&limit=3").body(Bytes::new()).unwrap();
        assert_eq!(query_param(&request, "environment").as_deref(), Some("prod-eu"));
        assert_eq!(query_param(&request, "missing"), None);
    }
}
