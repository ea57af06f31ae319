//! The outline of an Org document: every headline with its TODO keyword, priority,
//! title (Org's `:raw-value`), tags, planning line and own property drawer, following
//! org-element (Org 9.5, the reference) rule for rule:
//! - a headline is a line matching `^\*+ ` (a star run, then a space), wherever it is,
//!   even inside a block (Org's own parser splits the buffer on headlines first);
//! - TODO keywords come from `#+TODO:`/`#+SEQ_TODO:`/`#+TYP_TODO:` keyword lines that are
//!   not inside a src/example/export/comment/verse block (default TODO and DONE);
//! - the planning line is the line right after the headline; the property drawer is the
//!   line right after the headline or its planning line.
//! Two passes over the bytes, no recursion, no per-line allocation.

use super::scan::{find_byte, line_at, skip_blank, is_ws, starts_with_ci, trim_org, Line};
use super::timestamp::{is_planning_line, parse_planning, Planning};

#[derive(Debug)]
pub struct Headline<'a> {
    pub level: usize,
    /// 1-based line number in the original text.
    pub line: usize,
    /// Byte offset of the headline line.
    pub start: usize,
    /// Byte offset of the line after the headline.
    pub body: usize,
    /// Byte offset where the section's content starts (after planning and drawer).
    pub content: usize,
    /// Byte offset of the next headline (or the end of the text).
    pub end: usize,
    pub todo: Option<&'a str>,
    pub priority: Option<&'a str>,
    pub title: &'a str,
    pub tags: Vec<&'a str>,
    pub planning: Planning,
    /// The headline's own property drawer, document order, keys upper-cased.
    pub props: Vec<(String, &'a str)>,
}

impl<'a> Headline<'a> {
    /// Last value of property `key` (upper-case), as a JSON object of the drawer would hold.
    pub fn prop(&self, key: &str) -> Option<&'a str> {
        self.props.iter().rev().find(|(k, _)| k == key).map(|(_, v)| *v)
    }
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| *t == tag)
    }
}

pub struct Outline<'a> {
    /// The text with a leading BOM removed; every offset refers to it.
    pub text: &'a str,
    pub headlines: Vec<Headline<'a>>,
}

#[derive(Clone, Copy)]
enum Ev {
    Headline,
    Begin(usize, usize),
    End(usize, usize),
    Todo(usize, usize),
}

/// Parse the outline of `org` (already EOL-normalised, see `scan::normalize_eol`),
/// keeping every headline.
pub fn parse(org: &str) -> Outline<'_> {
    let sk = skeleton(org);
    let headlines = (0..sk.len()).map(|i| sk.headline(i)).collect();
    Outline { text: sk.text, headlines }
}

/// Where the headlines are and which TODO keywords apply (pass 1). Headlines are cracked
/// on demand with [`Skeleton::headline`], so parse_headlines can stream its rows.
pub struct Skeleton<'a> {
    pub text: &'a str,
    heads: Vec<(usize, usize, usize)>, // (start, line_no, level)
    keywords: Vec<&'a str>,
}

/// Pass 1 over `org`.
pub fn skeleton(org: &str) -> Skeleton<'_> {
    let text = org.strip_prefix('\u{feff}').unwrap_or(org);
    let b = text.as_bytes();
    let n = b.len();

    // Pass 1: headline positions, and the keyword/block lines that decide TODO keywords.
    let mut heads: Vec<(usize, usize, usize)> = Vec::new(); // (start, line_no, level)
    let mut events: Vec<(Ev, usize)> = Vec::new(); // (event, position)
    let mut saw_todo_kw = false;
    let mut pos = 0;
    let mut line_no = 1;
    while pos < n {
        let c = b[pos];
        if c == b'*' {
            let mut k = pos;
            while k < n && b[k] == b'*' {
                k += 1;
            }
            if k < n && b[k] == b' ' {
                heads.push((pos, line_no, k - pos));
                events.push((Ev::Headline, pos));
            }
        } else if c == b'#' || c == b' ' || c == b'\t' {
            let l = line_at(b, pos);
            let p = skip_blank(b, pos, l.end);
            if p + 1 < l.end && b[p] == b'#' && b[p + 1] == b'+' {
                if let Some(ev) = classify_keyword(b, p + 2, l.end) {
                    if let Ev::Todo(..) = ev {
                        saw_todo_kw = true;
                    }
                    events.push((ev, pos));
                }
            }
            pos = l.next;
            line_no += 1;
            continue;
        }
        let nl = find_byte(b, pos, b'\n');
        pos = nl + 1;
        line_no += 1;
    }

    let keywords = if saw_todo_kw { todo_keywords(text, &events) } else { vec!["DONE", "TODO"] };

    Skeleton { text, heads, keywords }
}

