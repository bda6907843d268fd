//! The watched tables (what a delete of each will log, partitions and children, the right to publish
//! them) and a publication given with --publication.
use tokio_postgres::Client;

use crate::error::{Exit, Failure};
use crate::pg::catalog::Table;
use crate::pg::names::{parse_table, quote_ident};

use super::{Level, Report};

/// Checks one table; returns it when it exists. `publication_needed`: no --publication was given, so the
/// capture would create one.
pub(super) async fn check_table(
    c: &Client,
    r: &mut Report,
    arg: &str,
    can_create: bool,
    superuser: bool,
    publication_needed: bool,
) -> Result<Option<Table>, Failure> {
    let parsed = match parse_table(arg) {
        Ok(p) => p,
        Err(e) => {
            r.add(Level::Fail, e);
            return Ok(None);
        }
    };
    let table = match crate::pg::catalog::resolve_table(c, &parsed).await {
        Ok(t) => t,
        Err(f) => {
            r.add(Level::Fail, f.message);
            return Ok(None);
        }
    };
    let q = table.qualified();
    r.add(Level::Ok, format!("table {q}: {}", key_meaning(&table)));
    members(c, r, &table).await;
    let owner: bool = c
        .query_one("SELECT pg_has_role(relowner, 'USAGE') FROM pg_class WHERE oid = $1", &[&table.oid])
        .await
        .map(|row| row.get(0))
        .map_err(|e| Failure::new(Exit::Internal, e.to_string()))?;
    if !publication_needed {
        // Given with --publication: checked by `check_publication`.
    } else if superuser || (owner && can_create) {
        r.add(Level::Ok, format!("table {q}: this role can create its publication"));
    } else {
        r.add(
            Level::Fail,
            format!(
                "table {q}: creating the publication needs ownership of the table and CREATE on the database → have the owner run CREATE PUBLICATION walwitness_pub FOR TABLE ONLY {} WITH (publish = 'delete, truncate'); then check it with walwitness doctor --publication walwitness_pub and capture with --publication walwitness_pub",
                table.sql_name()
            ),
        );
    }
    Ok(Some(table))
}

/// What `key` and `old` of the table's deletes will hold, by its replica identity.
fn key_meaning(table: &Table) -> String {
    match (table.replica_identity, &table.primary_key) {
        ('f', Some(pk)) => format!(
            "REPLICA IDENTITY FULL: `key` = primary key ({}) from the old row, `old` = the whole deleted row",
            pk.join(", ")
        ),
        ('f', None) => "REPLICA IDENTITY FULL without a primary key: `key` is null, `old` = the whole deleted row".to_owned(),
        ('i', _) => "REPLICA IDENTITY USING INDEX: `key` = the index's columns, `old` = null (ALTER TABLE … REPLICA IDENTITY FULL to keep whole rows)".to_owned(),
        (_, Some(pk)) => format!(
            "REPLICA IDENTITY DEFAULT: `key` = primary key ({}), `old` = null (ALTER TABLE {} REPLICA IDENTITY FULL to log whole deleted rows, at the cost of more WAL)",
            pk.join(", "),
            table.sql_name()
        ),
        (_, None) => "no usable key".to_owned(),
    }
}

/// Partitions are logged as the table's rows; inheritance children are not.
async fn members(c: &Client, r: &mut Report, table: &Table) {
    let q = table.qualified();
    match crate::pg::catalog::members(c, table).await {
        Ok((partitions, children)) => {
            if !partitions.is_empty() {
                r.add(
                    Level::Ok,
                    format!(
                        "table {q}: {} partition{}, logged as {q}'s rows (with the partition named)",
                        partitions.len(),
                        if partitions.len() == 1 { "" } else { "s" }
                    ),
                );
            }
            if !children.is_empty() {
                r.add(
                    Level::Warn,
                    format!(
                        "table {q}: inheritance children ({}) are not logged, also when DELETE FROM {} removes their rows → watch them with their own --table",
                        children.join(", "),
                        table.sql_name()
                    ),
                );
            }
        }
        Err(f) => r.add(Level::Fail, f.message),
    }
}

