//! check_upgrade: breaking changes between two versions. (Filled in by the headlines work.)
pub fn check_upgrade_json(_old: &str, _new: &str) -> String { String::from("[]") }
