//! The relation cache: what each relation OID in the stream is, and whether it is watched.
//!
//! pgoutput describes a relation with a Relation message before its first change on each connection
//! and again after any schema change, so the newest message always replaces the entry. Watching is by
//! name (schema and table as raw strings), because the name is what the user asked about; OIDs are only
//! the stream's shorthand.
use std::collections::HashMap;

use bytes::BytesMut;

use crate::protocol::buf::lossless_name;
use crate::protocol::pgoutput::{Column, ReplicaIdentity};
use crate::sink::record::push_str;

/// A watched table as resolved at start: its qualified name and primary-key columns (used as the
/// `key` when REPLICA IDENTITY FULL sends whole rows).
#[derive(Debug, Clone, Default)]
pub struct WatchList {
    tables: HashMap<(String, String), Option<Vec<String>>>,
    /// `schema.table` as `Relation::qualified` writes it.
    qualified: std::collections::HashSet<String>,
}

impl WatchList {
    pub fn new() -> Self {
        Self::default()
    }

    /// Names as the catalog gives them; kept in the form the stream's names are decoded to
    /// (`protocol::buf::lossless_name`), so that even a name that looks escaped still matches.
    pub fn add(&mut self, schema: &str, table: &str, primary_key: Option<Vec<String>>) {
        let n = |s: &str| lossless_name(s.as_bytes());
        self.qualified.insert(format!("{}.{}", n(schema), n(table)));
        self.tables.insert((n(schema), n(table)), primary_key.map(|pk| pk.iter().map(|c| n(c)).collect()));
    }

    fn lookup(&self, schema: &str, table: &str) -> Option<&Option<Vec<String>>> {
        self.tables.get(&(schema.to_owned(), table.to_owned()))
    }

    pub fn len(&self) -> usize {
        self.tables.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }
}

pub struct RelColumn {
    /// The column name already encoded as a JSON string, written once per row.
    pub name_json: Vec<u8>,
}

pub struct Relation {
    pub qualified: String,
    pub watched: bool,
    pub columns: Vec<RelColumn>,
    /// Columns flagged as part of the replica identity (the `key` of a 'K' old tuple).
    pub identity_cols: Vec<usize>,
    /// Primary-key columns by position, for 'O' (FULL) old tuples; None without a primary key.
    pub pk_cols: Option<Vec<usize>>,
    /// `{"type":"delete","table":"…","xid":` — constant per relation.
    pub delete_prefix: Vec<u8>,
}

pub struct RelationCache {
    watch: WatchList,
    rels: HashMap<u32, Relation>,
}

impl RelationCache {
    pub fn new(watch: WatchList) -> Self {
        RelationCache { watch, rels: HashMap::new() }
    }

    pub fn get(&self, oid: u32) -> Option<&Relation> {
        self.rels.get(&oid)
    }

    /// Whether `qualified` (`schema.table`, names in the lossless form) is a watched table.
    pub fn is_watched_name(&self, qualified: &str) -> bool {
        self.watch.qualified.contains(qualified)
    }

    pub fn update(
        &mut self,
        oid: u32,
        namespace: String,
        name: String,
        _identity: ReplicaIdentity,
        columns: Vec<Column>,
    ) {
        // pgoutput sends "" for pg_catalog; nobody watches catalog tables, but keep names honest.
        let schema = if namespace.is_empty() { "pg_catalog".to_owned() } else { namespace };
        let qualified = format!("{schema}.{name}");
        let watched_pk = self.watch.lookup(&schema, &name);
        let pk_cols = watched_pk.and_then(|pk| {
            pk.as_ref().and_then(|names| {
                names.iter().map(|n| columns.iter().position(|c| &c.name == n)).collect::<Option<Vec<_>>>()
            })
        });
        let mut prefix = BytesMut::new();
        prefix.extend_from_slice(b"{\"type\":\"delete\",\"table\":");
        push_str(&mut prefix, &qualified);
        prefix.extend_from_slice(b",\"xid\":");
        let rel = Relation {
            watched: watched_pk.is_some(),
            identity_cols: columns.iter().enumerate().filter(|(_, c)| c.is_key).map(|(i, _)| i).collect(),
            pk_cols,
            columns: columns
                .iter()
                .map(|c| {
                    let mut b = BytesMut::new();
                    push_str(&mut b, &c.name);
                    RelColumn { name_json: b.to_vec() }
                })
                .collect(),
            delete_prefix: prefix.to_vec(),
            qualified,
        };
        self.rels.insert(oid, rel);
    }
}
