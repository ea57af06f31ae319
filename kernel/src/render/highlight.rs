//! Syntax highlighting for src blocks: one small table-driven lexer per language family,
//! emitting `<span class="hl-…">` around comments, strings, keywords, builtins, numbers,
//! variables and functions. Text is never changed, only wrapped; unknown languages are escaped.

use super::util::esc_text;

struct Lang {
    line_comments: &'static [&'static str],
    block_comment: Option<(&'static str, &'static str)>,
    quotes: &'static [u8],
    triple: bool,
    keywords: &'static [&'static str],
    builtins: &'static [&'static str],
    case_insensitive: bool,
    lisp: bool,
    dollar_vars: bool,
    ident_dash: bool,
}

const PY: Lang = Lang {
    line_comments: &["#"],
    block_comment: None,
    quotes: b"\"'",
    triple: true,
    keywords: &[
        "and", "as", "assert", "async", "await", "break", "class", "continue", "def", "del", "elif", "else", "except", "finally",
        "for", "from", "global", "if", "import", "in", "is", "lambda", "nonlocal", "not", "or", "pass", "raise", "return", "try",
        "while", "with", "yield", "match", "case",
    ],
    builtins: &["True", "False", "None", "self", "print", "len", "range", "int", "str", "dict", "list", "set", "tuple", "open", "isinstance", "super"],
    case_insensitive: false,
    lisp: false,
    dollar_vars: false,
    ident_dash: false,
};
const JS: Lang = Lang {
    line_comments: &["//"],
    block_comment: Some(("/*", "*/")),
    quotes: b"\"'`",
    triple: false,
    keywords: &[
        "async", "await", "break", "case", "catch", "class", "const", "continue", "debugger", "default", "delete", "do", "else",
        "export", "extends", "finally", "for", "from", "function", "if", "import", "in", "instanceof", "interface", "let", "new",
        "of", "return", "static", "switch", "throw", "try", "type", "typeof", "var", "void", "while", "with", "yield", "enum",
        "implements", "private", "protected", "public", "readonly", "declare", "namespace", "abstract", "as",
    ],
    builtins: &["true", "false", "null", "undefined", "this", "super", "NaN", "Infinity", "console", "window", "document", "string", "number", "boolean", "any", "unknown", "never"],
    case_insensitive: false,
    lisp: false,
    dollar_vars: false,
    ident_dash: false,
};
const RUST: Lang = Lang {
    line_comments: &["//"],
    block_comment: Some(("/*", "*/")),
    quotes: b"\"",
    triple: false,
    keywords: &[
        "as", "async", "await", "break", "const", "continue", "crate", "dyn", "else", "enum", "extern", "fn", "for", "if", "impl",
        "in", "let", "loop", "match", "mod", "move", "mut", "pub", "ref", "return", "static", "struct", "trait", "type", "unsafe",
        "use", "where", "while", "Self", "self", "super",
    ],
    builtins: &["true", "false", "Some", "None", "Ok", "Err", "String", "Vec", "Option", "Result", "Box", "u8", "u16", "u32", "u64", "usize", "i8", "i16", "i32", "i64", "isize", "f32", "f64", "bool", "char", "str"],
    case_insensitive: false,
    lisp: false,
    dollar_vars: false,
    ident_dash: false,
};
const C: Lang = Lang {
    line_comments: &["//"],
    block_comment: Some(("/*", "*/")),
    quotes: b"\"'",
    triple: false,
    keywords: &[
        "auto", "break", "case", "const", "continue", "default", "do", "else", "enum", "extern", "for", "goto", "if", "inline",
        "register", "restrict", "return", "sizeof", "static", "struct", "switch", "typedef", "union", "volatile", "while", "class",
        "namespace", "template", "typename", "public", "private", "protected", "virtual", "new", "delete", "using", "try", "catch",
        "throw", "operator",
    ],
    builtins: &["int", "char", "void", "long", "short", "float", "double", "signed", "unsigned", "bool", "size_t", "NULL", "true", "false", "nullptr"],
    case_insensitive: false,
    lisp: false,
    dollar_vars: false,
    ident_dash: false,
};
const SH: Lang = Lang {
    line_comments: &["#"],
    block_comment: None,
    quotes: b"\"'",
    triple: false,
    keywords: &[
        "if", "then", "else", "elif", "fi", "for", "while", "until", "do", "done", "case", "esac", "in", "function", "select",
        "return", "export", "local", "readonly", "declare", "unset", "shift", "exit", "break", "continue",
    ],
    builtins: &["echo", "cd", "printf", "read", "set", "source", "test", "eval", "exec", "trap", "true", "false", "alias"],
    case_insensitive: false,
    lisp: false,
    dollar_vars: true,
    ident_dash: false,
};
const ELISP: Lang = Lang {
    line_comments: &[";"],
    block_comment: None,
    quotes: b"\"",
    triple: false,
    keywords: &[
        "defun", "defmacro", "defvar", "defcustom", "defconst", "defgroup", "defface", "defsubst", "defalias", "let", "let*",
        "if", "when", "unless", "cond", "progn", "prog1", "while", "dolist", "dotimes", "lambda", "setq", "setq-local",
        "setq-default", "and", "or", "not", "catch", "throw", "condition-case", "unwind-protect", "save-excursion",
        "save-restriction", "with-current-buffer", "with-temp-buffer", "interactive", "require", "provide", "use-package",
        "pcase", "cl-loop", "add-hook", "define-key", "global-set-key", "quote", "function",
    ],
    builtins: &["nil", "t"],
    case_insensitive: false,
    lisp: true,
    dollar_vars: false,
    ident_dash: true,
};
const JSON: Lang = Lang {
    line_comments: &[],
    block_comment: None,
    quotes: b"\"",
    triple: false,
    keywords: &[],
    builtins: &["true", "false", "null"],
    case_insensitive: false,
    lisp: false,
    dollar_vars: false,
    ident_dash: false,
};
const SQL: Lang = Lang {
    line_comments: &["--"],
    block_comment: Some(("/*", "*/")),
    quotes: b"'\"",
    triple: false,
    keywords: &[
        "select", "from", "where", "and", "or", "not", "insert", "into", "values", "update", "set", "delete", "create", "table",
        "drop", "alter", "index", "view", "join", "inner", "left", "right", "outer", "on", "group", "by", "order", "having",
        "limit", "offset", "as", "distinct", "union", "all", "case", "when", "then", "else", "end", "primary", "key", "foreign",
        "references", "default", "unique", "with", "in", "is", "like", "between", "exists", "begin", "commit", "rollback", "asc",
        "desc", "if", "replace", "returning",
    ],
    builtins: &["null", "true", "false", "integer", "int", "text", "varchar", "real", "blob", "count", "sum", "avg", "min", "max", "coalesce"],
    case_insensitive: true,
    lisp: false,
    dollar_vars: false,
    ident_dash: false,
};
const YAML: Lang = Lang {
    line_comments: &["#"],
    block_comment: None,
    quotes: b"\"'",
    triple: false,
    keywords: &[],
    builtins: &["true", "false", "null", "yes", "no", "on", "off", "~"],
    case_insensitive: false,
    lisp: false,
    dollar_vars: false,
    ident_dash: false,
};

