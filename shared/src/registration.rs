//! One description per function: its name, its HTTP routes (with the auth each needs), the
//! stream events it takes and its schedule. Each function crate exports one
//! [`Registration`]; its Lambda `main` serves the capabilities it declares, `conveyor dev`
//! plays them locally, and `conveyor routes` prints them for the template check, so the
//! code and the SAM template cannot drift apart unnoticed.

use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};

use crate::http::Route;
use crate::triggers::rate_expression;

/// Who checks a route's caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Auth {
    /// API Gateway, with SigV4 (`Authorizer: AWS_IAM`): operators and their tools.
    Iam,
    /// The function itself: a webhook signature, a bearer token or an agent credential.
    Function,
}

/// A function as AWS wires it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registration {
    /// As in `functions/<name>` and the template's `CodeUri`.
    pub name: &'static str,
    pub routes: &'static [Route],
    /// Lambda event filter patterns of its table stream mapping (JSON text, as in the
    /// template's `FilterCriteria`); none: the function has no stream mapping.
    pub stream_filters: &'static [&'static str],
    /// The rate of its EventBridge schedule in AWS; `conveyor dev` may run it faster.
    pub schedule: Option<Duration>,
    /// Every IAM action its code needs (`dynamodb:GetItem`, ...), and nothing else: `make
    /// lint` checks that its policy in the template allows exactly these, and the tests run
    /// it with that policy, so a call it makes that is not here fails a test.
    pub permissions: &'static [&'static str],
}

impl Registration {
    /// What `conveyor routes` prints for this function: one JSON object per route, stream
    /// filter and schedule.
    pub fn describe(&self) -> Vec<Value> {
        let name = self.name;
        let routes =
            self.routes.iter().map(|r| json!({"function": name, "method": r.method, "path": r.path, "auth": r.auth}));
        let filters = self.stream_filters.iter().map(|f| json!({"function": name, "stream_filter": f}));
        let schedule = self.schedule.map(|every| {
            json!({"function": name, "schedule": rate_expression(every).unwrap_or_else(|| format!("every {every:?}"))})
        });
        let permissions = json!({"function": name, "permissions": self.permissions});
        routes.chain(filters).chain(schedule).chain([permissions]).collect()
    }
}

/// Something a Lambda function serves: the base of the HTTP, stream and schedule traits.
pub trait Function: Send + Sync {
    fn registration(&self) -> &'static Registration;

    fn name(&self) -> &'static str {
        self.registration().name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registration_describes_routes_filters_and_schedule() {
        const ROUTES: &[Route] = &[Route::new("GET", "/api/v1/things", Auth::Iam)];
        let registration = Registration {
            name: "things",
            routes: ROUTES,
            stream_filters: &[r#"{"eventName": ["INSERT"]}"#],
            schedule: Some(Duration::from_secs(300)),
            permissions: &["dynamodb:GetItem"],
        };
        assert_eq!(
            registration.describe(),
            [
                json!({"function": "things", "method": "GET", "path": "/api/v1/things", "auth": "iam"}),
                json!({"function": "things", "stream_filter": r#"{"eventName": ["INSERT"]}"#}),
                json!({"function": "things", "schedule": "rate(5 minutes)"}),
                json!({"function": "things", "permissions": ["dynamodb:GetItem"]}),
            ]
        );
    }
}
