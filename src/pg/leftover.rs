//! What a deliberate end could not remove, with the statements that remove it and who may run them:
//! written in `capture_stopped.left_behind` and explained on stderr.
use serde::Serialize;

use super::names::{quote_ident, quote_literal};

/// Something a deliberate end meant to remove and could not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Leftover {
    /// `trigger` (the attribution triggers of one table), `schema` (the attribution schema: key and
    /// function), `slot` or `publication`.
    pub object: &'static str,
    /// The slot's, publication's or schema's name; for `trigger`, the trigger names joined by `, `.
    pub name: String,
    /// For `trigger`: the table, `schema.name` as the log writes it.
    pub table: Option<String>,
    /// The statement(s) that remove it.
    pub sql: String,
    /// Who may run `sql`, in words (the table's owner, a role with REPLICATION, …).
    pub run_as: String,
    /// Why it was not removed (the server's message).
    pub error: String,
    /// The reason was a missing privilege (SQLSTATE 42501).
    #[serde(skip)]
    pub privilege: bool,
}

impl Leftover {
    pub fn slot(slot: &str, error: impl Into<String>) -> Leftover {
        Leftover {
            object: "slot",
            name: slot.to_owned(),
            table: None,
            sql: format!("SELECT pg_drop_replication_slot({});", quote_literal(slot)),
            run_as: "a role with REPLICATION (or a superuser), once no capture uses the slot".into(),
            error: error.into(),
            privilege: false,
        }
    }

    pub fn publication(publication: &str, owner: Option<&str>, error: impl Into<String>) -> Leftover {
        Leftover {
            object: "publication",
            name: publication.to_owned(),
            table: None,
            sql: format!("DROP PUBLICATION IF EXISTS {};", quote_ident(publication)),
            run_as: match owner {
                Some(o) => format!("its owner (role {o}) or a superuser"),
                None => "its owner or a superuser".into(),
            },
            error: error.into(),
            privilege: false,
        }
    }
}

/// What to tell the user about `left`, after `headline`: what stayed and why, then the statements grouped
/// by who runs them.
pub fn explain(headline: &str, left: &[Leftover]) -> String {
    let mut s = format!("{headline}:\n");
    for l in left {
        let what = match (&l.table, l.object) {
            (Some(t), _) => format!("attribution triggers on {t} ({})", l.name),
            (None, "schema") => format!("schema {} (attribution key and function)", l.name),
            (None, o) => format!("{o} {}", l.name),
        };
        s.push_str(&format!("  {what}: {}\n", l.error));
    }
    s.push_str("Remove what is left with these statements (psql \"$DSN\" -c '…'):\n");
    let mut roles: Vec<&str> = Vec::new();
    for l in left {
        if !roles.contains(&l.run_as.as_str()) {
            roles.push(&l.run_as);
        }
    }
    for r in roles {
        s.push_str(&format!("  -- as {r}:\n"));
        for l in left.iter().filter(|l| l.run_as == r) {
            s.push_str(&format!("  {}\n", l.sql));
        }
    }
    if left.iter().any(|l| l.object == "slot") {
        s.push_str(
            "Until the slot is dropped it keeps WAL on the server (or run the same capture again to resume from it).\n",
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explain_groups_statements_by_role() {
        let left = vec![
            Leftover {
                object: "trigger",
                name: "walwitness_attribution_delete, walwitness_attribution_truncate".into(),
                table: Some("public.cache".into()),
                sql: "DROP TRIGGER IF EXISTS \"walwitness_attribution_delete\" ON \"public\".\"cache\";".into(),
                run_as: "the owner of public.cache (role owner) or a superuser".into(),
                error: "must be owner of table cache".into(),
                privilege: true,
            },
            Leftover::slot("walwitness_x", "must be superuser or replication role to use replication slots"),
            Leftover::publication("p'q", Some("cap"), "boom"),
        ];
        let text = explain("could not remove everything", &left);
        assert!(text.starts_with("could not remove everything:\n  attribution triggers on public.cache"), "{text}");
        assert!(
            text.contains("  -- as the owner of public.cache (role owner) or a superuser:\n  DROP TRIGGER"),
            "{text}"
        );
        assert!(text.contains("  SELECT pg_drop_replication_slot('walwitness_x');\n"), "{text}");
        assert!(text.contains("  DROP PUBLICATION IF EXISTS \"p'q\";\n"), "{text}");
        assert!(text.contains("keeps WAL"), "{text}");
        assert_eq!(Leftover::slot("a'b", "").sql, "SELECT pg_drop_replication_slot('a''b');");
    }
}
