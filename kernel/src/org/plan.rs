//! The workflow plan of a workbook: `:workflow:` headlines are worlds, `:component:`
//! headlines in a world's subtree (outside nested workflows) are its components, nested
//! workflows are child worlds. Built in one pass over the outline with an explicit
//! stack (no recursion, so 10,000 nested levels are fine).

use super::header_args;
use super::outline::{Headline, Skeleton};
use super::srcblock::first_src_block;
use super::timestamp::Timestamp;

pub struct Component<'a> {
    pub name: &'a str,
    pub lang: Option<&'a str>,
    pub deps: Vec<String>,
    pub uses: Vec<String>,
    pub input: Option<String>,
    pub output: Option<String>,
    pub persist: bool,
    pub src: String,
    pub dir: Option<String>,
    /// Header arguments neither Org nor the workbook model knows.
    pub unknown_args: Vec<String>,
}

pub enum Schedule<'a> {
    Cron(&'a str),
    At(Timestamp),
    None,
}

pub struct World<'a> {
    pub name: &'a str,
    pub schedule: Schedule<'a>,
    pub components: Vec<Component<'a>>,
    pub children: Vec<usize>,
}

pub struct Plan<'a> {
    /// Every world, in document (pre-)order.
    pub worlds: Vec<World<'a>>,
    /// Top-level worlds (indices into `worlds`).
    pub roots: Vec<usize>,
}

/// Derived wiring of one world.
pub struct Wiring {
    /// (producer index, consumer index)
    pub edges: Vec<(usize, usize)>,
    pub imports: Vec<String>,
    pub exports: Vec<String>,
}

fn push_unique(v: &mut Vec<String>, s: &str) {
    if !s.is_empty() {
        v.push(s.to_string());
    }
}

/// Drop repeated values, keeping first occurrences in order (O(n log n), hostile-safe).
fn dedup_stable<T: Ord + Clone>(v: &mut Vec<T>) {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].cmp(&v[b]).then(a.cmp(&b)));
    let mut keep = vec![false; v.len()];
    for (k, &i) in idx.iter().enumerate() {
        if k == 0 || v[idx[k - 1]] != v[i] {
            keep[i] = true;
        }
    }
    let mut i = 0;
    v.retain(|_| {
        i += 1;
        keep[i - 1]
    });
}

fn component<'a>(text: &'a str, h: &Headline<'a>) -> Component<'a> {
    let mut c = Component {
        name: h.title,
        lang: None,
        deps: Vec::new(),
        uses: Vec::new(),
        input: None,
        output: None,
        persist: false,
        src: String::new(),
        dir: None,
        unknown_args: Vec::new(),
    };
    if let Some(block) = first_src_block(text, h.content, h.end) {
        c.lang = block.lang;
        c.src = block.body;
        let (mut input, mut output, mut dir) = (None, None, None);
        let mut unknown: Vec<&str> = Vec::new();
        header_args::each(&block.params, |k, v| match k {
            ":in" => input = Some(v),
            ":out" => output = Some(v),
            ":dir" => dir = Some(v),
            ":deps" => {
                for d in v.split(',') {
                    push_unique(&mut c.deps, d.trim());
                }
            }
            ":uses" => {
                for u in v.split(|ch: char| ch == ',' || ch.is_whitespace()) {
                    push_unique(&mut c.uses, u);
                }
            }
            ":persist" => c.persist = !matches!(v.as_ref(), "no" | "nil" | "false"),
            _ => {
                if !header_args::is_known(k) {
                    unknown.push(k);
                }
            }
        });
        let opt = |v: Option<std::borrow::Cow<str>>| v.filter(|v| !v.is_empty()).map(|v| v.into_owned());
        c.input = opt(input);
        c.output = opt(output);
        c.dir = opt(dir);
        dedup_stable(&mut unknown);
        c.unknown_args = unknown.into_iter().map(String::from).collect();
        dedup_stable(&mut c.deps);
        dedup_stable(&mut c.uses);
    }
    c
}

