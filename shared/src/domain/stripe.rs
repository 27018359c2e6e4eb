//! Stripe events: a small serde model of the fields Conveyor reads, and the decision of what
//! an event changes in a customer's entitlement.
//!
//! Why not `async-stripe`: it is the maintained crate, but it compiles for minutes, pulls an
//! old HTTP stack, and its webhook helper checks only the last `v1` signature (breaking secret
//! rotation). Conveyor needs a dozen fields of three objects and no API calls, so it reads
//! them here with serde, and tolerates both API shapes (period end on the subscription or on
//! its items; an invoice's subscription at the top or under `parent`).

use serde::Deserialize;

use super::alert::{Alert, AlertKind, AlertSource, Severity};
use serde_json::Value;

/// The envelope of every Stripe event.
#[derive(Debug, Deserialize)]
pub struct Event {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub created: i64,
    #[serde(default)]
    pub livemode: bool,
    pub data: EventData,
}

#[derive(Debug, Deserialize)]
pub struct EventData {
    pub object: Value,
}

/// An id, or the object it names when the API expanded it.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Expandable {
    Id(String),
    Object { id: String },
}

impl Expandable {
    fn id(self) -> String {
        match self {
            Expandable::Id(id) | Expandable::Object { id } => id,
        }
    }
}

#[derive(Debug, Deserialize)]
struct Subscription {
    id: String,
    customer: Expandable,
    status: String,
    #[serde(default)]
    cancel_at_period_end: bool,
    current_period_end: Option<i64>,
    #[serde(default)]
    items: Option<List<SubscriptionItem>>,
}

#[derive(Debug, Deserialize)]
struct List<T> {
    #[serde(default = "Vec::new")]
    data: Vec<T>,
}

#[derive(Debug, Deserialize)]
struct SubscriptionItem {
    price: Option<Price>,
    plan: Option<Price>,
    current_period_end: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct Price {
    id: String,
    product: Option<Expandable>,
}

#[derive(Debug, Deserialize)]
struct Invoice {
    id: String,
    customer: Option<Expandable>,
    subscription: Option<Expandable>,
    parent: Option<InvoiceParent>,
    lines: Option<List<InvoiceLine>>,
}

#[derive(Debug, Deserialize)]
struct InvoiceParent {
    subscription_details: Option<SubscriptionDetails>,
}

#[derive(Debug, Deserialize)]
struct SubscriptionDetails {
    subscription: Option<Expandable>,
}

#[derive(Debug, Deserialize)]
struct InvoiceLine {
    period: Option<Period>,
}

#[derive(Debug, Deserialize)]
struct Period {
    end: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct CheckoutSession {
    mode: Option<String>,
    customer: Option<Expandable>,
    subscription: Option<Expandable>,
}

/// What an event says about one subscription. `None` fields are not known from this event
/// and are left as they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionChange {
    pub customer: String,
    pub subscription: String,
    pub event_id: String,
    pub event_type: String,
    /// The event's `created`: the order in which changes apply.
    pub event_created: i64,
    /// Set from subscription objects only: invoices and checkouts record payments and
    /// links, never a status.
    pub status: Option<String>,
    /// The first item's price and product.
    pub price: Option<String>,
    pub product: Option<String>,
    /// Every item's price and product.
    pub items: Option<Vec<PriceItem>>,
    pub current_period_end: Option<i64>,
    pub cancel_at_period_end: Option<bool>,
}

/// One subscription item: what the customer pays for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PriceItem {
    pub price: String,
    pub product: Option<String>,
}

impl SubscriptionChange {
    /// Where the status puts the subscription in its lifecycle ([`lifecycle_rank`]); 0
    /// without a status.
    pub fn rank(&self) -> i64 {
        self.status.as_deref().map_or(0, lifecycle_rank)
    }
}

