//! Link resolution: external URLs (neutralised unless safe), `file:x.org` → `x.html`, internal
//! links to headlines / CUSTOM_IDs / targets / names, images, and broken-link marks.

use super::inline::{image_src, is_image_path, push_img};
use super::util::{esc, esc_text, safe_href, starts_with_ci};
use super::Ctx;

pub fn is_link_type(s: &str) -> bool {
    matches!(
        s.to_ascii_lowercase().as_str(),
        "http" | "https" | "ftp" | "mailto" | "news" | "file" | "doi" | "info" | "id" | "elisp" | "shell" | "help" | "attachment"
    )
}

/// Link types Org 9.5 knows in `emacs -Q` once a buffer is in Org mode (`org-link-parameters`
/// with the default `org-modules`), plus `id` and `attachment`, which this renderer resolves.
/// A bracket link of any other type is a fuzzy link in Org (`[[unknown:x]]` looks for a
/// target or headline named `unknown:x`), so it is broken unless one exists.
fn org_knows_link_type(s: &str) -> bool {
    matches!(
        s,
        "http" | "https" | "ftp" | "mailto" | "news" | "file" | "file+sys" | "file+emacs" | "doi" | "info" | "id" | "attachment"
            | "elisp" | "shell" | "help" | "eww" | "rmail" | "mhe" | "irc" | "gnus" | "docview" | "bibtex" | "bbdb" | "w3m"
    )
}

/// `url-hexify-string`: every byte outside `[A-Za-z0-9_.~-]` as `%XX`.
fn hexify(out: &mut String, s: &str) {
    for &c in s.as_bytes() {
        if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'~') {
            out.push(c as char);
        } else {
            out.push('%');
            out.push(char::from_digit((c >> 4) as u32, 16).unwrap().to_ascii_uppercase());
            out.push(char::from_digit((c & 15) as u32, 16).unwrap().to_ascii_uppercase());
        }
    }
}

/// A `#+LINK:` replacement, examined once when the keyword is read (every link then costs
/// only its own length): where its `%s` or (failing that) `%h` hole is, and whether it calls
/// Lisp (`%(function)`, never expanded here).
pub struct Abbrev {
    pub rpl: String,
    pub hole: Option<(usize, bool)>, // byte offset, hexify
    pub lisp: bool,
}

impl Abbrev {
    pub fn new(rpl: &str) -> Abbrev {
        let hole = rpl.find("%s").map(|p| (p, false)).or_else(|| rpl.find("%h").map(|p| (p, true)));
        Abbrev { rpl: rpl.to_string(), hole, lisp: rpl.contains("%(") }
    }
}

/// `org-link-expand-abbrev`: `NAME`, `NAME:TAG` or `NAME::TAG` with a `#+LINK:` NAME becomes
/// its replacement with `%s` (the tag) or else `%h` (the tag URL-encoded) filled in, or the
/// tag appended. None when the link is no abbreviation, calls Lisp, or the expansion budget
/// (shared by the whole document) cannot pay for it.
pub fn expand_abbrev(cx: &mut Ctx, link: &str) -> Option<String> {
    if cx.link_abbrevs.is_empty() {
        return None;
    }
    let (key, tag) = match link.find(':') {
        Some(c) => (&link[..c], link[c + 1..].strip_prefix(':').unwrap_or(&link[c + 1..])),
        None => (link, ""),
    };
    let ab = cx.link_abbrevs.get(key)?;
    let cost = ab.rpl.len() + 3 * tag.len();
    if ab.lisp || cost > cx.link_abbrev_budget {
        return None;
    }
    let mut out = String::with_capacity(cost);
    match ab.hole {
        Some((p, hex)) => {
            out.push_str(&ab.rpl[..p]);
            if hex {
                hexify(&mut out, tag);
            } else {
                out.push_str(tag);
            }
            out.push_str(&ab.rpl[p + 2..]);
        }
        None => {
            out.push_str(&ab.rpl);
            out.push_str(tag);
        }
    }
    cx.link_abbrev_budget -= cost;
    Some(out)
}

