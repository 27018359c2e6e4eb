//! Alerts, once per cause, listed newest first.

use super::*;

impl Table {
    /// Raises an alert for alert dispatch, once per cause.
    pub async fn record_alert(&self, alert: &Alert) -> Result<Put, StoreError> {
        self.put_if_absent(alert_item(alert)?).await
    }

    /// The newest alerts first.
    pub async fn recent_alerts(&self, limit: i32) -> Result<Vec<Alert>, StoreError> {
        self.newest("ALERTS", limit).await?.into_iter().map(|item| decode("alert", item)).collect()
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