fn lang_for(name: &str) -> Option<(&'static Lang, u8)> {
    // u8: 0 generic, 1 yaml keys, 2 org, 3 json keys
    let l = name.to_ascii_lowercase();
    Some(match l.as_str() {
        "python" | "py" | "python3" | "ipython" => (&PY, 0),
        "javascript" | "js" | "typescript" | "ts" | "jsx" | "tsx" | "node" => (&JS, 0),
        "rust" | "rs" => (&RUST, 0),
        "c" | "cpp" | "c++" | "h" | "cc" | "java" | "go" => (&C, 0),
        "sh" | "shell" | "bash" | "zsh" | "shell-script" | "console" => (&SH, 0),
        "emacs-lisp" | "elisp" | "lisp" | "scheme" | "clojure" | "common-lisp" => (&ELISP, 0),
        "json" => (&JSON, 3),
        "sql" | "sqlite" | "postgresql" | "mysql" => (&SQL, 0),
        "yaml" | "yml" => (&YAML, 1),
        "org" => (&YAML, 2),
        _ => return None,
    })
}

fn span(out: &mut String, class: &str, text: &str) {
    out.push_str("<span class=\"");
    out.push_str(class);
    out.push_str("\">");
    esc_text(out, text);
    out.push_str("</span>");
}

