//! Inline objects: emphasis (Org's exact pre/post/border rules), links, footnote references,
//! entities, LaTeX fragments, sub/superscripts, timestamps, macros, snippets, targets and
//! special strings, written straight to HTML.
//!
//! Linear time: every "find the closing delimiter" question is answered by a forward-only
//! memo (queries come in increasing position order) or by a bracket-matching table built
//! once, so a megabyte of unclosed openers costs one pass per delimiter kind.

use super::entities::entity_html;
use super::util::{esc, esc_text};
use super::Ctx;

const MAX_DEPTH: usize = 20;

fn is_ws(c: u8) -> bool {
    c == b' ' || c == b'\t' || c == b'\n' || c == b'\r' || c == 0x0c
}
fn is_pre(c: u8) -> bool {
    is_ws(c) || matches!(c, b'-' | b'(' | b'\'' | b'"' | b'{')
}
fn is_post(c: u8) -> bool {
    is_ws(c) || matches!(c, b'-' | b'.' | b',' | b':' | b'!' | b'?' | b';' | b'\'' | b'"' | b')' | b'}' | b'[' | b'\\')
}
/// Whitespace as Emacs's syntax table sees it, for the character starting at byte `i`.
fn ws_at(b: &[u8], i: usize) -> bool {
    let c = b[i];
    if c < 0x80 {
        return is_ws(c);
    }
    // U+00A0, U+2000..U+200B (E2 80 80..8B) and U+3000 (E3 80 80).
    if c == 0xC2 {
        return i + 1 < b.len() && b[i + 1] == 0xA0;
    }
    i + 2 < b.len() && ((c == 0xE2 && b[i + 1] == 0x80 && (0x80..=0x8B).contains(&b[i + 2])) || (c == 0xE3 && b[i + 1] == 0x80 && b[i + 2] == 0x80))
}

/// Whitespace for the character ending just before byte `j`.
fn ws_before(b: &[u8], j: usize) -> bool {
    if j == 0 {
        return false;
    }
    let c = b[j - 1];
    if c < 0x80 {
        return is_ws(c);
    }
    (j >= 3 && ws_at(b, j - 3)) || (j >= 2 && b[j - 2] == 0xC2 && b[j - 1] == 0xA0)
}

fn is_alnum(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c >= 0x80
}
fn is_punct(c: u8) -> bool {
    c.is_ascii_punctuation()
}

fn marker_index(c: u8) -> usize {
    match c {
        b'*' => 0,
        b'/' => 1,
        b'_' => 2,
        b'=' => 3,
        b'~' => 4,
        _ => 5,
    }
}

/// Next occurrence of a fixed pattern at or after a position, remembered between queries.
#[derive(Clone, Copy)]
struct Finder {
    from: usize,
    found: Option<usize>,
    valid: bool,
}
impl Finder {
    fn new() -> Finder {
        Finder { from: 0, found: None, valid: false }
    }
    fn find(&mut self, hay: &[u8], pat: &[u8], from: usize) -> Option<usize> {
        if self.valid && from >= self.from {
            match self.found {
                None => return None,
                Some(f) if f >= from => return Some(f),
                _ => {}
            }
        }
        let mut k = from;
        let mut res = None;
        while k + pat.len() <= hay.len() {
            if hay[k] == pat[0] && &hay[k..k + pat.len()] == pat {
                res = Some(k);
                break;
            }
            k += 1;
        }
        self.from = from;
        self.found = res;
        self.valid = true;
        res
    }
}

const fn special_table() -> [bool; 256] {
    // Characters HTML forbids in text are special too (replaced with U+FFFD).
    let mut t = super::util::forbidden_table();
    let specials = b"*/_=~+^[<@{\\$:-.'\"\nsc&>";
    let mut k = 0;
    while k < specials.len() {
        t[specials[k] as usize] = true;
        k += 1;
    }
    t
}

/// Bytes that may start an object (checked further in `run`), without the bytes that are plain text under the document's options: quotes
/// unless smart quotes are on (`':t`), newlines unless line breaks are kept (`\n:t`).
const fn starts_for(smart: bool, breaks: bool) -> [bool; 256] {
    let mut t = special_table();
    if !smart {
        t[b'\'' as usize] = false;
        t[b'"' as usize] = false;
    }
    if !breaks {
        t[b'\n' as usize] = false;
    }
    // `src_` and `call_` are found from their `_` (see `run`): 's' and 'c' are too common
    // to stop at.
    t[b's' as usize] = false;
    t[b'c' as usize] = false;
    t
}
static STARTS: [[bool; 256]; 4] = [starts_for(false, false), starts_for(false, true), starts_for(true, false), starts_for(true, true)];

fn starts(smart: bool, breaks: bool) -> &'static [bool; 256] {
    &STARTS[(smart as usize) * 2 + breaks as usize]
}

/// The option-dependent start bytes plus the bytes a radio target can start with (either
/// case): with radio targets in the document, the main loop stops only where an object or a
/// radio link may begin. Stopping at fewer word starts changes nothing: a failed radio match
/// writes nothing, and a plain link's scheme never reaches back past a word start.
pub fn radio_start_table(o: &super::options::Options, radio_first: &[bool; 256]) -> [bool; 256] {
    let mut t = *starts(o.smart_quotes, o.preserve_breaks);
    for c in 0..=255u8 {
        if is_alnum(c) && radio_first[c.to_ascii_lowercase() as usize] {
            t[c as usize] = true;
        }
    }
    t
}

fn has_macro(text: &str) -> bool {
    let b = text.as_bytes();
    let mut k = 0;
    while let Some(at) = super::util::find_byte(b, k, b'{') {
        if b[at..].starts_with(b"{{{") {
            return true;
        }
        k = at + 1;
    }
    false
}

pub struct Inline<'t, 'c> {
    s: &'t str,
    b: &'t [u8],
    cx: &'c mut Ctx,
    closer: [Finder; 6],
    dbl_close: Finder,
    at_at: Finder,
    macro_close: Finder,
    paren_close: Finder,
    brack_close: Finder,
    dollar: Finder,
    dollar2: Finder,
    nls: Option<Vec<usize>>,
    matching: Option<Vec<u32>>,
    /// In table-of-contents titles: no links, no footnotes, no targets.
    plain: bool,
    /// Smart quotes: is a double / single quote open?
    dq_open: bool,
    sq_open: bool,
    /// End of the last object: a quote right after an object starts its own text.
    obj_end: usize,
    /// End of the last footnote reference (adjacent references get ox-html's ", " separator).
    fn_end: usize,
}

