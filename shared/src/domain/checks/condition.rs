//! Health-check conditions in Gatus's syntax, which users of that tool already know:
//! `[STATUS] == 200`, `[RESPONSE_TIME] < 500`, `[BODY].status == UP`,
//! `[CERTIFICATE_EXPIRATION] > 48h`, `len([BODY].items) > 0`, `has([BODY].errors) == false`,
//! `[BODY] == pat(*healthy*)`, `[STATUS] == any(200, 204)`.
//!
//! A condition is parsed once, when `conveyor.toml` is read, so a typo is a configuration
//! error with its line, never a check that always fails. Evaluating one is pure: it gets
//! what a run observed and answers whether it held and, when not, what was seen.

use std::fmt;
use std::time::Duration;

use serde_json::Value;

/// What one run of a check observed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observation {
    pub status: Option<u16>,
    pub response_time: Duration,
    pub body: String,
    /// Time left on the server's TLS certificate.
    pub certificate_expiration: Option<Duration>,
    /// Whether a connection was made at all.
    pub connected: bool,
    pub ip: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operator {
    Equal,
    NotEqual,
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
}

impl Operator {
    const ALL: [(&'static str, Operator); 6] = [
        ("==", Operator::Equal),
        ("!=", Operator::NotEqual),
        ("<=", Operator::LessOrEqual),
        (">=", Operator::GreaterOrEqual),
        ("<", Operator::Less),
        (">", Operator::Greater),
    ];
}

/// One side of a condition.
#[derive(Debug, Clone, PartialEq)]
enum Operand {
    Status,
    ResponseTime,
    Body(Vec<PathStep>),
    CertificateExpiration,
    Connected,
    Ip,
    Len(Box<Operand>),
    Has(Box<Operand>),
    Pattern(String),
    Any(Vec<String>),
    Literal(String),
}

#[derive(Debug, Clone, PartialEq)]
enum PathStep {
    Field(String),
    Index(usize),
}

/// A parsed condition.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    text: String,
    left: Operand,
    operator: Operator,
    right: Operand,
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Condition {
    /// Parses `text`; the error says what is wrong in words a user can act on.
    pub fn parse(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        let (index, symbol, operator) = Operator::ALL
            .iter()
            .filter_map(|(symbol, op)| trimmed.find(symbol).map(|i| (i, *symbol, *op)))
            .min_by_key(|(i, symbol, _)| (*i, std::cmp::Reverse(symbol.len())))
            .ok_or_else(|| format!("`{trimmed}` has no operator: write ==, !=, <, <=, > or >="))?;
        let left = operand(trimmed[..index].trim(), trimmed)?;
        let right = operand(trimmed[index + symbol.len()..].trim(), trimmed)?;
        if matches!(left, Operand::Literal(_) | Operand::Pattern(_) | Operand::Any(_)) {
            return Err(format!("`{trimmed}`: the left side must be a placeholder like [STATUS] or [BODY].field"));
        }
        let ordered = !matches!(operator, Operator::Equal | Operator::NotEqual);
        if ordered && matches!(right, Operand::Pattern(_) | Operand::Any(_)) {
            return Err(format!("`{trimmed}`: pat() and any() compare with == or != only"));
        }
        Ok(Self { text: trimmed.to_owned(), left, operator, right })
    }

    /// Whether the condition holds for `seen`; when not, what the left side was.
    pub fn evaluate(&self, seen: &Observation) -> Result<(), String> {
        let left = resolve(&self.left, seen);
        let holds = match (&self.right, self.operator) {
            (Operand::Pattern(pattern), op) => matches_pattern(pattern, &left.text()) == (op == Operator::Equal),
            (Operand::Any(options), op) => options.iter().any(|o| equal(&left, o)) == (op == Operator::Equal),
            (right, op) => {
                let right = resolve(right, seen);
                compare(&left, &right, op)
            }
        };
        if holds {
            return Ok(());
        }
        let was = match (&self.left, &left) {
            // Time left on a certificate reads as a duration ("4days 23h"), not milliseconds.
            // Whole hours past a day, whole minutes below: the cause is stored with the
            // check's state, and a cause that changed every run would be a write every run.
            (Operand::CertificateExpiration, Resolved::Number(ms)) => {
                let seconds = (*ms / 1000.0) as u64;
                let unit = if seconds >= 86_400 { 3600 } else { 60 };
                humantime::format_duration(std::time::Duration::from_secs(seconds / unit * unit)).to_string()
            }
            _ => left.shown(),
        };
        Err(format!("{} (was {was})", self.text))
    }
}

/// A resolved value: a number when it reads as one (durations in milliseconds), else text.
#[derive(Debug, Clone, PartialEq)]
enum Resolved {
    Number(f64),
    Text(String),
    Missing,
}

impl Resolved {
    fn text(&self) -> String {
        match self {
            Resolved::Number(n) if n.fract() == 0.0 => format!("{n:.0}"),
            Resolved::Number(n) => n.to_string(),
            Resolved::Text(t) => t.clone(),
            Resolved::Missing => String::new(),
        }
    }

