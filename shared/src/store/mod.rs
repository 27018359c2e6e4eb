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
mod rollout;
mod runs;

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

use crate::domain::packer::{Change, ImageMap};
use crate::domain::stripe::{AlertRecord, SubscriptionChange};
use crate::domain::{BranchHead, BuildRecord, CommitRecord, DeploymentRecord, DeploymentState, PushRecord};
use crate::token::TokenGrant;

pub use agents::{Enrollment, EnrollmentProof, InstanceRecord};
pub use rollout::{Counter, DeploymentEnd, DeploymentStart, Lock, LockPhase};

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

    pub fn name(&self) -> &str {
        &self.name
    }

    fn aws_error<
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    >(
        &self,
        operation: &'static str,
        err: aws_sdk_dynamodb::error::SdkError<E, R>,
    ) -> StoreError {
        if err.code() == Some("ResourceNotFoundException") {
            return StoreError::NoTable(self.name.clone());
        }
        StoreError::Aws { operation, table: self.name.clone(), message: DisplayErrorContext(err).to_string() }
    }

    /// Sends one transaction. A cancelled one answers each item's cancellation reason code
    /// (`None` for an item that was fine), so the caller can tell which condition failed.
    async fn transact(&self, items: Vec<TransactWriteItem>) -> Result<Result<(), Cancelled>, StoreError> {
        use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
        // A token per call: if the SDK sends the same call again after a lost answer, DynamoDB
        // answers the first outcome instead of judging the conditions a second time.
        let token = claim_token("transaction", 0);
        let err = match self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .client_request_token(token)
            .send()
            .await
        {
            Ok(_) => return Ok(Ok(())),
            Err(err) => err,
        };
        if let Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) = err.as_service_error() {
            return Ok(Err(Cancelled(
                cancelled.cancellation_reasons().iter().map(|r| r.code().map(str::to_owned)).collect(),
            )));
        }
        Err(self.aws_error("TransactWriteItems", err))
    }

    /// Puts `item` unless an item with its key exists.
    pub async fn put_if_absent(&self, item: Item) -> Result<Put, StoreError> {
        self.put_if(item, "attribute_not_exists(pk)", HashMap::new(), HashMap::new()).await
    }

    /// Puts `item` when `condition` holds for the item currently stored under its key.
    pub async fn put_if(
        &self,
        item: Item,
        condition: &str,
        names: HashMap<String, String>,
        values: HashMap<String, AttributeValue>,
    ) -> Result<Put, StoreError> {
        let result = self
            .client
            .put_item()
            .table_name(&self.name)
            .set_item(Some(item))
            .condition_expression(condition)
            .set_expression_attribute_names((!names.is_empty()).then_some(names))
            .set_expression_attribute_values((!values.is_empty()).then_some(values))
            .send()
            .await;
        match result {
            Ok(_) => Ok(Put::Created),
            Err(err) if is_condition_failure(&err) => Ok(Put::AlreadyExists),
            Err(err) => Err(self.aws_error("PutItem", err)),
        }
    }

    /// Updates the item at `key` with `update` when `condition` holds: the one way Conveyor
    /// changes state. `#state` always names the `state` attribute.
    pub async fn update_if(
        &self,
        key: Key,
        update: &str,
        condition: &str,
        names: &[(&str, &str)],
        values: Vec<(&str, AttributeValue)>,
    ) -> Result<Transition, StoreError> {
        let mut request = self
            .client
            .update_item()
            .table_name(&self.name)
            .set_key(Some(key.into_item()))
            .update_expression(update)
            .condition_expression(condition);
        if condition.contains("#state") || update.contains("#state") {
            request = request.expression_attribute_names("#state", "state");
        }
        // DynamoDB refuses names and values an expression does not use.
        let used = |placeholder: &str| update.contains(placeholder) || condition.contains(placeholder);
        let names: Vec<_> = names.iter().filter(|(name, _)| used(name)).collect();
        let values: Vec<_> = values.into_iter().filter(|(placeholder, _)| used(placeholder)).collect();
        for (name, attribute) in names {
            request = request.expression_attribute_names(*name, *attribute);
        }
        for (placeholder, value) in values {
            request = request.expression_attribute_values(placeholder, value);
        }
        // An update of an item a transaction holds fails with TransactionConflict (a wave's
        // reports update the deployment in transactions): send it again after a pause.
        let backoff = Backoff::default();
        let mut attempt = 0;
        loop {
            match request.clone().send().await {
                Ok(_) => return Ok(Transition::Applied),
                Err(err) if is_condition_failure(&err) => return Ok(Transition::Rejected),
                Err(err) if err.code() == Some("TransactionConflictException") && attempt + 1 < backoff.attempts => {
                    attempt += 1;
                    tokio::time::sleep(backoff.delay(attempt)).await;
                }
                Err(err) => return Err(self.aws_error("UpdateItem", err)),
            }
        }
    }

    /// Moves the item at `key` from state `from` to state `to`, recording `reason` and
    /// appending the change to its `history`, only if it is in state `from` now.
    pub async fn transition(
        &self,
        key: Key,
        from: &str,
        to: &str,
        reason: &str,
        at: i64,
    ) -> Result<Transition, StoreError> {
        self.apply(Conditional::transition(key, from, to, reason, at)).await
    }

    /// Applies one conditional change ([`Conditional`]) as an UpdateItem.
    pub async fn apply(&self, change: Conditional) -> Result<Transition, StoreError> {
        let Conditional { key, set, remove, condition, names, values } = change;
        let names: Vec<(&str, &str)> = names.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let values: Vec<(&str, AttributeValue)> = values.iter().map(|(a, b)| (a.as_str(), b.clone())).collect();
        self.update_if(key, &Conditional::expression(&set, &remove), &condition, &names, values).await
    }

    /// One conditional change as an item of a transaction.
    fn transaction_item(&self, change: Conditional) -> Result<TransactWriteItem, StoreError> {
        use aws_sdk_dynamodb::types::Update;
        let Conditional { key, set, remove, condition, names, values } = change;
        let mut update = Update::builder()
            .table_name(&self.name)
            .set_key(Some(key.into_item()))
            .update_expression(Conditional::expression(&set, &remove));
        if condition.contains("#state") || set.iter().any(|part| part.contains("#state")) {
            update = update.expression_attribute_names("#state", "state");
        }
        let mut update = update.condition_expression(condition);
        for (name, attribute) in names {
            update = update.expression_attribute_names(name, attribute);
        }
        for (placeholder, value) in values {
            update = update.expression_attribute_values(placeholder, value);
        }
        let update = update.build().map_err(|e| self.build_error("TransactWriteItems", e))?;
        Ok(TransactWriteItem::builder().update(update).build())
    }

    /// Writes `items` in batches of 25, retrying `UnprocessedItems` with backoff.
    /// Batch puts overwrite: use them only for items whose content follows from their key.
    pub async fn batch_put(&self, items: Vec<Item>) -> Result<(), StoreError> {
        let requests: Vec<WriteRequest> = items
            .into_iter()
            .filter_map(|item| PutRequest::builder().set_item(Some(item)).build().ok())
            .map(|put| WriteRequest::builder().put_request(put).build())
            .collect();
        for chunk in requests.chunks(BATCH_SIZE) {
            write_until_processed(chunk.to_vec(), Backoff::default(), |batch| async move {
                let output = self
                    .client
                    .batch_write_item()
                    .request_items(&self.name, batch)
                    .send()
                    .await
                    .map_err(|err| self.aws_error("BatchWriteItem", err))?;
                Ok(output.unprocessed_items.and_then(|mut left| left.remove(&self.name)).unwrap_or_default())
            })
            .await?;
        }
        Ok(())
    }

    /// Reads one item, strongly consistent.
    pub async fn get(&self, key: Key) -> Result<Option<Item>, StoreError> {
        self.read(key, true).await
    }

    /// Reads one item; an eventually consistent read costs half and may miss a write of the
    /// last second: for readers that poll again anyway.
    pub async fn read(&self, key: Key, consistent: bool) -> Result<Option<Item>, StoreError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.name)
            .set_key(Some(key.into_item()))
            .consistent_read(consistent)
            .send()
            .await
            .map_err(|err| self.aws_error("GetItem", err))?;
        Ok(output.item)
    }

    /// The items of partition `pk` whose sort key starts with `prefix` (strongly consistent),
    /// in sort key order or reversed; pages are followed until `limit` items or the end.
    pub async fn partition(
        &self,
        pk: &str,
        prefix: &str,
        limit: Option<i32>,
        reverse: bool,
    ) -> Result<Vec<Item>, StoreError> {
        let query = self
            .client
            .query()
            .table_name(&self.name)
            .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
            .expression_attribute_values(":pk", s(pk))
            .expression_attribute_values(":prefix", s(prefix))
            .scan_index_forward(!reverse)
            .consistent_read(true);
        self.pages(query, limit).await
    }

    /// The newest `limit` items of a listing (the index's `gsi1pk`).
    pub async fn newest(&self, listing: &str, limit: i32) -> Result<Vec<Item>, StoreError> {
        self.index_query(listing, Some(limit)).await
    }

    /// Every item of a listing, newest first, following every page.
    pub async fn listing(&self, listing: &str) -> Result<Vec<Item>, StoreError> {
        self.index_query(listing, None).await
    }

    async fn index_query(&self, listing: &str, limit: Option<i32>) -> Result<Vec<Item>, StoreError> {
        let query = self
            .client
            .query()
            .table_name(&self.name)
            .index_name(GSI1)
            .key_condition_expression("gsi1pk = :listing")
            .expression_attribute_values(":listing", s(listing))
            .scan_index_forward(false);
        self.pages(query, limit).await
    }

    /// Runs `query` page after page until `limit` items or the end.
    async fn pages(
        &self,
        query: aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder,
        limit: Option<i32>,
    ) -> Result<Vec<Item>, StoreError> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let output = query
                .clone()
                .set_limit(limit.map(|limit| limit - items.len() as i32))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|err| self.aws_error("Query", err))?;
            items.extend(output.items.unwrap_or_default());
            start = output.last_evaluated_key.filter(|key| !key.is_empty());
            let full = limit.is_some_and(|limit| items.len() as i32 >= limit);
            if start.is_none() || full {
                return Ok(items);
            }
        }
    }

    /// Creates the table with its index, stream and TTL when it is missing. For the local
    /// emulator only: in AWS the SAM template owns the table. Returns whether it created it.
    pub async fn create_if_missing(&self) -> Result<bool, StoreError> {
        match self.client.describe_table().table_name(&self.name).send().await {
            Ok(_) => return Ok(false),
            Err(err) if err.code() == Some("ResourceNotFoundException") => {}
            Err(err) => return Err(self.aws_error("DescribeTable", err)),
        }
        let attribute = |name: &str| {
            AttributeDefinition::builder().attribute_name(name).attribute_type(ScalarAttributeType::S).build()
        };
        let key = |name: &str, kind: KeyType| KeySchemaElement::builder().attribute_name(name).key_type(kind).build();
        let index = GlobalSecondaryIndex::builder()
            .index_name(GSI1)
            .key_schema(key("gsi1pk", KeyType::Hash).map_err(|e| self.build_error("CreateTable", e))?)
            .key_schema(key("gsi1sk", KeyType::Range).map_err(|e| self.build_error("CreateTable", e))?)
            .projection(Projection::builder().projection_type(ProjectionType::All).build())
            .build()
            .map_err(|e| self.build_error("CreateTable", e))?;
        let created = self
            .client
            .create_table()
            .table_name(&self.name)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attribute("pk").map_err(|e| self.build_error("CreateTable", e))?)
            .attribute_definitions(attribute("sk").map_err(|e| self.build_error("CreateTable", e))?)
            .attribute_definitions(attribute("gsi1pk").map_err(|e| self.build_error("CreateTable", e))?)
            .attribute_definitions(attribute("gsi1sk").map_err(|e| self.build_error("CreateTable", e))?)
            .key_schema(key("pk", KeyType::Hash).map_err(|e| self.build_error("CreateTable", e))?)
            .key_schema(key("sk", KeyType::Range).map_err(|e| self.build_error("CreateTable", e))?)
            .global_secondary_indexes(index)
            .stream_specification(
                StreamSpecification::builder()
                    .stream_enabled(true)
                    .stream_view_type(StreamViewType::NewAndOldImages)
                    .build()
                    .map_err(|e| self.build_error("CreateTable", e))?,
            )
            .send()
            .await;
        match created {
            Ok(_) => {}
            // Another process created it first: that is what we wanted.
            Err(err) if err.code() == Some("ResourceInUseException") => return Ok(false),
            Err(err) => return Err(self.aws_error("CreateTable", err)),
        }
        self.client
            .update_time_to_live()
            .table_name(&self.name)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .attribute_name("ttl")
                    .enabled(true)
                    .build()
                    .map_err(|e| self.build_error("CreateTable", e))?,
            )
            .send()
            .await
            .map_err(|err| self.aws_error("UpdateTimeToLive", err))?;
        Ok(true)
    }

    /// A request that could not be built (a missing required field: a bug of ours).
    fn build_error(&self, operation: &'static str, err: aws_sdk_dynamodb::error::BuildError) -> StoreError {
        StoreError::Aws { operation, table: self.name.clone(), message: err.to_string() }
    }

    // ---- claims on outside events ------------------------------------------------------

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

    // ---- the ledger ------------------------------------------------------------------

    /// Commits are facts keyed by sha: writing one twice writes the same thing.
    pub async fn record_commits(&self, commits: &[CommitRecord]) -> Result<(), StoreError> {
        let items = commits
            .iter()
            .map(|c| encode("commit", c, Key::commit(&c.repository, &c.sha)))
            .collect::<Result<Vec<_>, _>>()?;
        self.batch_put(items).await
    }

    pub async fn record_push(&self, push: &PushRecord) -> Result<Put, StoreError> {
        let mut item = encode("push", push, Key::push(&push.repository, &push.delivery))?;
        item.insert("gsi1pk".into(), s("PUSHES"));
        item.insert("gsi1sk".into(), s(format!("{}#{}", time_key(push.received_at), push.repository)));
        self.put_if_absent(item).await
    }

    pub async fn record_build(&self, build: &BuildRecord) -> Result<Put, StoreError> {
        let mut item = encode("build", build, Key::build(&build.repository, &build.sha, &build.source))?;
        item.insert("gsi1pk".into(), s("BUILDS"));
        item.insert("gsi1sk".into(), s(format!("{}#{}#{}", time_key(build.completed_at), build.repository, build.sha)));
        self.put_if_absent(item).await
    }

    /// Creates the deployment of a build to its environment unless one exists already (one
    /// that was skipped, as not the branch's head, may be replaced).
    pub async fn create_deployment(&self, deployment: &DeploymentRecord) -> Result<Put, StoreError> {
        let mut item = encode("deployment", deployment, Key::deployment(&deployment.environment, &deployment.id()))?;
        item.insert("gsi1pk".into(), s(format!("DEPLOYMENTS#{}", deployment.environment)));
        item.insert("gsi1sk".into(), s(format!("{}#{}", time_key(deployment.created_at), deployment.sha)));
        let replaceable = deployment.state != DeploymentState::Skipped;
        if !replaceable {
            return self.put_if_absent(item).await;
        }
        self.put_if(
            item,
            "attribute_not_exists(pk) OR #state = :skipped",
            HashMap::from([("#state".into(), "state".into())]),
            HashMap::from([(":skipped".into(), s(DeploymentState::Skipped.as_str()))]),
        )
        .await
    }

    /// Moves a branch's head as a push says, unless the ledger already knows a later push
    /// (pushes can arrive out of order; `pushed_at` orders them, `before` chains them).
    pub async fn advance_branch_head(&self, head: &BranchHead) -> Result<Transition, StoreError> {
        self.update_if(
            Key::branch_head(&head.repository, &head.branch),
            "SET repository = :repo, branch = :branch, sha = :sha, pushed_at = :at, delivery = :delivery",
            "attribute_not_exists(pk) OR pushed_at < :at OR (pushed_at = :at AND sha = :before)",
            &[],
            vec![
                (":repo", s(&head.repository)),
                (":branch", s(&head.branch)),
                (":sha", s(&head.sha)),
                (":at", n(head.pushed_at)),
                (":delivery", s(&head.delivery)),
                (":before", s(&head.before)),
            ],
        )
        .await
    }

    /// The head of `branch` as the last push the ledger saw says.
    pub async fn branch_head(&self, repository: &str, branch: &str) -> Result<Option<BranchHead>, StoreError> {
        self.get(Key::branch_head(repository, branch)).await?.map(|item| decode("branch head", item)).transpose()
    }

    /// Whether the ledger saw `sha` in a push.
    pub async fn commit_known(&self, repository: &str, sha: &str) -> Result<bool, StoreError> {
        Ok(self.get(Key::commit(repository, sha)).await?.is_some())
    }

    pub async fn recent_builds(&self, limit: i32) -> Result<Vec<BuildRecord>, StoreError> {
        self.newest("BUILDS", limit).await?.into_iter().map(|item| decode("build", item)).collect()
    }

    pub async fn recent_deployments(&self, environment: &str, limit: i32) -> Result<Vec<DeploymentRecord>, StoreError> {
        self.newest(&format!("DEPLOYMENTS#{environment}"), limit)
            .await?
            .into_iter()
            .map(|item| decode("deployment", item))
            .collect()
    }
}

