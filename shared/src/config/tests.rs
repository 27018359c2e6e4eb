use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, "conveyor.toml")
}

#[test]
fn launch_template_targets_and_image_owners_are_checked() {
    let provider = |extra: &str| parse(&format!("[[provider]]\nname = \"aws\"\n{extra}"));
    let ok = provider(
        "image_owners = [\"123456789012\"]\n[[provider.launch_template]]\nname = \"web\"\nregion = \"us-gov-west-1\"\n",
    );
    assert_eq!(ok.unwrap().providers[0].image_owners, ["123456789012"]);
    let bad_region = provider("[[provider.launch_template]]\nname = \"web\"\nregion = \"us-east\"\n").unwrap_err();
    assert!(bad_region.to_string().contains("`us-east` is not an AWS region"), "{bad_region}");
    let twice = provider(
        "[[provider.launch_template]]\nname = \"web\"\nregion = \"us-east-1\"\n[[provider.launch_template]]\nname = \"web\"\nregion = \"us-east-1\"\n",
    )
    .unwrap_err();
    assert!(twice.to_string().contains("listed twice"), "{twice}");
    let owner = provider("image_owners = [\"amazon\"]\n").unwrap_err();
    assert!(owner.to_string().contains("12-digit"), "{owner}");
}

#[test]
fn an_environment_names_its_repository_or_says_any() {
    let err = parse("[[environment]]\nname = \"p\"\nbranch = \"main\"\n").unwrap_err().to_string();
    assert!(err.contains("needs `repository = \"owner/name\"`") && err.contains("\"*\""), "{err}");
    let any = parse("[[environment]]\nname = \"p\"\nbranch = \"main\"\nrepository = \"*\"\n").unwrap();
    assert_eq!(any.environments[0].repository, RepositoryFilter::Any);
    assert!(any.environments[0].repository.admits("anyone/anything"));
    let one = parse("[[environment]]\nname = \"p\"\nbranch = \"main\"\nrepository = \"Acme/Shop\"\n").unwrap();
    assert!(one.environments[0].repository.admits("acme/shop") && !one.environments[0].repository.admits("acme/other"));
    for bad in ["acme/*", "acme", "/shop"] {
        let text = format!("[[environment]]\nname = \"p\"\nbranch = \"main\"\nrepository = \"{bad}\"\n");
        assert!(parse(&text).is_err(), "{bad}");
    }
    let empty =
        parse("[[environment]]\nname = \"p\"\nbranch = \"main\"\nrepository = \"*\"\nrequire_workflow = [\"\"]\n");
    assert!(empty.unwrap_err().to_string().contains("empty entry"));
}

#[test]
fn an_environment_with_name_and_branch_gets_defaults() {
    let config = parse("[[environment]]\nname = \"production\"\nbranch = \"main\"\nrepository = \"*\"\n").unwrap();
    let env = &config.environments[0];
    assert_eq!(env.rollout.waves, vec![WaveSize::Count(1), WaveSize::Percent(50), WaveSize::Percent(100)]);
    assert_eq!(env.instances.tags.get(ENVIRONMENT_TAG).map(String::as_str), Some("production"));
    assert_eq!(env.artifact, ArtifactTemplate::default());
    assert_eq!(env.health, None, "agents check their own health URL");
    assert_eq!(env.rollout.wave_timeout, Seconds(600));
    assert_eq!(env.artifact_wait, Seconds(1800), "a deployment waits 30 minutes for its artifact");
}

#[test]
fn a_health_table_is_taken_whole_with_defaults_for_what_it_leaves_out() {
    let config = parse(
        "[[environment]]\nname = \"production\"\nbranch = \"main\"\nrepository = \"*\"\n[environment.health]\nurl = \"http://127.0.0.1:9000/up\"\nexpect_status = 204\n",
    )
    .unwrap();
    let health = config.environments[0].health.clone().unwrap();
    assert_eq!((health.url.as_str(), health.expect_status), ("http://127.0.0.1:9000/up", 204));
    assert_eq!((health.attempts, health.interval), (5, Seconds(2)));
}

