//! Small helpers shared by the renderer: HTML escaping, URL neutralising, slugs, line scanning.

/// Append `s` to `out` with `&`, `<`, `>`, `"` and `'` escaped (safe in text and in quoted attributes).
pub fn esc(out: &mut String, s: &str) {
    let b = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let (rep, len) = match c {
            b'&' => ("&amp;", 1),
            b'<' => ("&lt;", 1),
            b'>' => ("&gt;", 1),
            b'"' => ("&quot;", 1),
            b'\'' => ("&#39;", 1),
            0..=0x1f | 0x7f | 0xc2 | 0xef => match forbidden_char_len(b, i) {
                0 => {
                    i += 1;
                    continue;
                }
                n => ("\u{fffd}", n),
            },
            _ => {
                i += 1;
                continue;
            }
        };
        out.push_str(&s[start..i]);
        out.push_str(rep);
        i += len;
        start = i;
    }
    out.push_str(&s[start..]);
}

/// Bytes that start a character HTML forbids in text (C0 controls but tab/newline/CR/FF, DEL,
/// and the lead bytes of C1 controls and noncharacters), replaced with U+FFFD.
pub const fn forbidden_table() -> [bool; 256] {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 0x20 {
        if c != b'\t' as usize && c != b'\n' as usize && c != b'\r' as usize && c != 0x0c {
            t[c] = true;
        }
        c += 1;
    }
    t[0x7f] = true;
    t[0xc2] = true;
    t[0xef] = true;
    t
}

const fn text_table() -> [bool; 256] {
    let mut t = forbidden_table();
    t[b'&' as usize] = true;
    t[b'<' as usize] = true;
    t[b'>' as usize] = true;
    t
}
static TEXT_ESC: [bool; 256] = text_table();

/// Length of a character at `i` that HTML forbids in text (C0/C1 controls, noncharacters),
/// or 0. Such characters are written as U+FFFD so the output always parses cleanly.
pub fn forbidden_char_len(b: &[u8], i: usize) -> usize {
    let c = b[i];
    match c {
        0xc2 => {
            if i + 1 < b.len() && (0x80..=0x9f).contains(&b[i + 1]) {
                2
            } else {
                0
            }
        }
        0xef => {
            if i + 2 < b.len() && ((b[i + 1] == 0xb7 && (0x90..=0xaf).contains(&b[i + 2])) || (b[i + 1] == 0xbf && (b[i + 2] == 0xbe || b[i + 2] == 0xbf))) {
                3
            } else {
                0
            }
        }
        b'\t' | b'\n' | b'\r' | 0x0c => 0,
        0..=0x1f | 0x7f => 1,
        _ => 0,
    }
}

/// Escape text for an element body: like `esc` but leaves quotes alone (they are visible text).
/// A class name as `org-html-fix-class-name` makes it: every character outside
/// `[A-Za-z0-9_]` becomes `_` (one per character, not per byte), so tags and TODO keywords
/// like `a#b` or `@home` give the classes Org HTML themes expect.
pub fn push_class_name(out: &mut String, s: &str) {
    for c in s.chars() {
        out.push(if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' });
    }
}

pub fn esc_text(out: &mut String, s: &str) {
    let b = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if !TEXT_ESC[c as usize] {
            i += 1;
            continue;
        }
        let (rep, len) = match c {
            b'&' => ("&amp;", 1),
            b'<' => ("&lt;", 1),
            b'>' => ("&gt;", 1),
            _ => match forbidden_char_len(b, i) {
                0 => {
                    i += 1;
                    continue;
                }
                n => ("\u{fffd}", n),
            },
        };
        out.push_str(&s[start..i]);
        out.push_str(rep);
        i += len;
        start = i;
    }
    out.push_str(&s[start..]);
}

/// Why: browsers ignore tabs, newlines and control characters inside a scheme
/// (`java\tscript:`), and entities are decoded before the URL is used, so the scheme is
/// read the way a browser would before it is judged.
fn scheme_of(url: &str) -> Option<String> {
    // Leading whitespace and control characters are stripped by browsers.
    let t = url.trim_start_matches(|c: char| (c as u32) <= 0x20);
    let stop = t.find(|c: char| c == ':' || c == '/' || c == '?' || c == '#')?;
    if t.as_bytes()[stop] != b':' {
        return None;
    }
    let scheme: String = t[..stop]
        .chars()
        .filter(|c| !(*c == '\t' || *c == '\n' || *c == '\r' || (*c as u32) < 0x20))
        .flat_map(|c| c.to_lowercase())
        .collect();
    Some(scheme)
}

