//! Partitions attached while the capture runs: a Relation message for an OID that is neither a
//! watched table nor one of the partitions known at start is looked up in the catalog (on the SQL
//! connection, before the message reaches the Assembler) to find whether it belongs to a watched table.
//!
//! The lookup sees the catalog as it is now, while the stream describes the past: a partition attached
//! and detached again before the capture decoded its changes is not recognised (with walwitness's own
//! publication the server would not send its changes after the detach either). Once found, a
//! partition stays mapped for the rest of the run. Lookups that find nothing are not cached, so a
//! table attached later is found at its next Relation message (an attach invalidates it, and the server
//! describes it again); only relations the publication sends cost a lookup, each time the server
//! describes them.
use std::sync::Arc;

use tokio_postgres::Client;

use crate::decode::Assembler;
use crate::error::{Exit, Failure};
use crate::pg::config::ConnSpec;
use crate::pg::error::from_pg;
use crate::protocol::pgoutput::Message;

pub struct PartitionLookup {
    spec: ConnSpec,
    sql: Option<Arc<Client>>,
}

/// A partition found and recorded in the Assembler, for the raw capture file.
pub struct Found {
    pub oid: u32,
    pub root: u32,
    pub primary_key: Option<Vec<String>>,
}

impl PartitionLookup {
    pub fn new(spec: ConnSpec, sql: Arc<Client>) -> Self {
        PartitionLookup { spec, sql: Some(sql) }
    }

    /// Before the Assembler handles `msg`: if it describes an unknown relation, finds out whether it
    /// is a partition of a watched table and tells the Assembler.
    pub async fn before(&mut self, asm: &mut Assembler, msg: &Message) -> Result<Option<Found>, Failure> {
        let Some(oid) = asm.needs_lookup(msg) else { return Ok(None) };
        let watched = asm.watched_oids();
        let Some((root, primary_key)) = self.lookup(oid, &watched).await? else { return Ok(None) };
        if !asm.add_partition(oid, root, primary_key.clone()) {
            return Ok(None);
        }
        tracing::info!("relation OID {oid} is a partition of watched table OID {root}");
        Ok(Some(Found { oid, root, primary_key }))
    }

    async fn lookup(&mut self, oid: u32, watched: &[u32]) -> Result<Option<(u32, Option<Vec<String>>)>, Failure> {
        // The connection may have died with a server restart the stream already survived: one retry
        // on a fresh one.
        for attempt in 0..2 {
            let sql = match &self.sql {
                Some(c) if !c.is_closed() => c.clone(),
                _ => {
                    let c = crate::pg::connect_sql(&self.spec).await.map_err(|e| {
                        let mut f = from_pg(&format!("cannot connect to look up relation OID {oid}"), e);
                        f.exit = Exit::Stream;
                        f.transient = true;
                        f
                    })?;
                    let c = Arc::new(c);
                    self.sql = Some(c.clone());
                    c
                }
            };
            // The nearest watched ancestor (pg_partition_ancestors lists the relation itself, then its
            // parent, up to the root), and the partition's own primary key.
            let r = sql
                .query_one(
                    "SELECT (SELECT a.relid::oid FROM pg_partition_ancestors($1::oid::regclass) WITH ORDINALITY AS a(relid, ord) \
                              WHERE a.relid::oid = ANY($2) AND a.relid::oid <> $1 ORDER BY a.ord LIMIT 1), \
                            (SELECT array_agg(att.attname::text ORDER BY k.ord) FROM pg_index i \
                               CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) \
                               JOIN pg_attribute att ON att.attrelid = i.indrelid AND att.attnum = k.attnum \
                              WHERE i.indrelid = $1 AND i.indisprimary)",
                    &[&oid, &watched],
                )
                .await;
            match r {
                Ok(row) => {
                    let root: Option<u32> = row.get(0);
                    return Ok(root.map(|r| (r, row.get(1))));
                }
                Err(_) if attempt == 0 && sql.is_closed() => self.sql = None,
                Err(e) => {
                    let mut f = crate::error::from_sql(
                        &format!("cannot look up relation OID {oid} (a partition of a watched table?)"),
                        e,
                    );
                    f.exit = Exit::Stream;
                    f.transient = true;
                    return Err(f);
                }
            }
        }
        Ok(None)
    }
}
