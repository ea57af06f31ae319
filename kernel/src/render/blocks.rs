//! Element parser: turns a range of lines into Org elements (paragraphs, lists, tables,
//! blocks, drawers, keywords, ...). Ends of blocks and drawers are found through indexes
//! built once per document, so unclosed openers cost O(log n) each; nesting deeper than the
//! cap is read as plain paragraphs, so work stays linear and the stack stays shallow.

use super::util::{indent_of, is_blank, next_in, starts_with_ci};
use std::borrow::Cow;
use std::collections::HashMap;

#[derive(Clone, Copy)]
pub struct Line<'a> {
    pub text: &'a str,
    pub idx: usize,
    /// Leading whitespace in bytes and in columns, cached: deep indentation is scanned once,
    /// not once per nesting level.
    pub ws: u32,
    pub ind: u32,
    pub blank: bool,
}

impl<'a> Line<'a> {
    pub fn new(text: &'a str, idx: usize) -> Line<'a> {
        let b = text.as_bytes();
        let mut ws = 0;
        let mut ind = 0u32;
        while ws < b.len() {
            match b[ws] {
                b' ' => ind = ind.saturating_add(1),
                b'\t' => ind = (ind / 8 + 1).saturating_mul(8),
                _ => break,
            }
            ws += 1;
        }
        let blank = b[ws..].iter().all(|&c| c == b'\r' || c == b' ' || c == b'\t');
        Line { text, idx, ws: ws as u32, ind, blank }
    }
    pub fn trimmed(&self) -> &'a str {
        &self.text[self.ws as usize..]
    }
}

#[derive(Default, Clone)]
pub struct Aff<'a> {
    pub caption: Option<String>,
    pub name: Option<&'a str>,
    /// Every `#+ATTR_HTML:` line of the element, in order (Org merges them).
    pub attr_html: Vec<&'a str>,
    pub results: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    Unordered,
    Ordered,
    Description,
}

pub struct Item<'a> {
    pub counter: Option<&'a str>,
    /// b' ' unchecked, b'X' checked, b'-' partial.
    pub checkbox: Option<u8>,
    pub tag: Option<&'a str>,
    pub children: Vec<El<'a>>,
}

pub enum TableRow<'a> {
    Rule,
    Cells(Vec<&'a str>),
}

