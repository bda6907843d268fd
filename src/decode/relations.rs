//! The relation cache: what each relation OID in the stream is, and which watched table it belongs to.
//!
//! Watching is by OID. The tables named on the command line are resolved to their OIDs at start, so
//! renaming a watched table (even for the length of one transaction), moving it to another schema, or
//! giving another table its name changes nothing about which rows are logged. Partitions (at any
//! depth) belong to their watched root: those that exist at start are listed by the capture, and one
//! attached later is looked up by the capture (which has a SQL connection) when its first Relation
//! message arrives, before the message reaches this cache ([`RelationCache::needs_lookup`]).
//!
//! Names in the records are the ones the stream carries, i.e. as of the change: pgoutput describes a
//! relation again before its next change after anything invalidated it (a rename is a relcache
//! invalidation, a schema rename flushes every entry; `rel_sync_cache_relation_cb`,
//! `rel_sync_cache_publication_cb` in pgoutput.c). A partitioned root has no rows of its own, so the
//! stream describes it only when it publishes through the root; otherwise its name is the one known
//! at start (or from its last description).
//!
//! Logs from raw files written before OIDs were recorded match by name (`WatchList::add`).
use std::collections::HashMap;

use bytes::BytesMut;

use crate::protocol::buf::lossless_name;
use crate::protocol::pgoutput::{Column, ReplicaIdentity};
use crate::sink::record::push_str;

fn lossless_qname(schema: &str, name: &str) -> QName {
    QName::new(&lossless_name(schema.as_bytes()), &lossless_name(name.as_bytes()))
}

fn lossless_cols(cols: Option<Vec<String>>) -> Option<Vec<String>> {
    cols.map(|c| c.iter().map(|c| lossless_name(c.as_bytes())).collect())
}

/// A relation's schema and name, as raw strings.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QName {
    pub schema: String,
    pub name: String,
}

impl QName {
    pub fn new(schema: &str, name: &str) -> QName {
        QName { schema: schema.to_owned(), name: name.to_owned() }
    }

    /// `schema.name`, unquoted: the log's `table` field (ambiguous when a part contains a dot, hence
    /// the separate `schema` and `name` fields).
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    /// `"schema":"…","name":"…"` (no braces).
    pub fn push_fields(&self, out: &mut BytesMut) {
        out.extend_from_slice(b"\"schema\":");
        push_str(out, &self.schema);
        out.extend_from_slice(b",\"name\":");
        push_str(out, &self.name);
    }
}

/// A watched table as resolved at start.
#[derive(Debug, Clone)]
pub struct WatchedTable {
    /// `None` only for tables matched by name (raw files written before OIDs were recorded).
    pub oid: Option<u32>,
    pub name: QName,
    /// Primary-key columns (the `key` when REPLICA IDENTITY FULL sends whole rows).
    pub primary_key: Option<Vec<String>>,
}

/// The watched tables, and the partitions that belong to them.
#[derive(Debug, Clone, Default)]
pub struct WatchList {
    tables: Vec<WatchedTable>,
    /// Partition OID → (index of its watched root in `tables`, its own primary key).
    partitions: HashMap<u32, (usize, Option<Vec<String>>)>,
}

impl WatchList {
    pub fn new() -> Self {
        Self::default()
    }

    /// A table matched by name: only for raw files that do not record OIDs, and tests. Names as the
    /// catalog gives them, kept in the form the stream's names are decoded to
    /// (`protocol::buf::lossless_name`), so that even a name that looks escaped still matches.
    pub fn add(&mut self, schema: &str, table: &str, primary_key: Option<Vec<String>>) {
        self.tables.push(WatchedTable {
            oid: None,
            name: lossless_qname(schema, table),
            primary_key: lossless_cols(primary_key),
        });
    }

    /// A table watched by OID, with its name at start.
    pub fn add_table(&mut self, oid: u32, schema: &str, table: &str, primary_key: Option<Vec<String>>) {
        if self.tables.iter().any(|t| t.oid == Some(oid)) {
            return;
        }
        self.tables.push(WatchedTable {
            oid: Some(oid),
            name: lossless_qname(schema, table),
            primary_key: lossless_cols(primary_key),
        });
    }