/// Write `code` as highlighted HTML for `lang` (escaped plain text when unknown or disabled).
pub fn highlight(lang: &str, code: &str, out: &mut String, enabled: bool) {
    let (l, mode) = match lang_for(lang) {
        Some(x) if enabled => x,
        _ => {
            esc_text(out, code);
            return;
        }
    };
    if mode == 2 {
        highlight_org(code, out);
        return;
    }
    let b = code.as_bytes();
    let n = b.len();
    let mut i = 0;
    let mut plain = 0;
    let mut line_start = true;
    // Bytes that can start a token; every other byte is plain text and skipped at once.
    let mut starts = [false; 256];
    starts[b'\n' as usize] = true;
    for lc in l.line_comments {
        if let Some(&f) = lc.as_bytes().first() {
            starts[f as usize] = true;
        }
    }
    if let Some((open, _)) = l.block_comment {
        if let Some(&f) = open.as_bytes().first() {
            starts[f as usize] = true;
        }
    }
    for &q in l.quotes {
        starts[q as usize] = true;
    }
    if l.dollar_vars {
        starts[b'$' as usize] = true;
    }
    for c in 0..=255u8 {
        if c.is_ascii_alphanumeric() || c == b'_' || (l.lisp && matches!(c, b':' | b'&' | b'-' | b'*')) {
            starts[c as usize] = true;
        }
    }
    macro_rules! flush {
        () => {
            if plain < i {
                esc_text(out, &code[plain..i]);
            }
        };
    }
    while i < n {
        let c = b[i];
        if !starts[c as usize] {
            // Plain text (non-ASCII bytes included: token starts are ASCII, so this stops on
            // a character boundary, as the per-character step below would).
            i += 1;
            continue;
        }
        if c == b'\n' {
            line_start = true;
            i += 1;
            continue;
        }
        // Comments.
        let mut matched = false;
        for lc in l.line_comments {
            if b[i..].starts_with(lc.as_bytes()) && !(mode == 1 && i > 0 && !matches!(b[i - 1], b' ' | b'\t' | b'\n')) && !(l.dollar_vars && i > 0 && !matches!(b[i - 1], b' ' | b'\t' | b'\n' | b';')) {
                let e = code[i..].find('\n').map(|k| i + k).unwrap_or(n);
                flush!();
                span(out, "hl-c", &code[i..e]);
                i = e;
                plain = i;
                matched = true;
                break;
            }
        }
        if matched {
            continue;
        }
        if let Some((open, close)) = l.block_comment {
            if b[i..].starts_with(open.as_bytes()) {
                let e = code[i + open.len()..].find(close).map(|k| i + open.len() + k + close.len()).unwrap_or(n);
                flush!();
                span(out, "hl-c", &code[i..e]);
                i = e;
                plain = i;
                continue;
            }
        }
        // Strings.
        let apostrophe = c == b'\'' && i > 0 && b[i - 1].is_ascii_alphanumeric() && !std::ptr::eq(l, &PY);
        if l.quotes.contains(&c) && !apostrophe {
            let triple = l.triple && b[i..].starts_with(&[c, c, c]);
            let e = if triple {
                let pat = [c, c, c];
                let mut k = i + 3;
                loop {
                    if k + 3 > n {
                        break n;
                    }
                    if b[k] == b'\\' {
                        k += 2;
                        continue;
                    }
                    if b[k..k + 3] == pat {
                        break k + 3;
                    }
                    k += 1;
                }
            } else {
                let mut k = i + 1;
                loop {
                    if k >= n {
                        break n;
                    }
                    if b[k] == b'\\' && !(l.dollar_vars && c == b'\'') {
                        k += 2;
                        continue;
                    }
                    if b[k] == c {
                        break k + 1;
                    }
                    if b[k] == b'\n' && c != b'`' && !l.dollar_vars && !l.lisp {
                        break k;
                    }
                    k += 1;
                }
            };
            let e = e.min(n);
            flush!();
            let mut class = "hl-s";
            if mode == 3 {
                // JSON: a string followed by ':' is a key.
                let mut k = e;
                while k < n && (b[k] == b' ' || b[k] == b'\t') {
                    k += 1;
                }
                if k < n && b[k] == b':' {
                    class = "hl-v";
                }
            }
            let mut e2 = e;
            while !code.is_char_boundary(e2) {
                e2 += 1;
            }
            span(out, class, &code[i..e2]);
            i = e2;
            plain = i;
            line_start = false;
            continue;
        }
        if l.dollar_vars && c == b'$' && i + 1 < n && (b[i + 1].is_ascii_alphanumeric() || b[i + 1] == b'_' || b[i + 1] == b'{') {
            let mut k = i + 1;
            if b[k] == b'{' {
                while k < n && b[k] != b'}' && b[k] != b'\n' {
                    k += 1;
                }
                if k < n && b[k] == b'}' {
                    k += 1;
                }
            } else {
                while k < n && (b[k].is_ascii_alphanumeric() || b[k] == b'_') {
                    k += 1;
                }
            }
            flush!();
            span(out, "hl-v", &code[i..k]);
            i = k;
            plain = i;
            continue;
        }
        if c.is_ascii_digit() && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_' || (l.ident_dash && b[i - 1] == b'-'))) {
            let mut k = i;
            while k < n && (b[k].is_ascii_alphanumeric() || b[k] == b'.' || b[k] == b'_') {
                k += 1;
            }
            if l.ident_dash && k < n && b[k] == b'-' {
                i = k;
                continue;
            }
            flush!();
            span(out, "hl-n", &code[i..k]);
            i = k;
            plain = i;
            line_start = false;
            continue;
        }
        let ident_start = c.is_ascii_alphabetic() || c == b'_' || (l.lisp && (c == b':' || c == b'&' || c == b'-' || c == b'*'));
        if ident_start && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_' || (l.ident_dash && b[i - 1] == b'-'))) {
            let mut k = i + 1;
            while k < n && (b[k].is_ascii_alphanumeric() || b[k] == b'_' || (l.ident_dash && matches!(b[k], b'-' | b'*' | b'/' | b'?' | b'!' | b'>' | b'<' | b'='))) {
                k += 1;
            }
            let word = &code[i..k];
            let is_kw = in_list(l.keywords, word, l.case_insensitive);
            let is_bi = in_list(l.builtins, word, l.case_insensitive);
            let class = if mode == 1 && line_start_key(b, k) {
                Some("hl-v")
            } else if is_kw {
                Some("hl-k")
            } else if is_bi || (l.lisp && (c == b':' || c == b'&')) {
                Some("hl-b")
            } else if !l.lisp && k < n && b[k] == b'(' {
                Some("hl-f")
            } else if l.lisp && i > 0 && b[i - 1] == b'(' {
                Some("hl-f")
            } else {
                None
            };
            if let Some(cl) = class {
                flush!();
                span(out, cl, word);
                plain = k;
            }
            i = k;
            line_start = false;
            continue;
        }
        if !(c == b' ' || c == b'\t') {
            line_start = false;
        }
        let _ = line_start;
        i += 1;
        while i < n && !code.is_char_boundary(i) {
            i += 1;
        }
    }
    if plain < n {
        esc_text(out, &code[plain..n]);
    }
}

