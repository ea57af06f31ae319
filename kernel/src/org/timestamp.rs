//! Org timestamps and planning lines, cracked the way org-element does
//! (`org-element--get-time-properties` + `org-element-timestamp-parser`, Org 9.5).

use super::scan::skip_blank;

/// A cracked timestamp: `at` is `YYYY-MM-DD` or `YYYY-MM-DDTHH:MM` (null for diary
/// sexps), `repeat` the repeater cookie (`+1w`, `.+2d`, `++1m`), `active` for `<…>`.
#[derive(Clone, Debug, PartialEq)]
pub struct Timestamp {
    pub at: Option<String>,
    pub repeat: Option<String>,
    pub active: bool,
}

impl Timestamp {
    pub fn write_json(&self, out: &mut String) {
        out.push_str("{\"active\":");
        out.push_str(if self.active { "true" } else { "false" });
        out.push_str(",\"at\":");
        crate::json::push_opt_str(out, self.at.as_deref());
        out.push_str(",\"repeat\":");
        crate::json::push_opt_str(out, self.repeat.as_deref());
        out.push('}');
    }
}

#[derive(Default, Debug)]
pub struct Planning {
    pub scheduled: Option<Timestamp>,
    pub deadline: Option<Timestamp>,
    pub closed: Option<Timestamp>,
}

/// Org's planning-line test: `^[ \t]*(CLOSED:|DEADLINE:|SCHEDULED:)`, case-insensitive
/// (org-element parses with `case-fold-search` on).
pub fn is_planning_line(line: &[u8]) -> bool {
    let i = skip_blank(line, 0, line.len());
    let rest = &line[i..];
    [&b"CLOSED:"[..], b"DEADLINE:", b"SCHEDULED:"]
        .iter()
        .any(|k| rest.len() >= k.len() && rest[..k.len()].eq_ignore_ascii_case(k))
}

#[inline]
fn is_closer(c: u8) -> bool {
    c == b']' || c == b'>'
}

/// Memoised forward searches over one line, so that pathological lines (thousands of
/// keywords sharing one far-away closing bracket) stay linear.
struct Finder<'a> {
    b: &'a [u8],
    closer: Option<(usize, usize)>,   // (searched from, found at or len)
    gt: Option<(usize, usize)>,
    repeater: Option<(usize, usize, usize, usize)>, // (from, start, end, prefix_len)
}

impl<'a> Finder<'a> {
    fn next_closer(&mut self, from: usize) -> usize {
        if let Some((f, at)) = self.closer {
            if f <= from && at >= from {
                return at;
            }
        }
        let mut i = from;
        while i < self.b.len() && !is_closer(self.b[i]) {
            i += 1;
        }
        self.closer = Some((from, i));
        i
    }

    fn next_gt(&mut self, from: usize) -> usize {
        if let Some((f, at)) = self.gt {
            if f <= from && at >= from {
                return at;
            }
        }
        let i = super::scan::find_byte(self.b, from, b'>');
        self.gt = Some((from, i));
        i
    }

    /// Leftmost match of `([.+]?\+)([0-9]+)([hdwmy])` at or after `from`: (start, end, prefix length).
    fn repeater(&mut self, from: usize) -> Option<(usize, usize, usize)> {
        if let Some((f, s, e, p)) = self.repeater {
            if f <= from && s >= from {
                return if s < self.b.len() { Some((s, e, p)) } else { None };
            }
        }
        let b = self.b;
        let n = b.len();
        let digits_unit = |j: usize| -> Option<usize> {
            let mut k = j;
            while k < n && b[k].is_ascii_digit() {
                k += 1;
            }
            if k > j && k < n && matches!(b[k], b'h' | b'd' | b'w' | b'm' | b'y') {
                Some(k + 1)
            } else {
                None
            }
        };
        let mut i = from;
        let mut found = None;
        while i < n {
            let c = b[i];
            if c == b'+' || c == b'.' {
                if i + 1 < n && b[i + 1] == b'+' {
                    if let Some(e) = digits_unit(i + 2) {
                        found = Some((i, e, 2));
                        break;
                    }
                }
                if c == b'+' {
                    if let Some(e) = digits_unit(i + 1) {
                        found = Some((i, e, 1));
                        break;
                    }
                }
            }
            i += 1;
        }
        match found {
            Some((s, e, p)) => self.repeater = Some((from, s, e, p)),
            None => self.repeater = Some((from, n, n, 0)),
        }
        found
    }
}

fn digits(b: &[u8], i: usize, n: usize) -> bool {
    i + n <= b.len() && b[i..i + n].iter().all(|c| c.is_ascii_digit())
}

