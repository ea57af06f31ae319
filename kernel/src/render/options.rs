//! Export options: defaults, `#+OPTIONS:` lines, and the caller's JSON (which wins).

use crate::json::Value;

#[derive(Clone, Debug, PartialEq)]
pub enum Drawers {
    None,
    All,
    Only(Vec<String>),
    AllBut(Vec<String>),
}

#[derive(Clone, Debug)]
pub struct Options {
    /// Let author HTML (`#+HTML:`, export blocks, `@@html:…@@`) through.
    pub raw_html: bool,
    /// Table of contents depth; 0 = none.
    pub toc: usize,
    /// Number headlines down to this level; 0 = none.
    pub num: usize,
    /// Headlines deeper than this become list items (Org's `H`).
    pub h_level: usize,
    /// Sub/superscripts: 0 off, 1 on, 2 only with braces (`^:{}`).
    pub sup: u8,
    pub todo: bool,
    /// Tags: 0 hidden, 1 shown, 2 shown except in the table of contents.
    pub tags: u8,
    pub pri: bool,
    pub planning: bool,
    pub footnotes: bool,
    /// Broken internal links: true = mark them, false = drop silently (keep the description).
    pub broken_mark: bool,
    pub emphasis: bool,
    pub special_strings: bool,
    pub entities: bool,
    pub smart_quotes: bool,
    pub fixed_width: bool,
    pub tables: bool,
    pub latex: bool,
    pub drawers: Drawers,
    pub timestamps: bool,
    pub preserve_breaks: bool,
    pub base_url: String,
    pub metadata: bool,
    pub highlight: bool,
    pub exclude_tags: Vec<String>,
    pub select_tags: Vec<String>,
    /// Macros supplied by the caller (like Org's global macros); they win over `#+MACRO:`.
    pub macros: Vec<(String, String)>,
    /// Max element nesting depth in the output (lists in quotes in lists ...).
    pub max_depth: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            raw_html: true,
            toc: 0,
            num: usize::MAX,
            h_level: 3,
            sup: 1,
            todo: true,
            tags: 1,
            pri: false,
            planning: false,
            footnotes: true,
            broken_mark: true,
            emphasis: true,
            special_strings: true,
            entities: true,
            smart_quotes: false,
            fixed_width: true,
            tables: true,
            latex: true,
            // Org's default `org-export-with-drawers`: `(not "LOGBOOK")`.
            drawers: Drawers::AllBut(vec!["LOGBOOK".into()]),
            timestamps: true,
            preserve_breaks: false,
            base_url: String::new(),
            metadata: false,
            highlight: true,
            exclude_tags: vec![String::from("noexport")],
            select_tags: Vec::new(),
            macros: Vec::new(),
            max_depth: 48,
        }
    }
}

fn truthy(v: &str) -> bool {
    !(v.eq_ignore_ascii_case("nil") || v.is_empty())
}

