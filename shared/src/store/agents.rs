//! Agents bound to their instances: `ENV#<env>/AGENT#<instance>` holds the hash of the
//! credential the server issued to the agent that first spoke for the instance.
//!
//! An environment token lets any agent of the environment speak; the credential makes sure
//! that, once an instance's agent is enrolled, no other holder of the token can speak for
//! that instance. Trust goes to the first contact: the credential is issued in the answer to
//! the instance's first poll and is binding once the agent uses it (`confirmed`). Until
//! then a new first contact replaces it, so an agent whose first answer was lost enrols
//! again instead of locking itself out.

use aws_sdk_dynamodb::types::AttributeValue;
use serde::{Deserialize, Serialize};

use super::{Key, Put, StoreError, Table, Transition, decode, n, s};

/// An instance's enrolment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrollment {
    pub environment: String,
    pub instance: String,
    /// SHA-256 of the credential, hex.
    pub credential_hash: String,
    /// Whether the agent has used the credential: from then on only it speaks for the instance.
    pub confirmed: bool,
    pub issued_at: i64,
}

impl Key {
    pub fn agent(environment: &str, instance: &str) -> Self {
        Self { pk: format!("ENV#{environment}"), sk: format!("AGENT#{instance}") }
    }
}

impl Table {
    pub async fn enrollment(&self, environment: &str, instance: &str) -> Result<Option<Enrollment>, StoreError> {
        self.get(Key::agent(environment, instance)).await?.map(|item| decode("enrollment", item)).transpose()
    }

    /// Issues a credential for `instance` unless an agent already confirmed one.
    pub async fn enroll(&self, environment: &str, instance: &str, hash: &str, now: i64) -> Result<Put, StoreError> {
        let mut item = Key::agent(environment, instance).into_item();
        item.extend([
            ("environment".into(), s(environment)),
            ("instance".into(), s(instance)),
            ("credential_hash".into(), s(hash)),
            ("confirmed".into(), AttributeValue::Bool(false)),
            ("issued_at".into(), n(now)),
        ]);
        self.put_if(
            item,
            "attribute_not_exists(pk) OR confirmed = :no",
            Default::default(),
            [(":no".to_string(), AttributeValue::Bool(false))].into(),
        )
        .await
    }

    /// Makes an issued credential binding (its agent used it).
    pub async fn confirm_enrollment(
        &self,
        environment: &str,
        instance: &str,
        hash: &str,
    ) -> Result<Transition, StoreError> {
        self.update_if(
            Key::agent(environment, instance),
            "SET confirmed = :yes",
            "credential_hash = :hash",
            &[],
            vec![(":yes", AttributeValue::Bool(true)), (":hash", s(hash))],
        )
        .await
    }

    /// Forgets an instance's enrolment (`conveyor agent forget`): its next agent enrols anew.
    pub async fn forget_enrollment(&self, environment: &str, instance: &str) -> Result<bool, StoreError> {
        let output = self
            .client
            .delete_item()
            .table_name(self.name())
            .set_key(Some(Key::agent(environment, instance).into_item()))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld)
            .send()
            .await
            .map_err(|err| self.aws_error("DeleteItem", err))?;
        Ok(output.attributes.is_some_and(|old| !old.is_empty()))
    }
}
