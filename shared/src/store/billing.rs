//! Customers' subscriptions from Stripe's events, ordered by each event's own clock.

use super::*;
use crate::domain::stripe::SubscriptionState;

/// Whether a change was applied or was older than what is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ordered {
    Applied,
    /// An older event: it only filled fields that were still unknown.
    Stale,
}

impl Table {
    /// Applies a subscription change, in two conditional updates of the subscription's item.
    ///
    /// The facts every event carries (period end, items, price, cancel-at-period-end, the
    /// last event) are ordered by the event's `created`: a later or same-second event sets
    /// them, an older one only fills those still unknown (e.g. the price from a late
    /// `customer.subscription.created`).
    ///
    /// The status, which only subscription objects carry, has its own clock
    /// (`status_created`), so an invoice's time never makes a status change look old. Two
    /// statuses of the same second apply in lifecycle order
    /// ([`crate::domain::stripe::lifecycle_rank`]); a terminal status (`canceled`,
    /// `incomplete_expired`) applies whatever its time and is never left.
    pub async fn apply_subscription_change(
        &self,
        change: &SubscriptionChange,
        now: i64,
    ) -> Result<Ordered, StoreError> {
        let key = Key::subscription(&change.customer, &change.subscription);
        let mut fields: Vec<(&str, AttributeValue)> = vec![
            ("customer", s(&change.customer)),
            ("subscription", s(&change.subscription)),
            ("last_event_id", s(&change.event_id)),
            ("last_event_type", s(&change.event_type)),
        ];
        if let Some(price) = &change.price {
            fields.push(("price", s(price)));
        }
        if let Some(product) = &change.product {
            fields.push(("product", s(product)));
        }
        if let Some(items) = change.items.as_ref().filter(|items| !items.is_empty()) {
            let items = serde_dynamo::to_attribute_value(items)
                .map_err(|source| StoreError::Encode { kind: "subscription items", source })?;
            fields.push(("items", items));
        }
        if let Some(end) = change.current_period_end {
            fields.push(("current_period_end", n(end)));
        }
        if let Some(cancel) = change.cancel_at_period_end {
            fields.push(("cancel_at_period_end", AttributeValue::Bool(cancel)));
        }
        let facts = self.ordered_facts(&key, &fields, change.event_created, now).await?;
        let Some(status) = &change.status else { return Ok(facts) };
        self.ordered_status(&key, status, change.rank(), change.event_created).await
    }

    /// Sets `fields` when no later event set them; otherwise fills those still unknown.
    async fn ordered_facts(
        &self,
        key: &Key,
        fields: &[(&str, AttributeValue)],
        created: i64,
        now: i64,
    ) -> Result<Ordered, StoreError> {
        let mut names = HashMap::from([("#last_event_created".to_string(), "last_event_created".to_string())]);
        let mut values = HashMap::from([(":created".to_string(), n(created)), (":now".to_string(), n(now))]);
        let mut set = vec!["#last_event_created = :created".to_string(), "updated_at = :now".to_string()];
        let mut fill = vec![
            "#last_event_created = if_not_exists(#last_event_created, :created)".to_string(),
            "updated_at = :now".to_string(),
        ];
        for (field, value) in fields {
            let (name, placeholder) = (format!("#{field}"), format!(":{field}"));
            set.push(format!("{name} = {placeholder}"));
            fill.push(format!("{name} = if_not_exists({name}, {placeholder})"));
            names.insert(name, (*field).to_string());
            values.insert(placeholder, value.clone());
        }
        let result = self
            .client
            .update_item()
            .table_name(&self.name)
            .set_key(Some(key.clone().into_item()))
            .update_expression(format!("SET {}", set.join(", ")))
            .condition_expression("attribute_not_exists(pk) OR #last_event_created <= :created")
            .set_expression_attribute_names(Some(names.clone()))
            .set_expression_attribute_values(Some(values.clone()))
            .send()
            .await;
        match result {
            Ok(_) => return Ok(Ordered::Applied),
            Err(err) if is_condition_failure(&err) => {}
            Err(err) => return Err(self.aws_error("UpdateItem", err)),
        }
        self.client
            .update_item()
            .table_name(&self.name)
            .set_key(Some(key.clone().into_item()))
            .update_expression(format!("SET {}", fill.join(", ")))
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .send()
            .await
            .map_err(|err| self.aws_error("UpdateItem", err))?;
        Ok(Ordered::Stale)
    }

    /// Sets the status when it moves the subscription's lifecycle on (see
    /// [`Table::apply_subscription_change`]).
    async fn ordered_status(&self, key: &Key, status: &str, rank: i64, created: i64) -> Result<Ordered, StoreError> {
        let not_terminal = "(#status <> :canceled AND #status <> :expired)";
        let condition = if crate::domain::stripe::is_terminal(status) {
            format!("attribute_not_exists(#status) OR {not_terminal}")
        } else {
            format!(
                "attribute_not_exists(#status) OR ({not_terminal} AND (attribute_not_exists(status_created) OR status_created < :created OR (status_created = :created AND status_rank <= :rank)))"
            )
        };
        let values = HashMap::from([
            (":status".to_string(), s(status)),
            (":rank".to_string(), n(rank)),
            (":created".to_string(), n(created)),
            (":canceled".to_string(), s("canceled")),
            (":expired".to_string(), s("incomplete_expired")),
        ]);
        let result = self
            .client
            .update_item()
            .table_name(&self.name)
            .set_key(Some(key.clone().into_item()))
            .update_expression("SET #status = :status, status_rank = :rank, status_created = :created")
            .condition_expression(condition)
            .expression_attribute_names("#status", "status")
            .set_expression_attribute_values(Some(values))
            .send()
            .await;
        match result {
            Ok(_) => Ok(Ordered::Applied),
            Err(err) if is_condition_failure(&err) => Ok(Ordered::Stale),
            Err(err) => Err(self.aws_error("UpdateItem", err)),
        }
    }

    /// Every subscription the ledger knows for `customer`.
    pub async fn customer_subscriptions(&self, customer: &str) -> Result<Vec<SubscriptionState>, StoreError> {
        let items = self.partition(&format!("CUSTOMER#{customer}"), "SUBSCRIPTION#", None, false).await?;
        items.into_iter().map(|item| decode("subscription", item)).collect()
    }
}
