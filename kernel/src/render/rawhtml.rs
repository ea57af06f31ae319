//! Author HTML (`#+HTML:`, `#+begin_export html`, `@@html:…@@`) made unable to break the page.
//!
//! Why: raw HTML is written into the page as it is, so one `<div>` left open would swallow every
//! section after it, a stray `</div>` would close the renderer's own containers, and an open
//! `<textarea>`, `<!--` or attribute quote would eat the rest of the document. Each piece goes
//! through a small HTML tokenizer that keeps a stack of the author's open elements and mirrors
//! what an HTML5 parser would do with them:
//!
//! - an element lives at most as long as the Org container the piece sits in (the paragraph for
//!   `@@html:…@@`, the section text, block, list item or footnote for `#+HTML:` and export
//!   blocks); it stays open past the end of its own piece only when a later piece of the same
//!   container has an end tag for it (`@@html:<b>@@bold@@html:</b>@@`, the Org manual's own
//!   example); otherwise it is closed where its piece ends;
//! - end tags that match nothing the author opened in that container are dropped;
//! - comments, `<script>`/`<style>`/`<textarea>`/`<title>`/`<xmp>`/`<iframe>`/`<noembed>`/
//!   `<noframes>`/`<noscript>` contents, CDATA, tags and attribute values always end inside
//!   their own piece; `<p>`, `<svg>`, `<math>`, `<select>`, `<template>`, `<button>`, `<object>`
//!   and the like are closed at the end of their piece whatever follows;
//! - start tags that an HTML parser would let close elements further out (`<li>`, `<dt>`, `<dd>`
//!   outside the author's own list, table parts outside the author's own table, a nested
//!   `<form>`, `<html>`, `<head>`, `<body>`, `<frameset>`, `<frame>`, `<plaintext>`) are dropped
//!   (their contents stay); where the parser would close one of the author's own elements
//!   implicitly (`<p>` before a block, `<li>` after `<li>`, a cell after a cell, …) the end tag is
//!   written out, so the parser and this stack always agree;
//! - doctypes, processing instructions and bogus comments are dropped, a `<` that starts
//!   nothing is written as `&lt;`, characters HTML forbids become U+FFFD.
//!
//! Well-formed author HTML comes out as written, except that tags are re-serialised: one space
//! between attributes, duplicate attributes dropped, an unquoted value that HTML would not accept
//! unquoted put in double quotes, `<x/>` on a non-void element written as `<x></x>`.

use super::util::{esc_text, forbidden_char_len};

#[derive(Clone, Copy, PartialEq)]
enum Ns {
    Html,
    Svg,
    Math,
}

struct Open {
    /// Lowercase tag name.
    name: String,
    /// The name as the author wrote it (SVG/MathML names are case-sensitive).
    written: String,
    ns: Ns,
    /// Closed at the end of the piece that opened it, whatever follows.
    local: bool,
    /// Which piece opened it.
    piece: u32,
    /// An SVG/MathML integration point: its children are parsed as HTML.
    html_point: bool,
}

/// What `enter` saves of the enclosing container (kept on the caller's stack).
pub struct Mark {
    base: usize,
    future: Option<Vec<(String, u32)>>,
}

/// The author's open elements, scoped by the Org containers being rendered.
#[derive(Default)]
pub struct AuthorHtml {
    stack: Vec<Open>,
    /// Where the current container's elements start in `stack`.
    base: usize,
    /// End-tag names (lowercase) still to come in later pieces of the current container, with
    /// counts; computed at the container's first piece.
    future: Option<Vec<(String, u32)>>,
    piece: u32,
    /// Raised while the contents of a `<noscript>` are balanced on their own.
    floor: usize,
    in_noscript: bool,
    /// Open `<select>` elements (checked at every start tag).
    selects: usize,
    /// In the text being tokenized, no `>` at or after this index (saves rescans).
    no_gt_from: usize,
}

/// At most this many author elements are open at once (deeper start tags are dropped): every
/// per-tag check is then bounded and rendering stays linear.
const MAX_OPEN: usize = 256;
/// Attributes kept per tag.
const MAX_ATTRS: usize = 256;
/// Distinct end-tag names remembered per container (others only close what is open).
const MAX_NAMES: usize = 64;
/// At most this many author elements stay open past the end of their piece.
const MAX_KEPT: usize = 16;
/// Scope searches look at most this deep; a start tag whose effect is not decided within it is
/// dropped (dropping a tag never lets it act on anything).
const WALK: usize = 64;

enum Found {
    At(usize),
    No,
    TooDeep,
}

