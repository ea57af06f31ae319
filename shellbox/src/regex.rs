//! A small regular-expression matcher for `grep` (no crates here, so our own).
//!
//! Syntax (extended, like the original's Rust-regex grep): literals, `.`, `[...]` / `[^...]` with
//! ranges and `[:alpha:]`-style classes, `\d \w \s \D \W \S \b \B`, `\n \t`, other escaped
//! characters stand for themselves, anchors `^ $`, groups `( )` / `(?: )`, alternation `|`,
//! quantifiers `* + ? {n} {n,} {n,m}` (a trailing lazy `?` is accepted; it changes nothing for a
//! yes/no match). No back-references.
//!
//! Matching compiles to a small program run by a backtracking machine that remembers every
//! (instruction, position) pair it has tried, so a line costs at most program × line steps:
//! no pattern can make it exponential.

pub struct Regex {
    prog: Vec<Inst>,
    classes: Vec<Class>,
    fold: bool,
}

#[derive(Clone, Copy)]
enum Inst {
    Char(char),
    Any,
    Class(usize),
    Start,
    End,
    WordB(bool),
    Split(usize, usize),
    Jmp(usize),
    Match,
}

#[derive(Clone)]
enum Node {
    Empty,
    Char(char),
    Any,
    Class(usize),
    Start,
    End,
    WordB(bool),
    Concat(Vec<Node>),
    Alt(Vec<Node>),
    Repeat(Box<Node>, u32, Option<u32>),
}

#[derive(Clone, Copy)]
enum Pred {
    Digit,
    Word,
    Space,
    Alpha,
    Alnum,
    Upper,
    Lower,
    Punct,
    Xdigit,
    Cntrl,
    Print,
    Graph,
    Blank,
}

impl Pred {
    fn test(self, c: char) -> bool {
        match self {
            Pred::Digit => c.is_ascii_digit(),
            Pred::Word => c.is_alphanumeric() || c == '_',
            Pred::Space => c.is_whitespace(),
            Pred::Alpha => c.is_alphabetic(),
            Pred::Alnum => c.is_alphanumeric(),
            Pred::Upper => c.is_uppercase(),
            Pred::Lower => c.is_lowercase(),
            Pred::Punct => c.is_ascii_punctuation(),
            Pred::Xdigit => c.is_ascii_hexdigit(),
            Pred::Cntrl => c.is_control(),
            Pred::Print => !c.is_control(),
            Pred::Graph => !c.is_control() && !c.is_whitespace(),
            Pred::Blank => c == ' ' || c == '\t',
        }
    }
}

#[derive(Clone)]
struct Class {
    negated: bool,
    ranges: Vec<(char, char)>,
    preds: Vec<(Pred, bool)>, // (predicate, negated)
}

impl Class {
    fn has(&self, c: char) -> bool {
        let inside = self.ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi)
            || self.preds.iter().any(|&(p, neg)| p.test(c) != neg);
        inside != self.negated
    }
}

const MAX_REPEAT: u32 = 1000;
const MAX_PROG: usize = 50_000;

struct Parser<'a> {
    chars: Vec<char>,
    i: usize,
    classes: &'a mut Vec<Class>,
    fold: bool,
}

fn lower(c: char) -> char {
    c.to_lowercase().next().unwrap_or(c)
}