/// A customer's subscription as the ledger knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct SubscriptionState {
    pub customer: String,
    pub subscription: String,
    pub status: Option<String>,
    pub price: Option<String>,
    pub product: Option<String>,
    /// Every item's price and product.
    #[serde(default)]
    pub items: Option<Vec<crate::domain::stripe::PriceItem>>,
    pub current_period_end: Option<i64>,
    pub cancel_at_period_end: Option<bool>,
    pub last_event_id: String,
    pub last_event_type: String,
    pub last_event_created: i64,
    pub updated_at: i64,
}

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

    /// Raises an alert for alert dispatch, once per cause.
    pub async fn record_alert(&self, alert: &AlertRecord) -> Result<Put, StoreError> {
        self.put_if_absent(alert_item(alert)?).await
    }

    pub async fn recent_alerts(&self, limit: i32) -> Result<Vec<AlertRecord>, StoreError> {
        self.newest("ALERTS", limit).await?.into_iter().map(|item| decode("alert", item)).collect()
    }
}

/// A provider's current images.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ImageState {
    pub provider: String,
    pub images: ImageMap,
    /// Starts at 1 and grows by one with every change: the optimistic lock.
    pub version: i64,
    pub run_uuid: Option<String>,
    pub updated_at: i64,
}

/// One change of a provider's images, kept so that a bad image can be rolled back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ImageChange {
    pub provider: String,
    pub version: i64,
    /// `manifest` or `rollback`.
    pub kind: String,
    /// For a rollback: the version whose images it restored.
    pub restored: Option<i64>,
    pub run_uuid: Option<String>,
    pub previous: ImageMap,
    pub images: ImageMap,
    pub changes: std::collections::BTreeMap<String, Change>,
    pub at: i64,
}

