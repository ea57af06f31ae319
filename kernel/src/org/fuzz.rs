//! A quick native fuzz: random Org-ish documents through every structural op must never
//! panic and must always produce valid JSON.

const TOKENS: &[&str] = &[
    "*", "* ", "** ", "*** ", " ", "\n", "\r\n", "\t", ":", "::", "#+begin_src js", "#+begin_src", "#+end_src",
    "#+BEGIN_EXAMPLE", "#+end_example", "#+TODO: A B | C", "#+HEADER: :in x", "SCHEDULED: ", "DEADLINE:",
    "CLOSED: ", "<2024-01-01", " Mon", " 10:00", "-11:00", ">", "[", "]", "(", ")", "\"", "TODO ", "A ", "C ",
    ":PROPERTIES:", ":END:", ":ID: ", "é", "日本", "+1w", ".+2d", "++3m", "-2d", "--", "<%%(", "COMMENT",
    "[#A] ", "[#", ":workflow:", ":component:", " :in x", " :out x", " :out y", " :in y", " :uses net",
    " :persist", " :deps a,b", ":SCHEDULE: ", "0 7 * * *", "@daily", "61 * * * *", ",* ", "\\", "\u{feff}", "x",
    "word", "=", "~", "/", "_", "+", "[[", "]]", "%", "@", "#",
];

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

#[test]
fn random_documents_never_panic_and_give_json() {
    let mut rng = Rng(0x5eed);
    for round in 0..3000 {
        let len = (rng.next() % 120) as usize;
        let mut doc = String::new();
        for _ in 0..len {
            doc.push_str(TOKENS[(rng.next() as usize) % TOKENS.len()]);
        }
        for (name, out) in [
            ("parse_headlines", crate::ops::parse_headlines(&doc)),
            ("tangle_plan", crate::ops::tangle_plan(&doc)),
            ("validate", crate::ops::validate(&doc)),
            ("parse", crate::ops::parse(&doc)),
            ("check_upgrade", crate::ops::check_upgrade(&doc, "* w :workflow:\n")),
        ] {
            assert!(crate::json::parse(&out).is_ok(), "round {} {} gave invalid JSON for {:?}: {}", round, name, doc, out);
        }
    }
}

#[test]
fn hostile_families_complete() {
    let n = 20_000;
    let docs = vec![
        "*bold ".repeat(n),
        "=code ".repeat(n),
        "[[link ".repeat(n),
        "#+begin_src\n".repeat(n),
        "#+begin_example x\n#+TODO: A\n".repeat(n),
        ":DRAWER:\n".repeat(n),
        "* h\n:PROPERTIES:\n".repeat(n),
        "x".repeat(1 << 20),
        (0..3000).map(|i| format!("{}- item\n", " ".repeat(i))).collect::<String>(),
        format!("{} deep\n", "*".repeat(10_000)),
        (1..=3000).map(|i| format!("{} w :workflow:\n", "*".repeat(i))).collect::<String>(),
        format!("* w :workflow:\n** c :component:\n#+begin_src js {}\n#+end_src\n", "( [ \" :in ".repeat(n)),
    ];
    for d in &docs {
        let _ = crate::ops::parse_headlines(d);
        let _ = crate::ops::tangle_plan(d);
        let _ = crate::ops::validate(d);
        let _ = crate::ops::parse(d);
    }
}

/// Character-level soup (set FUZZ_SEED / FUZZ_ROUNDS for a longer run; 100k rounds were clean).
#[test]
fn char_soup() {
    let alphabet: Vec<char> = " *:#+[]<>()\"\\\n\r\t-.%@_,=~/|abcdeSCHEDULD0123456789é日\u{feff}TODOPRIESND".chars().collect();
    let mut rng = Rng(std::env::var("FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(7));
    let rounds: usize = std::env::var("FUZZ_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(1000);
    for _ in 0..rounds {
        let len = (rng.next() % 300) as usize;
        let doc: String = (0..len).map(|_| alphabet[(rng.next() as usize) % alphabet.len()]).collect();
        let doc = format!("* w :workflow:\n** c :component:\n#+begin_src js {}\n#+end_src\n{}", &doc, &doc);
        for out in [crate::ops::parse_headlines(&doc), crate::ops::tangle_plan(&doc), crate::ops::validate(&doc), crate::ops::parse(&doc)] {
            assert!(crate::json::parse(&out).is_ok(), "{:?}", doc);
        }
    }
}