#[test]
fn the_shipped_example_is_valid() {
    let text = include_str!("../../../conveyor.example.toml");
    let config = parse(text).unwrap();
    assert!(!config.environments.is_empty());
}

#[test]
fn errors_carry_line_and_column() {
    let text = "[[environment]]\nname = \"prod\"\nbranch = \"main\"\nrepository = \"*\"\n[environment.rollout]\nwaves = [1, \"150%\", \"100%\"]\n";
    let err = parse(text).unwrap_err();
    assert_eq!(err.line, 6, "{err}");
    assert!(err.message.contains("150%"), "{err}");
    assert!(err.to_string().starts_with("conveyor.toml:6:"), "{err}");
}

#[test]
fn unknown_keys_are_rejected_with_their_position() {
    let err = parse("[[environment]]\nname = \"prod\"\nbrnach = \"main\"\n").unwrap_err();
    assert_eq!((err.line, err.column), (3, 1), "{err}");
    assert!(err.message.contains("brnach"), "{err}");
}

#[test]
fn duplicate_environment_names_point_at_the_second() {
    let text = "[[environment]]\nname = \"a\"\nbranch = \"main\"\nrepository = \"*\"\n\n[[environment]]\nname = \"a\"\nbranch = \"dev\"\nrepository = \"*\"\n";
    let err = parse(text).unwrap_err();
    assert!(err.message.contains("defined twice"), "{err}");
    assert!(err.line >= 5, "{err}");
}

#[test]
fn rollout_rules() {
    let base = "[[environment]]\nname = \"p\"\nbranch = \"main\"\nrepository = \"*\"\n[environment.rollout]\n";
    let check = |extra: &str| parse(&format!("{base}{extra}")).map(|c| c.environments[0].rollout.clone());
    assert!(check("waves = [1, \"50%\"]\n").unwrap_err().message.contains("last wave"));
    assert!(check("strategy = \"all-at-once\"\nwaves = [\"100%\"]\n").unwrap_err().message.contains("not both"));
    assert_eq!(check("strategy = \"all-at-once\"\n").unwrap().waves, vec![WaveSize::Percent(100)]);
    assert!(check("strategy = \"sometimes\"\n").is_err());
    assert_eq!(check("wave_timeout = \"2m\"\n").unwrap().wave_timeout, Seconds(120));
    assert!(check("wave_timeout = \"2 fortnights\"\n").unwrap_err().message.contains("unit"));
    assert_eq!(check("wave_timeout = \"1h30m\"\n").unwrap().wave_timeout, Seconds(5400));
    assert_eq!(check("wave_timeout = \"90\"\n").unwrap().wave_timeout, Seconds(90));
    assert!(check("wave_timeout = \"1500ms\"\n").unwrap_err().message.contains("whole number of seconds"));
    assert_eq!(check("wave_timeout = \"1d\"\n").unwrap().wave_timeout, Seconds(86_400));
    assert_eq!(check("min_healthy = \"75%\"\n").unwrap().min_healthy, WaveSize::Percent(75));
}

#[test]
fn environment_fields_are_checked() {
    let err = parse("[[environment]]\nname = \"Prod\"\nbranch = \"main\"\nrepository = \"*\"\n").unwrap_err();
    assert!(err.message.contains("a-z"), "{err}");
    let err = parse("[[environment]]\nname = \"p\"\nbranch = \"refs/heads/main\"\nrepository = \"*\"\n").unwrap_err();
    assert!(err.message.contains("refs/heads"), "{err}");
    let err = parse("[[environment]]\nname = \"p\"\nbranch = \"main\"\nrepository = \"nope\"\n").unwrap_err();
    assert!(err.message.contains("owner/name"), "{err}");
    let err =
        parse("[[environment]]\nname = \"p\"\nbranch = \"main\"\nrepository = \"*\"\nartifact = \"s3://b/{nope}\"\n")
            .unwrap_err();
    assert!(err.message.contains("{nope}"), "{err}");
    let err = parse("[[environment]]\nname = \"p\"\n").unwrap_err();
    assert!(err.message.contains("branch"), "{err}");
}