fn upper(c: char) -> char {
    c.to_uppercase().next().unwrap_or(c)
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.i).copied()
    }

    fn alt(&mut self, depth: usize) -> Result<Node, String> {
        if depth > 200 {
            return Err("pattern nests too deeply".into());
        }
        let mut branches = vec![self.concat(depth)?];
        while self.peek() == Some('|') {
            self.i += 1;
            branches.push(self.concat(depth)?);
        }
        Ok(if branches.len() == 1 { branches.pop().unwrap() } else { Node::Alt(branches) })
    }

    fn concat(&mut self, depth: usize) -> Result<Node, String> {
        let mut items = Vec::new();
        while let Some(c) = self.peek() {
            if c == '|' || c == ')' {
                break;
            }
            let atom = self.atom(depth, items.is_empty())?;
            let atom = self.quantifiers(atom)?;
            items.push(atom);
        }
        Ok(match items.len() {
            0 => Node::Empty,
            1 => items.pop().unwrap(),
            _ => Node::Concat(items),
        })
    }

    fn quantifiers(&mut self, mut atom: Node) -> Result<Node, String> {
        loop {
            let (min, max) = match self.peek() {
                Some('*') => {
                    self.i += 1;
                    (0, None)
                }
                Some('+') => {
                    self.i += 1;
                    (1, None)
                }
                Some('?') => {
                    self.i += 1;
                    (0, Some(1))
                }
                Some('{') => match self.braces() {
                    Some((min, max, len)) => {
                        self.i += len;
                        (min, max)
                    }
                    None => return Ok(atom),
                },
                _ => return Ok(atom),
            };
            if min > MAX_REPEAT || max.map_or(false, |m| m > MAX_REPEAT) {
                return Err(format!("repetition count above {}", MAX_REPEAT));
            }
            if let Some(m) = max {
                if m < min {
                    return Err("bad repetition range {n,m} with m < n".into());
                }
            }
            if self.peek() == Some('?') {
                self.i += 1; // lazy: the same for a yes/no match
            }
            atom = Node::Repeat(Box::new(atom), min, max);
        }
    }

    /// `{n}`, `{n,}`, `{n,m}` at the cursor: (min, max, length) or None (then `{` is literal).
    fn braces(&self) -> Option<(u32, Option<u32>, usize)> {
        let rest: String = self.chars[self.i..].iter().take(24).collect();
        let close = rest.find('}')?;
        let body = &rest[1..close];
        let len = rest[..=close].chars().count();
        let num = |s: &str| -> Option<u32> {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                None
            } else {
                s.parse::<u32>().ok()
            }
        };
        match body.find(',') {
            None => num(body).map(|n| (n, Some(n), len)),
            Some(k) => {
                let lo = num(&body[..k])?;
                let hi = &body[k + 1..];
                if hi.is_empty() {
                    Some((lo, None, len))
                } else {
                    num(hi).map(|h| (lo, Some(h), len))
                }
            }
        }
    }

    fn literal(&self, c: char) -> Node {
        Node::Char(if self.fold { lower(c) } else { c })
    }

    fn pred_class(&mut self, p: Pred, neg: bool) -> Node {
        self.classes.push(Class { negated: false, ranges: Vec::new(), preds: vec![(p, neg)] });
        Node::Class(self.classes.len() - 1)
    }

    fn atom(&mut self, depth: usize, first: bool) -> Result<Node, String> {
        let c = self.peek().unwrap();
        self.i += 1;
        match c {
            '(' => {
                if self.chars[self.i..].starts_with(&['?', ':']) {
                    self.i += 2;
                }
                let inner = self.alt(depth + 1)?;
                if self.peek() != Some(')') {
                    return Err("unmatched ( in pattern".into());
                }
                self.i += 1;
                Ok(inner)
            }
            '[' => self.class(),
            '.' => Ok(Node::Any),
            '^' => Ok(Node::Start),
            '$' => Ok(Node::End),
            '\\' => self.escape(),
            '*' | '+' | '?' if first => Ok(self.literal(c)),
            '*' | '+' | '?' => Err(format!("nothing to repeat before {}", c)),
            _ => Ok(self.literal(c)),
        }
    }

    fn escape(&mut self) -> Result<Node, String> {
        let c = match self.peek() {
            Some(c) => c,
            None => return Err("trailing backslash in pattern".into()),
        };
        self.i += 1;
        Ok(match c {
            'd' => self.pred_class(Pred::Digit, false),
            'D' => self.pred_class(Pred::Digit, true),
            'w' => self.pred_class(Pred::Word, false),
            'W' => self.pred_class(Pred::Word, true),
            's' => self.pred_class(Pred::Space, false),
            'S' => self.pred_class(Pred::Space, true),
            'b' => Node::WordB(true),
            'B' => Node::WordB(false),
            'n' => Node::Char('\n'),
            't' => Node::Char('\t'),
            'r' => Node::Char('\r'),
            _ => self.literal(c),
        })
    }

    fn class(&mut self) -> Result<Node, String> {
        let mut cls = Class { negated: false, ranges: Vec::new(), preds: Vec::new() };
        if self.peek() == Some('^') {
            cls.negated = true;
            self.i += 1;
        }
        let mut first = true;
        loop {
            let c = match self.peek() {
                Some(c) => c,
                None => return Err("unmatched [ in pattern".into()),
            };
            if c == ']' && !first {
                self.i += 1;
                break;
            }
            first = false;
            if c == '[' && self.peek_at(1) == Some(':') {
                let rest: String = self.chars[self.i..].iter().collect();
                if let Some(end) = rest.find(":]") {
                    let name = &rest[2..end];
                    let p = match name {
                        "alpha" => Pred::Alpha,
                        "digit" => Pred::Digit,
                        "alnum" => Pred::Alnum,
                        "upper" => Pred::Upper,
                        "lower" => Pred::Lower,
                        "space" => Pred::Space,
                        "punct" => Pred::Punct,
                        "xdigit" => Pred::Xdigit,
                        "cntrl" => Pred::Cntrl,
                        "print" => Pred::Print,
                        "graph" => Pred::Graph,
                        "blank" => Pred::Blank,
                        "word" => Pred::Word,
                        _ => return Err(format!("unknown character class [:{}:]", name)),
                    };
                    cls.preds.push((p, false));
                    self.i += rest[..end + 2].chars().count();
                    continue;
                }
            }
            self.i += 1;
            let lo = if c == '\\' {
                let e = match self.peek() {
                    Some(e) => e,
                    None => return Err("unmatched [ in pattern".into()),
                };
                self.i += 1;
                match e {
                    'd' => { cls.preds.push((Pred::Digit, false)); continue; }
                    'D' => { cls.preds.push((Pred::Digit, true)); continue; }
                    'w' => { cls.preds.push((Pred::Word, false)); continue; }
                    'W' => { cls.preds.push((Pred::Word, true)); continue; }
                    's' => { cls.preds.push((Pred::Space, false)); continue; }
                    'S' => { cls.preds.push((Pred::Space, true)); continue; }
                    'n' => '\n',
                    't' => '\t',
                    other => other,
                }
            } else {
                c
            };
            if self.peek() == Some('-') && self.peek_at(1).map_or(false, |n| n != ']') {
                self.i += 1;
                let mut hi = self.peek().unwrap();
                self.i += 1;
                if hi == '\\' {
                    hi = self.peek().ok_or("unmatched [ in pattern")?;
                    self.i += 1;
                }
                if hi < lo {
                    return Err(format!("invalid range {}-{} in [...]", lo, hi));
                }
                cls.ranges.push((lo, hi));
            } else {
                cls.ranges.push((lo, lo));
            }
        }
        self.classes.push(cls);
        Ok(Node::Class(self.classes.len() - 1))
    }

    fn peek_at(&self, k: usize) -> Option<char> {
        self.chars.get(self.i + k).copied()
    }
}

