//! The first source block of a section, as org-element sees it: `#+begin_src LANG
//! [switches] PARAMS` … `#+end_src` inside the same section, with the `#+HEADER:` lines
//! directly above it. Verbatim blocks (example/export/comment/verse) hide what they
//! contain; greater blocks (quote, center, special) do not. Unterminated openers cost
//! nothing extra: block ends are indexed once per section (linear on hostile input).

use super::scan::{is_ws, line_at, skip_blank, starts_with_ci};

pub struct SrcBlock<'a> {
    pub lang: Option<&'a str>,
    /// `#+HEADER:` values (last line first, as org-element lists them) then the begin
    /// line's parameters, joined by spaces.
    pub params: String,
    /// The body with Org's comma escapes removed and common indentation stripped.
    pub body: String,
}

/// Lines starting with `#+` between `from` and `to`: (line start, after `#+`, line end, next).
fn hash_plus_lines(b: &[u8], from: usize, to: usize) -> Vec<(usize, usize, usize, usize)> {
    let mut v = Vec::new();
    let mut pos = from;
    while pos < to {
        let l = line_at(b, pos);
        let p = skip_blank(b, l.start, l.end);
        if p + 1 < l.end && b[p] == b'#' && b[p + 1] == b'+' {
            v.push((l.start, p + 2, l.end, l.next));
        }
        if l.next <= pos {
            break;
        }
        pos = l.next;
    }
    v
}

fn block_name(b: &[u8], p: usize, end: usize) -> Option<(usize, usize)> {
    if !starts_with_ci(b, p, end, b"begin_") {
        return None;
    }
    let s = p + 6;
    let mut e = s;
    while e < end && !is_ws(b[e]) {
        e += 1;
    }
    if e > s {
        Some((s, e))
    } else {
        None
    }
}

fn end_name(b: &[u8], p: usize, end: usize) -> Option<(usize, usize)> {
    if !starts_with_ci(b, p, end, b"end_") {
        return None;
    }
    let s = p + 4;
    let mut e = end;
    while e > s && (b[e - 1] == b' ' || b[e - 1] == b'\t') {
        e -= 1;
    }
    if e > s {
        Some((s, e))
    } else {
        None
    }
}

fn is_affiliated(b: &[u8], p: usize, end: usize) -> Option<bool> {
    // returns Some(is_header) when the `#+…` line at p is an affiliated keyword
    let mut k = p;
    while k < end && b[k] != b':' && b[k] != b'[' && !is_ws(b[k]) {
        k += 1;
    }
    let key = &b[p..k];
    let named = ["CAPTION", "DATA", "HEADER", "HEADERS", "LABEL", "NAME", "PLOT", "RESNAME", "RESULT", "RESULTS", "SOURCE", "SRCNAME", "TBLNAME"];
    let ok = named.iter().any(|n| key.eq_ignore_ascii_case(n.as_bytes())) || (key.len() > 5 && key[..5].eq_ignore_ascii_case(b"ATTR_"));
    if !ok {
        return None;
    }
    let mut j = k;
    if j < end && b[j] == b'[' {
        while j < end && b[j] != b']' {
            j += 1;
        }
        j += 1;
    }
    if j < end && b[j] == b':' {
        Some(key.eq_ignore_ascii_case(b"HEADER") || key.eq_ignore_ascii_case(b"HEADERS"))
    } else {
        None
    }
}

