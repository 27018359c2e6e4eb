//! Token authorisation for the functions that take bearer tokens (provider uploads, agent
//! polls): read the header, find the token's grant by its hash, and fail in one way for
//! every function ([`AuthError`]: 401 `missing_token` or `invalid_token`, 503 when the
//! ledger cannot be read). A function that is asked often (the agent channel) keeps checked
//! grants for a while.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::http::{self, Request};
use crate::store::{StoreError, Table};
use crate::token::{self, TokenGrant};

/// Why a request's token is refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("send Authorization: Bearer <token>")]
    Missing,
    #[error("the token is not known (revoked, expired, or never created)")]
    Unknown,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Checked grants, by token hash, with when each was read.
#[derive(Debug)]
struct Cache {
    ttl: Duration,
    capacity: usize,
    grants: Mutex<HashMap<String, (TokenGrant, Instant)>>,
}

/// Finds the scope of a request's bearer token.
#[derive(Debug, Clone)]
pub struct Tokens {
    table: Table,
    cache: Option<Arc<Cache>>,
}

impl Tokens {
    /// Every check reads the table: a revoked token stops working at once.
    pub fn uncached(table: Table) -> Self {
        Self { table, cache: None }
    }

    /// Checked grants are trusted for `ttl` (a revoked token keeps working that long in this
    /// warm function), at most `capacity` of them. An expired grant is never trusted.
    pub fn cached(table: Table, ttl: Duration, capacity: usize) -> Self {
        let cache = Cache { ttl, capacity, grants: Mutex::new(HashMap::new()) };
        Self { table, cache: Some(Arc::new(cache)) }
    }

    /// The scope ([`token::Scope::as_string`]) of the request's `Authorization: Bearer`
    /// token at `now`.
    pub async fn scope(&self, request: &Request, now: i64) -> Result<String, AuthError> {
        let Some(presented) = token::bearer(http::header(request, "authorization")) else {
            return Err(AuthError::Missing);
        };
        let hash = token::hash(presented.as_bytes());
        if let Some(scope) = self.remembered(&hash, now) {
            return Ok(scope);
        }
        let grant = self.table.token_grant(&hash, now).await?.ok_or(AuthError::Unknown)?;
        let scope = grant.scope.clone();
        self.remember(hash, grant);
        Ok(scope)
    }

    fn remembered(&self, hash: &str, now: i64) -> Option<String> {
        let cache = self.cache.as_ref()?;
        let grants = cache.grants.lock().ok()?;
        grants
            .get(hash)
            .filter(|(grant, read)| read.elapsed() < cache.ttl && grant.valid_at(now))
            .map(|(grant, _)| grant.scope.clone())
    }

    fn remember(&self, hash: String, grant: TokenGrant) {
        let Some(cache) = &self.cache else { return };
        if let Ok(mut grants) = cache.grants.lock() {
            // Bounded: when full, start again (one table read per token refills it).
            if grants.len() >= cache.capacity {
                grants.clear();
            }
            grants.insert(hash, (grant, Instant::now()));
        }
    }
}
