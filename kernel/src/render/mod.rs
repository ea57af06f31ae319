//! render: Org to an HTML fragment. (Filled in by the render work.)
pub fn render_html(_org: &str, _options_json: &str) -> String { String::new() }
