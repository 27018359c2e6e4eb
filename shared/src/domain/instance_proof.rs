//! How an agent on EC2 proves which instance it runs on, with no secret of Conveyor's.
//!
//! The agent signs an STS `GetCallerIdentity` request with its instance profile's
//! credentials and sends the signed request (never the credentials) with its first poll.
//! The function sends that request to STS, which checks the signature and answers with the
//! caller's ARN. EC2 names an instance profile's role session after the instance, so the
//! answer `arn:aws:sts::<account>:assumed-role/<role>/<instance-id>` says which instance
//! signed. (HashiCorp Vault's AWS IAM auth method works the same way.)
//!
//! What the function checks before it sends anything, here: the request is exactly
//! `GetCallerIdentity`, it goes to an STS endpoint (never to a host the agent picks), the
//! audience header naming this environment is among the signed headers (a request signed
//! for another service cannot be replayed here), and it is fresh. What it checks after, also
//! here: the ARN is an assumed role the stack trusts, and its session is the instance the
//! message speaks for.

/// The signed header that names what the proof is for.
pub const AUDIENCE_HEADER: &str = "x-conveyor-audience";

/// The only request a proof may be.
pub const GET_CALLER_IDENTITY: &str = "Action=GetCallerIdentity&Version=2011-06-15";

/// STS refuses a signature older than 15 minutes; the function checks the same itself, so
/// the rule holds whatever the STS endpoint (the emulator checks no signature).
pub const MAX_AGE_SECONDS: i64 = 15 * 60;

/// How far ahead of the function's clock a proof may be dated (clock skew), so a proof
/// minted in advance is not good for longer than one signed now.
pub const MAX_SKEW_SECONDS: i64 = 5 * 60;

/// Headers a proof may carry: the ones SigV4 signs for this request, and nothing a proxy
/// would act on.
const ALLOWED_HEADERS: [&str; 7] = [
    "authorization",
    "content-type",
    "host",
    "x-amz-content-sha256",
    "x-amz-date",
    "x-amz-security-token",
    AUDIENCE_HEADER,
];

/// A signed `GetCallerIdentity` request, as the agent sends it in its poll (`"proof"`).
pub use conveyor_protocol::InstanceProof;

/// What the audience header says for `environment`.
pub fn audience(environment: &str) -> String {
    format!("conveyor:{environment}")
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("the instance proof is not a signed STS GetCallerIdentity request: {0}")]
    Malformed(String),
    #[error(
        "the instance proof is signed for `{0}`, which is not an STS endpoint (the agent signs for STS in its region)"
    )]
    NotSts(String),
    #[error("the instance proof is for `{found}`, not for `{expected}`")]
    Audience { found: String, expected: String },
    #[error(
        "the instance proof was signed {age} s from now; a proof is good for 15 minutes after it is signed (is the instance's clock right?)"
    )]
    Stale { age: i64 },
    #[error("this instance proof was used already: sign a new one")]
    Used,
    #[error("the instance proof was signed by `{0}`, which is not an instance profile's role session")]
    NotAnInstance(String),
    #[error(
        "the instance proof was signed by role `{role}` in account {account}, which is not an agent role of this stack"
    )]
    RoleNotTrusted { account: String, role: String },
    #[error("the instance proof was signed by instance {signed}, not by {claimed}")]
    OtherInstance { signed: String, claimed: String },
}

/// A proof that passed [`check`]: where to send it, and when it was signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedProof {
    pub host: String,
    pub signed_at: i64,
}

