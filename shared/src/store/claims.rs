//! Claims on outside events (a GitHub delivery, a Stripe event): claim, then apply, then
//! finish or release, so a retry or a concurrent copy never applies an event twice.

use super::*;

/// A value that tells one invocation's claim on `id` from any other's.
pub fn claim_token(id: &str, now: i64) -> String {
    use std::hash::{BuildHasher, RandomState};
    format!("{now}-{:016x}", RandomState::new().hash_one((id, std::process::id())))
}

/// Why a delivery could not be claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This invocation owns the delivery and must finish or release it.
    Claimed,
    /// Processed before, to the end: nothing to do.
    Duplicate,
    /// Another invocation is processing it right now (or just gave it up): not done yet, so
    /// the sender is asked to try again in this many seconds rather than told it is done.
    InFlight { retry_after: i64 },
}

impl Table {
    /// Claims an outside event (a delivery, a Stripe event) for processing. Succeeds for a new
    /// one, for one whose earlier claim was abandoned (lease over: the invocation crashed),
    /// and for an expired record. The record is kept `ttl_seconds` for dedupe. An event that
    /// cannot be claimed is a [`Claim::Duplicate`] only once it was processed to the end.
    pub async fn claim(
        &self,
        key: Key,
        event: &str,
        token: &str,
        now: i64,
        ttl_seconds: i64,
    ) -> Result<Claim, StoreError> {
        let mut item = key.clone().into_item();
        item.extend([
            ("event".into(), s(event)),
            ("state".into(), s("processing")),
            ("claim".into(), s(token)),
            ("lease_until".into(), n(now + DELIVERY_LEASE_SECONDS)),
            ("received_at".into(), n(now)),
            ("ttl".into(), n(now + ttl_seconds)),
        ]);
        let put = self
            .put_if(
                item,
                "attribute_not_exists(pk) OR (#state = :processing AND lease_until < :now) OR #ttl < :now",
                HashMap::from([("#state".into(), "state".into()), ("#ttl".into(), "ttl".into())]),
                HashMap::from([(":processing".into(), s("processing")), (":now".into(), n(now))]),
            )
            .await?;
        if put == Put::Created {
            return Ok(Claim::Claimed);
        }
        let Some(current) = self.read(key, true).await? else {
            // Released by a failed attempt meanwhile: the next try claims it.
            return Ok(Claim::InFlight { retry_after: 1 });
        };
        let text = |name: &str| current.get(name).and_then(|v| v.as_s().ok()).map(String::as_str);
        let lease_until = current.get("lease_until").and_then(|v| v.as_n().ok()).and_then(|n| n.parse::<i64>().ok());
        if text("state") == Some("processing") && text("claim") == Some(token) {
            // Our own put: it was written, its answer lost, and the SDK's retry found it.
            return Ok(Claim::Claimed);
        }
        Ok(match (text("state"), lease_until) {
            (Some("processing"), lease) => {
                Claim::InFlight { retry_after: lease.map_or(1, |until| until - now).clamp(1, DELIVERY_LEASE_SECONDS) }
            }
            _ => Claim::Duplicate,
        })
    }

    /// Marks a claimed event done with its outcome. Only the holder of the claim can.
    pub async fn finish_claim(
        &self,
        key: Key,
        token: &str,
        outcome: &str,
        detail: &str,
    ) -> Result<Transition, StoreError> {
        self.update_if(
            key,
            "SET #state = :done, outcome = :outcome, detail = :detail REMOVE lease_until",
            "#state = :processing AND claim = :token",
            &[],
            vec![
                (":done", s("done")),
                (":processing", s("processing")),
                (":token", s(token)),
                (":outcome", s(outcome)),
                (":detail", s(detail)),
            ],
        )
        .await
    }

    /// Gives up a claim after a failure so that a redelivery is processed in full.
    pub async fn release_claim(&self, key: Key, token: &str) -> Result<(), StoreError> {
        let result = self
            .client
            .delete_item()
            .table_name(&self.name)
            .set_key(Some(key.into_item()))
            .condition_expression("#state = :processing AND claim = :token")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":processing", s("processing"))
            .expression_attribute_values(":token", s(token))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(err) if is_condition_failure(&err) => Ok(()),
            Err(err) => Err(self.aws_error("DeleteItem", err)),
        }
    }
}

/// A claimed event's work, done: what to answer with, and how the claim's record ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handled<T> {
    pub value: T,
    /// The record's `outcome` (`recorded`, `applied`, `ignored`, ...).
    pub outcome: &'static str,
    pub detail: String,
}

/// How running an outside event under its claim ended.
#[derive(Debug)]
pub enum Claimed<T> {
    /// This invocation did the work; the claim is finished.
    Done(Handled<T>),
    /// Processed before, to the end: answer as done.
    Duplicate,
    /// Another invocation holds it: ask the sender to come back in this many seconds.
    InFlight { retry_after: i64 },
    /// The claim could not be taken, or the work failed and the claim was given back, so the
    /// sender's retry does the work in full.
    Failed(StoreError),
}

impl Table {
    /// The whole lifecycle of an outside event (a GitHub delivery, a Stripe event): claim
    /// `key`, run `work`, then finish the claim with the work's outcome, or give the claim
    /// back when the work failed. A claim that cannot be marked finished is only logged:
    /// everything the work wrote is there, and the claim's lease ends by itself.
    pub async fn run_claimed<T, Work, Fut>(
        &self,
        key: Key,
        event: &str,
        now: i64,
        ttl_seconds: i64,
        work: Work,
    ) -> Claimed<T>
    where
        Work: FnOnce() -> Fut,
        Fut: Future<Output = Result<Handled<T>, StoreError>>,
    {
        let token = claim_token(&key.pk, now);
        match self.claim(key.clone(), event, &token, now, ttl_seconds).await {
            Ok(Claim::Claimed) => {}
            Ok(Claim::Duplicate) => return Claimed::Duplicate,
            Ok(Claim::InFlight { retry_after }) => return Claimed::InFlight { retry_after },
            Err(err) => return Claimed::Failed(err),
        }
        match work().await {
            Ok(handled) => {
                if let Err(err) = self.finish_claim(key.clone(), &token, handled.outcome, &handled.detail).await {
                    tracing::warn!(error = %err, key = %key.pk, "cannot mark the event done");
                }
                Claimed::Done(handled)
            }
            Err(err) => {
                if let Err(release) = self.release_claim(key.clone(), &token).await {
                    tracing::error!(error = %release, key = %key.pk, "cannot give the event's claim back");
                }
                Claimed::Failed(err)
            }
        }
    }
}
