//! The values `conveyor.toml` writes in more than one form: wave sizes and durations.

use super::*;

/// A wave's size or a minimum: a number of instances (`1`, `"3"`) or a share (`"50%"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaveSize {
    Count(u32),
    Percent(u8),
}

impl WaveSize {
    /// How many of `fleet` instances this size stands for. Percentages round up, so `"1%"` of
    /// a small fleet is still one instance.
    pub fn of(self, fleet: usize) -> usize {
        match self {
            WaveSize::Count(n) => (n as usize).min(fleet),
            WaveSize::Percent(p) => (fleet * p as usize).div_ceil(100),
        }
    }

    fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Some(percent) = text.strip_suffix('%') {
            match percent.trim().parse::<u8>() {
                Ok(p) if (1..=100).contains(&p) => Ok(WaveSize::Percent(p)),
                _ => Err(format!("`{text}` is not a share from 1% to 100%")),
            }
        } else {
            text.parse::<u32>()
                .map(WaveSize::Count)
                .map_err(|_| format!("`{text}` is neither a number of instances nor a share like \"50%\""))
        }
    }
}

impl fmt::Display for WaveSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaveSize::Count(n) => write!(f, "{n}"),
            WaveSize::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl<'de> Deserialize<'de> for WaveSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Number(i64),
            Text(String),
        }
        match Either::deserialize(deserializer)
            .map_err(|_| de::Error::custom("expected a number of instances or a share like \"50%\""))?
        {
            Either::Number(n) => u32::try_from(n)
                .map(WaveSize::Count)
                .map_err(|_| de::Error::custom(format!("{n} is not a number of instances"))),
            Either::Text(text) => WaveSize::parse(&text).map_err(de::Error::custom),
        }
    }
}

/// A whole number of seconds, written as people write durations (`"90s"`, `"10m"`,
/// `"1h30m"`, `"2d"`) or as a bare number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seconds(pub u64);

impl Seconds {
    /// A bare number is seconds; anything else is read by `humantime` (units from `ms` to
    /// `y`, combined as in `1h30m`), and must come to whole seconds.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Ok(seconds) = text.parse::<u64>() {
            return Ok(Seconds(seconds));
        }
        let duration = humantime::parse_duration(text)
            .map_err(|err| format!("`{text}` is not a duration like \"90s\", \"10m\" or \"1h30m\": {err}"))?;
        if duration.subsec_nanos() != 0 {
            return Err(format!("`{text}` is not a whole number of seconds"));
        }
        Ok(Seconds(duration.as_secs()))
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Number(u64),
            Text(String),
        }
        match Either::deserialize(deserializer)
            .map_err(|_| de::Error::custom("expected a duration like \"30s\", \"10m\" or \"1h\""))?
        {
            Either::Number(n) => Ok(Seconds(n)),
            Either::Text(text) => Seconds::parse(&text).map_err(de::Error::custom),
        }
    }
}