/// Prefix relative URLs with the caller's base URL.
pub fn with_base(cx: &Ctx, url: &str) -> String {
    let base = &cx.o.base_url;
    if base.is_empty() || url.starts_with('#') || url.starts_with('/') || url.contains("://") || url.contains(':') {
        return url.to_string();
    }
    let u = url.trim_start_matches("./");
    if base.ends_with('/') {
        format!("{}{}", base, u)
    } else {
        format!("{}/{}", base, u)
    }
}

fn anchor(o: &mut String, href: &str, desc_html: &str) {
    o.push_str("<a href=\"");
    esc(o, safe_href(href, false));
    o.push_str("\">");
    o.push_str(desc_html);
    o.push_str("</a>");
}

fn text_html(s: &str) -> String {
    let mut d = String::new();
    esc_text(&mut d, s);
    d
}

fn broken(cx: &Ctx, path: &str, desc: Option<String>, o: &mut String) {
    if cx.o.broken_mark {
        o.push_str("[BROKEN LINK: ");
        esc_text(o, path);
        o.push(']');
    } else if let Some(d) = desc {
        o.push_str(&d);
    }
}

/// Org's info-link export: the Emacs manuals live on gnu.org, others as MANUAL.html#NODE.
/// A link to headline `target` (found by custom id or title), or a broken link to `path`.
fn to_headline(cx: &mut Ctx, target: Option<usize>, path: &str, desc: Option<String>, o: &mut String) {
    match target {
        Some(h) => {
            let d = desc.unwrap_or_else(|| cx.headline_label(h));
            anchor(o, &format!("#{}", cx.heads[h].id), &d);
        }
        None => broken(cx, path, desc, o),
    }
}

fn info_url(rest: &str) -> String {
    let (manual, node) = match rest.find(|c| c == '#' || c == ':') {
        Some(p) => (&rest[..p], rest[p + 1..].trim_start_matches(':')),
        None => (rest, "Top"),
    };
    let node = if node.is_empty() { "Top" } else { node };
    let mut n = String::new();
    for c in node.chars() {
        match c {
            ' ' => n.push('-'),
            c if c.is_ascii_alphanumeric() => n.push(c),
            c => n.push_str(&format!("_{:04x}", c as u32)),
        }
    }
    let emacs_docs = [
        "ada-mode", "auth", "autotype", "bovine", "calc", "ccmode", "cl", "dbus", "dired-x", "ebrowse", "ede", "ediff", "edt",
        "efaq", "efaq-w32", "eglot", "eieio", "eintr", "elisp", "emacs", "emacs-gnutls", "emacs-mime", "epa", "erc", "ert",
        "eshell", "eudc", "eww", "flymake", "forms", "gnus", "htmlfontify", "idlwave", "ido", "info", "mairix-el", "message",
        "mh-e", "modus-themes", "newsticker", "nxml-mode", "octave-mode", "org", "pcl-cvs", "pgg", "rcirc", "reftex", "remember",
        "sasl", "sc", "semantic", "ses", "sieve", "smtpmail", "speedbar", "srecode", "todo-mode", "tramp", "transient", "url",
        "use-package", "vhdl-mode", "vip", "viper", "vtable", "widget", "wisent", "woman",
    ];
    if emacs_docs.contains(&manual) {
        format!("https://www.gnu.org/software/emacs/manual/html_mono/{}.html#{}", manual, n)
    } else {
        format!("{}.html#{}", manual, n)
    }
}

