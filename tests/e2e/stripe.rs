use conveyor_e2e::{STRIPE_SECRET, TestApp, fixtures_dir};
use conveyor_shared::domain::stripe::HANDLED;
use conveyor_shared::signature::sign_stripe;
use serde_json::{Value, json};

pub(crate) fn event(id: &str, kind: &str, created: i64, object: Value) -> Vec<u8> {
    json!({"id": id, "object": "event", "api_version": "2025-03-31.basil", "created": created, "livemode": false,
           "type": kind, "data": {"object": object}})
    .to_string()
    .into_bytes()
}

pub(crate) fn subscription(status: &str, price: &str) -> Value {
    json!({
        "id": "sub_1", "object": "subscription", "customer": "cus_1", "status": status,
        "cancel_at_period_end": false,
        "items": {"object": "list", "data": [{"object": "subscription_item", "price": {"id": price, "product": "prod_1"}, "current_period_end": 1_800_000_000}]}
    })
}

pub(crate) async fn entitlement(app: &TestApp) -> Value {
    let answer = app.get("/api/v1/customers/cus_1").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    answer.body
}

#[tokio::test]
async fn a_subscription_lifecycle_sets_the_entitlement() {
    let app = TestApp::spawn("").await;
    let created = event("evt_a", "customer.subscription.created", 100, subscription("active", "price_basic"));
    assert_eq!(app.deliver_stripe(&created, 0).await.status, 200);
    let body = entitlement(&app).await;
    assert_eq!(body["entitled"], true);
    let sub = &body["subscriptions"][0];
    assert_eq!((sub["status"].as_str(), sub["price"].as_str()), (Some("active"), Some("price_basic")));
    assert_eq!(sub["current_period_end"], 1_800_000_000);

    let deleted = event("evt_b", "customer.subscription.deleted", 200, subscription("canceled", "price_basic"));
    assert_eq!(app.deliver_stripe(&deleted, 0).await.status, 200);
    let body = entitlement(&app).await;
    assert_eq!(body["entitled"], false);
    assert_eq!(body["subscriptions"][0]["status"], "canceled");
}

#[tokio::test]
async fn an_older_event_never_overwrites_a_newer_one() {
    let app = TestApp::spawn("").await;
    let newer = event(
        "evt_new",
        "customer.subscription.updated",
        200,
        json!({
            "id": "sub_1", "object": "subscription", "customer": "cus_1", "status": "past_due", "cancel_at_period_end": true
        }),
    );
    let older = event("evt_old", "customer.subscription.created", 100, subscription("active", "price_pro"));
    assert_eq!(app.deliver_stripe(&newer, 0).await.body["outcome"], "applied");
    let answer = app.deliver_stripe(&older, 0).await;
    assert_eq!(answer.body["outcome"], "stale", "{answer:?}");
    let sub = &entitlement(&app).await["subscriptions"][0];
    assert_eq!(sub["status"], "past_due", "the newer status stands");
    assert_eq!(sub["cancel_at_period_end"], true);
    assert_eq!(sub["price"], "price_pro", "the older event filled what was unknown");
}