/// Is `word` (non-empty) one of `list`? Length and first byte are compared before the rest.
fn in_list(list: &[&str], word: &str, case_insensitive: bool) -> bool {
    let wb = word.as_bytes();
    let f = match wb.first() {
        Some(&f) => f,
        None => return false,
    };
    if case_insensitive {
        let f = f.to_ascii_lowercase();
        list.iter().any(|w| {
            let x = w.as_bytes();
            x.len() == wb.len() && x[0].to_ascii_lowercase() == f && x.eq_ignore_ascii_case(wb)
        })
    } else {
        list.iter().any(|w| {
            let x = w.as_bytes();
            x.len() == wb.len() && x[0] == f && x == wb
        })
    }
}

/// YAML: `key:` at the start of a mapping entry.
fn line_start_key(b: &[u8], k: usize) -> bool {
    let mut j = k;
    while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] == b'-' || b[j] == b'.') {
        j += 1;
    }
    j < b.len() && b[j] == b':' && (j + 1 == b.len() || b[j + 1] == b' ' || b[j + 1] == b'\n')
}

fn highlight_org(code: &str, out: &mut String) {
    for (k, line) in code.split('\n').enumerate() {
        if k > 0 {
            out.push('\n');
        }
        let t = line.trim_start();
        if line.starts_with('*') && line.trim_start_matches('*').starts_with(' ') {
            span(out, "hl-k", line);
        } else if t.starts_with("#+") {
            span(out, "hl-b", line);
        } else if t.starts_with("# ") || t == "#" {
            span(out, "hl-c", line);
        } else if t.starts_with(':') && t.len() > 1 && t.trim_end().ends_with(':') {
            span(out, "hl-v", line);
        } else {
            esc_text(out, line);
        }
    }
}