/// Checks a proof before it is sent anywhere. It goes only to `own_sts_host` (the regional
/// STS endpoint the function uses, or the emulator locally) or to STS's global endpoint:
/// never to a host the sender picks.
pub fn check(
    proof: &InstanceProof,
    environment: &str,
    now: i64,
    own_sts_host: &str,
) -> Result<CheckedProof, ProofError> {
    let malformed = |what: &str| ProofError::Malformed(what.to_owned());
    if proof.body != GET_CALLER_IDENTITY {
        return Err(malformed("the body must be `Action=GetCallerIdentity&Version=2011-06-15`"));
    }
    if let Some(name) = proof.headers.keys().find(|name| !ALLOWED_HEADERS.contains(&name.as_str())) {
        return Err(ProofError::Malformed(format!("header `{name}` has no place in it")));
    }
    if proof.headers.values().map(String::len).sum::<usize>() > 8 * 1024 {
        return Err(malformed("its headers are larger than 8 KB"));
    }
    if proof.headers.values().any(|value| !value.bytes().all(|b| (0x20..0x7f).contains(&b))) {
        return Err(malformed("a header value is not printable ASCII"));
    }
    let header = |name: &str| proof.headers.get(name).map(String::as_str);
    let authorization = header("authorization").ok_or_else(|| malformed("it has no authorization header"))?;
    let signed = authorization
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or_else(|| malformed("it is not signed with AWS4-HMAC-SHA256"))?
        .split(',')
        .find_map(|part| part.trim().strip_prefix("SignedHeaders="))
        .ok_or_else(|| malformed("its authorization names no signed headers"))?;
    for needed in ["host", AUDIENCE_HEADER] {
        if !signed.split(';').any(|name| name == needed) {
            return Err(ProofError::Malformed(format!("header `{needed}` is not among the signed headers")));
        }
    }
    let expected = audience(environment);
    let found = header(AUDIENCE_HEADER).unwrap_or_default();
    if found != expected {
        return Err(ProofError::Audience { found: found.to_owned(), expected });
    }
    let signed_at = header("x-amz-date")
        .and_then(parse_amz_date)
        .ok_or_else(|| malformed("x-amz-date is missing or not YYYYMMDDTHHMMSSZ"))?;
    if now - signed_at > MAX_AGE_SECONDS || signed_at - now > MAX_SKEW_SECONDS {
        return Err(ProofError::Stale { age: signed_at - now });
    }
    let host = header("host").ok_or_else(|| malformed("it has no host header"))?;
    if host != own_sts_host && host != GLOBAL_STS_HOST {
        return Err(ProofError::NotSts(host.to_owned()));
    }
    Ok(CheckedProof { host: host.to_owned(), signed_at })
}

/// STS's global endpoint, which older SDKs sign for.
const GLOBAL_STS_HOST: &str = "sts.amazonaws.com";

/// A proof may enrol once: one signed no later than the proof behind the current enrolment
/// is a replay (`proven_at` is that proof's signing time).
pub fn fresh(signed_at: i64, proven_at: Option<i64>) -> Result<(), ProofError> {
    match proven_at {
        Some(before) if signed_at <= before => Err(ProofError::Used),
        _ => Ok(()),
    }
}

fn parse_amz_date(value: &str) -> Option<i64> {
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    Some(time::PrimitiveDateTime::parse(value, format).ok()?.assume_utc().unix_timestamp())
}

/// An IAM role the stack trusts to run agents: `arn:<partition>:iam::<account>:role/<path/><name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRole {
    pub account: String,
    /// The role's name, without its path (an assumed-role ARN drops the path).
    pub name: String,
}

impl std::str::FromStr for AgentRole {
    type Err = String;

    fn from_str(arn: &str) -> Result<Self, String> {
        let invalid = || format!("`{arn}` is not an IAM role ARN (arn:aws:iam::123456789012:role/conveyor-agent)");
        let mut parts = arn.trim().splitn(6, ':');
        let (Some("arn"), Some(_partition), Some("iam"), Some(""), Some(account), Some(resource)) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid());
        };
        let name = resource.strip_prefix("role/").and_then(|path| path.rsplit('/').next()).unwrap_or_default();
        if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) || name.is_empty() {
            return Err(invalid());
        }
        Ok(Self { account: account.to_owned(), name: name.to_owned() })
    }
}