/// A subscription's lifecycle, in order: `incomplete` → `active`/`trialing` → `past_due`
/// (or `paused`) → `unpaid` → `canceled`/`incomplete_expired`. Two events of the same second
/// apply in this order, whatever order they arrive in.
pub fn lifecycle_rank(status: &str) -> i64 {
    match status {
        "incomplete" => 1,
        "trialing" | "active" => 2,
        "past_due" | "paused" => 3,
        "unpaid" => 4,
        "canceled" | "incomplete_expired" => 5,
        _ => 0,
    }
}

/// Statuses a subscription never leaves: a new subscription is a new id.
pub fn is_terminal(status: &str) -> bool {
    matches!(status, "canceled" | "incomplete_expired")
}

/// A customer's subscription as the ledger knows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct SubscriptionState {
    pub customer: String,
    pub subscription: String,
    pub status: Option<String>,
    pub price: Option<String>,
    pub product: Option<String>,
    /// Every item's price and product.
    #[serde(default)]
    pub items: Option<Vec<PriceItem>>,
    pub current_period_end: Option<i64>,
    pub cancel_at_period_end: Option<bool>,
    pub last_event_id: String,
    pub last_event_type: String,
    pub last_event_created: i64,
    pub updated_at: i64,
}

/// What to do with an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StripePlan {
    Ignored(String),
    Apply { change: Box<SubscriptionChange>, alert: Option<Box<Alert>> },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the Stripe event is not valid: {0}")]
pub struct StripeError(pub String);

/// Event types that change an entitlement.
pub const HANDLED: &[&str] = &[
    "checkout.session.completed",
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "customer.subscription.paused",
    "customer.subscription.resumed",
    "invoice.paid",
    "invoice.payment_failed",
];

/// Parses the envelope (a malformed one is the caller's 400).
pub fn parse_event(body: &[u8]) -> Result<Event, StripeError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        StripeError(if path == "." {
            err.into_inner().to_string()
        } else {
            format!("at `{path}`: {}", err.into_inner())
        })
    })
}

/// Decides what `event` changes. An object of another kind than the event type implies, or
/// one without the fields Conveyor needs, is ignored with a reason rather than refused: Stripe
/// would otherwise retry it for days.
pub fn plan(event: &Event) -> StripePlan {
    if !HANDLED.contains(&event.kind.as_str()) {
        return StripePlan::Ignored(format!("Conveyor does not act on `{}` events", event.kind));
    }
    let object_kind = event.data.object.get("object").and_then(Value::as_str).unwrap_or("");
    let expected = match event.kind.split('.').next() {
        Some("checkout") => "checkout.session",
        Some("customer") => "subscription",
        _ => "invoice",
    };
    if object_kind != expected {
        return StripePlan::Ignored(format!("a `{}` event carries a `{object_kind}`, not a `{expected}`", event.kind));
    }
    let result = match expected {
        "subscription" => from_subscription(event),
        "invoice" => from_invoice(event),
        _ => from_checkout(event),
    };
    result.unwrap_or_else(StripePlan::Ignored)
}

fn change(event: &Event, customer: String, subscription: String) -> SubscriptionChange {
    SubscriptionChange {
        customer,
        subscription,
        event_id: event.id.clone(),
        event_type: event.kind.clone(),
        event_created: event.created,
        status: None,
        price: None,
        product: None,
        items: None,
        current_period_end: None,
        cancel_at_period_end: None,
    }
}

fn object<T: serde::de::DeserializeOwned>(event: &Event, what: &str) -> Result<T, String> {
    T::deserialize(&event.data.object).map_err(|err| format!("the {what} lacks what Conveyor reads: {err}"))
}