/// The result of writing a provider's images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageWrite {
    Applied,
    /// Someone else changed the images since they were read: read again and retry.
    Conflict,
    /// This Packer run was applied before.
    RunAlreadyApplied,
}

impl Table {
    /// Stores a token's hash with its scope and optional expiry; listed by `conveyor token
    /// list` (`TOKENS` in the index), deleted by DynamoDB some time after it expires.
    pub async fn create_token(
        &self,
        token_hash: &str,
        scope: &str,
        now: i64,
        expires_at: Option<i64>,
    ) -> Result<Put, StoreError> {
        let grant =
            TokenGrant { id: crate::token::id_of(token_hash), scope: scope.to_owned(), created_at: now, expires_at };
        let mut item = encode("token", &grant, Key::token(token_hash))?;
        item.insert("gsi1pk".into(), s("TOKENS"));
        item.insert("gsi1sk".into(), s(format!("{}#{}", time_key(now), grant.id)));
        if let Some(expires_at) = expires_at {
            item.insert("ttl".into(), n(expires_at));
        }
        self.put_if_absent(item).await
    }

    /// The grant of the token with this hash, when such a token exists and has not expired.
    pub async fn token_grant(&self, token_hash: &str, now: i64) -> Result<Option<TokenGrant>, StoreError> {
        let Some(item) = self.get(Key::token(token_hash)).await? else { return Ok(None) };
        let grant: TokenGrant = decode("token", item)?;
        Ok(grant.valid_at(now).then_some(grant))
    }

