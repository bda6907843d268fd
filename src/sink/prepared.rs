//! Durable spools of prepared transactions (`--two-phase` with a log file).
//!
//! Why: once the slot is acknowledged past a PREPARE, the server never sends that transaction's changes
//! again — a later COMMIT PREPARED arrives alone (`ReorderBufferFinishPrepared` replays the changes only
//! for a prepare before `two_phase_at`). Holding the acknowledgement below every waiting PREPARE keeps
//! them coming again, but a walsender shutting down waits for the client to confirm everything it sent
//! (`WalSndDone`), so a server stop hangs for as long as a prepared transaction waits. Keeping the
//! prepared transaction's spool durable instead lets the capture acknowledge past its PREPARE.
//!
//! On disk, next to the ordinary spools in `<out>.spool/`: `prepared-<xid>.pspool` (the spool, fsynced)
//! and `prepared-<xid>.pmeta` (this module's JSON: gid, origin, the Relation messages to replay first,
//! the spool's length and SHA-256), written to a temporary name, fsynced and renamed, then the directory
//! fsynced. The metadata file is the commit point: a spool without one is scratch and is removed.
//!
//! Every file is opened through the spool directory's descriptor without following a symbolic link
//! (`SpoolDir`), and a spool is checked against its SHA-256 through the very descriptor it is then
//! replayed from, so nothing can be substituted between the check and the use.
use std::io::{self, Read, Write};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::spool::{sha256_at, Spool, SpoolDir};
use crate::protocol::Lsn;

/// What a later run needs to replay a prepared transaction at its COMMIT PREPARED.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedMeta {
    pub xid: u32,
    pub gid: String,
    pub in_stream: bool,
    pub origin: Option<String>,
    /// (relation OID, LSN, raw Relation message).
    pub relations: Vec<(u32, Lsn, Bytes)>,
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    xid: u32,
    gid: String,
    in_stream: bool,
    origin: Option<String>,
    relations: Vec<(u32, u64, String)>,
    len: u64,
    sha256: String,
}

pub fn spool_name(xid: u32) -> String {
    format!("prepared-{xid}.pspool")
}

fn meta_name(xid: u32) -> String {
    format!("prepared-{xid}.pmeta")
}

/// Makes `spool` durable as the prepared transaction `meta` describes.
pub fn persist(dir: &SpoolDir, spool: &mut Spool, meta: &PreparedMeta) -> io::Result<()> {
    spool.persist(&spool_name(meta.xid))?;
    let sha = spool.sha256()?;
    let disk = OnDisk {
        xid: meta.xid,
        gid: meta.gid.clone(),
        in_stream: meta.in_stream,
        origin: meta.origin.clone(),
        relations: meta.relations.iter().map(|(o, l, b)| (*o, l.0, hex::encode(b))).collect(),
        len: spool.len(),
        sha256: hex::encode(sha),
    };
    let json = serde_json::to_vec(&disk).map_err(io::Error::other)?;
    let tmp = format!("prepared-{}.pmeta.tmp", meta.xid);
    let _ = dir.remove(&tmp);
    let mut f = dir.create_new(&tmp)?;
    f.write_all(&json)?;
    f.sync_all()?;
    dir.rename(&tmp, &meta_name(meta.xid))?;
    dir.sync()
}

/// Removes a durable prepared transaction (committed and durable in the log, or rolled back).
pub fn remove(dir: &SpoolDir, xid: u32, spool: Spool) {
    let _ = dir.remove(&meta_name(xid));
    spool.discard();
}

/// What a directory holds: intact prepared transactions, and descriptions of damaged ones.
#[derive(Default)]
pub struct Found {
    pub intact: Vec<(PreparedMeta, Spool)>,
    pub damaged: Vec<String>,
}

/// Every durable prepared transaction in `dir`, each checked against its recorded length and hash.
pub fn load(dir: &SpoolDir) -> io::Result<Found> {
    let mut found = Found::default();
    let names = dir.names()?;
    for name in &names {
        if name.ends_with(".pmeta.tmp") {
            let _ = dir.remove(name);
            continue;
        }
        if !name.ends_with(".pmeta") {
            continue;
        }
        match load_one(dir, name) {
            Ok(x) => found.intact.push(x),
            Err(why) => {
                found.damaged.push(format!("{}: {why}", dir.path().join(name).display()));
            }
        }
    }
    // Spools whose metadata never became durable are scratch.
    for name in &names {
        if let Some(stem) = name.strip_suffix(".pspool") {
            if !found.intact.iter().any(|(_, s)| s.name() == name) && !dir.exists(&format!("{stem}.pmeta")) {
                let _ = dir.remove(name);
            }
        }
    }
    found.intact.sort_by_key(|(m, _)| m.xid);
    Ok(found)
}

