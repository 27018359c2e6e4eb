use conveyor_e2e::{sdk, unique_name};
use conveyor_shared::config::SecretSource;
use conveyor_shared::secrets;
use conveyor_shared::store::{Key, Put, Table, Transition};

#[tokio::test]
async fn the_table_is_created_once_with_its_index() {
    let sdk = sdk().await;
    let table = Table::new(aws_sdk_dynamodb::Client::new(&sdk), unique_name("conveyor-create"));
    assert!(table.create_if_missing().await.unwrap());
    assert!(!table.create_if_missing().await.unwrap(), "a second call finds it");
    let described = aws_sdk_dynamodb::Client::new(&sdk).describe_table().table_name(table.name()).send().await.unwrap();
    let described = described.table.unwrap();
    assert_eq!(described.global_secondary_indexes().len(), 1);
    assert!(described.stream_specification().is_some_and(|s| s.stream_enabled()));
}

#[tokio::test]
async fn conditional_puts_and_transitions() {
    let sdk = sdk().await;
    let table = Table::new(aws_sdk_dynamodb::Client::new(&sdk), unique_name("conveyor-cond"));
    table.create_if_missing().await.unwrap();
    let item = |state: &str| {
        std::collections::HashMap::from([
            ("pk".to_string(), aws_sdk_dynamodb::types::AttributeValue::S("ENV#p".into())),
            ("sk".to_string(), aws_sdk_dynamodb::types::AttributeValue::S("DEPLOYMENT#x".into())),
            ("state".to_string(), aws_sdk_dynamodb::types::AttributeValue::S(state.into())),
        ])
    };
    assert_eq!(table.put_if_absent(item("pending")).await.unwrap(), Put::Created);
    assert_eq!(table.put_if_absent(item("other")).await.unwrap(), Put::AlreadyExists);
    let key = || Key::deployment("p", "x");
    assert_eq!(table.transition(key(), "pending", "in_progress", "started", 1).await.unwrap(), Transition::Applied);
    assert_eq!(table.transition(key(), "pending", "in_progress", "again", 2).await.unwrap(), Transition::Rejected);
    let stored = table.get(key()).await.unwrap().unwrap();
    assert_eq!(stored["state"].as_s().unwrap(), "in_progress");
    assert_eq!(stored["history"].as_l().unwrap().len(), 1, "the transition is recorded with its reason");
    assert_eq!(
        table.transition(Key::deployment("p", "missing"), "pending", "x", "r", 3).await.unwrap(),
        Transition::Rejected
    );
}

#[tokio::test]
async fn batch_puts_write_more_than_one_batch() {
    let sdk = sdk().await;
    let table = Table::new(aws_sdk_dynamodb::Client::new(&sdk), unique_name("conveyor-batch"));
    table.create_if_missing().await.unwrap();
    let commits: Vec<_> = (0..60)
        .map(|i| conveyor_shared::domain::CommitRecord {
            repository: "o/r".into(),
            sha: format!("{i:040}"),
            committed_at: i,
            git_ref: "refs/heads/main".into(),
            title: "t".into(),
            author: None,
        })
        .collect();
    table.record_commits(&commits).await.unwrap();
    for i in [0, 24, 25, 59] {
        assert!(table.get(Key::commit("o/r", &format!("{i:040}"))).await.unwrap().is_some(), "commit {i}");
    }
}

#[tokio::test]
async fn a_missing_table_is_named_in_the_error() {
    let sdk = sdk().await;
    let table = Table::new(aws_sdk_dynamodb::Client::new(&sdk), unique_name("conveyor-absent"));
    let err = table.get(Key::commit("o/r", "x")).await.unwrap_err();
    assert!(err.to_string().contains(table.name()), "{err}");
}

#[tokio::test]
async fn webhook_secrets_resolve_from_secrets_manager() {
    let sdk = sdk().await;
    let name = unique_name("conveyor/github");
    aws_sdk_secretsmanager::Client::new(&sdk)
        .create_secret()
        .name(&name)
        .secret_string("new-secret, old-secret")
        .send()
        .await
        .unwrap();
    let set = secrets::resolve(&SecretSource::SecretsManager(name), &sdk).await.unwrap();
    assert_eq!(set.len(), 2);
    let err = secrets::resolve(&SecretSource::SecretsManager("conveyor/absent".into()), &sdk).await.unwrap_err();
    assert!(err.to_string().contains("conveyor/absent"), "{err}");
}
