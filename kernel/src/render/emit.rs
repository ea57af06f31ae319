//! Elements to HTML, following ox-html's markup (classes, wrappers, paragraph rules in items)
//! so the output reads like Emacs's export.

use super::blocks::{Aff, El, Item, ListKind, TableRow};
use super::inline::{image_src, is_image_path, push_img, render_inline};
use super::util::{esc, esc_text};
use super::Ctx;

#[derive(Clone, Copy, Default)]
pub struct Ctxt {
    /// Paragraphs inside footnote definitions get class="footpara".
    pub footpara: bool,
}

pub fn emit_all(cx: &mut Ctx, els: &[El], out: &mut String, c: Ctxt) {
    if !cx.o.raw_html {
        for el in els {
            emit(cx, el, out, c);
        }
        return;
    }
    // Author HTML opened here ends here at the latest (see `rawhtml`).
    let mark = cx.author.enter();
    for (k, el) in els.iter().enumerate() {
        prime_author(cx, &els[k..]);
        emit(cx, el, out, c);
    }
    cx.author.leave(out, mark);
}

/// The raw piece an element writes, if any.
fn raw_piece<'e>(el: &'e El) -> Option<&'e str> {
    match el {
        El::Html(v) => Some(v),
        El::Export(backend, body) if backend == "html" => Some(body),
        _ => None,
    }
}

/// At a container's first raw piece: tell the balancer which end tags its raw pieces hold.
fn prime_author(cx: &mut Ctx, rest: &[El]) {
    if raw_piece(&rest[0]).is_some() && cx.author.needs_future() {
        let mut v = Vec::new();
        for el in rest {
            if let Some(p) = raw_piece(el) {
                super::rawhtml::end_tag_names(p, &mut v);
            }
        }
        cx.author.prime(v);
    }
}

fn id_attr(cx: &Ctx, aff: &Aff, out: &mut String) {
    if let Some(n) = aff.name {
        if let Some(id) = cx.names.get(&super::norm_title(n)) {
            out.push_str(" id=\"");
            esc(out, id);
            out.push('"');
        }
    }
}

/// Is this paragraph a single image link (a standalone image)?
fn standalone_image(text: &str) -> Option<&str> {
    let t = text.trim();
    if !t.starts_with("[[") || !t.ends_with("]]") {
        return None;
    }
    let inner = &t[2..t.len() - 2];
    if inner.contains("[[") || inner.contains("]]") || inner.contains("][") || inner.contains('[') || inner.contains(']') {
        return None;
    }
    if is_image_path(inner) {
        Some(inner)
    } else {
        None
    }
}

fn emit_para(cx: &mut Ctx, text: &str, aff: &Aff, out: &mut String, c: Ctxt) {
    if let Some(img) = standalone_image(text) {
        out.push_str("\n<div");
        id_attr(cx, aff, out);
        out.push_str(" class=\"figure\">\n<p>");
        let src = image_src(cx, img);
        if aff.attr_html.is_empty() {
            push_img(out, &src, cx);
        } else {
            push_img_with_attrs(out, &src, &aff.attr_html, cx);
        }
        out.push_str("\n</p>\n");
        if let Some(cap) = &aff.caption {
            cx.figure_count += 1;
            out.push_str("<p><span class=\"figure-number\">Figure ");
            out.push_str(&cx.figure_count.to_string());
            out.push_str(": </span>");
            let cap = cap.clone();
            render_inline(cx, &cap, out);
            out.push_str("</p>\n");
        }
        out.push_str("</div>\n");
        return;
    }
    out.push_str(if c.footpara { "<p class=\"footpara\"" } else { "<p" });
    id_attr(cx, aff, out);
    out.push_str(">\n");
    render_inline(cx, text, out);
    out.push_str("\n</p>\n");
}

