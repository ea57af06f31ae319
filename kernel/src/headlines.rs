//! parse_headlines: one JSON row per headline, document order, keys sorted:
//! `{closed, deadline, id, level, line, priority, props, scheduled, state, tags, title}`.
use crate::json::{push_opt_str, push_str, push_usize};
use crate::org::outline::{self, Headline};
use crate::org::timestamp::Timestamp;

pub fn parse_headlines_json(org: &str) -> String {
    // Rows are written as headlines are cracked: memory is the output plus one row.
    let text = crate::org::scan::normalize_eol(org);
    let sk = outline::skeleton(&text);
    let n = sk.len();
    // a row is ~150 bytes of keys and nulls plus its text
    let mut out = String::with_capacity(2 + n * 170 + (org.len() / 8).min(n * 64));
    out.push('[');
    for i in 0..n {
        if i > 0 {
            out.push(',');
        }
        write_row(&mut out, &sk.headline(i));
    }
    out.push(']');
    out
}

fn push_ts(out: &mut String, ts: &Option<Timestamp>) {
    match ts {
        Some(t) => t.write_json(out),
        None => out.push_str("null"),
    }
}


/// Properties as a JSON object: keys sorted, the last of duplicate keys wins.
pub fn write_props(out: &mut String, props: &[(String, &str)]) {
    out.push('{');
    if props.len() == 1 {
        push_str(out, &props[0].0);
        out.push(':');
        push_str(out, props[0].1);
    } else if !props.is_empty() {
        let mut idx: Vec<usize> = (0..props.len()).collect();
        idx.sort_by(|&a, &b| props[a].0.cmp(&props[b].0).then(a.cmp(&b)));
        let mut first = true;
        for (k, &i) in idx.iter().enumerate() {
            if k + 1 < idx.len() && props[idx[k + 1]].0 == props[i].0 {
                continue;
            }
            if !first {
                out.push(',');
            }
            first = false;
            push_str(out, &props[i].0);
            out.push(':');
            push_str(out, props[i].1);
        }
    }
    out.push('}');
}

fn write_row(out: &mut String, h: &Headline) {
    out.push_str("{\"closed\":");
    push_ts(out, &h.planning.closed);
    out.push_str(",\"deadline\":");
    push_ts(out, &h.planning.deadline);
    out.push_str(",\"id\":");
    push_opt_str(out, h.prop("ID"));
    out.push_str(",\"level\":");
    push_usize(out, h.level);
    out.push_str(",\"line\":");
    push_usize(out, h.line);
    out.push_str(",\"priority\":");
    push_opt_str(out, h.priority);
    out.push_str(",\"props\":");
    write_props(out, &h.props);
    out.push_str(",\"scheduled\":");
    push_ts(out, &h.planning.scheduled);
    out.push_str(",\"state\":");
    push_opt_str(out, h.todo);
    out.push_str(",\"tags\":[");
    for (i, t) in h.tags.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_str(out, t);
    }
    out.push_str("],\"title\":");
    push_str(out, h.title);
    out.push('}');
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn seed_query_example() {
        let out = parse_headlines_json("* hello :tag1:\n");
        assert_eq!(out, r#"[{"closed":null,"deadline":null,"id":null,"level":1,"line":1,"priority":null,"props":{},"scheduled":null,"state":null,"tags":["tag1"],"title":"hello"}]"#);
        let out = parse_headlines_json("* hello :tag1:\n** TODO child\nSCHEDULED: <2026-06-15 +1w>\n");
        assert!(out.contains(r#""scheduled":{"active":true,"at":"2026-06-15","repeat":"+1w"},"state":"TODO","tags":[],"title":"child""#), "{}", out);
    }
    #[test]
    fn props_sorted_last_wins() {
        let out = parse_headlines_json("* a\n:PROPERTIES:\n:b: 1\n:A: 2\n:B: 3\n:ID: z\n:END:\n");
        assert!(out.contains(r#""id":"z""#));
        assert!(out.contains(r#""props":{"A":"2","B":"3","ID":"z"}"#), "{}", out);
    }
}
