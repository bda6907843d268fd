//! Statement shapes (literals out, identifiers kept) and key prefixes: what `report` groups by.

use std::borrow::Cow;

use crate::read::log::{Key, KeyValue};

/// Normalises a statement to its shape: literals (numbers, quoted strings, dollar-quoted strings)
/// become `?`, `IN (?, ?, …)` becomes `IN (...)`, whitespace runs become one space, a trailing `;` goes.
/// Identifiers (also "quoted" ones) are kept: they are the shape.
pub fn normalize_statement(sql: &str) -> String {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let mut i = 0;
    let ident_char = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
    while i < b.len() {
        let c = b[i];
        match c {
            b'\'' => {
                // 'it''s' — doubled quotes stay inside; E'…' escapes with backslashes.
                let escapes = i > 0 && (b[i - 1] == b'E' || b[i - 1] == b'e') && !(i > 1 && ident_char(b[i - 2]));
                if escapes {
                    out.pop();
                }
                i = string_end(b, i, escapes);
                out.push('?');
            }
            b'"' => {
                let start = i;
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += 1;
                }
                i = (i + 1).min(b.len());
                out.push_str(&sql[start..i]);
            }
            b'$' if !(i > 0 && ident_char(b[i - 1])) && dollar_tag(&b[i..]).is_some() => {
                let tag_len = dollar_tag(&b[i..]).unwrap_or(1);
                let tag = &b[i..i + tag_len];
                let body = i + tag_len;
                let end = b[body..].windows(tag_len).position(|w| w == tag).map_or(b.len(), |p| body + p + tag_len);
                // $1-style parameters are not dollar quotes: dollar_tag rejects digits.
                out.push('?');
                i = end;
            }
            b'0'..=b'9' if !(i > 0 && ident_char(b[i - 1])) => {
                i = number_end(b, i);
                // A leading minus sign of a negative literal is kept: `- ?` and `-?` shapes are rare.
                out.push('?');
            }
            c if c.is_ascii_whitespace() => {
                while i < b.len() && b[i].is_ascii_whitespace() {
                    i += 1;
                }
                if !out.is_empty() {
                    out.push(' ');
                }
            }
            _ => {
                // Copy one UTF-8 character.
                let len = utf8_len(c);
                let end = (i + len).min(b.len());
                out.push_str(sql.get(i..end).unwrap_or("?"));
                i = end;
            }
        }
    }
    while out.ends_with(' ') || out.ends_with(';') {
        out.pop();
    }
    collapse_in_lists(&out)
}

/// Where the quoted string starting at `b[i]` (the opening quote) ends: after its closing quote.
/// Doubled quotes stay inside; with `escapes` (E'…') so does a backslash-escaped one.
fn string_end(b: &[u8], mut i: usize, escapes: bool) -> usize {
    i += 1;
    while i < b.len() {
        if escapes && b[i] == b'\\' {
            i += 2;
            continue;
        }
        if b[i] == b'\'' {
            if i + 1 < b.len() && b[i + 1] == b'\'' {
                i += 2;
                continue;
            }
            break;
        }
        i += 1;
    }
    i + 1
}

/// Where the numeric literal starting at `b[i]` ends (digits, dots, an exponent).
fn number_end(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
        i += 1;
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        let mut j = i + 1;
        if j < b.len() && (b[j] == b'+' || b[j] == b'-') {
            j += 1;
        }
        if j < b.len() && b[j].is_ascii_digit() {
            i = j;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
        }
    }
    i
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xf0..=0xff => 4,
        0xe0..=0xef => 3,
        0xc0..=0xdf => 2,
        _ => 1,
    }
}

/// Length of a `$tag$` opener at the start of `b` (tag: letters/underscore, not a `$1` parameter).
fn dollar_tag(b: &[u8]) -> Option<usize> {
    let rest = b.get(1..)?;
    let n = rest.iter().take_while(|c| c.is_ascii_alphabetic() || **c == b'_' || **c >= 0x80).count();
    (rest.get(n) == Some(&b'$')).then_some(n + 2)
}

/// `IN (?, ?, ?)` → `IN (...)`; also `IN (?)`, so one-key and many-key deletes share a shape.
fn collapse_in_lists(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    loop {
        let lower = rest.to_ascii_lowercase();
        let Some(pos) = find_in_keyword(&lower) else {
            out.push_str(rest);
            return out;
        };
        // pos points just past "in", at optional space then "(".
        let after = &rest[pos..];
        let trimmed = after.trim_start();
        if let Some(inner) = trimmed.strip_prefix('(') {
            if let Some(close) = inner.find(')') {
                let list = &inner[..close];
                if !list.is_empty() && list.chars().all(|c| c == '?' || c == ',' || c == ' ') && list.contains('?') {
                    out.push_str(&rest[..pos]);
                    out.push_str(" (...)");
                    rest = &inner[close + 1..];
                    continue;
                }
            }
        }
        out.push_str(&rest[..pos]);
        rest = after;
    }
}