pub fn emit(cx: &mut Ctx, el: &El, out: &mut String, c: Ctxt) {
    match el {
        El::Para(text, aff) => emit_para(cx, text, aff, out, c),
        El::List(kind, items, aff) => emit_list(cx, *kind, items, aff, out),
        El::Table(rows, aff) => emit_table(cx, rows, aff, out),
        El::Pre(body, aff) => {
            out.push_str("<pre class=\"example\"");
            id_attr(cx, aff, out);
            out.push_str(">\n");
            esc_text(out, body);
            out.push_str("</pre>\n");
        }
        El::Src { lang, switches, params, body, aff } => emit_src(cx, lang, switches, params, body, aff, out),
        El::Example { switches, body, aff } => {
            out.push_str("<pre class=\"example\"");
            id_attr(cx, aff, out);
            out.push_str(">\n");
            emit_code_lines(cx, "", switches, body, out);
            out.push_str("</pre>\n");
        }
        El::Verse(text, aff) => {
            out.push_str("<p class=\"verse\"");
            id_attr(cx, aff, out);
            out.push_str(">\n");
            // As ox-html: the common indentation goes (org-element-normalize-contents), the
            // remaining leading blanks become no-break spaces, and every line, the last one
            // too, ends with one <br /> (a `\\` break already there is not doubled).
            // An empty verse block has no lines, hence no <br />.
            let s = remove_common_indentation(text);
            let mut rendered = String::new();
            if !s.is_empty() {
                render_inline(cx, &s, &mut rendered);
            }
            for line in rendered.split('\n').filter(|_| !s.is_empty()) {
                let line = line.trim_end_matches(|c| c == ' ' || c == '\t');
                let line = line.strip_suffix("<br />").unwrap_or(line);
                let trimmed = line.trim_start_matches(|c| c == ' ' || c == '\t');
                for _ in 0..(line.len() - trimmed.len()) {
                    out.push_str("&#xa0;");
                }
                out.push_str(trimmed);
                out.push_str("<br />\n");
            }
            out.push_str("</p>\n");
        }
        El::Block(kind, children, aff) => match kind.as_str() {
            "quote" => {
                out.push_str("<blockquote");
                id_attr(cx, aff, out);
                out.push_str(">\n");
                emit_all(cx, children, out, c);
                out.push_str("</blockquote>\n");
            }
            "center" => {
                out.push_str("<div class=\"org-center\"");
                id_attr(cx, aff, out);
                out.push_str(">\n");
                emit_all(cx, children, out, c);
                out.push_str("</div>\n");
            }
            "dynamic" => emit_all(cx, children, out, c),
            other => {
                out.push_str("<div class=\"");
                esc(out, other);
                out.push('"');
                id_attr(cx, aff, out);
                out.push_str(">\n");
                emit_all(cx, children, out, c);
                out.push_str("</div>\n");
            }
        },
        El::Export(backend, body) => {
            if backend == "html" && cx.o.raw_html {
                cx.author.feed(out, body, Vec::new);
                cx.raw_used = true;
            }
        }
        El::Drawer(name, children) => {
            let show = match &cx.o.drawers {
                super::options::Drawers::None => false,
                super::options::Drawers::All => !name.eq_ignore_ascii_case("PROPERTIES"),
                super::options::Drawers::Only(v) => v.iter().any(|d| d.eq_ignore_ascii_case(name)),
                super::options::Drawers::AllBut(v) => !v.iter().any(|d| d.eq_ignore_ascii_case(name)) && !name.eq_ignore_ascii_case("PROPERTIES"),
            };
            // ox-html's `org-html-format-drawer-function` default: the contents, no wrapper.
            if show {
                emit_all(cx, children, out, c);
            }
        }
        El::Html(v) => {
            if cx.o.raw_html {
                cx.author.feed(out, v, Vec::new);
                out.push('\n');
                cx.raw_used = true;
            }
        }
        El::Hr => out.push_str("<hr />\n"),
        El::Latex(body, aff) => {
            if cx.o.latex {
                out.push_str("<div class=\"math display\"");
                id_attr(cx, aff, out);
                out.push_str(">\n");
                esc_text(out, body);
                out.push_str("</div>\n");
            }
        }
        El::Keyword => {}
        El::Toc(depth) => {
            // Each table of contents lists every headline: a few are useful, thousands are an attack.
            if cx.tocs < 4 {
                cx.tocs += 1;
                let d = *depth;
                super::emit_toc(cx, d, out);
            }
        }
    }
}

