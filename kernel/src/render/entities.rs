//! Org entities (`\alpha`, `\nbsp`, `\to`, ...) and their HTML form, after `org-entities`.

/// Names whose HTML form is the same-named character reference.
const SAME: &[&str] = &[
    "Agrave", "agrave", "Aacute", "aacute", "Acirc", "acirc", "Atilde", "atilde", "Auml", "auml", "Aring", "aring", "AElig",
    "aelig", "Ccedil", "ccedil", "Egrave", "egrave", "Eacute", "eacute", "Ecirc", "ecirc", "Euml", "euml", "Igrave", "igrave",
    "Iacute", "iacute", "Icirc", "icirc", "Iuml", "iuml", "Ntilde", "ntilde", "Ograve", "ograve", "Oacute", "oacute", "Ocirc",
    "ocirc", "Otilde", "otilde", "Ouml", "ouml", "Oslash", "oslash", "OElig", "oelig", "Scaron", "scaron", "szlig", "Ugrave",
    "ugrave", "Uacute", "uacute", "Ucirc", "ucirc", "Uuml", "uuml", "Yacute", "yacute", "Yuml", "yuml", "fnof", "real", "image",
    "weierp", "ell", "imath", "jmath", "Alpha", "alpha", "Beta", "beta", "Gamma", "gamma", "Delta", "delta", "Epsilon",
    "epsilon", "Zeta", "zeta", "Eta", "eta", "Theta", "theta", "thetasym", "Iota", "iota", "Kappa", "kappa", "Lambda", "lambda",
    "Mu", "mu", "nu", "Nu", "Xi", "xi", "Omicron", "omicron", "Pi", "pi", "Rho", "rho", "Sigma", "sigma", "sigmaf", "Tau",
    "tau", "Upsilon", "upsilon", "upsih", "Phi", "phi", "Chi", "chi", "Psi", "psi", "Omega", "omega", "piv", "varpi", "eth",
    "ETH", "thorn", "THORN", "hbar", "iexcl", "iquest", "nbsp", "ensp", "emsp", "thinsp", "shy", "ndash", "mdash", "quot",
    "acute", "cedil", "circ", "tilde", "uml", "macr", "laquo", "raquo", "lsaquo", "rsaquo", "lsquo", "rsquo", "sbquo", "ldquo",
    "rdquo", "bdquo", "cent", "pound", "yen", "euro", "curren", "sect", "para", "copy", "reg", "trade", "ordf", "ordm",
    "brvbar", "frasl", "permil", "dagger", "Dagger", "bull", "hellip", "prime", "Prime", "deg", "micro", "middot", "sup1",
    "sup2", "sup3", "frac14", "frac12", "frac34", "plusmn", "times", "divide", "minus", "lowast", "radic", "infin", "asymp",
    "cong", "ne", "equiv", "le", "ge", "sub", "sup", "nsub", "sube", "supe", "isin", "notin", "ni", "forall", "exist",
    "empty", "nabla", "prod", "sum", "int", "part", "and", "or", "cap", "cup", "not", "sdot", "loz", "larr", "rarr", "uarr",
    "darr", "harr", "crarr", "lArr", "rArr", "uArr", "dArr", "hArr", "spades", "clubs", "hearts", "diams", "alefsym", "prop",
    "ang", "lceil", "rceil", "lfloor", "rfloor", "lang", "rang", "oplus", "otimes", "perp", "there4", "sim", "zwnj", "zwj",
    "lrm", "rlm", "ccaron", "Ccaron",
];

