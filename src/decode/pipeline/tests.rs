//! Hand-built pgoutput sequences through `Spooled` and the real `Assembler`.
use super::*;
use crate::attribution::Attributor;
use crate::decode::relations::WatchList;
use crate::decode::{Assembler, Step};
use crate::sink::spool::SpoolDir;

const REL: u32 = 16384;
const TOP: u32 = 700;

use crate::protocol::encode::Msg as M;

fn stream_start(xid: u32, first: bool) -> Bytes {
    M::new(b'S').u32(xid).u8(u8::from(first)).bytes()
}
fn stream_stop() -> Bytes {
    M::new(b'E').bytes()
}
fn relation(xid: Option<u32>) -> Bytes {
    let m = M::new(b'R');
    let m = match xid {
        Some(x) => m.u32(x),
        None => m,
    };
    m.u32(REL).s("public").s("t").u8(b'd').u16(1).u8(1).s("id").u32(23).u32(u32::MAX).bytes()
}
fn delete(xid: Option<u32>, id: &str) -> Bytes {
    let m = M::new(b'D');
    let m = match xid {
        Some(x) => m.u32(x),
        None => m,
    };
    m.u32(REL).u8(b'K').u16(1).u8(b't').u32(id.len() as u32).raw(id.as_bytes()).bytes()
}
fn insert(xid: u32) -> Bytes {
    M::new(b'I').u32(xid).u32(REL).u8(b'N').u16(1).u8(b't').u32(1).u8(b'9').bytes()
}
fn stream_commit(xid: u32, commit: u64, end: u64) -> Bytes {
    M::new(b'c').u32(xid).u8(0).u64(commit).u64(end).u64(1_000_000).bytes()
}
fn stream_abort(xid: u32, subxid: u32) -> Bytes {
    M::new(b'A').u32(xid).u32(subxid).bytes()
}
fn begin_prepare(xid: u32, gid: &str) -> Bytes {
    M::new(b'b').u64(0x500).u64(0x510).u64(5).u32(xid).s(gid).bytes()
}
fn prepare(xid: u32, gid: &str) -> Bytes {
    M::new(b'P').u8(0).u64(0x500).u64(0x510).u64(5).u32(xid).s(gid).bytes()
}
fn commit_prepared(xid: u32, gid: &str, commit: u64, end: u64) -> Bytes {
    M::new(b'K').u8(0).u64(commit).u64(end).u64(7).u32(xid).s(gid).bytes()
}
fn rollback_prepared(xid: u32, gid: &str) -> Bytes {
    M::new(b'r').u8(0).u64(0x510).u64(0x900).u64(5).u64(9).u32(xid).s(gid).bytes()
}
fn begin(xid: u32, fin: u64) -> Bytes {
    M::new(b'B').u64(fin).u64(3).u32(xid).bytes()
}
fn commit(fin: u64, end: u64) -> Bytes {
    M::new(b'C').u8(0).u64(fin).u64(end).u64(3).bytes()
}

struct Harness {
    p: Pipeline,
    log: Vec<u8>,
    out: BytesMut,
    _tmp: tempfile::TempDir,
}

impl Harness {
    fn new(include_aborted: bool, resume_after: Lsn) -> Harness {
        let tmp = tempfile::tempdir().unwrap();
        let dir = SpoolDir::beside(&tmp.path().join("log.jsonl")).unwrap();
        let mut w = WatchList::new();
        w.add("public", "t", Some(vec!["id".into()]));
        Harness {
            p: Pipeline::new(
                Assembler::new(w, resume_after, Attributor::default()),
                Spooled::new(dir, include_aborted, true, None),
                false,
            ),
            log: Vec::new(),
            out: BytesMut::new(),
            _tmp: tmp,
        }
    }