/// Lines with their common indentation removed (columns, tabs to multiples of 8); blank lines
/// do not count. A line whose indentation has tabs keeps the rest of it as spaces.
fn remove_common_indentation(text: &str) -> String {
    fn indent_cols(l: &str) -> (usize, usize) {
        let mut col = 0;
        let mut bytes = 0;
        for c in l.bytes() {
            match c {
                b' ' => col += 1,
                b'\t' => col = (col / 8 + 1) * 8,
                _ => break,
            }
            bytes += 1;
        }
        (col, bytes)
    }
    let min = text.split('\n').filter(|l| !l.trim().is_empty()).map(|l| indent_cols(l).0).min().unwrap_or(0);
    if min == 0 {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    for (k, l) in text.split('\n').enumerate() {
        if k > 0 {
            out.push('\n');
        }
        if l.trim().is_empty() {
            continue;
        }
        let (col, bytes) = indent_cols(l);
        if l[..bytes].contains('\t') {
            for _ in min..col {
                out.push(' ');
            }
        } else {
            out.push_str(&l[min..bytes]);
        }
        out.push_str(&l[bytes..]);
    }
    out
}

fn emit_list(cx: &mut Ctx, kind: ListKind, items: &[Item], aff: &Aff, out: &mut String) {
    let (open, close) = match kind {
        ListKind::Unordered => ("<ul class=\"org-ul\"", "</ul>\n"),
        ListKind::Ordered => ("<ol class=\"org-ol\"", "</ol>\n"),
        ListKind::Description => ("<dl class=\"org-dl\"", "</dl>\n"),
    };
    out.push_str(open);
    id_attr(cx, aff, out);
    out.push_str(">\n");
    for it in items {
        let cb_class = match it.checkbox {
            Some(b'X') => " class=\"on\"",
            Some(b'-') => " class=\"trans\"",
            Some(_) => " class=\"off\"",
            None => "",
        };
        let cb = match it.checkbox {
            Some(b'X') => "<code>[X]</code> ",
            Some(b'-') => "<code>[-]</code> ",
            Some(_) => "<code>[&#xa0;]</code> ",
            None => "",
        };
        // First paragraph alone (or followed only by a sub-list) has no <p>.
        let bare = match it.children.first() {
            Some(El::Para(_, aff)) if aff.caption.is_none() => it.children.len() == 1 || (it.children.len() == 2 && matches!(it.children[1], El::List(..))),
            _ => false,
        };
        match kind {
            ListKind::Description => {
                out.push_str("<dt");
                out.push_str(cb_class);
                out.push('>');
                out.push_str(cb);
                match it.tag {
                    Some(t) => render_inline(cx, t, out),
                    None => out.push_str("(no term)"),
                }
                out.push_str("</dt><dd>");
            }
            ListKind::Ordered => {
                out.push_str("<li");
                if let Some(c) = it.counter {
                    let v: String = if let Ok(n) = c.parse::<u64>() {
                        n.to_string()
                    } else {
                        let ch = c.as_bytes()[0].to_ascii_lowercase();
                        if ch.is_ascii_lowercase() {
                            ((ch - b'a') as u64 + 1).to_string()
                        } else {
                            String::from("1")
                        }
                    };
                    out.push_str(" value=\"");
                    out.push_str(&v);
                    out.push('"');
                }
                out.push_str(cb_class);
                out.push('>');
                out.push_str(cb);
            }
            ListKind::Unordered => {
                out.push_str("<li");
                out.push_str(cb_class);
                out.push('>');
                out.push_str(cb);
                if let Some(t) = it.tag {
                    // A tag in an unordered list (mixed lists): keep its text.
                    render_inline(cx, t, out);
                    out.push_str(" :: ");
                }
            }
        }
        // The body is written in place, then trimmed (ox-html trims item contents).
        let mark = out.len();
        let raw = cx.o.raw_html;
        let author_mark = if raw { Some(cx.author.enter()) } else { None };
        for (k, ch) in it.children.iter().enumerate() {
            if raw {
                prime_author(cx, &it.children[k..]);
            }
            if k == 0 && bare {
                if let El::Para(t, a) = ch {
                    if standalone_image(t).is_some() {
                        emit_para(cx, t, a, out, Ctxt::default());
                    } else {
                        render_inline(cx, t, out);
                        out.push('\n');
                    }
                    continue;
                }
            }
            emit(cx, ch, out, Ctxt::default());
        }
        if let Some(m) = author_mark {
            cx.author.leave(out, m);
        }
        let trimmed_len = out[mark..].trim_end().len();
        out.truncate(mark + trimmed_len);
        let lead = out[mark..].len() - out[mark..].trim_start().len();
        if lead > 0 {
            out.replace_range(mark..mark + lead, "");
        }
        out.push_str(match kind {
            ListKind::Description => "</dd>\n",
            _ => "</li>\n",
        });
    }
    out.push_str(close);
}

fn is_number(s: &str) -> bool {
    // Org's org-table-number-regexp, simplified.
    let t = s.trim();
    if t.is_empty() {
        return false;
    }
    let t = t.trim_start_matches(|c| c == '<' || c == '>');
    let b = t.as_bytes();
    if t.eq_ignore_ascii_case("nan") || t.ends_with("inf") && t.len() <= 4 {
        return true;
    }
    let mut seen_digit = false;
    let mut k = 0;
    while k < b.len() && matches!(b[k], b'-' | b'+' | b'^' | b'.' | b'0'..=b'9') {
        if b[k].is_ascii_digit() {
            seen_digit = true;
        }
        k += 1;
    }
    if !seen_digit {
        return false;
    }
    b[k..].iter().all(|c| matches!(c, b'-' | b'+' | b'^' | b'.' | b'0'..=b'9' | b'e' | b'E' | b'd' | b'D' | b'x' | b'(' | b')' | b'%' | b':'))
}

fn cookie_align(cell: &str) -> Option<Option<char>> {
    // "<l>", "<r10>", "<c>", "<10>": alignment cookie (Some(align)) or width-only cookie (Some(None)).
    let b = cell.as_bytes();
    if b.len() < 3 || b[0] != b'<' || b[b.len() - 1] != b'>' {
        return None;
    }
    let inner = &cell[1..cell.len() - 1];
    let (a, rest) = match inner.as_bytes()[0] {
        b'l' | b'r' | b'c' => (Some(inner.as_bytes()[0] as char), &inner[1..]),
        _ => (None, inner),
    };
    if rest.bytes().all(|c| c.is_ascii_digit()) && (a.is_some() || !rest.is_empty()) {
        Some(a)
    } else {
        None
    }
}

fn emit_table(cx: &mut Ctx, rows: &[TableRow], aff: &Aff, out: &mut String) {
    // Special rows and the special first column (Org's spreadsheet markers) are dropped.
    let data_rows: Vec<&Vec<&str>> = rows
        .iter()
        .filter_map(|r| match r {
            TableRow::Cells(c) => Some(c),
            TableRow::Rule => None,
        })
        .collect();
    let special_col = !data_rows.is_empty()
        && data_rows.iter().all(|r| matches!(r.first().copied().unwrap_or(""), "" | "#" | "!" | "$" | "*" | "_" | "^" | "/"))
        && data_rows.iter().any(|r| !r.first().copied().unwrap_or("").is_empty());
    let mut ncols = 0;
    let mut aligns: Vec<Option<char>> = Vec::new();
    let mut groups: Vec<(bool, bool)> = Vec::new(); // colgroup start / end markers
    let mut kept: Vec<Option<Vec<&str>>> = Vec::new();
    for r in rows {
        match r {
            TableRow::Rule => kept.push(None),
            TableRow::Cells(cells) => {
                let first = cells_first(r);
                let cells: Vec<&str> = if special_col { cells.iter().skip(1).copied().collect() } else { cells.clone() };
                if special_col && matches!(first, "!" | "^" | "_" | "$") {
                    continue;
                }
                // A row starting with "/" defines column groups (it is never shown).
                if first == "/" {
                    groups = cells.iter().map(|c| (c.contains('<'), c.contains('>'))).collect();
                    continue;
                }
                if !cells.is_empty() && cells.iter().all(|c| c.is_empty() || cookie_align(c).is_some()) && cells.iter().any(|c| cookie_align(c).is_some()) {
                    if aligns.len() < cells.len() {
                        aligns.resize(cells.len(), None);
                    }
                    // Only a cookie with a letter aligns (Org: the last such cookie of the
                    // column wins); a width-only `<3>` leaves an earlier `<r>` in force.
                    for (k, c) in cells.iter().enumerate() {
                        if let Some(Some(a)) = cookie_align(c) {
                            aligns[k] = Some(a);
                        }
                    }
                    continue;
                }
                ncols = ncols.max(cells.len());
                kept.push(Some(cells));
            }
        }
    }
    if ncols == 0 {
        return;
    }
    ncols = ncols.min(1000);
    // Rows are padded to the widest row (as ox-html does) unless that would multiply the
    // output: one 1000-cell row over 100k one-cell rows must not become 100M cells.
    let present: usize = kept.iter().flatten().map(|r| r.len().min(ncols)).sum();
    let rows_n = kept.iter().flatten().count();
    let pad = rows_n.saturating_mul(ncols) <= present.saturating_mul(4).saturating_add(10_000);
    // Default alignment: right when most non-empty cells of the column are numbers
    // (counted row by row over the cells present: O(cells), not O(rows x columns)).
    let mut num = vec![0usize; ncols];
    let mut total = vec![0usize; ncols];
    for r in kept.iter().flatten() {
        for (k, c) in r.iter().enumerate().take(ncols) {
            if !c.is_empty() {
                total[k] += 1;
                if is_number(c) {
                    num[k] += 1;
                }
            }
        }
    }
    let mut col_align = vec!['l'; ncols];
    for k in 0..ncols {
        if let Some(Some(a)) = aligns.get(k) {
            col_align[k] = *a;
        } else if total[k] > 0 && num[k] * 2 >= total[k] {
            col_align[k] = 'r';
        }
    }
    let class_of = |a: char| match a {
        'r' => "org-right",
        'c' => "org-center",
        _ => "org-left",
    };
    // Header: the first row group when there are at least two (org-export-table-has-header-p);
    // groups are runs of rows between rules, so leading and doubled rules start none.
    let mut row_groups = 0usize;
    let mut prev_rule = true;
    for r in &kept {
        if r.is_some() && prev_rule {
            row_groups += 1;
        }
        prev_rule = r.is_none();
    }
    let has_header = row_groups >= 2;
    out.push_str("<table");
    id_attr(cx, aff, out);
    out.push_str(" border=\"2\" cellspacing=\"0\" cellpadding=\"6\" rules=\"groups\" frame=\"hsides\">\n");
    if let Some(cap) = &aff.caption {
        cx.table_count += 1;
        out.push_str("<caption class=\"t-above\"><span class=\"table-number\">Table ");
        out.push_str(&cx.table_count.to_string());
        out.push_str(":</span> ");
        let cap = cap.clone();
        render_inline(cx, &cap, out);
        out.push_str("</caption>\n");
    }
    out.push_str("\n<colgroup>");
    for k in 0..ncols {
        let (start, end) = groups.get(k).copied().unwrap_or((false, false));
        if start && k > 0 {
            out.push_str("\n</colgroup>\n\n<colgroup>");
        }
        out.push_str("\n<col  class=\"");
        out.push_str(class_of(col_align[k]));
        out.push_str("\" />");
        if end && k + 1 < ncols {
            out.push_str("\n</colgroup>\n\n<colgroup>");
        }
    }
    out.push_str("\n</colgroup>\n");
    let mut group_open = false;
    let mut in_header = has_header;
    for r in &kept {
        match r {
            None => {
                if group_open {
                    out.push_str(if in_header { "</thead>\n" } else { "</tbody>\n" });
                    group_open = false;
                    in_header = false;
                }
            }
            Some(cells) => {
                if !group_open {
                    out.push_str(if in_header { "<thead>\n" } else { "<tbody>\n" });
                    group_open = true;
                }
                out.push_str("<tr>\n");
                let width = if pad { ncols } else { cells.len().min(ncols) };
                for k in 0..width {
                    let cell = cells.get(k).copied().unwrap_or("");
                    if in_header {
                        out.push_str("<th scope=\"col\" class=\"");
                    } else {
                        out.push_str("<td class=\"");
                    }
                    out.push_str(class_of(col_align[k]));
                    out.push_str("\">");
                    render_inline(cx, cell, out);
                    out.push_str(if in_header { "</th>\n" } else { "</td>\n" });
                }
                out.push_str("</tr>\n");
            }
        }
    }
    if group_open {
        out.push_str(if in_header { "</thead>\n" } else { "</tbody>\n" });
    }
    out.push_str("</table>\n");
}

fn cells_first<'a>(r: &'a TableRow) -> &'a str {
    match r {
        TableRow::Cells(c) => c.first().copied().unwrap_or(""),
        TableRow::Rule => "",
    }
}