impl<'a> Skeleton<'a> {
    pub fn len(&self) -> usize {
        self.heads.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heads.is_empty()
    }

    /// (start offset, 1-based line, level) of headline `idx`, without cracking it.
    pub fn head(&self, idx: usize) -> (usize, usize, usize) {
        self.heads[idx]
    }

    /// The document's TODO keywords, sorted (for [`crack_headline_commented`]).
    pub fn keywords(&self) -> &[&'a str] {
        &self.keywords
    }

    /// Pass 2 for headline `idx`: crack it, its planning line and its property drawer.
    pub fn headline(&self, idx: usize) -> Headline<'a> {
        let text = self.text;
        let b = text.as_bytes();
        let n = b.len();
        let heads = &self.heads;
        let keywords = &self.keywords;
        let (start, line, level) = heads[idx];
        let end = if idx + 1 < heads.len() { heads[idx + 1].0 } else { n };
        let hl = line_at(b, start);
        let (todo, priority, title, tags) = crack_headline(&text[hl.start..hl.end], level, &keywords);
        let mut next = hl.next;
        let mut planning = Planning::default();
        if next < end {
            let l = line_at(b, next);
            if is_planning_line(&b[l.start..l.end]) {
                planning = parse_planning(&text[l.start..l.end]);
                next = l.next;
            }
        }
        let mut props = Vec::new();
        if next < end {
            if let Some(after) = property_drawer(text, next, end, &mut props) {
                next = after;
            }
        }
        Headline {
            level,
            line,
            start,
            body: hl.next,
            content: next,
            end,
            todo,
            priority,
            title,
            tags,
            planning,
            props,
        }
    }
}

/// Classify a `#+…` line (bytes after `#+`): block begin/end or a TODO keyword line.
fn classify_keyword(b: &[u8], p: usize, end: usize) -> Option<Ev> {
    if starts_with_ci(b, p, end, b"begin_") {
        let s = p + 6;
        let mut e = s;
        while e < end && !is_ws(b[e]) {
            e += 1;
        }
        return if e > s { Some(Ev::Begin(s, e)) } else { None };
    }
    if starts_with_ci(b, p, end, b"end_") {
        let s = p + 4;
        let mut e = end;
        while e > s && (b[e - 1] == b' ' || b[e - 1] == b'\t') {
            e -= 1;
        }
        return if e > s { Some(Ev::End(s, e)) } else { None };
    }
    for kw in [&b"todo:"[..], b"seq_todo:", b"typ_todo:"] {
        if starts_with_ci(b, p, end, kw) {
            return Some(Ev::Todo(p + kw.len(), end));
        }
    }
    None
}

/// Blocks whose contents are not Org elements (a keyword line inside them is text).
fn is_verbatim_block(name: &[u8]) -> bool {
    [&b"src"[..], b"example", b"export", b"comment", b"verse"].iter().any(|k| name.eq_ignore_ascii_case(k))
}