const VOID: &[&str] = &[
    "area", "base", "basefont", "bgsound", "br", "col", "embed", "hr", "image", "img", "input", "keygen", "link", "meta", "param", "source",
    "track", "wbr",
];
const RAW_TEXT: &[&str] = &["script", "style", "xmp", "iframe", "noembed", "noframes", "textarea", "title"];
const LOCAL: &[&str] = &["p", "svg", "math", "select", "template", "button", "object", "applet", "marquee", "noscript", "form", "ruby", "datalist", "option", "optgroup"];
const DROPPED: &[&str] = &["html", "head", "body", "frameset", "frame", "plaintext"];
/// Start tags that close an open `<p>` (HTML5 "close a p element").
const P_CLOSERS: &[&str] = &[
    "address", "article", "aside", "blockquote", "center", "details", "dialog", "dir", "div", "dl", "fieldset", "figcaption", "figure",
    "footer", "header", "hgroup", "main", "menu", "nav", "ol", "p", "search", "section", "summary", "ul", "h1", "h2", "h3", "h4", "h5",
    "h6", "pre", "listing", "form", "li", "dd", "dt", "table", "hr", "xmp",
];
/// HTML5 "special" elements (they stop the `<li>`/`<dd>`/`<dt>` search, except address, div, p).
const SPECIAL: &[&str] = &[
    "address", "applet", "area", "article", "aside", "base", "basefont", "bgsound", "blockquote", "body", "br", "button", "caption",
    "center", "col", "colgroup", "dd", "details", "dir", "div", "dl", "dt", "embed", "fieldset", "figcaption", "figure", "footer", "form",
    "frame", "frameset", "h1", "h2", "h3", "h4", "h5", "h6", "head", "header", "hgroup", "hr", "html", "iframe", "img", "input", "keygen",
    "li", "link", "listing", "main", "marquee", "menu", "meta", "nav", "noembed", "noframes", "noscript", "object", "ol", "p", "param",
    "plaintext", "pre", "script", "search", "section", "select", "source", "style", "summary", "table", "tbody", "td", "template",
    "textarea", "tfoot", "th", "thead", "title", "tr", "track", "ul", "wbr", "xmp",
];
/// Boundaries of HTML5's "button scope" (plus foreign elements).
const BUTTON_SCOPE: &[&str] = &["applet", "caption", "html", "table", "td", "th", "marquee", "object", "template", "button"];
/// Elements that push a marker on the list of active formatting elements.
const MARKERS: &[&str] = &["td", "th", "caption", "applet", "object", "marquee", "template"];
/// HTML start tags that end SVG/MathML content.
const BREAKOUT: &[&str] = &[
    "b", "big", "blockquote", "body", "br", "center", "code", "dd", "div", "dl", "dt", "em", "embed", "h1", "h2", "h3", "h4", "h5", "h6",
    "head", "hr", "i", "img", "li", "listing", "menu", "meta", "nobr", "ol", "p", "pre", "ruby", "s", "small", "span", "strong", "strike",
    "sub", "sup", "table", "tt", "u", "ul", "var",
];
const TABLE_PARTS: &[&str] = &["caption", "colgroup", "col", "tbody", "thead", "tfoot", "tr", "td", "th"];

fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0c)
}

fn one_of(name: &str, set: &[&str]) -> bool {
    set.iter().any(|s| *s == name)
}

fn is_heading(name: &str) -> bool {
    name.len() == 2 && name.as_bytes()[0] == b'h' && (b'1'..=b'6').contains(&name.as_bytes()[1])
}

/// Text with the characters HTML forbids replaced (everything else as written).
fn push_text(out: &mut String, s: &str) {
    let b = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < b.len() {
        let n = match b[i] {
            0..=0x1f | 0x7f | 0xc2 | 0xef => forbidden_char_len(b, i),
            _ => 0,
        };
        if n == 0 {
            i += 1;
            continue;
        }
        out.push_str(&s[start..i]);
        out.push('\u{fffd}');
        i += n;
        start = i;
    }
    out.push_str(&s[start..]);
}

/// An attribute value inside double quotes.
fn push_attr_value(out: &mut String, v: &str) {
    let mut rest = v;
    while let Some(p) = rest.find('"') {
        push_text(out, &rest[..p]);
        out.push_str("&quot;");
        rest = &rest[p + 1..];
    }
    push_text(out, rest);
}

fn valid_tag_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty() && b[0].is_ascii_alphabetic() && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.' || c == b':')
}

fn valid_attr_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.iter().enumerate().all(|(i, &c)| c > 0x20 && c != 0x7f && !matches!(c, b'"' | b'\'' | b'<' | b'>' | b'/' | b'=') && forbidden_char_len(b, i) == 0)
}