/// Code lines with `-n`/`+n` line numbers and coderefs `(ref:x)` removed (as ox-html does).
fn emit_code_lines(cx: &mut Ctx, lang: &str, switches: &str, body: &str, out: &mut String) {
    let numbered = switches.split_whitespace().any(|w| w == "-n" || w == "+n");
    let mut start = 1usize;
    let words: Vec<&str> = switches.split_whitespace().collect();
    for (k, w) in words.iter().enumerate() {
        if *w == "-n" || *w == "+n" {
            if let Some(v) = words.get(k + 1).and_then(|v| v.parse::<usize>().ok()) {
                start = v.min(1_000_000_000);
            }
        }
    }
    let body = if switches.split_whitespace().any(|w| w == "-r") { strip_coderefs(body) } else { body.to_string() };
    let body = body.strip_suffix('\n').unwrap_or(&body);
    if !numbered {
        super::highlight::highlight(lang, body, out, cx.o.highlight);
        out.push('\n');
        return;
    }
    let mut hl = String::new();
    super::highlight::highlight(lang, body, &mut hl, cx.o.highlight);
    let count = body.split('\n').count();
    let width = (start + count).to_string().len();
    for (k, line) in hl.split('\n').enumerate() {
        let n = (start + k).to_string();
        out.push_str("<span class=\"linenr\">");
        for _ in n.len()..width {
            out.push(' ');
        }
        out.push_str(&n);
        out.push_str(": </span>");
        out.push_str(line);
        out.push('\n');
    }
}

