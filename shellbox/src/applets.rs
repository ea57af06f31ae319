//! The commands. Each takes its arguments (argv without the command name) and returns the exit
//! status; output goes through `io::out`, messages through `io::warn` (stderr).
//! They follow the GNU coreutils for the flags people use; what they do not support they refuse
//! with a message and status 2 rather than guess.

use crate::io::{self, out, out_str};
use crate::lines;
use crate::regex::Regex;

/// Split `args` into option letters (with the values of options that take one) and operands.
/// `with_value` lists the letters that take a value (`-n 3`, `-n3`). `--` ends the options.
/// A lone `-` and, when `numeric_ok`, `-5` style counts are operands / counts, not options.
struct Opts {
    flags: Vec<char>,
    values: Vec<(char, String)>,
    operands: Vec<String>,
}

fn parse(cmd: &str, args: &[String], letters: &str, with_value: &str) -> Result<Opts, i32> {
    let mut o = Opts { flags: Vec::new(), values: Vec::new(), operands: Vec::new() };
    let mut i = 0;
    let mut only_operands = false;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if only_operands || a == "-" || !a.starts_with('-') {
            o.operands.push(a.clone());
            continue;
        }
        if a == "--" {
            only_operands = true;
            continue;
        }
        let body: Vec<char> = a[1..].chars().collect();
        if body.iter().all(|c| c.is_ascii_digit()) && with_value.contains('n') {
            // `head -5`: the count form
            o.values.push(('n', body.iter().collect()));
            continue;
        }
        let mut k = 0;
        while k < body.len() {
            let c = body[k];
            k += 1;
            if with_value.contains(c) {
                let rest: String = body[k..].iter().collect();
                let v = if !rest.is_empty() {
                    rest
                } else if i < args.len() {
                    i += 1;
                    args[i - 1].clone()
                } else {
                    io::warn(cmd, &format!("option -{} needs a value", c));
                    return Err(2);
                };
                o.values.push((c, v));
                break;
            } else if letters.contains(c) {
                o.flags.push(c);
            } else {
                io::warn(cmd, &format!("unsupported option -{} (supported: {}{})", c, letters, with_value));
                return Err(2);
            }
        }
    }
    Ok(o)
}

impl Opts {
    fn has(&self, c: char) -> bool {
        self.flags.contains(&c)
    }
    fn value(&self, c: char) -> Option<&str> {
        self.values.iter().rev().find(|(k, _)| *k == c).map(|(_, v)| v.as_str())
    }
}

macro_rules! opts {
    ($cmd:expr, $args:expr, $letters:expr, $with:expr) => {
        match parse($cmd, $args, $letters, $with) {
            Ok(o) => o,
            Err(code) => return code,
        }
    };
}

fn write_line(l: &[u8]) {
    out(l);
    out(b"\n");
}

pub fn cat(args: &[String]) -> i32 {
    let o = opts!("cat", args, "n", "");
    let (inputs, failed) = io::inputs("cat", &o.operands);
    let mut n = 0;
    for (_, data) in inputs {
        if o.has('n') {
            let (ls, term) = lines::split(&data);
            let last = ls.len();
            for (k, l) in ls.into_iter().enumerate() {
                n += 1;
                out_str(&format!("{:>6}\t", n));
                out(l);
                if k + 1 < last || term {
                    out(b"\n");
                }
            }
        } else {
            out(&data);
        }
    }
    if failed { 1 } else { 0 }
}

fn unescape(s: &str) -> (String, bool) {
    let mut res = String::new();
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c != '\\' {
            res.push(c);
            continue;
        }
        match it.next() {
            Some('n') => res.push('\n'),
            Some('t') => res.push('\t'),
            Some('r') => res.push('\r'),
            Some('\\') => res.push('\\'),
            Some('a') => res.push('\x07'),
            Some('b') => res.push('\x08'),
            Some('e') => res.push('\x1b'),
            Some('f') => res.push('\x0c'),
            Some('v') => res.push('\x0b'),
            Some('0') => res.push('\0'),
            Some('c') => return (res, true),
            Some(o) => {
                res.push('\\');
                res.push(o);
            }
            None => res.push('\\'),
        }
    }
    (res, false)
}

