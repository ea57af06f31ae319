//! render: Org to an HTML fragment that reads like Emacs's own HTML export (ox-html), with
//! escaping and URL neutralising everywhere, a table of contents and footnotes on request,
//! and optional metadata (`{"metadata": true}` → `{"html": ..., "meta": {...}}`).
//! See README.md in this directory for options, defaults and conventions.

pub mod blocks;
pub mod emit;
pub mod entities;
pub mod highlight;
pub mod inline;
pub mod links;
pub mod options;
pub mod rawhtml;
pub mod timestamp;
pub mod util;

use blocks::{keyword, Line, Parser};
use options::Options;
use std::collections::{HashMap as StdHashMap, HashSet as StdHashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// FNV-1a: the maps here hold short strings from the document; SipHash's DoS resistance is
/// not needed (inputs are bounded per call) and costs a third of the time on headline-heavy documents.
#[derive(Default)]
pub struct Fnv(u64);
impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 { 0xcbf29ce484222325 } else { self.0 };
        for &b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
        self.0 = h;
    }
}
pub type HashMap<K, V> = StdHashMap<K, V, BuildHasherDefault<Fnv>>;
pub type HashSet<K> = StdHashSet<K, BuildHasherDefault<Fnv>>;
use util::{esc, esc_text, push_class_name, slug, starts_with_ci};

pub struct Head {
    pub level: usize,
    pub todo: Option<(String, bool)>,
    pub priority: Option<char>,
    pub title: String,
    pub alt_title: Option<String>,
    pub tags: Vec<String>,
    pub id: String,
    pub number: Option<Vec<usize>>,
    pub notoc: bool,
    pub excluded: bool,
    pub archived: bool,
    /// Org would give it a section: a non-blank line between it and the next headline
    /// (planning and property drawer included), unless it is archived (contents not exported).
    pub has_section: bool,
    /// Its id is its CUSTOM_ID (ox-html then uses it for `text-…` too).
    pub custom_id: bool,
    /// Line range of the body (after planning and the property drawer).
    pub body: (usize, usize),
    pub planning: Option<(usize, usize)>,
}

pub enum MacroOut {
    Text(String),
    Code(String),
    Nothing,
}

pub struct FnEntry {
    pub label: Option<String>,
    pub inline_def: Option<String>,
    pub refs: usize,
    /// 0 for references in the body, n+1 for references inside footnote n's definition.
    pub depth: usize,
}

/// Footnotes inside footnote definitions nest at most this deep (each level copies its text).
pub const MAX_FOOTNOTE_DEPTH: usize = 8;

#[derive(Default)]
pub struct Meta {
    pub title: Option<String>,
    pub subtitle: Option<String>,
    pub author: Option<String>,
    pub date: Option<String>,
    pub email: Option<String>,
    pub description: Option<String>,
    pub language: Option<String>,
    pub keywords: Option<String>,
}

/// Everything inline rendering needs to know about the document.
pub struct Ctx {
    pub o: Options,
    pub heads: Vec<Head>,
    pub custom_ids: HashMap<String, usize>,
    pub id_props: HashMap<String, usize>,
    /// Headline titles for `[[*Title]]` / fuzzy links: built on the first such link.
    titles: Option<HashMap<String, usize>>,
    pub targets: HashMap<String, String>,
    /// The headline each target sits under (a link to a target shows that headline's number).
    pub target_heads: HashMap<String, usize>,
    pub names: HashMap<String, String>,
    pub radios: Vec<(String, String)>,
    /// Radio targets by their first word (lowercase), longest first: a text word is checked
    /// only against the radios that start with it.
    pub radio_index: HashMap<String, Vec<usize>>,
    /// First bytes of the keys of `radio_index`: most words are rejected without a lookup.
    pub radio_first: [bool; 256],
    /// Bytes where the inline loop must stop when radio targets exist (see `inline::radio_start_table`).
    pub radio_starts: [bool; 256],
    pub macros: HashMap<String, String>,
    pub keywords: HashMap<String, String>,
    pub meta: Meta,
    pub fn_labels: HashMap<String, usize>,
    pub fns: Vec<FnEntry>,
    pub macro_depth: usize,
    pub macro_budget: usize,
    /// `#+LINK:` abbreviations (name, replacement) in buffer order, and the bytes that
    /// expanding them may still add (a long replacement used by every link is an attack).
    pub link_abbrevs: HashMap<String, links::Abbrev>,
    pub link_abbrev_budget: usize,
    pub macro_counter: HashMap<String, i64>,
    pub raw_used: bool,
    /// The author's open HTML elements (`rawhtml`): balanced per Org container.
    pub author: rawhtml::AuthorHtml,
    /// `raw_html` and the document (or its macros) has `@@`: inline runs are author-HTML containers.
    pub inline_raw: bool,
    /// Depth of the footnote definition being rendered (0 = document body).
    pub fn_depth: usize,
    /// `#+TOC:` keywords honoured so far (each lists every headline: capped).
    pub tocs: usize,
    /// Rendered link labels of headlines (a title is rendered once however often it is linked).
    label_cache: HashMap<usize, String>,
    /// Bodies of "* Footnotes" sections: parsed only for their definitions.
    pub footnote_sections: Vec<(usize, usize)>,
    pub table_count: usize,
    pub figure_count: usize,
    pub listing_count: usize,
    used_ids: HashSet<String>,
    id_next: HashMap<String, usize>,
}