/// Byte offset just past the next standalone `in` keyword.
fn find_in_keyword(lower: &str) -> Option<usize> {
    let b = lower.as_bytes();
    let mut from = 0;
    while let Some(p) = lower[from..].find("in") {
        let at = from + p;
        let before_ok = at == 0 || !(b[at - 1].is_ascii_alphanumeric() || b[at - 1] == b'_' || b[at - 1] == b'"');
        let end = at + 2;
        let after_ok = end == b.len() || !(b[end].is_ascii_alphanumeric() || b[end] == b'_' || b[end] == b'"');
        if before_ok && after_ok {
            return Some(end);
        }
        from = end;
    }
    None
}

/// The prefix a key is grouped by, from its first column: for a Django cache key
/// (`KEY_PREFIX:VERSION:key`, see [`crate::read::rollup::django_parts`]) `KEY_PREFIX:VERSION:` and the
/// key's own leading words ([`crate::read::rollup::own_prefix`]: `:1:user_session_abc123` →
/// `:1:user_session`); otherwise the text before the first `:` or `_` (the whole value if neither
/// occurs). The second value says whether it was a Django key.
pub fn key_prefix<'k>(key: &'k Key) -> (Cow<'k, str>, bool) {
    match key.0.first() {
        Some((_, KeyValue::Text(s))) => {
            let s: &str = s;
            if let Some((kp, ver, rest)) = crate::read::rollup::django_parts(s) {
                return (Cow::Owned(format!("{kp}:{ver}:{}", crate::read::rollup::own_prefix(rest))), true);
            }
            match s.find([':', '_']) {
                Some(p) => (Cow::Borrowed(&s[..p]), false),
                None => (Cow::Borrowed(s), false),
            }
        }
        Some((_, KeyValue::Null)) => (Cow::Borrowed("NULL"), false),
        Some((_, KeyValue::Other | KeyValue::TextHex(_))) => (Cow::Borrowed("{…}"), false),
        None => (Cow::Borrowed(""), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_shapes() {
        for (sql, want) in [
            ("DELETE FROM t WHERE id = 42", "DELETE FROM t WHERE id = ?"),
            ("DELETE FROM t WHERE k = 'it''s'  ;", "DELETE FROM t WHERE k = ?"),
            ("delete from t where k in ('a', 'b',\n 'c')", "delete from t where k in (...)"),
            (
                "DELETE FROM t WHERE k IN (1,2,3) AND x IN (SELECT 1)",
                "DELETE FROM t WHERE k IN (...) AND x IN (SELECT ?)",
            ),
            ("DELETE FROM t2 WHERE a1 = 1.5e3", "DELETE FROM t2 WHERE a1 = ?"),
            ("DELETE FROM \"T 1\" WHERE v = E'a\\'b'", "DELETE FROM \"T 1\" WHERE v = ?"),
            ("DELETE FROM t WHERE v = $$x'y$$ OR w = $1", "DELETE FROM t WHERE v = ? OR w = $1"),
            ("DELETE FROM t WHERE v = $tag$x$tag$", "DELETE FROM t WHERE v = ?"),
            ("SELECT 'unterminated", "SELECT ?"),
            ("DELETE FROM t WHERE pin = 3 AND inx = 4", "DELETE FROM t WHERE pin = ? AND inx = ?"),
            ("DELETE FROM é WHERE x = 'é'", "DELETE FROM é WHERE x = ?"),
        ] {
            assert_eq!(normalize_statement(sql), want, "{sql}");
        }
        // Never panics on odd input.
        for s in ["'", "$", "$a", "E'\\", "1e", "in (", "IN (?", "\"", "é'", "$é$"] {
            let _ = normalize_statement(s);
        }
    }

    #[test]
    fn key_prefixes() {
        let k = |s: &str| Key(vec![("id".into(), KeyValue::Text(s.to_owned().into()))]);
        let p = |s: &str| key_prefix(&k(s)).0.into_owned();
        assert_eq!(p("report:1"), "report");
        assert_eq!(p("user_9:x"), "user");
        assert_eq!(p("plain"), "plain");
        assert_eq!(key_prefix(&Key(vec![])).0, "");
        // Django's `KEY_PREFIX:VERSION:key`: grouped by the key's own leading words.
        assert_eq!(key_prefix(&k(":1:user_session_abc123")), (Cow::Borrowed(":1:user_session"), true));
        assert_eq!(p("shop:2:views.decorators.cache.cache_page.9f8e"), "shop:2:views.decorators.cache.cache_page");
        assert_eq!(p(":1:5f3a9c0d1e"), ":1:");
    }
}