/// Org names mapped to another HTML form.
const MAPPED: &[(&str, &str)] = &[
    ("to", "&rarr;"),
    ("rightarrow", "&rarr;"),
    ("leftarrow", "&larr;"),
    ("gets", "&larr;"),
    ("uparrow", "&uarr;"),
    ("downarrow", "&darr;"),
    ("leftrightarrow", "&harr;"),
    ("Rightarrow", "&rArr;"),
    ("Leftarrow", "&lArr;"),
    ("Leftrightarrow", "&hArr;"),
    ("Uparrow", "&uArr;"),
    ("Downarrow", "&dArr;"),
    ("longrightarrow", "&rarr;"),
    ("Longrightarrow", "&rArr;"),
    ("mapsto", "&mapsto;"),
    ("implies", "&rArr;"),
    ("iff", "&hArr;"),
    ("ldots", "&hellip;"),
    ("dots", "&hellip;"),
    ("cdots", "&ctdot;"),
    ("copyright", "&copy;"),
    ("registered", "&reg;"),
    ("textregistered", "&reg;"),
    ("texttrademark", "&trade;"),
    ("leq", "&le;"),
    ("geq", "&ge;"),
    ("neq", "&ne;"),
    ("approx", "&asymp;"),
    ("simeq", "&simeq;"),
    ("pm", "&plusmn;"),
    ("mp", "&mp;"),
    ("div", "&divide;"),
    ("infty", "&infin;"),
    ("partial", "&part;"),
    ("exists", "&exist;"),
    ("nexist", "&nexist;"),
    ("emptyset", "&empty;"),
    ("in", "&isin;"),
    ("subset", "&sub;"),
    ("supset", "&sup;"),
    ("subseteq", "&sube;"),
    ("supseteq", "&supe;"),
    ("setminus", "&setminus;"),
    ("land", "&and;"),
    ("wedge", "&and;"),
    ("lor", "&or;"),
    ("vee", "&or;"),
    ("neg", "&not;"),
    ("lnot", "&not;"),
    ("cdot", "&sdot;"),
    ("ast", "*"),
    ("star", "*"),
    ("circ", "&#8728;"),
    ("bullet", "&bull;"),
    ("sqrt", "&radic;"),
    ("surd", "&radic;"),
    ("propto", "&prop;"),
    ("angle", "&ang;"),
    ("perp", "&perp;"),
    ("therefore", "&there4;"),
    ("because", "&because;"),
    ("varepsilon", "&epsilon;"),
    ("vartheta", "&thetasym;"),
    ("varsigma", "&sigmaf;"),
    ("varphi", "&phi;"),
    ("varrho", "&rho;"),
    ("aleph", "&alefsym;"),
    ("hslash", "&hbar;"),
    ("Re", "&real;"),
    ("Im", "&image;"),
    ("wp", "&weierp;"),
    ("nbsp", "&nbsp;"),
    ("ensp", "&ensp;"),
    ("emsp", "&emsp;"),
    ("thinsp", "&thinsp;"),
    ("textbackslash", "\\"),
    ("backslash", "\\"),
    ("textbar", "|"),
    ("vert", "&vert;"),
    ("Vert", "&Vert;"),
    ("mid", "&mid;"),
    ("amp", "&amp;"),
    ("lt", "&lt;"),
    ("gt", "&gt;"),
    ("dollar", "$"),
    ("USD", "$"),
    ("EUR", "&euro;"),
    ("EURdig", "&euro;"),
    ("EURhv", "&euro;"),
    ("EURcr", "&euro;"),
    ("EURtm", "&euro;"),
    ("under", "_"),
    ("hat", "&circ;"),
    ("tilde", "&tilde;"),
    ("slash", "/"),
    ("plus", "+"),
    ("colon", ":"),
    ("percent", "%"),
    ("smiley", "&#9786;"),
    ("blacksmile", "&#9787;"),
    ("sad", "&#9785;"),
    ("frowny", "&#9785;"),
    ("checkmark", "&#10003;"),
    ("dagger", "&dagger;"),
    ("ddagger", "&Dagger;"),
    ("dag", "&dagger;"),
    ("ddag", "&Dagger;"),
    ("S", "&sect;"),
    ("P", "&para;"),
    ("textdegree", "&deg;"),
    ("textmu", "&micro;"),
    ("textasciitilde", "~"),
    ("textasciicircum", "^"),
    ("textasciiacute", "&acute;"),
    ("textasciigrave", "`"),
    ("grave", "`"),
    ("acute", "&acute;"),
    ("cent", "&cent;"),
    ("leftharpoonup", "&#8636;"),
    ("rightharpoonup", "&#8640;"),
    ("qquad", "&emsp;&emsp;"),
    ("quad", "&emsp;"),
    ("space", " "),
    ("zwnbsp", "&#65279;"),
    ("alefsym", "&alefsym;"),
    ("beth", "&beth;"),
    ("gimel", "&gimel;"),
    ("daleth", "&daleth;"),
    ("sup1", "&sup1;"),
    ("leadsto", "&#8605;"),
    ("lbrace", "{"),
    ("rbrace", "}"),
    ("langle", "&lang;"),
    ("rangle", "&rang;"),
    ("lceil", "&lceil;"),
    ("lfloor", "&lfloor;"),
    ("ldquo", "&ldquo;"),
    ("rdquo", "&rdquo;"),
    ("laquo", "&laquo;"),
    ("raquo", "&raquo;"),
    ("ge", "&ge;"),
    ("le", "&le;"),
];

/// The HTML for entity `name`, if Org knows it.
pub fn entity_html(name: &str) -> Option<&'static str> {
    if name.len() > 20 {
        return None;
    }
    for (n, h) in MAPPED {
        if *n == name {
            return Some(h);
        }
    }
    for n in SAME {
        if *n == name {
            return Some(same_ref(n));
        }
    }
    None
}

fn same_ref(n: &'static str) -> &'static str {
    // Interned "&name;" strings for the SAME table, built once.
    use std::collections::HashMap;
    use std::sync::Once;
    static INIT: Once = Once::new();
    static mut MAP: Option<HashMap<&'static str, &'static str>> = None;
    unsafe {
        INIT.call_once(|| {
            let mut m = HashMap::new();
            for s in SAME {
                let v: &'static str = Box::leak(format!("&{};", s).into_boxed_str());
                m.insert(*s, v);
            }
            MAP = Some(m);
        });
        MAP.as_ref().and_then(|m| m.get(n).copied()).unwrap_or("")
    }
}