/// Render `text` (an Org paragraph's text) as HTML into `out`.
pub fn render_inline(cx: &mut Ctx, text: &str, out: &mut String) {
    if has_macro(text) {
        if let Some(expanded) = cx.expand_macros_text(text) {
            let mut r = Inline::new(cx, &expanded, false);
            r.run(0, expanded.len(), 0, false, out);
            return;
        }
    }
    let mut r = Inline::new(cx, text, false);
    r.run(0, text.len(), 0, false, out);
}

/// Render a headline title for the table of contents or a link description (no links/footnotes).
pub fn render_inline_plain(cx: &mut Ctx, text: &str, out: &mut String) {
    if has_macro(text) {
        if let Some(expanded) = cx.expand_macros_text(text) {
            let mut r = Inline::new(cx, &expanded, true);
            r.run(0, expanded.len(), 0, true, out);
            return;
        }
    }
    let mut r = Inline::new(cx, text, true);
    r.run(0, text.len(), 0, true, out);
}

fn nested_render(cx: &mut Ctx, text: &str, out: &mut String, plain: bool) {
    if cx.macro_depth > 6 {
        esc_text(out, text);
        return;
    }
    cx.macro_depth += 1;
    let mut r = Inline::new(cx, text, plain);
    r.run(0, text.len(), 0, plain, out);
    cx.macro_depth -= 1;
}

impl<'t, 'c> Inline<'t, 'c> {
    fn new(cx: &'c mut Ctx, s: &'t str, plain: bool) -> Inline<'t, 'c> {
        Inline {
            s,
            b: s.as_bytes(),
            cx,
            closer: [Finder::new(); 6],
            dbl_close: Finder::new(),
            at_at: Finder::new(),
            macro_close: Finder::new(),
            paren_close: Finder::new(),
            brack_close: Finder::new(),
            dollar: Finder::new(),
            dollar2: Finder::new(),
            nls: None,
            matching: None,
            plain,
            dq_open: false,
            sq_open: false,
            obj_end: usize::MAX,
            fn_end: usize::MAX,
        }
    }

    fn newlines_between(&mut self, a: usize, z: usize) -> usize {
        if z <= a {
            return 0;
        }
        if z - a < 512 {
            return self.b[a..z].iter().filter(|&&c| c == b'\n').count();
        }
        if self.nls.is_none() {
            let v: Vec<usize> = self.b.iter().enumerate().filter(|(_, &c)| c == b'\n').map(|(i, _)| i).collect();
            self.nls = Some(v);
        }
        let v = self.nls.as_ref().unwrap();
        let lo = v.partition_point(|&x| x < a);
        let hi = v.partition_point(|&x| x < z);
        hi - lo
    }

    /// Matching closer of the bracket at `i` (`{`/`[`/`(`), balanced, or None.
    fn matching(&mut self, i: usize) -> Option<usize> {
        if self.matching.is_none() {
            let mut m = vec![u32::MAX; self.b.len()];
            let mut stacks: [Vec<u32>; 3] = [Vec::new(), Vec::new(), Vec::new()];
            for (k, &c) in self.b.iter().enumerate() {
                let (which, open) = match c {
                    b'{' => (0, true),
                    b'}' => (0, false),
                    b'[' => (1, true),
                    b']' => (1, false),
                    b'(' => (2, true),
                    b')' => (2, false),
                    _ => continue,
                };
                if open {
                    stacks[which].push(k as u32);
                } else if let Some(o) = stacks[which].pop() {
                    m[o as usize] = k as u32;
                }
            }
            self.matching = Some(m);
        }
        let v = self.matching.as_ref().unwrap()[i];
        if v == u32::MAX {
            None
        } else {
            Some(v as usize)
        }
    }

    fn valid_closer(&self, j: usize, c: u8) -> bool {
        let b = self.b;
        b[j] == c && j >= 1 && !ws_before(b, j) && (j + 1 == b.len() || is_post(b[j + 1]) || ws_at(b, j + 1))
    }

    fn find_closer(&mut self, c: u8, from: usize) -> Option<usize> {
        let mi = marker_index(c);
        let f = self.closer[mi];
        if f.valid && from >= f.from {
            match f.found {
                None => return None,
                Some(x) if x >= from => return Some(x),
                _ => {}
            }
        }
        let mut k = from;
        let mut res = None;
        while k < self.b.len() {
            if self.b[k] == c && self.valid_closer(k, c) {
                res = Some(k);
                break;
            }
            k += 1;
        }
        self.closer[mi] = Finder { from, found: res, valid: true };
        res
    }

    /// The main loop over [start, end); author HTML opened in it is closed by its end.
    fn run(&mut self, start: usize, end: usize, depth: usize, no_links: bool, out: &mut String) {
        if !self.cx.inline_raw {
            return self.run_body(start, end, depth, no_links, out);
        }
        let mark = self.cx.author.enter();
        self.run_body(start, end, depth, no_links, out);
        self.cx.author.leave(out, mark);
    }