pub fn echo(args: &[String]) -> i32 {
    let mut newline = true;
    let mut escapes = false;
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if a.len() > 1 && a.starts_with('-') && a[1..].chars().all(|c| "neE".contains(c)) {
            for c in a[1..].chars() {
                match c {
                    'n' => newline = false,
                    'e' => escapes = true,
                    _ => escapes = false,
                }
            }
            i += 1;
        } else {
            break;
        }
    }
    let text = args[i..].join(" ");
    if escapes {
        let (t, stop) = unescape(&text);
        out_str(&t);
        if stop {
            return 0;
        }
    } else {
        out_str(&text);
    }
    if newline {
        out(b"\n");
    }
    0
}

pub fn seq(args: &[String]) -> i32 {
    // negative numbers are operands here, so no option parsing beyond -s SEP
    let mut sep = "\n".to_string();
    let mut nums: Vec<&String> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        if args[i] == "-s" && i + 1 < args.len() {
            sep = unescape(&args[i + 1]).0;
            i += 2;
            continue;
        }
        nums.push(&args[i]);
        i += 1;
    }
    let mut vals = Vec::new();
    for n in &nums {
        match n.parse::<i64>() {
            Ok(v) => vals.push(v),
            Err(_) => {
                io::warn("seq", &format!("invalid integer argument '{}'", n));
                return 2;
            }
        }
    }
    let (first, step, last) = match vals.len() {
        1 => (1, 1, vals[0]),
        2 => (vals[0], 1, vals[1]),
        3 => (vals[0], vals[1], vals[2]),
        _ => {
            io::warn("seq", "usage: seq LAST | seq FIRST LAST | seq FIRST STEP LAST");
            return 2;
        }
    };
    if step == 0 {
        io::warn("seq", "step must not be zero");
        return 2;
    }
    let mut v = first;
    let mut started = false;
    while (step > 0 && v <= last) || (step < 0 && v >= last) {
        if started {
            out_str(&sep);
        }
        out_str(&v.to_string());
        started = true;
        v = match v.checked_add(step) {
            Some(n) => n,
            None => break,
        };
    }
    if started {
        out(b"\n");
    }
    0
}

fn count_arg(cmd: &str, v: &str) -> Result<(char, u64), i32> {
    lines::count(v).ok_or_else(|| {
        io::warn(cmd, &format!("invalid number '{}'", v));
        2
    })
}

pub fn head(args: &[String]) -> i32 {
    let o = opts!("head", args, "", "nc");
    let (inputs, failed) = io::inputs("head", &o.operands);
    let many = inputs.len() > 1;
    for (k, (name, data)) in inputs.iter().enumerate() {
        if many {
            out_str(&format!("{}==> {} <==\n", if k > 0 { "\n" } else { "" }, name));
        }
        if let Some(c) = o.value('c') {
            let n = match count_arg("head", c) {
                Ok((_, n)) => n as usize,
                Err(code) => return code,
            };
            out(&data[..n.min(data.len())]);
            continue;
        }
        let n = match o.value('n').map(|v| count_arg("head", v)) {
            None => 10,
            Some(Ok((_, n))) => n as usize,
            Some(Err(code)) => return code,
        };
        let (ls, term) = lines::split(data);
        let total = ls.len();
        for (i, l) in ls.into_iter().take(n).enumerate() {
            out(l);
            if i + 1 < total || term {
                out(b"\n");
            }
        }
    }
    if failed { 1 } else { 0 }
}

pub fn tail(args: &[String]) -> i32 {
    let o = opts!("tail", args, "", "nc");
    let (inputs, failed) = io::inputs("tail", &o.operands);
    let many = inputs.len() > 1;
    for (k, (name, data)) in inputs.iter().enumerate() {
        if many {
            out_str(&format!("{}==> {} <==\n", if k > 0 { "\n" } else { "" }, name));
        }
        if let Some(c) = o.value('c') {
            let (sign, n) = match count_arg("tail", c) {
                Ok(v) => v,
                Err(code) => return code,
            };
            let n = n as usize;
            let from = if sign == '+' { n.saturating_sub(1) } else { data.len().saturating_sub(n) };
            out(&data[from.min(data.len())..]);
            continue;
        }
        let (sign, n) = match o.value('n').map(|v| count_arg("tail", v)) {
            None => (' ', 10),
            Some(Ok(v)) => v,
            Some(Err(code)) => return code,
        };
        let (ls, term) = lines::split(data);
        let total = ls.len();
        let from = if sign == '+' { (n as usize).saturating_sub(1) } else { total.saturating_sub(n as usize) };
        for i in from..total {
            out(ls[i]);
            if i + 1 < total || term {
                out(b"\n");
            }
        }
    }
    if failed { 1 } else { 0 }
}

