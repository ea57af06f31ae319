//! Plain-list structure as org-list computes it (Org 9.5 `org-list-struct`): items are
//! lines with a bullet; an item ends at the next line indented no deeper than its bullet
//! (blank lines aside, blocks and drawers skipped whole), and the whole list ends before a
//! line indented no deeper than its top items, before two blank lines, or at the limit.
//! One forward pass with a stack of open items computes every nested list at once, so
//! deeply nested lists stay linear.

use super::elements_index::Ends;
use super::scan::{line_at, skip_blank};
use std::collections::HashMap;

/// Where an item ends, where its list (its run of siblings) ends, and its next sibling.
#[derive(Clone, Debug)]
pub struct ItemStruct {
    pub end: usize,
    pub list_end: usize,
    pub next: Option<usize>,
}

/// Item structures by the offset of their bullet line.
#[derive(Default)]
pub struct ListStructs {
    map: HashMap<usize, ItemStruct>,
}

impl ListStructs {
    pub fn get(&self, pos: usize) -> Option<&ItemStruct> {
        self.map.get(&pos)
    }
}

/// Indentation of the line `[start, le)` in columns (tab stops every 8, as Emacs).
fn indentation(b: &[u8], start: usize, le: usize) -> usize {
    let mut col = 0;
    for &c in &b[start..le] {
        match c {
            b' ' => col += 1,
            b'\t' => col = (col / 8 + 1) * 8,
            _ => break,
        }
    }
    col
}

/// End of the bullet at `p` (its last byte + 1), when the line has one there.
fn bullet_end(b: &[u8], start: usize, p: usize, le: usize) -> Option<usize> {
    if p >= le {
        return None;
    }
    let q = match b[p] {
        b'-' | b'+' => p + 1,
        b'*' if p > start => p + 1,
        b'0'..=b'9' => {
            let mut q = p;
            while q < le && b[q].is_ascii_digit() {
                q += 1;
            }
            if q < le && (b[q] == b'.' || b[q] == b')') {
                q + 1
            } else {
                return None;
            }
        }
        _ => return None,
    };
    if q == le || b[q] == b' ' || b[q] == b'\t' {
        Some(q)
    } else {
        None
    }
}

/// Org's `org-item-re` on the line `[start, le)`.
pub fn is_item(b: &[u8], start: usize, le: usize) -> bool {
    bullet_end(b, start, skip_blank(b, start, le), le).is_some()
}

/// An item line cracked like `org-list-full-item-re`.
pub struct Bullet {
    pub bullet: (usize, usize),
    pub counter: Option<(usize, usize)>,
    /// `X`, ` ` or `-`.
    pub checkbox: Option<u8>,
    pub tag: Option<(usize, usize)>,
    /// Where the item's contents may start on the bullet line.
    pub contents: usize,
}

pub fn crack_item(b: &[u8], start: usize, le: usize) -> Bullet {
    let p = skip_blank(b, start, le);
    let be = bullet_end(b, start, p, le).unwrap_or(p);
    let mut q = skip_blank(b, be, le);
    let bullet_span_end = q;
    let mut counter = None;
    if b[q..le].starts_with(b"[@") {
        let mut s = q + 2;
        if b[s..le].starts_with(b"start:") {
            s += 6;
        }
        let mut e = s;
        while e < le && b[e].is_ascii_digit() {
            e += 1;
        }
        if e == s && e < le && b[e].is_ascii_alphabetic() {
            e += 1;
        }
        if e > s && e < le && b[e] == b']' {
            counter = Some((s, e));
            q = skip_blank(b, e + 1, le);
        }
    }
    let mut checkbox = None;
    if q + 2 < le && b[q] == b'[' && matches!(b[q + 1], b' ' | b'X' | b'-') && b[q + 2] == b']' && (q + 3 == le || b[q + 3] == b' ' || b[q + 3] == b'\t') {
        checkbox = Some(b[q + 1]);
        q = skip_blank(b, q + 3, le);
    }
    // `(.*)[ \t]+::([ \t]+|$)`: the last such `::` on the line.
    // (a description tag only after an unordered bullet)
    let mut tag = None;
    let mut k = if matches!(b[p], b'-' | b'+' | b'*') { le } else { 0 };
    while k >= q + 3 {
        let c = k - 2; // candidate `::` at c
        if &b[c..k] == b"::" && (k == le || b[k] == b' ' || b[k] == b'\t') && (b[c - 1] == b' ' || b[c - 1] == b'\t') {
            let mut te = c - 1;
            while te > q && (b[te - 1] == b' ' || b[te - 1] == b'\t') {
                te -= 1;
            }
            tag = Some((q, te));
            q = skip_blank(b, k, le);
            break;
        }
        k -= 1;
    }
    Bullet { bullet: (p, bullet_span_end), counter, checkbox, tag, contents: q }
}

