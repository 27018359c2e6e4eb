//! Text that grows with its input (hosts named in a reason, a hook's output, a cause), kept
//! to a size every record can hold: DynamoDB refuses an item over 400 KB, and a record read
//! by every poll should stay far below that.

/// `text` cut to at most `max` characters (not bytes), ending in `…` when cut.
pub fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// How many names a reason or an alert lists before it counts the rest.
pub const NAMES_SHOWN: usize = 20;

/// `names` joined with `, `: all of them up to [`NAMES_SHOWN`], else the first ones and how
/// many more (`i-1, i-2 and 9998 more`). The full list stays where the names came from.
pub fn some_of<S: AsRef<str>>(names: &[S], separator: &str) -> String {
    let shown: Vec<&str> = names.iter().take(NAMES_SHOWN).map(AsRef::as_ref).collect();
    let rest = names.len().saturating_sub(NAMES_SHOWN);
    match rest {
        0 => shown.join(separator),
        more => format!("{} and {more} more", shown.join(separator)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_cut_on_characters_and_says_so() {
        assert_eq!(cut("short", 10), "short");
        assert_eq!(cut("ééééé", 3), "éé…");
    }

    #[test]
    fn a_long_list_names_the_first_and_counts_the_rest() {
        let hosts: Vec<String> = (0..10_000).map(|i| format!("i-{i:017x}")).collect();
        let listed = some_of(&hosts, ", ");
        assert!(listed.ends_with(" and 9980 more"), "{listed}");
        assert!(listed.len() < 600, "{} bytes", listed.len());
        assert_eq!(some_of(&hosts[..2], ", "), "i-00000000000000000, i-00000000000000001");
    }
}