pub fn wc(args: &[String]) -> i32 {
    let o = opts!("wc", args, "lwcm", "");
    let mut which: Vec<char> = ['l', 'w', 'm', 'c'].iter().copied().filter(|c| o.has(*c)).collect();
    if which.is_empty() {
        which = vec!['l', 'w', 'c'];
    }
    let (inputs, failed) = io::inputs("wc", &o.operands);
    let mut rows: Vec<(Vec<u64>, String)> = Vec::new();
    let mut totals = vec![0u64; which.len()];
    for (name, data) in &inputs {
        let text = String::from_utf8_lossy(data);
        let counts: Vec<u64> = which
            .iter()
            .map(|c| match c {
                'l' => data.iter().filter(|b| **b == b'\n').count() as u64,
                'w' => text.split_whitespace().count() as u64,
                'm' => text.chars().count() as u64,
                _ => data.len() as u64,
            })
            .collect();
        for (t, c) in totals.iter_mut().zip(&counts) {
            *t += c;
        }
        rows.push((counts, if name == "-" && o.operands.is_empty() { String::new() } else { name.clone() }));
    }
    if rows.len() > 1 {
        rows.push((totals, "total".to_string()));
    }
    let from_stdin = o.operands.is_empty();
    let width = if which.len() == 1 && rows.len() == 1 {
        0
    } else if from_stdin {
        7
    } else {
        rows.iter().flat_map(|r| r.0.iter()).map(|n| n.to_string().len()).max().unwrap_or(1)
    };
    for (counts, name) in rows {
        let cells: Vec<String> = counts.iter().map(|n| format!("{:>w$}", n, w = width)).collect();
        let mut line = cells.join(" ");
        if !name.is_empty() {
            line.push(' ');
            line.push_str(&name);
        }
        out_str(&line);
        out(b"\n");
    }
    if failed { 1 } else { 0 }
}

pub fn nl(args: &[String]) -> i32 {
    let o = opts!("nl", args, "", "");
    let (inputs, failed) = io::inputs("nl", &o.operands);
    let mut n = 0;
    for (_, data) in inputs {
        let (ls, _) = lines::split(&data);
        for l in ls {
            if l.is_empty() {
                out(b"       \n");
            } else {
                n += 1;
                out_str(&format!("{:>6}\t", n));
                write_line(l);
            }
        }
    }
    if failed { 1 } else { 0 }
}

pub fn rev(args: &[String]) -> i32 {
    let o = opts!("rev", args, "", "");
    let (inputs, failed) = io::inputs("rev", &o.operands);
    for (_, data) in inputs {
        let (ls, term) = lines::split(&data);
        let total = ls.len();
        for (i, l) in ls.into_iter().enumerate() {
            let s: String = String::from_utf8_lossy(l).chars().rev().collect();
            out_str(&s);
            if i + 1 < total || term {
                out(b"\n");
            }
        }
    }
    if failed { 1 } else { 0 }
}

/// The leading number of a line for `sort -n` (blanks skipped; none counts as 0).
fn numeric_key(s: &str) -> f64 {
    let t = s.trim_start();
    let mut end = 0;
    let b = t.as_bytes();
    if end < b.len() && (b[end] == b'-' || b[end] == b'+') {
        end += 1;
    }
    let mut seen_dot = false;
    while end < b.len() && (b[end].is_ascii_digit() || (b[end] == b'.' && !seen_dot)) {
        if b[end] == b'.' {
            seen_dot = true;
        }
        end += 1;
    }
    t[..end].parse::<f64>().unwrap_or(0.0)
}