    fn run_body(&mut self, start: usize, end: usize, depth: usize, no_links: bool, out: &mut String) {
        if depth > MAX_DEPTH {
            esc_text(out, &self.s[start..end]);
            return;
        }
        let b = self.b;
        let radios = !self.cx.radios.is_empty() && !no_links;
        let smart = self.cx.o.smart_quotes;
        let breaks = self.cx.o.preserve_breaks;
        let plain_starts = starts(smart, breaks);
        let mut i = start;
        let mut flushed = start;
        let mut back_checked = usize::MAX;
        // Text between special bytes never needs escaping: `&`, `<`, `>` and NUL are special
        // and escaped here, so runs are copied as they are.
        let bb = &b[..end];
        while i < end {
            {
                // Plain text: skip in a tight loop to the next byte that may start something.
                let tab: &[bool; 256] = if radios { &self.cx.radio_starts } else { plain_starts };
                while i < end && !tab[bb[i] as usize] {
                    i += 1;
                }
            }
            if i >= end {
                break;
            }
            if bb[i] == b'_' && back_checked != i {
                // An inline `src_`/`call_` at a word start: step back to its first letter, which
                // the table let pass, and handle it as the per-byte loop would have (once).
                let k = if i >= start + 3 && &bb[i - 3..i] == b"src" {
                    i - 3
                } else if i >= start + 4 && &bb[i - 4..i] == b"call" {
                    i - 4
                } else {
                    i
                };
                let passed = if radios { !self.cx.radio_starts[bb[k] as usize] } else { !plain_starts[bb[k] as usize] };
                if k < i && k >= flushed && passed && (k == start || !is_alnum(bb[k - 1])) {
                    back_checked = i;
                    i = k;
                }
            }
            let c = bb[i];
            let special = match c {
                b'&' | b'>' => {
                    out.push_str(&self.s[flushed..i]);
                    out.push_str(if c == b'&' { "&amp;" } else { "&gt;" });
                    i += 1;
                    flushed = i;
                    continue;
                }
                0..=0x08 | 0x0b | 0x0e..=0x1f | 0x7f | 0xc2 | 0xef => {
                    let n = super::util::forbidden_char_len(bb, i);
                    if n > 0 {
                        out.push_str(&self.s[flushed..i]);
                        out.push('\u{fffd}');
                        i += n;
                        flushed = i;
                    } else {
                        i += 1;
                        while i < end && !self.s.is_char_boundary(i) {
                            i += 1;
                        }
                    }
                    continue;
                }
                b'*' | b'/' | b'_' | b'=' | b'~' | b'+' | b'^' | b'[' | b'<' | b'@' | b'{' | b'\\' | b'$' => true,
                b':' => i > start && bb[i - 1].is_ascii_alphabetic(),
                b'-' => i + 1 < end && bb[i + 1] == b'-',
                b'.' => i + 2 < end && bb[i + 1] == b'.' && bb[i + 2] == b'.',
                b'\'' | b'"' => smart,
                b'\n' => breaks,
                b's' => bb[i..].starts_with(b"src_") || (radios && (i == start || !is_alnum(bb[i - 1]))),
                b'c' => bb[i..].starts_with(b"call_") || (radios && (i == start || !is_alnum(bb[i - 1]))),
                _ => radios && is_alnum(c) && (i == start || !is_alnum(bb[i - 1])),
            };
            if !special {
                i += 1;
                continue;
            }
            let run_start = flushed;
            if flushed < i {
                out.push_str(&self.s[flushed..i]);
                flushed = i;
            }
            match self.object(i, start, end, depth, no_links, run_start, out) {
                Some((obj_start, after)) => {
                    let _ = obj_start;
                    i = after.max(i + 1);
                    self.obj_end = i;
                    flushed = i;
                }
                None => {
                    if c == b'<' {
                        out.push_str("&lt;");
                        i += 1;
                        flushed = i;
                        continue;
                    }
                    i += 1;
                    while i < end && !self.s.is_char_boundary(i) {
                        i += 1;
                    }
                }
            }
        }
        if flushed < end {
            out.push_str(&self.s[flushed..end]);
        }
    }

    /// Try to parse an object at `i`. On success returns (start of the object, end) having
    /// written its HTML to `o` (the object may start before `i`: plain links).
    fn object(&mut self, i: usize, start: usize, end: usize, depth: usize, no_links: bool, flushed: usize, o: &mut String) -> Option<(usize, usize)> {
        let b = self.b;
        let c = b[i];
        let opts_sup = self.cx.o.sup;
        match c {
            b'*' | b'/' | b'_' | b'=' | b'~' | b'+' => {
                if self.cx.o.emphasis {
                    if let Some(e) = self.emphasis(i, start, end, depth, no_links, o) {
                        return Some((i, e));
                    }
                }
                if c == b'_' && opts_sup > 0 {
                    return self.subsup(i, start, end, depth, no_links, o).map(|e| (i, e));
                }
                None
            }
            b'^' => {
                if opts_sup > 0 {
                    return self.subsup(i, start, end, depth, no_links, o).map(|e| (i, e));
                }
                None
            }
            b'[' => {
                if i + 1 < end && b[i + 1] == b'[' {
                    return self.bracket_link(i, end, depth, no_links, o).map(|e| (i, e));
                }
                if b[i..end].starts_with(b"[fn:") {
                    return self.footnote_ref(i, end, depth, no_links, o).map(|e| (i, e));
                }
                if let Some(e) = self.timestamp(i, end, o) {
                    return Some((i, e));
                }
                self.cookie(i, end, o).map(|e| (i, e))
            }
            b'<' => {
                if i + 1 < end && b[i + 1] == b'<' {
                    return self.target(i, end, depth, no_links, o).map(|e| (i, e));
                }
                if let Some(e) = self.timestamp(i, end, o) {
                    return Some((i, e));
                }
                if !no_links {
                    return self.angle_link(i, end, o).map(|e| (i, e));
                }
                None
            }
            b'@' => self.snippet(i, end, o).map(|e| (i, e)),
            b'{' => self.macro_call(i, end, o).map(|e| (i, e)),
            b'\\' => self.backslash(i, start, end, depth, no_links, o).map(|e| (i, e)),
            b'$' => self.dollar_math(i, start, end, o).map(|e| (i, e)),
            b':' => {
                if no_links {
                    return None;
                }
                self.plain_link(i, end, flushed, o)
            }
            b'-' => {
                if !self.cx.o.special_strings {
                    return None;
                }
                let mut k = i;
                while k < end && b[k] == b'-' {
                    k += 1;
                }
                let r = k - i;
                if k < end && (r == 2 || r == 3) && !self.object_starts_at(k, start, end) {
                    o.push_str(if r == 2 { "&#x2013;" } else { "&#x2014;" });
                    return Some((i, k));
                }
                if r > 1 {
                    esc_text(o, &self.s[i..k]);
                    return Some((i, k));
                }
                None
            }
            b'.' => {
                if self.cx.o.special_strings && i + 2 < end && b[i + 1] == b'.' && b[i + 2] == b'.' {
                    o.push_str("&#x2026;");
                    return Some((i, i + 3));
                }
                None
            }
            b'\'' | b'"' => {
                if !self.cx.o.smart_quotes {
                    return None;
                }
                let prev = if i > start && i != self.obj_end { Some(b[i - 1]) } else { None };
                let next = if i + 1 < end { Some(b[i + 1]) } else { None };
                let can_open = prev.map_or(true, |p| is_ws(p) || matches!(p, b'(' | b'[' | b'{' | b'-' | b'/')) && next.map_or(false, |n| !is_ws(n));
                let can_close = prev.map_or(false, |p| !is_ws(p)) || next.map_or(true, |n| is_ws(n) || is_punct(n));
                let s = if c == b'"' {
                    let opening = if can_open && can_close { !self.dq_open } else if self.dq_open { false } else { can_open };
                    self.dq_open = opening;
                    if opening { "&ldquo;" } else { "&rdquo;" }
                } else if prev.map_or(false, is_alnum) && next.map_or(false, is_alnum) {
                    "&rsquo;"
                } else {
                    let opening = if can_open && can_close { !self.sq_open } else if self.sq_open { false } else { can_open };
                    self.sq_open = opening;
                    if opening { "&lsquo;" } else { "&rsquo;" }
                };
                o.push_str(s);
                Some((i, i + 1))
            }
            b'\n' => {
                if self.cx.o.preserve_breaks && i + 1 < end {
                    o.push_str("<br />\n");
                    return Some((i, i + 1));
                }
                None
            }
            b's' => {
                if i > start && is_alnum(b[i - 1]) {
                    return None;
                }
                if b[i..end].starts_with(b"src_") {
                    return self.inline_src(i, end, o).map(|e| (i, e));
                }
                if !no_links && !self.cx.radios.is_empty() {
                    return self.radio(i, start, end, o).map(|e| (i, e));
                }
                None
            }
            b'c' => {
                if (i == start || !is_alnum(b[i - 1])) && b[i..end].starts_with(b"call_") {
                    if let Some(e) = self.inline_call(i, end) {
                        // Evaluation is off: an inline call exports nothing (as in Org without Babel).
                        return Some((i, e));
                    }
                }
                if !no_links && !self.cx.radios.is_empty() && (i == start || !is_alnum(b[i - 1])) {
                    return self.radio(i, start, end, o).map(|e| (i, e));
                }
                None
            }
            _ => {
                if !no_links && (i == start || !is_alnum(b[i - 1])) {
                    return self.radio(i, start, end, o).map(|e| (i, e));
                }
                None
            }
        }
    }