/// Decides whose instance signed: the caller ARN STS answered must be a session of a trusted
/// role named after `claimed` (the instance the message speaks for).
pub fn admit(caller_arn: &str, roles: &[AgentRole], claimed: &str) -> Result<(), ProofError> {
    let not_an_instance = || ProofError::NotAnInstance(caller_arn.to_owned());
    let mut parts = caller_arn.splitn(6, ':');
    let (Some("arn"), Some(_partition), Some("sts"), Some(""), Some(account), Some(resource)) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(not_an_instance());
    };
    let mut resource = resource.splitn(3, '/');
    let (Some("assumed-role"), Some(role), Some(session)) = (resource.next(), resource.next(), resource.next()) else {
        return Err(not_an_instance());
    };
    if !roles.iter().any(|trusted| trusted.account == account && trusted.name == role) {
        return Err(ProofError::RoleNotTrusted { account: account.to_owned(), role: role.to_owned() });
    }
    if session != claimed {
        return Err(ProofError::OtherInstance { signed: session.to_owned(), claimed: claimed.to_owned() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_795_000_000;
    const STS: &str = "sts.eu-west-1.amazonaws.com";

    fn stamp(at: i64) -> String {
        let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
        time::OffsetDateTime::from_unix_timestamp(at).unwrap().format(format).unwrap()
    }

    fn proof(environment: &str, host: &str, signed_at: i64) -> InstanceProof {
        let headers = [
            ("host", host.to_owned()),
            ("content-type", "application/x-www-form-urlencoded; charset=utf-8".into()),
            ("x-amz-date", stamp(signed_at)),
            ("x-amz-security-token", "session".into()),
            (AUDIENCE_HEADER, audience(environment)),
            (
                "authorization",
                "AWS4-HMAC-SHA256 Credential=ASIA/20261118/eu-west-1/sts/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-security-token;x-conveyor-audience, Signature=ab".into(),
            ),
        ];
        InstanceProof {
            headers: headers.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            body: GET_CALLER_IDENTITY.into(),
        }
    }

    #[test]
    fn a_fresh_proof_for_this_environment_goes_to_the_sts_it_was_signed_for() {
        let checked = check(&proof("production", STS, NOW - 60), "production", NOW, STS);
        assert_eq!(checked, Ok(CheckedProof { host: STS.into(), signed_at: NOW - 60 }));
        let local = proof("production", "127.0.0.1:5000", NOW);
        assert_eq!(check(&local, "production", NOW, "127.0.0.1:5000").map(|c| c.host), Ok("127.0.0.1:5000".into()));
        let global = check(&proof("production", "sts.amazonaws.com", NOW), "production", NOW, STS);
        assert_eq!(global.map(|c| c.host), Ok("sts.amazonaws.com".into()));
    }

    #[test]
    fn a_proof_never_sends_the_function_anywhere_but_sts() {
        let hosts = [
            "169.254.169.254",
            "sts.eu-west-1.amazonaws.com.evil.example",
            "sts.s3.amazonaws.com",
            "sts.us-east-1.amazonaws.com",
            "example.com",
        ];
        for host in hosts {
            let refused = check(&proof("production", host, NOW), "production", NOW, STS);
            assert_eq!(refused, Err(ProofError::NotSts(host.into())));
        }
    }

    #[test]
    fn a_proof_for_another_environment_or_unsigned_audience_is_refused() {
        let other = check(&proof("staging", STS, NOW), "production", NOW, STS);
        assert!(matches!(other, Err(ProofError::Audience { .. })), "{other:?}");
        let mut unsigned = proof("production", STS, NOW);
        let authorization = unsigned.headers["authorization"].replace(";x-conveyor-audience", "");
        unsigned.headers.insert("authorization".into(), authorization);
        let refused = check(&unsigned, "production", NOW, STS).unwrap_err();
        assert!(refused.to_string().contains("x-conveyor-audience"), "{refused}");
    }

    #[test]
    fn only_a_fresh_get_caller_identity_is_a_proof() {
        assert!(check(&proof("production", STS, NOW + 240), "production", NOW, STS).is_ok(), "clock skew within 5 min");
        assert_eq!(
            check(&proof("production", STS, NOW + 600), "production", NOW, STS),
            Err(ProofError::Stale { age: 600 })
        );
        let mut injected = proof("production", STS, NOW);
        injected.headers.insert("x-amz-security-token".into(), "a\r\nx-evil: 1".into());
        assert!(matches!(check(&injected, "production", NOW, STS), Err(ProofError::Malformed(_))));
        assert_eq!(
            check(&proof("production", STS, NOW - 901), "production", NOW, STS),
            Err(ProofError::Stale { age: -901 })
        );
        let mut other_action = proof("production", STS, NOW);
        other_action.body = "Action=AssumeRole&Version=2011-06-15".into();
        assert!(matches!(check(&other_action, "production", NOW, STS), Err(ProofError::Malformed(_))));
        let mut extra = proof("production", STS, NOW);
        extra.headers.insert("transfer-encoding".into(), "chunked".into());
        assert!(matches!(check(&extra, "production", NOW, STS), Err(ProofError::Malformed(_))));
        let mut unsigned = proof("production", STS, NOW);
        unsigned.headers.remove("authorization");
        assert!(matches!(check(&unsigned, "production", NOW, STS), Err(ProofError::Malformed(_))));
    }

    #[test]
    fn a_proof_enrols_once() {
        assert_eq!(fresh(NOW, None), Ok(()));
        assert_eq!(fresh(NOW, Some(NOW - 1)), Ok(()));
        assert_eq!(fresh(NOW, Some(NOW)), Err(ProofError::Used));
        assert_eq!(fresh(NOW - 5, Some(NOW)), Err(ProofError::Used));
    }

    #[test]
    fn the_session_of_a_trusted_role_must_be_the_instance_spoken_for() {
        let roles: Vec<AgentRole> = vec!["arn:aws:iam::123456789012:role/ops/conveyor-agent".parse().unwrap()];
        let arn = "arn:aws:sts::123456789012:assumed-role/conveyor-agent/i-0123456789abcdef0";
        assert_eq!(admit(arn, &roles, "i-0123456789abcdef0"), Ok(()));
        assert_eq!(
            admit(arn, &roles, "i-0fffffffffffffff0"),
            Err(ProofError::OtherInstance {
                signed: "i-0123456789abcdef0".into(),
                claimed: "i-0fffffffffffffff0".into()
            })
        );
        let other_account = "arn:aws:sts::999999999999:assumed-role/conveyor-agent/i-0123456789abcdef0";
        assert!(matches!(admit(other_account, &roles, "i-0123456789abcdef0"), Err(ProofError::RoleNotTrusted { .. })));
        let other_role = "arn:aws:sts::123456789012:assumed-role/admin/i-0123456789abcdef0";
        assert!(matches!(admit(other_role, &roles, "i-0123456789abcdef0"), Err(ProofError::RoleNotTrusted { .. })));
        for user in ["arn:aws:iam::123456789012:user/alice", "arn:aws:sts::123456789012:federated-user/bob"] {
            assert!(matches!(admit(user, &roles, "i-0123456789abcdef0"), Err(ProofError::NotAnInstance(_))));
        }
    }

    #[test]
    fn agent_roles_are_role_arns() {
        let role: AgentRole = "arn:aws-cn:iam::123456789012:role/conveyor-agent".parse().unwrap();
        assert_eq!((role.account.as_str(), role.name.as_str()), ("123456789012", "conveyor-agent"));
        for bad in [
            "conveyor-agent",
            "arn:aws:iam::123:role/x",
            "arn:aws:iam::123456789012:user/x",
            "arn:aws:sts::123456789012:role/x",
        ] {
            assert!(bad.parse::<AgentRole>().is_err(), "{bad}");
        }
    }
}