fn sort_key<'a>(line: &'a str, field: Option<(usize, Option<usize>)>, sep: Option<char>) -> &'a str {
    let (from, to) = match field {
        None => return line,
        Some(f) => f,
    };
    // byte offsets of each field start
    let mut starts = Vec::new();
    let mut ends = Vec::new();
    match sep {
        Some(c) => {
            let mut s = 0;
            for (i, ch) in line.char_indices() {
                if ch == c {
                    starts.push(s);
                    ends.push(i);
                    s = i + ch.len_utf8();
                }
            }
            starts.push(s);
            ends.push(line.len());
        }
        None => {
            // blank-separated fields; a field includes its leading blanks, as in GNU sort
            let b = line.as_bytes();
            let mut i = 0;
            while i < b.len() {
                let s = i;
                while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
                    i += 1;
                }
                while i < b.len() && b[i] != b' ' && b[i] != b'\t' {
                    i += 1;
                }
                starts.push(s);
                ends.push(i);
            }
        }
    }
    if from == 0 || from > starts.len() {
        return "";
    }
    let last = to.unwrap_or(starts.len()).min(starts.len()).max(from);
    &line[starts[from - 1]..ends[last - 1]]
}

pub fn sort(args: &[String]) -> i32 {
    let o = opts!("sort", args, "rnuf", "kt");
    let field = match o.value('k') {
        None => None,
        Some(k) => {
            let spec: Vec<&str> = k.split(',').collect();
            let num = |s: &str| s.trim_end_matches(|c: char| c.is_ascii_alphabetic()).parse::<usize>().ok();
            match (spec.get(0).and_then(|s| num(s)), spec.get(1)) {
                (Some(a), None) if a > 0 => Some((a, None)),
                (Some(a), Some(b)) if a > 0 => match num(b) {
                    Some(b) => Some((a, Some(b))),
                    None => {
                        io::warn("sort", &format!("invalid key '{}'", k));
                        return 2;
                    }
                },
                _ => {
                    io::warn("sort", &format!("invalid key '{}'", k));
                    return 2;
                }
            }
        }
    };
    let sep = match o.value('t') {
        None => None,
        Some(t) if t.chars().count() == 1 => t.chars().next(),
        Some(t) => {
            io::warn("sort", &format!("the separator must be one character, not '{}'", t));
            return 2;
        }
    };
    let (inputs, failed) = io::inputs("sort", &o.operands);
    let mut all: Vec<String> = Vec::new();
    for (_, data) in &inputs {
        let (ls, _) = lines::split(data);
        all.extend(ls.into_iter().map(|l| String::from_utf8_lossy(l).into_owned()));
    }
    let numeric = o.has('n');
    let fold = o.has('f');
    let key_cmp = |a: &String, b: &String| -> std::cmp::Ordering {
        let ka = sort_key(a, field, sep);
        let kb = sort_key(b, field, sep);
        if numeric {
            numeric_key(ka).partial_cmp(&numeric_key(kb)).unwrap_or(std::cmp::Ordering::Equal)
        } else if fold {
            ka.to_lowercase().cmp(&kb.to_lowercase())
        } else {
            ka.cmp(kb)
        }
    };
    let unique = o.has('u');
    all.sort_by(|a, b| {
        let c = key_cmp(a, b);
        // GNU's last-resort whole-line comparison, except with -u (which keeps the first)
        let c = if c == std::cmp::Ordering::Equal && !unique { a.cmp(b) } else { c };
        if o.has('r') { c.reverse() } else { c }
    });
    if unique {
        all.dedup_by(|a, b| key_cmp(a, b) == std::cmp::Ordering::Equal);
    }
    for l in all {
        write_line(l.as_bytes());
    }
    if failed { 1 } else { 0 }
}

pub fn uniq(args: &[String]) -> i32 {
    let o = opts!("uniq", args, "cdui", "");
    if o.operands.len() > 1 {
        io::warn("uniq", "reads one input (stdin or one FILE); write the result with > FILE");
        return 2;
    }
    let (inputs, failed) = io::inputs("uniq", &o.operands);
    let data = inputs.into_iter().next().map(|(_, d)| d).unwrap_or_default();
    let (ls, _) = lines::split(&data);
    let same = |a: &[u8], b: &[u8]| {
        if o.has('i') { a.eq_ignore_ascii_case(b) } else { a == b }
    };
    let mut groups: Vec<(&[u8], u64)> = Vec::new();
    for l in ls {
        match groups.last_mut() {
            Some((prev, n)) if same(prev, l) => *n += 1,
            _ => groups.push((l, 1)),
        }
    }
    for (l, n) in groups {
        if (o.has('d') && n < 2) || (o.has('u') && n > 1) {
            continue;
        }
        if o.has('c') {
            out_str(&format!("{:>7} ", n));
        }
        write_line(l);
    }
    if failed { 1 } else { 0 }
}