/// Does `org-element--timestamp-regexp` match at `i`? Returns whether it is a diary sexp.
fn looks_like_timestamp(b: &[u8], i: usize, f: &mut Finder) -> Option<bool> {
    let n = b.len();
    if i >= n || !(b[i] == b'<' || b[i] == b'[') {
        return None;
    }
    // [[<]YYYY-MM-DD( .*?)?[]>]
    let d = i + 1;
    if digits(b, d, 4) && b.get(d + 4) == Some(&b'-') && digits(b, d + 5, 2) && b.get(d + 7) == Some(&b'-') && digits(b, d + 8, 2) {
        let k = d + 10;
        if k < n && is_closer(b[k]) {
            return Some(false);
        }
        if k < n && b[k] == b' ' && f.next_closer(k) < n {
            return Some(false);
        }
    }
    if b[i] != b'<' {
        return None;
    }
    // <%%(…)>
    if b.len() > i + 3 && &b[i + 1..i + 4] == b"%%(" {
        // `[^>\n]+` then `)>`: the first `>` after the sexp must close it.
        let j = f.next_gt(i + 4);
        if j < n && j >= i + 6 && b[j - 1] == b')' {
            return Some(true);
        }
    }
    // <\d+-\d+-\d+[^>\n]+?\+\d+[dwmy]>
    let mut j = i + 1;
    for part in 0..3 {
        let s = j;
        while j < n && b[j].is_ascii_digit() {
            j += 1;
        }
        if j == s {
            return None;
        }
        if part < 2 {
            if j < n && b[j] == b'-' {
                j += 1;
            } else {
                return None;
            }
        }
    }
    let gt = f.next_gt(j);
    if gt >= n {
        return None;
    }
    // need `+\d+[dwmy]` ending right before `>`, with at least one char before the `+`.
    let mut k = gt;
    if k == 0 || !matches!(b[k - 1], b'd' | b'w' | b'm' | b'y') {
        return None;
    }
    k -= 1;
    let e = k;
    while k > j && b[k - 1].is_ascii_digit() {
        k -= 1;
    }
    if k == e || k == 0 || b[k - 1] != b'+' || k - 1 <= j {
        return None;
    }
    Some(false)
}

/// Parse the timestamp starting at `i` of `b` (one line), Org-style.
fn parse_timestamp_at(b: &[u8], i: usize, f: &mut Finder) -> Option<Timestamp> {
    let diary = looks_like_timestamp(b, i, f)?;
    let n = b.len();
    let active = b[i] == b'<';
    // raw: `[<[](%%)?.*?[]>]` then optional `--[<[].*?[]>]`
    let close = f.next_closer(i + 1);
    if close >= n {
        return None;
    }
    let date_start = &b[i..close];
    let mut raw_end = close + 1;
    if raw_end + 2 < n && b[raw_end] == b'-' && b[raw_end + 1] == b'-' && (b[raw_end + 2] == b'<' || b[raw_end + 2] == b'[') {
        let c2 = f.next_closer(raw_end + 3);
        if c2 < n {
            raw_end = c2 + 1;
        }
    }
    if diary {
        return Some(Timestamp { at: None, repeat: None, active: false });
    }
    let repeat = match f.repeater(i) {
        Some((s, e, p)) if s < raw_end => {
            let kind = &b[s..s + p];
            let prefix = if p == 1 { "+" } else if kind[0] == b'+' { "++" } else { ".+" };
            let ds = s + p;
            let mut num_start = ds;
            while num_start < e - 2 && b[num_start] == b'0' {
                num_start += 1;
            }
            let mut r = String::from(prefix);
            r.push_str(core::str::from_utf8(&b[num_start..e]).unwrap_or(""));
            Some(r)
        }
        _ => None,
    };
    Some(Timestamp { at: crack_date(date_start), repeat, active })
}

/// `org-parse-time-string` over the date part: first `YYYY-MM-DD`, optional day name,
/// optional ` H:MM`.
fn crack_date(s: &[u8]) -> Option<String> {
    let n = s.len();
    let mut p = 0;
    while p + 10 <= n {
        if digits(s, p, 4) && s[p + 4] == b'-' && digits(s, p + 5, 2) && s[p + 7] == b'-' && digits(s, p + 8, 2) {
            break;
        }
        p += 1;
    }
    if p + 10 > n {
        return None;
    }
    let mut at = String::with_capacity(16);
    at.push_str(core::str::from_utf8(&s[p..p + 10]).unwrap_or(""));
    let mut j = p + 10;
    // optional ( +[^]+0-9>\r\n -]+)
    let mut k = j;
    while k < n && s[k] == b' ' {
        k += 1;
    }
    if k > j {
        let m = k;
        while k < n && !matches!(s[k], b']' | b'+' | b'0'..=b'9' | b'>' | b'\r' | b'\n' | b' ' | b'-') {
            k += 1;
        }
        if k > m {
            j = k;
        }
    }
    // optional ( +(\d{1,2}):(\d{2}))
    let mut k = j;
    while k < n && s[k] == b' ' {
        k += 1;
    }
    if k > j {
        let hs = k;
        while k < n && k < hs + 2 && s[k].is_ascii_digit() {
            k += 1;
        }
        if k > hs && k < n && s[k] == b':' && digits(s, k + 1, 2) {
            let h = core::str::from_utf8(&s[hs..k]).unwrap_or("0");
            at.push('T');
            if h.len() == 1 {
                at.push('0');
            }
            at.push_str(h);
            at.push(':');
            at.push_str(core::str::from_utf8(&s[k + 1..k + 3]).unwrap_or("00"));
        }
    }
    Some(at)
}

