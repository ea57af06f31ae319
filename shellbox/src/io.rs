//! Input and output: stdin and confined files in, one buffered stdout out.
//!
//! Output is buffered here (one 64 KiB write at a time) because every write is a host call.
//! A failed write means the host refused more output (the per-stage cap): stop at once.

use std::cell::RefCell;
use std::io::{Read, Write};
use std::process::exit;

const CHUNK: usize = 64 * 1024;

thread_local! {
    static OUT: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(CHUNK));
}

fn write_raw(buf: &[u8]) {
    let mut so = std::io::stdout();
    if so.write_all(buf).and_then(|_| so.flush()).is_err() {
        let _ = std::io::stderr().write_all(b"shellbox: output refused by the host (stage output limit)\n");
        exit(3);
    }
}

/// Append bytes to stdout.
pub fn out(bytes: &[u8]) {
    OUT.with(|o| {
        let mut o = o.borrow_mut();
        o.extend_from_slice(bytes);
        if o.len() >= CHUNK {
            write_raw(&o);
            o.clear();
        }
    });
}

pub fn out_str(s: &str) {
    out(s.as_bytes());
}

pub fn flush() {
    OUT.with(|o| {
        let mut o = o.borrow_mut();
        if !o.is_empty() {
            write_raw(&o);
            o.clear();
        }
    });
}

/// `cmd: msg` on stderr.
pub fn warn(cmd: &str, msg: &str) {
    flush();
    let _ = std::io::stderr().write_all(format!("{}: {}\n", cmd, msg).as_bytes());
}

/// `cmd: msg` on stderr, then exit with `code`.
pub fn fail(cmd: &str, msg: &str, code: i32) -> ! {
    warn(cmd, msg);
    exit(code);
}

pub fn read_stdin() -> Vec<u8> {
    let mut buf = Vec::new();
    if std::io::stdin().read_to_end(&mut buf).is_err() {
        buf.clear();
    }
    buf
}

/// The OS error in words, without Rust's "(os error N)" suffix.
fn describe(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        NotFound => "No such file or directory".to_string(),
        PermissionDenied => "Permission denied (outside your working dir, or not readable)".to_string(),
        _ => {
            let s = e.to_string();
            match s.find(" (os error") {
                Some(i) => s[..i].to_string(),
                None => s,
            }
        }
    }
}

/// A file's bytes (`-` is stdin), or a `cmd: name: reason` message.
pub fn read_file(cmd: &str, name: &str) -> Result<Vec<u8>, String> {
    if name == "-" {
        return Ok(read_stdin());
    }
    match std::fs::metadata(name) {
        Ok(m) if m.is_dir() => return Err(format!("{}: {}: Is a directory", cmd, name)),
        Err(e) => return Err(format!("{}: {}: {}", cmd, name, describe(&e))),
        _ => {}
    }
    std::fs::read(name).map_err(|e| format!("{}: {}: {}", cmd, name, describe(&e)))
}

/// The inputs a file-taking command reads: its FILE operands, or stdin when there are none.
/// Unreadable files are reported on stderr and skipped; the flag says whether any failed.
pub fn inputs(cmd: &str, files: &[String]) -> (Vec<(String, Vec<u8>)>, bool) {
    if files.is_empty() {
        return (vec![("-".to_string(), read_stdin())], false);
    }
    let mut got = Vec::new();
    let mut failed = false;
    for f in files {
        match read_file(cmd, f) {
            Ok(b) => got.push((f.clone(), b)),
            Err(msg) => {
                flush();
                let _ = std::io::stderr().write_all(format!("{}\n", msg).as_bytes());
                failed = true;
            }
        }
    }
    (got, failed)
}
