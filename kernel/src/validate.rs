//! validate: diagnostics `[{level, message, scope}]` over every world of the plan
//! (nested ones included, document order). Errors: a component without a source block
//! or language, an input nobody produces, two producers of one output, duplicate
//! component names, a dependency cycle, an invalid SCHEDULE cron. Warnings: header
//! arguments neither Org nor the workbook model knows.
use crate::json::push_str;
use crate::org::plan::{self, Schedule};
use crate::org::{cron, outline};

pub struct Diag {
    pub level: &'static str,
    pub scope: String,
    pub message: String,
}

pub fn write_diags(diags: &[Diag]) -> String {
    let mut out = String::from("[");
    for (i, d) in diags.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"level\":");
        push_str(&mut out, d.level);
        out.push_str(",\"message\":");
        push_str(&mut out, &d.message);
        out.push_str(",\"scope\":");
        push_str(&mut out, &d.scope);
        out.push('}');
    }
    out.push(']');
    out
}

fn err(scope: &str, message: String) -> Diag {
    Diag { level: "error", scope: scope.to_string(), message }
}

pub fn validate_json(org: &str) -> String {
    let text = crate::org::scan::normalize_eol(org);
    let sk = outline::skeleton(&text);
    let p = plan::build(&sk);
    let mut diags = Vec::new();
    for w in &p.worlds {
        let wiring = plan::wiring(w);
        let mut outs: Vec<(&str, usize)> = w.components.iter().enumerate().filter_map(|(i, c)| c.output.as_deref().map(|o| (o, i))).collect();
        outs.sort();
        for c in &w.components {
            if c.lang.map(|l| l.is_empty()).unwrap_or(true) {
                diags.push(err(c.name, "component has no source block / language".to_string()));
            }
            for k in &c.unknown_args {
                diags.push(Diag { level: "warning", scope: c.name.to_string(), message: format!("unknown header argument `{}`", k) });
            }
            if let Some(inp) = c.input.as_deref() {
                if outs.binary_search_by(|(o, _)| (*o).cmp(inp)).is_err() {
                    diags.push(err(c.name, format!("input `{}` has no upstream producer", inp)));
                }
            }
        }
        let mut k = 0;
        while k < outs.len() {
            let mut j = k + 1;
            while j < outs.len() && outs[j].0 == outs[k].0 {
                j += 1;
            }
            if j - k > 1 {
                let mut ids: Vec<usize> = outs[k..j].iter().map(|&(_, i)| i).collect();
                ids.sort_unstable();
                let names: Vec<&str> = ids.iter().map(|&i| w.components[i].name).collect();
                diags.push(err(w.name, format!("output `{}` has more than one producer: {}", outs[k].0, names.join(", "))));
            }
            k = j;
        }
        let mut names: Vec<(&str, usize)> = w.components.iter().enumerate().map(|(i, c)| (c.name, i)).collect();
        names.sort();
        let mut k = 0;
        while k < names.len() {
            let mut j = k + 1;
            while j < names.len() && names[j].0 == names[k].0 {
                j += 1;
            }
            if j - k > 1 {
                diags.push(err(w.name, format!("duplicate component name `{}` ({} components)", names[k].0, j - k)));
            }
            k = j;
        }
        let cyc = plan::cyclic(w, &wiring.edges);
        if !cyc.is_empty() {
            let names: Vec<&str> = cyc.iter().map(|&i| w.components[i].name).collect();
            diags.push(err(w.name, format!("cycle in edges between components: {}", names.join(", "))));
        }
        if let Schedule::Cron(c) = &w.schedule {
            if let Err(why) = cron::validate(c) {
                diags.push(err(w.name, format!("invalid cron expression `{}` in SCHEDULE: {}", c.trim(), why)));
            }
        }
    }
    write_diags(&diags)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn seed_lint_example() {
        let org = "* pipe :workflow:\n** step :component:\n#+begin_src js :in nonexistent :out result\nexport function run(x){return x}\n#+end_src\n";
        assert_eq!(validate_json(org), r#"[{"level":"error","message":"input `nonexistent` has no upstream producer","scope":"step"}]"#);
    }
    #[test]
    fn all_rules_fire() {
        let org = "* w :workflow:\n:PROPERTIES:\n:SCHEDULE: 61 * * * *\n:END:\n** a :component:\n#+begin_src py :in y :out x :frobnicate 1 :results silent\n#+end_src\n** b :component:\n#+begin_src py :in x :out y\n#+end_src\n** b :component:\n#+begin_src py :out y\n#+end_src\n** nolang :component:\n";
        let out = validate_json(org);
        for needle in ["unknown header argument `:frobnicate`", "output `y` has more than one producer: b, b", "duplicate component name `b`", "cycle in edges between components: a, b", "invalid cron expression `61 * * * *`", "\"scope\":\"nolang\""] {
            assert!(out.contains(needle), "{} missing in {}", needle, out);
        }
        assert!(!out.contains(":results"));
    }
}