/// Lowercase names of the end tags in `s` (a cheap scan: `</` followed by a letter).
pub fn end_tag_names(s: &str, into: &mut Vec<(String, u32)>) {
    let b = s.as_bytes();
    let mut i = 0;
    while i + 2 < b.len() {
        if b[i] == b'<' && b[i + 1] == b'/' && b[i + 2].is_ascii_alphabetic() {
            let mut k = i + 2;
            while k < b.len() && !is_ws(b[k]) && b[k] != b'/' && b[k] != b'>' {
                k += 1;
            }
            let name = s[i + 2..k].to_ascii_lowercase();
            if let Some(e) = into.iter_mut().find(|(n, _)| *n == name) {
                e.1 += 1;
            } else if into.len() < MAX_NAMES {
                into.push((name, 1));
            }
            i = k;
        } else {
            i += 1;
        }
    }
}

struct Tag<'s> {
    name: &'s str,
    /// (name, value, quote: `"`, `'` or 0 for an unquoted value)
    attrs: Vec<(&'s str, Option<&'s str>, u8)>,
    self_closing: bool,
    /// Index just after the tag (or the end of the piece when it was never closed).
    next: usize,
}

/// Parse a start tag at `i` (`<` then a letter) the way HTML5 does; unterminated quotes and
/// tags run to the end of the piece.
fn parse_start_tag(s: &str, i: usize) -> Tag<'_> {
    let b = s.as_bytes();
    let n = b.len();
    let mut k = i + 1;
    while k < n && !is_ws(b[k]) && b[k] != b'/' && b[k] != b'>' {
        k += 1;
    }
    let name = &s[i + 1..k];
    let mut attrs = Vec::new();
    let mut self_closing = false;
    loop {
        while k < n && is_ws(b[k]) {
            k += 1;
        }
        if k >= n {
            break;
        }
        if b[k] == b'>' {
            k += 1;
            break;
        }
        if b[k] == b'/' {
            if k + 1 < n && b[k + 1] == b'>' {
                self_closing = true;
                k += 2;
                break;
            }
            k += 1;
            continue;
        }
        let ns = k;
        k += 1;
        while k < n && !is_ws(b[k]) && b[k] != b'/' && b[k] != b'>' && b[k] != b'=' {
            k += 1;
        }
        while !s.is_char_boundary(k) {
            k += 1;
        }
        let an = &s[ns..k];
        while k < n && is_ws(b[k]) {
            k += 1;
        }
        let mut val = None;
        let mut quote = 0u8;
        if k < n && b[k] == b'=' {
            k += 1;
            while k < n && is_ws(b[k]) {
                k += 1;
            }
            if k < n && (b[k] == b'"' || b[k] == b'\'') {
                let q = b[k];
                quote = q;
                let vs = k + 1;
                match b[vs..].iter().position(|&c| c == q) {
                    Some(e) => {
                        val = Some(&s[vs..vs + e]);
                        k = vs + e + 1;
                    }
                    None => {
                        val = Some(&s[vs..]);
                        k = n;
                    }
                }
            } else if k < n && b[k] == b'>' {
                val = Some("");
            } else {
                let vs = k;
                while k < n && !is_ws(b[k]) && b[k] != b'>' {
                    k += 1;
                }
                val = Some(&s[vs..k]);
            }
        }
        if attrs.len() < MAX_ATTRS {
            attrs.push((an, val, quote));
        }
    }
    Tag { name, attrs, self_closing, next: k }
}

/// Where the contents of a raw-text element named `name` end: (end of contents, index after
/// its end tag). The end tag is `</name` followed by whitespace, `/`, `>` or the piece's end.
fn raw_text_end(s: &str, from: usize, name: &str) -> (usize, usize) {
    let b = s.as_bytes();
    let n = b.len();
    let l = name.len();
    let mut i = from.min(n);
    while let Some(p) = b[i..].windows(2).position(|w| w == b"</") {
        let at = i + p;
        let after = at + 2 + l;
        if after <= n && b[at + 2..after].eq_ignore_ascii_case(name.as_bytes()) && (after == n || is_ws(b[after]) || b[after] == b'/' || b[after] == b'>') {
            let close = b[after..].iter().position(|&c| c == b'>').map(|q| after + q + 1).unwrap_or(n);
            return (at, close);
        }
        i = at + 1;
    }
    (n, n)
}

impl AuthorHtml {
    /// Start an Org container (a section's text, a block, a list item, a paragraph, …).
    pub fn enter(&mut self) -> Mark {
        Mark { base: std::mem::replace(&mut self.base, self.stack.len()), future: self.future.take() }
    }

    /// End the container: whatever the author left open in it is closed here.
    pub fn leave(&mut self, out: &mut String, m: Mark) {
        if self.stack.len() > self.base {
            self.close_to(out, self.base);
        }
        self.base = m.base;
        self.future = m.future;
    }

