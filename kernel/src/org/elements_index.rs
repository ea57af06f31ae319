//! Where blocks, drawers and environments end, indexed once per section so that looking up
//! the end of an opener costs a binary search (an unclosed opener repeated N times stays
//! linear, unlike Org's forward search per opener).

use super::scan::{line_at, skip_blank, starts_with_ci};

/// Closing lines of one section, sorted by (kind, lower-cased name, position).
pub struct Ends {
    entries: Vec<(u8, Vec<u8>, usize, usize)>, // (kind, name, line start, next line)
}

impl Ends {
    /// `#+END_NAME` (a block's end, exact line).
    pub const BLOCK: u8 = 0;
    /// `#+END:` or `#+END` (a dynamic block's end).
    pub const DYNAMIC: u8 = 1;
    /// `\end{NAME}` (a LaTeX environment's end).
    pub const LATEX: u8 = 2;
    /// `:END:` alone on its line (a drawer's end).
    pub const DRAWER: u8 = 3;

    /// Index the closing lines of `[from, to)`.
    pub fn build(b: &[u8], from: usize, to: usize) -> Ends {
        let mut entries = Vec::new();
        let mut pos = from;
        while pos < to {
            let l = line_at(b, pos);
            let le = l.end.min(to);
            let p = skip_blank(b, l.start, le);
            let mut e = le;
            while e > p && (b[e - 1] == b' ' || b[e - 1] == b'\t') {
                e -= 1;
            }
            if p < e {
                match b[p] {
                    b'#' if starts_with_ci(b, p, e, b"#+END") => {
                        let r = &b[p + 5..e];
                        if r.is_empty() || r == b":" {
                            entries.push((Self::DYNAMIC, Vec::new(), l.start, l.next));
                        } else if r[0] == b'_' {
                            if r.len() > 1 {
                                entries.push((Self::BLOCK, r[1..].to_ascii_lowercase(), l.start, l.next));
                            }
                        }
                    }
                    b'\\' if b[p..e].starts_with(b"\\end{") && b[e - 1] == b'}' && e > p + 6 => {
                        entries.push((Self::LATEX, b[p + 5..e - 1].to_vec(), l.start, l.next));
                    }
                    b':' if b[p..e].eq_ignore_ascii_case(b":END:") => {
                        entries.push((Self::DRAWER, Vec::new(), l.start, l.next));
                    }
                    _ => {}
                }
            }
            if l.next <= pos {
                break;
            }
            pos = l.next;
        }
        entries.sort_unstable_by(|x, y| (x.0, &x.1, x.2).cmp(&(y.0, &y.1, y.2)));
        Ends { entries }
    }

    /// The first closing line of `kind` named `b[name]` (ASCII case-insensitive; LaTeX
    /// names are case-sensitive) starting in `[from, limit)`: (line start, next line).
    pub fn find(&self, b: &[u8], kind: u8, name: (usize, usize), from: usize, limit: usize) -> Option<(usize, usize)> {
        let raw = &b[name.0..name.1];
        let key: Vec<u8> = if kind == Self::LATEX { raw.to_vec() } else { raw.to_ascii_lowercase() };
        let k = self.entries.partition_point(|e| (e.0, e.1.as_slice(), e.2) < (kind, key.as_slice(), from));
        match self.entries.get(k) {
            Some(e) if e.0 == kind && e.1 == key && e.2 < limit => Some((e.2, e.3.min(limit))),
            _ => None,
        }
    }
}