fn strip_coderefs(body: &str) -> String {
    if !body.contains("(ref:") {
        return body.to_string();
    }
    let mut s = String::with_capacity(body.len());
    for line in body.split_inclusive('\n') {
        let (content, nl) = match line.strip_suffix('\n') {
            Some(c) => (c, "\n"),
            None => (line, ""),
        };
        let te = content.trim_end();
        if te.ends_with(')') {
            if let Some(p) = te.rfind("(ref:") {
                let label = &te[p + 5..te.len() - 1];
                if !label.is_empty() && !label.contains(|c: char| c.is_whitespace() || c == '(' || c == ')') {
                    s.push_str(content[..p].trim_end());
                    s.push_str(nl);
                    continue;
                }
            }
        }
        s.push_str(line);
    }
    s
}

fn emit_src(cx: &mut Ctx, lang: &str, switches: &str, params: &str, body: &str, aff: &Aff, out: &mut String) {
    let exports = header_arg(params, ":exports");
    // Like Org with evaluation off, code is shown unless the author hid it (`:exports none`).
    if exports == Some("none") {
        return;
    }
    if lang.is_empty() {
        out.push_str("<pre class=\"example\"");
        id_attr(cx, aff, out);
        out.push_str(">\n");
        emit_code_lines(cx, "", switches, body, out);
        out.push_str("</pre>\n");
        return;
    }
    out.push_str("<div class=\"org-src-container\">\n");
    if let Some(cap) = &aff.caption {
        cx.listing_count += 1;
        out.push_str("<label class=\"org-src-name\"><span class=\"listing-number\">Listing ");
        out.push_str(&cx.listing_count.to_string());
        out.push_str(": </span>");
        let cap = cap.clone();
        render_inline(cx, &cap, out);
        out.push_str("</label>");
    }
    out.push_str("<pre class=\"src src-");
    esc(out, lang);
    out.push('"');
    id_attr(cx, aff, out);
    out.push('>');
    emit_code_lines(cx, lang, switches, body, out);
    out.push_str("</pre>\n</div>\n");
}