/// A publication given with --publication: it must exist, publish deletes (truncates: a warning), include
/// every table and filter none of their rows — what the capture checks at start.
pub(super) async fn check_publication(
    c: &Client,
    r: &mut Report,
    publication: &str,
    tables: &[Table],
    version_num: u32,
) -> Result<(), Failure> {
    // Without tables the query has no row to carry the publication's options: ask for them directly.
    let options = c
        .query_opt("SELECT pubdelete, pubtruncate, pubviaroot FROM pg_publication WHERE pubname = $1", &[&publication])
        .await
        .map_err(|e| Failure::new(Exit::Internal, format!("cannot read pg_publication: {e}")))?;
    let Some(options) = options else {
        r.add(
            Level::Fail,
            format!(
                "publication {publication} does not exist → have the tables' owner run CREATE PUBLICATION {} FOR TABLE ONLY {} WITH (publish = 'delete, truncate');",
                quote_ident(publication),
                if tables.is_empty() { "<table>".to_owned() } else { tables.iter().map(|t| t.sql_name()).collect::<Vec<_>>().join(", ONLY ") }
            ),
        );
        return Ok(());
    };
    let (delete, truncate, viaroot): (bool, bool, bool) = (options.get(0), options.get(1), options.get(2));
    let name = quote_ident(publication);
    if delete {
        r.add(Level::Ok, format!("publication {publication} publishes deletes"));
    } else {
        r.add(
            Level::Fail,
            format!("publication {publication} does not publish deletes → ALTER PUBLICATION {name} SET (publish = 'delete, truncate');"),
        );
    }
    if !truncate {
        r.add(
            Level::Warn,
            format!("publication {publication} does not publish TRUNCATE: truncates will not be logged → ALTER PUBLICATION {name} SET (publish = 'delete, truncate');"),
        );
    }
    if viaroot && truncate && tables.iter().any(|t| t.partitioned) {
        r.add(
            Level::Warn,
            format!("publication {publication} has publish_via_partition_root = true: PostgreSQL then does not publish a TRUNCATE of single partitions, so those will not be logged"),
        );
    }
    if tables.is_empty() {
        return Ok(());
    }
    publication_coverage(c, r, publication, tables, version_num).await
}

/// Every table included, none of its rows filtered.
async fn publication_coverage(
    c: &Client,
    r: &mut Report,
    publication: &str,
    tables: &[Table],
    version_num: u32,
) -> Result<(), Failure> {
    use crate::pg::coverage;
    let expect = coverage::Expect {
        publication: publication.to_owned(),
        tables: tables.iter().map(|t| coverage::Watched { oid: t.oid, name: t.qualified() }).collect(),
        truncates: true,
    };
    let name = quote_ident(publication);
    let (_, _, rows) = coverage::query(c, &expect, version_num).await.map_err(|e| {
        Failure::new(Exit::Internal, format!("cannot check what publication {publication} covers: {e}"))
    })?;
    for t in tables {
        let q = t.qualified();
        let Some(row) = rows.iter().find(|row| row.oid == t.oid) else { continue };
        if !row.published {
            r.add(
                Level::Fail,
                format!(
                    "publication {publication} does not include {q} → ALTER PUBLICATION {name} ADD TABLE ONLY {};",
                    t.sql_name()
                ),
            );
        } else if let Some(f) = &row.row_filter {
            r.add(
                Level::Fail,
                format!(
                    "publication {publication} publishes only the rows of {q} matching WHERE {f}: deletes of other rows would not be sent → ALTER PUBLICATION {name} DROP TABLE {t}; ALTER PUBLICATION {name} ADD TABLE ONLY {t}; (or use another publication)",
                    t = t.sql_name()
                ),
            );
        } else {
            r.add(Level::Ok, format!("publication {publication} includes {q}, all rows"));
        }
    }
    Ok(())
}