    /// Does an object (which would end the plain text before it) start at `k`? Used for
    /// Org's special strings, which only apply when a character of the same text follows.
    fn object_starts_at(&mut self, k: usize, start: usize, end: usize) -> bool {
        let b = self.b;
        let c = b[k];
        match c {
            b'*' | b'/' | b'_' | b'=' | b'~' | b'+' => {
                if !self.cx.o.emphasis || k + 1 >= end || ws_at(b, k + 1) {
                    return false;
                }
                match self.find_closer(c, k + 2) {
                    Some(j) => j < end && self.newlines_between(k, j) <= 1,
                    None => false,
                }
            }
            b'[' => b[k..end].starts_with(b"[[") || b[k..end].starts_with(b"[fn:"),
            b'{' => b[k..end].starts_with(b"{{{"),
            b'@' => b[k..end].starts_with(b"@@"),
            b'\\' => k + 1 < end && (b[k + 1].is_ascii_alphabetic() || b[k + 1] == b'(' || b[k + 1] == b'['),
            b'<' => timestamp_end(b, k, end).is_some() || b[k..end].starts_with(b"<<"),
            _ => {
                let _ = start;
                false
            }
        }
    }

    fn emphasis(&mut self, i: usize, start: usize, end: usize, depth: usize, no_links: bool, o: &mut String) -> Option<usize> {
        let b = self.b;
        let c = b[i];
        if i > start && !is_pre(b[i - 1]) && !ws_before(b, i) {
            return None;
        }
        if i + 2 >= end + 1 || i + 1 >= end || ws_at(b, i + 1) {
            return None;
        }
        let mut j = self.find_closer(c, i + 2);
        // A closer just before the end of this region is valid too (Org narrows to it).
        if end >= 2 && end - 1 >= i + 2 && b[end - 1] == c && !ws_before(b, end - 1) {
            match j {
                Some(x) if x < end - 1 => {}
                _ => j = Some(end - 1),
            }
        }
        let j = j?;
        if j >= end {
            return None;
        }
        if self.newlines_between(i, j) > 1 {
            return None;
        }
        match c {
            b'=' | b'~' => {
                o.push_str("<code>");
                esc_text(o, &self.s[i + 1..j]);
                o.push_str("</code>");
            }
            _ => {
                let (open, close) = match c {
                    b'*' => ("<b>", "</b>"),
                    b'/' => ("<i>", "</i>"),
                    b'_' => ("<span class=\"underline\">", "</span>"),
                    _ => ("<del>", "</del>"),
                };
                o.push_str(open);
                self.run(i + 1, j, depth + 1, no_links, o);
                o.push_str(close);
            }
        }
        Some(j + 1)
    }

    fn subsup(&mut self, i: usize, start: usize, end: usize, depth: usize, no_links: bool, o: &mut String) -> Option<usize> {
        let b = self.b;
        if i == start || is_ws(b[i - 1]) || i + 1 >= end {
            return None;
        }
        let tag = if b[i] == b'_' { "sub" } else { "sup" };
        let n = b[i + 1];
        if n == b'{' {
            let close = self.matching(i + 1)?;
            if close >= end {
                return None;
            }
            o.push('<');
            o.push_str(tag);
            o.push('>');
            self.run(i + 2, close, depth + 1, no_links, o);
            o.push_str("</");
            o.push_str(tag);
            o.push('>');
            return Some(close + 1);
        }
        if self.cx.o.sup == 2 {
            return None;
        }
        if n == b'*' {
            o.push('<');
            o.push_str(tag);
            o.push_str(">*</");
            o.push_str(tag);
            o.push('>');
            return Some(i + 2);
        }
        let mut k = i + 1;
        if b[k] == b'+' || b[k] == b'-' {
            k += 1;
        }
        let body_start = k;
        let mut last_alnum = None;
        while k < end && (is_alnum(b[k]) || b[k] == b'.' || b[k] == b',' || b[k] == b'\\') {
            if is_alnum(b[k]) {
                last_alnum = Some(k);
            }
            k += 1;
        }
        let la = last_alnum?;
        if la < body_start {
            return None;
        }
        let mut e = la + 1;
        while e < end && !self.s.is_char_boundary(e) {
            e += 1;
        }
        o.push('<');
        o.push_str(tag);
        o.push('>');
        self.run(i + 1, e, depth + 1, no_links, o);
        o.push_str("</");
        o.push_str(tag);
        o.push('>');
        Some(e)
    }

