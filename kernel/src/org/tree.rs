//! The element tree of an Org document, as org-element (Org 9.5) builds it at element
//! granularity: the buffer is split on headlines first (outline.rs finds them, so no block,
//! drawer or environment ever spans a headline), each headline gets its section, and each
//! section is cut into elements (greater elements hold elements). Objects inside paragraphs
//! are not parsed: a paragraph keeps its contents span.
//!
//! The tree is an arena in document (pre-)order: a node's children are the nodes between it
//! and `after` whose `parent` is it (a child's `after` is its next sibling). Every offset is a
//! byte offset into the EOL-normalised, BOM-less text ([`Tree::text`]); [`Tree::orig`] maps
//! one back to the caller's input. Building is linear and uses explicit work stacks: block,
//! drawer and environment ends are looked up in a per-section index (elements_index.rs), and
//! a list's structure is computed once for all its nested lists (lists.rs).

use super::elements_index::Ends;
use super::lists::{self, ListStructs};
use super::outline::{self, crack_headline_commented};
use super::scan::{line_at, normalize_eol, skip_blank, starts_with_ci};
use super::timestamp::{is_planning_line, parse_planning, Timestamp};
use crate::json::push_usize;
use std::borrow::Cow;

/// "No such offset" (a node without contents).
pub const NONE: usize = usize::MAX;

/// A field value of a node.
#[derive(Debug, Clone)]
pub enum Val<'a> {
    Str(&'a str),
    Num(usize),
    Bool(bool),
    Null,
    List(Vec<&'a str>),
    /// (boxed: a timestamp is large and rare, and every field pays for the largest variant)
    Ts(Option<Box<Timestamp>>),
    /// Affiliated keywords: (key as Org normalises it, `[option]`, value), document order.
    Affiliated(Vec<(String, Option<&'a str>, &'a str)>),
}

#[derive(Debug, Clone)]
pub struct Node<'a> {
    pub kind: &'static str,
    pub begin: usize,
    pub end: usize,
    /// Contents span (`NONE` when the element has none).
    pub cbegin: usize,
    pub cend: usize,
    /// Where the element proper starts, after its affiliated keywords (= begin without them).
    pub post_affiliated: usize,
    pub parent: usize,
    /// Index of the node after this one's subtree (its next sibling, if any).
    pub after: usize,
    pub fields: Vec<(&'static str, Val<'a>)>,
}

impl<'a> Node<'a> {
    pub fn get(&self, key: &str) -> Option<&Val<'a>> {
        self.fields.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }
    pub fn str(&self, key: &str) -> Option<&'a str> {
        match self.get(key) {
            Some(Val::Str(s)) => Some(s),
            _ => None,
        }
    }
}

pub struct Tree<'a> {
    /// The text the offsets refer to (EOL-normalised, BOM removed).
    pub text: &'a str,
    pub nodes: Vec<Node<'a>>,
    bom: usize,
    /// For a DOS file (one `\r` dropped per line end): the normalised offsets of each `\n`.
    dos_newlines: Option<Vec<usize>>,
}

impl<'a> Tree<'a> {
    /// Indices of the children of node `i`, in order.
    pub fn children(&self, i: usize) -> Children<'_, 'a> {
        Children { tree: self, next: i + 1, end: self.nodes[i].after }
    }

    /// `pos` (an offset into [`Tree::text`]) as a byte offset into the original input.
    pub fn orig(&self, pos: usize) -> usize {
        let shift = match &self.dos_newlines {
            Some(nl) => nl.partition_point(|&p| p < pos),
            None => 0,
        };
        pos + shift + self.bom
    }
}

pub struct Children<'t, 'a> {
    tree: &'t Tree<'a>,
    next: usize,
    end: usize,
}

impl<'t, 'a> Iterator for Children<'t, 'a> {
    type Item = usize;
    fn next(&mut self) -> Option<usize> {
        if self.next >= self.end {
            return None;
        }
        let i = self.next;
        self.next = self.tree.nodes[i].after;
        Some(i)
    }
}

/// The normalised text a tree is built on, kept by the caller so the tree can borrow it.
pub struct Source<'a> {
    text: Cow<'a, str>,
    dos: bool,
    bom: usize,
}

impl<'a> Source<'a> {
    /// Line endings as Emacs reads them (scan.rs) and a leading BOM dropped.
    pub fn new(org: &'a str) -> Source<'a> {
        let bom = if org.starts_with('\u{feff}') { 3 } else { 0 };
        let text = normalize_eol(&org[bom..]);
        let dos = text.len() < org.len() - bom;
        Source { text, dos, bom }
    }
}

/// Build the element tree of a [`Source`].
pub fn build<'a>(src: &'a Source<'_>) -> Tree<'a> {
    let text: &'a str = &src.text;
    let dos_newlines = if src.dos {
        Some(text.bytes().enumerate().filter(|(_, c)| *c == b'\n').map(|(i, _)| i).collect())
    } else {
        None
    };
    let mut b = Builder { text, b: text.as_bytes(), nodes: Vec::new(), work: Vec::new() };
    b.document();
    let mut nodes = b.nodes;
    // `after`: one backward pass (children follow their parent in pre-order).
    for i in 0..nodes.len() {
        nodes[i].after = i + 1;
    }
    for i in (1..nodes.len()).rev() {
        let p = nodes[i].parent;
        if nodes[i].after > nodes[p].after {
            nodes[p].after = nodes[i].after;
        }
    }
    Tree { text, nodes, bom: src.bom, dos_newlines }
}

/// What is left to parse: elements of `[pos, limit)` into `parent` (`first_para`: `pos` is
/// inside a line, after an item's bullet or a footnote label, so a paragraph starts there),
/// or the items of a list.
enum Work {
    Region { parent: usize, pos: usize, limit: usize, first_para: bool },
    Items { list: usize, pos: usize },
}

struct Builder<'a> {
    text: &'a str,
    b: &'a [u8],
    nodes: Vec<Node<'a>>,
    work: Vec<Work>,
}

fn is_blank_line(b: &[u8], start: usize, end: usize) -> bool {
    skip_blank(b, start, end) == end
}

impl<'a> Builder<'a> {
    fn push(&mut self, kind: &'static str, begin: usize, end: usize, parent: usize) -> usize {
        self.nodes.push(Node { kind, begin, end, cbegin: NONE, cend: NONE, post_affiliated: begin, parent, after: 0, fields: Vec::new() });
        self.nodes.len() - 1
    }

    fn set_contents(&mut self, i: usize, cb: usize, ce: usize) {
        let (cb, ce) = if ce > cb { (cb, ce) } else { (NONE, NONE) };
        self.nodes[i].cbegin = cb;
        self.nodes[i].cend = ce;
    }

    /// First offset `>= pos` that is not on a blank line (or `limit`), at a line start.
    fn skip_blank_lines(&self, mut pos: usize, limit: usize) -> usize {
        while pos < limit {
            let l = line_at(self.b, pos);
            if !is_blank_line(self.b, l.start, l.end.min(limit)) {
                return pos;
            }
            pos = l.next.min(limit);
        }
        limit
    }

    /// Start of the line after the last non-blank line of `[from, to)` (`from` if all blank).
    fn trim_blank_end(&self, from: usize, to: usize) -> usize {
        let mut e = to;
        while e > from && matches!(self.b[e - 1], b' ' | b'\t' | b'\n') {
            e -= 1;
        }
        if e == from {
            return from;
        }
        line_at(self.b, e).next.min(to)
    }

