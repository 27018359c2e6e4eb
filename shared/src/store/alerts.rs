//! Alerts, once per cause, listed newest first; the outbox of alerts not yet delivered; and
//! one delivery record per alert and channel, so a message is sent to a channel once.
//!
//! | item      | `pk`                    | `sk`                  |
//! |-----------|-------------------------|-----------------------|
//! | alert     | `ALERT#<source>#<id>`   | `ALERT`               |
//! | delivery  | `ALERT#<source>#<id>`   | `DELIVERY#<channel>`  |
//! | outbox    | `OUTBOX`                | `ALERT#<source>#<id>` |
//!
//! An alert and its outbox entry are written in one transaction, by whatever raises it, so
//! alert dispatch finds every undelivered alert in one small partition, however it was
//! raised and whether or not the stream invocation that should have sent it ran.

use aws_sdk_dynamodb::types::Put as TxPut;
use serde::Deserialize;

use super::*;
use crate::domain::alert::DeliveryState;

/// An alert waiting for delivery: which one, and not before when.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct OutboxEntry {
    pub source: String,
    pub id: String,
    pub due_at: i64,
}

/// Where one alert's delivery to one channel stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelDelivery {
    /// An invocation is sending it (until its lease ends).
    Sending,
    Delivered,
    /// The channel said "not now": tried again from `retry_at`.
    Waiting,
    /// The channel refused it for good.
    Refused,
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DeliveryRecord {
    pub channel: String,
    pub state: ChannelDelivery,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub retry_at: Option<i64>,
    #[serde(default)]
    pub lease_until: Option<i64>,
    #[serde(default)]
    pub error: Option<String>,
}

/// How one try of one channel ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tried {
    Delivered,
    Later { retry_at: i64, reason: String },
    Refused(String),
}

const OUTBOX: &str = "OUTBOX";

impl Key {
    pub fn alert_delivery(source: &str, id: &str, channel: &str) -> Self {
        Self { pk: format!("ALERT#{source}#{id}"), sk: format!("DELIVERY#{channel}") }
    }
    pub fn outbox(source: &str, id: &str) -> Self {
        Self { pk: OUTBOX.into(), sk: format!("ALERT#{source}#{id}") }
    }
}

impl Table {
    /// Raises an alert for alert dispatch, once per cause: the alert and its outbox entry
    /// together, or neither.
    pub async fn record_alert(&self, alert: &Alert) -> Result<Put, StoreError> {
        let mut items = self.alert_writes(alert)?;
        if let Some(TransactWriteItem { put: Some(put), .. }) = items.first_mut() {
            put.condition_expression = Some("attribute_not_exists(pk)".into());
        }
        Ok(match retry_conflicts(Backoff::default(), || self.transact(items.clone())).await? {
            Transition::Applied => Put::Created,
            Transition::Rejected => Put::AlreadyExists,
        })
    }

    /// The alert and its outbox entry, as items of a transaction (the alert's put carries no
    /// condition: the caller's other items guard it).
    pub(super) fn alert_writes(&self, alert: &Alert) -> Result<Vec<TransactWriteItem>, StoreError> {
        let put = |item: Item| {
            TxPut::builder()
                .table_name(self.name())
                .set_item(Some(item))
                .build()
                .map(|put| TransactWriteItem::builder().put(put).build())
                .map_err(|e| self.build_error("TransactWriteItems", e))
        };
        Ok(vec![put(alert_item(alert)?)?, put(outbox_item(alert))?])
    }

    /// The newest alerts first.
    pub async fn recent_alerts(&self, limit: i32) -> Result<Vec<Alert>, StoreError> {
        self.newest("ALERTS", limit).await?.into_iter().map(|item| decode("alert", item)).collect()
    }

    pub async fn alert(&self, source: &str, id: &str) -> Result<Option<Alert>, StoreError> {
        self.get(Key::alert(source, id)).await?.map(|item| decode("alert", item)).transpose()
    }