    /// Every token created since tokens are listed, the newest first (expired ones too, until
    /// DynamoDB deletes them), with its item's key.
    async fn token_items(&self) -> Result<Vec<(Key, TokenGrant)>, StoreError> {
        let items = self.listing("TOKENS").await?;
        items
            .into_iter()
            .map(|item| {
                let pk = item.get("pk").and_then(|v| v.as_s().ok()).cloned().unwrap_or_default();
                decode("token", item).map(|grant| (Key { pk, sk: "TOKEN".into() }, grant))
            })
            .collect()
    }

    pub async fn tokens(&self) -> Result<Vec<TokenGrant>, StoreError> {
        Ok(self.token_items().await?.into_iter().map(|(_, grant)| grant).collect())
    }

    /// Deletes the token `conveyor token list` shows as `id`; answers what it was. An id is 48
    /// bits of a SHA-256, so two tokens sharing one is not a case worth a prompt: both would
    /// be listed, and the first is revoked.
    pub async fn revoke_token(&self, id: &str) -> Result<Option<TokenGrant>, StoreError> {
        let Some((key, grant)) = self.token_items().await?.into_iter().find(|(_, t)| t.id == id) else {
            return Ok(None);
        };
        self.client
            .delete_item()
            .table_name(&self.name)
            .set_key(Some(key.into_item()))
            .send()
            .await
            .map_err(|err| self.aws_error("DeleteItem", err))?;
        Ok(Some(grant))
    }