    fn document(&mut self) {
        let text = self.text;
        let n = text.len();
        let sk = outline::skeleton(text);
        self.push("org-data", 0, n, 0);
        let first = if sk.is_empty() { n } else { sk.head(0).0 };
        let cb = self.skip_blank_lines(0, first);
        self.set_contents(0, cb, n);
        if cb < first {
            let s = self.push("section", cb, first, 0);
            let ce = self.trim_blank_end(cb, first);
            self.set_contents(s, cb, ce);
            self.section_body(s, cb, ce);
        }
        // Open headlines (node index, level): a headline's parent is the nearest open one
        // with a lower level.
        let mut open: Vec<(usize, usize)> = Vec::new();
        for i in 0..sk.len() {
            let (start, line, level) = sk.head(i);
            let end = if i + 1 < sk.len() { sk.head(i + 1).0 } else { n };
            while matches!(open.last(), Some(&(_, lv)) if lv >= level) {
                let (h, _) = open.pop().unwrap();
                self.close_headline(h, start);
            }
            let parent = open.last().map(|&(h, _)| h).unwrap_or(0);
            let h = self.headline(&sk, i, start, line, level, end, parent);
            open.push((h, level));
        }
        while let Some((h, _)) = open.pop() {
            self.close_headline(h, n);
        }
        // Org parses a headline within its parent's contents: a last child ends where the
        // parent's contents end, before the parent's trailing blank lines (pre-order, so a
        // parent is settled before its children).
        for i in 1..self.nodes.len() {
            let p = self.nodes[i].parent;
            if self.nodes[i].kind == "headline" && self.nodes[p].kind == "headline" && self.nodes[p].cend != NONE {
                let lim = self.nodes[p].cend;
                if self.nodes[i].end > lim {
                    self.nodes[i].end = lim;
                }
            }
        }
    }

    /// A headline's subtree ends where the next headline of its level or above starts.
    fn close_headline(&mut self, h: usize, end: usize) {
        self.nodes[h].end = end;
        let body = line_at(self.b, self.nodes[h].begin).next.min(end);
        let cb = self.skip_blank_lines(body, end);
        let ce = self.trim_blank_end(cb, end);
        self.set_contents(h, cb, ce);
    }

    #[allow(clippy::too_many_arguments)]
    fn headline(&mut self, sk: &outline::Skeleton<'a>, i: usize, start: usize, line: usize, level: usize, end: usize, parent: usize) -> usize {
        let text = self.text;
        let b = self.b;
        let hl = line_at(b, start);
        let (todo, priority, commented, title, tags) = crack_headline_commented(&text[hl.start..hl.end], level, sk.keywords());
        let title_begin = title.as_ptr() as usize - text.as_ptr() as usize;
        let h = self.push("headline", start, end, parent);
        let archived = tags.iter().any(|t| *t == "ARCHIVE");
        self.nodes[h].fields = vec![
            ("level", Val::Num(level)),
            ("line", Val::Num(line)),
            ("todo", todo.map(Val::Str).unwrap_or(Val::Null)),
            ("priority", priority.map(Val::Str).unwrap_or(Val::Null)),
            ("commented", Val::Bool(commented)),
            ("archived", Val::Bool(archived)),
            ("title", Val::Str(title)),
            ("title_begin", Val::Num(title_begin)),
            ("title_end", Val::Num(title_begin + title.len())),
            ("tags", Val::List(tags)),
        ];
        // The section: from the line after the headline to the next headline.
        // The section: from the first non-blank line after the headline to the next headline.
        let body = hl.next.min(end);
        let sb = self.skip_blank_lines(body, end);
        if sb < end {
            let s = self.push("section", sb, end, h);
            let ce = self.trim_blank_end(sb, end);
            self.set_contents(s, sb, ce);
            let head = sk.headline(i);
            let mut pos = sb;
            let mut last = None;
            let l = line_at(b, pos);
            if pos == body && is_planning_line(&b[l.start..l.end]) {
                let p = self.push("planning", l.start, l.next, s);
                let plan = parse_planning(&text[l.start..l.end]);
                self.nodes[p].fields = vec![("closed", Val::Ts(plan.closed.map(Box::new))), ("deadline", Val::Ts(plan.deadline.map(Box::new))), ("scheduled", Val::Ts(plan.scheduled.map(Box::new)))];
                pos = l.next.min(end);
                last = Some(p);
            }
            if head.content > pos {
                last = Some(self.property_drawer(s, pos, head.content));
                pos = head.content;
            }
            let after = self.skip_blank_lines(pos, ce);
            if let Some(last) = last {
                self.nodes[last].end = after;
            }
            let pos = after;
            self.section_body(s, pos, ce);
        }
        h
    }

    fn property_drawer(&mut self, parent: usize, from: usize, to: usize) -> usize {
        let b = self.b;
        let d = self.push("property-drawer", from, to, parent);
        let first = line_at(b, from);
        let mut at = first.next;
        let mut cb = NONE;
        let mut ce = NONE;
        while at < to {
            let l = line_at(b, at);
            if outline::is_marker_line(b, l, b":END:") {
                break;
            }
            if let Some((ks, ke, vs, ve)) = outline::property_line(b, l) {
                let p = self.push("node-property", l.start, l.next, d);
                self.nodes[p].fields = vec![("key", Val::Str(&self.text[ks..ke])), ("value", Val::Str(&self.text[vs..ve]))];
                if cb == NONE {
                    cb = l.start;
                }
                ce = l.next;
            }
            at = l.next;
        }
        if cb != NONE {
            self.set_contents(d, cb, ce);
        }
        d
    }

    /// Parse the elements of a section (no headline inside `[from, to)`).
    fn section_body(&mut self, parent: usize, from: usize, to: usize) {
        if from >= to {
            return;
        }
        let ends = Ends::build(self.b, from, to);
        let mut lists = ListStructs::default();
        self.work.push(Work::Region { parent, pos: from, limit: to, first_para: false });
        while let Some(w) = self.work.pop() {
            match w {
                Work::Region { parent, pos, limit, first_para } => self.region(parent, pos, limit, first_para, &ends, &mut lists),
                Work::Items { list, pos } => self.item(list, pos, &ends, &lists),
            }
        }
    }

    fn item(&mut self, list: usize, pos: usize, _ends: &Ends, lists: &ListStructs) {
        let s = match lists.get(pos) {
            Some(s) => s.clone(),
            None => return,
        };
        let b = self.b;
        let l = line_at(b, pos);
        let bullet = lists::crack_item(b, l.start, l.end);
        let end = s.end;
        let it = self.push("item", pos, end, list);
        let txt = self.text;
        self.nodes[it].fields = vec![
            ("bullet", Val::Str(&txt[bullet.bullet.0..bullet.bullet.1])),
            ("counter", bullet.counter.map(|(a, e)| Val::Str(&txt[a..e])).unwrap_or(Val::Null)),
            ("checkbox", match bullet.checkbox {
                Some(b'X') => Val::Str("on"),
                Some(b' ') => Val::Str("off"),
                Some(b'-') => Val::Str("trans"),
                _ => Val::Null,
            }),
            ("tag", bullet.tag.map(|(a, e)| Val::Str(&txt[a..e])).unwrap_or(Val::Null)),
        ];
        // Contents: from after the bullet (a paragraph when text follows on that line).
        let mut cb = bullet.contents;
        let first_para = cb < l.end && !is_blank_line(b, cb, l.end);
        if !first_para {
            cb = self.skip_blank_lines(l.next.min(end), end);
        }
        let ce = self.trim_blank_end(cb, end);
        if ce > cb {
            self.set_contents(it, cb, ce);
            self.work.push(Work::Region { parent: it, pos: cb, limit: ce, first_para });
        }
    }