#[tokio::test]
async fn at_the_same_second_the_lifecycle_decides_and_a_terminal_status_is_never_left() {
    let app = TestApp::spawn("").await;
    let deleted = event("evt_del", "customer.subscription.deleted", 300, subscription("canceled", "price_basic"));
    let updated = event("evt_upd", "customer.subscription.updated", 300, subscription("active", "price_basic"));
    app.deliver_stripe(&deleted, 0).await;
    assert_eq!(app.deliver_stripe(&updated, 0).await.body["outcome"], "stale");
    assert_eq!(entitlement(&app).await["subscriptions"][0]["status"], "canceled");
    // Not even a later event revives it: a new subscription is a new id.
    let later = event("evt_later", "customer.subscription.updated", 900, subscription("active", "price_basic"));
    assert_eq!(app.deliver_stripe(&later, 0).await.body["outcome"], "stale");
    assert_eq!(entitlement(&app).await["entitled"], false);

    // Two events of one second apply in lifecycle order, whatever order they arrive in.
    let second = |id: &str, status: &str| {
        let mut object = subscription(status, "price_basic");
        object["id"] = "sub_2".into();
        event(id, "customer.subscription.updated", 500, object)
    };
    app.deliver_stripe(&second("evt_pd", "past_due"), 0).await;
    assert_eq!(app.deliver_stripe(&second("evt_act", "active"), 0).await.body["outcome"], "stale");
    assert_eq!(entitlement(&app).await["subscriptions"][1]["status"], "past_due");
    assert_eq!(app.deliver_stripe(&second("evt_unpaid", "unpaid"), 0).await.body["outcome"], "applied");
    assert_eq!(entitlement(&app).await["subscriptions"][1]["status"], "unpaid");
}

#[tokio::test]
async fn status_comes_from_subscriptions_not_from_invoices_or_checkouts() {
    let app = TestApp::spawn("").await;
    // A first payment declined: Stripe keeps the subscription `incomplete`.
    let created = event("evt_inc", "customer.subscription.created", 100, subscription("incomplete", "price_basic"));
    app.deliver_stripe(&created, 0).await;
    let declined = event(
        "evt_declined",
        "invoice.payment_failed",
        101,
        json!({"id": "in_1", "object": "invoice", "customer": "cus_1", "subscription": "sub_1"}),
    );
    assert_eq!(app.deliver_stripe(&declined, 0).await.status, 200);
    let body = entitlement(&app).await;
    assert_eq!(
        (body["entitled"].as_bool(), body["subscriptions"][0]["status"].as_str()),
        (Some(false), Some("incomplete"))
    );
    assert_eq!(
        app.table.recent_alerts(10).await.unwrap()[0].kind.as_str(),
        "payment_failed",
        "the failure still raises an alert"
    );

    // It expires; a payment and a checkout arriving later bring nothing back.
    let expired =
        event("evt_exp", "customer.subscription.updated", 200, subscription("incomplete_expired", "price_basic"));
    app.deliver_stripe(&expired, 0).await;
    let paid = event(
        "evt_paid",
        "invoice.paid",
        300,
        json!({"id": "in_2", "object": "invoice", "customer": "cus_1", "subscription": "sub_1"}),
    );
    let answer = app.deliver_stripe(&paid, 0).await;
    assert_eq!(answer.status, 200, "an invoice about a terminal subscription is recorded, not retried: {answer:?}");
    let checkout = event(
        "evt_co",
        "checkout.session.completed",
        301,
        json!({"object": "checkout.session", "mode": "subscription", "customer": "cus_1", "subscription": "sub_1", "payment_status": "paid"}),
    );
    let answer = app.deliver_stripe(&checkout, 0).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let body = entitlement(&app).await;
    assert_eq!(body["subscriptions"][0]["status"], "incomplete_expired");
    assert_eq!(body["entitled"], false);
}

#[tokio::test]
async fn entitlement_ends_after_the_paid_period_and_every_item_is_kept() {
    let app = TestApp::spawn("").await;
    let mut object = subscription("active", "price_base");
    object["items"]["data"] = json!([
        {"object": "subscription_item", "price": {"id": "price_base", "product": "prod_base"}, "current_period_end": 1_000_000},
        {"object": "subscription_item", "price": {"id": "price_seats", "product": "prod_seats"}, "current_period_end": 1_000_000}
    ]);
    app.deliver_stripe(&event("evt_old_period", "customer.subscription.created", 100, object), 0).await;
    let body = entitlement(&app).await;
    assert_eq!(body["entitled"], false, "active, but its period ended long ago and no renewal came: {body}");
    let sub = &body["subscriptions"][0];
    assert_eq!(sub["entitled"], false);
    let items: Vec<&str> = sub["items"].as_array().unwrap().iter().map(|i| i["price"].as_str().unwrap()).collect();
    assert_eq!(items, ["price_base", "price_seats"]);
}

