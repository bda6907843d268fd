//! What the capture's publication covers, read from the catalog: which watched tables it still sends,
//! with which row filter, column list and `publish` option (`capture::coverage` watches it while a
//! capture runs; `doctor` checks it once).
use tokio_postgres::Client;

use crate::protocol::Lsn;

/// A watched table: its OID when the capture started, and its name as the log writes it.
#[derive(Debug, Clone)]
pub struct Watched {
    pub oid: u32,
    pub name: String,
}

/// What coverage the capture started with.
#[derive(Debug, Clone)]
pub struct Expect {
    pub publication: String,
    pub tables: Vec<Watched>,
    /// The publication published TRUNCATE at start (if not, a warning said so then).
    pub truncates: bool,
}

/// One way coverage can be lost.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Aspect {
    pub reason: &'static str,
    pub table: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub aspect: Aspect,
    pub detail: String,
}

/// One row of the check query, per watched table.
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub oid: u32,
    pub exists: bool,
    pub published: bool,
    pub row_filter: Option<String>,
    /// `None`: the publication does not exist.
    pub pubdelete: Option<bool>,
    pub pubtruncate: Option<bool>,
}

/// What is not covered, from the check query's rows. Pure.
pub fn findings(expect: &Expect, rows: &[Row]) -> Vec<Finding> {
    let p = &expect.publication;
    let mut out = Vec::new();
    let publication = rows.first().and_then(|r| r.pubdelete.zip(r.pubtruncate));
    let mut push = |reason, table: Option<&str>, detail: String| {
        out.push(Finding { aspect: Aspect { reason, table: table.map(str::to_owned) }, detail })
    };
    match publication {
        None => push(
            "publication_dropped",
            None,
            format!("publication {p} was dropped: the server sends none of the watched tables' changes (the replication stream is expected to fail)"),
        ),
        Some((delete, truncate)) => {
            if !delete {
                push(
                    "deletes_unpublished",
                    None,
                    format!("publication {p} no longer publishes deletes (its publish option was changed): DELETEs on the watched tables are not sent"),
                );
            }
            if !truncate && expect.truncates {
                push(
                    "truncates_unpublished",
                    None,
                    format!("publication {p} no longer publishes truncates (its publish option was changed): TRUNCATEs of the watched tables are not sent"),
                );
            }
        }
    }
    for t in &expect.tables {
        let Some(r) = rows.iter().find(|r| r.oid == t.oid) else { continue };
        let name = Some(t.name.as_str());
        if !r.exists {
            push(
                "table_dropped",
                name,
                format!(
                    "table {} (OID {}) was dropped: its rows went without DELETE or TRUNCATE records, and a table created again under its name is not covered by this run",
                    t.name, t.oid
                ),
            );
        } else if publication.is_some() && !r.published {
            push(
                "table_unpublished",
                name,
                format!("publication {p} no longer includes {} (ALTER PUBLICATION … DROP TABLE or SET TABLE): its deletes are not sent", t.name),
            );
        } else if let Some(f) = r.row_filter.as_ref().filter(|_| publication.is_some()) {
            push(
                "table_row_filter",
                name,
                format!("publication {p} publishes only the rows of {} matching WHERE {f}: deletes of other rows are not sent", t.name),
            );
        }
    }
    out
}

const LSN_NOW: &str =
    "(CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_last_wal_replay_lsn() ELSE pg_catalog.pg_current_wal_lsn() END)::text";

fn check_sql(version_num: u32) -> String {
    // Row filters exist from PostgreSQL 15 (`pg_publication_tables.rowfilter`).
    let rowfilter = if version_num >= 150000 { "p.rowfilter" } else { "NULL::text" };
    format!(
        "WITH pt AS ( \
           SELECT c.oid AS relid, {rowfilter} AS rowfilter FROM pg_catalog.pg_publication_tables p \
           JOIN pg_catalog.pg_namespace n ON n.nspname = p.schemaname \
           JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = p.tablename \
           WHERE p.pubname = $1) \
         SELECT w.oid, c.oid IS NOT NULL, \
           EXISTS (SELECT 1 FROM pt WHERE pt.relid = w.oid \
             OR (c.relkind = 'p' AND pt.relid IN (SELECT t.relid FROM pg_catalog.pg_partition_tree(w.oid) t))), \
           (SELECT string_agg(pt.rowfilter, ' OR ') FROM pt WHERE pt.relid = w.oid AND pt.rowfilter IS NOT NULL), \
           pub.pubdelete, pub.pubtruncate, {LSN_NOW} \
         FROM unnest($2::oid[]) AS w(oid) \
         LEFT JOIN pg_catalog.pg_class c ON c.oid = w.oid \
         LEFT JOIN pg_catalog.pg_publication pub ON pub.pubname = $1"
    )
}

/// The server's WAL position now.
pub async fn current_lsn(c: &Client) -> Result<Lsn, tokio_postgres::Error> {
    let s: String = c.query_one(&format!("SELECT {LSN_NOW}"), &[]).await?.get(0);
    Ok(s.parse().unwrap_or_default())
}

/// Runs one check: (before, after, rows).
pub async fn query(
    c: &Client,
    expect: &Expect,
    version_num: u32,
) -> Result<(Lsn, Lsn, Vec<Row>), tokio_postgres::Error> {
    let before = current_lsn(c).await?;
    let oids: Vec<u32> = expect.tables.iter().map(|t| t.oid).collect();
    let rows = c.query(&check_sql(version_num), &[&expect.publication, &oids]).await?;
    let mut after = before;
    let rows = rows
        .iter()
        .map(|r| {
            if let Ok(s) = r.try_get::<_, String>(6) {
                after = after.max(s.parse().unwrap_or_default());
            }
            Row {
                oid: r.get(0),
                exists: r.get(1),
                published: r.get(2),
                row_filter: r.get(3),
                pubdelete: r.get(4),
                pubtruncate: r.get(5),
            }
        })
        .collect();
    Ok((before, after, rows))
}