    pub async fn provider_images(&self, provider: &str) -> Result<Option<ImageState>, StoreError> {
        self.get(Key::images(provider)).await?.map(|item| decode("image map", item)).transpose()
    }

    pub async fn image_history(&self, provider: &str, limit: i32) -> Result<Vec<ImageChange>, StoreError> {
        let items = self.partition(&format!("PROVIDER#{provider}"), "HISTORY#", Some(limit), true).await?;
        items.into_iter().map(|item| decode("image change", item)).collect()
    }

    /// Writes a provider's new images, its history entry and (for a manifest) the run marker
    /// in one transaction: all or nothing, and only if the images are still at
    /// `change.version - 1` (optimistic lock) and the run was never applied.
    pub async fn write_images(&self, change: &ImageChange) -> Result<ImageWrite, StoreError> {
        use aws_sdk_dynamodb::types::Put as TxPut;
        let state = ImageState {
            provider: change.provider.clone(),
            images: change.images.clone(),
            version: change.version,
            run_uuid: change.run_uuid.clone(),
            updated_at: change.at,
        };
        let tx_error = |err| self.build_error("TransactWriteItems", err);
        let state_put = if change.version == 1 {
            TxPut::builder().condition_expression("attribute_not_exists(pk)")
        } else {
            TxPut::builder()
                .condition_expression("version = :expected")
                .expression_attribute_values(":expected", n(change.version - 1))
        }
        .table_name(&self.name)
        .set_item(Some(encode("image map", &state, Key::images(&change.provider))?))
        .build()
        .map_err(tx_error)?;
        let history_put = TxPut::builder()
            .table_name(&self.name)
            .set_item(Some(encode("image change", change, Key::image_history(&change.provider, change.version))?))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .map_err(tx_error)?;
        let mut items = vec![
            TransactWriteItem::builder().put(state_put).build(),
            TransactWriteItem::builder().put(history_put).build(),
        ];
        if let Some(run) = &change.run_uuid
            && change.kind == "manifest"
        {
            let mut marker = Key::applied_run(&change.provider, run).into_item();
            marker.insert("version".into(), n(change.version));
            marker.insert("at".into(), n(change.at));
            let run_put = TxPut::builder()
                .table_name(&self.name)
                .set_item(Some(marker))
                .condition_expression("attribute_not_exists(pk)")
                .build()
                .map_err(tx_error)?;
            items.push(TransactWriteItem::builder().put(run_put).build());
        }
        match self.transact(items).await? {
            Ok(()) => Ok(ImageWrite::Applied),
            Err(cancelled) if cancelled.0.get(2).and_then(Option::as_deref) == Some("ConditionalCheckFailed") => {
                Ok(ImageWrite::RunAlreadyApplied)
            }
            // A changed version, or a concurrent transaction on the same items.
            Err(cancelled) if cancelled.condition_failed() || cancelled.has("TransactionConflict") => {
                Ok(ImageWrite::Conflict)
            }
            Err(cancelled) => Err(StoreError::Cancelled { reasons: cancelled.0 }),
        }
    }

