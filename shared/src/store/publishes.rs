//! Site publishes (`SITE#<site>` / `PUBLISH#<id>`): recorded before the first object is
//! written, marked `uploaded` once every object is in place, which hands the stale keys to
//! `cdn-invalidate`.

use super::*;
use crate::domain::publish::{PublishRecord, PublishState};

impl StoredState for PublishState {
    fn as_str(self) -> &'static str {
        PublishState::as_str(self)
    }
}

impl Key {
    pub fn publish(site: &str, id: &str) -> Self {
        Self { pk: format!("SITE#{site}"), sk: format!("PUBLISH#{id}") }
    }
}

impl Table {
    /// Records a publish about to start; [`Put::AlreadyExists`] when this publish (same
    /// build over the same state) was recorded before.
    pub async fn open_publish(&self, record: &PublishRecord) -> Result<Put, StoreError> {
        self.put_if_absent(encode("publish", record, Key::publish(&record.site, &record.id))?).await
    }

    pub async fn publish(&self, site: &str, id: &str) -> Result<Option<PublishRecord>, StoreError> {
        self.get(Key::publish(site, id)).await?.map(|item| decode("publish", item)).transpose()
    }

    /// Marks a pending publish uploaded, with its final stale keys: applied once, whichever
    /// of several runs of it gets there first.
    pub async fn finish_upload(&self, record: &PublishRecord, now: i64) -> Result<Transition, StoreError> {
        let keys = AttributeValue::L(record.stale_keys.iter().map(|key| s(key.as_str())).collect());
        let change = Conditional::transition(
            Key::publish(&record.site, &record.id),
            PublishState::Pending,
            PublishState::Uploaded,
            "every object is in place",
            now,
        )
        .set("stale_keys", keys)
        .set("whole_site", AttributeValue::Bool(record.whole_site))
        .set("uploaded_at", n(now));
        self.apply(change).await
    }

    /// The site's publishes still `pending`: runs that died part-way, or that run right now.
    pub async fn pending_publishes(&self, site: &str) -> Result<Vec<PublishRecord>, StoreError> {
        let items = self.partition(&format!("SITE#{site}"), "PUBLISH#", None, false).await?;
        let records: Vec<PublishRecord> =
            items.into_iter().map(|item| decode("publish", item)).collect::<Result<_, _>>()?;
        Ok(records.into_iter().filter(|r| r.state == PublishState::Pending).collect())
    }

    /// Marks a pending publish as folded into publish `by`, which carries its stale keys.
    pub async fn supersede_publish(
        &self,
        earlier: &PublishRecord,
        by: &str,
        now: i64,
    ) -> Result<Transition, StoreError> {
        let change = Conditional::transition(
            Key::publish(&earlier.site, &earlier.id),
            PublishState::Pending,
            PublishState::Superseded,
            &format!("folded into publish {by}"),
            now,
        )
        .set("superseded_by", s(by));
        self.apply(change).await
    }

    /// The site's publishes in one of `states`.
    pub async fn publishes_in(&self, site: &str, states: &[PublishState]) -> Result<Vec<PublishRecord>, StoreError> {
        let items = self.partition(&format!("SITE#{site}"), "PUBLISH#", None, false).await?;
        let records: Vec<PublishRecord> =
            items.into_iter().map(|item| decode("publish", item)).collect::<Result<_, _>>()?;
        Ok(records.into_iter().filter(|r| states.contains(&r.state)).collect())
    }

    /// Elects one invocation to submit an uploaded publish's invalidation (the stream and the
    /// tick can both try); one that died is replaced after `ttl` seconds. A claim already
    /// ours passes: the SDK's retry of an update whose answer was lost.
    pub async fn claim_submission(
        &self,
        record: &PublishRecord,
        token: &str,
        now: i64,
        ttl: i64,
    ) -> Result<Transition, StoreError> {
        self.update_if(
            Key::publish(&record.site, &record.id),
            "SET submit_token = :token, submit_until = :until",
            "#state = :uploaded AND (attribute_not_exists(submit_until) OR submit_until < :now OR submit_token = :token)",
            &[],
            vec![
                (":token", s(token)),
                (":until", n(now + ttl)),
                (":uploaded", s(PublishState::Uploaded.as_str())),
                (":now", n(now)),
            ],
        )
        .await
    }

    /// Gives a submission claim back (CloudFront was busy or failed), if it is still ours.
    pub async fn release_submission(&self, record: &PublishRecord, token: &str) -> Result<Transition, StoreError> {
        self.update_if(
            Key::publish(&record.site, &record.id),
            "REMOVE submit_token, submit_until",
            "submit_token = :token",
            &[],
            vec![(":token", s(token))],
        )
        .await
    }

    /// Records a submitted invalidation, only by the invocation holding the claim, and counts
    /// its paths in the month's total, in one transaction.
    pub async fn record_submission(
        &self,
        record: &PublishRecord,
        token: &str,
        invalidation_id: &str,
        paths: &[String],
        now: i64,
    ) -> Result<Transition, StoreError> {
        let publish = Conditional::transition(
            Key::publish(&record.site, &record.id),
            PublishState::Uploaded,
            PublishState::Invalidating,
            "invalidation submitted",
            now,
        )
        .set("invalidation_id", s(invalidation_id))
        .set("invalidation_paths", AttributeValue::L(paths.iter().map(|p| s(p.as_str())).collect()))
        .set("submitted_at", n(now))
        .when("submit_token = :token", vec![(":token", s(token))]);
        let usage = Conditional {
            key: Key::cdn_usage(&crate::domain::invalidation::month_of(now)),
            set: vec!["paths = if_not_exists(paths, :zero) + :count".into()],
            remove: Vec::new(),
            condition: String::new(),
            names: Vec::new(),
            values: vec![(":zero".into(), n(0)), (":count".into(), n(paths.len() as i64))],
        };
        let items = vec![self.transaction_item(publish)?, self.transaction_item(usage)?];
        retry_conflicts(Backoff::default(), || self.transact(items.clone())).await
    }

    /// Invalidation paths submitted in `month` (`2026-11`).
    pub async fn month_paths(&self, month: &str) -> Result<i64, StoreError> {
        let item = self.get(Key::cdn_usage(month)).await?;
        Ok(item
            .and_then(|item| item.get("paths").and_then(|v| v.as_n().ok()).and_then(|v| v.parse().ok()))
            .unwrap_or(0))
    }

    /// Ends a publish: `Completed` when it is live, `Failed` when CloudFront lost or refused
    /// its invalidation.
    pub async fn end_publish(
        &self,
        record: &PublishRecord,
        to: PublishState,
        reason: &str,
        now: i64,
    ) -> Result<Transition, StoreError> {
        let change = Conditional::transition(Key::publish(&record.site, &record.id), record.state, to, reason, now)
            .set("completed_at", n(now));
        self.apply(change).await
    }
}

impl Key {
    /// CloudFront invalidation paths submitted in a calendar month (the account's free 1,000).
    pub fn cdn_usage(month: &str) -> Self {
        Self { pk: "CDN#usage".into(), sk: format!("MONTH#{month}") }
    }
}