    /// Parse elements of `[pos, limit)` until a greater element needs its contents parsed
    /// first (then the rest of the region is queued behind it).
    fn region(&mut self, parent: usize, mut pos: usize, limit: usize, mut first_para: bool, ends: &Ends, lists: &mut ListStructs) {
        let b = self.b;
        while pos < limit {
            if !first_para {
                pos = self.skip_blank_lines(pos, limit);
                if pos >= limit {
                    return;
                }
            }
            let begin = pos;
            if first_para {
                first_para = false;
                let end = self.paragraph_end(line_at(b, pos).next.min(limit), limit, ends);
                pos = self.leaf(parent, "paragraph", begin, begin, end, limit, true);
                continue;
            }
            // Affiliated keywords, unless orphaned (then they are plain keywords).
            let mut aff: Vec<(String, Option<&'a str>, &'a str)> = Vec::new();
            let mut at = pos;
            while at < limit {
                let l = line_at(b, at);
                match affiliated(self.text, l.start, l.end) {
                    Some(a) => aff.push(a),
                    None => break,
                }
                at = l.next.min(limit);
            }
            if !aff.is_empty() {
                let l = if at < limit { Some(line_at(b, at)) } else { None };
                if l.map(|l| is_blank_line(b, l.start, l.end)).unwrap_or(true) {
                    // Orphaned (a blank line or the limit follows): each is a plain keyword,
                    // all read now so that a long run is not collected again from each line.
                    let mut q = pos;
                    while q < at {
                        let (_, nx) = self.element(parent, q, q, limit, ends, lists);
                        q = nx;
                    }
                    pos = q;
                    continue;
                }
                pos = at;
            }
            let (node, next) = self.element(parent, begin, pos, limit, ends, lists);
            if !aff.is_empty() {
                self.nodes[node].post_affiliated = pos;
                self.nodes[node].fields.push(("affiliated", Val::Affiliated(aff)));
            }
            // Greater elements queue their contents; the rest of the region waits behind.
            let (cb, ce) = (self.nodes[node].cbegin, self.nodes[node].cend);
            let kind = self.nodes[node].kind;
            if cb != NONE && is_greater(kind) {
                let after = self.nodes[node].end;
                if after < limit {
                    self.work.push(Work::Region { parent, pos: after, limit, first_para: false });
                }
                if kind == "plain-list" {
                    let mut items = Vec::new();
                    let mut p = Some(cb);
                    while let Some(q) = p {
                        if q >= ce {
                            break;
                        }
                        items.push(q);
                        p = lists.get(q).and_then(|s| s.next);
                    }
                    for q in items.into_iter().rev() {
                        self.work.push(Work::Items { list: node, pos: q });
                    }
                } else if kind != "footnote-definition" && is_blank_line(b, cb, line_at(b, cb).end) {
                    // Org 9.5 reads a blank first line of a drawer's or block's contents as
                    // a paragraph of its own (its contents start right after the opener).
                    let l = line_at(b, cb);
                    let e = self.skip_blank_lines(l.next.min(ce), ce);
                    let pi = self.push("paragraph", cb, e, node);
                    self.set_contents(pi, cb, l.next.min(ce));
                    if e < ce {
                        self.work.push(Work::Region { parent: node, pos: e, limit: ce, first_para: false });
                    }
                } else {
                    let fp = kind == "footnote-definition" && !self.at_line_start(cb);
                    self.work.push(Work::Region { parent: node, pos: cb, limit: ce, first_para: fp });
                }
                return;
            }
            pos = next;
        }
    }

    fn at_line_start(&self, pos: usize) -> bool {
        pos == 0 || self.b[pos - 1] == b'\n'
    }

    /// Add a leaf (or greater) element `[begin, end)` and its post-blank lines; returns where
    /// the next element may start.
    #[allow(clippy::too_many_arguments)]
    fn leaf(&mut self, parent: usize, kind: &'static str, begin: usize, cb: usize, ce: usize, limit: usize, contents: bool) -> usize {
        let end = self.skip_blank_lines(ce, limit);
        let i = self.push(kind, begin, end, parent);
        if contents {
            self.set_contents(i, cb, ce);
        }
        end
    }

