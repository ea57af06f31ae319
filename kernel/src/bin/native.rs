//! The same crate built for the host: `oql-native OP FILE [FILE2]` prints the operation's
//! output, and `oql-native bench OP FILE ITER` prints MB/s, for the wasm / native ratio.
use std::time::Instant;

fn run(op: &str, a: &str, b: &str) -> String {
    match op {
        "parse_headlines" => oql::ops::parse_headlines(a),
        "tangle_plan" => oql::ops::tangle_plan(a),
        "validate" => oql::ops::validate(a),
        "lint" => oql::ops::lint(a),
        "check_upgrade" => oql::ops::check_upgrade(a, b),
        "parse" => oql::ops::parse(a),
        "render" => oql::ops::render(a),
        "render_with" => oql::ops::render_with(a, b),
        _ => {
            eprintln!("unknown op {}", op);
            std::process::exit(2)
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() >= 5 && args[1] == "bench" {
        let text = std::fs::read_to_string(&args[3]).expect("read input");
        let iters: usize = args[4].parse().expect("iterations");
        let start = Instant::now();
        let mut total = 0usize;
        for _ in 0..iters {
            total += run(&args[2], &text, "").len();
        }
        let secs = start.elapsed().as_secs_f64();
        println!("{{\"op\":\"{}\",\"bytes\":{},\"iters\":{},\"seconds\":{},\"mb_s\":{},\"out\":{}}}",
                 args[2], text.len(), iters, secs, (text.len() * iters) as f64 / secs / 1e6, total);
        return;
    }
    if args.len() < 3 {
        eprintln!("usage: oql-native OP FILE [FILE2] | oql-native bench OP FILE ITER");
        std::process::exit(2);
    }
    let a = std::fs::read_to_string(&args[2]).expect("read input");
    let b = if args.len() > 3 { std::fs::read_to_string(&args[3]).expect("read input 2") } else { String::new() };
    println!("{}", run(&args[1], &a, &b));
}
