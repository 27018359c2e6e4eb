//! `conveyor dev` plays the triggers the SAM template declares: it polls the table's stream
//! in the emulator and hands each stream function the records its filters match, in Lambda's
//! event shape; and it runs each scheduled function on its rate with an EventBridge event.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodbstreams::Client;
use aws_sdk_dynamodbstreams::error::DisplayErrorContext;
use aws_sdk_dynamodbstreams::types::{AttributeValue, Record, ShardIteratorType};
use conveyor_shared::SdkConfig;
use conveyor_shared::triggers::{
    Pattern, PatternError, ScheduledEvent, ScheduledFunction, StartingPosition, StreamEvent, StreamFunction,
    handle_batch,
};
use serde_json::{Value, json};
use time::format_description::well_known::Rfc3339;

/// Lambda's default batch size for DynamoDB streams.
const BATCH_SIZE: usize = 100;
/// Attempts per batch before its rest is dropped: the first and the mapping's 5 retries.
const MAX_ATTEMPTS: u32 = 6;
const IDLE_POLL: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    #[error("stream function {function}: {source}")]
    Pattern { function: &'static str, source: PatternError },
    #[error("table {table} has no stream: {message}")]
    NoStream { table: String, message: String },
}

struct Mapping {
    function: Arc<dyn StreamFunction>,
    patterns: Vec<Pattern>,
}

impl Mapping {
    fn wants(&self, record: &Value) -> bool {
        self.patterns.is_empty() || self.patterns.iter().any(|p| p.matches(record))
    }
}

/// Polls the table's stream and feeds `functions` until the task is dropped.
pub async fn play_stream(
    functions: Vec<Arc<dyn StreamFunction>>,
    table: &str,
    sdk: &SdkConfig,
) -> Result<(), TriggerError> {
    if functions.is_empty() {
        return Ok(());
    }
    let mappings = functions
        .into_iter()
        .map(|function| {
            let patterns = function
                .filters()
                .iter()
                .map(|text| Pattern::parse(text))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|source| TriggerError::Pattern { function: function.name(), source })?;
            Ok(Mapping { function, patterns })
        })
        .collect::<Result<Vec<_>, TriggerError>>()?;
    let no_stream = |message: String| TriggerError::NoStream { table: table.to_owned(), message };
    let dynamodb = aws_sdk_dynamodb::Client::new(sdk);
    let described = dynamodb
        .describe_table()
        .table_name(table)
        .send()
        .await
        .map_err(|e| no_stream(DisplayErrorContext(e).to_string()))?;
    let stream_arn =
        described.table.and_then(|t| t.latest_stream_arn).ok_or_else(|| no_stream("streams are not enabled".into()))?;
    let streams = Client::new(sdk);
    let region = sdk.region().map(|r| r.to_string()).unwrap_or_else(|| "us-east-1".into());

    // One reader per mapping, each with its own position, as Lambda keeps one per mapping.
    let mut readers: Vec<(Mapping, HashMap<String, Option<String>>)> =
        mappings.into_iter().map(|m| (m, HashMap::new())).collect();
    loop {
        let mut busy = false;
        let shards = match streams.describe_stream().stream_arn(&stream_arn).send().await {
            Ok(out) => out.stream_description.map(|d| d.shards.unwrap_or_default()).unwrap_or_default(),
            Err(err) => {
                tracing::warn!(error = %DisplayErrorContext(err), "cannot describe the table stream");
                Vec::new()
            }
        };
        for (mapping, positions) in &mut readers {
            for shard in &shards {
                let Some(shard_id) = shard.shard_id() else {
                    continue;
                };
                let iterator = match positions.get(shard_id) {
                    Some(Some(iterator)) => iterator.clone(),
                    Some(None) => continue, // closed shard, fully read
                    None => {
                        let kind = match mapping.function.starting_position() {
                            StartingPosition::TrimHorizon => ShardIteratorType::TrimHorizon,
                            StartingPosition::Latest => ShardIteratorType::Latest,
                        };
                        let start = streams
                            .get_shard_iterator()
                            .stream_arn(&stream_arn)
                            .shard_id(shard_id)
                            .shard_iterator_type(kind)
                            .send()
                            .await;
                        match start.ok().and_then(|o| o.shard_iterator) {
                            Some(iterator) => iterator,
                            None => continue,
                        }
                    }
                };
                let page = match streams.get_records().shard_iterator(&iterator).send().await {
                    Ok(page) => page,
                    Err(err) => {
                        tracing::warn!(error = %DisplayErrorContext(err), shard = shard_id, "cannot read the table stream");
                        positions.remove(shard_id);
                        continue;
                    }
                };
                let records: Vec<Value> = page
                    .records
                    .unwrap_or_default()
                    .iter()
                    .map(|r| lambda_record(r, &stream_arn, &region))
                    .filter(|r| mapping.wants(r))
                    .collect();
                busy |= !records.is_empty();
                for batch in records.chunks(BATCH_SIZE) {
                    deliver(mapping.function.as_ref(), batch).await;
                }
                positions.insert(shard_id.to_owned(), page.next_shard_iterator);
            }
        }
        if !busy {
            tokio::time::sleep(IDLE_POLL).await;
        }
    }
}