fn from_subscription(event: &Event) -> Result<StripePlan, String> {
    let sub: Subscription = object(event, "subscription")?;
    let items = sub.items.map(|list| list.data).unwrap_or_default();
    let prices: Vec<PriceItem> = items
        .iter()
        .filter_map(|item| item.price.as_ref().or(item.plan.as_ref()))
        .map(|price| PriceItem {
            price: price.id.clone(),
            product: price.product.as_ref().map(|p| match p {
                Expandable::Id(id) | Expandable::Object { id } => id.clone(),
            }),
        })
        .collect();
    // Newer API versions keep the period on each item; older ones on the subscription.
    let period_end = sub.current_period_end.or_else(|| items.iter().filter_map(|i| i.current_period_end).max());
    let mut change = change(event, sub.customer.id(), sub.id);
    change.status = Some(if event.kind == "customer.subscription.deleted" { "canceled".into() } else { sub.status });
    change.price = prices.first().map(|p| p.price.clone());
    change.product = prices.first().and_then(|p| p.product.clone());
    change.items = Some(prices);
    change.current_period_end = period_end;
    change.cancel_at_period_end = Some(sub.cancel_at_period_end);
    Ok(StripePlan::Apply { change: Box::new(change), alert: None })
}

fn from_invoice(event: &Event) -> Result<StripePlan, String> {
    let invoice: Invoice = object(event, "invoice")?;
    let subscription = invoice
        .subscription
        .or_else(|| invoice.parent.and_then(|p| p.subscription_details).and_then(|d| d.subscription))
        .map(Expandable::id)
        .ok_or_else(|| format!("invoice {} is not for a subscription", invoice.id))?;
    let customer =
        invoice.customer.map(Expandable::id).ok_or_else(|| format!("invoice {} has no customer", invoice.id))?;
    let period_end = invoice
        .lines
        .map(|l| l.data)
        .unwrap_or_default()
        .iter()
        .filter_map(|line| line.period.as_ref().and_then(|p| p.end))
        .max();
    let failed = event.kind == "invoice.payment_failed";
    // A payment says nothing certain about the subscription's status (a declined first
    // payment leaves it `incomplete`; a payment after a cancellation revives nothing): the
    // subscription's own events set it. A paid invoice does move the paid-for period on.
    let mut change = change(event, customer.clone(), subscription.clone());
    if !failed {
        change.current_period_end = period_end;
    }
    let alert = failed.then(|| {
        Alert::new(AlertSource::Stripe, event.id.clone(), AlertKind::PaymentFailed, Severity::Warning, event.created)
            .summary(format!("Payment failed for customer {customer}"))
            .cause(format!("Stripe could not collect invoice {} of subscription {subscription}", invoice.id))
            .impact("The customer keeps access while Stripe retries; the subscription's own events change it")
            .action("Stripe retries the payment; check the customer's payment method in the Stripe dashboard")
            .label("customer", customer.clone())
            .label("subscription", subscription.clone())
            .label("invoice", invoice.id.clone())
    });
    Ok(StripePlan::Apply { change: Box::new(change), alert: alert.map(Box::new) })
}

fn from_checkout(event: &Event) -> Result<StripePlan, String> {
    let session: CheckoutSession = object(event, "checkout session")?;
    if session.mode.as_deref() != Some("subscription") {
        return Err("the checkout session is not a subscription checkout".into());
    }
    let subscription = session.subscription.map(Expandable::id).ok_or("the checkout session has no subscription")?;
    let customer = session.customer.map(Expandable::id).ok_or("the checkout session has no customer")?;
    // The customer and subscription are linked; the status comes with the subscription's
    // own events (`payment_status` does not say whether the subscription is active).
    let change = change(event, customer, subscription);
    Ok(StripePlan::Apply { change: Box::new(change), alert: None })
}

/// Statuses in which a customer may use the product: Stripe still retries a `past_due`
/// payment, so access continues until it gives up (`unpaid` or `canceled`).
pub fn entitles(status: &str) -> bool {
    matches!(status, "active" | "trialing" | "past_due")
}