#[tokio::test]
async fn events_of_the_other_mode_touch_nothing() {
    let app = TestApp::spawn("").await;
    let mut live: Value = serde_json::from_slice(&event(
        "evt_live",
        "customer.subscription.created",
        100,
        subscription("active", "price_basic"),
    ))
    .unwrap();
    live["livemode"] = true.into();
    let answer = app.deliver_stripe(live.to_string().as_bytes(), 0).await;
    assert_eq!((answer.status, answer.body["outcome"].as_str()), (200, Some("ignored")), "{answer:?}");
    assert!(answer.body["reason"].as_str().unwrap().contains("live-mode event at a test-mode endpoint"));
    assert_eq!(app.get("/api/v1/customers/cus_1").await.status, 404, "nothing was written");
}

#[tokio::test]
async fn duplicates_change_nothing_also_fifty_at_once() {
    let app = TestApp::spawn("").await;
    let body = event(
        "evt_dup",
        "invoice.payment_failed",
        100,
        json!({
            "id": "in_1", "object": "invoice", "customer": "cus_1", "subscription": "sub_1"
        }),
    );
    let copies: Vec<_> = (0..50)
        .map(|_| {
            let (app, body) = (app.clone(), body.clone());
            tokio::spawn(async move { app.deliver_stripe(&body, 0).await })
        })
        .collect();
    let mut fresh = 0;
    for copy in copies {
        let answer = copy.await.unwrap();
        // A copy that arrives while the first is processed is asked to come back (Stripe
        // retries it), never told it is done.
        let in_flight = answer.status == 409 && answer.body["error"]["code"] == "in_progress";
        assert!(answer.status == 200 || in_flight, "{answer:?}");
        fresh += usize::from(answer.status == 200 && answer.body["duplicate"] == false);
    }
    assert_eq!(fresh, 1);
    let late = app.deliver_stripe(&body, 0).await;
    assert_eq!((late.status, &late.body["duplicate"]), (200, &json!(true)), "{late:?}");
    let alerts = app.table.recent_alerts(10).await.unwrap();
    assert_eq!(alerts.len(), 1, "one alert for the failed payment");
    assert_eq!(alerts[0].kind.as_str(), "payment_failed");
    assert_eq!(alerts[0].labels.get("customer").map(String::as_str), Some("cus_1"), "{alerts:?}");
    assert_eq!(entitlement(&app).await["subscriptions"][0]["status"], Value::Null, "an invoice sets no status");
}

#[tokio::test]
async fn signatures_are_checked_and_rejections_write_nothing() {
    let app = TestApp::spawn("").await;
    let body = event("evt_sig", "customer.subscription.created", 100, subscription("active", "price_basic"));
    let post = |signature: String, body: Vec<u8>| {
        let app = app.clone();
        async move {
            app.request(
                "POST",
                "/webhooks/stripe",
                &[("content-type", "application/json"), ("stripe-signature", &signature)],
                body,
            )
            .await
        }
    };
    let now = conveyor_shared::unix_now();
    let wrong = post(sign_stripe(b"whsec_wrong", now, &body), body.clone()).await;
    assert_eq!((wrong.status, wrong.body["error"]["code"].as_str()), (401, Some("invalid_signature")));
    let stale = app.deliver_stripe(&body, 301).await;
    assert_eq!(stale.status, 401);
    assert!(stale.body["error"]["message"].as_str().unwrap().contains("tolerance"));
    let malformed = post("v1=abc".into(), body.clone()).await;
    assert_eq!((malformed.status, malformed.body["error"]["code"].as_str()), (400, Some("malformed_signature")));
    let missing = app.request("POST", "/webhooks/stripe", &[], body.clone()).await;
    assert_eq!(missing.status, 400);
    let bad_json = b"{\"id\": \"evt_x\"".to_vec();
    let answer = post(sign_stripe(STRIPE_SECRET.as_bytes(), now, &bad_json), bad_json).await;
    assert_eq!((answer.status, answer.body["error"]["code"].as_str()), (400, Some("invalid_event")));
    assert_eq!(app.get("/api/v1/customers/cus_1").await.status, 404, "nothing was written");

    // While a secret is rolled, Stripe sends one v1 per secret: any match is enough.
    let other = sign_stripe(b"whsec_not_ours", now, &body);
    let ours = sign_stripe(STRIPE_SECRET.as_bytes(), now, &body);
    let both = format!("{other},{},v0=0000", ours.split(',').nth(1).unwrap());
    let answer = post(both, body.clone()).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body["duplicate"], false, "the rejected attempts left no dedupe record");
}