    /// Whether the current container has not computed its later end tags yet.
    pub fn needs_future(&self) -> bool {
        self.future.is_none()
    }

    /// Set the current container's later end tags (see `feed`) if not known yet.
    pub fn prime(&mut self, future: Vec<(String, u32)>) {
        if self.future.is_none() {
            self.future = Some(future);
        }
    }

    /// Write one raw piece. `future` lists the end tags of this and the later raw pieces of the
    /// same container (asked for once per container, at its first piece).
    pub fn feed(&mut self, out: &mut String, piece: &str, future: impl FnOnce() -> Vec<(String, u32)>) {
        if self.future.is_none() {
            self.future = Some(future());
        }
        let mut own = Vec::new();
        end_tag_names(piece, &mut own);
        if let Some(f) = self.future.as_mut() {
            for (name, c) in own {
                if let Some(e) = f.iter_mut().find(|(n, _)| *n == name) {
                    e.1 = e.1.saturating_sub(c);
                }
            }
        }
        self.piece = self.piece.wrapping_add(1);
        self.tokens(out, piece);
        self.finish_piece(out);
    }

    fn base(&self) -> usize {
        self.base.max(self.floor)
    }

    fn close_to(&mut self, out: &mut String, to: usize) {
        while self.stack.len() > to {
            let e = self.stack.pop().unwrap();
            if e.name == "select" && e.ns == Ns::Html {
                self.selects -= 1;
            }
            out.push_str("</");
            out.push_str(&e.written);
            out.push('>');
        }
    }

    /// At the end of a piece: local elements it opened are closed, and so is every element
    /// that no later end tag of the container would close.
    fn finish_piece(&mut self, out: &mut String) {
        let base = self.base();
        let piece = self.piece;
        if let Some(i) = (base..self.stack.len()).find(|&i| self.stack[i].piece == piece && self.stack[i].local) {
            self.close_to(out, i);
        }
        if self.stack.len() > base + MAX_KEPT {
            self.close_to(out, base + MAX_KEPT);
        }
        let mut need: Vec<(&str, u32)> = Vec::new();
        let mut cut = None;
        {
            let future = self.future.as_ref();
            for i in base..self.stack.len() {
                let name = self.stack[i].name.as_str();
                let k = match need.iter_mut().find(|(n, _)| *n == name) {
                    Some(e) => {
                        e.1 += 1;
                        e.1
                    }
                    None => {
                        need.push((name, 1));
                        1
                    }
                };
                let have = future.and_then(|f| f.iter().find(|(n, _)| n == name)).map(|e| e.1).unwrap_or(0);
                if k > have {
                    cut = Some(i);
                    break;
                }
            }
        }
        if let Some(i) = cut {
            self.close_to(out, i);
        }
    }

    fn tokens(&mut self, out: &mut String, s: &str) {
        self.no_gt_from = usize::MAX;
        let b = s.as_bytes();
        let mut i = 0;
        let mut t = 0;
        while i < b.len() {
            if b[i] != b'<' {
                i += 1;
                continue;
            }
            push_text(out, &s[t..i]);
            i = self.markup(out, s, i);
            t = i;
        }
        push_text(out, &s[t..]);
    }

    /// `<` at `i`: a tag, end tag, comment, CDATA section, or text. Returns where to go on.
    fn markup(&mut self, out: &mut String, s: &str, i: usize) -> usize {
        let b = s.as_bytes();
        let n = b.len();
        let j = i + 1;
        if j >= n {
            out.push_str("&lt;");
            return j;
        }
        match b[j] {
            c if c.is_ascii_alphabetic() => self.start_tag(out, s, i),
            b'/' => {
                if j + 1 < n && b[j + 1].is_ascii_alphabetic() {
                    self.end_tag(out, s, i)
                } else if j + 1 < n && b[j + 1] == b'>' {
                    j + 2
                } else {
                    self.bogus(out, s, i, j + 1)
                }
            }
            b'!' => {
                if s[j + 1..].starts_with("--") {
                    comment(out, s, j + 3)
                } else if s[j + 1..].starts_with("[CDATA[") && self.foreign() {
                    let from = j + 8;
                    let (end, next) = match s[from..].find("]]>") {
                        Some(p) => (from + p, from + p + 3),
                        None => (n, n),
                    };
                    esc_text(out, &s[from..end]);
                    next
                } else {
                    self.bogus(out, s, i, j + 1)
                }
            }
            b'?' => self.bogus(out, s, i, j + 1),
            _ => {
                out.push_str("&lt;");
                j
            }
        }
    }