    /// Every alert not yet delivered, the soonest due first.
    pub async fn outbox(&self) -> Result<Vec<OutboxEntry>, StoreError> {
        let mut entries: Vec<OutboxEntry> = self
            .partition(OUTBOX, "ALERT#", None, false)
            .await?
            .into_iter()
            .map(|item| decode("outbox entry", item))
            .collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.due_at);
        Ok(entries)
    }

    /// Where `alert`'s delivery to each channel stands.
    pub async fn deliveries(&self, alert: &Alert) -> Result<Vec<DeliveryRecord>, StoreError> {
        let pk = Key::alert(alert.source.as_str(), &alert.id).pk;
        self.partition(&pk, "DELIVERY#", None, false).await?.into_iter().map(|item| decode("delivery", item)).collect()
    }

    /// Takes the right to send `alert` to `channel` now: only if it was never tried, is
    /// waiting and due, or was being sent by an invocation whose lease ran out (it died). A
    /// claim already ours passes: the SDK's retry of an update whose answer was lost.
    pub async fn claim_delivery(
        &self,
        alert: &Alert,
        channel: &str,
        token: &str,
        now: i64,
        lease_seconds: i64,
    ) -> Result<Transition, StoreError> {
        self.update_if(
            Key::alert_delivery(alert.source.as_str(), &alert.id, channel),
            "SET #state = :sending, claim = :token, lease_until = :lease, #channel = :channel, \
             attempts = if_not_exists(attempts, :zero) + :one, updated_at = :now",
            "attribute_not_exists(pk) OR (#state = :waiting AND retry_at <= :now) OR (#state = :sending AND (lease_until < :now OR claim = :token))",
            &[("#channel", "channel")],
            vec![
                (":sending", s("sending")),
                (":waiting", s("waiting")),
                (":token", s(token)),
                (":lease", n(now + lease_seconds)),
                (":channel", s(channel)),
                (":zero", n(0)),
                (":one", n(1)),
                (":now", n(now)),
            ],
        )
        .await
    }

    /// Records how the claimed try ended; only the claim's holder can.
    pub async fn finish_delivery(
        &self,
        alert: &Alert,
        channel: &str,
        token: &str,
        tried: &Tried,
        now: i64,
    ) -> Result<Transition, StoreError> {
        let (update, mut values) = match tried {
            Tried::Delivered => {
                ("SET #state = :to, delivered_at = :now REMOVE lease_until, #error", vec![(":to", s("delivered"))])
            }
            Tried::Later { retry_at, reason } => (
                "SET #state = :to, retry_at = :retry_at, #error = :error REMOVE lease_until",
                vec![(":to", s("waiting")), (":retry_at", n(*retry_at)), (":error", s(reason))],
            ),
            Tried::Refused(reason) => (
                "SET #state = :to, #error = :error REMOVE lease_until",
                vec![(":to", s("refused")), (":error", s(reason))],
            ),
        };
        values.extend([(":sending", s("sending")), (":token", s(token)), (":now", n(now))]);
        self.update_if(
            Key::alert_delivery(alert.source.as_str(), &alert.id, channel),
            update,
            "#state = :sending AND claim = :token",
            &[("#error", "error")],
            values,
        )
        .await
    }

    /// Ends an alert's delivery (`delivered`, or `undeliverable` when a channel refused it
    /// for good) and takes it out of the outbox.
    pub async fn settle_alert(&self, alert: &Alert, state: DeliveryState, now: i64) -> Result<(), StoreError> {
        let to = match state {
            DeliveryState::Undeliverable => "undeliverable",
            _ => "delivered",
        };
        self.update_if(
            Key::alert(alert.source.as_str(), &alert.id),
            "SET delivery = :to, delivered_at = :now",
            "delivery = :pending",
            &[],
            vec![(":to", s(to)), (":pending", s("pending")), (":now", n(now))],
        )
        .await?;
        self.drop_outbox_entry(alert.source.as_str(), &alert.id).await
    }

    /// Forgets an outbox entry whose alert is gone.
    pub async fn drop_outbox_entry(&self, source: &str, id: &str) -> Result<(), StoreError> {
        self.client
            .delete_item()
            .table_name(self.name())
            .set_key(Some(Key::outbox(source, id).into_item()))
            .send()
            .await
            .map_err(|err| self.aws_error("DeleteItem", err))?;
        Ok(())
    }

    /// Keeps an alert in the outbox, not due before `due_at`.
    pub async fn postpone_alert(&self, alert: &Alert, due_at: i64) -> Result<Transition, StoreError> {
        self.update_if(
            Key::outbox(alert.source.as_str(), &alert.id),
            "SET due_at = :due",
            "attribute_exists(pk)",
            &[],
            vec![(":due", n(due_at))],
        )
        .await
    }
}

/// An alert as stored: its `delivery` pending until alert dispatch delivers it, listed
/// newest first.
pub(super) fn alert_item(alert: &Alert) -> Result<Item, StoreError> {
    let source = alert.source.as_str();
    let mut item = encode("alert", alert, Key::alert(source, &alert.id))?;
    item.insert("gsi1pk".into(), s("ALERTS"));
    item.insert("gsi1sk".into(), s(format!("{}#{source}#{}", time_key(alert.created_at), alert.id)));
    Ok(item)
}

fn outbox_item(alert: &Alert) -> Item {
    let mut item = Key::outbox(alert.source.as_str(), &alert.id).into_item();
    item.insert("source".into(), s(alert.source.as_str()));
    item.insert("id".into(), s(&alert.id));
    // Due at once: an alert's time is its source's (a Stripe event's), which may be ahead.
    item.insert("due_at".into(), n(0));
    item
}
