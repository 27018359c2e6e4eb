//! The DynamoDB adapter: Conveyor's one table, its keys, and the only code that talks to it.
//!
//! # Keys (single-table design)
//!
//! | item        | `pk`                        | `sk`                     | `gsi1pk`              | `gsi1sk`                         | `ttl` |
//! |-------------|-----------------------------|--------------------------|-----------------------|----------------------------------|-------|
//! | delivery    | `DELIVERY#<hook id>#<guid>` | `DELIVERY`               |                       |                                  | 7 days|
//! | Stripe event| `STRIPE_EVENT#<event id>`   | `EVENT`                  |                       |                                  | 30 days|
//! | commit      | `REPO#<owner/name>`         | `COMMIT#<sha>`           |                       |                                  |       |
//! | push        | `REPO#<owner/name>`         | `PUSH#<delivery guid>`   | `PUSHES`              | `<received at>#<owner/name>`     |       |
//! | build       | `REPO#<owner/name>`         | `BUILD#<sha>#<source>`   | `BUILDS`              | `<completed at>#<owner/name>#<sha>` |    |
//! | branch head | `REPO#<owner/name>`         | `HEAD#<branch>`          |                       |                                  |       |
//! | CI run      | `REPO#<owner/name>`         | `RUN#<sha>#<run key>`    |                       |                                  | 30 days|
//! | deployment  | `ENV#<environment>`         | `DEPLOYMENT#<owner/name>#<sha>` | `DEPLOYMENTS#<env>` | `<created at>#<sha>`      |       |
//! | subscription| `CUSTOMER#<customer id>`    | `SUBSCRIPTION#<sub id>`  |                       |                                  |       |
//! | alert       | `ALERT#<source>#<id>`       | `ALERT`                  | `ALERTS`              | `<created at>#<source>#<id>`     |       |
//! | delivery of an alert | `ALERT#<source>#<id>` | `DELIVERY#<channel>` |                |                                  |       |
//! | undelivered alert | `OUTBOX`              | `ALERT#<source>#<id>`    |                       |                                  |       |
//! | check state | `CHECKS`                    | `STATE#<check>`          |                       |                                  |       |
//! | incident    | `CHECKS`                    | `INCIDENT#<check>#<down since>` |                |                                  |       |
//! | deploy lock | `ENV#<environment>`         | `LOCK`                   |                       |                                  |       |
//! | tick error  | `ENV#<environment>`         | `TICK`                   |                       |                                  | 1 day |
//! | target      | `ENV#<environment>`         | `TARGET#<instance id>`   |                       |                                  |       |
//! | instance    | `ENV#<environment>`         | `INSTANCE#<instance id>` |                       |                                  |       |
//! | agent       | `ENV#<environment>`         | `AGENT#<instance id>`    |                       |                                  |       |
//! | last good   | `ENV#<environment>`         | `RELEASE`                |                       |                                  |       |
//! | token       | `TOKEN#<sha256 of token>`   | `TOKEN`                  | `TOKENS`              | `<created at>#<token id>`        | expiry|
//! | image map   | `PROVIDER#<name>`           | `IMAGES`                 |                       |                                  |       |
//! | image change| `PROVIDER#<name>`           | `HISTORY#<version>`      |                       |                                  |       |
//! | applied run | `PROVIDER#<name>`           | `RUN#<packer run uuid>`  |                       |                                  |       |
//!
//! Times in sort keys are zero-padded Unix seconds, so they sort as text. `ttl` is Unix
//! seconds; DynamoDB deletes expired items lazily, so reads treat an expired item as absent.
//! A deployment's id is `<owner/name>#<sha>` with the repository in lower case
//! ([`DeploymentRecord::id`]): two repositories' builds of one sha are two deployments.
//! The rollout's items (lock, targets, instances) are described in [`rollout`].
//!
//! # Rules
//! - Creating an item from an outside event is a conditional put on its natural key; a
//!   duplicate is reported as [`Put::AlreadyExists`], never as an error.
//! - A state change is a conditional update on the previous state ([`Table::transition`]).
//! - Batches retry `UnprocessedItems` with backoff until written or out of attempts.