#[tokio::test]
async fn unknown_types_are_ignored_and_customer_lookups_are_checked() {
    let app = TestApp::spawn("").await;
    let answer = app.deliver_stripe(&event("evt_u", "charge.succeeded", 1, json!({"object": "charge"})), 0).await;
    assert_eq!((answer.status, answer.body["outcome"].as_str()), (200, Some("ignored")));
    assert_eq!(app.get("/api/v1/customers/cus_nobody").await.status, 404);
    let answer = app.get("/api/v1/customers/cus%2F..").await;
    assert_eq!((answer.status, answer.body["error"]["code"].as_str()), (400, Some("invalid_customer")));
}

#[tokio::test]
async fn every_fixture_object_in_a_handled_envelope_is_accepted() {
    let fixtures = fixtures_dir();
    let app = TestApp::spawn("").await;
    let text = std::fs::read_to_string(fixtures.join("stripe/fixtures3.json")).unwrap();
    let resources: Value = serde_json::from_str(&text).unwrap();
    let mut sent = 0;
    for (index, (name, object)) in resources["resources"].as_object().unwrap().iter().enumerate() {
        // The kinds Conveyor reads go in every handled envelope, the rest in one each.
        let kinds: Vec<&str> = if ["subscription", "invoice", "checkout.session"].contains(&name.as_str()) {
            HANDLED.to_vec()
        } else {
            vec![HANDLED[index % HANDLED.len()]]
        };
        for kind in kinds {
            let body = event(&format!("evt_fixture_{sent}"), kind, 1_721_954_054, object.clone());
            let answer = app.deliver_stripe(&body, 0).await;
            assert_eq!(answer.status, 200, "{name} in {kind}: {answer:?}");
            sent += 1;
        }
    }
    assert!(sent > 170, "{sent}");
    let answer = app.get("/api/v1/customers/cus_QXg1o8vcGmoR32").await;
    assert_eq!(answer.status, 200, "the fixture subscription and invoices were applied: {answer:?}");
}

#[tokio::test]
async fn an_event_still_being_processed_is_retried_not_dropped() {
    let app = TestApp::spawn("").await;
    let body = event("evt_held", "customer.subscription.created", 100, subscription("active", "price_basic"));
    let key = conveyor_shared::store::Key::stripe_event("evt_held");
    let now = conveyor_shared::unix_now();
    app.table.claim(key.clone(), "customer.subscription.updated", "other-attempt", now, 3600).await.unwrap();

    let answer = app.deliver_stripe(&body, 0).await;
    assert_eq!((answer.status, answer.body["error"]["code"].as_str()), (409, Some("in_progress")), "{answer:?}");
    let before = app.get("/api/v1/customers/cus_1").await;
    assert_ne!(before.body["entitled"], true, "nothing applied while another attempt holds it: {before:?}");

    // The other attempt gave up: Stripe's retry is processed in full.
    app.table.release_claim(key, "other-attempt").await.unwrap();
    let retried = app.deliver_stripe(&body, 0).await;
    assert_eq!((retried.status, &retried.body["duplicate"]), (200, &json!(false)), "{retried:?}");
    assert_eq!(entitlement(&app).await["subscriptions"][0]["status"], "active");
}