    /// A bogus comment (`<!x…>`, `<?…>`, `</ x>`): dropped up to its `>`; with no `>` in the
    /// piece the `<` is text.
    fn bogus(&mut self, out: &mut String, s: &str, i: usize, from: usize) -> usize {
        let from = from.min(s.len());
        let found = if from >= self.no_gt_from { None } else { s.as_bytes()[from..].iter().position(|&c| c == b'>') };
        match found {
            Some(p) => from + p + 1,
            None => {
                self.no_gt_from = self.no_gt_from.min(from);
                out.push_str("&lt;");
                i + 1
            }
        }
    }

    fn foreign(&self) -> bool {
        match self.stack.last() {
            Some(e) => e.ns != Ns::Html && !e.html_point,
            None => false,
        }
    }

    fn end_tag(&mut self, out: &mut String, s: &str, i: usize) -> usize {
        let b = s.as_bytes();
        let n = b.len();
        let mut k = i + 2;
        while k < n && !is_ws(b[k]) && b[k] != b'/' && b[k] != b'>' {
            k += 1;
        }
        let name = s[i + 2..k].to_ascii_lowercase();
        let next = b[k..].iter().position(|&c| c == b'>').map(|p| k + p + 1).unwrap_or(n);
        let base = self.base();
        if let Some(idx) = (base..self.stack.len()).rev().find(|&x| self.stack[x].name == name) {
            self.close_to(out, idx);
        }
        next
    }

    fn find_above_base(&self, name: &str) -> Option<usize> {
        let base = self.base();
        (base..self.stack.len()).rev().find(|&x| self.stack[x].name == name)
    }

    /// An element named `name` in the given scope (searching down from the top, stopping at a
    /// boundary or at the container's base).
    fn in_scope(&self, name: &str, boundaries: &[&str]) -> Found {
        let base = self.base();
        for (n, x) in (base..self.stack.len()).rev().enumerate() {
            if n == WALK {
                return Found::TooDeep;
            }
            let e = &self.stack[x];
            if e.name == name && e.ns == Ns::Html {
                return Found::At(x);
            }
            if e.ns != Ns::Html || one_of(&e.name, boundaries) {
                return Found::No;
            }
        }
        Found::No
    }

    /// Close an open `<p>` in button scope; false when that cannot be decided (drop the tag).
    fn close_p(&mut self, out: &mut String) -> bool {
        match self.in_scope("p", BUTTON_SCOPE) {
            Found::At(x) => {
                self.close_to(out, x);
                true
            }
            Found::No => true,
            Found::TooDeep => false,
        }
    }

    /// Whether an HTML parser would be in one of its table modes (where a new `<table>` closes
    /// the open one).
    fn table_mode(&self) -> Option<bool> {
        let base = self.base();
        for (n, x) in (base..self.stack.len()).rev().enumerate() {
            if n == WALK {
                return None;
            }
            match self.stack[x].name.as_str() {
                "table" | "tbody" | "thead" | "tfoot" | "tr" => return Some(true),
                "td" | "th" | "caption" | "template" | "colgroup" => return Some(false),
                _ => {}
            }
        }
        Some(false)
    }

