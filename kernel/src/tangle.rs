//! tangle_plan: worlds, components and derived edges. (Filled in by the headlines work.)
pub fn tangle_plan_json(_org: &str) -> String { String::from("{\"worlds\":[]}") }