    /// What the capture loop does with one frame (without the writer).
    fn feed(&mut self, lsn: u64, raw: Bytes) {
        let out = &mut self.out;
        match self.p.receive(Lsn(lsn), &raw, Lsn(1)).unwrap() {
            Received::Message(m) => {
                self.p.assemble(Lsn(lsn), m, out).unwrap();
                // A pending row stays in `out` until the next message, as in the capture loop.
                let b = self.p.asm.take_complete(out);
                self.log.extend_from_slice(&b);
            }
            Received::Held => {}
            Received::Replay(mut r) => loop {
                let Some((l, m)) = r.next_message().unwrap() else { break };
                if let Step::Committed { .. } = self.p.assemble(l, m, out).unwrap() {
                    let b = r.finish_last(out.split().freeze());
                    self.log.extend_from_slice(&b);
                } else if out.len() > 64 {
                    let b = self.p.asm.take_complete(out);
                    self.log.extend_from_slice(&r.finish_rows(b));
                }
            },
        }
    }

    fn records(&self) -> Vec<serde_json::Value> {
        std::str::from_utf8(&self.log).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    fn keys(&self, kind: &str) -> Vec<String> {
        self.records()
            .iter()
            .filter(|r| r["type"] == kind)
            .map(|r| r["key"]["id"].as_str().unwrap().to_owned())
            .collect()
    }

    fn spool_files(&self) -> usize {
        std::fs::read_dir(self.p.held.dir.path()).unwrap().count()
    }
}

#[test]
fn streamed_commit_renders_like_an_ordinary_transaction() {
    let mut h = Harness::new(false, Lsn(0));
    h.feed(0x100, stream_start(TOP, true));
    h.feed(0x100, relation(Some(TOP)));
    h.feed(0x110, delete(Some(TOP), "1"));
    h.feed(0x120, stream_stop());
    // An ordinary transaction between two blocks is written at once.
    h.feed(0x200, begin(800, 0x230));
    h.feed(0x200, relation(None));
    h.feed(0x210, delete(None, "x"));
    h.feed(0x238, commit(0x230, 0x240));
    h.feed(0x300, stream_start(TOP, false));
    h.feed(0x310, delete(Some(TOP), "2"));
    h.feed(0x320, stream_stop());
    assert_eq!(h.keys("delete"), ["x"]);
    assert_eq!(h.spool_files(), 1);
    h.feed(0x410, stream_commit(TOP, 0x400, 0x410));
    assert_eq!(h.keys("delete"), ["x", "1", "2"]);
    assert_eq!(h.spool_files(), 0, "the spool is removed after use");
    let recs = h.records();
    let d = &recs[2];
    assert_eq!(d["xid"], TOP);
    assert_eq!(d["lsn"], "0/110");
    assert_eq!(d["commit_lsn"], "0/400");
    let c = recs.last().unwrap();
    assert_eq!(c["type"], "commit");
    assert_eq!(c["end_lsn"], "0/410");
    assert_eq!(c["deletes"], 2);
    assert!(c.get("gid").is_none());
}

#[test]
fn subtransaction_abort_cuts_the_spool_like_the_apply_worker() {
    let mut h = Harness::new(false, Lsn(0));
    h.feed(0x100, stream_start(TOP, true));
    h.feed(0x100, relation(Some(TOP)));
    h.feed(0x110, delete(Some(TOP), "1"));
    h.feed(0x120, delete(Some(701), "2")); // SAVEPOINT a
    h.feed(0x130, insert(702)); // SAVEPOINT b inside a: its first change is an insert
    h.feed(0x140, delete(Some(702), "3"));
    h.feed(0x150, delete(Some(701), "4")); // back in a after RELEASE b
    h.feed(0x160, stream_stop());
    h.feed(0x200, stream_start(TOP, false));
    // ROLLBACK TO b: cuts b's first change (the insert) and everything after it, 702 forgotten.
    h.feed(0x200, stream_abort(TOP, 702));
    // An unknown subxid (a subtransaction without changes) changes nothing.
    h.feed(0x201, stream_abort(TOP, 799));
    h.feed(0x210, delete(Some(703), "5"));
    h.feed(0x220, delete(Some(TOP), "6"));
    h.feed(0x230, stream_stop());
    h.feed(0x300, stream_start(TOP, false));
    // Aborting 703 again after its rows drops 5 and 6 (6 was spooled after 703's first change).
    h.feed(0x300, stream_abort(TOP, 703));
    h.feed(0x310, delete(Some(TOP), "7"));
    h.feed(0x320, stream_stop());
    h.feed(0x410, stream_commit(TOP, 0x400, 0x410));
    assert_eq!(h.keys("delete"), ["1", "2", "7"]);
    assert_eq!(h.records().last().unwrap()["deletes"], 3);
}

#[test]
fn abort_of_an_outer_savepoint_drops_nested_ones() {
    let mut h = Harness::new(false, Lsn(0));
    h.feed(0x100, stream_start(TOP, true));
    h.feed(0x100, relation(Some(701)));
    h.feed(0x110, delete(Some(701), "1"));
    h.feed(0x120, delete(Some(702), "2"));
    h.feed(0x130, stream_abort(TOP, 701));
    h.feed(0x140, delete(Some(TOP), "3"));
    h.feed(0x150, stream_stop());
    h.feed(0x410, stream_commit(TOP, 0x400, 0x410));
    // The Relation went with 701's spool, but is replayed from memory first.
    assert_eq!(h.keys("delete"), ["3"]);
}

#[test]
fn whole_abort_discards_or_records_aborted_deletes() {
    for include in [false, true] {
        let mut h = Harness::new(include, Lsn(0));
        h.feed(0x100, stream_start(TOP, true));
        h.feed(0x100, relation(Some(TOP)));
        h.feed(0x110, delete(Some(TOP), "1"));
        h.feed(0x120, delete(Some(701), "2"));
        h.feed(0x130, stream_stop());
        h.feed(0x140, stream_start(TOP, false));
        h.feed(0x140, stream_abort(TOP, 701));
        h.feed(0x150, stream_stop());
        h.feed(0x200, stream_abort(TOP, TOP));
        assert!(h.keys("delete").is_empty());
        assert_eq!(h.spool_files(), 0);
        if include {
            assert_eq!(h.keys("aborted_delete"), ["2", "1"]);
            let recs = h.records();
            assert_eq!(recs[1]["type"], "abort");
            assert_eq!(recs[1]["subxid"], 701);
            assert_eq!(recs[1]["deletes"], 1);
            assert_eq!(recs[0]["commit_lsn"], serde_json::Value::Null);
            assert_eq!(recs[0]["abort_lsn"], serde_json::Value::Null);
            assert_eq!(recs[0]["lsn"], "0/120");
            let last = recs.last().unwrap();
            assert_eq!(last["type"], "abort");
            assert_eq!(last["xid"], TOP);
            assert_eq!(last["subxid"], TOP);
            assert!(last.get("commit_lsn").is_none());
        } else {
            assert!(h.log.is_empty());
        }
    }
}

#[test]
fn already_logged_stream_commit_is_skipped() {
    let mut h = Harness::new(false, Lsn(0x500));
    h.feed(0x100, stream_start(TOP, true));
    h.feed(0x100, relation(Some(TOP)));
    h.feed(0x110, delete(Some(TOP), "1"));
    h.feed(0x130, stream_stop());
    h.feed(0x410, stream_commit(TOP, 0x400, 0x410));
    assert!(h.log.is_empty());
}

#[test]
fn two_phase_commit_and_rollback_prepared() {
    let mut h = Harness::new(true, Lsn(0));
    h.feed(0x100, begin_prepare(900, "g1"));
    h.feed(0x100, relation(None));
    h.feed(0x110, delete(None, "1"));
    assert_eq!(h.p.held.ack_cap(), Some(Lsn(1)));
    h.feed(0x510, prepare(900, "g1"));
    h.feed(0x100, begin_prepare(901, "g2"));
    h.feed(0x120, delete(None, "2"));
    h.feed(0x510, prepare(901, "g2"));
    assert!(h.log.is_empty(), "nothing before COMMIT PREPARED");
    h.feed(0x700, commit_prepared(900, "g1", 0x700, 0x710));
    h.feed(0x900, rollback_prepared(901, "g2"));
    assert_eq!(h.p.held.ack_cap(), None);
    assert_eq!(h.keys("delete"), ["1"]);
    assert_eq!(h.keys("aborted_delete"), ["2"]);
    let recs = h.records();
    assert_eq!(recs[1]["type"], "commit");
    assert_eq!(recs[1]["gid"], "g1");
    assert_eq!(recs[1]["commit_lsn"], "0/700");
    assert_eq!(recs[3]["type"], "abort");
    assert_eq!(recs[3]["gid"], "g2");
    assert_eq!(recs[3]["abort_lsn"], "0/900");
}

#[test]
fn reset_forgets_partial_streams() {
    let mut h = Harness::new(false, Lsn(0));
    h.feed(0x100, stream_start(TOP, true));
    h.feed(0x100, relation(Some(TOP)));
    h.feed(0x110, delete(Some(TOP), "1"));
    assert!(h.p.held.streams_open());
    h.p.held.reset();
    assert!(!h.p.held.streams_open());
    assert_eq!(h.spool_files(), 0);
    // The server sends it again from its first block.
    h.feed(0x100, stream_start(TOP, true));
    h.feed(0x100, relation(Some(TOP)));
    h.feed(0x110, delete(Some(TOP), "1"));
    h.feed(0x130, stream_stop());
    h.feed(0x410, stream_commit(TOP, 0x400, 0x410));
    assert_eq!(h.keys("delete"), ["1"]);
}

/// `Pipeline::feed` (offline decoding, `replay --raw`) writes what the live loop's path writes, for
/// streamed, prepared and ordinary transactions alike, whatever the spill size.
#[test]
fn offline_feed_writes_what_the_live_path_writes() {
    let frames: Vec<(u64, Bytes)> = vec![
        (0x100, stream_start(TOP, true)),
        (0x100, relation(Some(TOP))),
        (0x110, delete(Some(TOP), "1")),
        (0x120, delete(Some(701), "2")),
        (0x130, stream_stop()),
        (0x200, begin(800, 0x230)),
        (0x200, relation(None)),
        (0x210, delete(None, "x")),
        (0x238, commit(0x230, 0x240)),
        (0x300, stream_start(TOP, false)),
        (0x300, stream_abort(TOP, 701)),
        (0x310, delete(Some(TOP), "3")),
        (0x320, stream_stop()),
        (0x410, stream_commit(TOP, 0x400, 0x410)),
        (0x500, begin_prepare(900, "g")),
        (0x500, relation(None)),
        (0x505, delete(None, "p")),
        (0x510, prepare(900, "g")),
        (0x600, commit_prepared(900, "g", 0x600, 0x610)),
    ];
    let mut live = Harness::new(false, Lsn(0));
    for (lsn, f) in &frames {
        live.feed(*lsn, f.clone());
    }
    assert_eq!(live.keys("delete"), ["x", "1", "3", "p"]);
    for spill_at in [0, 64, usize::MAX] {
        let mut off = Harness::new(false, Lsn(0));
        let mut log = Vec::new();
        for (lsn, f) in &frames {
            let mut spilled = Vec::new();
            let ended = off
                .p
                .feed(Lsn(*lsn), f, &mut off.out, spill_at, &mut |b| {
                    spilled.extend_from_slice(&b);
                    Ok(())
                })
                .unwrap();
            log.extend_from_slice(&spilled);
            if ended.is_some() {
                log.extend_from_slice(&off.out.split());
            }
        }
        assert_eq!(String::from_utf8(log).unwrap(), String::from_utf8(live.log.clone()).unwrap(), "{spill_at}");
    }
}