/// Parse Org option words (`toc:2 num:nil H:4 ^:{} d:(not "LOGBOOK")`) onto `o`.
/// Returns the option keys that were set (so the caller's layer can tell what changed).
pub fn apply_org_options(o: &mut Options, line: &str) {
    let b = line.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
            i += 1;
        }
        let ks = i;
        while i < b.len() && b[i] != b':' && b[i] != b' ' && b[i] != b'\t' {
            i += 1;
        }
        if i >= b.len() || b[i] != b':' {
            continue;
        }
        let key = &line[ks..i];
        i += 1;
        let vs = i;
        if i < b.len() && b[i] == b'(' {
            let mut depth = 0usize;
            let mut in_str = false;
            while i < b.len() {
                match b[i] {
                    b'"' => in_str = !in_str,
                    b'(' if !in_str => depth += 1,
                    b')' if !in_str => {
                        depth = depth.saturating_sub(1);
                        if depth == 0 {
                            i += 1;
                            break;
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        } else {
            while i < b.len() && b[i] != b' ' && b[i] != b'\t' {
                i += 1;
            }
        }
        let val = &line[vs..i.min(b.len())];
        set_org_option(o, key, val);
    }
}

fn level_value(val: &str, on_true: usize) -> usize {
    if let Ok(n) = val.parse::<usize>() {
        n
    } else if truthy(val) {
        on_true
    } else {
        0
    }
}

fn set_org_option(o: &mut Options, key: &str, val: &str) {
    match key {
        "toc" => o.toc = level_value(val, usize::MAX),
        "num" => o.num = level_value(val, usize::MAX),
        "H" => {
            if let Ok(n) = val.parse::<usize>() {
                o.h_level = n.max(1).min(64);
            }
        }
        "^" => o.sup = if val == "{}" { 2 } else if truthy(val) { 1 } else { 0 },
        "todo" => o.todo = truthy(val),
        "tags" => o.tags = if val == "not-in-toc" { 2 } else if truthy(val) { 1 } else { 0 },
        "pri" => o.pri = truthy(val),
        "p" => o.planning = truthy(val),
        "f" => o.footnotes = truthy(val),
        "broken-links" => o.broken_mark = val == "mark",
        "*" => o.emphasis = truthy(val),
        "-" => o.special_strings = truthy(val),
        "e" => o.entities = truthy(val),
        "'" => o.smart_quotes = truthy(val),
        ":" => o.fixed_width = truthy(val),
        "|" => o.tables = truthy(val),
        "tex" => o.latex = truthy(val),
        "<" => o.timestamps = truthy(val),
        "\\n" => o.preserve_breaks = truthy(val),
        "d" => o.drawers = parse_drawers(val),
        _ => {}
    }
}

fn parse_drawers(val: &str) -> Drawers {
    if val.starts_with('(') {
        let inner = val.trim_start_matches('(').trim_end_matches(')').trim();
        let (neg, rest) = if let Some(r) = inner.strip_prefix("not") { (true, r) } else { (false, inner) };
        let names: Vec<String> = rest
            .split('"')
            .enumerate()
            .filter(|(i, s)| i % 2 == 1 && !s.is_empty())
            .map(|(_, s)| s.to_ascii_uppercase())
            .collect();
        if neg {
            Drawers::AllBut(names)
        } else {
            Drawers::Only(names)
        }
    } else if truthy(val) {
        Drawers::All
    } else {
        Drawers::None
    }
}

/// The `drawers` JSON option in Org's forms: `true`, `false`, a list of names
/// (`["NOTES"]`), `"not"` and a list (`["not", "LOGBOOK"]`), or the `d:` text itself.
fn json_drawers(v: &Value) -> Option<Drawers> {
    match v {
        Value::Bool(true) => Some(Drawers::All),
        Value::Bool(false) | Value::Null => Some(Drawers::None),
        Value::Str(s) => Some(parse_drawers(s.trim())),
        Value::Arr(items) => {
            let mut names: Vec<String> = Vec::new();
            let mut neg = false;
            for (k, it) in items.iter().enumerate() {
                match it {
                    Value::Str(s) if k == 0 && s == "not" => neg = true,
                    Value::Str(s) => names.push(s.to_ascii_uppercase()),
                    _ => return None,
                }
            }
            Some(if neg { Drawers::AllBut(names) } else { Drawers::Only(names) })
        }
        _ => None,
    }
}

fn json_level(v: &Value, on_true: usize) -> Option<usize> {
    match v {
        Value::Bool(true) => Some(on_true),
        Value::Bool(false) | Value::Null => Some(0),
        Value::Num(n) if *n >= 0.0 => Some(*n as usize),
        Value::Str(s) => Some(level_value(s, on_true)),
        _ => None,
    }
}

/// Apply the caller's JSON options (they override the document's `#+OPTIONS:`).
pub fn apply_json_options(o: &mut Options, v: &Value) {
    let b = |k: &str| v.get(k).and_then(Value::as_bool);
    if let Some(x) = b("raw_html") {
        o.raw_html = x;
    }
    if let Some(x) = v.get("toc").and_then(|x| json_level(x, usize::MAX)) {
        o.toc = x;
    }
    if let Some(x) = v.get("num").and_then(|x| json_level(x, usize::MAX)) {
        o.num = x;
    }
    if let Some(x) = v.get("H").or_else(|| v.get("headline_levels")).and_then(Value::as_f64) {
        if x >= 1.0 {
            o.h_level = (x as usize).min(64);
        }
    }
    if let Some(x) = v.get("sup") {
        match x {
            Value::Bool(t) => o.sup = *t as u8,
            Value::Str(s) if s == "{}" => o.sup = 2,
            _ => {}
        }
    }
    if let Some(x) = b("todo") {
        o.todo = x;
    }
    if let Some(x) = v.get("tags") {
        match x {
            Value::Bool(t) => o.tags = *t as u8,
            Value::Str(s) if s == "not-in-toc" => o.tags = 2,
            _ => {}
        }
    }
    if let Some(x) = b("pri") {
        o.pri = x;
    }
    if let Some(x) = b("planning") {
        o.planning = x;
    }
    if let Some(x) = b("footnotes") {
        o.footnotes = x;
    }
    if let Some(x) = v.get("broken_links").and_then(Value::as_str) {
        o.broken_mark = x == "mark";
    }
    if let Some(x) = v.get("drawers") {
        if let Some(d) = json_drawers(x) {
            o.drawers = d;
        }
    }
    if let Some(x) = b("smart_quotes") {
        o.smart_quotes = x;
    }
    if let Some(x) = b("entities") {
        o.entities = x;
    }
    if let Some(x) = b("emphasis") {
        o.emphasis = x;
    }
    if let Some(x) = b("special_strings") {
        o.special_strings = x;
    }
    if let Some(x) = b("latex") {
        o.latex = x;
    }
    if let Some(x) = b("timestamps") {
        o.timestamps = x;
    }
    if let Some(x) = b("highlight") {
        o.highlight = x;
    }
    if let Some(x) = v.get("base_url").and_then(Value::as_str) {
        o.base_url = x.to_string();
    }
    if let Some(crate::json::Value::Obj(items)) = v.get("macros") {
        for (k, val) in items {
            if let Some(t) = val.as_str() {
                o.macros.push((k.to_ascii_lowercase(), t.to_string()));
            }
        }
    }
    if let Some(x) = b("metadata") {
        o.metadata = x;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn org_options() {
        let mut o = Options::default();
        apply_org_options(&mut o, "H:4 num:nil toc:2 ^:{} d:(not \"LOGBOOK\") tags:not-in-toc broken-links:mark");
        assert_eq!(o.h_level, 4);
        assert_eq!(o.num, 0);
        assert_eq!(o.toc, 2);
        assert_eq!(o.sup, 2);
        assert_eq!(o.tags, 2);
        assert_eq!(o.drawers, Drawers::AllBut(vec!["LOGBOOK".into()]));
    }

    #[test]
    fn drawers_json_forms() {
        let d = |j: &str| {
            let mut o = Options::default();
            apply_json_options(&mut o, &crate::json::parse(j).unwrap());
            o.drawers
        };
        assert_eq!(Options::default().drawers, Drawers::AllBut(vec!["LOGBOOK".into()]));
        assert_eq!(d(r#"{"drawers": true}"#), Drawers::All);
        assert_eq!(d(r#"{"drawers": false}"#), Drawers::None);
        assert_eq!(d(r#"{"drawers": ["notes"]}"#), Drawers::Only(vec!["NOTES".into()]));
        assert_eq!(d(r#"{"drawers": ["not", "LOGBOOK", "x"]}"#), Drawers::AllBut(vec!["LOGBOOK".into(), "X".into()]));
        assert_eq!(d(r#"{"drawers": "(not \"A\")"}"#), Drawers::AllBut(vec!["A".into()]));
    }
}