/// Normalise a title / link search string: whitespace runs folded to one space.
pub fn norm_title(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Title text without link syntax, for slugs.
fn title_plain(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(p) = rest.find("[[") {
        out.push_str(&rest[..p]);
        let r = &rest[p + 2..];
        match r.find("]]") {
            Some(e) => {
                let inner = &r[..e];
                match inner.find("][") {
                    Some(m) => out.push_str(&inner[m + 2..]),
                    None => out.push_str(inner),
                }
                rest = &r[e + 2..];
            }
            None => {
                rest = r;
            }
        }
    }
    out.push_str(rest);
    out
}

impl Ctx {
    fn new(o: Options) -> Ctx {
        let radio_starts = inline::radio_start_table(&o, &[false; 256]);
        Ctx {
            o,
            heads: Vec::new(),
            custom_ids: HashMap::default(),
            id_props: HashMap::default(),
            titles: None,
            targets: HashMap::default(),
            target_heads: HashMap::default(),
            names: HashMap::default(),
            radios: Vec::new(),
            radio_index: HashMap::default(),
            radio_first: [false; 256],
            radio_starts,
            macros: HashMap::default(),
            keywords: HashMap::default(),
            meta: Meta::default(),
            fn_labels: HashMap::default(),
            fns: Vec::new(),
            macro_depth: 0,
            macro_budget: 0,
            link_abbrevs: HashMap::default(),
            link_abbrev_budget: 0,
            macro_counter: HashMap::default(),
            raw_used: false,
            author: rawhtml::AuthorHtml::default(),
            inline_raw: false,
            fn_depth: 0,
            tocs: 0,
            label_cache: HashMap::default(),
            footnote_sections: Vec::new(),
            table_count: 0,
            figure_count: 0,
            listing_count: 0,
            used_ids: HashSet::default(),
            id_next: HashMap::default(),
        }
    }

    /// The headline whose title is `key` (normalised), if any exported one has it.
    pub fn title_lookup(&mut self, key: &str) -> Option<usize> {
        if self.titles.is_none() {
            let mut m: HashMap<String, usize> = HashMap::default();
            for (h, hd) in self.heads.iter().enumerate() {
                if !hd.excluded {
                    m.entry(norm_title(&hd.title)).or_insert(h);
                }
            }
            self.titles = Some(m);
        }
        self.titles.as_ref().and_then(|m| m.get(key).copied())
    }

    /// A unique id derived from `base`.
    pub fn unique_id(&mut self, base: &str) -> String {
        if !self.used_ids.contains(base) {
            let id = base.to_string();
            self.used_ids.insert(id.clone());
            return id;
        }
        // Remember the next free suffix per base, so thousands of equal titles stay linear.
        let mut n = self.id_next.get(base).copied().unwrap_or(2);
        let mut id;
        loop {
            id = format!("{}-{}", base, n);
            n += 1;
            if !self.used_ids.contains(&id) {
                break;
            }
        }
        match self.id_next.get_mut(base) {
            Some(v) => *v = n,
            None => {
                self.id_next.insert(base.to_string(), n);
            }
        }
        self.used_ids.insert(id.clone());
        id
    }

    pub fn target_id(&mut self, text: &str) -> String {
        let key = norm_title(text);
        if let Some(id) = self.targets.get(&key) {
            return id.clone();
        }
        let id = self.unique_id(&format!("target-{}", slug(text)));
        self.targets.insert(key, id.clone());
        id
    }

    /// The text of a link to headline `h` with no description: its number, else its title.
    pub fn headline_label(&mut self, h: usize) -> String {
        if let Some(n) = &self.heads[h].number {
            return n.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(".");
        }
        if let Some(l) = self.label_cache.get(&h) {
            return l.clone();
        }
        let title = self.heads[h].title.clone();
        let mut s = String::new();
        inline::render_inline_plain(self, &title, &mut s);
        if s.len() > 512 {
            // Every link repeats its label: a huge title is shortened so links cannot multiply it.
            s.clear();
            let cut = util::floor_char(&title, 80);
            esc_text(&mut s, &title[..cut]);
            s.push('…');
        }
        self.label_cache.insert(h, s.clone());
        s
    }

    /// Number for a footnote reference, and which reference to it this is (1 = first).
    pub fn footnote_number(&mut self, label: &str, def: Option<String>) -> (usize, usize) {
        if label.is_empty() {
            self.fns.push(FnEntry { label: None, inline_def: def, refs: 1, depth: self.fn_depth });
            return (self.fns.len(), 1);
        }
        if let Some(&n) = self.fn_labels.get(label) {
            let e = &mut self.fns[n - 1];
            e.refs += 1;
            if e.inline_def.is_none() && def.is_some() {
                e.inline_def = def;
            }
            return (n, e.refs);
        }
        self.fns.push(FnEntry { label: Some(label.to_string()), inline_def: def, refs: 1, depth: self.fn_depth });
        let n = self.fns.len();
        self.fn_labels.insert(label.to_string(), n);
        (n, 1)
    }

    /// Org expands macros in the text before parsing it: do the same for one paragraph or
    /// title. Expansions are re-expanded (depth-capped) and share a size budget, so macro
    /// bombs stay bounded. None when nothing was expanded.
    pub fn expand_macros_text(&mut self, text: &str) -> Option<String> {
        let mut cur = text.to_string();
        let mut changed = false;
        for _round in 0..6 {
            if !cur.contains("{{{") {
                break;
            }
            let mut out = String::with_capacity(cur.len());
            let b = cur.as_bytes();
            let mut i = 0;
            let mut any = false;
            let mut close_at: Option<usize> = None;
            let mut verb_close: [Option<Option<usize>>; 2] = [None, None];
            while i < b.len() {
                if (b[i] == b'=' || b[i] == b'~') && verbatim_opener(b, i) {
                    // Macros inside =verbatim= and ~code~ are text: copy the object whole.
                    let close = next_verbatim_closer(&mut verb_close, b, i);
                    if let Some(c) = close {
                        let nl = b[i..c].iter().filter(|&&x| x == b'\n').count();
                        if nl <= 1 {
                            out.push_str(&cur[i..=c]);
                            i = c + 1;
                            continue;
                        }
                    }
                }
                if b[i] == b'{' && b[i..].starts_with(b"{{{") {
                    if close_at.map_or(true, |c| c < i + 3) {
                        close_at = cur[i + 3..].find("}}}").map(|p| p + i + 3);
                    }
                    if let Some(c) = close_at {
                        let inner = &cur[i + 3..c];
                        if let Some(exp) = self.macro_call_text(inner) {
                            out.push_str(&exp);
                            any = true;
                            i = c + 3;
                            continue;
                        }
                    } else {
                        out.push_str(&cur[i..]);
                        break;
                    }
                }
                // Copy up to the next byte that can open a macro or a verbatim object (ASCII,
                // so always a character boundary) in one go.
                let mut e = i + 1;
                while e < b.len() && !matches!(b[e], b'=' | b'~' | b'{') {
                    e += 1;
                }
                out.push_str(&cur[i..e]);
                i = e;
            }
            if !any {
                break;
            }
            changed = true;
            cur = out;
        }
        if changed {
            Some(cur)
        } else {
            None
        }
    }

    fn macro_call_text(&mut self, inner: &str) -> Option<String> {
        let (name, args) = inline::parse_macro_call(inner)?;
        match self.expand_macro(name, &args) {
            MacroOut::Text(t) => Some(t),
            MacroOut::Code(t) => {
                let m = if t.contains('=') { '~' } else { '=' };
                let mut s = String::new();
                s.push(m);
                s.push_str(&t);
                s.push(m);
                if s.len() > self.macro_budget {
                    return Some(String::new());
                }
                self.macro_budget -= s.len();
                Some(s)
            }
            MacroOut::Nothing => Some(String::new()),
        }
    }

    pub fn expand_macro(&mut self, name: &str, args: &[String]) -> MacroOut {
        let lname = name.to_ascii_lowercase();
        let arg = |k: usize| args.get(k).cloned().unwrap_or_default();
        let text = match lname.as_str() {
            "title" => self.meta.title.clone(),
            "author" => self.meta.author.clone(),
            "email" => self.meta.email.clone(),
            "date" => self.meta.date.clone(),
            "subtitle" => self.meta.subtitle.clone(),
            "keyword" => self.keywords.get(&arg(0).to_ascii_uppercase()).cloned(),
            "n" => {
                let key = arg(0);
                let action = arg(1);
                let c = self.macro_counter.entry(key).or_insert(0);
                if action == "-" {
                } else if let Ok(v) = action.parse::<i64>() {
                    *c = v;
                } else {
                    *c += 1;
                }
                Some(c.to_string())
            }
            "time" | "modification-time" | "input-file" | "property" | "results" => None,
            _ => match self.macros.get(&lname) {
                Some(t) => {
                    let t = t.clone();
                    if t.trim_start().starts_with("(eval") {
                        // Lisp never runs here: show the arguments as code.
                        if args.iter().all(|a| a.is_empty()) {
                            return MacroOut::Nothing;
                        }
                        return MacroOut::Code(args.join(", "));
                    }
                    let mut out = String::new();
                    let b = t.as_bytes();
                    let mut k = 0;
                    while k < b.len() {
                        if b[k] == b'$' && k + 1 < b.len() && b[k + 1].is_ascii_digit() && b[k + 1] != b'0' {
                            out.push_str(&arg((b[k + 1] - b'1') as usize));
                            k += 2;
                        } else {
                            let ch_end = util::floor_char(&t, k + 1).max(k + 1);
                            let mut e = k + 1;
                            while e < b.len() && !t.is_char_boundary(e) {
                                e += 1;
                            }
                            let _ = ch_end;
                            out.push_str(&t[k..e]);
                            k = e;
                        }
                    }
                    Some(out)
                }
                None => return MacroOut::Nothing,
            },
        };
        match text {
            Some(t) => {
                if t.len() > self.macro_budget {
                    return MacroOut::Nothing;
                }
                self.macro_budget -= t.len();
                MacroOut::Text(t)
            }
            None => MacroOut::Nothing,
        }
    }
}

fn is_ws_byte(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r')
}

/// A `=`/`~` at `i` that may open verbatim text (Org's pre and border rules).
fn verbatim_opener(b: &[u8], i: usize) -> bool {
    let pre_ok = i == 0 || is_ws_byte(b[i - 1]) || matches!(b[i - 1], b'-' | b'(' | b'\'' | b'"' | b'{');
    pre_ok && i + 1 < b.len() && !is_ws_byte(b[i + 1])
}

fn find_verbatim_closer(b: &[u8], c: u8, from: usize) -> Option<usize> {
    let mut k = from;
    while k < b.len() {
        if b[k] == c
            && !is_ws_byte(b[k - 1])
            && (k + 1 == b.len() || is_ws_byte(b[k + 1]) || matches!(b[k + 1], b'-' | b'.' | b',' | b':' | b'!' | b'?' | b';' | b'\'' | b'"' | b')' | b'}' | b'[' | b'\\'))
        {
            return Some(k);
        }
        k += 1;
    }
    None
}

/// The closer of the verbatim object opened at `i`, memoised per marker (`=`, `~`) in `memo`:
/// callers scan forward only, so a closer found once answers every opener before it, and a
/// marker with no closer left never has one further on.
fn next_verbatim_closer(memo: &mut [Option<Option<usize>>; 2], b: &[u8], i: usize) -> Option<usize> {
    let w = (b[i] == b'~') as usize;
    match memo[w] {
        Some(Some(c)) if c >= i + 2 => Some(c),
        Some(None) => None,
        _ => {
            let c = find_verbatim_closer(b, b[i], i + 2);
            memo[w] = Some(c);
            c
        }
    }
}

fn headline_stars(line: &str) -> Option<usize> {
    let b = line.as_bytes();
    let mut k = 0;
    while k < b.len() && b[k] == b'*' {
        k += 1;
    }
    if k > 0 && k < b.len() && b[k] == b' ' {
        Some(k)
    } else {
        None
    }
}

struct TodoKw {
    todo: Vec<String>,
    done: Vec<String>,
}

fn parse_todo_line(v: &str, kw: &mut TodoKw, first: &mut bool) {
    if *first {
        kw.todo.clear();
        kw.done.clear();
        *first = false;
    }
    let words: Vec<String> = v.split_whitespace().map(|w| w.split('(').next().unwrap_or("").to_string()).collect();
    if let Some(bar) = words.iter().position(|w| w == "|") {
        kw.todo.extend(words[..bar].iter().filter(|w| !w.is_empty()).cloned());
        kw.done.extend(words[bar + 1..].iter().filter(|w| !w.is_empty()).cloned());
    } else if let Some((last, rest)) = words.split_last() {
        kw.todo.extend(rest.iter().filter(|w| !w.is_empty()).cloned());
        if !last.is_empty() {
            kw.done.push(last.clone());
        }
    }
}

/// Render `org` to HTML with `options_json` (may be empty). See README.md.
pub fn render_html(org_in: &str, options_json: &str) -> String {
    // Line endings (CRLF, CR-only) and a leading BOM as Emacs reads them: the org module's rules,
    // the ones parse_headlines and parse apply.
    let normalized = crate::org::scan::normalize_eol(org_in);
    let org: &str = normalized.strip_prefix('\u{feff}').unwrap_or(&normalized);
    let mut opts = Options::default();
    let call = if options_json.trim().is_empty() { None } else { crate::json::parse(options_json).ok() };
    let lines = split_lines(org);
    let nlines = lines.len();
    let mut parser = Parser::new(&lines, opts.max_depth);

    // Pass 1: document keywords (outside blocks).
    let mut kw = TodoKw { todo: vec!["TODO".into()], done: vec!["DONE".into()] };
    let mut first_todo = true;
    let mut meta = Meta::default();
    let mut keywords: HashMap<String, String> = HashMap::default();
    let mut macros: HashMap<String, String> = HashMap::default();
    let mut link_abbrevs: HashMap<String, links::Abbrev> = HashMap::default();
    let mut exclude: Vec<String> = Vec::new();
    let mut select: Vec<String> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    let mut head_lines: Vec<(usize, usize)> = Vec::new();
    // The buffer is split on headlines first, as org-element does: every `^\*+ ` line is a
    // headline, whatever block is open above it, so no block ever spans one.
    for (li, l) in lines.iter().enumerate() {
        if let Some(k) = headline_stars(l) {
            head_lines.push((li, k));
        }
    }
    let mut next_head = 0; // index in head_lines of the first headline after line i
    let mut i = 0;
    while i < nlines {
        while next_head < head_lines.len() && head_lines[next_head].0 <= i {
            next_head += 1;
        }
        let l = lines[i];
        if head_lines.get(next_head.wrapping_sub(1)).map(|h| h.0) == Some(i) {
            i += 1;
            continue;
        }
        let t = l.trim_start();
        if t.starts_with("#+") {
            if starts_with_ci(t, "#+begin_") && is_lesser_block(t) {
                // Keywords inside src/example/export/comment/verse blocks are their text; inside
                // greater blocks (quote, center, special) they are keywords (as for `#+TODO:` in
                // kernel/src/org/outline.rs).
                let limit = head_lines.get(next_head).map(|h| h.0).unwrap_or(nlines);
                if let Some(e) = parser_block_end(&parser, t, i, limit) {
                    i = e + 1;
                    continue;
                }
            }
            if let Some((key, _, value)) = keyword(t) {
                let k = key.to_ascii_uppercase();
                let v = value.to_string();
                match k.as_str() {
                    "TITLE" => append_kw(&mut meta.title, &v),
                    "SUBTITLE" => append_kw(&mut meta.subtitle, &v),
                    "AUTHOR" => append_kw(&mut meta.author, &v),
                    "DATE" => meta.date = Some(v.clone()),
                    "EMAIL" => meta.email = Some(v.clone()),
                    "DESCRIPTION" => append_kw(&mut meta.description, &v),
                    "LANGUAGE" => meta.language = Some(v.clone()),
                    "KEYWORDS" => append_kw(&mut meta.keywords, &v),
                    "OPTIONS" => options::apply_org_options(&mut opts, &v),
                    "MACRO" => {
                        let vt = v.trim();
                        let e = vt.find(|c: char| c.is_whitespace()).unwrap_or(vt.len());
                        macros.insert(vt[..e].to_ascii_lowercase(), vt[e..].trim().to_string());
                    }
                    "LINK" => {
                        // `#+LINK: NAME REPLACEMENT` (Org: `\\`\\(\\S-+\\)[ \t]+\\(.+\\)`); the first one of a name wins.
                        let vt = v.trim();
                        if let Some(e) = vt.find(|c: char| c == ' ' || c == '\t') {
                            link_abbrevs.entry(vt[..e].to_string()).or_insert_with(|| links::Abbrev::new(vt[e..].trim_start()));
                        }
                    }
                    "TODO" | "SEQ_TODO" | "TYP_TODO" => parse_todo_line(&v, &mut kw, &mut first_todo),
                    "EXCLUDE_TAGS" => exclude.extend(v.split_whitespace().map(String::from)),
                    "SELECT_TAGS" => select.extend(v.split_whitespace().map(String::from)),
                    "NAME" => names.push(v.clone()),
                    _ => {}
                }
                keywords.insert(k, v);
            }
        }
        i += 1;
    }
    if !exclude.is_empty() {
        opts.exclude_tags = exclude;
    }
    opts.select_tags = select;
    if let Some(v) = &call {
        options::apply_json_options(&mut opts, v);
    }
    parser.src = Some(org);
    parser.fixed_width = opts.fixed_width;
    parser.tables = opts.tables;

    let mut cx = Ctx::new(opts);
    cx.meta = meta;
    cx.keywords = keywords;
    cx.macros = macros;
    for (k, v) in cx.o.macros.clone() {
        cx.macros.insert(k, v);
    }
    cx.macro_budget = (org.len() * 4).max(1 << 20);
    cx.link_abbrevs = link_abbrevs;
    cx.link_abbrev_budget = (org.len() * 4).max(1 << 20);
    // Inline containers track author HTML only if a snippet (`@@html:…@@`) can occur at all.
    cx.inline_raw = cx.o.raw_html && (org.contains("@@") || cx.macros.values().any(|v| v.contains("@@")));

    // Pass 2: headlines, their properties, exclusion and numbering.
    build_heads(&mut cx, &lines, &head_lines, &kw);

    // Targets, radio targets and names get ids before any link is rendered.
    collect_targets(&mut cx, &parser, &lines, org, &head_lines);
    for n in names {
        let key = norm_title(&n);
        if !cx.names.contains_key(&key) {
            let id = cx.unique_id(&slug(&n));
            cx.names.insert(key, id);
        }
    }

    let mut out = String::with_capacity(org.len() + org.len() / 2 + 4096);
    if cx.o.toc > 0 && cx.heads.iter().any(|h| !h.excluded && !h.notoc && h.level <= cx.o.toc.min(cx.o.h_level)) {
        let depth = cx.o.toc;
        emit_toc(&mut cx, depth, &mut out);
    }
    // Preamble.
    let pre_end = head_lines.first().map(|h| h.0).unwrap_or(nlines);
    let all: Vec<Line> = lines.iter().enumerate().map(|(k, t)| Line::new(t, k)).collect();
    let els = parser.parse(&all[..pre_end], 0, true);
    emit::emit_all(&mut cx, &els, &mut out, emit::Ctxt::default());
    drop(els);
    emit_headlines(&mut cx, &mut parser, &all, &mut out);
    for (a, z) in cx.footnote_sections.clone() {
        let _ = parser.parse(&all[a..z], 0, true);
    }
    emit_footnotes(&mut cx, &mut parser, &mut out);

    if cx.o.metadata {
        let mut j = String::with_capacity(out.len() + 256);
        j.push_str("{\"html\":");
        crate::json::push_str(&mut j, &out);
        j.push_str(",\"meta\":{");
        let m = &cx.meta;
        let fields: [(&str, &Option<String>); 8] = [
            ("title", &m.title),
            ("subtitle", &m.subtitle),
            ("author", &m.author),
            ("date", &m.date),
            ("email", &m.email),
            ("description", &m.description),
            ("language", &m.language),
            ("keywords", &m.keywords),
        ];
        for (k, (name, v)) in fields.iter().enumerate() {
            if k > 0 {
                j.push(',');
            }
            crate::json::push_str(&mut j, name);
            j.push(':');
            crate::json::push_opt_str(&mut j, v.as_deref());
        }
        j.push_str("},\"title_html\":");
        let title = cx.meta.title.clone().unwrap_or_default();
        let mut th = String::new();
        inline::render_inline_plain(&mut cx, &title, &mut th);
        crate::json::push_str(&mut j, &th);
        j.push_str(",\"raw_html\":");
        j.push_str(if cx.raw_used { "true" } else { "false" });
        j.push('}');
        return j;
    }
    out
}

/// The document's lines (as `split('\n')`, a trailing `\r` dropped), found with a plain byte
/// loop: cheaper inside wasm than the generic searcher on short lines.
fn split_lines(org: &str) -> Vec<&str> {
    let b = org.as_bytes();
    let mut lines: Vec<&str> = Vec::with_capacity(b.len() / 40 + 1);
    let mut s = 0;
    while let Some(k) = util::find_byte(b, s, b'\n') {
        let l = &org[s..k];
        lines.push(l.strip_suffix('\r').unwrap_or(l));
        s = k + 1;
    }
    let l = &org[s..];
    lines.push(l.strip_suffix('\r').unwrap_or(l));
    lines
}

fn append_kw(slot: &mut Option<String>, v: &str) {
    match slot {
        Some(s) => {
            s.push(' ');
            s.push_str(v);
        }
        None => *slot = Some(v.to_string()),
    }
}

/// A `#+begin_NAME` line of a block whose contents Org does not parse (its lines are text).
fn is_lesser_block(t: &str) -> bool {
    let name = t[8..].split(|c: char| c.is_whitespace()).next().unwrap_or("");
    ["src", "example", "export", "comment", "verse"].iter().any(|n| name.eq_ignore_ascii_case(n))
}

fn parser_block_end(p: &Parser, t: &str, i: usize, n: usize) -> Option<usize> {
    p.block_end_public(t, i, n)
}

fn build_heads(cx: &mut Ctx, lines: &[&str], head_lines: &[(usize, usize)], kw: &TodoKw) {
    let n = lines.len();
    let mut pending_ids: Vec<Option<String>> = Vec::new();
    let mut all_kw: Vec<&str> = kw.todo.iter().chain(kw.done.iter()).map(|k| k.as_str()).collect();
    all_kw.sort_unstable();
    all_kw.dedup();
    for (hi, &(li, stars)) in head_lines.iter().enumerate() {
        let end = head_lines.get(hi + 1).map(|h| h.0).unwrap_or(n);
        // Keyword, priority, COMMENT, title and tags as org-element cracks them: the org module's
        // rules (kernel/src/org/outline.rs), the same that parse_headlines and parse use.
        let (todo_kw, prio, comment, rest, tag_list) =
            crate::org::outline::crack_headline_commented(lines[li], stars, &all_kw);
        let todo = todo_kw.map(|t| (t.to_string(), kw.done.iter().any(|k| k == t)));
        let priority = prio.and_then(|p| p.chars().next());
        let tags: Vec<String> = tag_list.iter().map(|t| t.to_string()).collect();
        // Planning line and property drawer.
        let mut k = li + 1;
        let mut planning = None;
        if k < end {
            let t = lines[k].trim_start();
            if t.starts_with("SCHEDULED:") || t.starts_with("DEADLINE:") || t.starts_with("CLOSED:") {
                planning = Some((k, k + 1));
                k += 1;
            }
        }
        let mut custom_id = None;
        let mut id_prop = None;
        let mut unnumbered = None;
        let mut alt_title = None;
        if k < end && lines[k].trim().eq_ignore_ascii_case(":PROPERTIES:") {
            let mut m = k + 1;
            while m < end && !lines[m].trim().eq_ignore_ascii_case(":END:") {
                let t = lines[m].trim();
                if t.starts_with(':') {
                    if let Some(c) = t[1..].find(':') {
                        let key = t[1..c + 1].to_ascii_uppercase();
                        let val = t[c + 2..].trim().to_string();
                        match key.as_str() {
                            "CUSTOM_ID" if !val.is_empty() => custom_id = Some(val),
                            "ID" if !val.is_empty() => id_prop = Some(val),
                            "UNNUMBERED" => unnumbered = Some(val),
                            "ALT_TITLE" if !val.is_empty() => alt_title = Some(val),
                            _ => {}
                        }
                    }
                }
                m += 1;
            }
            if m < end {
                k = m + 1;
            }
        }
        // Org's footnote section ("* Footnotes") is not exported as a headline.
        let excluded = comment || rest == "Footnotes" || tags.iter().any(|t| cx.o.exclude_tags.contains(t));
        if rest == "Footnotes" {
            cx.footnote_sections.push((k, end));
        }
        let archived = tags.iter().any(|t| t == "ARCHIVE");
        let notoc = unnumbered.as_deref() == Some("notoc");
        let unnum = matches!(unnumbered.as_deref(), Some(v) if v != "nil");
        cx.heads.push(Head {
            level: stars,
            todo,
            priority,
            title: rest.to_string(),
            alt_title,
            tags,
            id: String::new(),
            number: if unnum { None } else { Some(Vec::new()) },
            notoc,
            excluded,
            archived,
            has_section: !archived && lines[li + 1..end].iter().any(|l| !l.trim().is_empty()),
            custom_id: false,
            body: (k, end),
            planning,
        });
        if let Some(v) = id_prop {
            cx.id_props.insert(v, hi);
        }
        pending_ids.push(custom_id);
    }
    // Exclusion and unnumbering are inherited by subtrees; select tags keep only matching subtrees.
    let nh = cx.heads.len();
    let any_select = !cx.o.select_tags.is_empty() && cx.heads.iter().any(|h| h.tags.iter().any(|t| cx.o.select_tags.contains(t)));
    let mut keep = vec![!any_select; nh];
    if any_select {
        let mut stack: Vec<usize> = Vec::new();
        for h in 0..nh {
            while let Some(&top) = stack.last() {
                if cx.heads[top].level >= cx.heads[h].level {
                    stack.pop();
                } else {
                    break;
                }
            }
            let selected = cx.heads[h].tags.iter().any(|t| cx.o.select_tags.contains(t)) || stack.iter().any(|&a| keep[a] && cx.heads[a].tags.iter().any(|t| cx.o.select_tags.contains(t)));
            if selected {
                keep[h] = true;
                for &a in &stack {
                    keep[a] = true;
                }
            }
            stack.push(h);
        }
    }
    let mut stack: Vec<usize> = Vec::new();
    let min_level = cx.heads.iter().map(|h| h.level).min().unwrap_or(1);
    let mut counters: Vec<usize> = Vec::new();
    for h in 0..nh {
        while let Some(&top) = stack.last() {
            if cx.heads[top].level >= cx.heads[h].level {
                stack.pop();
            } else {
                break;
            }
        }
        if let Some(&parent) = stack.last() {
            if cx.heads[parent].excluded {
                cx.heads[h].excluded = true;
            }
            if cx.heads[parent].number.is_none() {
                cx.heads[h].number = None;
            }
            if cx.heads[parent].notoc {
                cx.heads[h].notoc = true;
            }
        }
        if !keep[h] {
            cx.heads[h].excluded = true;
        }
        stack.push(h);
        let rel = (cx.heads[h].level - min_level + 1).min(cx.o.max_depth);
        cx.heads[h].level = rel;
        if cx.heads[h].excluded {
            cx.heads[h].number = None;
            continue;
        }
        if cx.heads[h].number.is_some() && rel <= cx.o.num {
            if counters.len() < rel {
                counters.resize(rel, 0);
            }
            counters.truncate(rel);
            counters[rel - 1] += 1;
            cx.heads[h].number = Some(counters.clone());
        } else {
            cx.heads[h].number = None;
        }
    }
    cx.used_ids.reserve(nh + 8);
    // Ids: CUSTOM_IDs first (they are link targets as written), then slugs.
    for (h, cid) in pending_ids.iter().enumerate() {
        if let Some(c) = cid {
            if !cx.used_ids.contains(c) {
                cx.used_ids.insert(c.clone());
                cx.heads[h].id = c.clone();
                cx.heads[h].custom_id = true;
                cx.custom_ids.insert(c.clone(), h);
            }
        }
    }
    for r in ["table-of-contents", "text-table-of-contents", "footnotes", "text-footnotes"] {
        cx.used_ids.insert(r.to_string());
    }
    for h in 0..nh {
        if cx.heads[h].id.is_empty() {
            let s = slug(&title_plain(&cx.heads[h].title));
            cx.heads[h].id = cx.unique_id(&s);
        }

    }
}

/// At most this many radio targets are auto-linked (more is not a document, it is an attack).
const MAX_RADIOS: usize = 1000;

/// The leading run of word bytes (ASCII alphanumerics and non-ASCII), ASCII-lowercased.
pub const FIRST_WORD_MAX: usize = 128;

/// `first_word_lower` without allocating: the word is lowercased into `buf`.
pub fn first_word_lower_in<'a>(b: &[u8], buf: &'a mut [u8; FIRST_WORD_MAX]) -> &'a str {
    let mut n = b.iter().take(FIRST_WORD_MAX).take_while(|&&c| c.is_ascii_alphanumeric() || c >= 0x80).count();
    while n > 0 && n < b.len() && (b[n] & 0xC0) == 0x80 {
        n -= 1;
    }
    for k in 0..n {
        buf[k] = b[k].to_ascii_lowercase();
    }
    // `b` is UTF-8 cut at a character boundary and only ASCII letters changed: always valid.
    std::str::from_utf8(&buf[..n]).unwrap_or("")
}