mod agents;
mod alerts;
mod billing;
mod checks;
mod claims;
mod conditional;
mod images;
mod ledger;
mod publishes;
mod retry;
mod rollout;
mod runs;
mod table;
mod targets;
mod tokens;
mod waves;

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, PutRequest, ScalarAttributeType, StreamSpecification, StreamViewType, TimeToLiveSpecification,
    TransactWriteItem, WriteRequest,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::domain::alert::Alert;
use crate::domain::stripe::SubscriptionChange;
use crate::domain::{BranchHead, BuildRecord, CommitRecord, DeploymentRecord, DeploymentState, PushRecord};
use crate::token::TokenGrant;

pub use alerts::{ChannelDelivery, DeliveryRecord, OutboxEntry, Tried};
pub use billing::Ordered;
pub use checks::{IncidentRecord, RunWritten};
pub use claims::{Claim, Claimed, Handled, claim_token};
pub use conditional::{Conditional, MAX_REASON_CHARS, StoredState};
pub use images::ImageWrite;
use retry::is_condition_failure;
pub use retry::{Backoff, retry_conflicts, write_until_processed};
pub use rollout::{DeploymentEnd, DeploymentStart};
pub use targets::Counter;

pub type Item = HashMap<String, AttributeValue>;

/// The name of the listing index.
pub const GSI1: &str = "gsi1";
/// How long a delivery id is remembered (GitHub redelivers for up to 3 days).
pub const DELIVERY_TTL_SECONDS: i64 = 7 * 24 * 3600;
/// How long a Stripe event id is remembered (Stripe retries for up to 3 days).
pub const STRIPE_EVENT_TTL_SECONDS: i64 = 30 * 24 * 3600;
/// How long a claim is held before another copy may take it over (a crashed run): longer
/// than the webhook functions' timeouts (10 s in the template), so a live invocation never
/// loses its claim, and short, since a retry meanwhile is answered 409.
pub const DELIVERY_LEASE_SECONDS: i64 = 20;
/// DynamoDB's limit on one BatchWriteItem.
pub const BATCH_SIZE: usize = 25;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("DynamoDB {operation} on table {table} failed: {message}")]
    Aws { operation: &'static str, table: String, message: String },
    #[error("cannot encode a {kind} item: {source}")]
    Encode { kind: &'static str, source: serde_dynamo::Error },
    #[error("cannot decode a {kind} item: {source}")]
    Decode { kind: &'static str, source: serde_dynamo::Error },
    #[error("batch write left {remaining} items unprocessed after {attempts} attempts")]
    Unprocessed { remaining: usize, attempts: u32 },
    #[error("table {0} does not exist; deploy the stack (make deploy) or run `conveyor dev` locally")]
    NoTable(String),
    #[error("a DynamoDB transaction was cancelled; the reasons, item by item: {reasons:?}")]
    Cancelled { reasons: Vec<Option<String>> },
}

/// The result of a conditional put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    Created,
    /// The condition failed: the item (or a newer claim on it) is already there.
    AlreadyExists,
}

/// The result of a conditional state change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Applied,
    /// The item was not in the expected state (someone else moved it first) or is missing.
    Rejected,
}

/// Why a transaction was cancelled: each item's reason code, in the order of the items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cancelled(pub Vec<Option<String>>);

impl Cancelled {
    pub fn has(&self, code: &str) -> bool {
        self.0.iter().flatten().any(|c| c == code)
    }

    /// A condition failed: the transaction must not be sent again as it is.
    pub fn condition_failed(&self) -> bool {
        self.has("ConditionalCheckFailed")
    }