/// `:NAME:` alone on its line (Org's drawer regexp).
fn is_drawer_line(b: &[u8], p: usize, le: usize) -> bool {
    let mut e = le;
    while e > p && (b[e - 1] == b' ' || b[e - 1] == b'\t') {
        e -= 1;
    }
    e >= p + 3 && b[p] == b':' && b[e - 1] == b':' && b[p + 1..e - 1].iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c >= 0x80)
}

/// Start of the line after the last non-blank line of `[from, to)`.
fn end_before_blank(b: &[u8], from: usize, to: usize) -> usize {
    let mut e = to;
    while e > from && matches!(b[e - 1], b' ' | b'\t' | b'\n') {
        e -= 1;
    }
    if e == from {
        return from;
    }
    line_at(b, e).next.min(to)
}

/// Compute the structure of the list whose first item is at `pos`, bounded by `limit`.
pub fn compute(b: &[u8], pos: usize, limit: usize, ends: &Ends, out: &mut ListStructs) {
    struct It {
        start: usize,
        ind: usize,
        end: usize,
        next: Option<usize>,
        next_idx: Option<usize>,
    }
    let mut items: Vec<It> = Vec::new();
    let mut stack: Vec<usize> = Vec::new();
    // last[d]: the last item opened at depth d (its next sibling is the next one there)
    let mut last: Vec<Option<usize>> = vec![None];
    let mut at = pos;
    let list_end;
    loop {
        if at >= limit {
            list_end = end_before_blank(b, pos, limit);
            break;
        }
        let l = line_at(b, at);
        let le = l.end.min(limit);
        let next = l.next.min(limit);
        let p = skip_blank(b, l.start, le);
        if p == le {
            if next < limit {
                let m = line_at(b, next);
                if skip_blank(b, m.start, m.end.min(limit)) == m.end.min(limit) {
                    list_end = at;
                    break;
                }
            }
            at = next;
            continue;
        }
        let ind = indentation(b, l.start, le);
        if bullet_end(b, l.start, p, le).is_some() {
            // A new item ends the items indented at least as deep, at its own line.
            while let Some(&top) = stack.last() {
                if items[top].ind < ind {
                    break;
                }
                items[top].end = at;
                stack.pop();
            }
            let d = stack.len();
            last.truncate(d + 1);
            let idx = items.len();
            // Siblings share their indentation (else a new list starts, as org-list's prevs).
            if let Some(prev) = last[d].filter(|&p| items[p].ind == ind) {
                items[prev].next = Some(at);
                items[prev].next_idx = Some(idx);
            }
            last[d] = Some(idx);
            last.push(None);
            items.push(It { start: at, ind, end: 0, next: None, next_idx: None });
            stack.push(idx);
            at = next;
            continue;
        }
        // A text line ends the items indented at least as deep, before the blank lines above it.
        let before = end_before_blank(b, pos, at);
        while let Some(&top) = stack.last() {
            if items[top].ind < ind {
                break;
            }
            items[top].end = before;
            stack.pop();
        }
        if stack.is_empty() {
            list_end = before;
            break;
        }
        // An item ended by text is nobody's previous sibling (Org pairs an item with the one
        // that ends where it begins): a later item at this depth starts a new list.
        last.truncate(stack.len() + 1);
        last[stack.len()] = None;
        // A block (to its own `#+END_NAME`/`#+END:`) or drawer (to `:END:`) is skipped whole.
        if super::scan::starts_with_ci(b, p, le, b"#+BEGIN_") {
            let ns = p + 8;
            let mut ne = ns;
            while ne < le && !super::scan::is_ws(b[ne]) {
                ne += 1;
            }
            if ne > ns {
                if let Some((_, n)) = ends.find(b, Ends::BLOCK, (ns, ne), next, limit) {
                    at = n;
                    continue;
                }
            }
        } else if super::scan::starts_with_ci(b, p, le, b"#+BEGIN:") {
            if let Some((_, n)) = ends.find(b, Ends::DYNAMIC, (0, 0), next, limit) {
                at = n;
                continue;
            }
        } else if is_drawer_line(b, p, le) {
            if let Some((_, n)) = ends.find(b, Ends::DRAWER, (0, 0), l.start, limit) {
                at = n;
                continue;
            }
        }
        at = next;
    }
    for &i in &stack {
        items[i].end = list_end;
    }
    // A run of siblings ends with its last item.
    let mut list_ends = vec![0; items.len()];
    for i in (0..items.len()).rev() {
        list_ends[i] = match items[i].next_idx {
            Some(n) => list_ends[n],
            None => items[i].end,
        };
    }
    for (i, it) in items.iter().enumerate() {
        out.map.insert(it.start, ItemStruct { end: it.end, list_end: list_ends[i], next: it.next });
    }
}