pub enum El<'a> {
    Para(Cow<'a, str>, Aff<'a>),
    List(ListKind, Vec<Item<'a>>, Aff<'a>),
    Table(Vec<TableRow<'a>>, Aff<'a>),
    /// table.el tables and other verbatim text rendered as an example.
    Pre(String, Aff<'a>),
    Src { lang: &'a str, switches: &'a str, params: &'a str, body: String, aff: Aff<'a> },
    Example { switches: &'a str, body: String, aff: Aff<'a> },
    Verse(String, Aff<'a>),
    /// quote, center, special blocks, dynamic blocks.
    Block(String, Vec<El<'a>>, Aff<'a>),
    Export(String, String),
    Drawer(&'a str, Vec<El<'a>>),
    Html(&'a str),
    Hr,
    Latex(String, Aff<'a>),
    /// `#+TOC: headlines N`
    Toc(usize),
    /// Any other keyword: no output, but it is an element (ox-html's paragraph rules see it).
    Keyword,
}

pub struct FootDef<'a> {
    pub label: String,
    pub children: Vec<El<'a>>,
}

/// Per-document indexes of closing lines.
pub struct Parser<'a> {
    pub max_depth: usize,
    block_ends: HashMap<String, Vec<usize>>,
    drawer_ends: Vec<usize>,
    dyn_ends: Vec<usize>,
    latex_ends: HashMap<String, Vec<usize>>,
    pub footdefs: Vec<FootDef<'a>>,
    pub fixed_width: bool,
    pub tables: bool,
    /// The whole document, when lines are slices of it (lets paragraphs borrow).
    pub src: Option<&'a str>,
    pool: Vec<Vec<Line<'a>>>,
    /// The next `parse` call reads its first line as the start of a paragraph, whatever it
    /// looks like: the text on a list item's bullet line (Org 9.5: an element inside an item
    /// starts only on a later line).
    para_first: bool,
}

fn end_block_name(t: &str) -> Option<&str> {
    // t is trimmed-start; "#+end_NAME" followed only by whitespace.
    if !starts_with_ci(t, "#+end_") {
        return None;
    }
    let rest = t[6..].trim_end();
    if rest.is_empty() || rest.contains(|c: char| c.is_whitespace()) {
        return None;
    }
    Some(rest)
}

impl<'a> Parser<'a> {
    pub fn new(lines: &[&'a str], max_depth: usize) -> Parser<'a> {
        let mut p = Parser {
            max_depth,
            block_ends: HashMap::new(),
            drawer_ends: Vec::new(),
            dyn_ends: Vec::new(),
            latex_ends: HashMap::new(),
            footdefs: Vec::new(),
            fixed_width: true,
            tables: true,
            src: None,
            pool: Vec::new(),
            para_first: false,
        };
        for (i, l) in lines.iter().enumerate() {
            let t = l.trim_start();
            let b = t.as_bytes();
            if b.is_empty() {
                continue;
            }
            match b[0] {
                b'#' => {
                    if let Some(name) = end_block_name(t) {
                        p.block_ends.entry(name.to_ascii_lowercase()).or_insert_with(Vec::new).push(i);
                    } else if starts_with_ci(t, "#+end:") {
                        p.dyn_ends.push(i);
                    }
                }
                b':' => {
                    if t.trim_end().eq_ignore_ascii_case(":end:") {
                        p.drawer_ends.push(i);
                    }
                }
                b'\\' => {
                    if t.starts_with("\\end{") {
                        let te = t.trim_end();
                        if te.ends_with('}') && te.len() > 6 {
                            let name = &te[5..te.len() - 1];
                            if !name.is_empty() && name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'*') {
                                p.latex_ends.entry(name.to_string()).or_insert_with(Vec::new).push(i);
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        p
    }

    fn block_end(&self, name: &str, after: usize, limit: usize) -> Option<usize> {
        let key = name.to_ascii_lowercase();
        self.block_ends.get(&key).and_then(|v| next_in(v, after, limit))
    }

    /// End line of the block opened by `t` at line `idx`, if it closes before `limit`.
    pub fn block_end_public(&self, t: &'a str, idx: usize, limit: usize) -> Option<usize> {
        self.block_open(t, idx, limit).map(|x| x.2)
    }

    fn drawer_end(&self, after: usize, limit: usize) -> Option<usize> {
        next_in(&self.drawer_ends, after, limit)
    }

    /// If `t` opens a greater/lesser block with a matching end before `limit`, return
    /// (name, params, end line index).
    fn block_open(&self, t: &'a str, idx: usize, limit: usize) -> Option<(&'a str, &'a str, usize)> {
        if !starts_with_ci(t, "#+begin_") {
            return None;
        }
        let rest = &t[8..];
        let name_end = rest.find(|c: char| c.is_whitespace()).unwrap_or(rest.len());
        let name = &rest[..name_end];
        if name.is_empty() {
            return None;
        }
        let end = self.block_end(name, idx, limit)?;
        Some((name, rest[name_end..].trim(), end))
    }

    fn drawer_open(&self, t: &str, idx: usize, limit: usize) -> Option<usize> {
        let te = t.trim_end();
        let b = te.as_bytes();
        if b.len() < 3 || b[0] != b':' || b[b.len() - 1] != b':' {
            return None;
        }
        let name = &te[1..te.len() - 1];
        if name.is_empty() || !name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c >= 0x80) {
            return None;
        }
        if name.eq_ignore_ascii_case("end") {
            return None;
        }
        self.drawer_end(idx, limit)
    }

    fn latex_open(&self, t: &str, idx: usize, limit: usize) -> Option<usize> {
        if !t.starts_with("\\begin{") {
            return None;
        }
        let rest = &t[7..];
        let close = rest.find('}')?;
        let name = &rest[..close];
        if name.is_empty() || !name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'*') {
            return None;
        }
        self.latex_ends.get(name).and_then(|v| next_in(v, idx, limit))
    }

    fn dyn_open(&self, t: &str, idx: usize, limit: usize) -> Option<usize> {
        if !starts_with_ci(t, "#+begin:") {
            return None;
        }
        next_in(&self.dyn_ends, idx, limit)
    }

    /// Parse `lines` (a contiguous run; `lines[0]` may be the tail of its line) into elements.
    pub fn parse(&mut self, lines: &[Line<'a>], depth: usize, top: bool) -> Vec<El<'a>> {
        let mut out = Vec::new();
        if lines.is_empty() {
            return out;
        }
        let base = lines[0].idx;
        let limit = lines[lines.len() - 1].idx + 1;
        let n = lines.len();
        let mut i = 0;
        let mut aff: Aff<'a> = Aff::default();
        let mut aff_pending = false;
        let para_first = std::mem::take(&mut self.para_first);
        while i < n {
            let line = lines[i].text;
            let idx = lines[i].idx;
            let t = lines[i].trimmed();
            if lines[i].blank {
                if aff_pending {
                    aff = Aff::default();
                    aff_pending = false;
                }
                i += 1;
                continue;
            }
            let tb = t.as_bytes();
            let ind = lines[i].ind as usize;
            if !(para_first && i == 0) {
            // Footnote definitions start at column 0, outside lists.
            if top && ind == 0 && tb[0] == b'[' && line.starts_with("[fn:") {
                if let Some(close) = line.find(']') {
                    let label = &line[4..close];
                    if !label.is_empty() && label.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_') {
                        // Ends at the next footnote definition, or two blank lines.
                        let mut j = i + 1;
                        let mut blanks = 0;
                        while j < n {
                            let lt = lines[j].text;
                            if lines[j].blank {
                                blanks += 1;
                                if blanks >= 2 {
                                    break;
                                }
                            } else {
                                if lt.starts_with("[fn:") {
                                    break;
                                }
                                blanks = 0;
                            }
                            j += 1;
                        }
                        let mut sub = self.pool.pop().unwrap_or_default();
                        sub.clear();
                        sub.push(Line::new(&line[close + 1..], idx));
                        sub.extend_from_slice(&lines[i + 1..j]);
                        let children = if depth + 1 < self.max_depth { self.parse(&sub, depth + 1, false) } else { Vec::new() };
                        self.pool.push(sub);
                        self.footdefs.push(FootDef { label: label.to_string(), children });
                        i = j;
                        aff = Aff::default();
                        aff_pending = false;
                        continue;
                    }
                }
            }
            if depth < self.max_depth {
                if let Some(_) = item_bullet(t, ind) {
                    let (el, next) = self.parse_list(lines, i, depth, std::mem::take(&mut aff));
                    aff_pending = false;
                    out.push(el);
                    i = next;
                    continue;
                }
            }
            match tb[0] {
                b'#' => {
                    if t.len() == 1 || tb[1] == b' ' || tb[1] == b'\t' {
                        // Comment line.
                        i += 1;
                        continue;
                    }
                    if tb[1] == b'+' {
                        if let Some((name, params, end)) = self.block_open(t, idx, limit) {
                            let end_local = end - base;
                            let body = &lines[i + 1..end_local];
                            let el = self.block(name, params, body, depth, std::mem::take(&mut aff));
                            aff_pending = false;
                            if let Some(el) = el {
                                out.push(el);
                            }
                            i = end_local + 1;
                            continue;
                        }
                        if let Some(end) = self.dyn_open(t, idx, limit) {
                            let end_local = end - base;
                            let children =
                                if depth + 1 < self.max_depth { self.parse(&lines[i + 1..end_local], depth + 1, false) } else { Vec::new() };
                            out.push(El::Block(String::from("dynamic"), children, std::mem::take(&mut aff)));
                            aff_pending = false;
                            i = end_local + 1;
                            continue;
                        }
                        if let Some((key, opt, value)) = keyword(t) {
                            let k = if key.len() <= 24 { key.to_ascii_uppercase() } else { String::from("X") };
                            match k.as_str() {
                                "CAPTION" => {
                                    let v = value.trim();
                                    let _ = opt;
                                    aff.caption = Some(match aff.caption.take() {
                                        Some(mut c) => {
                                            c.push(' ');
                                            c.push_str(v);
                                            c
                                        }
                                        None => v.to_string(),
                                    });
                                    aff_pending = true;
                                }
                                "NAME" | "TBLNAME" | "SRCNAME" | "LABEL" => {
                                    aff.name = Some(value.trim());
                                    aff_pending = true;
                                }
                                "RESULTS" => {
                                    aff.results = true;
                                    aff_pending = true;
                                }
                                "HTML" => {
                                    out.push(El::Html(value));
                                }
                                "TOC" => {
                                    let v = value.trim();
                                    if starts_with_ci(v, "headlines") {
                                        let d = v[9..].trim().parse::<usize>().unwrap_or(usize::MAX);
                                        out.push(El::Toc(d));
                                    }
                                }
                                _ => {
                                    if k.starts_with("ATTR_HTML") {
                                        aff.attr_html.push(value);
                                        aff_pending = true;
                                    } else if k.starts_with("ATTR_") || k == "HEADER" || k == "PLOT" || k == "DATA" || k == "SOURCE" {
                                        aff_pending = true;
                                    } else {
                                        out.push(El::Keyword);
                                    }
                                }
                            }
                            i += 1;
                            continue;
                        }
                    }
                }
                b':' => {
                    if self.fixed_width && (t.len() == 1 || tb[1] == b' ' || tb[1] == b'\t') {
                        let mut j = i;
                        let mut body = String::new();
                        while j < n {
                            let lt = lines[j].text.trim_start();
                            let lb = lt.as_bytes();
                            if lb.first() == Some(&b':') && (lb.len() == 1 || lb[1] == b' ' || lb[1] == b'\t') {
                                let content = if lb.len() > 1 { &lt[2..] } else { "" };
                                body.push_str(content.trim_end_matches('\r'));
                                body.push('\n');
                                j += 1;
                            } else {
                                break;
                            }
                        }
                        out.push(El::Pre(body, std::mem::take(&mut aff)));
                        aff_pending = false;
                        i = j;
                        continue;
                    }
                    if let Some(end) = self.drawer_open(t, idx, limit) {
                        let end_local = end - base;
                        let name = &t.trim_end()[1..t.trim_end().len() - 1];
                        let children =
                            if depth + 1 < self.max_depth { self.parse(&lines[i + 1..end_local], depth + 1, false) } else { Vec::new() };
                        out.push(El::Drawer(name, children));
                        aff = Aff::default();
                        aff_pending = false;
                        i = end_local + 1;
                        continue;
                    }
                }
                b'|' => {
                    let mut j = i;
                    let mut rows = Vec::new();
                    while j < n {
                        let lt = lines[j].text.trim();
                        if !lt.starts_with('|') {
                            break;
                        }
                        rows.push(table_row(lt));
                        j += 1;
                    }
                    if self.tables {
                        out.push(El::Table(rows, std::mem::take(&mut aff)));
                    }
                    aff_pending = false;
                    i = j;
                    continue;
                }
                b'+' => {
                    if is_tableel_rule(t) {
                        let mut j = i;
                        let mut body = String::new();
                        while j < n {
                            let lt = lines[j].text.trim();
                            if !(lt.starts_with('|') || lt.starts_with('+')) {
                                break;
                            }
                            body.push_str(lt);
                            body.push('\n');
                            j += 1;
                        }
                        out.push(El::Pre(body, std::mem::take(&mut aff)));
                        aff_pending = false;
                        i = j;
                        continue;
                    }
                }
                b'-' => {
                    let te = t.trim_end();
                    if te.len() >= 5 && te.bytes().all(|c| c == b'-') {
                        out.push(El::Hr);
                        aff = Aff::default();
                        aff_pending = false;
                        i += 1;
                        continue;
                    }
                }
                b'\\' => {
                    if let Some(end) = self.latex_open(t, idx, limit) {
                        let end_local = end - base;
                        let mut body = String::new();
                        for l in &lines[i..=end_local] {
                            body.push_str(l.text.trim_start());
                            body.push('\n');
                        }
                        out.push(El::Latex(body, std::mem::take(&mut aff)));
                        aff_pending = false;
                        i = end_local + 1;
                        continue;
                    }
                }
                b'C' => {
                    if t.starts_with("CLOCK:") {
                        i += 1;
                        continue;
                    }
                }
                b'%' => {
                    if t.starts_with("%%(") {
                        i += 1;
                        continue;
                    }
                }
                _ => {}
            }
            } // not the first line of an item: elements may start here
            // Paragraph: runs until a blank line or the start of another element.
            let mut j = i + 1;
            let mut borrowable = ind == 0 && !t.ends_with('\r');
            while j < n {
                let l = lines[j].text;
                if self.breaks_paragraph(&lines[j], limit, top) {
                    break;
                }
                if borrowable && (l.starts_with(' ') || l.starts_with('\t') || l.ends_with('\r')) {
                    borrowable = false;
                }
                j += 1;
            }
            let text: Cow<'a, str> = match (borrowable, self.src) {
                (true, Some(src)) => {
                    // Unindented lines are a contiguous slice of the source: no copy.
                    let base = src.as_ptr() as usize;
                    let a = t.as_ptr() as usize - base;
                    let last = lines[j - 1].text;
                    let z = last.as_ptr() as usize - base + last.len();
                    if a <= z && z <= src.len() && src.is_char_boundary(a) && src.is_char_boundary(z) && lines[j - 1].idx - lines[i].idx == j - 1 - i {
                        Cow::Borrowed(&src[a..z])
                    } else {
                        Cow::Owned(join_para(lines, i, j, t))
                    }
                }
                _ => Cow::Owned(join_para(lines, i, j, t)),
            };
            out.push(El::Para(text, std::mem::take(&mut aff)));
            aff_pending = false;
            i = j;
        }
        out
    }

    fn breaks_paragraph(&self, line: &Line<'a>, limit: usize, top: bool) -> bool {
        let l = line.text;
        let idx = line.idx;
        let t = line.trimmed();
        let b = t.as_bytes();
        if b.is_empty() || line.blank {
            return true;
        }
        let ind = line.ind as usize;
        if top && l.starts_with("[fn:") {
            return true;
        }
        match b[0] {
            b'|' => true,
            b'#' => {
                if b.len() == 1 || b[1] == b' ' || b[1] == b'\t' {
                    return true;
                }
                if b[1] == b'+' {
                    if starts_with_ci(t, "#+begin_") {
                        return self.block_open(t, idx, limit).is_some();
                    }
                    if starts_with_ci(t, "#+begin:") {
                        return self.dyn_open(t, idx, limit).is_some();
                    }
                    return keyword(t).is_some();
                }
                false
            }
            b':' => {
                if b.len() == 1 || b[1] == b' ' || b[1] == b'\t' {
                    return self.fixed_width;
                }
                self.drawer_open(t, idx, limit).is_some()
            }
            b'-' => {
                let te = t.trim_end();
                (te.len() >= 5 && te.bytes().all(|c| c == b'-')) || item_bullet(t, ind).is_some()
            }
            b'+' => is_tableel_rule(t) || item_bullet(t, ind).is_some(),
            b'\\' => self.latex_open(t, idx, limit).is_some(),
            b'C' => t.starts_with("CLOCK:"),
            b'%' => t.starts_with("%%("),
            _ => item_bullet(t, ind).is_some(),
        }
    }

    fn block(&mut self, name: &'a str, params: &'a str, body: &[Line<'a>], depth: usize, aff: Aff<'a>) -> Option<El<'a>> {
        let lname = name.to_ascii_lowercase();
        match lname.as_str() {
            "src" => {
                let (lang, rest) = split_word(params);
                let (switches, hparams) = split_switches(rest);
                Some(El::Src { lang, switches, params: hparams, body: verbatim_body(body, true), aff })
            }
            "example" => Some(El::Example { switches: params, body: verbatim_body(body, true), aff }),
            "export" => {
                let (backend, _) = split_word(params);
                Some(El::Export(backend.to_ascii_lowercase(), verbatim_body(body, false)))
            }
            "comment" => None,
            "verse" => {
                let mut s = String::new();
                for (k, l) in body.iter().enumerate() {
                    if k > 0 {
                        s.push('\n');
                    }
                    s.push_str(l.text.trim_end_matches('\r'));
                }
                Some(El::Verse(s, aff))
            }
            _ => {
                let children = if depth + 1 < self.max_depth { self.parse(body, depth + 1, false) } else { Vec::new() };
                Some(El::Block(lname, children, aff))
            }
        }
    }

    fn parse_list(&mut self, lines: &[Line<'a>], start: usize, depth: usize, aff: Aff<'a>) -> (El<'a>, usize) {
        let n = lines.len();
        let base = lines[0].idx;
        let limit = lines[n - 1].idx + 1;
        let first = lines[start].text;
        let ind0 = lines[start].ind as usize;
        let mut kind = None;
        let mut items = Vec::new();
        let mut i = start;
        loop {
            let t = lines[i].trimmed();
            let blen = match item_bullet(t, lines[i].ind as usize) {
                Some(b) => b,
                None => break,
            };
            let bullet = &t[..blen];
            let ordered = bullet.as_bytes()[0].is_ascii_digit();
            let mut rest = t[blen..].trim_start_matches(|c| c == ' ' || c == '\t');
            let mut counter = None;
            if rest.starts_with("[@") {
                if let Some(c) = rest.find(']') {
                    let v = &rest[2..c];
                    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric()) {
                        counter = Some(v);
                        rest = rest[c + 1..].trim_start();
                    }
                }
            }
            let mut checkbox = None;
            let rb = rest.as_bytes();
            if rb.len() >= 3 && rb[0] == b'[' && rb[2] == b']' && (rb[1] == b' ' || rb[1] == b'X' || rb[1] == b'-') && (rb.len() == 3 || rb[3] == b' ' || rb[3] == b'\t') {
                checkbox = Some(rb[1]);
                rest = rest[3..].trim_start();
            }
            let mut tag = None;
            if !ordered {
                if let Some(p) = find_tag_sep(rest) {
                    tag = Some(rest[..p].trim_end());
                    rest = rest[p + 3..].trim_start();
                }
            }
            if kind.is_none() {
                kind = Some(if ordered {
                    ListKind::Ordered
                } else if tag.is_some() {
                    ListKind::Description
                } else {
                    ListKind::Unordered
                });
            }
            // Item body: following lines indented deeper than the bullet; two blank lines end the list.
            let mut j = i + 1;
            let mut blanks = 0;
            let mut list_over = false;
            while j < n {
                if lines[j].blank {
                    blanks += 1;
                    if blanks >= 2 {
                        list_over = true;
                        break;
                    }
                    j += 1;
                    continue;
                }
                if lines[j].ind as usize <= ind0 {
                    break;
                }
                blanks = 0;
                let lt = lines[j].trimmed();
                if lt.as_bytes()[0] == b'#' {
                    if let Some((_, _, end)) = self.block_open(lt, lines[j].idx, limit) {
                        j = end - base + 1;
                        continue;
                    }
                }
                j += 1;
            }
            let mut body_end = j;
            while body_end > i + 1 && lines[body_end - 1].blank {
                body_end -= 1;
            }
            // Scratch line vectors are pooled: a list of 100k items allocates a handful.
            let mut sub = self.pool.pop().unwrap_or_default();
            sub.clear();
            sub.push(Line::new(rest, lines[i].idx));
            sub.extend_from_slice(&lines[i + 1..body_end]);
            let children = if depth + 1 < self.max_depth {
                self.para_first = true;
                self.parse(&sub, depth + 1, false)
            } else {
                let mut s = String::new();
                for l in &sub {
                    if !s.is_empty() {
                        s.push('\n');
                    }
                    s.push_str(l.text.trim());
                }
                vec![El::Para(Cow::Owned(s), Aff::default())]
            };
            self.pool.push(sub);
            items.push(Item { counter, checkbox, tag, children });
            i = j;
            if list_over || i >= n {
                // Skip the blank lines that ended the list.
                while i < n && lines[i].blank {
                    i += 1;
                }
                break;
            }
            if lines[i].ind as usize != ind0 || item_bullet(lines[i].trimmed(), ind0).is_none() {
                break;
            }
        }
        if items.is_empty() {
            // Cannot happen (start is an item line) but never loop forever.
            return (El::Para(Cow::Owned(first.trim().to_string()), aff), start + 1);
        }
        (El::List(kind.unwrap_or(ListKind::Unordered), items, aff), i)
    }
}

fn join_para(lines: &[Line<'_>], i: usize, j: usize, first: &str) -> String {
    // Sized once (an upper bound): growing by doubling costs a copy per step inside wasm.
    let cap = first.len() + lines[i + 1..j].iter().map(|l| l.text.len() + 1).sum::<usize>();
    let mut text = String::with_capacity(cap);
    text.push_str(first.trim_end_matches('\r'));
    for l in &lines[i + 1..j] {
        text.push('\n');
        text.push_str(l.text.trim_start().trim_end_matches('\r'));
    }
    text
}

/// The bullet of a list item line (`t` is trimmed-start, `ind` its indentation): its length.
pub fn item_bullet(t: &str, ind: usize) -> Option<usize> {
    let b = t.as_bytes();
    if b.is_empty() {
        return None;
    }
    let len = match b[0] {
        b'-' | b'+' => 1,
        b'*' => {
            if ind == 0 {
                return None;
            }
            1
        }
        b'0'..=b'9' => {
            let mut k = 0;
            while k < b.len() && k < 20 && b[k].is_ascii_digit() {
                k += 1;
            }
            if k < b.len() && (b[k] == b'.' || b[k] == b')') {
                k + 1
            } else {
                return None;
            }
        }
        _ => return None,
    };
    if len == b.len() || b[len] == b' ' || b[len] == b'\t' || b[len] == b'\r' {
        Some(len)
    } else {
        None
    }
}

fn find_tag_sep(rest: &str) -> Option<usize> {
    // "TAG :: DESC": the first " ::" followed by whitespace or end of line.
    let b = rest.as_bytes();
    let mut k = 0;
    while k + 3 <= b.len() {
        if (b[k] == b' ' || b[k] == b'\t') && b[k + 1] == b':' && b[k + 2] == b':' && (k + 3 == b.len() || b[k + 3] == b' ' || b[k + 3] == b'\t') {
            return Some(k);
        }
        k += 1;
    }
    None
}

fn is_tableel_rule(t: &str) -> bool {
    let te = t.trim_end();
    let b = te.as_bytes();
    b.len() >= 3 && b[0] == b'+' && b[b.len() - 1] == b'+' && b[1] == b'-' && b.iter().all(|&c| c == b'+' || c == b'-')
}

/// `#+KEY: value` or `#+KEY[opt]: value` → (KEY, opt, value).
pub fn keyword(t: &str) -> Option<(&str, &str, &str)> {
    let b = t.as_bytes();
    if b.len() < 3 || b[0] != b'#' || b[1] != b'+' {
        return None;
    }
    let mut k = 2;
    while k < b.len() && b[k] != b':' && b[k] != b'[' && b[k] != b' ' && b[k] != b'\t' {
        k += 1;
    }
    if k == 2 || k >= b.len() {
        return None;
    }
    let key = &t[2..k];
    let mut opt = "";
    if b[k] == b'[' {
        let close = t[k..].find("]:")? + k;
        opt = &t[k + 1..close];
        k = close + 1;
    }
    if b[k] != b':' {
        return None;
    }
    let value = &t[k + 1..];
    if !(value.is_empty() || value.starts_with(' ') || value.starts_with('\t') || value.starts_with('\r')) {
        return None;
    }
    Some((key, opt, value.trim()))
}

fn table_row(t: &str) -> TableRow<'_> {
    if t.starts_with("|-") {
        return TableRow::Rule;
    }
    let inner = &t[1..];
    let inner = if inner.ends_with('|') { &inner[..inner.len() - 1] } else { inner };
    TableRow::Cells(inner.split('|').map(|c| c.trim()).collect())
}

fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    let e = s.find(|c: char| c.is_whitespace()).unwrap_or(s.len());
    (&s[..e], &s[e..])
}

/// Split src block parameters into switches (`-n -r -l "..."`) and header arguments (`:k v`).
fn split_switches(s: &str) -> (&str, &str) {
    let t = s.trim();
    match t.find(" :").or_else(|| if t.starts_with(':') { Some(0) } else { None }) {
        Some(p) => (t[..p].trim(), t[p..].trim()),
        None => (t, ""),
    }
}

/// Body of a verbatim block: commas protecting `*` and `#+` removed, common indentation removed.
fn verbatim_body(lines: &[Line<'_>], dedent: bool) -> String {
    let mut min = usize::MAX;
    if dedent {
        for l in lines {
            if !is_blank(l.text) {
                min = min.min(indent_of(l.text));
            }
        }
    }
    if min == usize::MAX {
        min = 0;
    }
    let mut s = String::with_capacity(lines.iter().map(|l| l.text.len() + 1).sum::<usize>());
    for l in lines {
        let text = l.text.trim_end_matches('\r');
        let mut t = strip_indent(text, min);
        // Unescape ",*" and ",#+" (and ",,*" -> ",*").
        let tt = t.trim_start();
        if tt.starts_with(',') {
            let after = &tt[1..];
            let a = after.trim_start_matches(',');
            if a.starts_with('*') || a.starts_with("#+") {
                let lead = t.len() - tt.len();
                s.push_str(&t[..lead]);
                t = after;
                s.push_str(t);
                s.push('\n');
                continue;
            }
        }
        s.push_str(t);
        s.push('\n');
    }
    s
}

fn strip_indent(text: &str, n: usize) -> &str {
    if n == 0 {
        return text;
    }
    let mut col = 0;
    for (i, b) in text.bytes().enumerate() {
        if col >= n {
            return &text[i..];
        }
        match b {
            b' ' => col += 1,
            b'\t' => col = (col / 8 + 1) * 8,
            _ => return &text[i..],
        }
    }
    ""
}