    /// The HTML5 implicit closes a start tag causes, written out; false when the tag must be
    /// dropped (it would act on elements outside the author's own).
    fn before_html_start(&mut self, out: &mut String, ln: &str, tag: &Tag) -> bool {
        let base = self.base();
        if one_of(ln, DROPPED) {
            return false;
        }
        if ln == "noscript" && self.in_noscript {
            return false;
        }
        // Inside <select> only options (and script) are parsed; a new select/input closes it.
        if let Some(sel) = if self.selects > 0 { self.find_above_base("select") } else { None } {
            match ln {
                "select" => {
                    self.close_to(out, sel);
                    return false;
                }
                "input" | "keygen" | "textarea" => self.close_to(out, sel),
                "caption" | "table" | "tbody" | "tfoot" | "thead" | "tr" | "td" | "th" if self.find_above_base("table").map_or(false, |t| t < sel) => {
                    self.close_to(out, sel)
                }
                "option" | "optgroup" | "hr" | "script" => {}
                _ => return false,
            }
        }
        match ln {
            "li" | "dd" | "dt" => {
                let mut found = None;
                let mut x = self.stack.len();
                loop {
                    if x == base || self.stack.len() - x == WALK {
                        return false; // no list of the author's own: it would close ours
                    }
                    x -= 1;
                    let e = &self.stack[x];
                    let hit = if ln == "li" { e.name == "li" } else { e.name == "dd" || e.name == "dt" };
                    if hit {
                        found = Some(x);
                        break;
                    }
                    if e.ns != Ns::Html || (one_of(&e.name, SPECIAL) && !matches!(e.name.as_str(), "address" | "div" | "p")) {
                        break;
                    }
                }
                if let Some(x) = found {
                    self.close_to(out, x);
                }
                if !self.close_p(out) {
                    return false;
                }
            }
            _ if one_of(ln, TABLE_PARTS) => {
                let t = match self.find_above_base("table") {
                    Some(t) => t,
                    None => return false,
                };
                let parents: &[&str] = match ln {
                    "tr" => &["table", "tbody", "thead", "tfoot"],
                    "td" | "th" => &["table", "tbody", "thead", "tfoot", "tr"],
                    "col" => &["table", "colgroup"],
                    _ => &["table"],
                };
                while self.stack.len() > t + 1 && !one_of(&self.stack[self.stack.len() - 1].name, parents) {
                    self.close_to(out, self.stack.len() - 1);
                }
            }
            "table" => match self.table_mode() {
                None => return false,
                Some(true) => {
                    if let Some(t) = self.find_above_base("table") {
                        self.close_to(out, t);
                    }
                }
                Some(false) => {
                    if !self.close_p(out) {
                        return false;
                    }
                }
            },
            "a" | "nobr" => {
                for (n, x) in (base..self.stack.len()).rev().enumerate() {
                    if n == WALK {
                        return false;
                    }
                    let e = &self.stack[x];
                    if e.name == ln {
                        self.close_to(out, x);
                        break;
                    }
                    if one_of(&e.name, MARKERS) {
                        break;
                    }
                }
            }
            "button" => {
                match self.in_scope("button", BUTTON_SCOPE) {
                    Found::At(x) => self.close_to(out, x),
                    Found::No => {}
                    Found::TooDeep => return false,
                }
                if !self.close_p(out) {
                    return false;
                }
            }
            "form" => {
                if self.stack.iter().any(|e| e.name == "form") || !self.close_p(out) {
                    return false;
                }
            }
            "option" | "optgroup" => {
                if self.stack.len() > base && self.stack[self.stack.len() - 1].name == "option" {
                    self.close_to(out, self.stack.len() - 1);
                }
            }
            "rb" | "rtc" | "rp" | "rt" => {
                if matches!(self.in_scope("ruby", &[]), Found::At(_)) {
                    while self.stack.len() > base {
                        let top = self.stack[self.stack.len() - 1].name.as_str();
                        let implied = matches!(top, "rb" | "rp" | "rt") || (top == "rtc" && matches!(ln, "rb" | "rtc"));
                        if !implied {
                            break;
                        }
                        self.close_to(out, self.stack.len() - 1);
                    }
                }
            }
            _ => {
                if one_of(ln, P_CLOSERS) && !self.close_p(out) {
                    return false;
                }
                if is_heading(ln) && self.stack.len() > base && is_heading(&self.stack[self.stack.len() - 1].name) {
                    self.close_to(out, self.stack.len() - 1);
                }
            }
        }
        let _ = tag;
        true
    }

    fn write_tag(out: &mut String, tag: &Tag, slash: bool) {
        out.push('<');
        out.push_str(tag.name);
        let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
        for (an, av, q) in &tag.attrs {
            if !valid_attr_name(an) {
                continue;
            }
            if tag.attrs.len() > 1 && !seen.insert(an.to_ascii_lowercase()) {
                continue;
            }
            out.push(' ');
            out.push_str(an);
            match (av, *q) {
                (None, _) => {}
                (Some(v), b'\'') => {
                    out.push_str("='");
                    push_text(out, v);
                    out.push('\'');
                }
                (Some(v), 0) if !v.is_empty() && !v.bytes().any(|c| matches!(c, b'"' | b'\'' | b'=' | b'<' | b'>' | b'`')) => {
                    out.push('=');
                    push_text(out, v);
                }
                (Some(v), _) => {
                    out.push_str("=\"");
                    push_attr_value(out, v);
                    out.push('"');
                }
            }
        }
        if slash {
            out.push_str(" /");
        }
        out.push('>');
    }