pub fn first_word_lower(b: &[u8]) -> String {
    let n = b.iter().take(128).take_while(|&&c| c.is_ascii_alphanumeric() || c >= 0x80).count();
    let mut n = n;
    while n > 0 && n < b.len() && (b[n] & 0xC0) == 0x80 {
        n -= 1;
    }
    String::from_utf8_lossy(&b[..n]).to_ascii_lowercase()
}

fn has_double_lt(b: &[u8]) -> bool {
    let mut k = 0;
    while let Some(at) = util::find_byte(b, k, b'<') {
        if at + 1 < b.len() && b[at + 1] == b'<' {
            return true;
        }
        k = at + 1;
    }
    false
}

fn collect_targets(cx: &mut Ctx, parser: &Parser, lines: &[&str], org: &str, head_lines: &[(usize, usize)]) {
    if !has_double_lt(org.as_bytes()) {
        return;
    }
    let mut radio_seen: HashSet<String> = HashSet::default();
    // Targets in verbatim blocks, fixed-width lines and comments are text, not targets.
    let n = lines.len();
    let mut li = 0;
    while li < n {
        let line = lines[li];
        let t = line.trim_start();
        if t.starts_with("#+") && starts_with_ci(t, "#+begin_") {
            let name = t[8..].split_whitespace().next().unwrap_or("").to_ascii_lowercase();
            if matches!(name.as_str(), "src" | "example" | "export" | "comment") {
                if let Some(e) = parser.block_end_public(t, li, n) {
                    li = e + 1;
                    continue;
                }
            }
        }
        if t.starts_with(": ") || t == ":" || t.starts_with("# ") || !has_double_lt(line.as_bytes()) {
            li += 1;
            continue;
        }
        let b = line.as_bytes();
        let mut k = 0;
        // Memo of the next verbatim closer per marker (queries only move forward).
        let mut memo: [Option<Option<usize>>; 2] = [None, None];
        while k + 1 < b.len() {
            if (b[k] == b'=' || b[k] == b'~') && verbatim_opener(b, k) {
                if let Some(c) = next_verbatim_closer(&mut memo, b, k) {
                    k = c + 1;
                    continue;
                }
            }
            if b[k] == b'<' && b[k + 1] == b'<' {
                let radio = k + 2 < b.len() && b[k + 2] == b'<';
                let s = if radio { k + 3 } else { k + 2 };
                let mut e = s;
                while e < b.len() && e < s + 200 && b[e] != b'<' && b[e] != b'>' {
                    e += 1;
                }
                let close: &[u8] = if radio { b">>>" } else { b">>" };
                if e > s && b[e..].starts_with(close) && b[s] != b' ' && b[e - 1] != b' ' {
                    let text = &line[s..e];
                    let id = cx.target_id(text);
                    let hpos = head_lines.partition_point(|&(hl, _)| hl <= li);
                    if hpos > 0 {
                        cx.target_heads.entry(norm_title(text)).or_insert(hpos - 1);
                    }
                    if radio && cx.radios.len() < MAX_RADIOS && radio_seen.insert(text.to_ascii_lowercase()) {
                        cx.radios.push((text.to_string(), id));
                    }
                    k = e;
                    continue;
                }
                k = s;
                continue;
            }
            k += 1;
        }
        li += 1;
    }
    // Longest radio targets first, so overlapping ones match greedily.
    cx.radios.sort_by(|a, b| b.0.len().cmp(&a.0.len()));
    for (k, (r, _)) in cx.radios.iter().enumerate() {
        let w = first_word_lower(r.as_bytes());
        if let Some(&f) = w.as_bytes().first() {
            cx.radio_first[f as usize] = true;
            cx.radio_index.entry(w).or_insert_with(Vec::new).push(k);
        }
    }
    cx.radio_starts = inline::radio_start_table(&cx.o, &cx.radio_first);
}

