//! shellbox: the agent shell's commands as one multicall WASI program.
//!
//! The host (workbooks/agent/shell) parses the shell line itself and runs each stage of a
//! pipeline as a fresh instance of this module: argv[0] names the command, stdin is the previous
//! stage's output, and the only directory the stage can see is the run's working dir (read-only).
//! Nothing here touches the network, the clock or the environment.

mod applets;
mod io;
mod lines;
mod regex;

use std::process::exit;

fn main() {
    let mut args: Vec<String> = std::env::args().collect();
    if args.is_empty() {
        io::fail("shellbox", "no command given", 2);
    }
    let name = args.remove(0);
    let code = match name.as_str() {
        "cat" => applets::cat(&args),
        "echo" => applets::echo(&args),
        "seq" => applets::seq(&args),
        "head" => applets::head(&args),
        "tail" => applets::tail(&args),
        "wc" => applets::wc(&args),
        "nl" => applets::nl(&args),
        "rev" => applets::rev(&args),
        "sort" => applets::sort(&args),
        "uniq" => applets::uniq(&args),
        "tr" => applets::tr(&args),
        "basename" => applets::basename(&args),
        "dirname" => applets::dirname(&args),
        "true" => 0,
        "false" => 1,
        "grep" => applets::grep(&args),
        "upper" => applets::upper(&args),
        other => {
            io::fail(other, "unknown command", 2);
        }
    };
    io::flush();
    exit(code);
}