fn emit(node: &Node, prog: &mut Vec<Inst>) -> Result<(), String> {
    if prog.len() > MAX_PROG {
        return Err("pattern too large".into());
    }
    match node {
        Node::Empty => {}
        Node::Char(c) => prog.push(Inst::Char(*c)),
        Node::Any => prog.push(Inst::Any),
        Node::Class(i) => prog.push(Inst::Class(*i)),
        Node::Start => prog.push(Inst::Start),
        Node::End => prog.push(Inst::End),
        Node::WordB(b) => prog.push(Inst::WordB(*b)),
        Node::Concat(items) => {
            for n in items {
                emit(n, prog)?;
            }
        }
        Node::Alt(branches) => {
            // split L1, next; L1: a; jmp end; next: split L2, next2; ...
            let mut jumps = Vec::new();
            for (k, b) in branches.iter().enumerate() {
                if k + 1 < branches.len() {
                    let split = prog.len();
                    prog.push(Inst::Split(split + 1, 0));
                    emit(b, prog)?;
                    jumps.push(prog.len());
                    prog.push(Inst::Jmp(0));
                    let next = prog.len();
                    prog[split] = Inst::Split(split + 1, next);
                } else {
                    emit(b, prog)?;
                }
            }
            let end = prog.len();
            for j in jumps {
                prog[j] = Inst::Jmp(end);
            }
        }
        Node::Repeat(body, min, max) => {
            for _ in 0..*min {
                emit(body, prog)?;
            }
            match max {
                None => {
                    let split = prog.len();
                    prog.push(Inst::Split(split + 1, 0));
                    emit(body, prog)?;
                    prog.push(Inst::Jmp(split));
                    let out = prog.len();
                    prog[split] = Inst::Split(split + 1, out);
                }
                Some(m) => {
                    let mut splits = Vec::new();
                    for _ in *min..*m {
                        splits.push(prog.len());
                        prog.push(Inst::Split(0, 0));
                        emit(body, prog)?;
                    }
                    let out = prog.len();
                    for s in splits {
                        prog[s] = Inst::Split(s + 1, out);
                    }
                }
            }
        }
    }
    Ok(())
}

fn is_word(c: Option<&char>) -> bool {
    c.map_or(false, |c| c.is_alphanumeric() || *c == '_')
}

