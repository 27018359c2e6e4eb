//! Conditional updates built up in parts, applied alone or inside a transaction.

use super::*;

/// A state machine's state as the table stores it (`state`): transitions take the enum, so
/// a state that does not exist is a compile error, not a condition that never holds.
pub trait StoredState: Copy {
    fn as_str(self) -> &'static str;
}

/// The longest reason a state change keeps (in `reason` and in its history entry): the
/// records of long-running processes are read by every poll and must stay small whatever
/// the reason names.
pub const MAX_REASON_CHARS: usize = 1000;

impl StoredState for crate::domain::DeploymentState {
    fn as_str(self) -> &'static str {
        crate::domain::DeploymentState::as_str(self)
    }
}

/// A conditional update, built up in parts: as one UpdateItem ([`Table::apply`]) or as one
/// item of a transaction. `#state` always names the `state` attribute.
#[derive(Debug, Clone)]
pub struct Conditional {
    pub(super) key: Key,
    pub(super) set: Vec<String>,
    pub(super) remove: Vec<String>,
    pub(super) condition: String,
    pub(super) names: Vec<(String, String)>,
    pub(super) values: Vec<(String, AttributeValue)>,
}

impl Conditional {
    /// Moves the item from state `from` to `to` with `reason`, appending the change to its
    /// `history`, only if it is in state `from` now.
    pub fn transition<S: StoredState>(key: Key, from: S, to: S, reason: &str, at: i64) -> Self {
        let (from, to) = (from.as_str(), to.as_str());
        // Kept in `reason` and in every history entry: whatever built it, bounded.
        let reason = crate::domain::text::cut(reason, MAX_REASON_CHARS);
        let reason = reason.as_str();
        let entry = AttributeValue::M(HashMap::from([
            ("from".into(), s(from)),
            ("to".into(), s(to)),
            ("reason".into(), s(reason)),
            ("at".into(), n(at)),
        ]));
        Self {
            key,
            set: vec![
                "#state = :to".into(),
                "reason = :reason".into(),
                "updated_at = :at".into(),
                "history = list_append(if_not_exists(history, :empty), :entry)".into(),
            ],
            remove: Vec::new(),
            condition: "#state = :from".into(),
            names: Vec::new(),
            values: vec![
                (":from".into(), s(from)),
                (":to".into(), s(to)),
                (":reason".into(), s(reason)),
                (":at".into(), n(at)),
                (":empty".into(), AttributeValue::L(Vec::new())),
                (":entry".into(), AttributeValue::L(vec![entry])),
            ],
        }
    }

    /// Also sets attribute `field` to `value`.
    pub fn set(mut self, field: &str, value: AttributeValue) -> Self {
        self.set.push(format!("#f_{field} = :f_{field}"));
        self.names.push((format!("#f_{field}"), field.to_owned()));
        self.values.push((format!(":f_{field}"), value));
        self
    }

    /// Also removes attribute `field`.
    pub fn remove(mut self, field: &str) -> Self {
        self.remove.push(format!("#f_{field}"));
        self.names.push((format!("#f_{field}"), field.to_owned()));
        self
    }

    /// Only if `condition` holds too; its placeholders are `values`.
    pub fn when(mut self, condition: &str, values: Vec<(&str, AttributeValue)>) -> Self {
        self.condition = format!("({}) AND ({condition})", self.condition);
        self.values.extend(values.into_iter().map(|(p, v)| (p.to_owned(), v)));
        self
    }

    pub(super) fn expression(set: &[String], remove: &[String]) -> String {
        let mut clauses = Vec::new();
        if !set.is_empty() {
            clauses.push(format!("SET {}", set.join(", ")));
        }
        if !remove.is_empty() {
            clauses.push(format!("REMOVE {}", remove.join(", ")));
        }
        clauses.join(" ")
    }
}
