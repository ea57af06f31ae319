//! Cron expression validation: five fields (minute hour day-of-month month day-of-week)
//! of `*`, values, ranges `a-b`, steps `/n` and comma lists, month and weekday names
//! (`jan`, `mon`), or one of the `@hourly`-style macros.

const MONTHS: [&str; 12] = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
const MACROS: [&str; 7] = ["@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"];

struct Field {
    name: &'static str,
    lo: u32,
    hi: u32,
    names: &'static [&'static str],
    names_base: u32,
}

const FIELDS: [Field; 5] = [
    Field { name: "minute", lo: 0, hi: 59, names: &[], names_base: 0 },
    Field { name: "hour", lo: 0, hi: 23, names: &[], names_base: 0 },
    Field { name: "day-of-month", lo: 1, hi: 31, names: &[], names_base: 0 },
    Field { name: "month", lo: 1, hi: 12, names: &MONTHS, names_base: 1 },
    Field { name: "day-of-week", lo: 0, hi: 7, names: &DAYS, names_base: 0 },
];

fn value(f: &Field, s: &str) -> Result<u32, String> {
    if !s.is_empty() && s.len() <= 9 && s.bytes().all(|c| c.is_ascii_digit()) {
        let v: u32 = s.parse().map_err(|_| format!("bad number `{}` in {}", s, f.name))?;
        if v < f.lo || v > f.hi {
            return Err(format!("{} value {} out of range {}-{}", f.name, v, f.lo, f.hi));
        }
        return Ok(v);
    }
    let lower = s.to_ascii_lowercase();
    if let Some(i) = f.names.iter().position(|n| *n == lower) {
        return Ok(i as u32 + f.names_base);
    }
    if s.is_empty() {
        Err(format!("empty value in {}", f.name))
    } else {
        Err(format!("invalid {} value `{}`", f.name, s))
    }
}

fn item(f: &Field, it: &str) -> Result<(), String> {
    let (range, step) = match it.find('/') {
        Some(i) => (&it[..i], Some(&it[i + 1..])),
        None => (it, None),
    };
    if let Some(st) = step {
        if st.is_empty() || st.len() > 9 || !st.bytes().all(|c| c.is_ascii_digit()) {
            return Err(format!("invalid step `{}` in {}", st, f.name));
        }
        let n: u32 = st.parse().unwrap_or(0);
        if n == 0 || n > f.hi.max(1) {
            return Err(format!("step {} out of range in {}", n, f.name));
        }
    }
    if range == "*" {
        return Ok(());
    }
    match range.find('-') {
        Some(i) => {
            let a = value(f, &range[..i])?;
            let b = value(f, &range[i + 1..])?;
            if a > b {
                return Err(format!("{} range {} is backwards", f.name, range));
            }
            Ok(())
        }
        None => value(f, range).map(|_| ()),
    }
}

/// Ok(()) when `expr` is a valid cron expression, else the reason.
pub fn validate(expr: &str) -> Result<(), String> {
    let e = expr.trim();
    if e.starts_with('@') {
        return if MACROS.iter().any(|m| e.eq_ignore_ascii_case(m)) {
            Ok(())
        } else {
            Err(format!("unknown macro `{}`", e))
        };
    }
    let fields: Vec<&str> = e.split_ascii_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!("expected 5 fields, found {}", fields.len()));
    }
    for (f, text) in FIELDS.iter().zip(fields.iter()) {
        for it in text.split(',') {
            item(f, it)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::validate;
    #[test]
    fn accepts_and_rejects() {
        for ok in ["0 7 * * *", "*/15 0-23/2 1,15 jan-mar mon-fri", "@daily", "@HOURLY", "5 4 * * sun", "0 0 1 * 7", "59 23 31 12 6"] {
            assert!(validate(ok).is_ok(), "{}", ok);
        }
        for bad in ["", "* * * *", "60 * * * *", "* 24 * * *", "* * 0 * *", "* * * 13 *", "* * * * 8", "*/0 * * * *", "5-1 * * * *", "@reboot", "@often", "a b c d e", "* * * * * *", "1,,2 * * * *", "*/ * * * *"] {
            assert!(validate(bad).is_err(), "{}", bad);
        }
    }
}