/// Is `url` safe as a link target? http(s), mailto, ftp, file, relative paths and fragments are;
/// `data:image/...` only when `image` is set. Everything else (javascript:, vbscript:, data:,
/// unknown schemes, obfuscated forms) is not.
pub fn url_is_safe(url: &str, image: bool) -> bool {
    // An entity before the path (`javascript&#58;…`) is harmless once escaped, but never useful:
    // refuse it rather than rely on every consumer escaping.
    if !url.starts_with('#') {
        let head_end = url.find(|c: char| c == '/' || c == '?').unwrap_or(url.len());
        if url[..head_end].contains('&') {
            return false;
        }
    }
    match scheme_of(url) {
        None => true,
        Some(s) => match s.as_str() {
            "http" | "https" | "mailto" | "ftp" | "file" => true,
            "data" => image && data_image(url),
            _ => false,
        },
    }
}

fn data_image(url: &str) -> bool {
    let t: String = url
        .chars()
        .filter(|c| !(*c as u32 <= 0x20))
        .take(16)
        .collect::<String>()
        .to_ascii_lowercase();
    t.starts_with("data:image/") && !t.starts_with("data:image/svg")
}

/// The href to write for `url`: the URL itself when safe, else a harmless fragment.
pub fn safe_href(url: &str, image: bool) -> &str {
    if url_is_safe(url, image) {
        url
    } else {
        "#unsafe-link"
    }
}

/// A stable, readable id for a headline title: lowercase ASCII letters and digits, other
/// runs become '-'. Non-ASCII letters are kept (ids are attribute values, always escaped).
pub fn slug(title: &str) -> String {
    let mut s = String::new();
    let mut dash = false;
    for c in title.chars() {
        if c.is_alphanumeric() {
            if dash && !s.is_empty() {
                s.push('-');
            }
            dash = false;
            for l in c.to_lowercase() {
                s.push(l);
            }
            if s.len() > 80 {
                break;
            }
        } else {
            dash = true;
        }
    }
    if s.is_empty() {
        s.push_str("section");
    }
    s
}

pub fn indent_of(line: &str) -> usize {
    let mut n = 0;
    for &b in line.as_bytes() {
        match b {
            b' ' => n += 1,
            b'\t' => n = (n / 8 + 1) * 8,
            _ => break,
        }
    }
    n
}

pub fn is_blank(line: &str) -> bool {
    line.bytes().all(|b| b == b' ' || b == b'\t' || b == b'\r')
}

pub fn starts_with_ci(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// Largest index <= i that is a char boundary.
pub fn floor_char(s: &str, mut i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Find the first element of sorted `v` strictly greater than `after` and below `limit`.
pub fn next_in(v: &[usize], after: usize, limit: usize) -> Option<usize> {
    let pos = match v.binary_search(&(after + 1)) {
        Ok(p) => p,
        Err(p) => p,
    };
    match v.get(pos) {
        Some(&x) if x < limit => Some(x),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn neutralises_schemes() {
        assert!(url_is_safe("https://x", false));
        assert!(url_is_safe("foo/bar.html", false));
        assert!(url_is_safe("#frag", false));
        assert!(!url_is_safe("javascript:alert(1)", false));
        assert!(!url_is_safe("JaVaScRiPt:alert(1)", false));
        assert!(!url_is_safe("java\tscript:alert(1)", false));
        assert!(!url_is_safe(" \u{1}javascript:x", false));
        assert!(!url_is_safe("javascript&#58;x", false));
        assert!(!url_is_safe("vbscript:x", false));
        assert!(!url_is_safe("data:text/html,x", false));
        assert!(!url_is_safe("data:image/png;base64,xx", false));
        assert!(url_is_safe("data:image/png;base64,xx", true));
        assert!(!url_is_safe("data:image/svg+xml,xx", true));
    }
    #[test]
    fn slugs() {
        assert_eq!(slug("Hello, World!"), "hello-world");
        assert_eq!(slug("  "), "section");
    }
}

/// First `c` in `b` at or after `from`, eight bytes at a time (wasm has no vectorised memchr:
/// this is several times faster than a byte loop on long runs of text).
pub fn find_byte(b: &[u8], from: usize, c: u8) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let rep = LO.wrapping_mul(c as u64);
    let mut i = from;
    while i + 8 <= b.len() {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[i..i + 8]);
        let x = u64::from_le_bytes(w) ^ rep;
        if x.wrapping_sub(LO) & !x & HI != 0 {
            break;
        }
        i += 8;
    }
    while i < b.len() {
        if b[i] == c {
            return Some(i);
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod find_byte_tests {
    use super::find_byte;

    #[test]
    fn agrees_with_a_byte_loop_at_every_offset() {
        let text: Vec<u8> = b"ab\ncdefghij\n\nklmnopqrstuvwx\xc3\xa9<<y\n".iter().cycle().take(200).cloned().collect();
        for &c in &[b'\n', b'<', b'z', 0xa9u8, b'a'] {
            for from in 0..=text.len() + 2 {
                let want = text.iter().enumerate().skip(from).find(|&(_, &x)| x == c).map(|(k, _)| k);
                assert_eq!(find_byte(&text, from, c), want, "byte {} from {}", c, from);
            }
        }
    }
}