/// Write the HTML for link `path` with an already-rendered description (or none).
pub fn render_link(cx: &mut Ctx, path: &str, desc: Option<String>, o: &mut String) {
    let p = path.trim_start();
    if p.trim().is_empty() {
        return;
    }
    // Internal: #custom-id, *headline, (coderef), fuzzy.
    if let Some(cid) = p.strip_prefix('#') {
        let target = cx.custom_ids.get(cid).copied();
        to_headline(cx, target, cid, desc, o);
        return;
    }
    if let Some(title) = p.strip_prefix('*') {
        let target = cx.title_lookup(&super::norm_title(title));
        to_headline(cx, target, p, desc, o);
        return;
    }
    if p.starts_with('(') && p.ends_with(')') {
        o.push_str(&desc.unwrap_or_else(|| text_html(p)));
        return;
    }
    let scheme_end = p.find(':').filter(|&c| c > 0 && p[..c].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.'));
    let is_file_path = p.starts_with('/') || p.starts_with("./") || p.starts_with("../") || p.starts_with("~/");
    let known = match scheme_end {
        Some(c) => {
            let t = p[..c].to_ascii_lowercase();
            org_knows_link_type(&t) || (t == "data" && desc.is_none() && is_image_path(p))
        }
        None => true,
    };
    if (scheme_end.is_none() && !is_file_path) || !known {
        // Fuzzy: target, #+NAME, then headline title.
        let key = super::norm_title(p);
        if let Some(id) = cx.targets.get(&key).cloned() {
            // No description: the number of the section holding the target (as ox-html).
            let d = match desc {
                Some(d) => d,
                None => match cx.target_heads.get(&key).copied() {
                    Some(h) if cx.heads[h].number.is_some() => cx.headline_label(h),
                    _ => text_html(p),
                },
            };
            anchor(o, &format!("#{}", id), &d);
        } else if let Some(id) = cx.names.get(&key).cloned() {
            let d = desc.unwrap_or_else(|| text_html(p));
            anchor(o, &format!("#{}", id), &d);
        } else if let Some(h) = cx.title_lookup(&key) {
            let d = desc.unwrap_or_else(|| cx.headline_label(h));
            let id = cx.heads[h].id.clone();
            anchor(o, &format!("#{}", id), &d);
        } else {
            broken(cx, p, desc, o);
        }
        return;
    }
    let (scheme, rest) = match scheme_end {
        Some(c) => (p[..c].to_ascii_lowercase(), &p[c + 1..]),
        None => (String::from("file"), p),
    };
    match scheme.as_str() {
        "http" | "https" | "ftp" | "mailto" | "news" => {
            if desc.is_none() && is_image_path(p) {
                push_img(o, p, cx);
                return;
            }
            // No description: ox-html shows the encoded URL it links to.
            let href = p.replace(' ', "%20");
            let d = desc.unwrap_or_else(|| text_html(&href));
            anchor(o, &href, &d);
        }
        "file" => {
            let (file, search) = match rest.find("::") {
                Some(k) => (&rest[..k], Some(&rest[k + 2..])),
                None => (rest, None),
            };
            if desc.is_none() && is_image_path(file) {
                let src = image_src(cx, file);
                push_img(o, &src, cx);
                return;
            }
            let mut href = if starts_with_ci(file, "/") && !file.starts_with("//") {
                format!("file://{}", file)
            } else {
                file.to_string()
            };
            if href.to_ascii_lowercase().ends_with(".org") {
                href.truncate(href.len() - 4);
                href.push_str(".html");
            }
            if let Some(s) = search {
                if let Some(cid) = s.strip_prefix('#') {
                    href.push('#');
                    href.push_str(cid);
                } else if !s.trim().bytes().all(|c| c.is_ascii_digit()) {
                    // A text search into another file cannot be resolved to an anchor (Org marks these broken too).
                    broken(cx, &format!("No match for fuzzy expression: {}", s), desc, o);
                    return;
                }
            }
            let href = with_base(cx, &href);
            let d = desc.unwrap_or_else(|| text_html(&href));
            anchor(o, &href, &d);
        }
        "doi" => {
            let href = format!("https://doi.org/{}", rest);
            let d = desc.unwrap_or_else(|| text_html(p));
            anchor(o, &href, &d);
        }
        "info" => {
            let href = info_url(rest);
            let d = desc.unwrap_or_else(|| text_html(rest));
            anchor(o, &href, &d);
        }
        "id" => match cx.id_props.get(rest.trim()).copied() {
            Some(h) => {
                let d = desc.unwrap_or_else(|| cx.headline_label(h));
                let id = cx.heads[h].id.clone();
                anchor(o, &format!("#{}", id), &d);
            }
            None => broken(cx, p, desc, o),
        },
        "data" if desc.is_none() && is_image_path(p) => push_img(o, p, cx),
        _ => {
            // Org types with no HTML meaning (shell:, elisp:, help:, …): Org keeps the path as
            // the target; safe_href neutralises anything that would run.
            let d = desc.unwrap_or_else(|| text_html(rest));
            anchor(o, &with_base(cx, rest), &d);
        }
    }
}