fn emit_headline_title(cx: &mut Ctx, h: usize, out: &mut String, in_toc: bool) {
    if let Some((kw, done)) = &cx.heads[h].todo {
        if cx.o.todo {
            out.push_str(if *done { "<span class=\"done " } else { "<span class=\"todo " });
            push_class_name(out, kw);
            out.push_str("\">");
            esc_text(out, kw);
            out.push_str("</span> ");
        }
    }
    if let Some(p) = cx.heads[h].priority {
        if cx.o.pri {
            out.push_str("<span class=\"priority\">[");
            let mut buf = [0u8; 4];
            esc_text(out, p.encode_utf8(&mut buf));
            out.push_str("]</span> ");
        }
    }
    // Taken out and put back, so rendering (which needs &mut Ctx) needs no copy.
    let use_alt = in_toc && cx.heads[h].alt_title.is_some();
    let title = if use_alt { cx.heads[h].alt_title.take().unwrap_or_default() } else { std::mem::take(&mut cx.heads[h].title) };
    if in_toc {
        inline::render_inline_plain(cx, &title, out);
    } else {
        inline::render_inline(cx, &title, out);
    }
    if use_alt {
        cx.heads[h].alt_title = Some(title);
    } else {
        cx.heads[h].title = title;
    }
    let tags = std::mem::take(&mut cx.heads[h].tags);
    let show_tags = !tags.is_empty() && (cx.o.tags == 1 || (cx.o.tags == 2 && !in_toc));
    if show_tags {
        out.push_str("&#xa0;&#xa0;&#xa0;<span class=\"tag\">");
        for (k, t) in tags.iter().enumerate() {
            if k > 0 {
                out.push_str("&#xa0;");
            }
            out.push_str("<span class=\"");
            push_class_name(out, t);
            out.push_str("\">");
            esc_text(out, t);
            out.push_str("</span>");
        }
        out.push_str("</span>");
    }
    cx.heads[h].tags = tags;
}

