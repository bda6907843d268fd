//! Before anything changes on the server: what it is, which tables, and where the log goes. Refusing
//! here must leave the server untouched, so nothing in this file writes to it.
use std::sync::Arc;

use crate::attribution::trigger;
use crate::error::{Exit, Failure};
use crate::pg::catalog as setup;
use crate::pg::names::parse_table;
use crate::sink::chain::to_hex;
use crate::sink::spool::SpoolDir;
use crate::sink::writer::{open_log, Output, Recovery};
use setup::SlotState;

use super::CaptureOptions;

/// What the checks found: the server, the watched tables, and the names of the objects to use.
pub(super) struct Checked {
    pub info: setup::ServerInfo,
    pub tables: Vec<setup::Table>,
    /// Each watched table's partitions, by the table's oid.
    pub partitions: Vec<(u32, Vec<setup::Partition>)>,
    pub slot: String,
    pub publication: String,
    pub slot_state: SlotState,
}

/// The log opened (its tail repaired) and the spool directory beside it.
pub(super) struct LogFiles {
    pub file: Option<std::fs::File>,
    pub recovery: Recovery,
    pub spool_dir: SpoolDir,
}

pub(super) async fn check(opts: &CaptureOptions, sql: &Arc<tokio_postgres::Client>) -> Result<Checked, Failure> {
    let info = setup::server_info(sql).await?;
    check_version(opts, &info)?;
    let mut tables = Vec::new();
    for t in &opts.tables {
        let arg = parse_table(t).map_err(|e| Failure::new(Exit::Usage, e))?;
        let table = setup::resolve_table(sql, &arg).await?;
        if !tables.iter().any(|x: &setup::Table| x.oid == table.oid) {
            tables.push(table);
        }
    }
    let partitions = partitions(sql, &tables).await?;
    // What trigger attribution installs, this role must be able to remove again at the end.
    if opts.attribution.trigger {
        let names: Vec<String> = tables.iter().map(setup::Table::sql_name).collect();
        trigger::check_removable(sql, &names).await?;
    }
    let slot = opts.slot.clone().unwrap_or_else(|| setup::default_slot(&info.database, &tables));
    let publication = opts.publication.clone().unwrap_or_else(|| setup::default_publication(&tables));
    let slot_state = setup::inspect_slot(sql, &slot, &info.database, opts.two_phase).await?;
    Ok(Checked { info, tables, partitions, slot, publication, slot_state })
}

/// Options this server's pgoutput cannot honour are refused.
fn check_version(opts: &CaptureOptions, info: &setup::ServerInfo) -> Result<(), Failure> {
    if opts.two_phase && info.version_num < 150000 {
        return Err(Failure::new(
            Exit::ServerSetup,
            format!("--two-phase needs PostgreSQL 15 or later (pgoutput protocol 3); this server is {}", info.version),
        ));
    }
    if opts.stream_every_change && info.version_num < 160000 {
        return Err(Failure::new(
            Exit::ServerSetup,
            format!(
                "--stream-every-change needs PostgreSQL 16 or later (debug_logical_replication_streaming); this server is {}: use --logical-decoding-work-mem 64kB to stream large transactions instead",
                info.version
            ),
        ));
    }
    Ok(())
}

/// Partitions belong to their watched table; inheritance children are tables of their own.
async fn partitions(
    sql: &tokio_postgres::Client,
    tables: &[setup::Table],
) -> Result<Vec<(u32, Vec<setup::Partition>)>, Failure> {
    let mut partitions: Vec<(u32, Vec<setup::Partition>)> = Vec::new();
    for t in tables {
        let (parts, children) = setup::members(sql, t).await?;
        if !children.is_empty() {
            eprintln!(
                "walwitness: warning: {} has inheritance children ({}): rows deleted from them (also by DELETE FROM {}) are not logged; watch them with their own --table",
                t.qualified(),
                children.join(", "),
                t.sql_name()
            );
        }
        partitions.push((t.oid, parts));
    }
    Ok(partitions)
}

/// The log is opened (and its tail repaired) before the server is changed: an unwritable --out
/// must not leave a slot behind.
pub(super) fn open_output(opts: &CaptureOptions) -> Result<LogFiles, Failure> {
    let (file, recovery) = match &opts.out {
        Output::File(p) => {
            let (f, r) = open_log(p).map_err(|e| Failure::new(Exit::Output, e.to_string()))?;
            (Some(f), r)
        }
        Output::Stdout => (None, Recovery::default()),
    };
    if let (Some(mode), Output::File(p)) = (recovery.exposed_mode, &opts.out) {
        eprintln!(
            "walwitness: warning: the log {} can be read by other users (mode {mode:04o}); it holds the keys of deleted rows and the statements that deleted them: chmod 600 it",
            p.display()
        );
    }
    // Spools of streamed and prepared transactions: next to the log, leftovers of a crashed run removed.
    // Like the log, checked before the server is changed (a hostile directory is refused).
    let spool_dir = match &opts.out {
        Output::File(p) => SpoolDir::beside(p),
        Output::Stdout => SpoolDir::temporary(),
    }
    .map_err(|e| {
        Failure::new(
            Exit::Output,
            format!(
                "cannot prepare the spool directory for streamed transactions (next to the log, <out>.spool/): {e}"
            ),
        )
    })?;
    if recovery.cut_bytes > 0 {
        eprintln!(
            "walwitness: repaired the log: cut {} bytes ({} lines) of an unfinished transaction or torn write at its end, after its last chain value; they will be received again (size and SHA-256 of the cut bytes are recorded in capture_started.repaired_tail)",
            recovery.cut_bytes, recovery.cut_lines
        );
    }
    if let (Some(h), true) = (recovery.chain_head, opts.progress) {
        eprintln!("walwitness: continuing the log's tamper-evident chain from head {}", to_hex(&h));
    }
    Ok(LogFiles { file, recovery, spool_dir })
}
