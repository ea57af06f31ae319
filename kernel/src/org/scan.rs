//! Byte-level scanning primitives (a word-at-a-time `memchr`, line iteration, EOL rules).

use std::borrow::Cow;

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// Index of the first `needle` in `hay[from..]` (absolute), or `hay.len()`.
/// Eight bytes per step: this is the hot loop of every structural op.
#[inline]
pub fn find_byte(hay: &[u8], from: usize, needle: u8) -> usize {
    let n = hay.len();
    let mut i = from;
    let pat = LO.wrapping_mul(needle as u64);
    while i + 8 <= n {
        let mut w = [0u8; 8];
        w.copy_from_slice(&hay[i..i + 8]);
        let x = u64::from_le_bytes(w) ^ pat;
        let t = x.wrapping_sub(LO) & !x & HI;
        if t != 0 {
            return i + (t.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < n {
        if hay[i] == needle {
            return i;
        }
        i += 1;
    }
    n
}

/// Count `\n` in `hay[from..to]`.
pub fn count_newlines(hay: &[u8], from: usize, to: usize) -> usize {
    let mut c = 0;
    let mut i = from;
    while i < to {
        let j = find_byte(&hay[..to], i, b'\n');
        if j >= to {
            break;
        }
        c += 1;
        i = j + 1;
    }
    c
}

/// A line of the document: `[start, end)` excludes the terminator (and a `\r` before it);
/// `next` is where the following line starts.
#[derive(Clone, Copy, Debug)]
pub struct Line {
    pub start: usize,
    pub end: usize,
    pub next: usize,
}

/// The line starting at `pos` (`pos` must be a line start and `< len`). Text is
/// EOL-normalised first ([`normalize_eol`]), so `\n` is the only terminator.
#[inline]
pub fn line_at(b: &[u8], pos: usize) -> Line {
    let nl = find_byte(b, pos, b'\n');
    let next = if nl < b.len() { nl + 1 } else { nl };
    Line { start: pos, end: nl, next }
}

/// Line endings the way Emacs decodes a file: DOS when every `\n` follows a `\r` (one
/// `\r` per line end is dropped), old-Mac when there is no `\n` but a `\r` (each `\r` is a
/// line end), else Unix (a stray `\r` stays text, so `* a :t:\r` has no tags, as in Org).
pub fn normalize_eol(org: &str) -> Cow<'_, str> {
    let b = org.as_bytes();
    let n = b.len();
    let mut i = find_byte(b, 0, b'\n');
    if i == n {
        return if find_byte(b, 0, b'\r') < n { Cow::Owned(org.replace('\r', "\n")) } else { Cow::Borrowed(org) };
    }
    while i < n {
        if i == 0 || b[i - 1] != b'\r' {
            return Cow::Borrowed(org);
        }
        i = find_byte(b, i + 1, b'\n');
    }
    let mut out = String::with_capacity(n);
    let mut start = 0;
    let mut i = find_byte(b, 0, b'\n');
    while i < n {
        out.push_str(&org[start..i - 1]);
        start = i;
        i = find_byte(b, i + 1, b'\n');
    }
    out.push_str(&org[start..]);
    Cow::Owned(out)
}

/// Skip spaces and tabs from `i` up to `end`.
#[inline]
pub fn skip_blank(b: &[u8], mut i: usize, end: usize) -> usize {
    while i < end && (b[i] == b' ' || b[i] == b'\t') {
        i += 1;
    }
    i
}

/// Trim spaces/tabs (and CR/LF) on both sides of `s`.
pub fn trim_org(s: &str) -> &str {
    s.trim_matches(|c: char| c == ' ' || c == '\t' || c == '\n' || c == '\r')
}

/// True for the whitespace Emacs's `\S-` excludes in Org buffers (ASCII subset).
#[inline]
pub fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' | b'\x0b')
}

/// ASCII case-insensitive prefix test.
#[inline]
pub fn starts_with_ci(b: &[u8], at: usize, end: usize, pat: &[u8]) -> bool {
    end >= at + pat.len() && b[at..at + pat.len()].eq_ignore_ascii_case(pat)
}

/// Largest char boundary `<= i` of `s`.
pub fn floor_boundary(s: &str, mut i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn find_byte_matches_naive() {
        let mut seed = 12345u64;
        for len in 0..80usize {
            let mut v = Vec::new();
            for _ in 0..len {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                v.push(if (seed >> 33) % 7 == 0 { b'\n' } else { (seed >> 40) as u8 });
            }
            for from in 0..=len {
                let naive = v[from..].iter().position(|&c| c == b'\n').map(|p| p + from).unwrap_or(len);
                assert_eq!(find_byte(&v, from, b'\n'), naive);
            }
        }
    }
    #[test]
    fn eol_like_emacs() {
        assert_eq!(normalize_eol("a\r\nb\r\r\nc"), "a\nb\r\nc");
        assert_eq!(normalize_eol("a\r\nb\nc\r\n"), "a\r\nb\nc\r\n");
        assert_eq!(normalize_eol("a\rb\r"), "a\nb\n");
        assert_eq!(normalize_eol("a\nb"), "a\nb");
        assert_eq!(normalize_eol("\n"), "\n");
        assert_eq!(normalize_eol(""), "");
        let l = line_at(b"ab\ncd", 0);
        assert_eq!((l.start, l.end, l.next), (0, 2, 3));
        let l = line_at(b"ab\ncd", 3);
        assert_eq!((l.start, l.end, l.next), (3, 5, 5));
    }
}
