//! Names: the tables the user asked for, and the server objects walwitness names after them.

/// A `--table` argument split into schema and table. Unquoted parts are raw names (`Sales.Order Lines`
/// means schema `Sales`, table `Order Lines`); `"a.b"."C"` quotes keep dots and case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableArg {
    pub schema: String,
    pub table: String,
    /// Whether each part was quoted; unquoted parts are also tried folded to lower case, as SQL would.
    pub schema_quoted: bool,
    pub table_quoted: bool,
}

pub fn parse_table(arg: &str) -> Result<TableArg, String> {
    let mut parts = Vec::new();
    let mut rest = arg;
    loop {
        if let Some(after) = rest.strip_prefix('"') {
            let mut name = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next() {
                    Some((i, '"')) => {
                        if after[i + 1..].starts_with('"') {
                            name.push('"');
                            chars.next();
                        } else {
                            break i + 1;
                        }
                    }
                    Some((_, c)) => name.push(c),
                    None => return Err(format!("unterminated quote in table name {arg:?}")),
                }
            };
            parts.push((name, true));
            rest = &after[end..];
            if rest.is_empty() {
                break;
            }
            rest = rest.strip_prefix('.').ok_or_else(|| format!("expected '.' after a quoted name in {arg:?}"))?;
        } else if parts.is_empty() {
            match rest.split_once('.') {
                Some((s, t)) => {
                    parts.push((s.to_owned(), false));
                    rest = t;
                    if !rest.starts_with('"') {
                        parts.push((rest.to_owned(), false));
                        break;
                    }
                }
                None => {
                    parts.push((rest.to_owned(), false));
                    break;
                }
            }
        } else {
            parts.push((rest.to_owned(), false));
            break;
        }
    }
    let (schema, table) = match parts.len() {
        1 => (("public".to_owned(), false), parts.remove(0)),
        2 => {
            let t = parts.remove(1);
            (parts.remove(0), t)
        }
        _ => return Err(format!("table name {arg:?} has more than schema and table")),
    };
    if schema.0.is_empty() || table.0.is_empty() {
        return Err(format!("empty schema or table name in {arg:?}"));
    }
    Ok(TableArg { schema: schema.0, table: table.0, schema_quoted: schema.1, table_quoted: table.1 })
}

/// SQL identifier quoting.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// SQL string literal quoting (standard_conforming_strings: backslash is not special).
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Server object names must be short, lower-case ASCII identifiers (slot names: `[a-z0-9_]`, at most 63
/// bytes). Anything else becomes `_`; long names keep a hash of the original so different tables
/// never share a slot.
pub fn object_name(prefix: &str, parts: &[&str]) -> String {
    let raw = parts.join("_");
    let mut name: String = format!("{prefix}_{raw}")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
        .collect();
    let lossy = name != format!("{prefix}_{raw}");
    if name.len() > 63 || lossy {
        let h = fnv1a(raw.as_bytes());
        name.truncate(54);
        name = format!("{name}_{h:08x}");
    }
    name
}

fn fnv1a(b: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for &x in b {
        h ^= u32::from(x);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> (String, String) {
        let a = parse_table(s).unwrap();
        (a.schema, a.table)
    }

    #[test]
    fn table_args() {
        assert_eq!(t("cache"), ("public".into(), "cache".into()));
        assert_eq!(t("public.tracebase_cache_table"), ("public".into(), "tracebase_cache_table".into()));
        assert_eq!(t("Sales.Order Lines"), ("Sales".into(), "Order Lines".into()));
        assert_eq!(t("\"a.b\".\"Q\"\"x\""), ("a.b".into(), "Q\"x".into()));
        assert_eq!(t("s.\"T.1\""), ("s".into(), "T.1".into()));
        assert!(parse_table("\"open").is_err());
        assert!(parse_table(".x").is_err());
        assert!(parse_table("\"a\".\"b\".\"c\"").is_err());
        assert!(parse_table("\"a\"x").is_err());
    }

    #[test]
    fn object_names_are_valid_slot_names() {
        assert_eq!(object_name("walwitness", &["app", "cache"]), "walwitness_app_cache");
        let n = object_name("walwitness", &["app", "Sales", "Order Lines"]);
        assert!(n.len() <= 63 && n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
        assert_ne!(n, object_name("walwitness", &["app", "sales", "order_lines"]));
        let long = object_name("walwitness", &["d", &"x".repeat(100)]);
        assert!(long.len() <= 63);
        assert_ne!(long, object_name("walwitness", &["d", &"x".repeat(99)]));
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
