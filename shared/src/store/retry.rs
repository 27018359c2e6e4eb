//! Retries: unprocessed batch items and conflicting transactions, with jittered backoff.

use super::*;

pub(super) fn is_condition_failure<E: ProvideErrorMetadata, R>(err: &aws_sdk_dynamodb::error::SdkError<E, R>) -> bool {
    err.code() == Some("ConditionalCheckFailedException")
}

/// Exponential backoff with full jitter.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
    pub attempts: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { first: Duration::from_millis(50), max: Duration::from_secs(2), attempts: 8 }
    }
}

impl Backoff {
    /// How long to wait before attempt `attempt` (from 0): exponential, capped, jittered.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.first.saturating_mul(1 << attempt.min(16)).min(self.max);
        // Full jitter from a per-process random seed; no RNG crate needed for this.
        let random = {
            use std::hash::{BuildHasher, RandomState};
            RandomState::new().hash_one(attempt)
        };
        ceiling.mul_f64((random % 1000) as f64 / 1000.0)
    }
}

/// Sends `requests`, then whatever `send` reports as unprocessed, until nothing is left or
/// the attempts run out.
pub async fn write_until_processed<F, Fut>(
    mut requests: Vec<WriteRequest>,
    backoff: Backoff,
    mut send: F,
) -> Result<(), StoreError>
where
    F: FnMut(Vec<WriteRequest>) -> Fut,
    Fut: Future<Output = Result<Vec<WriteRequest>, StoreError>>,
{
    for attempt in 0..backoff.attempts {
        if attempt > 0 {
            tokio::time::sleep(backoff.delay(attempt)).await;
        }
        requests = send(requests).await?;
        if requests.is_empty() {
            return Ok(());
        }
    }
    Err(StoreError::Unprocessed { remaining: requests.len(), attempts: backoff.attempts })
}

/// Sends a conditional transaction until it applies, a condition fails, or conflicts with
/// other transactions outlast the attempts.
pub async fn retry_conflicts<F, Fut>(backoff: Backoff, mut send: F) -> Result<Transition, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Result<(), Cancelled>, StoreError>>,
{
    let mut last = Cancelled(Vec::new());
    for attempt in 0..backoff.attempts {
        if attempt > 0 {
            tokio::time::sleep(backoff.delay(attempt)).await;
        }
        match send().await? {
            Ok(()) => return Ok(Transition::Applied),
            Err(cancelled) if cancelled.condition_failed() => return Ok(Transition::Rejected),
            Err(cancelled) if cancelled.conflict_only() => last = cancelled,
            Err(cancelled) => return Err(StoreError::Cancelled { reasons: cancelled.0 }),
        }
    }
    Err(StoreError::Cancelled { reasons: last.0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(id: usize) -> WriteRequest {
        let item = HashMap::from([("pk".to_string(), s(id.to_string()))]);
        WriteRequest::builder().put_request(PutRequest::builder().set_item(Some(item)).build().unwrap()).build()
    }

    fn fast() -> Backoff {
        Backoff { first: Duration::from_millis(1), max: Duration::from_millis(2), attempts: 4 }
    }

    #[tokio::test]
    async fn unprocessed_items_are_sent_again_until_written() {
        let mut sent = Vec::new();
        let result = write_until_processed((0..5).map(request).collect(), fast(), |batch| {
            sent.push(batch.len());
            // The service takes two items a call and hands back the rest.
            let left = batch.into_iter().skip(2).collect::<Vec<_>>();
            async move { Ok(left) }
        })
        .await;
        assert!(result.is_ok());
        assert_eq!(sent, vec![5, 3, 1]);
    }

    #[tokio::test]
    async fn gives_up_with_a_count_of_what_is_left() {
        let result =
            write_until_processed((0..3).map(request).collect(), fast(), |batch| async move { Ok(batch) }).await;
        assert!(matches!(result, Err(StoreError::Unprocessed { remaining: 3, attempts: 4 })), "{result:?}");
    }

    fn cancelled(code: &str) -> Cancelled {
        Cancelled(vec![None, Some(code.to_owned())])
    }

    #[tokio::test]
    async fn conflicting_transactions_are_sent_again_and_failed_conditions_are_not() {
        let mut sent = 0;
        let result = retry_conflicts(fast(), || {
            sent += 1;
            let answer = if sent < 3 { Err(cancelled("TransactionConflict")) } else { Ok(()) };
            async move { Ok(answer) }
        })
        .await;
        assert_eq!((result.ok(), sent), (Some(Transition::Applied), 3));

        let mut sent = 0;
        let result = retry_conflicts(fast(), || {
            sent += 1;
            async { Ok(Err(cancelled("ConditionalCheckFailed"))) }
        })
        .await;
        assert_eq!((result.ok(), sent), (Some(Transition::Rejected), 1), "a failed condition is final");

        let result = retry_conflicts(fast(), || async { Ok(Err(cancelled("TransactionConflict"))) }).await;
        assert!(matches!(result, Err(StoreError::Cancelled { .. })), "gives up after the attempts: {result:?}");
        let result = retry_conflicts(fast(), || async { Ok(Err(cancelled("ValidationError"))) }).await;
        assert!(matches!(result, Err(StoreError::Cancelled { .. })), "{result:?}");
    }

    #[test]
    fn backoff_stays_under_its_ceiling() {
        let backoff = Backoff::default();
        for attempt in 0..20 {
            assert!(backoff.delay(attempt) <= backoff.max);
        }
    }

    #[test]
    fn time_keys_sort_as_text() {
        assert!(time_key(999) < time_key(1000));
        assert_eq!(time_key(-5), time_key(0));
    }
}
