//! When a TLS certificate expires, read from its DER bytes: just enough of X.509 to reach
//! `tbsCertificate.validity.notAfter` (RFC 5280, 4.1). Anything unexpected reads as
//! "unknown", never as a panic: the bytes come from whatever server a check points at.

/// The end of the certificate's validity, in Unix seconds; `None` when the bytes are not a
/// certificate this reader understands.
pub fn not_after(der: &[u8]) -> Option<i64> {
    let (certificate, _) = expect(der, SEQUENCE)?;
    let (tbs, _) = expect(certificate, SEQUENCE)?;
    let mut rest = tbs;
    // version [0] EXPLICIT, absent for v1 certificates
    if rest.first() == Some(&0xA0) {
        rest = tlv(rest)?.2;
    }
    let (_, rest) = expect(rest, INTEGER)?; // serialNumber
    let (_, rest) = expect(rest, SEQUENCE)?; // signature
    let (_, rest) = expect(rest, SEQUENCE)?; // issuer
    let (validity, _) = expect(rest, SEQUENCE)?;
    let (_, _, after_not_before) = tlv(validity)?;
    let (tag, time, _) = tlv(after_not_before)?;
    parse_time(tag, time)
}

const INTEGER: u8 = 0x02;
const SEQUENCE: u8 = 0x30;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// One DER element: its tag, its content and what follows it.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *input.first()?;
    let first = *input.get(1)?;
    let (length, header) = if first < 0x80 {
        (first as usize, 2)
    } else {
        let octets = (first & 0x7f) as usize;
        if octets == 0 || octets > 4 {
            return None;
        }
        let mut length = 0usize;
        for i in 0..octets {
            length = (length << 8) | *input.get(2 + i)? as usize;
        }
        (length, 2 + octets)
    };
    let end = header.checked_add(length)?;
    Some((tag, input.get(header..end)?, input.get(end..)?))
}

fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (found, content, rest) = tlv(input)?;
    (found == tag).then_some((content, rest))
}

/// `YYMMDDHHMMSSZ` (UTCTime: 50–99 are 19xx) or `YYYYMMDDHHMMSSZ` (GeneralizedTime).
fn parse_time(tag: u8, bytes: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(bytes).ok()?.strip_suffix('Z')?;
    let digits = |range: std::ops::Range<usize>| text.get(range)?.parse::<u32>().ok();
    let (year, rest) = match (tag, text.len()) {
        (UTC_TIME, 12) => {
            let yy = digits(0..2)? as i32;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, 2)
        }
        (GENERALIZED_TIME, 14) => (digits(0..4)? as i32, 4),
        _ => return None,
    };
    let month = time::Month::try_from(digits(rest..rest + 2)? as u8).ok()?;
    let date = time::Date::from_calendar_date(year, month, digits(rest + 2..rest + 4)? as u8).ok()?;
    let at = date
        .with_hms(
            digits(rest + 4..rest + 6)? as u8,
            digits(rest + 6..rest + 8)? as u8,
            digits(rest + 8..rest + 10)? as u8,
        )
        .ok()?;
    Some(at.assume_utc().unix_timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn element(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        if content.len() < 0x80 {
            out.push(content.len() as u8);
        } else {
            out.extend([0x82, (content.len() >> 8) as u8, content.len() as u8]);
        }
        out.extend_from_slice(content);
        out
    }

    /// A certificate's outline: what the reader walks past, and the validity it reads.
    fn certificate(versioned: bool, not_after: (u8, &str)) -> Vec<u8> {
        let mut tbs = Vec::new();
        if versioned {
            tbs.extend(element(0xA0, &element(INTEGER, &[2])));
        }
        tbs.extend(element(INTEGER, &[0x01, 0x23]));
        tbs.extend(element(SEQUENCE, &element(0x06, &[0x2a, 0x86, 0x48])));
        tbs.extend(element(SEQUENCE, &[0x31; 200])); // a long issuer: a two-octet length
        let validity = [element(UTC_TIME, b"250101000000Z"), element(not_after.0, not_after.1.as_bytes())].concat();
        tbs.extend(element(SEQUENCE, &validity));
        tbs.extend(element(SEQUENCE, &[]));
        element(SEQUENCE, &[element(SEQUENCE, &tbs), element(SEQUENCE, &[])].concat())
    }

    #[test]
    fn not_after_is_read_in_both_time_forms() {
        assert_eq!(not_after(&certificate(true, (UTC_TIME, "270115080000Z"))), Some(1_800_000_000));
        assert_eq!(not_after(&certificate(false, (GENERALIZED_TIME, "20270115080000Z"))), Some(1_800_000_000));
        assert_eq!(not_after(&certificate(true, (UTC_TIME, "991231235959Z"))), Some(946_684_799), "19xx");
    }

    #[test]
    fn anything_else_is_unknown_not_a_panic() {
        let good = certificate(true, (UTC_TIME, "270115080000Z"));
        for cut in 0..good.len() {
            assert_eq!(not_after(&good[..cut]), None, "cut at {cut}");
        }
        assert_eq!(not_after(&certificate(true, (UTC_TIME, "271315080000Z"))), None, "month 13");
        assert_eq!(not_after(&certificate(true, (UTC_TIME, "2701150800Z"))), None, "too short");
        assert_eq!(not_after(b"not a certificate"), None);
        assert_eq!(not_after(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None, "a length past the end");
    }
}