#[test]
fn providers_need_only_a_name() {
    let config = parse("[[provider]]\nname = \"aws-images\"\n").unwrap();
    assert_eq!(config.providers[0].name, "aws-images");
    assert!(config.providers[0].launch_templates.is_empty());
    let text = "[[provider]]\nname = \"aws\"\n[[provider.launch_template]]\nname = \"web\"\nregion = \"us-east-1\"\n";
    assert_eq!(parse(text).unwrap().providers[0].launch_templates[0].region, "us-east-1");
    let err = parse("[[provider]]\nname = \"AWS\"\n").unwrap_err();
    assert_eq!(err.line, 2, "{err}");
    let err = parse("[[provider]]\nname = \"a\"\n[[provider]]\nname = \"a\"\n").unwrap_err();
    assert!(err.message.contains("defined twice"), "{err}");
}

#[test]
fn wave_sizes_round_up() {
    assert_eq!(WaveSize::Percent(50).of(5), 3);
    assert_eq!(WaveSize::Percent(1).of(3), 1);
    assert_eq!(WaveSize::Count(4).of(2), 2);
    assert_eq!(WaveSize::Percent(100).of(0), 0);
}

#[test]
fn a_min_healthy_that_no_fleet_can_satisfy_is_a_config_error() {
    let env = |rollout: &str| {
        Config::parse(
            &format!(
                "[[environment]]\nname = \"p\"\nbranch = \"main\"\nrepository = \"*\"\n[environment.rollout]\n{rollout}\n"
            ),
            "t.toml",
        )
    };
    let err = env("min_healthy = \"100%\"").unwrap_err().to_string();
    assert!(err.contains("no instance can ever be updated") && err.contains("t.toml:"), "{err}");
    assert!(env("min_healthy = \"75%\"").is_ok(), "the example's setting works for any fleet size");
    assert!(env("min_healthy = 2").is_ok(), "a count is checked against the fleet when planning");
}

#[test]
fn artifact_template_renders_every_placeholder() {
    let template =
        ArtifactTemplate::parse("s3://{bucket}/{environment}/{branch}/{repository}/{version}-{sha}.tgz").unwrap();
    let rendered = template.render(&ArtifactFields {
        bucket: "b",
        repository: "o/r",
        sha: "abc",
        version: "v1",
        branch: "main",
        environment: "prod",
    });
    assert_eq!(rendered, "s3://b/prod/main/o/r/v1-abc.tgz");
    assert!(ArtifactTemplate::parse("https://x/y").is_err());
}

#[test]
fn secrets_are_required_and_secrets_manager_is_preferred() {
    let vars = |pairs: &'static [(&'static str, &'static str)]| {
        move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    };
    let missing = SecretSource::from_vars(vars(&[]), GITHUB_WEBHOOK_SECRET).unwrap_err();
    assert_eq!(missing, SettingsError::MissingSecret(GITHUB_WEBHOOK_SECRET));
    assert!(missing.to_string().contains("GITHUB_WEBHOOK_SECRET_ID"));
    for blank in ["  ", " , ", ","] {
        let only = |key: &str| (key == GITHUB_WEBHOOK_SECRET).then(|| blank.to_string());
        let source = SecretSource::from_vars(only, GITHUB_WEBHOOK_SECRET);
        assert_eq!(source, Err(SettingsError::MissingSecret(GITHUB_WEBHOOK_SECRET)), "{blank:?}");
    }
    let inline = SecretSource::from_vars(vars(&[("STRIPE_WEBHOOK_SECRET", "a,b")]), STRIPE_WEBHOOK_SECRET).unwrap();
    assert!(matches!(inline, SecretSource::Inline(ref secret) if secret.expose_str() == "a,b"));
    let both = vars(&[("GITHUB_WEBHOOK_SECRET", "a"), ("GITHUB_WEBHOOK_SECRET_ID", "arn:x")]);
    assert_eq!(
        SecretSource::from_vars(both, GITHUB_WEBHOOK_SECRET).unwrap(),
        SecretSource::SecretsManager("arn:x".into())
    );
}

