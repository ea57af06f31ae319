//! Timestamps written the way ox-html writes them: not copied from the source but re-built by
//! Org's interpreter (`org-element-timestamp-interpreter`, Org 9.5) from the parsed fields.
//! So the weekday is computed from the date (added, corrected, `fri.` normalised), an
//! impossible date rolls over as `encode-time` does (`2024-02-30` → `2024-03-01`), the repeater
//! is written before the warning, a time range `10:00-11:00` becomes a range of two full
//! timestamps each carrying the repeater, and `--` is the en dash `&#x2013;`.
//!
//! `raw` is what `inline.rs` recognised as one timestamp or a `<a>--<b>` range (bracket to
//! bracket). Every step is a bounded forward scan of `raw`: linear, no recursion.

use super::util::esc_text;

/// Date and optional time of one `YYYY-MM-DD [DAY] [H:MM]` (`org-parse-time-string`, nodefault).
struct Stamp {
    y: i64,
    m: i64,
    d: i64,
    time: Option<(i64, i64)>,
}

fn digits(b: &[u8], i: usize, n: usize) -> Option<i64> {
    if i + n > b.len() || !b[i..i + n].iter().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some(b[i..i + n].iter().fold(0i64, |a, c| a * 10 + (c - b'0') as i64))
}

/// `org-ts-regexp0` on the inside of one timestamp (the date starts right after the bracket).
fn parse_stamp(s: &[u8]) -> Option<Stamp> {
    let y = digits(s, 0, 4)?;
    let m = if s.get(4) == Some(&b'-') { digits(s, 5, 2)? } else { return None };
    let d = if s.get(7) == Some(&b'-') { digits(s, 8, 2)? } else { return None };
    // Optional ` +DAYNAME` (no digits, `]`, `+`, `>`, `-`, space or newline), then ` +H{1,2}:MM`.
    let time_at = |k: usize| -> Option<(i64, i64)> {
        let mut k = k;
        if s.get(k) != Some(&b' ') {
            return None;
        }
        while s.get(k) == Some(&b' ') {
            k += 1;
        }
        let h = s[k..].iter().take_while(|c| c.is_ascii_digit()).count();
        if (h == 1 || h == 2) && s.get(k + h) == Some(&b':') {
            let hh = digits(s, k, h)?;
            let mm = digits(s, k + h + 1, 2)?;
            return Some((hh, mm));
        }
        None
    };
    let mut time = None;
    let mut k = 10;
    while s.get(k) == Some(&b' ') {
        k += 1;
    }
    let name_start = k;
    while k < s.len() && !matches!(s[k], b']' | b'+' | b'>' | b'\r' | b'\n' | b' ' | b'-' | b'0'..=b'9') {
        k += 1;
    }
    if k > name_start && name_start > 10 {
        time = time_at(k);
    }
    if time.is_none() {
        time = time_at(10);
    }
    Some(Stamp { y, m, d, time })
}

/// Days since 1970-01-01 of a proleptic Gregorian date (month 1..=12).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn push_padded(out: &mut String, v: i64, width: usize) {
    let s = v.to_string();
    for _ in s.len()..width {
        out.push('0');
    }
    out.push_str(&s);
}

