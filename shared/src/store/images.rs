//! Providers' machine images: the current map under an optimistic lock, its history, and
//! the Packer runs already applied.

use super::*;
use crate::domain::packer::{ImageChange, ImageState};

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
