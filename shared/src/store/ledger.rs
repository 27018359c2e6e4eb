//! The ledger: commits, pushes, builds, branch heads and deployments, as facts keyed by
//! their natural keys.

use super::*;

impl Table {
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
