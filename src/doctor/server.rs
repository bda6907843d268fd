//! The server's side: version, wal_level, room for a slot and a WAL sender, the role's replication
//! rights, the limit on retained WAL, and the walwitness slots that exist.
use std::fmt::Write as _;

use tokio_postgres::Client;

use crate::error::{Exit, Failure};
use crate::pg::names::quote_ident;

use super::{one, Level, Report};

/// Roles through which managed PostgreSQL services grant replication (the REPLICATION attribute is
/// reserved to them there), with the service's name.
const MANAGED_REPLICATION_ROLES: &[(&str, &str)] = &[("rds_replication", "Amazon RDS / Aurora")];

/// Returns server_version_num.
pub(super) async fn version(c: &Client, r: &mut Report) -> Result<i32, Failure> {
    let version_num: i32 = one::<String>(c, "SHOW server_version_num").await?.parse().unwrap_or(0);
    let version: String = one(c, "SHOW server_version").await?;
    if version_num < 140000 {
        r.add(Level::Fail, format!("PostgreSQL {version} is too old → walwitness needs PostgreSQL 14 or later"));
    } else {
        let proto = match version_num {
            v if v >= 160000 => 4,
            v if v >= 150000 => 3,
            _ => 2,
        };
        r.add(Level::Ok, format!("PostgreSQL {version}: pgoutput protocol version {proto} will be used"));
    }
    Ok(version_num)
}

pub(super) async fn wal_level(c: &Client, r: &mut Report) -> Result<(), Failure> {
    let wal_level: String = one(c, "SHOW wal_level").await?;
    if wal_level == "logical" {
        r.add(Level::Ok, "wal_level = logical");
    } else {
        r.add(
            Level::Fail,
            format!("wal_level = {wal_level} → ALTER SYSTEM SET wal_level = logical; then restart the server (a reload is not enough)"),
        );
    }
    Ok(())
}

/// A free replication slot and a free WAL sender.
pub(super) async fn capacity(c: &Client, r: &mut Report) -> Result<(), Failure> {
    let slots_max: i32 = one::<String>(c, "SHOW max_replication_slots").await?.parse().unwrap_or(0);
    let slots_used: i64 = one(c, "SELECT count(*) FROM pg_replication_slots").await?;
    let level = if slots_used < i64::from(slots_max) { Level::Ok } else { Level::Fail };
    r.add(
        level,
        format!(
            "replication slots: {slots_used} of max_replication_slots = {slots_max} in use{}",
            if level == Level::Fail {
                " → raise max_replication_slots (restart needed) or drop unused slots"
            } else {
                ""
            }
        ),
    );
    let senders_max: i32 = one::<String>(c, "SHOW max_wal_senders").await?.parse().unwrap_or(0);
    let senders_used: i64 = one(c, "SELECT count(*) FROM pg_stat_replication").await?;
    let level = if senders_used < i64::from(senders_max) { Level::Ok } else { Level::Fail };
    r.add(
        level,
        format!(
            "WAL senders: {senders_used} of max_wal_senders = {senders_max} in use{}",
            if level == Level::Fail { " → raise max_wal_senders (restart needed)" } else { "" }
        ),
    );
    Ok(())
}

/// The current role, as the later checks need it.
pub(super) struct Role {
    pub user: String,
    pub superuser: bool,
}

/// Whether the role may open replication connections.
pub(super) async fn role(c: &Client, r: &mut Report) -> Result<Role, Failure> {
    let user: String = one(c, "SELECT current_user::text").await?;
    let (repl, superuser): (bool, bool) = c
        .query_one("SELECT rolreplication, rolsuper FROM pg_roles WHERE rolname = current_user", &[])
        .await
        .map(|row| (row.get(0), row.get(1)))
        .map_err(|e| Failure::new(Exit::Internal, e.to_string()))?;
    // Managed services grant replication through a role of their own instead of the attribute.
    let managed: Vec<(String, bool)> = c
        .query(
            "SELECT rolname::text, pg_has_role(current_user, oid, 'MEMBER') FROM pg_roles WHERE rolname = ANY($1) ORDER BY 1",
            &[&MANAGED_REPLICATION_ROLES.iter().map(|(r, _)| *r).collect::<Vec<_>>()],
        )
        .await
        .map(|rows| rows.iter().map(|row| (row.get(0), row.get(1))).collect())
        .map_err(|e| Failure::new(Exit::Internal, e.to_string()))?;
    let service = |role: &str| MANAGED_REPLICATION_ROLES.iter().find(|(r, _)| *r == role).map_or("", |(_, s)| *s);
    if repl || superuser {
        r.add(Level::Ok, format!("role {user} may open replication connections"));
    } else if let Some((role, _)) = managed.iter().find(|(_, member)| *member) {
        r.add(Level::Ok, format!("role {user} may open replication connections (member of {role}, {})", service(role)));
    } else if let Some((role, _)) = managed.first() {
        r.add(
            Level::Fail,
            format!(
                "role {user} lacks replication rights → GRANT {role} TO {}; (as an administrator of {})",
                quote_ident(&user),
                service(role)
            ),
        );
    } else {
        r.add(Level::Fail, format!("role {user} lacks REPLICATION → ALTER ROLE {} REPLICATION;", quote_ident(&user)));
    }
    Ok(Role { user, superuser })
}

pub(super) async fn wal_keep(c: &Client, r: &mut Report) -> Result<(), Failure> {
    let keep: String = one(c, "SHOW max_slot_wal_keep_size").await?;
    if keep == "-1" {
        r.add(
            Level::Warn,
            "max_slot_wal_keep_size = -1: a slot left behind keeps WAL without limit → set it (ALTER SYSTEM SET max_slot_wal_keep_size = '50GB'; SELECT pg_reload_conf();) or use capture --max-retained-wal",
        );
    } else {
        r.add(
            Level::Ok,
            format!("max_slot_wal_keep_size = {keep}: a forgotten slot is invalidated before it fills the disk"),
        );
    }
    Ok(())
}

/// The walwitness slots that exist: in use, left behind, or invalidated.
pub(super) async fn slots(c: &Client, r: &mut Report) -> Result<(), Failure> {
    let rows = c
        .query(
            "SELECT slot_name::text, active_pid, coalesce(wal_status, ''), \
             (pg_current_wal_lsn() - restart_lsn)::bigint, (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint \
             FROM pg_replication_slots WHERE slot_name LIKE 'walwitness%' ORDER BY 1",
            &[],
        )
        .await
        .map_err(|e| Failure::new(Exit::Internal, e.to_string()))?;
    if rows.is_empty() {
        r.add(Level::Ok, "no walwitness slots exist yet");
    }
    for row in rows {
        let name: String = row.get(0);
        let pid: Option<i32> = row.get(1);
        let status: String = row.get(2);
        let retained: Option<i64> = row.get(3);
        let lag: Option<i64> = row.get(4);
        let mut msg = format!(
            "slot {name}: {}, retains {}, {} behind",
            pid.map_or("inactive".to_owned(), |p| format!("in use by PID {p}")),
            crate::term::human_bytes(retained.unwrap_or(0).max(0) as u64),
            crate::term::human_bytes(lag.unwrap_or(0).max(0) as u64)
        );
        let level = if status == "lost" {
            let _ = write!(msg, "; INVALIDATED (wal_status = lost): the next capture records a gap and recreates it");
            Level::Warn
        } else if pid.is_none() {
            let _ = write!(msg, " → resume it with the same capture command, or remove it with walwitness cleanup");
            Level::Warn
        } else {
            Level::Ok
        };
        r.add(level, msg);
    }
    Ok(())
}