    fn bracket_link(&mut self, i: usize, end: usize, depth: usize, no_links: bool, o: &mut String) -> Option<usize> {
        let b = self.b;
        let mut k = i + 2;
        while k < end {
            match b[k] {
                b'\\' if k + 1 < end && (b[k + 1] == b'[' || b[k + 1] == b']' || b[k + 1] == b'\\') => k += 2,
                b'[' => return None,
                b']' => break,
                _ => k += 1,
            }
        }
        if k >= end || k == i + 2 || k + 1 >= end {
            return None;
        }
        let path_end = k;
        let (desc, after) = if b[k + 1] == b']' {
            (None, k + 2)
        } else if b[k + 1] == b'[' {
            let close = self.dbl_close.find(b, b"]]", k + 2)?;
            if close + 2 > end || close < k + 3 {
                return None;
            }
            (Some((k + 2, close)), close + 2)
        } else {
            return None;
        };
        if no_links {
            // Inside a description or a TOC title: keep the text only.
            match desc {
                Some((a, z)) => self.run(a, z, depth + 1, true, o),
                None => esc_text(o, &unescape_link(&self.s[i + 2..path_end])),
            }
            return Some(after);
        }
        let path = unescape_link(&self.s[i + 2..path_end]);
        let path = if path.contains('\n') { path.split('\n').map(|l| l.trim()).collect::<Vec<_>>().join(" ") } else { path };
        let path = super::links::expand_abbrev(self.cx, &path).unwrap_or(path);
        let mut desc_html = None;
        if let Some((a, z)) = desc {
            let dtext = &self.s[a..z];
            let mut d = String::new();
            let dt = dtext.trim();
            let desc_is_link = super::util::starts_with_ci(dt, "file:") || super::util::starts_with_ci(dt, "http://") || super::util::starts_with_ci(dt, "https://");
            if desc_is_link && is_image_path(dt) {
                let src = image_src(self.cx, dtext.trim());
                push_img(&mut d, &src, self.cx);
            } else {
                self.run(a, z, depth + 1, true, &mut d);
            }
            desc_html = Some(d);
        }
        super::links::render_link(self.cx, &path, desc_html, o);
        Some(after)
    }

    fn footnote_ref(&mut self, i: usize, end: usize, depth: usize, no_links: bool, o: &mut String) -> Option<usize> {
        let b = self.b;
        let mut k = i + 4;
        while k < end && (b[k].is_ascii_alphanumeric() || b[k] == b'-' || b[k] == b'_' || b[k] >= 0x80) {
            k += 1;
        }
        if k >= end {
            return None;
        }
        let label = &self.s[i + 4..k];
        let (def, after) = if b[k] == b']' {
            if label.is_empty() {
                return None;
            }
            (None, k + 1)
        } else if b[k] == b':' {
            let close = self.matching(i)?;
            if close >= end {
                return None;
            }
            (Some((k + 1, close)), close + 1)
        } else {
            return None;
        };
        if no_links || !self.cx.o.footnotes {
            return Some(after);
        }
        if let Some((a, z)) = def {
            if self.cx.fn_depth >= super::MAX_FOOTNOTE_DEPTH {
                // Too deeply nested inside other footnotes: keep the text in place.
                o.push_str(" (");
                self.run(a, z, depth + 1, true, o);
                o.push(')');
                return Some(after);
            }
        }
        let def_text = def.map(|(a, z)| self.s[a..z].to_string());
        let _ = depth;
        let (n, nth) = self.cx.footnote_number(label, def_text);
        if self.fn_end == i {
            o.push_str("<sup>, </sup>");
        }
        self.fn_end = after;
        o.push_str("<sup><a id=\"fnr.");
        o.push_str(&n.to_string());
        if nth > 1 {
            o.push('.');
            o.push_str(&nth.to_string());
        }
        o.push_str("\" class=\"footref\" href=\"#fn.");
        o.push_str(&n.to_string());
        o.push_str("\" role=\"doc-backlink\">");
        o.push_str(&n.to_string());
        o.push_str("</a></sup>");
        Some(after)
    }

    fn timestamp(&mut self, i: usize, end: usize, o: &mut String) -> Option<usize> {
        let e = timestamp_end(self.b, i, end)?;
        let mut e2 = e;
        // Ranges: <a>--<b>
        if e + 2 < end && self.b[e] == b'-' && self.b[e + 1] == b'-' && self.b[e + 2] == self.b[i] {
            if let Some(x) = timestamp_end(self.b, e + 2, end) {
                e2 = x;
            }
        }
        if !self.cx.o.timestamps {
            return Some(e2);
        }
        o.push_str("<span class=\"timestamp-wrapper\"><span class=\"timestamp\">");
        let t = &self.s[i..e2];
        if !super::timestamp::push_interpreted(o, t) {
            esc_text(o, t);
        }
        // Org's interpreter writes the object's trailing blanks (post-blank) inside the span as
        // spaces, and the exporter writes them again after it: ox-html shows them twice.
        let mut after = e2;
        while after < end && (self.b[after] == b' ' || self.b[after] == b'\t') {
            o.push(' ');
            after += 1;
        }
        o.push_str("</span></span>");
        Some(e2)
    }

    fn cookie(&mut self, i: usize, end: usize, o: &mut String) -> Option<usize> {
        let b = self.b;
        let mut k = i + 1;
        while k < end && k < i + 24 && (b[k].is_ascii_digit() || b[k] == b'/' || b[k] == b'%') {
            k += 1;
        }
        if k >= end || b[k] != b']' || k == i + 1 {
            return None;
        }
        let inner = &self.s[i + 1..k];
        let ok = if let Some(p) = inner.find('/') {
            inner[..p].bytes().all(|c| c.is_ascii_digit()) && inner[p + 1..].bytes().all(|c| c.is_ascii_digit())
        } else {
            inner.ends_with('%') && inner[..inner.len() - 1].bytes().all(|c| c.is_ascii_digit())
        };
        if !ok {
            return None;
        }
        o.push_str("<code>");
        esc_text(o, &self.s[i..k + 1]);
        o.push_str("</code>");
        Some(k + 1)
    }