/// Expand a `tr` set: ranges `a-z`, escapes `\n \t \\`, classes `[:upper:]` and friends.
fn tr_set(spec: &str) -> Result<Vec<char>, String> {
    let chars: Vec<char> = spec.chars().collect();
    let mut res = Vec::new();
    let mut i = 0;
    let class = |name: &str| -> Option<Vec<char>> {
        let pick = |f: fn(&char) -> bool| (0u8..=127).map(|b| b as char).filter(f).collect::<Vec<char>>();
        Some(match name {
            "upper" => ('A'..='Z').collect(),
            "lower" => ('a'..='z').collect(),
            "digit" => ('0'..='9').collect(),
            "alpha" => pick(|c| c.is_ascii_alphabetic()),
            "alnum" => pick(|c| c.is_ascii_alphanumeric()),
            "space" => pick(|c| c.is_ascii_whitespace() || *c == '\x0b'),
            "blank" => vec![' ', '\t'],
            "punct" => pick(|c| c.is_ascii_punctuation()),
            "xdigit" => pick(|c| c.is_ascii_hexdigit()),
            "cntrl" => pick(|c| c.is_ascii_control()),
            "print" => pick(|c| !c.is_ascii_control()),
            "graph" => pick(|c| c.is_ascii_graphic()),
            _ => return None,
        })
    };
    let one = |i: &mut usize| -> char {
        let c = chars[*i];
        *i += 1;
        if c == '\\' && *i < chars.len() {
            let e = chars[*i];
            *i += 1;
            match e {
                'n' => '\n',
                't' => '\t',
                'r' => '\r',
                '0' => '\0',
                other => other,
            }
        } else {
            c
        }
    };
    while i < chars.len() {
        if chars[i] == '[' && chars.get(i + 1) == Some(&':') {
            let rest: String = chars[i..].iter().collect();
            if let Some(end) = rest.find(":]") {
                let name = &rest[2..end];
                match class(name) {
                    Some(v) => res.extend(v),
                    None => return Err(format!("unknown class [:{}:]", name)),
                }
                i += rest[..end + 2].chars().count();
                continue;
            }
        }
        let lo = one(&mut i);
        if i + 1 < chars.len() && chars[i] == '-' {
            i += 1;
            let hi = one(&mut i);
            if hi < lo {
                return Err(format!("range {}-{} is in reverse order", lo, hi));
            }
            let (a, b) = (lo as u32, hi as u32);
            if b - a > 0x10000 {
                return Err(format!("range {}-{} is too large", lo, hi));
            }
            res.extend((a..=b).filter_map(char::from_u32));
        } else {
            res.push(lo);
        }
    }
    Ok(res)
}

pub fn tr(args: &[String]) -> i32 {
    let o = opts!("tr", args, "dsc", "");
    let sets: Result<Vec<Vec<char>>, String> = o.operands.iter().map(|s| tr_set(s)).collect();
    let sets = match sets {
        Ok(s) => s,
        Err(e) => {
            io::warn("tr", &e);
            return 2;
        }
    };
    let delete = o.has('d');
    let squeeze = o.has('s');
    let complement = o.has('c');
    let want = if delete && !squeeze { 1 } else if squeeze && sets.len() == 1 { 1 } else { 2 };
    if sets.len() != want {
        io::warn("tr", "usage: tr SET1 SET2 | tr -d SET1 | tr -s SET1 [SET2]");
        return 2;
    }
    let text = String::from_utf8_lossy(&io::read_stdin()).into_owned();
    let in1 = |c: char| sets[0].contains(&c) != complement;
    let mut res = String::with_capacity(text.len());
    let mut last: Option<char> = None;
    let squeeze_set: &Vec<char> = if delete || sets.len() == 1 { &sets[0] } else { &sets[1] };
    for c in text.chars() {
        let mapped = if delete {
            if in1(c) {
                continue;
            }
            c
        } else if sets.len() == 2 && in1(c) {
            let to = &sets[1];
            if to.is_empty() {
                c
            } else if complement {
                *to.last().unwrap()
            } else {
                let k = sets[0].iter().rposition(|x| *x == c).unwrap();
                to[k.min(to.len() - 1)]
            }
        } else {
            c
        };
        if squeeze && last == Some(mapped) && (squeeze_set.contains(&mapped) != (complement && sets.len() == 1)) {
            continue;
        }
        res.push(mapped);
        last = Some(mapped);
    }
    out_str(&res);
    0
}