#[test]
fn settings_have_defaults_and_find_the_config_in_lambda() {
    let none = |_: &str| None;
    let s = Settings::from_vars(none);
    assert_eq!(s.table, Settings::DEFAULT_TABLE);
    assert_eq!(s.config_path, PathBuf::from("conveyor.toml"));
    let lambda = |name: &str| (name == "LAMBDA_TASK_ROOT").then(|| "/var/task".to_string());
    assert_eq!(Settings::from_vars(lambda).config_path, PathBuf::from("/var/task/conveyor.toml"));
}

#[test]
fn sites_are_checked_where_they_are_written() {
    let site = |extra: &str| {
        parse(&format!("[[site]]\nname = \"web\"\nbucket = \"acme-web\"\ndistribution = \"E2QWRUHEXAMPLE\"\n{extra}"))
    };
    let ok = site("").unwrap();
    assert_eq!((ok.sites[0].invalidation_budget, ok.sites[0].max_delete), (10, 256));
    assert_eq!(ok.site("web").map(|s| s.prefix.as_str()), Some(""));
    let problem = |text: Result<Config, ConfigError>| text.unwrap_err().to_string();
    let bad_bucket =
        problem(parse("[[site]]\nname = \"web\"\nbucket = \"Acme_Web\"\ndistribution = \"E2QWRUHEXAMPLE\"\n"));
    assert!(bad_bucket.contains("not an S3 bucket name") && bad_bucket.contains(":3:"), "{bad_bucket}");
    let bad_id =
        problem(parse("[[site]]\nname = \"web\"\nbucket = \"acme-web\"\ndistribution = \"d111.cloudfront.net\"\n"));
    assert!(bad_id.contains("not a CloudFront distribution id"), "{bad_id}");
    let bad_glob = problem(site("[[site.cache]]\nglob = \"assets/[\"\ncache_control = \"no-cache\"\n"));
    assert!(bad_glob.contains("glob `assets/[`"), "{bad_glob}");
    assert!(problem(site("prefix = \"/www\"\n")).contains("not a key prefix"));
    assert!(problem(site("invalidation_budget = 0\n")).contains("invalidation_budget must be from 1 to 3000"));
    assert!(problem(site("origin_path = \"a/\"\nprefix = \"b/\"\n")).contains("must be the start of prefix"));
    assert!(problem(site("[site.content_types]\n\".js\" = \"text/javascript\"\n")).contains("without its dot"));
    assert!(problem(site("[site.content_types]\nSVG = \"image/svg+xml\"\n")).contains("in lower case"));
    assert!(problem(site("region = \"europe\"\n")).contains("not an AWS region"));
    assert!(problem(site("precompressed = \"br\"\n")).contains("only \"gzip\""));
    assert_eq!(site("precompressed = \"gzip\"\n").unwrap().sites[0].precompressed.as_deref(), Some("gzip"));
    let shared = |a: &str, b: &str| {
        parse(&format!(
            "[[site]]\nname = \"a\"\nbucket = \"one\"\ndistribution = \"E2QWRUHEXAMPLE\"\nprefix = \"{a}\"\n[[site]]\nname = \"b\"\nbucket = \"one\"\ndistribution = \"E2QWRUHEXAMPLF\"\nprefix = \"{b}\"\n"
        ))
    };
    assert!(problem(shared("", "docs/")).contains("overlapping prefixes"));
    assert!(problem(shared("app/", "app/v2/")).contains("overlapping prefixes"));
    assert_eq!(shared("app/", "docs/").unwrap().sites.len(), 2);
    let twice = problem(parse(
        "[[site]]\nname = \"web\"\nbucket = \"a-web\"\ndistribution = \"E2QWRUHEXAMPLE\"\n[[site]]\nname = \"web\"\nbucket = \"b-web\"\ndistribution = \"E2QWRUHEXAMPLE\"\n",
    ));
    assert!(twice.contains("site `web` is defined twice"), "{twice}");
}