/// One half as `build-ts-string` makes it: `format-time-string` of the normalised time
/// (`encode-time` rolls day 0, month 13, 25:00 over), then the repeater and the warning.
fn build(out: &mut String, st: &Stamp, time: Option<(i64, i64)>, active: bool, repeat: &str, warning: &str) {
    let (hh, mm) = time.unwrap_or((0, 0));
    let months = st.y * 12 + (st.m - 1);
    let day0 = days_from_civil(months.div_euclid(12), months.rem_euclid(12) + 1, 1) + st.d - 1;
    let total = day0 * 1440 + hh * 60 + mm;
    let days = total.div_euclid(1440);
    let mins = total.rem_euclid(1440);
    let (y, m, d) = civil_from_days(days);
    out.push(if active { '<' } else { '[' });
    push_padded(out, y, 4);
    out.push('-');
    push_padded(out, m, 2);
    out.push('-');
    push_padded(out, d, 2);
    out.push(' ');
    out.push_str(["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][days.rem_euclid(7) as usize]);
    if time.is_some() {
        out.push(' ');
        push_padded(out, mins / 60, 2);
        out.push(':');
        push_padded(out, mins % 60, 2);
    }
    for s in [repeat, warning] {
        if !s.is_empty() {
            out.push(' ');
            out.push_str(s);
        }
    }
    out.push(if active { '>' } else { ']' });
}

/// A number as `number-to-string (string-to-number …)` gives it back: leading zeros dropped.
fn push_number(out: &mut String, ds: &[u8]) {
    let k = ds.iter().take_while(|&&c| c == b'0').count().min(ds.len() - 1);
    out.push_str(std::str::from_utf8(&ds[k..]).unwrap_or("0"));
}

/// The first `(-)?-([0-9]+)([hdwmy])` (warning) or `([.+]?\+)([0-9]+)([hdwmy])` (repeater)
/// in `raw`, written back in Org's canonical form.
fn cookie(raw: &[u8], sign: u8) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == sign {
            let n = raw[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
            let u = i + 1 + n;
            if n > 0 && u < raw.len() && matches!(raw[u], b'h' | b'd' | b'w' | b'm' | b'y') {
                // The prefix before this sign: leftmost match, so a doubled sign belongs to it.
                let lead = if i > 0 && (raw[i - 1] == sign || (sign == b'+' && raw[i - 1] == b'.')) { Some(raw[i - 1]) } else { None };
                match (sign, lead) {
                    (b'-', Some(_)) => out.push_str("--"),
                    (b'-', None) => out.push('-'),
                    (_, Some(b'.')) => out.push_str(".+"),
                    (_, Some(_)) => out.push_str("++"),
                    _ => out.push('+'),
                }
                push_number(&mut out, &raw[i + 1..u]);
                out.push(raw[u] as char);
                return out;
            }
        }
        i += 1;
    }
    out
}

/// Writes the timestamp (or range) `raw` as ox-html does, escaped, `--` as `&#x2013;`.
/// Returns false (writing nothing) when `raw` does not parse, so the caller can copy it.
pub fn push_interpreted(out: &mut String, raw: &str) -> bool {
    let b = raw.as_bytes();
    if b.len() < 12 {
        return false;
    }
    let active = b[0] == b'<';
    let close = if active { b'>' } else { b']' };
    let first_end = match b.iter().position(|&c| c == close) {
        Some(p) => p,
        None => return false,
    };
    let start = match parse_stamp(&b[1..first_end]) {
        Some(s) => s,
        None => return false,
    };
    let end = if first_end + 3 < b.len() && b[first_end + 1] == b'-' && b[first_end + 2] == b'-' {
        parse_stamp(&b[first_end + 4..b.len() - 1])
    } else {
        None
    };
    let time_range = time_range(&b[1..first_end]);
    let repeat = cookie(b, b'+');
    let warning = cookie(b, b'-');
    let mut s = String::new();
    if end.is_some() || time_range.is_some() {
        let end_stamp = end.unwrap_or(Stamp { y: start.y, m: start.m, d: start.d, time: None });
        let end_time = end_stamp.time.or(time_range).or(start.time);
        build(&mut s, &start, start.time, active, &repeat, &warning);
        s.push_str("--");
        build(&mut s, &end_stamp, end_time, active, &repeat, &warning);
    } else {
        build(&mut s, &start, start.time, active, &repeat, &warning);
    }
    push_with_en_dashes(out, &s);
    true
}

/// Escaped text with every `--` as `&#x2013;` (ox-html's `org-html-timestamp`).
pub fn push_with_en_dashes(out: &mut String, s: &str) {
    let mut rest = s;
    while let Some(p) = rest.find("--") {
        esc_text(out, &rest[..p]);
        out.push_str("&#x2013;");
        rest = &rest[p + 2..];
    }
    esc_text(out, rest);
}

/// `[012]?[0-9]:[0-5][0-9]-([012]?[0-9]):([0-5][0-9])` anywhere in the first timestamp: the end time.
fn time_range(s: &[u8]) -> Option<(i64, i64)> {
    let ok_h = |k: usize| k < s.len() && matches!(s[k], b'0'..=b'2');
    for k in 0..s.len() {
        // `H:MM-` ending at k (the '-')
        if s[k] == b'-' && k >= 4 && s[k - 3] == b':' && s[k - 4].is_ascii_digit() && matches!(s[k - 2], b'0'..=b'5') && s[k - 1].is_ascii_digit() {
            let r = k + 1;
            let (hl, hv) = if ok_h(r) && r + 1 < s.len() && s[r + 1].is_ascii_digit() {
                (2, (s[r] - b'0') as i64 * 10 + (s[r + 1] - b'0') as i64)
            } else if r < s.len() && s[r].is_ascii_digit() {
                (1, (s[r] - b'0') as i64)
            } else {
                continue;
            };
            let c = r + hl;
            if c + 2 < s.len() && s[c] == b':' && matches!(s[c + 1], b'0'..=b'5') && s[c + 2].is_ascii_digit() {
                return Some((hv, ((s[c + 1] - b'0') * 10 + (s[c + 2] - b'0')) as i64));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(raw: &str) -> String {
        let mut o = String::new();
        assert!(push_interpreted(&mut o, raw));
        o
    }

    #[test]
    fn interpreter_cases() {
        assert_eq!(t("<2024-03-15 Fri -2d .+1w>"), "&lt;2024-03-15 Fri .+1w -2d&gt;");
        assert_eq!(t("<2024-03-15 Fri 10:00-11:00 +1w>"), "&lt;2024-03-15 Fri 10:00 +1w&gt;&#x2013;&lt;2024-03-15 Fri 11:00 +1w&gt;");
        assert_eq!(t("[2024-03-15 Mon 9:05]"), "[2024-03-15 Fri 09:05]");
        assert_eq!(t("<2024-02-30 Xyz>"), "&lt;2024-03-01 Fri&gt;");
        assert_eq!(t("<2024-03-15 Fri --3d>"), "&lt;2024-03-15 Fri &#x2013;3d&gt;");
        assert_eq!(t("<2024-01-31 ++1m>"), "&lt;2024-01-31 Wed ++1m&gt;");
        assert_eq!(t("<2024-03-15 Fri 10:00>--<2024-03-16>"), "&lt;2024-03-15 Fri 10:00&gt;&#x2013;&lt;2024-03-16 Sat 10:00&gt;");
        assert_eq!(t("<1969-12-31 x 25:70>"), "&lt;1970-01-01 Thu 02:10&gt;");
    }
}