    fn shown(&self) -> String {
        match self {
            Resolved::Missing => "missing".into(),
            other => {
                let text = other.text();
                if text.chars().count() > 80 {
                    format!("{}…", text.chars().take(80).collect::<String>())
                } else {
                    text
                }
            }
        }
    }

    fn number(&self) -> Option<f64> {
        match self {
            Resolved::Number(n) => Some(*n),
            Resolved::Text(t) => number_of(t),
            Resolved::Missing => None,
        }
    }
}

/// A number, or a duration (`48h`, `500ms`) in milliseconds.
fn number_of(text: &str) -> Option<f64> {
    let text = text.trim();
    text.parse::<f64>().ok().or_else(|| humantime::parse_duration(text).ok().map(|d| d.as_millis() as f64))
}

fn equal(left: &Resolved, right: &str) -> bool {
    match (left.number(), number_of(right)) {
        (Some(a), Some(b)) => a == b,
        _ => left.text() == right.trim(),
    }
}

fn compare(left: &Resolved, right: &Resolved, operator: Operator) -> bool {
    if operator == Operator::Equal {
        return *left != Resolved::Missing && equal(left, &right.text());
    }
    if operator == Operator::NotEqual {
        return !equal(left, &right.text());
    }
    let (Some(a), Some(b)) = (left.number(), right.number()) else { return false };
    match operator {
        Operator::Less => a < b,
        Operator::LessOrEqual => a <= b,
        Operator::Greater => a > b,
        Operator::GreaterOrEqual => a >= b,
        Operator::Equal | Operator::NotEqual => false,
    }
}

fn matches_pattern(pattern: &str, text: &str) -> bool {
    let options = glob::MatchOptions { case_sensitive: true, require_literal_separator: false, ..Default::default() };
    glob::Pattern::new(pattern).is_ok_and(|p| p.matches_with(text, options))
}

fn resolve(operand: &Operand, seen: &Observation) -> Resolved {
    match operand {
        Operand::Status => seen.status.map_or(Resolved::Missing, |s| Resolved::Number(f64::from(s))),
        Operand::ResponseTime => Resolved::Number(seen.response_time.as_millis() as f64),
        Operand::CertificateExpiration => {
            seen.certificate_expiration.map_or(Resolved::Missing, |d| Resolved::Number(d.as_millis() as f64))
        }
        Operand::Connected => Resolved::Text(seen.connected.to_string()),
        Operand::Ip => seen.ip.clone().map_or(Resolved::Missing, Resolved::Text),
        Operand::Body(path) if path.is_empty() => Resolved::Text(seen.body.clone()),
        Operand::Body(path) => match body_at(&seen.body, path) {
            Some(Value::String(s)) => Resolved::Text(s),
            Some(Value::Number(n)) => n.as_f64().map_or(Resolved::Missing, Resolved::Number),
            Some(Value::Null) | None => Resolved::Missing,
            Some(other) => Resolved::Text(other.to_string()),
        },
        Operand::Len(inner) => match inner.as_ref() {
            Operand::Body(path) if !path.is_empty() => match body_at(&seen.body, path) {
                Some(Value::Array(items)) => Resolved::Number(items.len() as f64),
                Some(Value::Object(fields)) => Resolved::Number(fields.len() as f64),
                Some(Value::String(s)) => Resolved::Number(s.chars().count() as f64),
                _ => Resolved::Missing,
            },
            other => Resolved::Number(resolve(other, seen).text().chars().count() as f64),
        },
        Operand::Has(inner) => match inner.as_ref() {
            Operand::Body(path) => Resolved::Text(body_at(&seen.body, path).is_some().to_string()),
            other => Resolved::Text((resolve(other, seen) != Resolved::Missing).to_string()),
        },
        Operand::Literal(text) | Operand::Pattern(text) => Resolved::Text(text.clone()),
        Operand::Any(options) => Resolved::Text(options.join(", ")),
    }
}

fn body_at(body: &str, path: &[PathStep]) -> Option<Value> {
    let mut value: Value = serde_json::from_str(body).ok()?;
    for step in path {
        value = match step {
            PathStep::Field(name) => value.get_mut(name)?.take(),
            PathStep::Index(i) => value.get_mut(*i)?.take(),
        };
    }
    Some(value)
}

fn operand(text: &str, whole: &str) -> Result<Operand, String> {
    if text.is_empty() {
        return Err(format!("`{whole}` is missing a side of its comparison"));
    }
    let call =
        |name: &str| text.strip_prefix(name).and_then(|rest| rest.strip_prefix('(')).and_then(|r| r.strip_suffix(')'));
    if let Some(inner) = call("len") {
        return Ok(Operand::Len(Box::new(operand(inner.trim(), whole)?)));
    }
    if let Some(inner) = call("has") {
        return Ok(Operand::Has(Box::new(operand(inner.trim(), whole)?)));
    }
    if let Some(inner) = call("pat") {
        return Ok(Operand::Pattern(inner.trim().to_owned()));
    }
    if let Some(inner) = call("any") {
        return Ok(Operand::Any(inner.split(',').map(|o| o.trim().to_owned()).collect()));
    }
    let upper = text.to_ascii_uppercase();
    let placeholder = |name: &str| upper == name;
    if placeholder("[STATUS]") {
        return Ok(Operand::Status);
    }
    if placeholder("[RESPONSE_TIME]") {
        return Ok(Operand::ResponseTime);
    }
    if placeholder("[CERTIFICATE_EXPIRATION]") {
        return Ok(Operand::CertificateExpiration);
    }
    if placeholder("[CONNECTED]") {
        return Ok(Operand::Connected);
    }
    if placeholder("[IP]") {
        return Ok(Operand::Ip);
    }
    if upper.starts_with("[BODY]") {
        return body_path(&text["[BODY]".len()..], whole).map(Operand::Body);
    }
    if text.starts_with('[') {
        return Err(format!(
            "`{whole}`: {text} is not a placeholder; use [STATUS], [RESPONSE_TIME], [BODY], [CERTIFICATE_EXPIRATION], [CONNECTED] or [IP]"
        ));
    }
    Ok(Operand::Literal(text.to_owned()))
}

/// `.a.b[0]` after `[BODY]`.
fn body_path(text: &str, whole: &str) -> Result<Vec<PathStep>, String> {
    let mut steps = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('.') {
            let end = after.find(['.', '[']).unwrap_or(after.len());
            if end == 0 {
                return Err(format!("`{whole}`: an empty field name in {text}"));
            }
            steps.push(PathStep::Field(after[..end].to_owned()));
            rest = &after[end..];
        } else if let Some(after) = rest.strip_prefix('[') {
            let end = after.find(']').ok_or_else(|| format!("`{whole}`: a `[` without its `]` in {text}"))?;
            let index =
                after[..end].trim().parse().map_err(|_| format!("`{whole}`: `{}` is not an index", &after[..end]))?;
            steps.push(PathStep::Index(index));
            rest = &after[end + 1..];
        } else {
            return Err(format!("`{whole}`: write [BODY] paths as [BODY].field[0].other"));
        }
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(status: u16, millis: u64, body: &str) -> Observation {
        Observation {
            status: Some(status),
            response_time: Duration::from_millis(millis),
            body: body.into(),
            certificate_expiration: Some(Duration::from_secs(72 * 3600)),
            connected: true,
            ip: Some("127.0.0.1".into()),
        }
    }

    fn holds(condition: &str, observation: &Observation) -> Result<(), String> {
        Condition::parse(condition).unwrap().evaluate(observation)
    }

    #[test]
    fn the_documented_examples_hold_and_fail_as_gatus_has_them() {
        let ok = seen(200, 120, r#"{"status": "UP", "items": [1, 2, 3], "db": {"latency": 4}}"#);
        for condition in [
            "[STATUS] == 200",
            "[RESPONSE_TIME] < 500",
            "[BODY].status == UP",
            "[CERTIFICATE_EXPIRATION] > 48h",
            "len([BODY].items) == 3",
            "has([BODY].errors) == false",
            "[BODY].items[1] == 2",
            "[BODY].db.latency <= 4",
            "[STATUS] == any(200, 204)",
            "[BODY] == pat(*\"UP\"*)",
            "[CONNECTED] == true",
            "[STATUS] != 500",
        ] {
            assert_eq!(holds(condition, &ok), Ok(()), "{condition}");
        }
        let bad = seen(503, 900, r#"{"status": "DOWN"}"#);
        assert_eq!(holds("[STATUS] == 200", &bad), Err("[STATUS] == 200 (was 503)".into()));
        assert_eq!(holds("[RESPONSE_TIME] < 500", &bad), Err("[RESPONSE_TIME] < 500 (was 900)".into()));
        assert_eq!(holds("[BODY].status == UP", &bad), Err("[BODY].status == UP (was DOWN)".into()));
        assert_eq!(holds("[BODY].items[0] == 1", &bad), Err("[BODY].items[0] == 1 (was missing)".into()));
        assert!(holds("[STATUS] == any(200, 204)", &bad).is_err());
    }

    #[test]
    fn a_run_that_could_not_connect_fails_every_status_condition() {
        let refused = Observation { connected: false, ..Observation::default() };
        assert!(holds("[STATUS] == 200", &refused).is_err());
        assert!(holds("[CONNECTED] == true", &refused).is_err());
        assert!(holds("[CERTIFICATE_EXPIRATION] > 48h", &refused).is_err(), "no certificate seen");
    }

    #[test]
    fn typos_are_refused_with_what_to_write() {
        assert!(Condition::parse("[STATUS] 200").unwrap_err().contains("no operator"));
        assert!(Condition::parse("[STATS] == 200").unwrap_err().contains("not a placeholder"));
        assert!(Condition::parse("200 == [STATUS]").unwrap_err().contains("left side"));
        assert!(Condition::parse("[BODY].a[x] == 1").unwrap_err().contains("not an index"));
        assert!(Condition::parse("[STATUS] < any(200)").unwrap_err().contains("== or != only"));
        assert!(Condition::parse("[STATUS] == ").unwrap_err().contains("missing a side"));
        assert_eq!(Condition::parse("  [status] >= 200 ").unwrap().to_string(), "[status] >= 200");
    }
}