#[tokio::test]
async fn a_body_over_stripes_1_mb_is_refused_before_anything_else() {
    let app = TestApp::spawn("").await;
    let mut object = subscription("active", "price_basic");
    object["metadata"] = json!({"padding": "x".repeat(1024 * 1024)});
    let body = event("evt_big", "customer.subscription.created", 100, object);
    let answer = app.deliver_stripe(&body, 0).await;
    assert_eq!((answer.status, answer.body["error"]["code"].as_str()), (413, Some("payload_too_large")), "{answer:?}");
    assert_eq!(app.get("/api/v1/customers/cus_1").await.status, 404, "nothing was written");
    // Just under the limit is read.
    let mut object = subscription("active", "price_basic");
    object["metadata"] = json!({"padding": "x".repeat(1000 * 1000)});
    let answer = app.deliver_stripe(&event("evt_fits", "customer.subscription.created", 100, object), 0).await;
    assert_eq!(answer.status, 200, "{answer:?}");
}

#[tokio::test]
async fn every_status_entitles_as_stripe_means_it() {
    let app = TestApp::spawn("").await;
    let statuses = [
        ("active", true),
        ("trialing", true),
        ("past_due", true),
        ("incomplete", false),
        ("incomplete_expired", false),
        ("unpaid", false),
        ("canceled", false),
        ("paused", false),
    ];
    for (n, (status, entitled)) in statuses.iter().enumerate() {
        let mut object = subscription(status, "price_basic");
        object["customer"] = format!("cus_status{n}").into();
        app.deliver_stripe(&event(&format!("evt_status{n}"), "customer.subscription.created", 100, object), 0).await;
        let answer = app.get(&format!("/api/v1/customers/cus_status{n}")).await;
        assert_eq!(answer.body["entitled"], *entitled, "{status}: {answer:?}");
    }
}

#[tokio::test]
async fn an_invoice_of_the_same_or_a_later_second_never_holds_a_status_change_back() {
    let app = TestApp::spawn("").await;
    let invoice = |id: &str, kind: &str, created: i64| {
        event(
            id,
            kind,
            created,
            json!({"id": format!("in_{id}"), "object": "invoice", "customer": "cus_1", "subscription": "sub_1"}),
        )
    };
    app.deliver_stripe(
        &event("evt_unpaid", "customer.subscription.updated", 100, subscription("unpaid", "price_basic")),
        0,
    )
    .await;
    assert_eq!(entitlement(&app).await["entitled"], false);
    // The customer pays: the invoice and the subscription's update share a second, and the
    // invoice arrives first. The payment is recorded and the customer is let back in.
    let paid = app.deliver_stripe(&invoice("evt_pay", "invoice.paid", 200), 0).await;
    assert_eq!(paid.status, 200, "{paid:?}");
    let active = app
        .deliver_stripe(
            &event("evt_back", "customer.subscription.updated", 200, subscription("active", "price_basic")),
            0,
        )
        .await;
    assert_eq!(active.body["outcome"], "applied", "{active:?}");
    assert_eq!(entitlement(&app).await["entitled"], true);

    // An invoice of a later second arrives before the cancellation: the cancellation applies.
    let failed = app.deliver_stripe(&invoice("evt_fail", "invoice.payment_failed", 301), 0).await;
    assert_eq!(failed.status, 200, "{failed:?}");
    app.deliver_stripe(
        &event("evt_gone", "customer.subscription.deleted", 300, subscription("canceled", "price_basic")),
        0,
    )
    .await;
    let body = entitlement(&app).await;
    assert_eq!(
        (body["subscriptions"][0]["status"].as_str(), body["entitled"].as_bool()),
        (Some("canceled"), Some(false))
    );
}
