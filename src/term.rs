//! Text from the server, the log or any file, made safe to show on a terminal.
//!
//! Whoever deletes rows controls much of what walwitness shows: the statement (a SQL comment can hold
//! anything), the keys, `application_name`, a prepared transaction's gid, table names. Printed raw,
//! an escape sequence erases or rewrites lines (`ESC [ 2K`, OSC titles, hyperlinks), a carriage
//! return overwrites the start of the line, and a newline fabricates whole lines — a fake transaction
//! block in `tail`, even when piped into a file. So every such field is escaped before it reaches a
//! human: C0 controls (newline, CR and tab included), DEL, the C1 controls, the Unicode line and
//! paragraph separators and the bidirectional overrides and isolates (which reorder what is shown).
//! `\n`, `\r` and `\t` are written so; the rest as `\x1b` (below U+0080) or `\u{202e}`. A backslash is
//! left as it is: the escaped text is for reading, and the JSON outputs (`tail --json`, `replay`,
//! `report --format json`) stay byte-exact.
use std::borrow::Cow;
use std::fmt;

/// Whether `c` must not reach a terminal as it is.
fn unsafe_char(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}'
        // ARABIC LETTER MARK, LRM, RLM, line and paragraph separators, embeddings and overrides,
        // isolates.
        | '\u{61c}' | '\u{200e}' | '\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` with every control, line-breaking or reordering character escaped (borrowed when clean).
pub fn clean(s: &str) -> Cow<'_, str> {
    if !s.chars().any(unsafe_char) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if unsafe_char(c) && (c as u32) < 0x80 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if unsafe_char(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Displays a string escaped by [`clean`]: `format!("{}", Shown(&s))`.
pub struct Shown<'a>(pub &'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&clean(self.0))
    }
}

/// Prints one line to stderr, escaped (for messages that carry server or file text).
pub fn eprint_line(msg: &str) {
    eprintln!("{}", clean(msg));
}

/// `--color`: whether output is coloured (`colour_for`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ColorChoice {
    #[default]
    Auto,
    Always,
    Never,
}

static COLOUR: std::sync::OnceLock<ColorChoice> = std::sync::OnceLock::new();

/// Records `--color` for the whole process (set once, by `main`).
pub fn set_colour_choice(choice: ColorChoice) {
    let _ = COLOUR.set(choice);
}

/// Whether to colour output going to a stream that is (or is not) a terminal: `--color always` or
/// `never` decide; `auto` colours a terminal unless NO_COLOR is set to anything non-empty (no-color.org).
pub fn colour_for(is_terminal: bool) -> bool {
    match COLOUR.get().copied().unwrap_or_default() {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => is_terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
    }
}

/// Byte counts for people: `512 B`, `1.5 MB` (powers of 1024).
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_controls_and_keeps_the_rest() {
        assert!(matches!(clean("DELETE FROM t WHERE k = 'é€😀\\x'"), Cow::Borrowed(_)));
        assert_eq!(clean("a\nb\r\tc"), "a\\nb\\r\\tc");
        assert_eq!(clean("\x1b[2K\x1b]0;title\x07"), "\\x1b[2K\\x1b]0;title\\x07");
        assert_eq!(clean("\u{9b}31m \u{85} \x7f \0"), "\\u{9b}31m \\u{85} \\x7f \\x00");
        assert_eq!(clean("abc\u{202e}fed\u{2066}x\u{2069}\u{2028}"), "abc\\u{202e}fed\\u{2066}x\\u{2069}\\u{2028}");
        assert_eq!(Shown("x\ny").to_string(), "x\\ny");
        for c in (0..=0x10ffffu32).filter_map(char::from_u32) {
            let s = clean(&c.to_string()).into_owned();
            assert!(!s.chars().any(unsafe_char), "{c:?} → {s:?}");
        }
    }
}