    fn target(&mut self, i: usize, end: usize, depth: usize, no_links: bool, o: &mut String) -> Option<usize> {
        let b = self.b;
        let radio = i + 2 < end && b[i + 2] == b'<';
        let s = if radio { i + 3 } else { i + 2 };
        let mut k = s;
        while k < end && b[k] != b'<' && b[k] != b'>' && b[k] != b'\n' {
            k += 1;
        }
        if k == s || k >= end || is_ws(b[s]) || is_ws(b[k - 1]) {
            return None;
        }
        let close: &[u8] = if radio { b">>>" } else { b">>" };
        if !b[k..end].starts_with(close) {
            return None;
        }
        let text = &self.s[s..k];
        let after = k + close.len();
        if no_links {
            if radio {
                self.run(s, k, depth + 1, true, o);
            }
            return Some(after);
        }
        let id = self.cx.target_id(text);
        o.push_str("<a id=\"");
        esc(o, &id);
        o.push_str("\">");
        if radio {
            self.run(s, k, depth + 1, true, o);
        }
        o.push_str("</a>");
        Some(after)
    }

    fn radio(&mut self, i: usize, start: usize, end: usize, o: &mut String) -> Option<usize> {
        let b = self.b;
        if i > start && is_alnum(b[i - 1]) {
            return None;
        }
        if !self.cx.radio_first[b[i].to_ascii_lowercase() as usize] {
            return None;
        }
        let mut buf = [0u8; super::FIRST_WORD_MAX];
        let word = super::first_word_lower_in(&b[i..end], &mut buf);
        if word.is_empty() {
            return None;
        }
        let mut hit = None;
        if let Some(cands) = self.cx.radio_index.get(word) {
            for &k in cands {
                let rb = self.cx.radios[k].0.as_bytes();
                if i + rb.len() <= end && b[i..i + rb.len()].eq_ignore_ascii_case(rb) && (i + rb.len() == end || !is_alnum(b[i + rb.len()])) {
                    hit = Some(k);
                    break;
                }
            }
        }
        let k = hit?;
        let len = self.cx.radios[k].0.len();
        let id = self.cx.radios[k].1.clone();
        o.push_str("<a href=\"#");
        esc(o, &id);
        o.push_str("\">");
        esc_text(o, &self.s[i..i + len]);
        o.push_str("</a>");
        Some(i + len)
    }

    fn angle_link(&mut self, i: usize, end: usize, o: &mut String) -> Option<usize> {
        let b = self.b;
        let mut k = i + 1;
        while k < end && k < i + 16 && b[k].is_ascii_alphabetic() {
            k += 1;
        }
        if k >= end || b[k] != b':' || k == i + 1 {
            return None;
        }
        let scheme = &self.s[i + 1..k];
        if !super::links::is_link_type(scheme) {
            return None;
        }
        let mut e = k + 1;
        while e < end && b[e] != b'>' && b[e] != b'<' && b[e] != b'\n' && b[e] != b']' {
            e += 1;
        }
        if e >= end || b[e] != b'>' || e == k + 1 {
            return None;
        }
        let path = self.s[i + 1..e].to_string();
        super::links::render_link(self.cx, &path, None, o);
        Some(e + 1)
    }

    fn plain_link(&mut self, i: usize, end: usize, flushed: usize, o: &mut String) -> Option<(usize, usize)> {
        let b = self.b;
        let mut s = i;
        while s > flushed && i - s < 12 && b[s - 1].is_ascii_alphabetic() {
            s -= 1;
        }
        if s == i || (s > 0 && is_alnum(b[s - 1])) {
            return None;
        }
        let scheme = &self.s[s..i];
        if !matches!(scheme, "http" | "https" | "ftp" | "mailto" | "news" | "file" | "doi") {
            return None;
        }
        let mut e = i + 1;
        while e < end && !matches!(b[e], b'[' | b']' | b' ' | b'\t' | b'\n' | b'(' | b')' | b'<' | b'>' | b'\r') {
            e += 1;
        }
        // (word) suffix
        let mut stop = e;
        if e < end && b[e] == b'(' {
            let mut k = e + 1;
            while k < end && (is_alnum(b[k]) || b[k] == b'_') {
                k += 1;
            }
            if k < end && b[k] == b')' && k > e + 1 {
                stop = k + 1;
            }
        }
        if stop == e {
            while stop > i + 1 && is_punct(b[stop - 1]) && b[stop - 1] != b'/' {
                stop -= 1;
            }
        }
        if stop <= i + 1 {
            return None;
        }
        while !self.s.is_char_boundary(stop) {
            stop += 1;
        }
        let path = self.s[s..stop].to_string();
        // The scheme letters were already written verbatim (letters need no escaping): take them back.
        let n = o.len() - (i - s);
        o.truncate(n);
        super::links::render_link(self.cx, &path, None, o);
        Some((s, stop))
    }

    fn snippet(&mut self, i: usize, end: usize, o: &mut String) -> Option<usize> {
        let b = self.b;
        if i + 1 >= end || b[i + 1] != b'@' {
            return None;
        }
        let mut k = i + 2;
        while k < end && (b[k].is_ascii_alphanumeric() || b[k] == b'-') {
            k += 1;
        }
        if k >= end || b[k] != b':' || k == i + 2 {
            return None;
        }
        let backend = &self.s[i + 2..k];
        let close = self.at_at.find(b, b"@@", k + 1)?;
        if close + 2 > end {
            return None;
        }
        if backend.eq_ignore_ascii_case("html") && self.cx.o.raw_html {
            let s = self.s;
            self.cx.author.feed(o, &s[k + 1..close], || snippet_end_tags(&s[i..end]));
            self.cx.raw_used = true;
        }
        Some(close + 2)
    }

