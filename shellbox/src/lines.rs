//! Splitting bytes into lines the way the coreutils see them.

/// The lines of `data` without their `\n`, and whether the last one had a terminator.
/// Empty input has no lines.
pub fn split(data: &[u8]) -> (Vec<&[u8]>, bool) {
    if data.is_empty() {
        return (Vec::new(), true);
    }
    let terminated = data.last() == Some(&b'\n');
    let body = if terminated { &data[..data.len() - 1] } else { data };
    (body.split(|b| *b == b'\n').collect(), terminated)
}

/// Parse a count like `10`, `+3` or `-2` (the sign is returned separately).
pub fn count(s: &str) -> Option<(char, u64)> {
    let (sign, digits) = match s.chars().next() {
        Some('+') => ('+', &s[1..]),
        Some('-') => ('-', &s[1..]),
        _ => (' ', s),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok().map(|n| (sign, n))
}