    /// Whether a Packer run was applied to a provider before.
    pub async fn run_applied(&self, provider: &str, run: &str) -> Result<bool, StoreError> {
        Ok(self.get(Key::applied_run(provider, run)).await?.is_some())
    }
}

/// A conditional update, built up in parts: as one UpdateItem ([`Table::apply`]) or as one
/// item of a transaction. `#state` always names the `state` attribute.
#[derive(Debug, Clone)]
pub struct Conditional {
    key: Key,
    set: Vec<String>,
    remove: Vec<String>,
    condition: String,
    names: Vec<(String, String)>,
    values: Vec<(String, AttributeValue)>,
}

impl Conditional {
    /// Moves the item from state `from` to `to` with `reason`, appending the change to its
    /// `history`, only if it is in state `from` now.
    pub fn transition(key: Key, from: &str, to: &str, reason: &str, at: i64) -> Self {
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

    fn expression(set: &[String], remove: &[String]) -> String {
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

/// An alert as stored: pending until alert dispatch delivers it, listed newest first.
fn alert_item(alert: &AlertRecord) -> Result<Item, StoreError> {
    let mut item = encode("alert", alert, Key::alert(&alert.source, &alert.id))?;
    item.insert("state".into(), s("pending"));
    item.insert("gsi1pk".into(), s("ALERTS"));
    item.insert("gsi1sk".into(), s(format!("{}#{}#{}", time_key(alert.created_at), alert.source, alert.id)));
    Ok(item)
}

fn is_condition_failure<E: ProvideErrorMetadata, R>(err: &aws_sdk_dynamodb::error::SdkError<E, R>) -> bool {
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