/// Resolve the document's TODO keywords (Org: the union of every sequence; the defaults
/// TODO/DONE only when no keyword line exists at all). Returned sorted for binary search.
fn todo_keywords<'a>(text: &'a str, events: &[(Ev, usize)]) -> Vec<&'a str> {
    let b = text.as_bytes();
    // For each block opener: the event index of the nearest matching `#+end_NAME` in the
    // same section. One backward pass with a per-section map: linear.
    let mut closes: Vec<usize> = vec![usize::MAX; events.len()];
    let mut open_ends: Vec<(Vec<u8>, usize)> = Vec::new();
    for i in (0..events.len()).rev() {
        match events[i].0 {
            Ev::Headline => open_ends.clear(),
            Ev::End(s, e) => {
                let name = b[s..e].to_ascii_lowercase();
                match open_ends.binary_search_by(|(k, _)| k.as_slice().cmp(&name)) {
                    Ok(j) => open_ends[j].1 = i,
                    Err(j) => open_ends.insert(j, (name, i)),
                }
            }
            Ev::Begin(s, e) => {
                let name = b[s..e].to_ascii_lowercase();
                if let Ok(j) = open_ends.binary_search_by(|(k, _)| k.as_slice().cmp(&name)) {
                    closes[i] = open_ends[j].1;
                }
            }
            Ev::Todo(..) => {}
        }
    }
    let mut names: Vec<&'a str> = Vec::new();
    let mut counted = false;
    let mut i = 0;
    while i < events.len() {
        match events[i].0 {
            Ev::Begin(s, e) if closes[i] != usize::MAX && is_verbatim_block(&b[s..e]) => {
                i = closes[i] + 1;
                continue;
            }
            Ev::Todo(s, e) => {
                counted = true;
                for tok in text[s..e].split(|c: char| matches!(c, ' ' | '\t' | '\x0c' | '\x0b' | '\r' | '\n')) {
                    if tok.is_empty() || tok == "|" {
                        continue;
                    }
                    let name = strip_fast_key(tok);
                    if !name.is_empty() {
                        names.push(name);
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    if !counted {
        return vec!["DONE", "TODO"];
    }
    names.sort_unstable();
    names.dedup();
    names
}

/// `WAIT(w@/!)` → `WAIT` (Org: a trailing parenthesised group is the fast-access key).
fn strip_fast_key(tok: &str) -> &str {
    if tok.ends_with(')') {
        if let Some(i) = tok.find('(') {
            return &tok[..i];
        }
    }
    tok
}

fn is_tag_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '@' | '#' | '%' | ':')
}

/// Split a headline line into (todo, priority, title, tags) like `org-element-headline-parser`.
pub fn crack_headline<'a>(line: &'a str, level: usize, keywords: &[&str]) -> (Option<&'a str>, Option<&'a str>, &'a str, Vec<&'a str>) {
    let (todo, priority, _, title, tags) = crack_headline_commented(line, level, keywords);
    (todo, priority, title, tags)
}

/// [`crack_headline`] plus Org's `:commented` (the `COMMENT` word after keyword and priority).
pub fn crack_headline_commented<'a>(line: &'a str, level: usize, keywords: &[&str]) -> (Option<&'a str>, Option<&'a str>, bool, &'a str, Vec<&'a str>) {
    let b = line.as_bytes();
    let n = b.len();
    let mut p = skip_blank(b, level, n);
    let mut todo = None;
    let sp = find_byte(b, p, b' ');
    if sp < n && sp > p {
        let cand = &line[p..sp];
        if keywords.binary_search(&cand).is_ok() {
            todo = Some(cand);
            p = skip_blank(b, sp + 1, n);
        }
    }
    let mut priority = None;
    if p + 1 < n && b[p] == b'[' && b[p + 1] == b'#' {
        if let Some(c) = line[p + 2..].chars().next() {
            let q = p + 2 + c.len_utf8();
            if c != '\n' && q < n && b[q] == b']' {
                priority = Some(&line[p + 2..q]);
                p = skip_blank(b, q + 1, n);
            }
        }
    }
    let commented = b[p..].starts_with(b"COMMENT");
    if commented {
        p += 7;
    }
    let title_start = if todo.is_none() && priority.is_none() && !commented { level } else { p };
    // Tags: `[ \t]+(:[[:alnum:]_@#%:]+:)[ \t]*$`, searched from title_start.
    let mut e2 = n;
    while e2 > title_start && (b[e2 - 1] == b' ' || b[e2 - 1] == b'\t') {
        e2 -= 1;
    }
    let mut title_end = n;
    let mut tags = Vec::new();
    if e2 > title_start && b[e2 - 1] == b':' {
        let mut r = e2;
        for (i, c) in line[title_start..e2].char_indices().rev() {
            if is_tag_char(c) {
                r = title_start + i;
            } else {
                break;
            }
        }
        if e2 - r >= 3 && b[r] == b':' && r > title_start && (b[r - 1] == b' ' || b[r - 1] == b'\t') {
            let mut ws = r - 1;
            while ws > title_start && (b[ws - 1] == b' ' || b[ws - 1] == b'\t') {
                ws -= 1;
            }
            title_end = ws;
            tags = line[r + 1..e2 - 1].split(':').collect();
        }
    }
    let title = if title_end > title_start { trim_org(&line[title_start..title_end]) } else { &line[title_start.min(n)..title_start.min(n)] };
    (todo, priority, commented, title, tags)
}

/// A property drawer starting at `pos` (bounded by `end`): fills `props` and returns the
/// offset after its `:END:` line, or None (no drawer, nothing pushed).
fn property_drawer<'a>(text: &'a str, pos: usize, end: usize, props: &mut Vec<(String, &'a str)>) -> Option<usize> {
    let b = text.as_bytes();
    let first = line_at(b, pos);
    if !is_marker_line(b, first, b":PROPERTIES:") {
        return None;
    }
    let mut at = first.next;
    let mut found: Vec<(usize, usize, usize, usize)> = Vec::new();
    while at < end {
        let l = line_at(b, at);
        if is_marker_line(b, l, b":END:") {
            for (ks, ke, vs, ve) in found {
                props.push((upcase(&text[ks..ke]), &text[vs..ve]));
            }
            return Some(l.next);
        }
        let (ks, ke, vs, ve) = property_line(b, l)?;
        found.push((ks, ke, vs, ve));
        at = l.next;
        if l.next == l.end {
            break; // last line of the text, no terminator
        }
    }
    None
}