/// An image with its `#+ATTR_HTML:` attributes, merged as ox-html does: the lines are joined
/// last line first (`org-export-read-attribute` over the affiliated keyword's list), read as a
/// plist (`:key value…`; a value `nil` or nothing drops the attribute), and laid over
/// `(:src … :alt …)`: a key already present keeps its place and takes the later value, a new
/// key is appended. Safety rule: event handlers (`on…`) and URL-bearing attributes (`src`,
/// `srcset`, `href`, …) are never written, names must be `[A-Za-z][-A-Za-z0-9_]*`, and `style`
/// keeps only declarations that pass `safe_css_declaration`; values are always escaped.
pub fn push_img_with_attrs(out: &mut String, src: &str, lines: &[&str], cx: &Ctx) {
    let mut img = String::new();
    push_img(&mut img, src, cx);
    // The default `alt` push_img chose: between ` alt="` and the closing `" />`.
    let alt_at = img.find("\" alt=\"").map(|p| p + 7).unwrap_or(img.len());
    let default_alt = img[alt_at..img.len().saturating_sub(4)].to_string();
    let mut joined = String::new();
    for l in lines.iter().rev() {
        if !joined.is_empty() {
            joined.push(' ');
        }
        joined.push_str(l);
    }
    let mut attrs: Vec<(String, Option<String>)> = vec![("alt".into(), None)];
    let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    index.insert("alt".into(), 0);
    let mut alt_set = false;
    for (k, v) in read_attribute_plist(&joined) {
        if k == "src" {
            continue;
        }
        if k == "alt" {
            alt_set = true;
        }
        match index.get(k) {
            Some(&i) => attrs[i].1 = v.map(str::to_string),
            None => {
                index.insert(k.to_string(), attrs.len());
                attrs.push((k.to_string(), v.map(str::to_string)));
            }
        }
    }
    out.push_str(&img[..alt_at.saturating_sub(6)]);
    for (k, v) in &attrs {
        let v = if k == "alt" && !alt_set { Some(default_alt.clone()) } else { v.clone() };
        let v = match v {
            Some(v) => v,
            None => continue,
        };
        let low = k.to_ascii_lowercase();
        let name_ok = k.as_bytes()[0].is_ascii_alphabetic() && k.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
        if !name_ok || low.starts_with("on") || matches!(low.as_str(), "src" | "srcset" | "href" | "xlink" | "lowsrc" | "dynsrc" | "longdesc" | "background" | "ping" | "formaction" | "action" | "xmlns") {
            continue;
        }
        let v = if low == "style" {
            let kept: Vec<&str> = v.split(';').filter(|d| d.trim().is_empty() || safe_css_declaration(d)).collect();
            if kept.iter().all(|d| d.trim().is_empty()) {
                continue;
            }
            kept.join(";")
        } else if k == "alt" && !alt_set {
            out.push_str(" alt=\"");
            out.push_str(&v); // already escaped by push_img
            out.push('"');
            continue;
        } else {
            v
        };
        out.push(' ');
        out.push_str(k);
        out.push_str("=\"");
        esc(out, &v);
        out.push('"');
    }
    out.push_str(" />");
}