    fn macro_call(&mut self, i: usize, end: usize, o: &mut String) -> Option<usize> {
        let b = self.b;
        if !b[i..end].starts_with(b"{{{") {
            return None;
        }
        let close = self.macro_close.find(b, b"}}}", i + 3)?;
        if close + 3 > end {
            return None;
        }
        let (name, args) = parse_macro_call(&self.s[i + 3..close])?;
        let expansion = self.cx.expand_macro(name, &args);
        match expansion {
            super::MacroOut::Text(t) => nested_render(self.cx, &t, o, self.plain),
            super::MacroOut::Code(t) => {
                o.push_str("<code>");
                esc_text(o, &t);
                o.push_str("</code>");
            }
            super::MacroOut::Nothing => {}
        }
        Some(close + 3)
    }

    fn backslash(&mut self, i: usize, start: usize, end: usize, depth: usize, no_links: bool, o: &mut String) -> Option<usize> {
        let b = self.b;
        let _ = (start, depth, no_links);
        if i + 1 >= end {
            return None;
        }
        let n = b[i + 1];
        match n {
            b'\\' => {
                // Line break: \\ then spaces to end of line.
                let mut k = i + 2;
                while k < end && (b[k] == b' ' || b[k] == b'\t') {
                    k += 1;
                }
                if k == end || b[k] == b'\n' {
                    o.push_str("<br />");
                    return Some(k);
                }
                None
            }
            b'(' | b'[' => {
                if !self.cx.o.latex {
                    return None;
                }
                let (pat, f): (&[u8], &mut Finder) = if n == b'(' { (b"\\)", &mut self.paren_close) } else { (b"\\]", &mut self.brack_close) };
                let close = f.find(b, pat, i + 2)?;
                if close + 2 > end {
                    return None;
                }
                o.push_str(if n == b'(' { "<span class=\"math inline\">" } else { "<span class=\"math display\">" });
                esc_text(o, &self.s[i..close + 2]);
                o.push_str("</span>");
                Some(close + 2)
            }
            b'_' if self.cx.o.entities && i + 2 < end && b[i + 2] == b' ' => {
                // Space entities: \_ followed by 1 to 20 spaces.
                let mut k = i + 2;
                while k < end && k < i + 22 && b[k] == b' ' {
                    k += 1;
                }
                match entity_html(&self.s[i + 1..k]) {
                    Some(h) => {
                        o.push_str(h);
                        Some(k)
                    }
                    None => None,
                }
            }
            b'-' => {
                if self.cx.o.special_strings {
                    o.push_str("&#x00ad;");
                    return Some(i + 2);
                }
                None
            }
            _ if n.is_ascii_alphabetic() => {
                let mut k = i + 1;
                while k < end && b[k].is_ascii_alphabetic() {
                    k += 1;
                }
                // there4, sup1..3, frac12/14/34/13/...: the entity names with digits.
                if matches!(&self.s[i + 1..k], "there" | "sup" | "frac") {
                    let mut d = k;
                    while d < end && d < k + 2 && b[d].is_ascii_digit() {
                        d += 1;
                    }
                    if d > k && entity_html(&self.s[i + 1..d]).is_some() {
                        k = d;
                    }
                }
                let name = &self.s[i + 1..k];
                // Entity: name followed by {} , end, or a non-letter.
                if self.cx.o.entities {
                    if let Some(h) = entity_html(name) {
                        o.push_str(h);
                        if b[k..end].starts_with(b"{}") {
                            return Some(k + 2);
                        }
                        return Some(k);
                    }
                }
                if !self.cx.o.latex {
                    return None;
                }
                // LaTeX command: \name*?([..]|{..})*
                if k < end && b[k] == b'*' {
                    k += 1;
                }
                loop {
                    if k < end && (b[k] == b'[' || b[k] == b'{') {
                        let closer = if b[k] == b'[' { b']' } else { b'}' };
                        let mut m = k + 1;
                        while m < end && b[m] != closer && b[m] != b'{' && b[m] != b'}' && b[m] != b'\n' && !(closer == b']' && b[m] == b'[') {
                            m += 1;
                        }
                        if m < end && b[m] == closer {
                            k = m + 1;
                            continue;
                        }
                    }
                    break;
                }
                o.push_str("<span class=\"math inline\">");
                esc_text(o, &self.s[i..k]);
                o.push_str("</span>");
                Some(k)
            }
            _ => None,
        }
    }

    fn dollar_math(&mut self, i: usize, start: usize, end: usize, o: &mut String) -> Option<usize> {
        if !self.cx.o.latex {
            return None;
        }
        let b = self.b;
        if i + 1 < end && b[i + 1] == b'$' {
            let close = self.dollar2.find(b, b"$$", i + 2)?;
            if close + 2 > end || close == i + 2 {
                return None;
            }
            // ox-html (MathJax) writes $$…$$ as \[…\] and $…$ as \(…\): so do we.
            o.push_str("<span class=\"math display\">\\[");
            esc_text(o, &self.s[i + 2..close]);
            o.push_str("\\]</span>");
            return Some(close + 2);
        }
        if i > start && b[i - 1] == b'$' {
            return None;
        }
        if i + 1 >= end || matches!(b[i + 1], b' ' | b'\t' | b'\n' | b',' | b'.' | b';' | b'$') {
            return None;
        }
        let close = self.dollar.find(b, b"$", i + 1)?;
        if close >= end || matches!(b[close - 1], b' ' | b'\t' | b'\n' | b',' | b'.') {
            return None;
        }
        if close + 1 < end {
            let a = b[close + 1];
            if !(is_ws(a) || is_punct(a) && a != b'$') {
                return None;
            }
        }
        if self.newlines_between(i, close) > 2 {
            return None;
        }
        o.push_str("<span class=\"math inline\">\\(");
        esc_text(o, &self.s[i + 1..close]);
        o.push_str("\\)</span>");
        Some(close + 1)
    }

    /// `call_NAME[header](args)[header]` → its end.
    fn inline_call(&mut self, i: usize, end: usize) -> Option<usize> {
        let b = self.b;
        let mut k = i + 5;
        while k < end && !matches!(b[k], b' ' | b'\t' | b'\n' | b'[' | b'(' | b']' | b')') {
            k += 1;
        }
        if k == i + 5 || k >= end {
            return None;
        }
        if b[k] == b'[' {
            let c = self.matching(k)?;
            if c >= end || self.newlines_between(k, c) > 0 {
                return None;
            }
            k = c + 1;
        }
        if k >= end || b[k] != b'(' {
            return None;
        }
        let c = self.matching(k)?;
        if c >= end || self.newlines_between(k, c) > 0 {
            return None;
        }
        k = c + 1;
        if k < end && b[k] == b'[' {
            if let Some(c2) = self.matching(k) {
                if c2 < end && self.newlines_between(k, c2) == 0 {
                    k = c2 + 1;
                }
            }
        }
        Some(k)
    }

