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
}