fn push_num(out: &mut String, mut v: usize) {
    let mut buf = [0u8; 20];
    let mut k = buf.len();
    loop {
        k -= 1;
        buf[k] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for &c in &buf[k..] {
        out.push(c as char);
    }
}

fn push_number(out: &mut String, n: &[usize], sep: char) {
    for (k, x) in n.iter().enumerate() {
        if k > 0 {
            out.push(sep);
        }
        push_num(out, *x);
    }
}

fn number_str(n: &[usize]) -> String {
    let mut s = String::new();
    push_number(&mut s, n, '.');
    s
}

enum Open {
    Div,
    /// A list item of a low-level headline; bool = ordered list.
    Li(bool),
}

fn emit_headlines<'a>(cx: &mut Ctx, parser: &mut Parser<'a>, lines: &[Line<'a>], out: &mut String) {
    let nh = cx.heads.len();
    let mut stack: Vec<(usize, Open)> = Vec::new();
    let hl = cx.o.h_level;
    for h in 0..nh {
        if cx.heads[h].excluded {
            continue;
        }
        let level = cx.heads[h].level;
        let low = level > hl;
        let ordered = cx.heads[h].number.is_some();
        // Close deeper or equal levels.
        let mut sibling_li = false;
        while let Some((lv, _)) = stack.last() {
            if *lv < level {
                break;
            }
            let (lv, open) = stack.pop().unwrap();
            match open {
                Open::Div => out.push_str("</div>\n"),
                Open::Li(ord) => {
                    out.push_str("</li>\n");
                    if lv == level && low {
                        sibling_li = true;
                    } else {
                        out.push_str(if ord { "</ol>\n" } else { "</ul>\n" });
                    }
                }
            }
        }
        if low {
            let ord_list = if sibling_li {
                // keep the list kind of the open list
                ordered
            } else {
                out.push_str(if ordered { "<ol class=\"org-ol\">\n" } else { "<ul class=\"org-ul\">\n" });
                ordered
            };
            out.push_str("<li><a id=\"");
            esc(out, &cx.heads[h].id);
            out.push_str("\"></a>");
            emit_headline_title(cx, h, out, false);
            out.push_str("<br />\n");
            // A low-level headline's section keeps its wrapper inside the item; no section, none.
            if cx.heads[h].has_section {
                push_section_open(cx, h, out);
                emit_section(cx, parser, lines, h, out);
                out.push_str("</div>\n");
            }
            stack.push((level, Open::Li(ord_list)));
        } else {
            let lvl = level + 1;
            out.push_str("<div id=\"outline-container-");
            esc(out, &cx.heads[h].id);
            out.push_str("\" class=\"outline-");
            push_num(out, lvl);
            out.push_str("\">\n");
            let htag = (level + 1).min(6);
            out.push_str("<h");
            push_num(out, htag);
            out.push_str(" id=\"");
            esc(out, &cx.heads[h].id);
            out.push_str("\">");
            if let Some(n) = &cx.heads[h].number {
                out.push_str("<span class=\"section-number-");
                push_num(out, lvl);
                out.push_str("\">");
                push_number(out, n, '.');
                out.push_str(".</span> ");
            }
            emit_headline_title(cx, h, out, false);
            out.push_str("</h");
            push_num(out, htag);
            out.push_str(">\n");
            // ox-html: the section's wrapper whenever there is a section (even one that exports
            // nothing), and an empty one when there is none but there are sub-headlines.
            if cx.heads[h].has_section || has_visible_child(cx, h) {
                push_section_open(cx, h, out);
                emit_section(cx, parser, lines, h, out);
                out.push_str("</div>\n");
            }
            stack.push((level, Open::Div));
        }
    }
    while let Some((_, open)) = stack.pop() {
        match open {
            Open::Div => out.push_str("</div>\n"),
            Open::Li(ord) => {
                out.push_str("</li>\n");
                out.push_str(if ord { "</ol>\n" } else { "</ul>\n" });
            }
        }
    }
}

/// `<div class="outline-text-N" id="text-…">` as org-html-section writes it: N is the level
/// plus one, the id the CUSTOM_ID, else the section number, else the headline's id.
fn push_section_open(cx: &Ctx, h: usize, out: &mut String) {
    out.push_str("<div class=\"outline-text-");
    push_num(out, cx.heads[h].level + 1);
    out.push_str("\" id=\"text-");
    match &cx.heads[h].number {
        Some(n) if !cx.heads[h].custom_id => push_number(out, n, '-'),
        _ => esc(out, &cx.heads[h].id),
    }
    out.push_str("\">\n");
}

/// Whether the next exported headline after `h` is its child. Excluded headlines in between are
/// skipped; each is skipped for one exported headline only, so all calls together are linear.
fn has_visible_child(cx: &Ctx, h: usize) -> bool {
    let level = cx.heads[h].level;
    cx.heads[h + 1..].iter().find(|x| !x.excluded).map_or(false, |x| x.level > level)
}

fn emit_section<'a>(cx: &mut Ctx, parser: &mut Parser<'a>, lines: &[Line<'a>], h: usize, out: &mut String) {
    if cx.o.planning {
        if let Some((a, _)) = cx.heads[h].planning {
            emit::emit_planning(cx, lines[a].text.trim(), out);
        }
    }
    if cx.heads[h].archived {
        return;
    }
    let (a, z) = cx.heads[h].body;
    if a >= z {
        return;
    }
    let els = parser.parse(&lines[a..z], 0, true);
    emit::emit_all(cx, &els, out, emit::Ctxt::default());
}

pub fn emit_toc(cx: &mut Ctx, depth: usize, out: &mut String) {
    let limit = depth.min(cx.o.h_level);
    // ox-html writes no TOC at all when it would list nothing (`#+TOC: headlines 0`).
    let start = out.len();
    out.push_str("<div id=\"table-of-contents\" role=\"doc-toc\">\n<h2>Table of Contents</h2>\n<div id=\"text-table-of-contents\" role=\"doc-toc\">\n");
    let mut prev = 0usize;
    let mut any = false;
    for h in 0..cx.heads.len() {
        let (lv, skip) = {
            let hd = &cx.heads[h];
            (hd.level, hd.excluded || hd.notoc || hd.level > limit)
        };
        if skip {
            continue;
        }
        if !any {
            out.push_str("<ul>\n<li>");
            for _ in 1..lv {
                out.push_str("<ul>\n<li>");
            }
            prev = lv;
            any = true;
        } else if lv > prev {
            for _ in prev..lv {
                out.push_str("\n<ul>\n<li>");
            }
            prev = lv;
        } else {
            for _ in lv..prev {
                out.push_str("</li>\n</ul>\n");
            }
            out.push_str("</li>\n<li>");
            prev = lv;
        }
        out.push_str("<a href=\"#");
        let id = cx.heads[h].id.clone();
        esc(out, &id);
        out.push_str("\">");
        if let Some(n) = cx.heads[h].number.clone() {
            out.push_str(&number_str(&n));
            out.push_str(". ");
        }
        emit_headline_title(cx, h, out, true);
        out.push_str("</a>");
    }
    if any {
        for _ in 1..prev {
            out.push_str("</li>\n</ul>\n");
        }
        out.push_str("</li>\n</ul>\n");
    } else {
        out.truncate(start);
        return;
    }
    out.push_str("</div>\n</div>\n");
}

fn emit_footnotes<'a>(cx: &mut Ctx, parser: &mut Parser<'a>, out: &mut String) {
    if cx.fns.is_empty() || !cx.o.footnotes {
        return;
    }
    let defs: HashMap<String, usize> = parser.footdefs.iter().enumerate().rev().map(|(k, d)| (d.label.clone(), k)).collect();
    out.push_str("<div id=\"footnotes\">\n<h2 class=\"footnotes\">Footnotes: </h2>\n<div id=\"text-footnotes\">\n");
    let mut k = 0;
    while k < cx.fns.len() && k < 100_000 {
        let n = k + 1;
        let ns = n.to_string();
        out.push_str("\n<div class=\"footdef\"><sup><a id=\"fn.");
        out.push_str(&ns);
        out.push_str("\" class=\"footnum\" href=\"#fnr.");
        out.push_str(&ns);
        out.push_str("\" role=\"doc-backlink\">");
        out.push_str(&ns);
        out.push_str("</a></sup> <div class=\"footpara\" role=\"doc-footnote\">");
        let inline_def = cx.fns[k].inline_def.take();
        let label = cx.fns[k].label.clone();
        cx.fn_depth = cx.fns[k].depth + 1;
        if let Some(d) = inline_def {
            out.push_str("<p class=\"footpara\">");
            inline::render_inline(cx, d.trim(), out);
            out.push_str("</p>");
        } else if let Some(idx) = label.and_then(|l| defs.get(&l).copied()) {
            let children = std::mem::take(&mut parser.footdefs[idx].children);
            emit::emit_all(cx, &children, out, emit::Ctxt { footpara: true, ..emit::Ctxt::default() });
        }
        out.push_str("</div></div>\n");
        k += 1;
    }
    out.push_str("\n\n</div>\n</div>\n");
}

