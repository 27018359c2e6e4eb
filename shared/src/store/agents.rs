//! What agents say about their instances (`ENV#<env>/INSTANCE#<instance>`), and agents
//! bound to their instances: `ENV#<env>/AGENT#<instance>` holds the hash of the
//! credential the server issued to the agent that first spoke for the instance.
//!
//! An environment token lets any agent of the environment speak; the credential makes sure
//! that, once an instance's agent is enrolled, no other holder of the token can speak for
//! that instance. Trust goes to the first contact: the credential is issued in the answer to
//! the instance's first poll and is binding once the agent uses it (`confirmed`). Until
//! then a new first contact replaces it, so an agent whose first answer was lost enrols
//! again instead of locking itself out.
//!
//! An agent on EC2 may instead prove its instance to AWS (an instance profile's signed
//! `GetCallerIdentity`, see [`crate::domain::instance_proof`]): its credential is binding at
//! once, needs no environment token, and a new proof of the same instance replaces it (a
//! rebuilt host enrols again by itself).

use super::{Key, Put, StoreError, Table, Transition, decode, n, s};
use crate::domain::fleet::{Enrollment, InstanceRecord};
use aws_sdk_dynamodb::types::AttributeValue;

impl Key {
    pub fn agent(environment: &str, instance: &str) -> Self {
        Self { pk: format!("ENV#{environment}"), sk: format!("AGENT#{instance}") }
    }
}

impl Table {
    pub async fn instance(&self, environment: &str, instance: &str) -> Result<Option<InstanceRecord>, StoreError> {
        self.get(Key::instance(environment, instance)).await?.map(|item| decode("instance", item)).transpose()
    }

    /// Records what an agent says its instance runs.
    pub async fn record_agent_state(
        &self,
        environment: &str,
        instance: &str,
        current: Option<&str>,
        healthy: bool,
        now: i64,
    ) -> Result<(), StoreError> {
        let current = current.map_or(AttributeValue::Null(true), s);
        self.client
            .update_item()
            .table_name(self.name())
            .set_key(Some(Key::instance(environment, instance).into_item()))
            .update_expression(
                "SET environment = :env, instance = :id, #current = :current, healthy = :healthy, reported_at = :now",
            )
            .expression_attribute_names("#current", "current")
            .expression_attribute_values(":env", s(environment))
            .expression_attribute_values(":id", s(instance))
            .expression_attribute_values(":current", current)
            .expression_attribute_values(":healthy", AttributeValue::Bool(healthy))
            .expression_attribute_values(":now", n(now))
            .send()
            .await
            .map_err(|err| self.aws_error("UpdateItem", err))?;
        Ok(())
    }

    /// Records that the instance's agent polled at `now` (for heartbeat checks).
    pub async fn record_agent_seen(&self, environment: &str, instance: &str, now: i64) -> Result<(), StoreError> {
        self.client
            .update_item()
            .table_name(self.name())
            .set_key(Some(Key::instance(environment, instance).into_item()))
            .update_expression("SET environment = :env, instance = :id, seen_at = :now")
            .expression_attribute_values(":env", s(environment))
            .expression_attribute_values(":id", s(instance))
            .expression_attribute_values(":now", n(now))
            .send()
            .await
            .map_err(|err| self.aws_error("UpdateItem", err))?;
        Ok(())
    }

    pub async fn environment_instances(&self, environment: &str) -> Result<Vec<InstanceRecord>, StoreError> {
        let items = self.partition(&format!("ENV#{environment}"), "INSTANCE#", None, false).await?;
        items.into_iter().map(|item| decode("instance", item)).collect()
    }

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
            ("proof".into(), s("first_contact")),
        ]);
        self.put_if(
            item,
            "attribute_not_exists(pk) OR confirmed = :no",
            Default::default(),
            [(":no".to_string(), AttributeValue::Bool(false))].into(),
        )
        .await
    }

    /// Binds `instance` to a credential issued on an instance proof, replacing the enrolment
    /// read as `replacing` (none, or the one whose credential hash is given): a concurrent
    /// enrolment in between makes this one [`Put::AlreadyExists`], and the agent proves again.
    pub async fn enroll_proven(
        &self,
        environment: &str,
        instance: &str,
        hash: &str,
        replacing: Option<&str>,
        proven_at: i64,
        now: i64,
    ) -> Result<Put, StoreError> {
        let mut item = Key::agent(environment, instance).into_item();
        item.extend([
            ("environment".into(), s(environment)),
            ("instance".into(), s(instance)),
            ("credential_hash".into(), s(hash)),
            ("confirmed".into(), AttributeValue::Bool(true)),
            ("issued_at".into(), n(now)),
            ("proof".into(), s("instance_profile")),
            ("proven_at".into(), n(proven_at)),
        ]);
        match replacing {
            None => self.put_if_absent(item).await,
            Some(seen) => {
                let values = [(":seen".to_string(), s(seen))].into();
                self.put_if(item, "credential_hash = :seen", Default::default(), values).await
            }
        }
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
