//! Delivery: each due alert to each of its channels, once (a claim per channel), then the
//! alert settled, or kept in the outbox until a channel can take it.

use super::*;

impl AlertDispatch {
    /// Sends every due alert in the outbox; answers how many it finished. One alert that
    /// cannot be read or sent does not hold up the others.
    pub async fn deliver_outbox(&self, clock: Clock) -> Result<usize, DispatchFailure> {
        let mut settled = 0;
        let mut failures = Vec::new();
        for entry in self.table.outbox().await?.into_iter().filter(|e| e.due_at <= clock.at()) {
            if clock.past(DELIVERY_BUDGET) {
                tracing::warn!("alerts are left in the outbox for the next run: this one is out of time");
                break;
            }
            let alert = match self.table.alert(&entry.source, &entry.id).await {
                Ok(Some(alert)) => alert,
                Ok(None) => {
                    tracing::warn!(source = %entry.source, id = %entry.id, "an outbox entry whose alert is gone: dropped");
                    if let Err(err) = self.table.drop_outbox_entry(&entry.source, &entry.id).await {
                        failures.push(format!("alert {}/{}: {err}", entry.source, entry.id));
                    }
                    continue;
                }
                Err(err) => {
                    failures.push(format!("alert {}/{}: {err}", entry.source, entry.id));
                    continue;
                }
            };
            match self.deliver(&alert, clock).await {
                Ok(true) => settled += 1,
                Ok(false) => {}
                Err(err) => failures.push(format!("alert {}/{}: {err}", entry.source, entry.id)),
            }
        }
        if failures.is_empty() { Ok(settled) } else { Err(DispatchFailure::Parts(failures)) }
    }

    /// Sends `alert` to each of its channels that does not have it yet and may be tried now;
    /// answers whether the alert is finished (every channel has it or refused it for good).
    pub async fn deliver(&self, alert: &Alert, clock: Clock) -> Result<bool, StoreError> {
        let routed = dispatch::channels_for(alert, &self.config.channels, &self.config.routes);
        if routed.len() < alert.channels.len() {
            tracing::warn!(alert = %alert.id, chosen = ?alert.channels, "some of the alert's channels are no longer configured");
        }
        if routed.is_empty() {
            // Silenced by a route on purpose: done. Chosen channels that are all gone, or no
            // channel at all: nobody was told, so it is kept as undeliverable.
            let state = if self.config.channels.is_empty() || !alert.channels.is_empty() {
                tracing::error!(alert = %alert.id, "no configured channel to send the alert to");
                DeliveryState::Undeliverable
            } else {
                DeliveryState::Delivered
            };
            self.table.settle_alert(alert, state, clock.at()).await?;
            return Ok(true);
        }
        let before = self.table.deliveries(alert).await?;
        for name in &routed {
            let record = before.iter().find(|r| r.channel == *name);
            if !may_try(record, clock.at()) {
                continue;
            }
            let now = clock.at();
            let token = claim_token(&format!("{}/{}", alert.id, name), now);
            if self.table.claim_delivery(alert, name, &token, now, DELIVERY_LEASE_SECONDS).await?
                == Transition::Rejected
            {
                continue;
            }
            let Some(channel) = self.config.channels.iter().find(|c| c.name == *name) else { continue };
            let delivery = format!("{}/{}/{}", alert.source.as_str(), alert.id, name);
            let mut answer = self.channels.send(channel, alert, &delivery).await;
            // A short wait the channel asks for (Slack's 429 Retry-After), or a 5xx, is
            // waited out here a couple of times; longer ones go to a later run. No answer at
            // all is not tried again here: the channel may have the message.
            for pause in [1, 2] {
                let wait = match &answer {
                    Answer::Later { after: Some(after), .. } if *after <= channels::WAIT_IN_RUN => *after,
                    Answer::Later { after: None, .. } => pause,
                    _ => break,
                };
                if !clock.may_wait || clock.past(WAITING_BUDGET) {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(wait as u64)).await;
                answer = self.channels.send(channel, alert, &delivery).await;
            }
            let attempts = record.map_or(0, |r| r.attempts) + 1;
            let now = clock.at();
            let tried = match answer {
                Answer::Delivered => Tried::Delivered,
                Answer::Later { after, reason } => {
                    Tried::Later { retry_at: dispatch::next_try(now, attempts, after), reason }
                }
                Answer::NoAnswer(reason) => Tried::Later { retry_at: dispatch::next_try(now, attempts, None), reason },
                Answer::Refused(reason) => Tried::Refused(reason),
            };
            match &tried {
                Tried::Delivered => tracing::info!(alert = %alert.id, channel = %name, "alert delivered"),
                Tried::Later { retry_at, reason } => {
                    tracing::warn!(alert = %alert.id, channel = %name, retry_at, %reason, "the channel cannot take the alert now")
                }
                Tried::Refused(reason) => {
                    tracing::error!(alert = %alert.id, channel = %name, %reason, "the channel refused the alert; fix the channel")
                }
            }
            self.table.finish_delivery(alert, name, &token, &tried, now).await?;
        }
        let after = self.table.deliveries(alert).await?;
        match outcome(&routed, &after, clock.at()) {
            Outcome::Settled(state) => {
                self.table.settle_alert(alert, state, clock.at()).await?;
                Ok(true)
            }
            Outcome::WaitUntil(due) => {
                self.table.postpone_alert(alert, due).await?;
                Ok(false)
            }
            Outcome::InFlight => Ok(false),
        }
    }
}