#[inline]
fn is_word_byte_before(line: &str, i: usize) -> bool {
    if i == 0 {
        return false;
    }
    match line[..i].chars().next_back() {
        Some(c) => c.is_alphanumeric(),
        None => false,
    }
}

/// Crack a planning line (already known to satisfy [`is_planning_line`]).
pub fn parse_planning(line: &str) -> Planning {
    let b = line.as_bytes();
    let n = b.len();
    let mut plan = Planning::default();
    let mut f = Finder { b, closer: None, gt: None, repeater: None };
    let mut i = 0;
    while i < n {
        let c = b[i] | 0x20;
        let klen = match c {
            b's' if i + 10 <= n && b[i..i + 10].eq_ignore_ascii_case(b"SCHEDULED:") => 10,
            b'd' if i + 9 <= n && b[i..i + 9].eq_ignore_ascii_case(b"DEADLINE:") => 9,
            b'c' if i + 7 <= n && b[i..i + 7].eq_ignore_ascii_case(b"CLOSED:") => 7,
            _ => 0,
        };
        if klen == 0 || !line.is_char_boundary(i) || is_word_byte_before(line, i) {
            i += 1;
            continue;
        }
        // ` *[[<][^]>]+[]>]`
        let mut j = i + klen;
        while j < n && b[j] == b' ' {
            j += 1;
        }
        let ok = j + 1 < n && (b[j] == b'[' || b[j] == b'<') && !is_closer(b[j + 1]) && f.next_closer(j + 1) < n;
        if !ok {
            i += 1;
            continue;
        }
        let kw = &b[i..i + klen];
        let after = skip_blank(b, i + klen, n);
        let ts = parse_timestamp_at(b, after, &mut f);
        match kw {
            b"SCHEDULED:" => plan.scheduled = ts,
            b"DEADLINE:" => plan.deadline = ts,
            _ => plan.closed = ts,
        }
        i = after;
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    fn ts(at: Option<&str>, repeat: Option<&str>, active: bool) -> Option<Timestamp> {
        Some(Timestamp { at: at.map(String::from), repeat: repeat.map(String::from), active })
    }
    #[test]
    fn cracks_like_org() {
        let p = parse_planning("DEADLINE: <2024-01-01 Mon 10:00-11:00 +1w -2d> SCHEDULED: <2024-01-01>--<2024-01-05> CLOSED: [2024-01-01 Mon 9:05]");
        assert_eq!(p.deadline, ts(Some("2024-01-01T10:00"), Some("+1w"), true));
        assert_eq!(p.scheduled, ts(Some("2024-01-01"), None, true));
        assert_eq!(p.closed, ts(Some("2024-01-01T09:05"), None, false));
        let p = parse_planning("  SCHEDULED: <%%(diary-float t 4 2)>");
        assert_eq!(p.scheduled, ts(None, None, false));
        let p = parse_planning("scheduled: <2024-01-02 Mon .+02d>");
        assert_eq!(p.scheduled, None);
        assert_eq!(p.closed, ts(Some("2024-01-02"), Some(".+2d"), true));
        let p = parse_planning("SCHEDULED: <2026-06-15 +1w>");
        assert_eq!(p.scheduled, ts(Some("2026-06-15"), Some("+1w"), true));
        let p = parse_planning("SCHEDULED: <2026-06-15 Mon ++1m -3d>");
        assert_eq!(p.scheduled, ts(Some("2026-06-15"), Some("++1m"), true));
        assert!(is_planning_line(b"  closed: x"));
        assert!(!is_planning_line(b"* SCHEDULED: x"));
    }
    #[test]
    fn hostile_lines_are_linear() {
        let s = "SCHEDULED: <2024-01-01 ".repeat(20000);
        let _ = parse_planning(&s);
        let s = format!("SCHEDULED: {}", "<2024-01-01 +".repeat(20000));
        let _ = parse_planning(&s);
    }
}