    fn start_tag(&mut self, out: &mut String, s: &str, i: usize) -> usize {
        let tag = parse_start_tag(s, i);
        if !valid_tag_name(tag.name) {
            out.push_str("&lt;");
            return i + 1;
        }
        let ln = tag.name.to_ascii_lowercase();
        let piece = self.piece;
        if one_of(&ln, DROPPED) {
            return tag.next; // in SVG/MathML too: an element named html/body confuses parsers
        }
        if self.foreign() {
            let breakout = one_of(&ln, BREAKOUT)
                || (ln == "font" && tag.attrs.iter().any(|(a, _, _)| matches!(a.to_ascii_lowercase().as_str(), "color" | "face" | "size")));
            if !breakout {
                // A new element takes the namespace of the current one (`<math>` inside `<svg>` is
                // an SVG element); only MathML's annotation-xml lets `<svg>` start SVG.
                let top = self.stack.last();
                let ns = match top {
                    Some(e) if ln == "svg" && e.ns == Ns::Math && e.name == "annotation-xml" => Ns::Svg,
                    Some(e) => e.ns,
                    None => Ns::Html,
                };
                if !tag.self_closing && self.stack.len() >= MAX_OPEN {
                    return tag.next;
                }
                Self::write_tag(out, &tag, tag.self_closing);
                if !tag.self_closing {
                    let html_point = integration_point(ns, &ln, &tag);
                    self.stack.push(Open { name: ln, written: tag.name.to_string(), ns, local: false, piece, html_point });
                }
                return tag.next;
            }
            // HTML content ends the SVG/MathML island (as an HTML parser does).
            while self.stack.last().map_or(false, |e| e.ns != Ns::Html && !e.html_point) {
                let l = self.stack.len() - 1;
                self.close_to(out, l);
            }
        }
        let void = one_of(&ln, VOID);
        if !void && !tag.self_closing && self.stack.len() >= MAX_OPEN && !one_of(&ln, RAW_TEXT) {
            return tag.next; // too deep: the tag goes, its contents stay
        }
        if ln == "svg" || ln == "math" {
            let ns = if ln == "svg" { Ns::Svg } else { Ns::Math };
            Self::write_tag(out, &tag, tag.self_closing);
            if !tag.self_closing {
                self.stack.push(Open { name: ln, written: tag.name.to_string(), ns, local: true, piece, html_point: false });
            }
            return tag.next;
        }
        if !self.before_html_start(out, &ln, &tag) {
            return tag.next;
        }
        Self::write_tag(out, &tag, void && tag.self_closing);
        if void {
            return tag.next;
        }
        if tag.self_closing {
            // `<div/>`: HTML ignores the slash; the writer meant an empty element.
            out.push_str("</");
            out.push_str(tag.name);
            out.push('>');
            return tag.next;
        }
        if one_of(&ln, RAW_TEXT) {
            let (end, next) = raw_text_end(s, tag.next, &ln);
            let body = &s[tag.next.min(end)..end];
            if ln == "script" {
                // `<!--` in a script would let a later `<script>` hide its end tag from the parser.
                let mut rest = body;
                while let Some(p) = rest.find("<!--") {
                    push_text(out, &rest[..p]);
                    out.push_str("<\\!--");
                    rest = &rest[p + 4..];
                }
                push_text(out, rest);
            } else {
                push_text(out, body);
            }
            out.push_str("</");
            out.push_str(tag.name);
            out.push('>');
            return next;
        }
        if ln == "noscript" {
            // Balanced on its own, cut at the first `</noscript`, so a parser with scripting on
            // (contents are text) and one with scripting off (contents are HTML) agree.
            let (end, next) = raw_text_end(s, tag.next, "noscript");
            let idx = self.stack.len();
            self.stack.push(Open { name: ln, written: tag.name.to_string(), ns: Ns::Html, local: true, piece, html_point: false });
            let (old_floor, old_in) = (self.floor, self.in_noscript);
            self.floor = idx + 1;
            self.in_noscript = true;
            let memo = self.no_gt_from;
            self.tokens(out, &s[tag.next.min(end)..end]);
            self.no_gt_from = memo;
            self.floor = old_floor;
            self.in_noscript = old_in;
            self.close_to(out, idx);
            return next;
        }
        let local = one_of(&ln, LOCAL);
        if ln == "select" {
            self.selects += 1;
        }
        self.stack.push(Open { name: ln, written: tag.name.to_string(), ns: Ns::Html, local, piece, html_point: false });
        tag.next
    }
}

fn integration_point(ns: Ns, ln: &str, tag: &Tag) -> bool {
    match ns {
        Ns::Svg => matches!(ln, "foreignobject" | "desc" | "title"),
        Ns::Math => {
            matches!(ln, "mi" | "mo" | "mn" | "ms" | "mtext")
                || (ln == "annotation-xml"
                    && tag.attrs.iter().any(|(a, v, _)| {
                        a.eq_ignore_ascii_case("encoding") && v.map_or(false, |v| v.eq_ignore_ascii_case("text/html") || v.eq_ignore_ascii_case("application/xhtml+xml"))
                    }))
        }
        Ns::Html => false,
    }
}