/// `^[ \t]*MARKER[ \t]*$`, case-insensitive.
pub(crate) fn is_marker_line(b: &[u8], l: Line, marker: &[u8]) -> bool {
    let p = skip_blank(b, l.start, l.end);
    if !starts_with_ci(b, p, l.end, marker) {
        return false;
    }
    skip_blank(b, p + marker.len(), l.end) == l.end
}

/// A node-property line inside a drawer: `[ \t]*:KEY:( .*)?[ \t]*` where KEY is a run of
/// non-blanks. Returns (key start, key end, value start, value end).
pub(crate) fn property_line(b: &[u8], l: Line) -> Option<(usize, usize, usize, usize)> {
    let p = skip_blank(b, l.start, l.end);
    if p >= l.end || b[p] != b':' {
        return None;
    }
    let mut r = p;
    while r < l.end && !is_ws(b[r]) {
        r += 1;
    }
    if r - p < 3 || b[r - 1] != b':' {
        return None;
    }
    if r < l.end && b[r] != b' ' {
        // only blanks may follow unless the next char is a space
        if skip_blank(b, r, l.end) != l.end {
            return None;
        }
    }
    let vs = skip_blank(b, r, l.end);
    let mut ve = l.end;
    while ve > vs && (b[ve - 1] == b' ' || b[ve - 1] == b'\t') {
        ve -= 1;
    }
    Some((p + 1, r - 1, vs, ve))
}

fn upcase(s: &str) -> String {
    if s.is_ascii() {
        s.to_ascii_uppercase()
    } else {
        s.to_uppercase()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn headline_fields() {
        let kw = ["DONE", "TODO"];
        assert_eq!(crack_headline("* COMMENTARY foo", 1, &kw).2, "ARY foo");
        let (t, p, title, tags) = crack_headline("** TODO [#A] y :t@#%:", 2, &kw);
        assert_eq!((t, p, title, tags), (Some("TODO"), Some("A"), "y", vec!["t@#%"]));
        assert_eq!(crack_headline("* TODO :tag:", 1, &kw).2, ":tag:");
        let (_, _, title, tags) = crack_headline("* :only:", 1, &kw);
        assert_eq!((title, tags), ("", vec!["only"]));
        assert_eq!(crack_headline("* a :b::c: ", 1, &kw).3, vec!["b", "", "c"]);
        assert_eq!(crack_headline("* x ::: ", 1, &kw).3, vec!["", ""]);
        assert_eq!(crack_headline("* TODO", 1, &kw).0, None);
        assert_eq!(crack_headline("* [#z] TODO x", 1, &kw).2, "TODO x");
    }
    #[test]
    fn outline_basics() {
        let text = super::super::scan::normalize_eol("\u{feff}* a\r\nSCHEDULED: <2024-01-02>\r\n:PROPERTIES:\r\n:ID: x1\r\n:Empty:\r\n:END:\r\n*\r\n**\tno\r\n#+begin_src\r\n* inside\r\n#+end_src\r\n#+TODO: WAIT(w) | GONE\r\n* WAIT w\r\n");
        let o = parse(&text);
        let h = &o.headlines;
        assert_eq!(h.len(), 3);
        assert_eq!(h[0].prop("ID"), Some("x1"));
        assert_eq!(h[0].prop("EMPTY"), Some(""));
        assert_eq!(h[0].planning.scheduled.as_ref().unwrap().at.as_deref(), Some("2024-01-02"));
        assert_eq!((h[1].title, h[1].line), ("inside", 10));
        assert_eq!(h[2].todo, Some("WAIT"));
    }
    #[test]
    fn todo_line_in_block_is_text() {
        let o = parse("#+begin_example\n#+TODO: NOPE\n#+end_example\n* NOPE x\n* TODO y\n");
        assert_eq!(o.headlines[0].todo, None);
        assert_eq!(o.headlines[1].todo, Some("TODO"));
        let o = parse("#+begin_example\n#+TODO: YES\n* YES x\n#+end_example\n");
        assert_eq!(o.headlines[0].todo, Some("YES"));
    }
}
