//! Preflight and server objects: checks everything before changing anything, then creates (or reuses)
//! the publication. The slot is created on the replication connection (see `capture::mod`).
//!
//! Refusals come before any DDL, so a server that is not ready is left exactly as it was.
use tokio_postgres::Client;

use crate::error::{Exit, Failure};
use crate::pg::names::{object_name, quote_ident, quote_literal, TableArg};

/// Comment marking publications walwitness created, so a deliberate end (and `cleanup`) drops only those.
pub const OWNER_COMMENT: &str = "created by walwitness";

#[derive(Debug, Clone)]
pub struct Table {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    pub replica_identity: char,
    pub primary_key: Option<Vec<String>>,
    /// A partitioned table (relkind 'p').
    pub partitioned: bool,
}

/// A partition (at any depth) of a watched table: its rows are the watched table's.
#[derive(Debug, Clone)]
pub struct Partition {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    pub primary_key: Option<Vec<String>>,
}

impl Table {
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
    pub fn sql_name(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

#[derive(Debug, Clone)]
pub struct ServerInfo {
    pub version_num: u32,
    pub version: String,
    pub database: String,
    pub user: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotState {
    Absent,
    /// Exists, inactive, usable: resume from its confirmed position.
    Reusable {
        confirmed_flush: Option<String>,
    },
    /// Invalidated by the server (`wal_status = lost`): the WAL it needed is gone.
    Lost,
}

use crate::error::from_sql as q;

pub async fn server_info(c: &Client) -> Result<ServerInfo, Failure> {
    let row = c
        .query_one(
            "SELECT current_setting('server_version_num')::int, current_setting('server_version'), current_database()::text, current_user::text, current_setting('wal_level')",
            &[],
        )
        .await
        .map_err(|e| q("cannot read server settings", e))?;
    let version_num: i32 = row.get(0);
    let info =
        ServerInfo { version_num: version_num as u32, version: row.get(1), database: row.get(2), user: row.get(3) };
    if info.version_num < 140000 {
        return Err(Failure::new(
            Exit::ServerSetup,
            format!(
                "PostgreSQL {} is too old: walwitness needs PostgreSQL 14 or later (pgoutput with messages)",
                info.version
            ),
        ));
    }
    let wal_level: String = row.get(4);
    if wal_level != "logical" {
        return Err(Failure::new(
            Exit::ServerSetup,
            format!(
                "wal_level is '{wal_level}', logical decoding needs 'logical': run ALTER SYSTEM SET wal_level = logical; then restart the server (a reload is not enough)"
            ),
        ));
    }
    let row = c
        .query_one("SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user", &[])
        .await
        .map_err(|e| q("cannot read role attributes", e))?;
    if !row.get::<_, bool>(0) {
        return Err(Failure::new(
            Exit::Privilege,
            format!(
                "role {} lacks the REPLICATION attribute needed to read a replication slot: run ALTER ROLE {} REPLICATION; as a superuser",
                info.user,
                quote_ident(&info.user)
            ),
        ));
    }
    Ok(info)
}

pub async fn resolve_table(c: &Client, arg: &TableArg) -> Result<Table, Failure> {
    let mut candidates = vec![(arg.schema.clone(), arg.table.clone())];
    let folded = (
        if arg.schema_quoted { arg.schema.clone() } else { arg.schema.to_lowercase() },
        if arg.table_quoted { arg.table.clone() } else { arg.table.to_lowercase() },
    );
    if folded != candidates[0] {
        candidates.push(folded);
    }
    for (schema, name) in &candidates {
        let rows = c
            .query(
                "SELECT c.oid, c.relreplident::text, c.relkind::text FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2",
                &[schema, name],
            )
            .await
            .map_err(|e| q("cannot look up the table", e))?;
        let Some(row) = rows.first() else { continue };
        let oid: u32 = row.get(0);
        let ident: String = row.get(1);
        let kind: String = row.get(2);
        let qualified = format!("{schema}.{name}");
        if kind != "r" && kind != "p" {
            return Err(Failure::new(
                Exit::TableNotFound,
                format!("{qualified} is not a table (relkind '{kind}'): only tables can be watched"),
            ));
        }
        let pk: Vec<String> = c
            .query(
                "SELECT a.attname::text FROM pg_index i \
                 CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) \
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                 WHERE i.indrelid = $1 AND i.indisprimary ORDER BY k.ord",
                &[&oid],
            )
            .await
            .map_err(|e| q("cannot read the primary key", e))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let ri = ident.chars().next().unwrap_or('d');
        let sql_name = format!("{}.{}", quote_ident(schema), quote_ident(name));
        match ri {
            'n' => {
                return Err(Failure::new(
                    Exit::ReplicaIdentity,
                    format!(
                        "{qualified} has REPLICA IDENTITY NOTHING, so its deletes carry no key and cannot be logged; run ALTER TABLE {sql_name} REPLICA IDENTITY DEFAULT (with a primary key) or FULL"
                    ),
                ))
            }
            'd' if pk.is_empty() => {
                return Err(Failure::new(
                    Exit::ReplicaIdentity,
                    format!(
                        "{qualified} has no primary key and REPLICA IDENTITY DEFAULT: publishing its deletes would make every DELETE on it fail; run ALTER TABLE {sql_name} REPLICA IDENTITY FULL (or add a primary key) first"
                    ),
                ))
            }
            _ => {}
        }
        return Ok(Table {
            oid,
            schema: schema.clone(),
            name: name.clone(),
            replica_identity: ri,
            primary_key: if pk.is_empty() { None } else { Some(pk) },
            partitioned: kind == "p",
        });
    }
    Err(Failure::new(Exit::TableNotFound, format!("table {}.{} not found in this database", arg.schema, arg.table)))
}

/// The partitions of a watched table (all levels; none for a table that is not partitioned), and the
/// names of its inheritance children, which are not watched. Refuses when a partition has no replica
/// identity usable for deletes: the publication covers every partition, so publishing would make
/// every DELETE on it fail.
pub async fn members(c: &Client, t: &Table) -> Result<(Vec<Partition>, Vec<String>), Failure> {
    let rows = c
        .query(
            "SELECT p.relid::oid, n.nspname::text, c.relname::text, c.relkind::text, c.relreplident::text, \
               (SELECT array_agg(a.attname::text ORDER BY k.ord) FROM pg_index i \
                  CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) \
                  JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                 WHERE i.indrelid = p.relid AND i.indisprimary) \
             FROM pg_partition_tree($1::oid::regclass) p \
             JOIN pg_class c ON c.oid = p.relid JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE p.relid <> $1::oid::regclass ORDER BY p.level, 2, 3",
            &[&t.oid],
        )
        .await
        .map_err(|e| q(&format!("cannot list the partitions of {}", t.qualified()), e))?;
    let mut partitions = Vec::new();
    let mut unusable = Vec::new();
    for r in &rows {
        let (oid, schema, name, kind, ident): (u32, String, String, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        let primary_key: Option<Vec<String>> = r.get(5);
        let sql_name = format!("{}.{}", quote_ident(&schema), quote_ident(&name));
        if kind == "r" && (ident == "n" || (ident == "d" && primary_key.is_none())) {
            unusable.push(sql_name);
        }
        partitions.push(Partition { oid, schema, name, primary_key });
    }
    if !unusable.is_empty() {
        return Err(Failure::new(
            Exit::ReplicaIdentity,
            format!(
                "{} has partitions without a primary key or usable replica identity ({}): publishing the table publishes them too, and every DELETE on them would then fail; run ALTER TABLE … REPLICA IDENTITY FULL (or add a primary key) on each first",
                t.qualified(),
                unusable.join(", ")
            ),
        ));
    }
    let children = c
        .query(
            "SELECT c.oid::regclass::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = $1 AND NOT c.relispartition ORDER BY 1",
            &[&t.oid],
        )
        .await
        .map_err(|e| q(&format!("cannot list the inheritance children of {}", t.qualified()), e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok((partitions, children))
}

pub fn default_publication(tables: &[Table]) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for t in tables {
        parts.push(&t.schema);
        parts.push(&t.name);
    }
    object_name("walwitness", &parts)
}

pub fn default_slot(database: &str, tables: &[Table]) -> String {
    let mut parts: Vec<&str> = vec![database];
    for t in tables {
        parts.push(&t.schema);
        parts.push(&t.name);
    }
    object_name("walwitness", &parts)
}

/// Reads the slot's state; refuses a slot that belongs to something else or is busy.
/// `two_phase`: the capture handles two-phase messages (`--two-phase`), so a two-phase slot is usable.
pub async fn inspect_slot(c: &Client, slot: &str, database: &str, two_phase: bool) -> Result<SlotState, Failure> {
    let rows = c
        .query(
            "SELECT plugin::text, slot_type, database::text, active_pid, confirmed_flush_lsn::text, wal_status, two_phase \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| q("cannot read pg_replication_slots", e))?;
    let Some(r) = rows.first() else {
        return Ok(SlotState::Absent);
    };
    let plugin: Option<String> = r.get(0);
    let kind: String = r.get(1);
    let db: Option<String> = r.get(2);
    let pid: Option<i32> = r.get(3);
    let confirmed: Option<String> = r.get(4);
    let wal_status: Option<String> = r.get(5);
    let slot_two_phase: bool = r.get(6);
    if kind != "logical" || plugin.as_deref() != Some("pgoutput") || db.as_deref() != Some(database) {
        return Err(Failure::new(
            Exit::Conflict,
            format!(
                "replication slot {slot} exists but is not a pgoutput slot of database {database} (it is {kind}, plugin {}, database {}): choose another name with --slot",
                plugin.as_deref().unwrap_or("none"),
                db.as_deref().unwrap_or("none")
            ),
        ));
    }
    if let Some(pid) = pid {
        return Err(Failure::new(
            Exit::SlotInUse,
            format!(
                "replication slot {slot} is in use by the process with PID {pid}; stop that capture first (or SELECT pg_terminate_backend({pid}) if it is stale), or use another --slot"
            ),
        ));
    }
    if wal_status.as_deref() == Some("lost") {
        return Ok(SlotState::Lost);
    }
    if slot_two_phase && !two_phase {
        return Err(Failure::new(
            Exit::Conflict,
            format!("replication slot {slot} has two-phase decoding enabled: run with --two-phase to use it, or use another --slot"),
        ));
    }
    Ok(SlotState::Reusable { confirmed_flush: confirmed })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PubOrigin {
    /// Created by this run.
    Created,
    /// Created by an earlier walwitness run (marked by its comment): ours to drop at a deliberate end.
    Ours,
    /// Given with --publication: used as-is, never dropped.
    Given,
}

/// Checks that an existing publication covers every table and publishes deletes.
async fn check_publication_covers(c: &Client, publication: &str, tables: &[Table]) -> Result<Vec<String>, Failure> {
    let row = c
        .query_one("SELECT pubdelete, pubtruncate, pubviaroot FROM pg_publication WHERE pubname = $1", &[&publication])
        .await
        .map_err(|e| q("cannot read the publication", e))?;
    let (pubdelete, pubtruncate, viaroot): (bool, bool, bool) = (row.get(0), row.get(1), row.get(2));
    if !pubdelete {
        return Err(Failure::new(
            Exit::Conflict,
            format!("publication {publication} does not publish deletes: ALTER PUBLICATION {} SET (publish = 'delete, truncate') or use another", quote_ident(publication)),
        ));
    }
    let mut warnings = Vec::new();
    if !pubtruncate {
        warnings.push(format!("publication {publication} does not publish TRUNCATE: truncates will not be logged"));
    }
    if viaroot && pubtruncate && tables.iter().any(|t| t.partitioned) {
        warnings.push(format!(
            "publication {publication} has publish_via_partition_root = true: PostgreSQL then does not publish a TRUNCATE of single partitions, so those will not be logged"
        ));
    }
    for t in tables {
        // pg_publication_tables lists a partitioned table's partitions rather than the table itself
        // (unless it publishes through the root); a FOR ALL TABLES publication covers every table.
        let covered: bool = c
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND schemaname = $2 AND tablename = $3) \
                 OR EXISTS (SELECT 1 FROM pg_publication p JOIN pg_publication_rel r ON r.prpubid = p.oid WHERE p.pubname = $1 AND r.prrelid = $4) \
                 OR EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1 AND puballtables)",
                &[&publication, &t.schema, &t.name, &t.oid],
            )
            .await
            .map_err(|e| q("cannot read the publication's tables", e))?
            .get(0);
        if !covered {
            return Err(Failure::new(
                Exit::Conflict,
                format!(
                    "publication {publication} does not include {}: ALTER PUBLICATION {} ADD TABLE {} or use another",
                    t.qualified(),
                    quote_ident(publication),
                    t.sql_name()
                ),
            ));
        }
    }
    Ok(warnings)
}

/// Finds or creates the publication. Returns who owns it and any warnings to show.
pub async fn ensure_publication(
    c: &Client,
    publication: &str,
    given: bool,
    tables: &[Table],
) -> Result<(PubOrigin, Vec<String>), Failure> {
    let existing = c
        .query_opt(
            "SELECT coalesce(obj_description(oid, 'pg_publication'), '') FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(|e| q("cannot read pg_publication", e))?;
    match existing {
        Some(row) => {
            let comment: String = row.get(0);
            let ours = comment.starts_with(OWNER_COMMENT);
            if !given && !ours {
                return Err(Failure::new(
                    Exit::Conflict,
                    format!("publication {publication} exists and was not created by walwitness: pass --publication {publication} to use it as-is, or drop it"),
                ));
            }
            let warnings = check_publication_covers(c, publication, tables).await?;
            Ok((if given { PubOrigin::Given } else { PubOrigin::Ours }, warnings))
        }
        None if given => Err(Failure::new(
            Exit::Conflict,
            format!("publication {publication} (given with --publication) does not exist"),
        )),
        None => {
            // ONLY: PostgreSQL would otherwise add the inheritance children that exist now (not those
            // created later), which walwitness does not watch, and make deletes on any of them without
            // a replica identity fail. Partitions are always covered through their table.
            let list: Vec<String> = tables.iter().map(|t| format!("ONLY {}", t.sql_name())).collect();
            let sql = format!(
                "CREATE PUBLICATION {} FOR TABLE {} WITH (publish = 'delete, truncate'); COMMENT ON PUBLICATION {} IS {}",
                quote_ident(publication),
                list.join(", "),
                quote_ident(publication),
                quote_literal(&format!("{OWNER_COMMENT} capture; dropped when the capture ends deliberately"))
            );
            if let Err(e) = c.batch_execute(&format!("BEGIN; {sql}; COMMIT")).await {
                let _ = c.batch_execute("ROLLBACK").await;
                let mut f = q(&format!("cannot create publication {publication}"), e);
                if f.exit == Exit::Privilege {
                    f.message.push_str(&format!(
                        "; creating a publication needs the CREATE privilege on the database and ownership of the tables (or superuser): ask the owner to run CREATE PUBLICATION {} FOR TABLE {} WITH (publish = 'delete, truncate') and pass --publication {publication}",
                        quote_ident(publication),
                        list.join(", ")
                    ));
                }
                return Err(f);
            }
            Ok((PubOrigin::Created, Vec::new()))
        }
    }
}

pub async fn drop_publication(c: &Client, publication: &str) -> Result<(), Failure> {
    c.batch_execute(&format!("DROP PUBLICATION IF EXISTS {}", quote_ident(publication)))
        .await
        .map_err(|e| q(&format!("cannot drop publication {publication}"), e))
}

/// Drops the slot through SQL once it is no longer active (its walsender can take a moment to exit).
pub async fn drop_slot(c: &Client, slot: &str) -> Result<(), Failure> {
    for _ in 0..200 {
        let row = c
            .query_opt("SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
            .await
            .map_err(|e| q("cannot read pg_replication_slots", e))?;
        match row {
            None => return Ok(()),
            Some(r) if r.get::<_, Option<i32>>(0).is_none() => {
                return c
                    .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                    .await
                    .map(|_| ())
                    .map_err(|e| q(&format!("cannot drop replication slot {slot}"), e));
            }
            Some(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
    Err(Failure::new(
        Exit::Stream,
        format!("replication slot {slot} stayed active; drop it later with SELECT pg_drop_replication_slot('{slot}')"),
    ))
}