    fn inline_src(&mut self, i: usize, end: usize, o: &mut String) -> Option<usize> {
        let b = self.b;
        let mut k = i + 4;
        while k < end && !matches!(b[k], b' ' | b'\t' | b'\n' | b'[' | b'{') {
            k += 1;
        }
        if k >= end || k == i + 4 {
            return None;
        }
        let lang = &self.s[i + 4..k];
        if b[k] == b'[' {
            let c = self.matching(k)?;
            if c >= end || self.newlines_between(k, c) > 0 {
                return None;
            }
            k = c + 1;
        }
        if k >= end || b[k] != b'{' {
            return None;
        }
        let c = self.matching(k)?;
        if c >= end || self.newlines_between(k, c) > 0 {
            return None;
        }
        o.push_str("<code class=\"src src-");
        esc(o, lang);
        o.push_str("\">");
        super::highlight::highlight(lang, &self.s[k + 1..c], o, self.cx.o.highlight);
        o.push_str("</code>");
        Some(c + 1)
    }
}

fn timestamp_end(b: &[u8], i: usize, end: usize) -> Option<usize> {
    let close = match b[i] {
        b'<' => b'>',
        b'[' => b']',
        _ => return None,
    };
    // YYYY-MM-DD
    if i + 11 >= end + 0 && i + 11 > end {
        return None;
    }
    let d = &b[i + 1..(i + 11).min(end)];
    if d.len() < 10 {
        return None;
    }
    let pat_ok = d[0..4].iter().all(|c| c.is_ascii_digit()) && d[4] == b'-' && d[5..7].iter().all(|c| c.is_ascii_digit()) && d[7] == b'-' && d[8..10].iter().all(|c| c.is_ascii_digit());
    if !pat_ok {
        return None;
    }
    let mut k = i + 11;
    while k < end && k < i + 80 && b[k] != close && b[k] != b'\n' && b[k] != b'<' && b[k] != b'>' && b[k] != b'[' && b[k] != b']' {
        k += 1;
    }
    if k < end && b[k] == close {
        Some(k + 1)
    } else {
        None
    }
}

/// `name` or `name(args)` between `{{{` and `}}}`: the macro's name and its split arguments,
/// or None when it is not a macro call (bad name, unbalanced parentheses).
pub fn parse_macro_call(inner: &str) -> Option<(&str, Vec<String>)> {
    let (name, args) = match inner.find('(') {
        Some(p) => {
            if !inner.ends_with(')') {
                return None;
            }
            (&inner[..p], Some(&inner[p + 1..inner.len() - 1]))
        }
        None => (inner, None),
    };
    let nb = name.as_bytes();
    if nb.is_empty() || !nb[0].is_ascii_alphabetic() || !nb.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_') {
        return None;
    }
    Some((name, args.map(split_macro_args).unwrap_or_default()))
}

pub fn split_macro_args(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(&n) = chars.peek() {
                if n == ',' {
                    cur.push(',');
                    chars.next();
                    continue;
                }
            }
            cur.push(c);
        } else if c == ',' {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    out.into_iter().map(|a| a.split_whitespace().collect::<Vec<_>>().join(" ")).collect()
}

fn unescape_link(s: &str) -> String {
    if !s.contains('\\') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\\' {
            if let Some(&n) = it.peek() {
                if n == '[' || n == ']' || n == '\\' {
                    out.push(n);
                    it.next();
                    continue;
                }
            }
        }
        out.push(c);
    }
    out
}

const IMAGE_EXT: [&str; 9] = ["png", "jpg", "jpeg", "gif", "svg", "webp", "bmp", "tif", "tiff"];

/// Is this link path an image Org would inline (file/http(s)/relative with an image extension)?
pub fn is_image_path(path: &str) -> bool {
    let p = path.trim();
    let lower = p.to_ascii_lowercase();
    let body = if let Some(r) = lower.strip_prefix("file:") {
        r.to_string()
    } else if lower.starts_with("http://") || lower.starts_with("https://") {
        lower.clone()
    } else if lower.starts_with("data:image/") {
        return !lower.starts_with("data:image/svg");
    } else if lower.contains(':') {
        return false;
    } else {
        lower.clone()
    };
    let body = body.split("::").next().unwrap_or("");
    match body.rfind('.') {
        Some(d) => IMAGE_EXT.contains(&&body[d + 1..]),
        None => false,
    }
}

pub fn image_src(cx: &Ctx, path: &str) -> String {
    let p = path.trim();
    let p = if super::util::starts_with_ci(p, "file:") { &p[5..] } else { p };
    super::links::with_base(cx, p)
}

pub fn push_img(o: &mut String, src: &str, _cx: &Ctx) {
    let alt = src.rsplit('/').next().unwrap_or(src);
    let alt = if alt.len() > 200 || src.starts_with("data:") { "image" } else { alt };
    o.push_str("<img src=\"");
    esc(o, super::util::safe_href(src, true));
    o.push_str("\" alt=\"");
    esc(o, alt);
    o.push_str("\" />");
}

/// End tags inside the `@@html:…@@` snippets of `text` (for `rawhtml::AuthorHtml::feed`).
fn snippet_end_tags(text: &str) -> Vec<(String, u32)> {
    let b = text.as_bytes();
    let mut v = Vec::new();
    let mut i = 0;
    while let Some(p) = b[i..].windows(2).position(|w| w == b"@@") {
        let at = i + p;
        if b.len() >= at + 7 && b[at + 2..at + 7].eq_ignore_ascii_case(b"html:") {
            match b[at + 7..].windows(2).position(|w| w == b"@@") {
                Some(q) => {
                    super::rawhtml::end_tag_names(&text[at + 7..at + 7 + q], &mut v);
                    i = at + 7 + q + 2;
                }
                None => break,
            }
        } else {
            i = at + 1;
        }
    }
    v
}