impl Regex {
    /// Compile `pattern`; `fold` matches case-insensitively.
    pub fn new(pattern: &str, fold: bool) -> Result<Regex, String> {
        let mut classes = Vec::new();
        let node = {
            let mut p = Parser { chars: pattern.chars().collect(), i: 0, classes: &mut classes, fold };
            let node = p.alt(0)?;
            if p.i < p.chars.len() {
                return Err("unmatched ) in pattern".into());
            }
            node
        };
        let mut prog = Vec::new();
        emit(&node, &mut prog)?;
        prog.push(Inst::Match);
        Ok(Regex { prog, classes, fold })
    }

    /// A pattern that matches `text` literally.
    pub fn literal(text: &str, fold: bool) -> Regex {
        let mut prog: Vec<Inst> =
            text.chars().map(|c| Inst::Char(if fold { lower(c) } else { c })).collect();
        prog.push(Inst::Match);
        Regex { prog, classes: Vec::new(), fold }
    }

    /// Does the pattern match somewhere in `line`?
    pub fn is_match(&self, line: &str) -> bool {
        let text: Vec<char> =
            if self.fold { line.chars().map(lower).collect() } else { line.chars().collect() };
        let n = text.len();
        let width = n + 1;
        let mut seen = vec![0u64; (self.prog.len() * width + 63) / 64];
        let mut stack: Vec<(usize, usize)> = Vec::new();
        for start in 0..=n {
            stack.push((0, start));
            while let Some((pc, pos)) = stack.pop() {
                let key = pc * width + pos;
                if seen[key / 64] & (1u64 << (key % 64)) != 0 {
                    continue;
                }
                seen[key / 64] |= 1u64 << (key % 64);
                match self.prog[pc] {
                    Inst::Match => return true,
                    Inst::Char(c) => {
                        if pos < n && text[pos] == c {
                            stack.push((pc + 1, pos + 1));
                        }
                    }
                    Inst::Any => {
                        if pos < n {
                            stack.push((pc + 1, pos + 1));
                        }
                    }
                    Inst::Class(i) => {
                        if pos < n {
                            let c = text[pos];
                            let cls = &self.classes[i];
                            let hit = if self.fold {
                                cls.has(c) || cls.has(upper(c))
                            } else {
                                cls.has(c)
                            };
                            if hit {
                                stack.push((pc + 1, pos + 1));
                            }
                        }
                    }
                    Inst::Start => {
                        if pos == 0 {
                            stack.push((pc + 1, pos));
                        }
                    }
                    Inst::End => {
                        if pos == n {
                            stack.push((pc + 1, pos));
                        }
                    }
                    Inst::WordB(want) => {
                        let before = if pos == 0 { None } else { text.get(pos - 1) };
                        let at = (is_word(before) != is_word(text.get(pos))) == want;
                        if at {
                            stack.push((pc + 1, pos));
                        }
                    }
                    Inst::Split(a, b) => {
                        stack.push((b, pos));
                        stack.push((a, pos));
                    }
                    Inst::Jmp(t) => stack.push((t, pos)),
                }
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::Regex;

    fn m(p: &str, s: &str) -> bool {
        Regex::new(p, false).unwrap().is_match(s)
    }

    #[test]
    fn basics() {
        assert!(m("b", "abc"));
        assert!(!m("^b", "abc"));
        assert!(m("c$", "abc"));
        assert!(m("a.c", "abc"));
        assert!(m("^a[b-d]+$", "abdc"));
        assert!(!m("^a[^b]", "ab"));
        assert!(m("colou?r", "color"));
        assert!(m("(ab|cd){2}", "xxcdabyy"));
        assert!(!m("^(ab|cd){3}$", "cdab"));
        assert!(m("\\d{3}-\\d{4}", "call 555-1234"));
        assert!(m("\\bcat\\b", "a cat!"));
        assert!(!m("\\bcat\\b", "concatenate"));
        assert!(m("[[:upper:]]x", "aBx"));
        assert!(m("a\\.b", "a.b"));
        assert!(!m("a\\.b", "axb"));
        assert!(m("(a*)*b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaab"));
        assert!(!m("(a*)*b", &"a".repeat(5000)));
        assert!(Regex::new("HeLLo", true).unwrap().is_match("say hello"));
        assert!(Regex::new("[a-c]x", true).unwrap().is_match("BX"));
        assert!(Regex::new("(", false).is_err());
        assert!(Regex::new("[a", false).is_err());
        assert!(m("*a", "*a"));
        assert!(m("a{,", "a{,"));
    }
}