fn load_one(dir: &SpoolDir, name: &str) -> Result<(PreparedMeta, Spool), String> {
    let mut buf = Vec::new();
    dir.open_existing(name)
        .and_then(|f| f.take(1 << 24).read_to_end(&mut buf))
        .map_err(|e| format!("cannot read it: {e}"))?;
    let d: OnDisk = serde_json::from_slice(&buf).map_err(|e| format!("not valid metadata: {e}"))?;
    let mut relations = Vec::with_capacity(d.relations.len());
    for (oid, lsn, raw) in d.relations {
        relations.push((oid, Lsn(lsn), Bytes::from(hex::decode(raw).map_err(|e| format!("bad relation bytes: {e}"))?)));
    }
    let sname = spool_name(d.xid);
    let spath = dir.path().join(&sname);
    let file = dir.open_existing(&sname).map_err(|e| format!("cannot open its spool {}: {e}", spath.display()))?;
    let actual = sha256_at(&file, d.len).map_err(|e| format!("cannot read its spool {}: {e}", spath.display()))?;
    if hex::encode(actual) != d.sha256 {
        return Err(format!("its spool {} does not match the recorded length and SHA-256", spath.display()));
    }
    let spool = dir.reopen(&sname, file, d.len).map_err(|e| format!("cannot open its spool: {e}"))?;
    Ok((PreparedMeta { xid: d.xid, gid: d.gid, in_stream: d.in_stream, origin: d.origin, relations }, spool))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::spool::SpoolDir;

    fn meta(xid: u32) -> PreparedMeta {
        PreparedMeta {
            xid,
            gid: format!("g{xid}"),
            in_stream: false,
            origin: Some("o".into()),
            relations: vec![(16384, Lsn(7), Bytes::from_static(b"R\x00rel"))],
        }
    }

    #[test]
    fn persisted_spools_survive_the_process_and_damage_is_detected() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("x.jsonl");
        let mut dir = SpoolDir::beside(&log).unwrap();
        let mut a = dir.create(5).unwrap();
        a.append(Lsn(10), b"D one").unwrap();
        persist(&dir, &mut a, &meta(5)).unwrap();
        let mut b = dir.create(6).unwrap();
        b.append(Lsn(11), b"D two").unwrap();
        persist(&dir, &mut b, &meta(6)).unwrap();
        // A scratch spool of the same run.
        let c = dir.create(9).unwrap();
        drop((a, b));
        std::mem::forget(c);
        drop(dir);

        // Next run: the scratch spool goes, the durable ones stay.
        let dir = SpoolDir::beside(&log).unwrap();
        let mut f = load(&dir).unwrap();
        assert!(f.damaged.is_empty(), "{:?}", f.damaged);
        assert_eq!(f.intact.len(), 2);
        assert_eq!(f.intact[0].0, meta(5));
        let (_, s) = &mut f.intact[0];
        let mut r = s.read_from(0).unwrap();
        assert_eq!(r.next_record().unwrap().unwrap(), (Lsn(10), Bytes::from_static(b"D one")));
        assert!(r.next_record().unwrap().is_none());

        // A spool swapped for one of the same length is refused, not replayed.
        let (_, s6) = f.intact.pop().unwrap();
        let p6 = s6.path().to_owned();
        drop(s6);
        let mut bytes = std::fs::read(&p6).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&p6, bytes).unwrap();
        let f2 = load(&dir).unwrap();
        assert_eq!(f2.intact.len(), 1);
        assert_eq!(f2.damaged.len(), 1, "{:?}", f2.damaged);

        // Removing one deletes both files.
        let (m, s) = f.intact.pop().unwrap();
        drop(f2);
        remove(&dir, m.xid, s);
        assert!(!dir.path().join(spool_name(5)).exists());
        assert!(!dir.path().join(meta_name(5)).exists());
    }
}