#[test]
fn checks_and_channels_are_read_as_the_issue_writes_them() {
    let text = r#"
[[channel]]
name = "team"
type = "slack"
secret = "conveyor/slack-team"

[[check]]
name = "edge"
url = "https://example.com/"
conditions = ["[STATUS] == 200"]

[[check]]
name = "api"
url = "https://api.example.com/health"
conditions = ["[STATUS] == 200", "[RESPONSE_TIME] < 500", "[BODY].status == UP"]
failure_threshold = 3
success_threshold = 2
repeat = "4h"
depends_on = ["edge"]
action = "Look at the API's logs; restart the service if it is stuck"
channels = ["team"]
"#;
    let config = parse(text).unwrap();
    let api = &config.checks[1];
    assert_eq!((api.conditions.len(), api.repeat, api.timeout), (3, Some(Seconds(4 * 3600)), Seconds(10)));
    assert_eq!(api.thresholds().repeat, Some(4 * 3600));
    assert_eq!(config.channels[0].kind, ChannelKind::Slack);
}

#[test]
fn check_mistakes_are_named_where_they_are_written() {
    let check = |extra: &str| {
        parse(&format!("[[check]]\nname = \"api\"\nurl = \"https://a/\"\nconditions = [\"[STATUS] == 200\"]\n{extra}"))
    };
    let problem = |r: Result<Config, ConfigError>| r.unwrap_err().to_string();
    let typo = problem(parse("[[check]]\nname = \"api\"\nurl = \"https://a/\"\nconditions = [\"[STATS] == 200\"]\n"));
    assert!(typo.contains("not a placeholder") && typo.contains(":4:"), "{typo}");
    assert!(problem(check("channels = [\"team\"]\n")).contains("no [[channel]] named `team`"));
    assert!(problem(check("depends_on = [\"edge\"]\n")).contains("which is no [[check]]"));
    assert!(problem(check("failure_threshold = 0\n")).contains("from 1"));
    let cycle = problem(parse(
        "[[check]]\nname = \"a\"\nurl = \"https://a/\"\nconditions = [\"[STATUS] == 200\"]\ndepends_on = [\"b\"]\n[[check]]\nname = \"b\"\nurl = \"https://b/\"\nconditions = [\"[STATUS] == 200\"]\ndepends_on = [\"a\"]\n",
    ));
    assert!(cycle.contains("depends on itself"), "{cycle}");
    let slack = problem(parse("[[channel]]\nname = \"team\"\ntype = \"slack\"\n"));
    assert!(slack.contains("needs `secret`"), "{slack}");
    let kind = problem(parse("[[channel]]\nname = \"team\"\ntype = \"pager\"\n"));
    assert!(kind.contains("pager"), "{kind}");
    let outside = problem(parse("[[channel]]\nname = \"team\"\ntype = \"slack\"\nsecret = \"slack-url\"\n"));
    assert!(outside.contains("must be named under `conveyor/`"), "{outside}");
    let unsigned =
        problem(parse("[[channel]]\nname = \"hook\"\ntype = \"webhook\"\nurl = \"https://h.example.com/\"\n"));
    assert!(unsigned.contains("HMAC signing key"), "{unsigned}");
    let arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:conveyor/slack-team-AbCdEf";
    assert!(parse(&format!("[[channel]]\nname = \"team\"\ntype = \"slack\"\nsecret = \"{arn}\"\n")).is_ok());
}
