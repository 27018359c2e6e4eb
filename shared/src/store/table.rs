//! The table's primitives: conditional puts and updates, transactions, reads, paged
//! queries of a partition or a listing, and creating the table in the emulator.

use super::*;

impl Table {
    pub(super) fn aws_error<
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
    pub(super) async fn transact(&self, items: Vec<TransactWriteItem>) -> Result<Result<(), Cancelled>, StoreError> {
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
    pub async fn transition<S: StoredState>(
        &self,
        key: Key,
        from: S,
        to: S,
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
    pub(super) fn transaction_item(&self, change: Conditional) -> Result<TransactWriteItem, StoreError> {
        use aws_sdk_dynamodb::types::Update;
        let Conditional { key, set, remove, condition, names, values } = change;
        let mut update = Update::builder()
            .table_name(&self.name)
            .set_key(Some(key.into_item()))
            .update_expression(Conditional::expression(&set, &remove));
        if condition.contains("#state") || set.iter().any(|part| part.contains("#state")) {
            update = update.expression_attribute_names("#state", "state");
        }
        // An unconditional item (a counter beside a conditional change) has no condition.
        if !condition.is_empty() {
            update = update.condition_expression(condition);
        }
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

    pub(super) async fn index_query(&self, listing: &str, limit: Option<i32>) -> Result<Vec<Item>, StoreError> {
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
    pub(super) async fn pages(
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
    pub(super) fn build_error(&self, operation: &'static str, err: aws_sdk_dynamodb::error::BuildError) -> StoreError {
        StoreError::Aws { operation, table: self.name.clone(), message: err.to_string() }
    }
}