/// Whether a subscription entitles its customer at `now`: an entitling status, and a paid
/// period that has not ended more than `grace` seconds ago (a renewal that Conveyor never
/// heard of ends access instead of extending it for ever).
pub fn entitled(status: Option<&str>, current_period_end: Option<i64>, now: i64, grace: i64) -> bool {
    status.is_some_and(entitles) && current_period_end.is_none_or(|end| now <= end.saturating_add(grace))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/stripe/fixtures3.json");

    fn event(kind: &str, object: Value) -> Event {
        parse_event(
            json!({"id": "evt_1", "object": "event", "type": kind, "created": 100, "data": {"object": object}})
                .to_string()
                .as_bytes(),
        )
        .unwrap()
    }

    fn subscription(extra: Value) -> Value {
        let mut sub = json!({
            "id": "sub_1", "object": "subscription", "customer": "cus_1", "status": "active",
            "cancel_at_period_end": true,
            "items": {"object": "list", "data": [{"price": {"id": "price_1", "product": "prod_1"}, "current_period_end": 2000}]}
        });
        for (k, v) in extra.as_object().unwrap() {
            sub[k] = v.clone();
        }
        sub
    }

    fn applied(plan: StripePlan) -> (SubscriptionChange, Option<Alert>) {
        match plan {
            StripePlan::Apply { change, alert } => (*change, alert.map(|a| *a)),
            StripePlan::Ignored(reason) => panic!("ignored: {reason}"),
        }
    }

    #[test]
    fn subscription_events_carry_plan_status_and_period_end_in_both_api_shapes() {
        let (change, _) = applied(plan(&event("customer.subscription.updated", subscription(json!({})))));
        assert_eq!(change.status.as_deref(), Some("active"));
        assert_eq!(change.price.as_deref(), Some("price_1"));
        assert_eq!(change.product.as_deref(), Some("prod_1"));
        assert_eq!(change.current_period_end, Some(2000), "from the items (new API)");
        assert_eq!(change.cancel_at_period_end, Some(true));
        let (change, _) = applied(plan(&event(
            "customer.subscription.created",
            subscription(json!({"current_period_end": 3000, "customer": {"id": "cus_1", "object": "customer"}})),
        )));
        assert_eq!(change.current_period_end, Some(3000), "from the subscription (old API)");
        assert_eq!(change.customer, "cus_1", "an expanded customer");
        let (change, _) = applied(plan(&event("customer.subscription.deleted", subscription(json!({})))));
        assert!(is_terminal(change.status.as_deref().unwrap()));
        let two = subscription(json!({"items": {"data": [
            {"price": {"id": "price_base", "product": "prod_base"}},
            {"price": {"id": "price_seats", "product": {"id": "prod_seats", "object": "product"}}}
        ]}}));
        let (change, _) = applied(plan(&event("customer.subscription.updated", two)));
        let items: Vec<_> = change.items.unwrap().into_iter().map(|i| (i.price, i.product.unwrap())).collect();
        assert_eq!(items, [("price_base".into(), "prod_base".into()), ("price_seats".into(), "prod_seats".into())]);
    }

    #[test]
    fn the_lifecycle_orders_same_second_events_and_ends_in_terminal_states() {
        let order = ["incomplete", "active", "past_due", "unpaid", "canceled"];
        for pair in order.windows(2) {
            assert!(lifecycle_rank(pair[0]) < lifecycle_rank(pair[1]), "{pair:?}");
        }
        assert_eq!(lifecycle_rank("trialing"), lifecycle_rank("active"));
        assert!(is_terminal("incomplete_expired") && is_terminal("canceled") && !is_terminal("unpaid"));
    }

    #[test]
    fn entitlement_needs_an_entitling_status_and_a_period_not_long_past() {
        let day = 86_400;
        assert!(entitled(Some("active"), Some(1000), 1000 + day, 3 * day));
        assert!(!entitled(Some("active"), Some(1000), 1000 + 4 * day, 3 * day), "no renewal heard of");
        assert!(entitled(Some("past_due"), None, 0, 0), "Stripe still retries");
        for status in [Some("incomplete"), Some("unpaid"), Some("canceled"), Some("incomplete_expired"), None] {
            assert!(!entitled(status, Some(i64::MAX), 0, day), "{status:?}");
        }
    }

    #[test]
    fn invoices_in_both_shapes_and_failed_payments_raise_an_alert() {
        let old = json!({"id": "in_1", "object": "invoice", "customer": "cus_1", "subscription": "sub_1", "lines": {"data": [{"period": {"end": 5000}}]}});
        let (change, alert) = applied(plan(&event("invoice.paid", old)));
        assert_eq!(
            (change.status.as_deref(), change.current_period_end),
            (None, Some(5000)),
            "no status from invoices"
        );
        assert!(alert.is_none());
        let new = json!({"id": "in_2", "object": "invoice", "customer": "cus_1", "parent": {"subscription_details": {"subscription": "sub_2"}}});
        let (change, alert) = applied(plan(&event("invoice.payment_failed", new)));
        assert_eq!((change.subscription.as_str(), change.status.as_deref()), ("sub_2", None));
        let alert = alert.expect("an alert");
        assert_eq!((alert.id.as_str(), alert.kind.as_str()), ("evt_1", "payment_failed"));
        assert_eq!(alert.labels.get("customer").map(String::as_str), Some("cus_1"));
        assert!(alert.cause.contains("in_2") && !alert.impact.is_empty() && !alert.action.is_empty(), "{alert:?}");
        let one_off = json!({"id": "in_3", "object": "invoice", "customer": "cus_1"});
        assert!(matches!(plan(&event("invoice.paid", one_off)), StripePlan::Ignored(_)));
    }

    #[test]
    fn checkout_sessions() {
        let paid = json!({"object": "checkout.session", "mode": "subscription", "customer": "cus_1", "subscription": "sub_1", "payment_status": "paid"});
        let (linked, _) = applied(plan(&event("checkout.session.completed", paid)));
        assert_eq!((linked.subscription.as_str(), linked.status), ("sub_1", None), "no status invented");
        let payment = json!({"object": "checkout.session", "mode": "payment", "customer": "cus_1"});
        assert!(matches!(plan(&event("checkout.session.completed", payment)), StripePlan::Ignored(_)));
    }

    #[test]
    fn unknown_types_and_mismatched_objects_are_ignored() {
        assert!(matches!(plan(&event("charge.succeeded", json!({"object": "charge"}))), StripePlan::Ignored(_)));
        assert!(matches!(
            plan(&event("invoice.paid", json!({"object": "charge", "id": "ch_1"}))),
            StripePlan::Ignored(_)
        ));
    }

    #[test]
    fn malformed_envelopes_name_the_field() {
        let err = parse_event(br#"{"id": "evt_1", "type": "invoice.paid", "data": {"object": {}}}"#).unwrap_err();
        assert!(err.to_string().contains("created"), "{err}");
        assert!(parse_event(b"not json").is_err());
    }

    #[test]
    fn every_fixture_object_in_every_handled_envelope_is_planned() {
        let text = std::fs::read_to_string(FIXTURES).unwrap_or_else(|e| panic!("{FIXTURES}: {e}"));
        let fixtures: Value = serde_json::from_str(&text).unwrap();
        let resources = fixtures["resources"].as_object().unwrap();
        let mut applied_count = 0;
        for (name, object) in resources {
            for kind in HANDLED {
                if let StripePlan::Apply { .. } = plan(&event(kind, object.clone())) {
                    applied_count += 1;
                    assert!(
                        matches!(name.as_str(), "subscription" | "invoice" | "checkout.session"),
                        "{name} in {kind}"
                    );
                }
            }
        }
        // The subscription in its 5 events, the invoice in its 2 (the checkout fixture is a payment).
        assert_eq!(applied_count, 7);
    }
}
