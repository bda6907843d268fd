//! `walwitness replay --raw FILE…`: decodes raw capture files offline into the transaction records
//! (delete, truncate, commit) a live capture wrote — the same decoder, the same bytes.
use std::io::{self, BufWriter, Write};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use crate::attribution::activity::ActivityMap;
use crate::attribution::{Attributor, Session};
use crate::decode::relations::WatchList;
use crate::decode::{Assembler, Step};
use crate::error::{Exit, Failure};
use crate::protocol::pgoutput::{parse, ParseOptions};
use crate::sink::raw::{Frame, RawReader};

pub fn run(files: &[String], _max_frame: usize) -> Exit {
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    for f in files {
        match decode_file(f, &mut out) {
            Ok(()) => {}
            Err(Ok(f)) => {
                eprintln!("walwitness replay: error: {f}");
                return f.exit;
            }
            // Our reader went away (`| head`): a normal end.
            Err(Err(e)) if e.kind() == io::ErrorKind::BrokenPipe => return Exit::Ok,
            Err(Err(e)) => {
                eprintln!("walwitness replay: error: cannot write the output: {e}");
                return Exit::Output;
            }
        }
    }
    match out.flush() {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Exit::Output,
        _ => Exit::Ok,
    }
}

fn decode_file(path: &str, out: &mut impl Write) -> Result<(), Result<Failure, io::Error>> {
    let data = std::fs::read(path).map_err(|e| Ok(Failure::new(Exit::Usage, format!("cannot read {path}: {e}"))))?;
    let (header, mut reader) =
        RawReader::new(Bytes::from(data)).map_err(|e| Ok(Failure::new(Exit::DamagedLog, format!("{path}: {e}"))))?;
    let mut watch = WatchList::new();
    for t in &header.tables {
        match t.oid {
            Some(oid) => {
                watch.add_table(oid, &t.schema, &t.table, t.primary_key.clone());
                for p in &t.partitions {
                    watch.add_partition(p.oid, oid, p.primary_key.clone());
                }
            }
            None => watch.add(&t.schema, &t.table, t.primary_key.clone()),
        }
    }
    let map = Arc::new(ActivityMap::new());
    let attributor = Attributor { activity: Some(map.clone()), verifier: None };
    let mut asm = Assembler::new(watch, Default::default(), attributor);
    // A transaction is written only once its commit is decoded, as the live log's rollback would leave it.
    let mut buf = BytesMut::new();
    loop {
        let frame = match reader.next_frame() {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                eprintln!("walwitness replay: warning: {path}: {e}; the rest is ignored");
                break;
            }
        };
        match frame {
            Frame::Activity { xid, session } => {
                if let Ok(s) = serde_json::from_slice::<Session>(&session) {
                    map.record(Instant::now(), vec![(xid, s)]);
                }
            }
            Frame::Partition { oid, root, primary_key } => {
                asm.add_partition(oid, root, primary_key);
            }
            Frame::Reconnected => {
                asm.abandon_transaction();
                buf.clear();
            }
            Frame::XLog { wal_start, payload } => {
                let msg = parse(&payload, ParseOptions::default())
                    .map_err(|e| Ok(Failure::new(Exit::DamagedLog, format!("{path}: at LSN {wal_start}: {e}"))))?;
                match asm.handle(wal_start, msg, &mut buf) {
                    Ok(Step::Committed { end_lsn, .. }) => {
                        asm.set_resume_after(end_lsn);
                        out.write_all(&buf).map_err(Err)?;
                        buf.clear();
                    }
                    Ok(Step::Continue) => {}
                    Err(e) => return Err(Ok(Failure::new(Exit::DamagedLog, format!("{path}: {e}")))),
                }
            }
        }
    }
    Ok(())
}