    /// One element at `pos` (`begin` includes its affiliated keywords): (node, next offset).
    fn element(&mut self, parent: usize, begin: usize, pos: usize, limit: usize, ends: &Ends, lists: &mut ListStructs) -> (usize, usize) {
        let b = self.b;
        let text = self.text;
        let l = line_at(b, pos);
        let le = l.end.min(limit);
        let next = l.next.min(limit);
        let p = skip_blank(b, l.start, le);
        let rest = &b[p..le];
        let ci = |pat: &[u8]| starts_with_ci(b, p, le, pat);
        macro_rules! done {
            ($kind:expr, $ce:expr, $contents:expr, $cb:expr) => {{
                let nx = self.leaf(parent, $kind, begin, $cb, $ce, limit, $contents);
                (self.nodes.len() - 1, nx)
            }};
        }
        macro_rules! para {
            () => {{
                let e = self.paragraph_end(next, limit, ends);
                done!("paragraph", e, true, pos)
            }};
        }
        // Org reads clocks and comments before affiliated keywords: with them, a paragraph.
        let has_aff = begin != pos;
        if has_aff && (ci(b"CLOCK:") || (rest.first() == Some(&b'#') && (rest.len() == 1 || rest[1] == b' '))) {
            return para!();
        }
        // Clock.
        if ci(b"CLOCK:") {
            let r = done!("clock", next, false, pos);
            let v = super::scan::trim_org(&text[p + 6..le]);
            let (value, duration) = match v.find("=>") {
                Some(k) => (super::scan::trim_org(&v[..k]), Some(super::scan::trim_org(&v[k + 2..]))),
                None => (v, None),
            };
            self.nodes[r.0].fields = vec![("value", Val::Str(value)), ("duration", duration.map(Val::Str).unwrap_or(Val::Null)), ("status", Val::Str(if duration.is_some() { "closed" } else { "running" }))];
            return r;
        }
        // LaTeX environment.
        if ci(b"\\begin{") {
            if let Some(name) = latex_env_name(b, p + 7, le) {
                if let Some((_, e_next)) = ends.find(b, Ends::LATEX, name, next, limit) {
                    let r = done!("latex-environment", e_next, false, pos);
                    self.nodes[r.0].fields = vec![("name", Val::Str(&text[name.0..name.1]))];
                    return r;
                }
                return para!();
            }
        }
        // Drawer (a `:NAME:` line with an `:END:` before the limit).
        if let Some((ns, ne)) = drawer_name(b, p, le) {
            return match ends.find(b, Ends::DRAWER, (0, 0), next, limit) {
                Some((e_start, e_next)) => {
                    let r = done!("drawer", e_next, true, next);
                    self.set_contents(r.0, next, e_start);
                    self.nodes[r.0].fields = vec![("name", Val::Str(&text[ns..ne]))];
                    r
                }
                None => para!(),
            };
        }
        // Fixed width.
        if is_fixed_width(rest) {
            let mut e = next;
            while e < limit {
                let m = line_at(b, e);
                let q = skip_blank(b, m.start, m.end);
                if !is_fixed_width(&b[q..m.end.min(limit)]) {
                    break;
                }
                e = m.next.min(limit);
            }
            return done!("fixed-width", e, false, pos);
        }
        if rest.first() == Some(&b'#') {
            // Comment lines.
            if rest.len() == 1 || rest[1] == b' ' {
                let mut e = next;
                while e < limit {
                    let m = line_at(b, e);
                    let q = skip_blank(b, m.start, m.end);
                    let r = &b[q..m.end.min(limit)];
                    if !(r == b"#" || r.starts_with(b"# ")) {
                        break;
                    }
                    e = m.next.min(limit);
                }
                return done!("comment", e, false, pos);
            }
            if ci(b"#+BEGIN_") {
                let ns = p + 8;
                let mut ne = ns;
                while ne < le && !super::scan::is_ws(b[ne]) {
                    ne += 1;
                }
                if ne > ns {
                    return match ends.find(b, Ends::BLOCK, (ns, ne), next, limit) {
                        Some((e_start, e_next)) => self.block(parent, begin, pos, (ns, ne), le, next, e_start, e_next, limit),
                        None => para!(),
                    };
                }
            }
            if ci(b"#+CALL:") {
                let r = done!("babel-call", next, false, pos);
                self.nodes[r.0].fields = vec![("value", Val::Str(super::scan::trim_org(&text[p + 7..le])))];
                return r;
            }
            if ci(b"#+BEGIN: ") || ci(b"#+BEGIN ") {
                return match ends.find(b, Ends::DYNAMIC, (0, 0), next, limit) {
                    Some((e_start, e_next)) => {
                        let r = done!("dynamic-block", e_next, false, pos);
                        self.set_contents(r.0, next, e_start);
                        let args = super::scan::trim_org(&text[p + 8..le]);
                        let (name, arguments) = match args.find(|c: char| c == ' ' || c == '\t') {
                            Some(k) => (&args[..k], super::scan::trim_org(&args[k..])),
                            None => (args, ""),
                        };
                        self.nodes[r.0].fields = vec![("block_name", Val::Str(name)), ("arguments", if arguments.is_empty() { Val::Null } else { Val::Str(arguments) })];
                        r
                    }
                    None => para!(),
                };
            }
            if let Some((ks, ke, vs)) = keyword_parts(b, p, le) {
                let r = done!("keyword", next, false, pos);
                self.nodes[r.0].fields = vec![("key", Val::Str(&text[ks..ke])), ("value", Val::Str(super::scan::trim_org(&text[vs..le])))];
                return r;
            }
            return para!();
        }
        // Footnote definition: `[fn:LABEL]` at column 0; ends at the next definition, two
        // blank lines, or the limit.
        if p == l.start {
            if let Some((ls, lend)) = footnote_label(b, p, le) {
                let mut e = next;
                let mut blanks = 0;
                let mut content_end = next;
                // the affiliated keyword lines just above the current line (they belong to a
                // definition that follows them)
                let mut aff_run: Option<usize> = None;
                while e < limit {
                    let m = line_at(b, e);
                    if is_blank_line(b, m.start, m.end) {
                        blanks += 1;
                        aff_run = None;
                        if blanks == 2 {
                            break;
                        }
                    } else {
                        if footnote_label(b, m.start, m.end).is_some() {
                            if let Some(a) = aff_run {
                                content_end = a;
                            }
                            break;
                        }
                        if affiliated(text, m.start, m.end).is_some() {
                            aff_run.get_or_insert(m.start);
                        } else {
                            aff_run = None;
                        }
                        blanks = 0;
                        content_end = m.next.min(limit);
                    }
                    e = m.next.min(limit);
                }
                let cb = skip_blank(b, lend + 1, le);
                let cb = if cb == le { self.skip_blank_lines(next, content_end) } else { cb };
                let r = self.push("footnote-definition", begin, content_end, parent);
                self.set_contents(r, cb, content_end);
                self.nodes[r].fields = vec![("label", Val::Str(&text[ls..lend]))];
                let nx = self.skip_blank_lines(content_end, limit);
                self.nodes[r].end = nx;
                return (r, nx);
            }
        }
        // Horizontal rule.
        if rest.len() >= 5 && rest.iter().take_while(|&&c| c == b'-').count() >= 5 && is_blank_line(b, p + rest.iter().take_while(|&&c| c == b'-').count(), le) {
            return done!("horizontal-rule", next, false, pos);
        }
        // Diary sexp.
        if p == l.start && rest.starts_with(b"%%(") {
            let r = done!("diary-sexp", next, false, pos);
            self.nodes[r.0].fields = vec![("value", Val::Str(&text[p..le]))];
            return r;
        }
        // Tables.
        if rest.first() == Some(&b'|') {
            return self.table(parent, begin, pos, limit);
        }
        // table.el: a full rule, more lines starting with `+` or `|`, and a full rule last.
        if is_table_el_border(rest) && next < limit {
            let mut e = next;
            let mut last = pos;
            while e < limit {
                let m = line_at(b, e);
                let q = skip_blank(b, m.start, m.end);
                if !(q < m.end && (b[q] == b'|' || b[q] == b'+')) {
                    break;
                }
                last = m.start;
                e = m.next.min(limit);
            }
            let lm = line_at(b, last);
            if e > next && is_table_el_border(&b[skip_blank(b, lm.start, lm.end)..lm.end.min(limit)]) {
                let r = done!("table", e, false, pos);
                self.nodes[r.0].fields = vec![("table_type", Val::Str("table.el"))];
                return r;
            }
        }
        // Plain list.
        if lists::is_item(b, l.start, le) {
            if lists.get(pos).is_none() {
                lists::compute(b, pos, limit, ends, lists);
            }
            let s = lists.get(pos).cloned().expect("item structure");
            // (as Org, a nested list may run over its item's trailing blank lines)
            let ce = s.list_end;
            let nx = self.skip_blank_lines(ce, limit.max(ce));
            let r = self.push("plain-list", begin, nx, parent);
            self.set_contents(r, pos, ce);
            let ordered = lists::crack_item(b, l.start, le);
            let kind = if b[ordered.bullet.0].is_ascii_digit() {
                "ordered"
            } else if ordered.tag.is_some() {
                "descriptive"
            } else {
                "unordered"
            };
            self.nodes[r].fields = vec![("list_type", Val::Str(kind))];
            return (r, nx);
        }
        para!()
    }