/// Whether a channel may be tried now: never tried, waiting and due, or held by an
/// invocation whose lease ran out.
fn may_try(record: Option<&DeliveryRecord>, now: i64) -> bool {
    match record {
        None => true,
        Some(record) => match record.state {
            ChannelDelivery::Delivered | ChannelDelivery::Refused | ChannelDelivery::Unknown => false,
            ChannelDelivery::Waiting => record.retry_at.is_none_or(|at| at <= now),
            ChannelDelivery::Sending => record.lease_until.is_none_or(|until| until < now),
        },
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Settled(DeliveryState),
    /// Some channel waits: the outbox entry is due again then.
    WaitUntil(i64),
    /// Another invocation is sending to some channel: it settles the alert.
    InFlight,
}

/// Where an alert stands once this invocation tried its channels.
fn outcome(routed: &[&str], records: &[DeliveryRecord], now: i64) -> Outcome {
    let state = |name: &str| records.iter().find(|r| r.channel == name);
    let mut refused = false;
    let mut due: Option<i64> = None;
    let mut in_flight = false;
    for name in routed {
        match state(name) {
            Some(r) if r.state == ChannelDelivery::Delivered => {}
            Some(r) if r.state == ChannelDelivery::Refused => refused = true,
            Some(r) if r.state == ChannelDelivery::Waiting => {
                let at = r.retry_at.unwrap_or(now);
                due = Some(due.map_or(at, |d: i64| d.min(at)));
            }
            Some(r) if r.state == ChannelDelivery::Sending => {
                in_flight = true;
                let at = r.lease_until.unwrap_or(now);
                due = Some(due.map_or(at, |d: i64| d.min(at)));
            }
            // Not tried (this invocation lost the claim race and the winner has not written).
            _ => in_flight = true,
        }
    }
    match (in_flight, due) {
        (false, None) => {
            Outcome::Settled(if refused { DeliveryState::Undeliverable } else { DeliveryState::Delivered })
        }
        (false, Some(due)) => Outcome::WaitUntil(due),
        (true, _) => Outcome::InFlight,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(
        channel: &str,
        state: ChannelDelivery,
        retry_at: Option<i64>,
        lease_until: Option<i64>,
    ) -> DeliveryRecord {
        DeliveryRecord { channel: channel.into(), state, attempts: 1, retry_at, lease_until, error: None }
    }

    #[test]
    fn an_alert_is_finished_only_when_every_channel_has_it_or_refused_it() {
        let delivered = record("team", ChannelDelivery::Delivered, None, None);
        let refused = record("ops", ChannelDelivery::Refused, None, None);
        let waiting = record("pager", ChannelDelivery::Waiting, Some(130), None);
        let sending = record("pager", ChannelDelivery::Sending, None, Some(160));
        assert_eq!(
            outcome(&["team"], std::slice::from_ref(&delivered), 100),
            Outcome::Settled(DeliveryState::Delivered)
        );
        assert_eq!(
            outcome(&["team", "ops"], &[delivered.clone(), refused.clone()], 100),
            Outcome::Settled(DeliveryState::Undeliverable)
        );
        assert_eq!(outcome(&["team", "pager"], &[delivered.clone(), waiting], 100), Outcome::WaitUntil(130));
        assert_eq!(outcome(&["team", "pager"], &[delivered.clone(), sending], 100), Outcome::InFlight);
        assert_eq!(outcome(&["team", "pager"], &[delivered], 100), Outcome::InFlight, "not tried yet");
    }

    #[test]
    fn a_channel_is_tried_again_only_when_due_or_abandoned() {
        assert!(may_try(None, 100));
        assert!(!may_try(Some(&record("t", ChannelDelivery::Delivered, None, None)), 100));
        assert!(!may_try(Some(&record("t", ChannelDelivery::Refused, None, None)), 100));
        assert!(!may_try(Some(&record("t", ChannelDelivery::Waiting, Some(130), None)), 100));
        assert!(may_try(Some(&record("t", ChannelDelivery::Waiting, Some(130), None)), 130));
        assert!(!may_try(Some(&record("t", ChannelDelivery::Sending, None, Some(160))), 100));
        assert!(may_try(Some(&record("t", ChannelDelivery::Sending, None, Some(160))), 161), "its holder died");
    }
}