/// The first src block in `text[from..to]`.
pub fn first_src_block(text: &str, from: usize, to: usize) -> Option<SrcBlock<'_>> {
    let b = text.as_bytes();
    let lines = hash_plus_lines(b, from, to);
    if lines.is_empty() {
        return None;
    }
    // Index every `#+end_NAME` line once: (lower-case name, index into `lines`).
    let mut ends: Vec<(Vec<u8>, usize)> = Vec::new();
    for (i, &(_, p, e, _)) in lines.iter().enumerate() {
        if let Some((s, e)) = end_name(b, p, e) {
            ends.push((b[s..e].to_ascii_lowercase(), i));
        }
    }
    ends.sort();
    let next_end = |name: &[u8], after: usize| -> Option<usize> {
        let lname = name.to_ascii_lowercase();
        let k = ends.partition_point(|(n, i)| (n.as_slice(), *i) <= (lname.as_slice(), after));
        match ends.get(k) {
            Some((n, i)) if n.as_slice() == lname.as_slice() => Some(*i),
            _ => None,
        }
    };
    let mut i = 0;
    while i < lines.len() {
        let (start, p, e, next) = lines[i];
        if let Some((ns, ne)) = block_name(b, p, e) {
            let name = &b[ns..ne];
            if let Some(j) = next_end(name, i) {
                if name.eq_ignore_ascii_case(b"src") {
                    return Some(build(text, &lines, i, j, start, ne, e, next));
                }
                if [&b"example"[..], b"export", b"comment", b"verse"].iter().any(|k| name.eq_ignore_ascii_case(k)) {
                    i = j + 1;
                    continue;
                }
            }
        }
        i += 1;
    }
    None
}

/// The begin line of a src block after `#+begin_src`: (language, offset where the
/// parameters start, after the switches), as org-element's regexp
/// `#\+BEGIN_SRC(?: +(\S+))?((?: +(?:-l ".+"|-[ikr]|[-+]n(?: *\d+)?))+)?(.*)`.
pub fn src_begin(text: &str, after_name: usize, line_end: usize) -> (Option<&str>, usize) {
    let b = text.as_bytes();
    let mut q = after_name;
    let mut lang = None;
    let sp = {
        let mut t = q;
        while t < line_end && b[t] == b' ' {
            t += 1;
        }
        t
    };
    if sp > q && sp < line_end && !is_ws(b[sp]) {
        let mut t = sp;
        while t < line_end && !is_ws(b[t]) {
            t += 1;
        }
        lang = Some(&text[sp..t]);
        q = t;
    }
    loop {
        let mut t = q;
        while t < line_end && b[t] == b' ' {
            t += 1;
        }
        if t == q || t + 1 >= line_end {
            break;
        }
        let sw = &b[t..line_end];
        let consumed = if sw[0] == b'-' && matches!(sw[1], b'i' | b'k' | b'r') {
            2
        } else if (sw[0] == b'-' || sw[0] == b'+') && sw[1] == b'n' {
            let mut u = 2;
            let mut v = u;
            while v < sw.len() && sw[v] == b' ' {
                v += 1;
            }
            let d = v;
            while v < sw.len() && sw[v].is_ascii_digit() {
                v += 1;
            }
            if v > d {
                u = v;
            }
            u
        } else if sw.len() > 4 && &sw[..4] == b"-l \"" {
            match sw.iter().rposition(|&c| c == b'"') {
                Some(r) if r > 4 => r + 1,
                _ => 0,
            }
        } else {
            0
        };
        if consumed == 0 {
            break;
        }
        q = t + consumed;
    }
    (lang, q)
}

#[allow(clippy::too_many_arguments)]
fn build<'a>(text: &'a str, lines: &[(usize, usize, usize, usize)], bi: usize, ei: usize, start: usize, after_name: usize, line_end: usize, body_start: usize) -> SrcBlock<'a> {
    let b = text.as_bytes();
    // `#+HEADER:` lines: the consecutive affiliated keywords directly above.
    let mut headers: Vec<&str> = Vec::new();
    let mut k = bi;
    let mut expect = start;
    while k > 0 {
        let (s, p, e, nx) = lines[k - 1];
        if nx != expect {
            break;
        }
        match is_affiliated(b, p, e) {
            Some(is_header) => {
                if is_header {
                    let colon = p + b[p..e].iter().position(|&c| c == b':').unwrap_or(0);
                    headers.push(&text[colon + 1..e]);
                }
            }
            None => break,
        }
        expect = s;
        k -= 1;
    }
    // org-element lists `:header` values last line first, and the reference
    // (org-srcblocks.el) joins them in that order before the begin line's parameters.
    let (lang, q) = src_begin(text, after_name, line_end);
    // Org trims each value and joins them with single spaces.
    let mut parts: Vec<&str> = headers.iter().map(|h| super::scan::trim_org(h)).collect();
    parts.push(super::scan::trim_org(&text[q.min(line_end)..line_end]));
    parts.retain(|p| !p.is_empty());
    let params = parts.join(" ");
    let body_end = lines[ei].0;
    SrcBlock { lang, params, body: clean_body(&text[body_start.min(body_end)..body_end]) }
}