    #[allow(clippy::too_many_arguments)]
    fn block(&mut self, parent: usize, begin: usize, pos: usize, name: (usize, usize), le: usize, next: usize, e_start: usize, e_next: usize, limit: usize) -> (usize, usize) {
        let text = self.text;
        let nm = &text[name.0..name.1];
        let lower = nm.to_ascii_lowercase();
        let kind = match lower.as_str() {
            "center" => "center-block",
            "quote" => "quote-block",
            "comment" => "comment-block",
            "example" => "example-block",
            "export" => "export-block",
            "src" => "src-block",
            "verse" => "verse-block",
            _ => "special-block",
        };
        let nx = self.skip_blank_lines(e_next, limit);
        let r = self.push(kind, begin, nx, parent);
        if matches!(kind, "center-block" | "quote-block" | "special-block") {
            self.set_contents(r, next, e_start);
        } else if kind == "verse-block" {
            // (Org gives a verse block contents even when empty)
            self.nodes[r].cbegin = next;
            self.nodes[r].cend = e_start;
        }
        let _ = pos;
        let after = &text[name.1..le];
        let mut fields = match kind {
            "src-block" => {
                let (lang, q) = super::srcblock::src_begin(text, name.1, le);
                let lang_end = lang.map(|s| s.as_ptr() as usize - text.as_ptr() as usize + s.len()).unwrap_or(name.1);
                let switches = super::scan::trim_org(&text[lang_end.min(q)..q]);
                let params = super::scan::trim_org(&text[q.min(le)..le]);
                vec![
                    ("language", lang.map(Val::Str).unwrap_or(Val::Null)),
                    ("switches", if switches.is_empty() { Val::Null } else { Val::Str(switches) }),
                    ("parameters", if params.is_empty() { Val::Null } else { Val::Str(params) }),
                ]
            }
            "example-block" => {
                let s = super::scan::trim_org(after);
                vec![("switches", if s.is_empty() { Val::Null } else { Val::Str(s) })]
            }
            "export-block" => {
                let s = super::scan::trim_org(after);
                let w = s.split(|c: char| c == ' ' || c == '\t').next().unwrap_or("");
                vec![("backend", if w.is_empty() { Val::Null } else { Val::Str(w) })]
            }
            "special-block" => vec![("block_type", Val::Str(nm))],
            _ => Vec::new(),
        };
        if !matches!(kind, "center-block" | "quote-block" | "special-block" | "verse-block") {
            // Org keeps these bodies as a value, not contents: its span.
            fields.push(("value_begin", Val::Num(next)));
            fields.push(("value_end", Val::Num(e_start)));
        }
        self.nodes[r].fields = fields;
        (r, nx)
    }

    /// An Org table: consecutive `|` lines, then `#+TBLFM:` lines; rows are its children.
    fn table(&mut self, parent: usize, begin: usize, pos: usize, limit: usize) -> (usize, usize) {
        let b = self.b;
        let text = self.text;
        let mut rows = Vec::new();
        let mut e = pos;
        while e < limit {
            let m = line_at(b, e);
            let q = skip_blank(b, m.start, m.end);
            if !(q < m.end && b[q] == b'|') {
                break;
            }
            rows.push((m.start, m.next.min(limit), q));
            e = m.next.min(limit);
        }
        let ce = e;
        let mut tblfm = Vec::new();
        while e < limit {
            let m = line_at(b, e);
            let q = skip_blank(b, m.start, m.end);
            if !starts_with_ci(b, q, m.end, b"#+TBLFM:") {
                break;
            }
            tblfm.push(super::scan::trim_org(&text[q + 8..m.end]));
            e = m.next.min(limit);
        }
        let nx = self.skip_blank_lines(e, limit);
        let t = self.push("table", begin, nx, parent);
        self.set_contents(t, pos, ce);
        self.nodes[t].fields = vec![("table_type", Val::Str("org")), ("tblfm", Val::List(tblfm))];
        for (s, n, q) in rows {
            let r = self.push("table-row", s, n, t);
            let rule = q + 1 < n && b[q + 1] == b'-';
            self.nodes[r].fields = vec![("row_type", Val::Str(if rule { "rule" } else { "standard" }))];
            if !rule {
                let le = line_at(b, s).end;
                self.set_contents(r, q + 1, le);
            }
        }
        (t, nx)
    }

    /// Where a paragraph whose first line ends before `from` stops: the first line in
    /// `[from, limit)` that starts another element (org-element-paragraph-separate, with
    /// incomplete blocks, drawers and environments read as text), else `limit`.
    fn paragraph_end(&self, from: usize, limit: usize, ends: &Ends) -> usize {
        let b = self.b;
        let mut pos = from;
        while pos < limit {
            let l = line_at(b, pos);
            let le = l.end.min(limit);
            if separates(b, l.start, le, l.next.min(limit), limit, ends) {
                return pos;
            }
            pos = l.next.min(limit);
        }
        limit
    }
}

fn is_greater(kind: &str) -> bool {
    matches!(kind, "center-block" | "quote-block" | "special-block" | "drawer" | "dynamic-block" | "footnote-definition" | "plain-list")
}

/// Whether the line `[start, le)` ends a paragraph above it.
fn separates(b: &[u8], start: usize, le: usize, next: usize, limit: usize, ends: &Ends) -> bool {
    let p = skip_blank(b, start, le);
    if p == le {
        return true; // blank line
    }
    let rest = &b[p..le];
    if p == start && (rest.starts_with(b"%%(") || footnote_label(b, p, le).is_some()) {
        return true;
    }
    match rest[0] {
        b'|' => return true,
        b'+' if is_table_el_border(rest) => return true,
        b'#' => {
            if rest.len() == 1 || rest[1] == b' ' {
                return true;
            }
            if rest[1] == b'+' {
                if starts_with_ci(b, p, le, b"#+BEGIN_") {
                    let ns = p + 8;
                    let mut ne = ns;
                    while ne < le && !super::scan::is_ws(b[ne]) {
                        ne += 1;
                    }
                    return ne > ns && ends.find(b, Ends::BLOCK, (ns, ne), next, limit).is_some();
                }
                return keyword_parts(b, p, le).is_some();
            }
            return false;
        }
        b':' => {
            if is_fixed_width(rest) {
                return true;
            }
            if drawer_name(b, p, le).is_some() {
                // Org searches for `:END:` from this line's start: an `:END:` line separates.
                return ends.find(b, Ends::DRAWER, (0, 0), start, limit).is_some();
            }
            return false;
        }
        b'\\' => {
            if starts_with_ci(b, p, le, b"\\begin{") {
                if let Some(name) = latex_env_name(b, p + 7, le) {
                    return ends.find(b, Ends::LATEX, name, next, limit).is_some();
                }
            }
            return false;
        }
        _ => {}
    }
    if rest.len() >= 5 && rest.iter().take_while(|&&c| c == b'-').count() >= 5 && is_blank_line(b, p + rest.iter().take_while(|&&c| c == b'-').count(), le) {
        return true;
    }
    if starts_with_ci(b, p, le, b"CLOCK:") {
        return true;
    }
    // `[-+*]` or `N.`/`N)` followed by a blank or the end of the line (any indentation here).
    let mut q = p;
    if matches!(b[q], b'-' | b'+' | b'*') {
        q += 1;
    } else {
        while q < le && b[q].is_ascii_digit() {
            q += 1;
        }
        if q == p || q >= le || !matches!(b[q], b'.' | b')') {
            return false;
        }
        q += 1;
    }
    q == le || b[q] == b' ' || b[q] == b'\t'
}

fn is_fixed_width(rest: &[u8]) -> bool {
    rest.first() == Some(&b':') && (rest.len() == 1 || rest[1] == b' ')
}

/// `+-…-+…` (a table.el border).
fn is_table_el_border(rest: &[u8]) -> bool {
    let mut e = rest.len();
    while e > 0 && (rest[e - 1] == b' ' || rest[e - 1] == b'\t') {
        e -= 1;
    }
    let r = &rest[..e];
    r.len() >= 3 && r[0] == b'+' && r[1] == b'-' && r[e - 1] == b'+' && r.iter().all(|&c| c == b'+' || c == b'-')
}