/// `org-export-read-attribute`: `:key value …` pairs; keys are `:[-a-zA-Z0-9_]+` standing
/// alone between blanks, a value is the text up to the next key, `""`/`nil` meaning none.
fn read_attribute_plist<'s>(s: &'s str) -> Vec<(&'s str, Option<&'s str>)> {
    let mut out: Vec<(&'s str, Option<&'s str>)> = Vec::new();
    let mut val_start: Option<usize> = None;
    let b = s.as_bytes();
    let mut i = 0;
    let close = |out: &mut Vec<(&'s str, Option<&'s str>)>, from: Option<usize>, to: usize| {
        if let (Some(f), Some(last)) = (from, out.last_mut()) {
            let v = s[f.min(to)..to].trim_matches(|c| c == ' ' || c == '\t');
            last.1 = if v.is_empty() || v == "nil" { None } else { Some(v) };
        }
    };
    while i < b.len() {
        let at_word = i == 0 || b[i - 1] == b' ' || b[i - 1] == b'\t';
        if at_word && b[i] == b':' {
            let mut e = i + 1;
            while e < b.len() && (b[e].is_ascii_alphanumeric() || b[e] == b'-' || b[e] == b'_') {
                e += 1;
            }
            if e > i + 1 && (e == b.len() || b[e] == b' ' || b[e] == b'\t') {
                close(&mut out, val_start, i);
                out.push((&s[i + 1..e], None));
                val_start = Some(e);
                i = e;
                continue;
            }
        }
        i += 1;
    }
    close(&mut out, val_start, b.len());
    out
}

