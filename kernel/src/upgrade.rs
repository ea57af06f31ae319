//! check_upgrade: breaking changes between two versions of a workbook, world by world
//! (matched by name): a removed workflow, a removed export, a changed component output
//! (errors) and a newly required capability (warning). `[]` means the upgrade is safe.
use crate::org::outline;
use crate::org::plan::{self, Plan};
use crate::validate::{write_diags, Diag};

struct Sig {
    name: String,
    exports: Vec<String>,
    imports: Vec<String>,
    outs: Vec<(String, Option<String>)>, // component name -> output, sorted by name
}

fn sigs(p: &Plan) -> Vec<Sig> {
    let mut v: Vec<Sig> = p
        .worlds
        .iter()
        .map(|w| {
            let wiring = plan::wiring(w);
            let mut outs: Vec<(String, Option<String>)> = w.components.iter().map(|c| (c.name.to_string(), c.output.clone())).collect();
            outs.sort_by(|a, b| a.0.cmp(&b.0));
            outs.dedup_by(|a, b| a.0 == b.0);
            Sig { name: w.name.to_string(), exports: wiring.exports, imports: wiring.imports, outs }
        })
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v.dedup_by(|a, b| a.name == b.name);
    v
}

pub fn check_upgrade_json(old: &str, new: &str) -> String {
    let (t1, t2) = (crate::org::scan::normalize_eol(old), crate::org::scan::normalize_eol(new));
    let (o1, o2) = (outline::skeleton(&t1), outline::skeleton(&t2));
    let (old_s, new_s) = (sigs(&plan::build(&o1)), sigs(&plan::build(&o2)));
    let mut diags = Vec::new();
    for os in &old_s {
        let ns = match new_s.binary_search_by(|s| s.name.as_str().cmp(&os.name)) {
            Ok(i) => &new_s[i],
            Err(_) => {
                diags.push(Diag { level: "error", scope: os.name.clone(), message: "workflow removed (breaking)".to_string() });
                continue;
            }
        };
        for e in &os.exports {
            if ns.exports.binary_search(e).is_err() {
                diags.push(Diag { level: "error", scope: os.name.clone(), message: format!("export `{}` removed (breaking)", e) });
            }
        }
        for i in &ns.imports {
            if os.imports.binary_search(i).is_err() {
                diags.push(Diag { level: "warning", scope: os.name.clone(), message: format!("new capability `{}` now required", i) });
            }
        }
        for (c, out) in &os.outs {
            if let Ok(k) = ns.outs.binary_search_by(|(n, _)| n.as_str().cmp(c)) {
                if &ns.outs[k].1 != out {
                    diags.push(Diag { level: "error", scope: os.name.clone(), message: format!("component `{}` output type changed (breaking)", c) });
                }
            }
        }
    }
    write_diags(&diags)
}

#[cfg(test)]
mod tests {
    use super::*;
    const OLD: &str = "* etl :workflow:\n** extract :component:\n#+begin_src rust :out raw\n#+end_src\n** load :component:\n#+begin_src rust :in raw :out table\n#+end_src\n* gone :workflow:\n";
    #[test]
    fn identical_is_safe() {
        assert_eq!(check_upgrade_json(OLD, OLD), "[]");
    }
    #[test]
    fn breaking_changes() {
        let new = "* etl :workflow:\n** extract :component:\n#+begin_src rust :uses net :out raw2\n#+end_src\n** load :component:\n#+begin_src rust :in raw2\n#+end_src\n";
        let out = check_upgrade_json(OLD, new);
        assert_eq!(out, r#"[{"level":"error","message":"export `table` removed (breaking)","scope":"etl"},{"level":"warning","message":"new capability `net` now required","scope":"etl"},{"level":"error","message":"component `extract` output type changed (breaking)","scope":"etl"},{"level":"error","message":"component `load` output type changed (breaking)","scope":"etl"},{"level":"error","message":"workflow removed (breaking)","scope":"gone"}]"#);
    }
}