/// `:NAME:` alone on its line (NAME: word characters, `-`, `_`): the name's span.
fn drawer_name(b: &[u8], p: usize, le: usize) -> Option<(usize, usize)> {
    if p >= le || b[p] != b':' {
        return None;
    }
    let s = p + 1;
    let mut e = s;
    while e < le && (b[e].is_ascii_alphanumeric() || b[e] == b'-' || b[e] == b'_' || b[e] >= 0x80) {
        e += 1;
    }
    if e == s || e >= le || b[e] != b':' || !is_blank_line(b, e + 1, le) {
        return None;
    }
    Some((s, e))
}

/// `NAME}` after `\begin{` (NAME: `[A-Za-z0-9*]+`).
fn latex_env_name(b: &[u8], s: usize, le: usize) -> Option<(usize, usize)> {
    let mut e = s;
    while e < le && (b[e].is_ascii_alphanumeric() || b[e] == b'*') {
        e += 1;
    }
    if e > s && e < le && b[e] == b'}' {
        Some((s, e))
    } else {
        None
    }
}

/// `[fn:LABEL]` at `p`: the label's span.
fn footnote_label(b: &[u8], p: usize, le: usize) -> Option<(usize, usize)> {
    if !b[p..le].starts_with(b"[fn:") {
        return None;
    }
    let s = p + 4;
    let mut e = s;
    while e < le && (b[e].is_ascii_alphanumeric() || b[e] == b'-' || b[e] == b'_' || b[e] >= 0x80) {
        e += 1;
    }
    if e > s && e < le && b[e] == b']' {
        Some((s, e))
    } else {
        None
    }
}

/// `#+KEY: value` (KEY: the shortest non-blank run before a colon): (key start, key end,
/// value start).
fn keyword_parts(b: &[u8], p: usize, le: usize) -> Option<(usize, usize, usize)> {
    if !(p + 2 < le && b[p] == b'#' && b[p + 1] == b'+') {
        return None;
    }
    let s = p + 2;
    let mut e = s;
    while e < le && !super::scan::is_ws(b[e]) {
        if b[e] == b':' && e > s {
            return Some((s, e, e + 1));
        }
        e += 1;
    }
    None
}

/// An affiliated keyword line (`#+NAME:`, `#+CAPTION[opt]:`, `#+ATTR_X:`, …): (key as
/// org-element names it, option, value).
fn affiliated<'a>(text: &'a str, start: usize, le: usize) -> Option<(String, Option<&'a str>, &'a str)> {
    let b = text.as_bytes();
    let p = skip_blank(b, start, le);
    if !(p + 2 < le && b[p] == b'#' && b[p + 1] == b'+') {
        return None;
    }
    let s = p + 2;
    let mut e = s;
    while e < le && (b[e].is_ascii_alphanumeric() || b[e] == b'_' || b[e] == b'-') {
        e += 1;
    }
    let key = text[s..e].to_ascii_uppercase();
    let dual = key == "CAPTION" || key == "RESULTS";
    let known = ["CAPTION", "DATA", "HEADER", "HEADERS", "LABEL", "NAME", "PLOT", "RESNAME", "RESULT", "RESULTS", "SOURCE", "SRCNAME", "TBLNAME"];
    let attr = key.len() > 5 && key.starts_with("ATTR_");
    if !(known.contains(&key.as_str()) || attr) {
        return None;
    }
    let mut option = None;
    let mut c = e;
    if dual && c < le && b[c] == b'[' {
        // `\[\(.*\)\]:` — greedy: the last `]:` on the line.
        let close = (c + 1..le).rev().find(|&k| b[k] == b']' && k + 1 < le && b[k + 1] == b':')?;
        option = Some(&text[c + 1..close]);
        c = close + 1;
    } else if !attr && key.contains('-') {
        return None;
    }
    if c >= le || b[c] != b':' {
        return None;
    }
    let key = match key.as_str() {
        "DATA" | "LABEL" | "RESNAME" | "SOURCE" | "SRCNAME" | "TBLNAME" => "NAME".to_string(),
        "RESULT" => "RESULTS".to_string(),
        "HEADERS" => "HEADER".to_string(),
        _ => key,
    };
    Some((key, option, super::scan::trim_org(&text[c + 1..le])))
}

/// Only the export wants the write-out; kept beside the tree so its shape is in one place.
pub fn write_json(tree: &Tree, out: &mut String) {
    use crate::json::push_str;
    let nodes = &tree.nodes;
    // Pre-order with an explicit stack of open nodes (and whether each has a child out
    // already): no recursion on deep trees.
    let mut open: Vec<(usize, bool)> = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        if i > 0 {
            while let Some(&(top, _)) = open.last() {
                if top == n.parent {
                    break;
                }
                out.push_str("]}");
                open.pop();
            }
            if let Some(top) = open.last_mut() {
                if top.1 {
                    out.push(',');
                }
                top.1 = true;
            }
        }
        out.push_str("{\"type\":");
        push_str(out, n.kind);
        if i > 0 {
            push_num(out, "begin", tree.orig(n.begin));
            push_num(out, "end", tree.orig(n.end));
        } else {
            // org-data spans the whole input, BOM and line ends included.
            push_num(out, "begin", 0);
            push_num(out, "end", tree.orig(n.end));
        }
        if n.cbegin != NONE {
            push_num(out, "contents_begin", tree.orig(n.cbegin));
            push_num(out, "contents_end", tree.orig(n.cend));
        }
        if n.post_affiliated != n.begin {
            push_num(out, "post_affiliated", tree.orig(n.post_affiliated));
        }
        for (k, v) in &n.fields {
            out.push_str(",\"");
            out.push_str(k);
            out.push_str("\":");
            match v {
                Val::Str(s) => push_str(out, s),
                Val::Num(x) => {
                    let x = if k.ends_with("_begin") || k.ends_with("_end") { tree.orig(*x) } else { *x };
                    push_usize(out, x)
                }
                Val::Bool(x) => out.push_str(if *x { "true" } else { "false" }),
                Val::Null => out.push_str("null"),
                Val::List(xs) => {
                    out.push('[');
                    for (j, x) in xs.iter().enumerate() {
                        if j > 0 {
                            out.push(',');
                        }
                        push_str(out, x);
                    }
                    out.push(']');
                }
                Val::Ts(t) => match t {
                    Some(t) => t.write_json(out),
                    None => out.push_str("null"),
                },
                Val::Affiliated(xs) => {
                    out.push('[');
                    for (j, (key, opt, val)) in xs.iter().enumerate() {
                        if j > 0 {
                            out.push(',');
                        }
                        out.push_str("{\"key\":");
                        push_str(out, key);
                        out.push_str(",\"option\":");
                        crate::json::push_opt_str(out, *opt);
                        out.push_str(",\"value\":");
                        push_str(out, val);
                        out.push('}');
                    }
                    out.push(']');
                }
            }
        }
        out.push_str(",\"children\":[");
        open.push((i, false));
    }
    while open.pop().is_some() {
        out.push_str("]}");
    }
}

fn push_num(out: &mut String, key: &str, v: usize) {
    out.push_str(",\"");
    out.push_str(key);
    out.push_str("\":");
    push_usize(out, v);
}


/// The `parse` export: the element tree as JSON.
pub fn parse_json(org: &str) -> String {
    let src = Source::new(org);
    let tree = build(&src);
    let mut out = String::with_capacity(64 + tree.nodes.len() * 96);
    write_json(&tree, &mut out);
    out
}