    /// Only other transactions on the same items were in the way: sending it again may pass.
    pub fn conflict_only(&self) -> bool {
        self.has("TransactionConflict") && !self.condition_failed()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub pk: String,
    pub sk: String,
}

impl Key {
    pub fn stripe_event(id: &str) -> Self {
        Self { pk: format!("STRIPE_EVENT#{id}"), sk: "EVENT".into() }
    }
    pub fn delivery(hook_id: &str, guid: &str) -> Self {
        Self { pk: format!("DELIVERY#{hook_id}#{guid}"), sk: "DELIVERY".into() }
    }
    pub fn commit(repository: &str, sha: &str) -> Self {
        Self { pk: format!("REPO#{repository}"), sk: format!("COMMIT#{sha}") }
    }
    pub fn push(repository: &str, delivery: &str) -> Self {
        Self { pk: format!("REPO#{repository}"), sk: format!("PUSH#{delivery}") }
    }
    pub fn build(repository: &str, sha: &str, source: &str) -> Self {
        Self { pk: format!("REPO#{repository}"), sk: format!("BUILD#{sha}#{source}") }
    }
    pub fn subscription(customer: &str, subscription: &str) -> Self {
        Self { pk: format!("CUSTOMER#{customer}"), sk: format!("SUBSCRIPTION#{subscription}") }
    }
    pub fn target(environment: &str, instance: &str) -> Self {
        Self { pk: format!("ENV#{environment}"), sk: format!("TARGET#{instance}") }
    }
    pub fn instance(environment: &str, instance: &str) -> Self {
        Self { pk: format!("ENV#{environment}"), sk: format!("INSTANCE#{instance}") }
    }
    pub fn last_release(environment: &str) -> Self {
        Self { pk: format!("ENV#{environment}"), sk: "RELEASE".into() }
    }
    pub fn lock(environment: &str) -> Self {
        Self { pk: format!("ENV#{environment}"), sk: "LOCK".into() }
    }
    pub fn token(hash: &str) -> Self {
        Self { pk: format!("TOKEN#{hash}"), sk: "TOKEN".into() }
    }
    pub fn images(provider: &str) -> Self {
        Self { pk: format!("PROVIDER#{provider}"), sk: "IMAGES".into() }
    }
    pub fn image_history(provider: &str, version: i64) -> Self {
        Self { pk: format!("PROVIDER#{provider}"), sk: format!("HISTORY#{}", time_key(version)) }
    }
    pub fn applied_run(provider: &str, run: &str) -> Self {
        Self { pk: format!("PROVIDER#{provider}"), sk: format!("RUN#{run}") }
    }
    pub fn alert(source: &str, id: &str) -> Self {
        Self { pk: format!("ALERT#{source}#{id}"), sk: "ALERT".into() }
    }
    /// A deployment by its id ([`DeploymentRecord::id`]).
    pub fn deployment(environment: &str, id: &str) -> Self {
        Self { pk: format!("ENV#{environment}"), sk: format!("DEPLOYMENT#{id}") }
    }
    pub fn branch_head(repository: &str, branch: &str) -> Self {
        Self { pk: format!("REPO#{repository}"), sk: format!("HEAD#{branch}") }
    }
    pub fn tick_error(environment: &str) -> Self {
        Self { pk: format!("ENV#{environment}"), sk: "TICK".into() }
    }

    fn into_item(self) -> Item {
        HashMap::from([("pk".into(), s(self.pk)), ("sk".into(), s(self.sk))])
    }
}

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn n(value: i64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

/// A string attribute, for fields set through [`Conditional::set`].
pub fn text(value: &str) -> AttributeValue {
    s(value)
}

/// A number attribute, for fields set through [`Conditional::set`].
pub fn number(value: i64) -> AttributeValue {
    n(value)
}

/// A sort key segment for a time: zero-padded so text order is time order.
fn time_key(unix: i64) -> String {
    format!("{:012}", unix.max(0))
}

fn encode<T: Serialize>(kind: &'static str, value: &T, key: Key) -> Result<Item, StoreError> {
    let mut item: Item = serde_dynamo::to_item(value).map_err(|source| StoreError::Encode { kind, source })?;
    item.extend(key.into_item());
    Ok(item)
}

fn decode<T: DeserializeOwned>(kind: &'static str, item: Item) -> Result<T, StoreError> {
    serde_dynamo::from_item(item).map_err(|source| StoreError::Decode { kind, source })
}

/// The table, with the operations Conveyor performs on it.
#[derive(Clone, Debug)]
pub struct Table {
    client: Client,
    name: String,
}

impl Table {
    pub fn new(client: Client, name: impl Into<String>) -> Self {
        Self { client, name: name.into() }
    }

    /// The table `name`, reached with `sdk`'s region, credentials and endpoint: how the
    /// functions and the CLI build it, without depending on the DynamoDB SDK themselves.
    pub fn from_sdk(sdk: &aws_config::SdkConfig, name: impl Into<String>) -> Self {
        Self::new(Client::new(sdk), name)
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}
