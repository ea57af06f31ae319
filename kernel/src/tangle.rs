//! tangle_plan: `{"worlds":[…]}`: each world `{components, edges, exports, imports, name,
//! schedule, workflows}`, each component `{deps, dir, in, lang, name, out, persist, src,
//! uses}` (keys sorted). Nested worlds are written with an explicit stack.
use crate::json::{push_opt_str, push_str};
use crate::org::outline;
use crate::org::plan::{self, Plan, Schedule, World};

pub fn tangle_plan_json(org: &str) -> String {
    let text = crate::org::scan::normalize_eol(org);
    let sk = outline::skeleton(&text);
    let p = plan::build(&sk);
    let mut out = String::with_capacity(256);
    out.push_str("{\"worlds\":[");
    write_worlds(&mut out, &p, &p.roots);
    out.push_str("]}");
    out
}

fn push_str_array(out: &mut String, items: &[String]) {
    out.push('[');
    for (i, s) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_str(out, s);
    }
    out.push(']');
}

/// Everything of a world up to (and including) the opening of its `workflows` array.
fn write_world_head(out: &mut String, w: &World) {
    let wiring = plan::wiring(w);
    out.push_str("{\"components\":[");
    for (i, c) in w.components.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"deps\":");
        push_str_array(out, &c.deps);
        out.push_str(",\"dir\":");
        push_opt_str(out, c.dir.as_deref());
        out.push_str(",\"in\":");
        push_opt_str(out, c.input.as_deref());
        out.push_str(",\"lang\":");
        push_opt_str(out, c.lang);
        out.push_str(",\"name\":");
        push_str(out, c.name);
        out.push_str(",\"out\":");
        push_opt_str(out, c.output.as_deref());
        out.push_str(",\"persist\":");
        out.push_str(if c.persist { "true" } else { "false" });
        out.push_str(",\"src\":");
        push_str(out, &c.src);
        out.push_str(",\"uses\":");
        push_str_array(out, &c.uses);
        out.push('}');
    }
    out.push_str("],\"edges\":[");
    for (i, &(a, b)) in wiring.edges.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"from\":");
        push_str(out, w.components[a].name);
        out.push_str(",\"to\":");
        push_str(out, w.components[b].name);
        out.push('}');
    }
    out.push_str("],\"exports\":");
    push_str_array(out, &wiring.exports);
    out.push_str(",\"imports\":");
    push_str_array(out, &wiring.imports);
    out.push_str(",\"name\":");
    push_str(out, w.name);
    out.push_str(",\"schedule\":");
    match &w.schedule {
        Schedule::Cron(c) => {
            out.push_str("{\"cron\":");
            push_str(out, c);
            out.push('}');
        }
        Schedule::At(t) => t.write_json(out),
        Schedule::None => out.push_str("null"),
    }
    out.push_str(",\"workflows\":[");
}

fn write_worlds(out: &mut String, p: &Plan, roots: &[usize]) {
    // Stack of (children list, next index): depth-first without recursion.
    let mut stack: Vec<(&[usize], usize)> = vec![(roots, 0)];
    while let Some(top) = stack.last_mut() {
        let (list, i) = *top;
        if i >= list.len() {
            stack.pop();
            if !stack.is_empty() {
                out.push_str("]}");
            }
            continue;
        }
        top.1 += 1;
        if i > 0 {
            out.push(',');
        }
        let w = &p.worlds[list[i]];
        write_world_head(out, w);
        stack.push((&w.children, 0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn seed_tangle_example() {
        let org = "* daily digest :workflow:\n  :PROPERTIES:\n  :SCHEDULE: 0 7 * * *\n  :END:\n** fetch :component:\n#+begin_src js :uses http :out raw\nexport async function run() { return fetch_feed(); }\n#+end_src\n** summarize :component:\n#+begin_src js :in raw :out digest\nexport function run(raw) { return summarize(raw); }\n#+end_src\n";
        let out = tangle_plan_json(org);
        assert!(out.contains(r#""edges":[{"from":"fetch","to":"summarize"}],"exports":["digest"],"imports":["http"],"name":"daily digest","schedule":{"cron":"0 7 * * *"},"workflows":[]"#), "{}", out);
    }
    #[test]
    fn nested_worlds_deep() {
        let mut org = String::new();
        for i in 1..=3000 {
            org.push_str(&"*".repeat(i));
            org.push_str(" w :workflow:\n");
        }
        let out = tangle_plan_json(&org);
        assert_eq!(out.matches("\"name\":\"w\"").count(), 3000);
        assert!(out.ends_with(&"]}".repeat(3001)));
    }
}