    /// A partition (at any depth) of the watched table `root`. False when `root` is not watched.
    pub fn add_partition(&mut self, oid: u32, root: u32, primary_key: Option<Vec<String>>) -> bool {
        match self.tables.iter().position(|t| t.oid == Some(root)) {
            Some(i) if self.tables[i].oid != Some(oid) => {
                self.partitions.insert(oid, (i, lossless_cols(primary_key)));
                true
            }
            _ => false,
        }
    }

    pub fn tables(&self) -> &[WatchedTable] {
        &self.tables
    }

    /// The OIDs of the watched tables.
    pub fn oids(&self) -> Vec<u32> {
        self.tables.iter().filter_map(|t| t.oid).collect()
    }

    pub fn len(&self) -> usize {
        self.tables.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }
}

#[derive(Clone)]
pub struct RelColumn {
    /// The column name already encoded as a JSON string, written once per row.
    pub name_json: Vec<u8>,
}

#[derive(Clone)]
pub struct Relation {
    /// As of its latest Relation message.
    pub name: QName,
    /// The watched table it belongs to (index into the watch list), if any.
    pub watched: Option<usize>,
    /// It belongs to the watched table as one of its partitions.
    pub partition: bool,
    pub columns: Vec<RelColumn>,
    /// Columns flagged as part of the replica identity (the `key` of a 'K' old tuple).
    pub identity_cols: Vec<usize>,
    /// Primary-key columns by position, for 'O' (FULL) old tuples; None without a primary key.
    pub pk_cols: Option<Vec<usize>>,
    /// `{"type":"delete","table":"…","schema":"…","name":"…"[,"partition":{…}],"xid":` — rebuilt when
    /// a name in it changes.
    pub delete_prefix: Vec<u8>,
}

/// A relation cache entry (and its watched table's name) before an update, to put back.
pub struct Saved {
    rel: Option<Relation>,
    table: Option<(usize, QName)>,
}

/// The state of one watched table in the stream.
pub struct TableState {
    pub oid: Option<u32>,
    pub primary_key: Option<Vec<String>>,
    /// Its name as of the latest Relation message of the table itself (at start: as resolved).
    pub current: QName,
    /// The name the log last showed for it (`relation_renamed` is written when `current` differs).
    pub reported: QName,
}

pub struct RelationCache {
    tables: Vec<TableState>,
    by_oid: HashMap<u32, usize>,
    partitions: HashMap<u32, (usize, Option<Vec<String>>)>,
    /// Tables without an OID, matched by name.
    by_name: HashMap<QName, usize>,
    rels: HashMap<u32, Relation>,
}

