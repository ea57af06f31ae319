//! Source-block header arguments, split the way `org-babel-parse-header-arguments`
//! does: on a `:` preceded by a space or tab, keeping `(…)`, `[…]` and `"…"` groups
//! whole; each piece is `:key value`; a value in double quotes is read as a string.
//! Org's balanced-bracket search restarts at every unbalanced opener (quadratic); here
//! every bracket's partner is computed once, so the split is linear.

/// One `(key, value)` pair; `key` keeps its leading colon (`:in`), `value` may be empty.
pub type Arg = (String, String);

use std::borrow::Cow;

fn is_sep(c: u8) -> bool {
    matches!(c, b' ' | b'\x0c' | b'\t' | b'\n' | b'\r' | b'\x0b')
}

const NONE: u32 = u32::MAX;

/// Where Org's balanced scan closes each opener (`NONE`: unbalanced, so Org backtracks
/// and keeps the opener as a plain character). Org searches `[]()]` from the opener:
/// `(` nests and closes on `)`; `[` is never pushed, so a `[` group closes at the first
/// `]` outside parentheses. Both are computed for every position in two linear passes.
fn bracket_partners(b: &[u8]) -> (Vec<u32>, Vec<u32>) {
    let n = b.len();
    let mut paren = vec![NONE; n];
    let mut stack: Vec<usize> = Vec::new();
    for (i, &c) in b.iter().enumerate() {
        if c == b'(' {
            stack.push(i);
        } else if c == b')' {
            if let Some(p) = stack.pop() {
                paren[p] = i as u32;
            }
        }
    }
    // square[i]: the first `]` at or after i outside parentheses, skipping balanced groups.
    let mut square = vec![NONE; n + 1];
    for i in (0..n).rev() {
        square[i] = match b[i] {
            b']' => i as u32,
            b'(' => {
                let m = paren[i];
                if m == NONE {
                    NONE
                } else {
                    square[m as usize + 1]
                }
            }
            _ => square[i + 1],
        };
    }
    (paren, square)
}

/// Split `s` into header-argument pieces (byte ranges).
fn balanced_split(s: &str) -> Vec<(usize, usize)> {
    let b = s.as_bytes();
    let n = b.len();
    let mut pieces = Vec::new();
    let mut partners: Option<(Vec<u32>, Vec<u32>)> = None; // computed on the first opener
    let mut quote_fails_from = usize::MAX; // no closing quote after this index
    let mut ps = 0;
    let mut i = 0;
    while i < n {
        let c = b[i];
        if c == b':' && i > 0 && (b[i - 1] == b' ' || b[i - 1] == b'\t') {
            let pe = if i - 1 >= ps { i - 1 } else { ps };
            if pe > ps {
                pieces.push((ps, pe));
            }
            i += 1;
            ps = i;
            continue;
        }
        if c == b'(' || c == b'[' {
            let (paren, square) = partners.get_or_insert_with(|| bracket_partners(b));
            let close = if c == b'(' { paren[i] } else { square[i + 1] };
            i = if close == NONE { i + 1 } else { close as usize + 1 };
            continue;
        }
        if c == b'"' && !(i > 0 && b[i - 1] == b'\\') && i < quote_fails_from {
            let mut j = i + 1;
            while j < n && !(b[j] == b'"' && b[j - 1] != b'\\') {
                j += 1;
            }
            if j < n {
                i = j + 1;
            } else {
                quote_fails_from = i;
                i += 1;
            }
            continue;
        }
        i += 1;
    }
    if n > ps {
        pieces.push((ps, n));
    }
    pieces
}

/// Read a Lisp string literal at the start of `v` (`"a \"b\""` → `a "b"`); None if unterminated.
fn read_lisp_string(v: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = v[1..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some('\n') => {}
                Some(o) => out.push(o),
                None => return None,
            },
            _ => out.push(c),
        }
    }
    None
}

/// Parse header arguments (`#+HEADER:` values first, then the begin line's parameters).
pub fn parse(s: &str) -> Vec<Arg> {
    let mut args = Vec::new();
    each(s, |k, v| args.push((k.to_string(), v.into_owned())));
    args
}