/// A comment from `k` (just after `<!--`), ended as HTML5 ends it (`-->`, `--!>`, `<!-->`,
/// `<!--->`) or at the end of the piece; written so that nothing in it can end it early.
fn comment(out: &mut String, s: &str, k: usize) -> usize {
    let rest = &s[k.min(s.len())..];
    let (body, next) = if rest.starts_with('>') {
        ("", k + 1)
    } else if rest.starts_with("->") {
        ("", k + 2)
    } else {
        // The first `--` followed by `>` or `!>` ends it (one pass).
        let rb = rest.as_bytes();
        let mut end = None;
        let mut p = 0;
        while let Some(q) = rb[p..].windows(2).position(|w| w == b"--") {
            let at = p + q;
            if rb.get(at + 2) == Some(&b'>') {
                end = Some((at, 3));
                break;
            }
            if rb.get(at + 2) == Some(&b'!') && rb.get(at + 3) == Some(&b'>') {
                end = Some((at, 4));
                break;
            }
            p = at + 1;
        }
        match end {
            Some((at, l)) => (&rest[..at], k + at + l),
            None => (rest, s.len()),
        }
    };
    out.push_str("<!--");
    if body.starts_with('>') || body.starts_with("->") {
        out.push(' ');
    }
    let mut clean = String::with_capacity(body.len());
    push_text(&mut clean, body);
    let mut last = ' ';
    for c in clean.chars() {
        if c == '-' && last == '-' {
            out.push(' ');
        }
        out.push(c);
        last = c;
    }
    if last == '-' {
        out.push(' ');
    }
    out.push_str("-->");
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(s: &str) -> String {
        let mut a = AuthorHtml::default();
        let mut out = String::new();
        let m = a.enter();
        a.feed(&mut out, s, || {
            let mut v = Vec::new();
            end_tag_names(s, &mut v);
            v
        });
        a.leave(&mut out, m);
        out
    }

    #[test]
    fn balanced_html_is_kept() {
        for s in ["<div class=\"a\"><b>x</b> &amp; y</div>", "<a href=\"x\">l</a><br />", "<table><tr><td>1</td></tr></table>", "<!-- c -->"] {
            assert_eq!(one(s), s);
        }
    }

    #[test]
    fn broken_html_is_closed() {
        assert_eq!(one("<div><b>"), "<div><b></b></div>");
        assert_eq!(one("</div>x"), "x");
        assert_eq!(one("<b><i></b></i>"), "<b><i></i></b>");
        assert_eq!(one("<textarea>x"), "<textarea>x</textarea>");
        assert_eq!(one("<script>a</scripts>"), "<script>a</scripts></script>");
        assert_eq!(one("<!-- open"), "<!-- open-->");
        assert_eq!(one("<a href=\"x>y"), "<a href=\"x>y\"></a>");
        assert_eq!(one("<li>x"), "x");
        assert_eq!(one("<td>x</td>"), "x");
        assert_eq!(one("<div/>"), "<div></div>");
        assert_eq!(one("<p>a<div>b"), "<p>a</p><div>b</div>");
        assert_eq!(one("<ul><li>a<li>b"), "<ul><li>a</li><li>b</li></ul>");
        assert_eq!(one("<script><!--<script>"), "<script><\\!--<script></script>");
        assert_eq!(one("a < b <!doctype html>"), "a &lt; b ");
        assert_eq!(one("<svg><html><title>x"), "<svg><title>x</title></svg>");
        assert_eq!(one("<svg><select></svg><select><xmp></select><div></xmp>"), "<svg><select></select></svg><select></select><div></div>");
        assert_eq!(one("<svg><math><annotation-xml encoding=text/html><style><p>"), "<svg><math><annotation-xml encoding=text/html><style></style></annotation-xml></math></svg><p></p>");
    }

    #[test]
    fn depth_and_rescans_are_bounded() {
        let deep = one(&"<span>".repeat(1000));
        assert_eq!(deep.matches("<span>").count(), MAX_OPEN);
        assert_eq!(deep.matches("</span>").count(), MAX_OPEN);
        // a block start tag further than WALK from where a <p> could be is dropped
        assert_eq!(one(&"<div>".repeat(1000)).matches("<div>").count(), WALK + 1);
        assert_eq!(one(&"<!x".repeat(3)), "&lt;!x&lt;!x&lt;!x");
        assert_eq!(one("<!-- a -- b --!> c"), "<!-- a - - b --> c");
        assert_eq!(one("<b a=1 A=2 b c=\"q\" c>"), "<b a=1 b c=\"q\"></b>");
    }

    #[test]
    fn pieces_share_their_container() {
        let mut a = AuthorHtml::default();
        let mut out = String::new();
        let pieces = ["<b>", "</b>"];
        let m = a.enter();
        a.feed(&mut out, pieces[0], || vec![(String::from("b"), 1)]);
        out.push_str("bold");
        a.feed(&mut out, pieces[1], || unreachable!());
        a.leave(&mut out, m);
        assert_eq!(out, "<b>bold</b>");
        // Without a later end tag the element ends with its piece.
        let mut out = String::new();
        let m = a.enter();
        a.feed(&mut out, "<div><b>", Vec::new);
        out.push_str("after");
        a.leave(&mut out, m);
        assert_eq!(out, "<div><b></b></div>after");
    }
}