impl RelationCache {
    pub fn new(watch: WatchList) -> Self {
        let mut by_oid = HashMap::new();
        let mut by_name = HashMap::new();
        let tables = watch
            .tables
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                match t.oid {
                    Some(o) => by_oid.insert(o, i),
                    None => by_name.insert(t.name.clone(), i),
                };
                TableState { oid: t.oid, primary_key: t.primary_key, current: t.name.clone(), reported: t.name }
            })
            .collect();
        RelationCache { tables, by_oid, partitions: watch.partitions, by_name, rels: HashMap::new() }
    }

    pub fn get(&self, oid: u32) -> Option<&Relation> {
        self.rels.get(&oid)
    }

    /// The key trigger evidence and rows of the watched table `i` meet under.
    pub fn table_key(&self, i: usize) -> String {
        format!("#{i}")
    }

    /// The key for evidence a statement trigger sent with `TG_RELID = relid`, when that is a watched
    /// table itself. Statement triggers fire on the table a statement names, never on a partition for
    /// its parent, so evidence from a partition's own triggers does not count for the parent.
    pub fn evidence_key(&self, relid: u32) -> Option<String> {
        let i = match self.by_oid.get(&relid) {
            Some(&i) => i,
            None => self.rels.get(&relid).filter(|r| !r.partition).and_then(|r| r.watched)?,
        };
        Some(self.table_key(i))
    }

    pub fn table(&self, i: usize) -> &TableState {
        &self.tables[i]
    }

    pub fn table_mut(&mut self, i: usize) -> &mut TableState {
        &mut self.tables[i]
    }

    /// What `update` of `oid` will replace, to put back with `restore`.
    pub fn save(&self, oid: u32) -> Saved {
        let rel = self.rels.get(&oid).cloned();
        let table = self.by_oid.get(&oid).map(|&i| (i, self.tables[i].current.clone()));
        Saved { rel, table }
    }

    pub fn restore(&mut self, oid: u32, saved: Saved) {
        match saved.rel {
            Some(r) => self.rels.insert(oid, r),
            None => self.rels.remove(&oid),
        };
        if let Some((i, name)) = saved.table {
            if self.tables[i].current != name {
                self.tables[i].current = name;
                self.rebuild_partitions(i);
            }
        }
    }

    /// Whether a Relation message for `oid` should first be looked up in the catalog: it is neither a
    /// watched table nor a known partition of one (it may be a partition attached since the start).
    pub fn needs_lookup(&self, oid: u32) -> bool {
        !self.by_oid.is_empty() && !self.by_oid.contains_key(&oid) && !self.partitions.contains_key(&oid)
    }

    /// The OIDs of the watched tables.
    pub fn watched_oids(&self) -> Vec<u32> {
        self.tables.iter().filter_map(|t| t.oid).collect()
    }

    /// Records that `oid` is a partition of the watched table `root` (found by a catalog lookup).
    pub fn add_partition(&mut self, oid: u32, root: u32, primary_key: Option<Vec<String>>) -> bool {
        let Some(&i) = self.by_oid.get(&root) else { return false };
        if root == oid {
            return false;
        }
        self.partitions.insert(oid, (i, lossless_cols(primary_key)));
        true
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
        let qname = QName { schema, name };
        let (watched, partition, pk) = if let Some(&i) = self.by_oid.get(&oid) {
            (Some(i), false, self.tables[i].primary_key.clone())
        } else if let Some((i, own)) = self.partitions.get(&oid) {
            (Some(*i), true, own.clone().or_else(|| self.tables[*i].primary_key.clone()))
        } else if let Some(&i) = self.by_name.get(&qname) {
            (Some(i), false, self.tables[i].primary_key.clone())
        } else {
            (None, false, None)
        };
        let pk_cols = pk.and_then(|names| {
            names.iter().map(|n| columns.iter().position(|c| &c.name == n)).collect::<Option<Vec<_>>>()
        });
        let mut rel = Relation {
            name: qname,
            watched,
            partition,
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
            delete_prefix: Vec::new(),
        };
        let renamed = match watched {
            Some(i) if !partition && self.tables[i].current != rel.name => {
                self.tables[i].current = rel.name.clone();
                Some(i)
            }
            _ => None,
        };
        rel.delete_prefix = self.delete_prefix(&rel);
        self.rels.insert(oid, rel);
        if let Some(i) = renamed {
            self.rebuild_partitions(i);
        }
    }

    /// A watched table's new name is also in its partitions' records.
    fn rebuild_partitions(&mut self, i: usize) {
        let oids: Vec<u32> =
            self.rels.iter().filter(|(_, r)| r.watched == Some(i) && r.partition).map(|(o, _)| *o).collect();
        for o in oids {
            let Some(r) = self.rels.get(&o) else { continue };
            let prefix = self.delete_prefix(r);
            if let Some(r) = self.rels.get_mut(&o) {
                r.delete_prefix = prefix;
            }
        }
    }

    fn delete_prefix(&self, rel: &Relation) -> Vec<u8> {
        crate::sink::record::delete_prefix(|prefix| match rel.watched {
            Some(i) => self.push_reference(prefix, i, rel),
            None => {
                prefix.extend_from_slice(b"\"table\":");
                push_str(prefix, &rel.name.qualified());
                prefix.extend_from_slice(b",");
                rel.name.push_fields(prefix);
            }
        })
    }

    /// `"table":"…","schema":"…","name":"…"` of the watched table `i`, and `,"partition":{…}` when
    /// `rel` is one of its partitions (no braces around the whole).
    pub fn push_reference(&self, out: &mut BytesMut, i: usize, rel: &Relation) {
        let root = if rel.partition { &self.tables[i].current } else { &rel.name };
        out.extend_from_slice(b"\"table\":");
        push_str(out, &root.qualified());
        out.extend_from_slice(b",");
        root.push_fields(out);
        if rel.partition {
            out.extend_from_slice(b",\"partition\":{");
            rel.name.push_fields(out);
            out.extend_from_slice(b"}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, key: bool) -> Column {
        Column { is_key: key, flags: key as u8, name: name.into(), type_oid: 25, type_modifier: -1 }
    }

    fn cache() -> RelationCache {
        let mut w = WatchList::new();
        w.add_table(100, "public", "t", Some(vec!["id".into()]));
        assert!(w.add_partition(101, 100, None));
        assert!(!w.add_partition(102, 999, None), "not a watched root");
        RelationCache::new(w)
    }

    fn prefix(c: &RelationCache, oid: u32) -> String {
        String::from_utf8(c.get(oid).unwrap().delete_prefix.clone()).unwrap()
    }

    #[test]
    fn watched_by_oid_whatever_the_name() {
        let mut c = cache();
        c.update(100, "public".into(), "t_x".into(), ReplicaIdentity::Default, vec![col("id", true)]);
        assert_eq!(c.get(100).unwrap().watched, Some(0));
        assert_eq!(prefix(&c, 100), r#"{"type":"delete","table":"public.t_x","schema":"public","name":"t_x","xid":"#);
        assert_eq!(c.table(0).current, QName::new("public", "t_x"));
        assert_eq!(c.table(0).reported, QName::new("public", "t"));
        // A decoy with the watched name is not watched.
        c.update(200, "public".into(), "t".into(), ReplicaIdentity::Default, vec![col("id", true)]);
        assert_eq!(c.get(200).unwrap().watched, None);
        assert!(c.needs_lookup(200));
        assert!(!c.needs_lookup(100) && !c.needs_lookup(101));
    }

    #[test]
    fn partitions_name_their_root_and_follow_its_renames() {
        let mut c = cache();
        c.update(101, "p".into(), "t_1".into(), ReplicaIdentity::Full, vec![col("x", true), col("id", true)]);
        let r = c.get(101).unwrap();
        assert_eq!((r.watched, r.partition), (Some(0), true));
        assert_eq!(r.pk_cols, Some(vec![1]), "the root's primary key by name");
        assert_eq!(
            prefix(&c, 101),
            r#"{"type":"delete","table":"public.t","schema":"public","name":"t","partition":{"schema":"p","name":"t_1"},"xid":"#
        );
        c.update(100, "a.b".into(), "c".into(), ReplicaIdentity::Default, vec![col("id", true)]);
        assert_eq!(
            prefix(&c, 101),
            r#"{"type":"delete","table":"a.b.c","schema":"a.b","name":"c","partition":{"schema":"p","name":"t_1"},"xid":"#
        );
        // Attached later, with a primary key of its own.
        assert!(c.add_partition(103, 100, Some(vec!["x".into()])));
        c.update(103, "p".into(), "t_3".into(), ReplicaIdentity::Full, vec![col("x", true), col("id", true)]);
        assert_eq!(c.get(103).unwrap().pk_cols, Some(vec![0]));
    }

    #[test]
    fn without_oids_tables_match_by_name() {
        let mut w = WatchList::new();
        w.add("public", "t", None);
        let mut c = RelationCache::new(w);
        assert!(!c.needs_lookup(5), "nothing to look up without OIDs");
        c.update(5, "public".into(), "t".into(), ReplicaIdentity::Default, vec![col("id", true)]);
        c.update(6, "public".into(), "u".into(), ReplicaIdentity::Default, vec![col("id", true)]);
        assert_eq!(c.get(5).unwrap().watched, Some(0));
        assert_eq!(c.get(6).unwrap().watched, None);
    }
}