/// Remove Org's comma escapes (`,*`, `,#+`) and the common indentation; no final newline.
fn clean_body(raw: &str) -> String {
    let mut lines: Vec<String> = Vec::new();
    for line in raw.split('\n') {
        let lb = line.as_bytes();
        let p = skip_blank(lb, 0, lb.len());
        let unescaped = if p < lb.len() && lb[p] == b',' {
            let rest = &line[p + 1..];
            let mut r = rest.as_bytes();
            while let Some((&b',', tail)) = r.split_first() {
                r = tail;
            }
            // Org's org-unescape-code-in-string: a run of commas before `*` or `#+` loses one
            if r.starts_with(b"*") || r.starts_with(b"#+") {
                let mut s = String::with_capacity(line.len());
                s.push_str(&line[..p]);
                s.push_str(rest);
                s
            } else {
                line.to_string()
            }
        } else {
            line.to_string()
        };
        lines.push(unescaped);
    }
    if lines.last().map(|l| l.is_empty()).unwrap_or(false) {
        lines.pop();
    }
    let indent = |l: &str| -> Option<usize> {
        let mut col = 0;
        for c in l.bytes() {
            match c {
                b' ' => col += 1,
                b'\t' => col = (col / 8 + 1) * 8,
                _ => return Some(col),
            }
        }
        None
    };
    let min = lines.iter().filter_map(|l| indent(l)).min().unwrap_or(0);
    if min > 0 {
        for l in lines.iter_mut() {
            let mut col = 0;
            let mut cut = 0;
            for c in l.bytes() {
                if col >= min {
                    break;
                }
                match c {
                    b' ' => col += 1,
                    b'\t' => col = (col / 8 + 1) * 8,
                    _ => break,
                }
                cut += 1;
            }
            let pad = if col > min { col - min } else { 0 };
            let rest = l[cut..].to_string();
            *l = " ".repeat(pad) + &rest;
        }
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn finds_first_real_src_block() {
        let t = "text\n#+begin_example\n#+begin_src no\n#+end_src\n#+end_example\n#+begin_src js\nunclosed? no\n#+NAME: x\n#+HEADER: :in a\n#+begin_src python -n 3 :out b\n  ,* x\n  y\n#+end_src\n";
        // the js block's end is the python block's end: org pairs the js opener with it
        let s = first_src_block(t, 0, t.len()).unwrap();
        assert_eq!(s.lang, Some("js"));
        let t2 = "#+NAME: x\n#+HEADER: :in a\n#+begin_src python -n 3 :out b\n  ,* x\n  y\n#+end_src\n";
        let s = first_src_block(t2, 0, t2.len()).unwrap();
        assert_eq!(s.lang, Some("python"));
        assert_eq!(s.params, ":in a :out b");
        let t3 = "#+HEADER: :in 1\n#+HEADER: :in 2\n#+begin_src sh :out o\n#+end_src\n";
        assert_eq!(first_src_block(t3, 0, t3.len()).unwrap().params, ":in 2 :in 1 :out o");
        assert_eq!(s.body, "* x\ny");
        assert!(first_src_block("#+begin_src js\nno end\n", 0, 22).is_none());
    }
}