/// Build the plan, cracking one headline at a time (nothing of the outline is kept).
pub fn build<'a>(sk: &Skeleton<'a>) -> Plan<'a> {
    let mut plan = Plan { worlds: Vec::new(), roots: Vec::new() };
    // (level, innermost world in effect at this headline)
    let mut stack: Vec<(usize, Option<usize>)> = Vec::new();
    for idx in 0..sk.len() {
        let h = &sk.headline(idx);
        while let Some(&(lvl, _)) = stack.last() {
            if lvl >= h.level {
                stack.pop();
            } else {
                break;
            }
        }
        let inner = stack.last().and_then(|&(_, w)| w);
        if h.has_tag("workflow") {
            let schedule = match h.prop("SCHEDULE") {
                Some(c) if !c.trim().is_empty() => Schedule::Cron(c),
                _ => match &h.planning.scheduled {
                    Some(t) => Schedule::At(t.clone()),
                    None => Schedule::None,
                },
            };
            let id = plan.worlds.len();
            plan.worlds.push(World { name: h.title, schedule, components: Vec::new(), children: Vec::new() });
            match inner {
                Some(p) => plan.worlds[p].children.push(id),
                None => plan.roots.push(id),
            }
            stack.push((h.level, Some(id)));
        } else {
            if h.has_tag("component") {
                if let Some(w) = inner {
                    let c = component(sk.text, h);
                    plan.worlds[w].components.push(c);
                }
            }
            stack.push((h.level, inner));
        }
    }
    plan
}

/// Edges (an `:out` matched to an `:in`; the first producer when there are several), imports (`:uses` nobody produces) and exports
/// (outputs nobody consumes), sorted and distinct.
pub fn wiring(w: &World) -> Wiring {
    let mut producers: Vec<(&str, usize)> = w
        .components
        .iter()
        .enumerate()
        .filter_map(|(i, c)| c.output.as_deref().map(|o| (o, i)))
        .collect();
    producers.sort();
    let mut edges = Vec::new();
    let mut consumed: Vec<&str> = Vec::new();
    for (i, c) in w.components.iter().enumerate() {
        if let Some(inp) = c.input.as_deref() {
            consumed.push(inp);
            // One edge per consumer, from the first producer in document order: two
            // producers of one output is an error (validate says so), and this keeps the
            // edge list linear in the number of components even then.
            let k = producers.partition_point(|(o, _)| *o < inp);
            if let Some(&(o, p)) = producers.get(k) {
                if o == inp {
                    edges.push((p, i));
                }
            }
        }
    }
    consumed.sort_unstable();
    let mut exports: Vec<String> = producers
        .iter()
        .filter(|(o, _)| consumed.binary_search(o).is_err())
        .map(|(o, _)| o.to_string())
        .collect();
    exports.dedup();
    let mut imports: Vec<String> = w
        .components
        .iter()
        .flat_map(|c| c.uses.iter())
        .filter(|u| producers.binary_search_by(|(o, _)| (*o).cmp(u.as_str())).is_err())
        .cloned()
        .collect();
    imports.sort();
    imports.dedup();
    Wiring { edges, imports, exports }
}

/// Peel nodes with no incoming edge (Kahn); returns which nodes were peeled.
fn peel(n: usize, edges: &[(usize, usize)], alive: &[bool]) -> Vec<bool> {
    let mut indeg = vec![0usize; n];
    let mut adj: Vec<Vec<usize>> = vec![Vec::new(); n];
    for &(a, b) in edges {
        if alive[a] && alive[b] {
            adj[a].push(b);
            indeg[b] += 1;
        }
    }
    let mut queue: Vec<usize> = (0..n).filter(|&i| alive[i] && indeg[i] == 0).collect();
    let mut done = vec![false; n];
    while let Some(i) = queue.pop() {
        done[i] = true;
        for &j in &adj[i] {
            indeg[j] -= 1;
            if indeg[j] == 0 {
                queue.push(j);
            }
        }
    }
    done
}

/// Components on a dependency cycle (indices, document order): what survives peeling
/// sources forwards and sinks backwards. Iterative, linear in nodes + edges.
pub fn cyclic(w: &World, edges: &[(usize, usize)]) -> Vec<usize> {
    let n = w.components.len();
    let all = vec![true; n];
    let fwd = peel(n, edges, &all);
    let rest: Vec<bool> = fwd.iter().map(|d| !d).collect();
    let rev: Vec<(usize, usize)> = edges.iter().map(|&(a, b)| (b, a)).collect();
    let back = peel(n, &rev, &rest);
    (0..n).filter(|&i| rest[i] && !back[i]).collect()
}