#[cfg(test)]
mod tests {
    use super::render_html;

    #[test]
    fn emphasis_rules() {
        let h = render_html("a *bold* b a*not* *x *y* =v*e= ~c~ /i/ _u_ +s+\n", "");
        assert!(h.contains("a <b>bold</b> b"));
        assert!(h.contains("a*not*"));
        assert!(h.contains("<code>v*e</code>") && h.contains("<code>c</code>"));
        assert!(h.contains("<i>i</i>") && h.contains("<span class=\"underline\">u</span>") && h.contains("<del>s</del>"));
    }

    #[test]
    fn options_layering() {
        let org = "#+OPTIONS: num:nil toc:t\n* A\n";
        assert!(!render_html(org, "").contains("section-number"));
        assert!(render_html(org, "").contains("table-of-contents"));
        let h = render_html(org, r#"{"num": true, "toc": false}"#);
        assert!(h.contains("section-number") && !h.contains("table-of-contents"));
        // Invalid JSON: defaults and document options.
        assert!(!render_html(org, "{nope").contains("section-number"));
    }

    #[test]
    fn metadata_json() {
        let out = render_html("#+TITLE: T \"q\"\n#+LANGUAGE: en\nx\n", r#"{"metadata": true}"#);
        let v = crate::json::parse(&out).unwrap();
        assert_eq!(v.get("meta").and_then(|m| m.get("title")).and_then(|t| t.as_str()), Some("T \"q\""));
        assert!(v.get("html").and_then(|h| h.as_str()).unwrap().contains("<p>"));
    }

    #[test]
    fn escapes_and_neutralises() {
        let h = render_html("<script> [[javascript:alert(1)][x]] [[JaVa\tScRiPt:x]]\n", r#"{"raw_html": false}"#);
        assert!(!h.contains("<script") && h.contains("&lt;script&gt;"));
        assert!(!h.to_ascii_lowercase().contains("href=\"javascript"));
    }

    /// Deterministic pseudo-fuzz: token soup must never panic and must keep tags balanced.
    #[test]
    fn token_soup_never_panics() {
        let toks = [
            "*", "/", "_", "=", "~", "+", "[[", "]]", "][", "[fn:", "[fn::", "<<", ">>", "{{{", "}}}", "@@html:", "$", "\\(", "\\",
            "\n", "\n* ", "\n- ", "\n  - ", "\n1. ", "\n| a |", "\n|-", "\n#+begin_src\n", "\n#+end_src\n", "\n#+begin_quote\n",
            "\n:D:\n", "\n:END:\n", "é", "\u{200b}", "\u{1}", "x", " ", "src_a{", "}", "<2024-01-01>", "\\alpha", "^", "_{",
        ];
        let mut seed: u64 = 42;
        for _ in 0..3000 {
            let mut doc = String::new();
            for _ in 0..40 {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                doc.push_str(toks[(seed >> 33) as usize % toks.len()]);
            }
            let h = render_html(&doc, r#"{"raw_html": false, "toc": true}"#);
            for tag in ["<p>", "<b>", "<i>", "<ul", "<li", "<div", "<table", "<pre", "<code", "<a "] {
                let close = format!("</{}", &tag[1..].trim_end_matches('>').trim_end());
                let opens = h.matches(tag).count();
                let closes = h.matches(close.as_str()).count();
                assert!(opens <= closes || tag == "<li" && opens == closes, "{:?}\n{}", doc, h);
            }
        }
    }
}