#[cfg(test)]
mod tests {
    use super::*;

    /// (type, begin, end) of every node in pre-order, with its depth, offsets into the input.
    fn shape(org: &str) -> Vec<(usize, &'static str, usize, usize)> {
        let src = Source::new(org);
        let t = build(&src);
        let mut depth = vec![0usize; t.nodes.len()];
        let mut out = Vec::new();
        for (i, n) in t.nodes.iter().enumerate().skip(1) {
            depth[i] = depth[n.parent] + 1;
            out.push((depth[i], n.kind, t.orig(n.begin), t.orig(n.end)));
        }
        out
    }

    fn kinds(org: &str) -> Vec<(usize, &'static str)> {
        shape(org).into_iter().map(|(d, k, _, _)| (d, k)).collect()
    }

    fn with_tree<F: FnOnce(&Tree)>(org: &str, f: F) {
        let src = Source::new(org);
        let t = build(&src);
        f(&t)
    }

    #[test]
    fn a_headline_line_ends_an_open_block() {
        // Emacs: two headlines, the example lines become paragraph text
        let doc = "* Outer\n#+BEGIN_EXAMPLE\n* Inner :tag:\ntext\n#+END_EXAMPLE\n";
        assert_eq!(
            shape(doc),
            vec![(1, "headline", 0, 24), (2, "section", 8, 24), (3, "paragraph", 8, 24), (1, "headline", 24, 57), (2, "section", 38, 57), (3, "paragraph", 38, 57)]
        );
        with_tree(doc, |t| {
            let h: Vec<_> = t.nodes.iter().filter(|n| n.kind == "headline").collect();
            assert_eq!(h[1].str("title"), Some("Inner"));
            assert!(matches!(h[1].get("tags"), Some(Val::List(v)) if v == &vec!["tag"]));
        });
        // the same for a quote block (a greater element) and a src block
        for (open, close) in [("#+begin_quote", "#+end_quote"), ("#+begin_src sh", "#+end_src")] {
            let doc = format!("{}\n* H\n{}\n", open, close);
            assert_eq!(kinds(&doc), vec![(1, "section"), (2, "paragraph"), (1, "headline"), (2, "section"), (3, "paragraph")]);
        }
        // closed inside the section: a block
        assert_eq!(kinds("#+begin_src sh\n* x\n#+end_src\n#+begin_src sh\nx\n#+end_src\n")[3..], [(2, "section"), (3, "paragraph"), (3, "src-block")]);
    }

    #[test]
    fn affiliated_keywords_attach_to_the_next_element() {
        let doc = "#+NAME: t1\n#+CAPTION[short]: Long\n#+ATTR_HTML: :alt x\n#+attr_html: :style y\n| a |\n\n#+NAME: orphan\n\n#+TBLNAME: n2\n#+begin_src sh :results output\necho\n#+end_src\n";
        with_tree(doc, |t| {
            let tbl = t.nodes.iter().find(|n| n.kind == "table").unwrap();
            assert_eq!((tbl.begin, tbl.post_affiliated), (0, 76));
            match tbl.get("affiliated") {
                Some(Val::Affiliated(a)) => {
                    let keys: Vec<_> = a.iter().map(|(k, o, v)| (k.as_str(), *o, *v)).collect();
                    assert_eq!(keys, vec![("NAME", None, "t1"), ("CAPTION", Some("short"), "Long"), ("ATTR_HTML", None, ":alt x"), ("ATTR_HTML", None, ":style y")]);
                }
                other => panic!("{:?}", other),
            }
            // followed by a blank line: a plain keyword
            let kw = t.nodes.iter().find(|n| n.kind == "keyword").unwrap();
            assert_eq!((kw.str("key"), kw.str("value")), (Some("NAME"), Some("orphan")));
            // TBLNAME is Org's alias of NAME; the src block keeps language and parameters
            let src = t.nodes.iter().find(|n| n.kind == "src-block").unwrap();
            assert!(matches!(src.get("affiliated"), Some(Val::Affiliated(a)) if a[0].0 == "NAME" && a[0].2 == "n2"));
            assert_eq!((src.str("language"), src.str("parameters")), (Some("sh"), Some(":results output")));
        });
        // clocks and comments do not take affiliated keywords: Org reads a paragraph
        assert_eq!(kinds("#+NAME: n\n# c\n"), vec![(1, "section"), (2, "paragraph")]);
    }

    #[test]
    fn list_items_follow_org_9_5() {
        // text on the bullet line is a paragraph, whatever it looks like
        for first in ["\\begin{equation}", "#+begin_example", "| a | b |", ": fixed", "#+TITLE: x", "-----"] {
            let doc = format!("- {}\n  more\n", first);
            assert_eq!(kinds(&doc), vec![(1, "section"), (2, "plain-list"), (3, "item"), (4, "paragraph")], "{}", first);
        }
        // an element starts on a later line
        assert_eq!(kinds("- a\n  | t |\n")[3..], [(4, "paragraph"), (4, "table"), (5, "table-row")]);
        // nesting by indentation; a less indented text line ends the list; two blank lines too
        let doc = "- a\n  - b\n\n  - c\n    text\n  back in a\n- d\n\n\n- e\ntext\n";
        assert_eq!(
            kinds(doc),
            vec![
                (1, "section"),
                (2, "plain-list"),
                (3, "item"),
                (4, "paragraph"),
                (4, "plain-list"),
                (5, "item"),
                (6, "paragraph"),
                (5, "item"),
                (6, "paragraph"),
                (4, "paragraph"),
                (3, "item"),
                (4, "paragraph"),
                (2, "plain-list"),
                (3, "item"),
                (4, "paragraph"),
                (2, "paragraph"),
            ]
        );
        // an item ended by a text line is nobody's previous sibling: the next item starts a list
        let doc = "- parent\n  - a\n  text in parent\n  - b\n";
        assert_eq!(kinds(doc).iter().filter(|k| k.1 == "plain-list").count(), 3);
        // siblings share their indentation: otherwise a new list starts
        assert_eq!(kinds("   - deep\n - shallow\n").iter().filter(|k| k.1 == "plain-list").count(), 2);
        // bullets, counters, checkboxes, tags (tags only after unordered bullets)
        with_tree("- [@3] [X] term :: def\n\n\n1. [ ] a :: b\n", |t| {
            let items: Vec<_> = t.nodes.iter().filter(|n| n.kind == "item").collect();
            assert_eq!((items[0].str("counter"), items[0].str("checkbox"), items[0].str("tag")), (Some("3"), Some("on"), Some("term")));
            assert_eq!((items[1].str("bullet"), items[1].str("checkbox"), items[1].str("tag")), (Some("1. "), Some("off"), None));
            let lists: Vec<_> = t.nodes.iter().filter(|n| n.kind == "plain-list").map(|n| n.str("list_type")).collect();
            assert_eq!(lists, vec![Some("descriptive"), Some("ordered")]);
        });
        // a block inside an item is skipped whole when the list's extent is found
        assert_eq!(kinds("- a\n  #+begin_example\nnot the end\n  #+end_example\n  still a\n")[3..], [(4, "paragraph"), (4, "example-block"), (4, "paragraph")]);
    }