/// Visit each `(key, value)` pair without allocating (only a quoted value is copied):
/// keys are slices of `s` that keep their leading colon.
pub fn each<'s, F: FnMut(&'s str, Cow<'s, str>)>(s: &'s str, mut f: F) {
    if s.bytes().all(is_sep) {
        return;
    }
    let b = s.as_bytes();
    for (k, (ps, pe)) in balanced_split(s).into_iter().enumerate() {
        // Org prefixes every piece after the first with the `:` it was split on, which
        // is the byte right before the piece.
        let ps = if k == 0 { ps } else { ps - 1 };
        let mut ks = ps;
        while ks < pe && is_sep(b[ks]) {
            ks += 1;
        }
        let mut ke = ks;
        while ke < pe && !is_sep(b[ke]) {
            ke += 1;
        }
        let mut vs = ke;
        while vs < pe && is_sep(b[vs]) {
            vs += 1;
        }
        if ke > ks && vs > ke && vs < pe {
            let mut ve = pe;
            while ve > vs && is_sep(b[ve - 1]) {
                ve -= 1;
            }
            let raw = &s[vs..ve];
            let value = if raw.starts_with('"') {
                match read_lisp_string(raw) {
                    Some(v) => Cow::Owned(v),
                    None => Cow::Borrowed(raw),
                }
            } else {
                Cow::Borrowed(raw)
            };
            f(&s[ks..ke], value);
        } else {
            let mut e = pe;
            while e > ps && is_sep(b[e - 1]) {
                e -= 1;
            }
            if e > ps {
                f(&s[ps..e], Cow::Borrowed(""));
            }
        }
    }
}

/// Header arguments Org itself (or a common language backend) understands, plus the
/// workbook ones. Anything else earns a warning in `validate`.
pub const KNOWN: &[&str] = &[
    // workbook
    ":deps", ":uses", ":in", ":out", ":persist", ":dir",
    // Org Babel, all languages
    ":cache", ":cmdline", ":colnames", ":comments", ":epilogue", ":eval", ":exports", ":file",
    ":file-desc", ":file-ext", ":file-mode", ":hlines", ":mkdirp", ":no-expand", ":noeval",
    ":noweb", ":noweb-prefix", ":noweb-ref", ":noweb-sep", ":output-dir", ":padline", ":post",
    ":prologue", ":results", ":rownames", ":sep", ":session", ":shebang", ":tangle",
    ":tangle-mode", ":var", ":wrap", ":async", ":stdin", ":cmd", ":lexical", ":return",
    ":python", ":classname", ":package", ":imports", ":includes", ":flags", ":libs", ":main",
    ":defines", ":namespaces", ":engine", ":database", ":dbhost", ":dbport", ":dbuser",
    ":dbpassword", ":width", ":height", ":units", ":res", ":type", ":pointsize", ":bg",
    ":fg", ":graphics", ":results-params", ":name", ":header", ":export", ":colname-names",
    ":rowname-names",
];

pub fn is_known(key: &str) -> bool {
    KNOWN.contains(&key)
}

#[cfg(test)]
mod tests {
    use super::*;
    fn kv(v: &[(&str, &str)]) -> Vec<Arg> {
        v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }
    #[test]
    fn splits_like_babel() {
        assert_eq!(parse(":uses http :out raw"), kv(&[(":uses", "http"), (":out", "raw")]));
        assert_eq!(parse(":var x=(list 1 :a 2) :in \"my data\" :persist"), kv(&[(":var", "x=(list 1 :a 2)"), (":in", "my data"), (":persist", "")]));
        assert_eq!(parse(":results output :tangle no"), kv(&[(":results", "output"), (":tangle", "no")]));
        assert_eq!(parse("   "), kv(&[]));
        assert_eq!(parse(":a [x :b] :c \"q :d\""), kv(&[(":a", "[x :b]"), (":c", "q :d")]));
        // Org never pushes `[`: a `[` group closes at the first `]` outside parentheses
        assert_eq!(parse(":uses [also :out [a :b]"), kv(&[(":uses", "[also :out [a :b]")]));
        assert_eq!(parse(":a [x (y] :b) z] :c 1"), kv(&[(":a", "[x (y] :b) z]"), (":c", "1")]));
        assert_eq!(parse(":a (x :b"), kv(&[(":a", "(x"), (":b", "")]));
    }
    #[test]
    fn unbalanced_is_linear() {
        let s = format!(":in {}", "( [ \" ".repeat(50000));
        let a = parse(&s);
        assert!(!a.is_empty());
    }
}
