//! The HTTP vocabulary shared by every HTTP function, in AWS (through `lambda_http`) and
//! locally (through `conveyor dev`): one request type, one response type, JSON errors, and
//! the route table each function declares (the same paths as the SAM template).

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

/// A function that answers HTTP requests. It receives only requests for its own routes
/// (its registration's).
pub trait HttpFunction: Function {
    fn routes(&self) -> &'static [Route] {
        self.registration().routes
    }
    fn handle(&self, request: Request) -> BoxFuture<'_, Response>;
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

/// 503 for a dependency that failed (the table, an AWS API): logged in full, answered with
/// `advice` only, so internals never reach the caller.
pub fn unavailable(err: &dyn std::fmt::Display, advice: &str) -> Response {
    tracing::error!(error = %err, "dependency unavailable");
    error(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", advice)
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

/// Where a request goes among a set of functions.
pub enum Dispatch<'f, F: ?Sized> {
    To(&'f F),
    /// The path exists but not for this method.
    MethodNotAllowed,
    NotFound,
}

pub fn dispatch<'f, F: HttpFunction + ?Sized>(
    functions: impl IntoIterator<Item = &'f F>,
    method: &Method,
    path: &str,
) -> Dispatch<'f, F> {
    let mut path_known = false;
    for function in functions {
        for route in function.routes() {
            if match_path(route.path, path).is_some() {
                if route.method == method.as_str() {
                    return Dispatch::To(function);
                }
                path_known = true;
            }
        }
    }
    if path_known { Dispatch::MethodNotAllowed } else { Dispatch::NotFound }
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

    struct Fixed;
    const FIXED: crate::registration::Registration = crate::registration::Registration {
        name: "fixed",
        routes: &[Route::new("POST", "/a", Auth::Function)],
        stream_filters: &[],
        schedule: None,
    };
    impl Function for Fixed {
        fn registration(&self) -> &'static crate::registration::Registration {
            &FIXED
        }
    }
    impl HttpFunction for Fixed {
        fn handle(&self, _: Request) -> BoxFuture<'_, Response> {
            Box::pin(async { json(StatusCode::OK, &"ok") })
        }
    }

    #[test]
    fn dispatch_tells_wrong_method_from_unknown_path() {
        let functions = [Fixed];
        assert!(matches!(dispatch(&functions, &Method::POST, "/a"), Dispatch::To(_)));
        assert!(matches!(dispatch(&functions, &Method::GET, "/a"), Dispatch::MethodNotAllowed));
        assert!(matches!(dispatch(&functions, &Method::GET, "/b"), Dispatch::NotFound));
    }

    #[test]
    fn query_parameters_are_decoded() {
        let request = http::Request::builder().uri("/x?environment=prod%2Deu&limit=3").body(Bytes::new()).unwrap();
        assert_eq!(query_param(&request, "environment").as_deref(), Some("prod-eu"));
        assert_eq!(query_param(&request, "missing"), None);
    }
}
