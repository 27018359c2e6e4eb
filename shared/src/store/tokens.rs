//! Access tokens: stored as hashes with their scope, listed by id, revoked by id.

use super::*;

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
}