pub fn basename(args: &[String]) -> i32 {
    if args.is_empty() || args.len() > 2 {
        io::warn("basename", "usage: basename NAME [SUFFIX]");
        return 2;
    }
    let name = args[0].trim_end_matches('/');
    let base = if name.is_empty() {
        if args[0].is_empty() { "" } else { "/" }
    } else {
        name.rsplit('/').next().unwrap_or(name)
    };
    let base = match args.get(1) {
        Some(suf) if !suf.is_empty() && base.len() > suf.len() && base.ends_with(suf.as_str()) => {
            &base[..base.len() - suf.len()]
        }
        _ => base,
    };
    out_str(base);
    out(b"\n");
    0
}

pub fn dirname(args: &[String]) -> i32 {
    if args.len() != 1 {
        io::warn("dirname", "usage: dirname NAME");
        return 2;
    }
    let p = args[0].trim_end_matches('/');
    let dir = if p.is_empty() {
        if args[0].starts_with('/') { "/" } else { "." }
    } else {
        match p.rfind('/') {
            None => ".",
            Some(i) => {
                let d = p[..i].trim_end_matches('/');
                if d.is_empty() { "/" } else { d }
            }
        }
    };
    out_str(dir);
    out(b"\n");
    0
}

pub fn upper(args: &[String]) -> i32 {
    let o = opts!("upper", args, "", "");
    let (inputs, failed) = io::inputs("upper", &o.operands);
    for (_, data) in inputs {
        out_str(&String::from_utf8_lossy(&data).to_uppercase());
    }
    if failed { 1 } else { 0 }
}

/// grep reads stdin; as in the original, every word after the flags is part of the pattern
/// (`grep hello world` looks for "hello world"). Status 0 when a line matched, 1 when none did.
pub fn grep(args: &[String]) -> i32 {
    let o = opts!("grep", args, "ivcnEFxwq", "e");
    let pattern = match o.value('e') {
        Some(p) => {
            if !o.operands.is_empty() {
                io::warn("grep", "reads stdin only: send a file with `grep -e PATTERN < FILE`");
                return 2;
            }
            p.to_string()
        }
        None => o.operands.join(" "),
    };
    if pattern.is_empty() && o.operands.is_empty() && o.value('e').is_none() {
        io::warn("grep", "no pattern given (usage: grep [-ivcnFxwq] PATTERN, input on stdin)");
        return 2;
    }
    let fold = o.has('i');
    let re = if o.has('F') {
        if o.has('x') || o.has('w') {
            let mut esc = String::new();
            for c in pattern.chars() {
                if c.is_alphanumeric() || c == ' ' || c == '_' {
                    esc.push(c);
                } else {
                    esc.push('\\');
                    esc.push(c);
                }
            }
            wrap(&esc, &o, fold)
        } else {
            Ok(Regex::literal(&pattern, fold))
        }
    } else {
        wrap(&pattern, &o, fold)
    };
    let re = match re {
        Ok(r) => r,
        Err(e) => {
            io::warn("grep", &format!("invalid pattern: {}", e));
            return 2;
        }
    };
    let data = io::read_stdin();
    let (ls, _) = lines::split(&data);
    let invert = o.has('v');
    let mut count = 0u64;
    for (i, l) in ls.into_iter().enumerate() {
        let line = String::from_utf8_lossy(l);
        if re.is_match(&line) == invert {
            continue;
        }
        count += 1;
        if o.has('q') {
            return 0;
        }
        if o.has('c') {
            continue;
        }
        if o.has('n') {
            out_str(&format!("{}:", i + 1));
        }
        write_line(l);
    }
    if o.has('c') {
        out_str(&format!("{}\n", count));
    }
    if count > 0 { 0 } else { 1 }
}

fn wrap(p: &str, o: &Opts, fold: bool) -> Result<Regex, String> {
    let plain = Regex::new(p, fold)?; // checked alone first, so `a)(b` cannot pair with the wrapper
    if o.has('x') {
        Regex::new(&format!("^(?:{})$", p), fold)
    } else if o.has('w') {
        Regex::new(&format!("\\b(?:{})\\b", p), fold)
    } else {
        Ok(plain)
    }
}