    #[test]
    fn drawers_and_property_drawers() {
        let doc = "* H\nDEADLINE: <2024-01-02 Tue>\n:PROPERTIES:\n:ID: x\n:Empty:\n:END:\n:LOGBOOK:\nCLOCK: [2024-01-01 Mon 10:00]--[2024-01-01 Mon 11:00] =>  1:00\n:END:\n:NOEND:\ntext\n";
        assert_eq!(
            kinds(doc),
            vec![(1, "headline"), (2, "section"), (3, "planning"), (3, "property-drawer"), (4, "node-property"), (4, "node-property"), (3, "drawer"), (4, "clock"), (3, "paragraph")]
        );
        with_tree(doc, |t| {
            let props: Vec<_> = t.nodes.iter().filter(|n| n.kind == "node-property").map(|n| (n.str("key"), n.str("value"))).collect();
            assert_eq!(props, vec![(Some("ID"), Some("x")), (Some("Empty"), Some(""))]);
            let d = t.nodes.iter().find(|n| n.kind == "drawer").unwrap();
            assert_eq!(d.str("name"), Some("LOGBOOK"));
            let c = t.nodes.iter().find(|n| n.kind == "clock").unwrap();
            assert_eq!(c.str("duration"), Some("1:00"));
        });
        // a property drawer away from the headline is an ordinary drawer
        assert_eq!(kinds("* H\ntext\n:PROPERTIES:\n:A: 1\n:END:\n")[3..], [(3, "drawer"), (4, "paragraph")]);
        // a blank first line of a drawer is a paragraph of its own (Org 9.5)
        assert_eq!(kinds(":NOTES:\n\ntext\n:END:\n"), vec![(1, "section"), (2, "drawer"), (3, "paragraph"), (3, "paragraph")]);
    }

    #[test]
    fn line_endings_and_bom_like_emacs() {
        let lf = "#+TITLE: x\n\n* h :t:\nbody\n- i\n";
        let dos = lf.replace('\n', "\r\n");
        let bom = format!("\u{feff}{}", dos);
        let mac = lf.replace('\n', "\r");
        let base = shape(lf);
        assert_eq!(kinds(&dos), kinds(lf));
        assert_eq!(kinds(&bom), kinds(lf));
        assert_eq!(kinds(&mac), kinds(lf));
        // offsets point into the input as given: each line end is one byte longer in DOS
        let in_dos = |p: usize| p + lf[..p].matches('\n').count();
        for ((_, k, b1, e1), (_, _, b2, e2)) in base.iter().zip(shape(&dos).iter()) {
            assert_eq!((*b2, *e2), (in_dos(*b1), in_dos(*e1)), "{}", k);
        }
        for ((_, _, b1, e1), (_, _, b2, e2)) in shape(&dos).iter().zip(shape(&bom).iter()) {
            assert_eq!((b1 + 3, e1 + 3), (*b2, *e2));
        }
        // a stray CR in a Unix file stays text: no tags on `* a :t:\r`
        with_tree("* a :t:\r\n* b\n", |t| {
            assert!(matches!(t.nodes[1].get("tags"), Some(Val::List(v)) if v.is_empty()));
        });
    }

    #[test]
    fn a_last_child_headline_ends_at_its_parents_contents_end() {
        // Org parses a child within its parent's contents (trailing blank lines excluded),
        // while the child's section still runs to the next headline
        let doc = "* a\n** b\ntext\n\n* c\n";
        assert_eq!(shape(doc)[..4], [(1, "headline", 0, 15), (2, "headline", 4, 14), (3, "section", 9, 15), (4, "paragraph", 9, 14)]);
    }

    #[test]
    fn headline_fields_like_org_element() {
        with_tree("* COMMENT TODO x\n** TODO [#B] COMMENT y :ARCHIVE:a::\n* [#A]pri\n", |t| {
            let h: Vec<_> = t.nodes.iter().filter(|n| n.kind == "headline").collect();
            assert!(matches!(h[0].get("commented"), Some(Val::Bool(true))));
            assert_eq!(h[0].str("todo"), None);
            assert_eq!((h[1].str("todo"), h[1].str("priority"), h[1].str("title")), (Some("TODO"), Some("B"), Some("y")));
            assert!(matches!(h[1].get("archived"), Some(Val::Bool(true))));
            assert!(matches!(h[1].get("tags"), Some(Val::List(v)) if v == &vec!["ARCHIVE", "a", ""]));
            assert_eq!(h[1].parent, 1);
            assert_eq!(h[2].str("priority"), Some("A"));
            assert_eq!(h[2].str("title"), Some("pri"));
        });
    }

    #[test]
    fn spans_nest_on_random_documents() {
        // children inside their parent, in order, without overlap; the text is covered
        const LINES: &[&str] = &["* H", "** TODO s :t:", "text", "", "- i", "  - j", "1. k", "#+begin_quote", "#+end_quote", "#+BEGIN_SRC sh", "#+END_SRC", ":D:", ":END:", "#+NAME: n", "| a |", "|--|", ": f", "# c", "[fn:1] x", "\\begin{e}", "\\end{e}", "#+BEGIN: d", "#+END:", "   cont", "-----", "CLOCK: [x]", "+--+", "|x |"];
        let mut seed = 42u64;
        for _ in 0..3000 {
            let mut doc = String::new();
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            for _ in 0..(seed >> 59) + 1 {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                doc.push_str(LINES[(seed >> 33) as usize % LINES.len()]);
                doc.push(if seed & 3 == 0 { '\r' } else { '\n' });
            }
            let src = Source::new(&doc);
            let t = build(&src);
            for (i, n) in t.nodes.iter().enumerate().skip(1) {
                let p = &t.nodes[n.parent];
                assert!(n.begin <= n.end && p.begin <= n.begin, "{:?} {}", doc, n.kind);
                // (as in Org: a nested list may run over its item's trailing blank lines, and a
                // section runs to the next headline even when its headline stops earlier)
                if p.cbegin != NONE && p.kind != "plain-list" && p.kind != "item" && !(p.kind == "headline" && n.kind == "section") {
                    assert!(p.cbegin <= n.begin && n.end <= p.end, "{:?}: {} in {}", doc, n.kind, p.kind);
                }
                if n.after < t.nodes.len() && t.nodes[n.after].parent == n.parent {
                    assert!(n.end <= t.nodes[n.after].begin, "{:?}: {} then {}", doc, n.kind, t.nodes[n.after].kind);
                }
                assert!(i < n.after);
            }
            let mut out = String::new();
            write_json(&t, &mut out);
            assert!(crate::json::parse(&out).is_ok(), "{:?}", doc);
        }
    }

    #[test]
    fn hostile_inputs_stay_linear() {
        let n = 20_000;
        let docs = [
            "#+begin_src js :in x\n".repeat(n),
            ":DRAWER:\n".repeat(n),
            "\\begin{x}\n".repeat(n),
            "[fn:1] x\n".repeat(n),
            "#+NAME: x\n".repeat(n),
            "- a\n".repeat(n),
            (0..3000).map(|i| format!("{}- item\n", " ".repeat(i))).collect::<String>(),
            (0..3000).map(|i| format!("{}- item\n{}#+begin_example\n", " ".repeat(i), " ".repeat(i + 2))).collect::<String>(),
            (1..=2000).map(|i| format!("{} h\n", "*".repeat(i))).collect::<String>(),
        ];
        for d in &docs {
            let t0 = std::time::Instant::now();
            let out = parse_json(d);
            assert!(out.starts_with("{\"type\":\"org-data\""));
            assert!(t0.elapsed().as_secs_f64() < 2.0, "{:?}", &d[..40]);
        }
    }
}