/// A CSS declaration kept in an image's `style`: `property: value` with a plain property name
/// and nothing that loads, runs or escapes (`url(`, `expression(`, `image-set(`, `@`, `\\`,
/// comments, `javascript:`, `behavior`, `-moz-binding`), and no `position`, which could lay
/// the image over the page around it.
fn safe_css_declaration(d: &str) -> bool {
    let (prop, val) = match d.find(':') {
        Some(p) => (d[..p].trim(), &d[p + 1..]),
        None => return false,
    };
    let prop_l = prop.to_ascii_lowercase();
    if prop.is_empty() || !prop.bytes().all(|c| c.is_ascii_alphabetic() || c == b'-') || matches!(prop_l.as_str(), "position" | "behavior" | "-moz-binding") {
        return false;
    }
    let v: String = val.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_ascii_lowercase();
    !(v.contains("url(") || v.contains("expression(") || v.contains("image-set(") || v.contains("image(") || v.contains('@') || v.contains('\\') || v.contains("/*") || v.contains("javascript:") || v.contains('<') || v.contains('>'))
}

fn header_arg<'p>(params: &'p str, key: &str) -> Option<&'p str> {
    let mut it = params.split_whitespace();
    while let Some(w) = it.next() {
        if w.eq_ignore_ascii_case(key) {
            return it.next();
        }
    }
    None
}

/// The planning line as org-html-planning writes it: one wrapper, CLOSED, DEADLINE then
/// SCHEDULED, each timestamp interpreted like any other (and keeping its trailing blanks).
pub fn emit_planning(cx: &mut Ctx, line: &str, out: &mut String) {
    out.push_str("<p><span class=\"timestamp-wrapper\">");
    let mut first = true;
    for kw in ["CLOSED:", "DEADLINE:", "SCHEDULED:"] {
        if let Some(p) = line.find(kw) {
            let rest = line[p + kw.len()..].trim_start();
            let close = match rest.as_bytes().first() {
                Some(b'<') => '>',
                Some(b'[') => ']',
                _ => continue,
            };
            if let Some(e) = rest.find(close) {
                if !first {
                    out.push(' ');
                }
                first = false;
                out.push_str("<span class=\"timestamp-kwd\">");
                out.push_str(kw);
                out.push_str("</span> <span class=\"timestamp\">");
                if !super::timestamp::push_interpreted(out, &rest[..=e]) {
                    esc_text(out, &rest[..=e]);
                }
                let blanks = rest[e + 1..].bytes().take_while(|&c| c == b' ' || c == b'\t').count();
                for _ in 0..blanks {
                    out.push(' ');
                }
                out.push_str("</span>");
            }
        }
    }
    let _ = cx;
    out.push_str("</span></p>\n");
}