/// Hands `batch` to `function` as Lambda does with `ReportBatchItemFailures`: after a failure
/// it redelivers from the failed record on, up to the mapping's attempts; then the rest of
/// the batch is dropped with an error (in AWS it goes to the on-failure queue).
async fn deliver(function: &dyn StreamFunction, batch: &[Value]) {
    let mut pending = batch.to_vec();
    for attempt in 1..=MAX_ATTEMPTS {
        let event: StreamEvent = match serde_json::from_value(json!({ "Records": pending })) {
            Ok(event) => event,
            Err(err) => {
                tracing::error!(function = function.name(), error = %err, "stream records of a shape Lambda does not deliver; skipped");
                return;
            }
        };
        let response = handle_batch(function, &event).await;
        let Some(failed) = response.batch_item_failures.first() else { return };
        let sequence = failed.item_identifier.clone().unwrap_or_default();
        let from = pending.iter().position(|r| r["dynamodb"]["SequenceNumber"] == sequence.as_str()).unwrap_or(0);
        pending.drain(..from);
        tracing::warn!(function = function.name(), attempt, %sequence, "stream batch failed at a record; retrying from it");
        tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
    }
    tracing::error!(
        function = function.name(),
        records = pending.len(),
        "stream records dropped after {MAX_ATTEMPTS} attempts (in AWS: sent to the on-failure queue)"
    );
}

/// Runs every scheduled function on its rate until the task is dropped.
pub async fn play_schedules(functions: Vec<Arc<dyn ScheduledFunction>>, region: String) {
    let mut tasks = tokio::task::JoinSet::new();
    for function in functions {
        let region = region.clone();
        tasks.spawn(async move {
            let mut interval = tokio::time::interval(function.every());
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut count = 0u64;
            loop {
                interval.tick().await;
                count += 1;
                let event = ScheduledEvent {
                    id: format!("dev-{}-{count}", function.name()),
                    detail_type: "Scheduled Event".into(),
                    source: ScheduledEvent::SOURCE.into(),
                    account: "000000000000".into(),
                    time: time::OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default(),
                    region: region.clone(),
                    resources: vec![format!(
                        "arn:aws:events:{region}:000000000000:rule/conveyor-dev-{}",
                        function.name()
                    )],
                };
                if let Err(err) = function.tick(&event).await {
                    tracing::warn!(function = function.name(), error = %err, "scheduled run failed");
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    // No schedules (or all ended): the dev server keeps serving the rest.
    std::future::pending::<()>().await
}

/// A stream record in the JSON shape Lambda delivers (`aws_lambda_events`' DynamoDB event).
fn lambda_record(record: &Record, stream_arn: &str, region: &str) -> Value {
    let mut dynamodb = serde_json::Map::new();
    if let Some(stream) = record.dynamodb() {
        if let Some(at) = stream.approximate_creation_date_time() {
            dynamodb.insert("ApproximateCreationDateTime".into(), json!(at.secs()));
        }
        for (name, image) in
            [("Keys", stream.keys()), ("NewImage", stream.new_image()), ("OldImage", stream.old_image())]
        {
            if let Some(image) = image {
                dynamodb.insert(name.into(), image_json(image));
            }
        }
        if let Some(sequence) = stream.sequence_number() {
            dynamodb.insert("SequenceNumber".into(), json!(sequence));
        }
        // Lambda always sends it; the emulator may not, so it is estimated from the images.
        let size = stream.size_bytes().unwrap_or_else(|| {
            ["Keys", "NewImage", "OldImage"]
                .iter()
                .filter_map(|k| dynamodb.get(*k))
                .map(|v| v.to_string().len() as i64)
                .sum()
        });
        dynamodb.insert("SizeBytes".into(), json!(size));
        if let Some(view) = stream.stream_view_type() {
            dynamodb.insert("StreamViewType".into(), json!(view.as_str()));
        }
    }
    json!({
        "eventID": record.event_id(),
        "eventName": record.event_name().map(|n| n.as_str()),
        "eventVersion": record.event_version(),
        "eventSource": "aws:dynamodb",
        "awsRegion": region,
        "dynamodb": dynamodb,
        "eventSourceARN": stream_arn,
    })
}

fn image_json(image: &HashMap<String, AttributeValue>) -> Value {
    // Sorted, so that records print the same way every time.
    let sorted: BTreeMap<_, _> = image.iter().map(|(k, v)| (k.clone(), attribute_json(v))).collect();
    json!(sorted)
}

/// DynamoDB JSON: `{"S": "x"}`, `{"N": "1"}`, `{"M": {...}}`, ...
fn attribute_json(value: &AttributeValue) -> Value {
    match value {
        AttributeValue::S(s) => json!({"S": s}),
        AttributeValue::N(n) => json!({"N": n}),
        AttributeValue::Bool(b) => json!({"BOOL": b}),
        AttributeValue::Null(_) => json!({"NULL": true}),
        AttributeValue::B(b) => json!({"B": base64(b.as_ref())}),
        AttributeValue::Ss(set) => json!({"SS": set}),
        AttributeValue::Ns(set) => json!({"NS": set}),
        AttributeValue::Bs(set) => {
            json!({"BS": set.iter().map(|b| base64(b.as_ref())).collect::<Vec<_>>()})
        }
        AttributeValue::L(list) => {
            json!({"L": list.iter().map(attribute_json).collect::<Vec<_>>()})
        }
        AttributeValue::M(map) => json!({"M": image_json(map)}),
        _ => Value::Null,
    }
}

fn base64(bytes: &[u8]) -> String {
    aws_smithy_types::base64::encode(bytes)
}
