//! Issue 5, item 6: bad input never crashes. Property-based fuzzing (proptest) of everything that reads
//! bytes from the network or from files: replication frames, every pgoutput message, transaction
//! assembly over arbitrary message sequences, the log-tail repair, the JSONL reader, the readers' line
//! splitting under a line limit, and raw capture files (damage to them is detected, never silent).
//!
//! Inputs are random bytes and mutations (bit flips, truncations, splices) of valid messages, so the
//! search reaches deep into each parser. Failing cases are kept in `tests/fuzz_decoders.proptest-regressions`
//! and replayed first on every run. `PROPTEST_CASES` sets the number of cases (CI: the default below;
//! longer runs are noted in the README).
use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use walwitness::protocol::encode;

use walwitness::decode::relations::WatchList;
use walwitness::decode::Assembler;
use walwitness::protocol::pgoutput::{parse, ParseOptions};
use walwitness::protocol::replication::parse_copy_data;
use walwitness::protocol::Lsn;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(4000)
}

/// Valid messages of every kind the assembler acts on, as the seeds of mutation.
fn seeds() -> Vec<Vec<u8>> {
    let cols = [(true, "cache_key", 25), (false, "value", 25)];
    [
        encode::begin(0x100, 1, 7),
        encode::relation(None, 16384, "public", "cache", b'd', &cols),
        encode::delete(None, 16384, b'K', &[Some(b"k1"), None]),
        encode::truncate(None, 3, &[16384]),
        encode::message(None, true, 0x180, "walwitness", b"x {"),
        encode::origin(5, "origin"),
        encode::commit(0x100, 0x200, 1),
    ]
    .iter()
    .map(|b| b.to_vec())
    .collect()
}

fn mutated() -> impl Strategy<Value = Vec<u8>> {
    let seeds = seeds();
    (0..seeds.len(), proptest::collection::vec((any::<u16>(), any::<u8>(), 0u8..4), 0..6), any::<u16>()).prop_map(
        move |(i, edits, cut)| {
            let mut m = seeds[i].clone();
            for (pos, byte, op) in edits {
                if m.is_empty() {
                    break;
                }
                let p = pos as usize % m.len();
                match op {
                    0 => m[p] ^= byte | 1,
                    1 => m.insert(p, byte),
                    2 => {
                        m.remove(p);
                    }
                    _ => m[p] = byte,
                }
            }
            let keep = (cut as usize) % (m.len() + 1);
            if cut % 3 == 0 {
                m.truncate(keep);
            }
            m
        },
    )
}

fn any_input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![proptest::collection::vec(any::<u8>(), 0..64), mutated()]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn pgoutput_parse_never_panics(data in any_input(), in_stream in any::<bool>(), abort_lsn in any::<bool>()) {
        let _ = parse(&Bytes::from(data), ParseOptions { in_stream, stream_abort_has_lsn: abort_lsn });
    }

    #[test]
    fn replication_frames_never_panic(data in any_input(), tag in prop_oneof![Just(b'w'), Just(b'k'), any::<u8>()]) {
        let mut f = vec![tag];
        f.extend_from_slice(&data);
        let _ = parse_copy_data(Bytes::from(f));
    }

    /// Any sequence of decodable messages: the assembler errors or writes, never panics, and whatever it
    /// writes is valid JSON lines.
    #[test]
    fn assembly_never_panics(msgs in proptest::collection::vec(any_input(), 0..40)) {
        let mut w = WatchList::new();
        w.add("public", "cache", Some(vec!["cache_key".into()]));
        let mut asm = Assembler::new(w, Lsn(0), Default::default());
        let mut out = BytesMut::new();
        for (i, m) in msgs.into_iter().enumerate() {
            if let Ok(msg) = parse(&Bytes::from(m), ParseOptions::default()) {
                if asm.handle(Lsn(i as u64 * 8), msg, &mut out).is_err() {
                    asm.abandon_transaction();
                    out.clear();
                }
            }
        }
        let done = asm.take_complete(&mut out);
        for line in done.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            prop_assert!(serde_json::from_slice::<serde_json::Value>(line).is_ok(), "not JSON: {}", String::from_utf8_lossy(line));
        }
    }

    /// Whatever a crash left at the end of a log, opening it keeps a prefix that ends at a line boundary.
    #[test]
    fn log_repair_never_panics_and_keeps_a_prefix(content in proptest::collection::vec(
        prop_oneof![
            Just(b"{\"type\":\"delete\"}\n".to_vec()),
            Just(b"{\"type\":\"commit\",\"end_lsn\":\"0/10\"}\n".to_vec()),
            Just(b"{\"type\":\"capture_started\",\"slot\":\"s\",\"start_lsn\":\"0/1\"}\n".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..30),
        ], 0..12)) {
        let bytes: Vec<u8> = content.concat();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.jsonl");
        std::fs::write(&p, &bytes).unwrap();
        match walwitness::sink::writer::open_log(&p) {
            Ok((_f, rec)) => {
                let after = std::fs::read(&p).unwrap();
                prop_assert!(bytes.starts_with(&after));
                prop_assert!(after.is_empty() || after.ends_with(b"\n"));
                prop_assert_eq!(rec.len as usize, after.len());
            }
            // Only a file that does not begin like a log is refused, and it is left as it was.
            Err(e) => {
                prop_assert!(e.to_string().contains("not a walwitness log"), "{}", e);
                let start: &[u8] = br#"{"type":"capture_started""#;
                prop_assert!(!start.starts_with(&bytes[..bytes.len().min(start.len())]), "a log start was refused");
                prop_assert_eq!(std::fs::read(&p).unwrap(), bytes);
            }
        }
    }

    /// The JSONL reader (replay, report, tail) over arbitrary lines: errors, never panics.
    #[test]
    fn log_reader_never_panics(lines in proptest::collection::vec(prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..80),
        Just(br#"{"type":"delete","table":"t","xid":1,"lsn":"0/1","commit_lsn":"0/2","commit_time":"2026-01-01T00:00:00.000000Z","origin":null,"key":{"k":"v"},"old":null,"session":null}"#.to_vec()),
        Just(br#"{"type":"commit","xid":1,"commit_lsn":"0/2","end_lsn":"0/3","commit_time":"2026-01-01T00:00:00.000000Z","origin":null,"deletes":1,"truncates":0,"session":null,"attribution":"none"}"#.to_vec()),
        Just(br#"{"type":"gap","time":"2026-01-01T00:00:00.000000Z","slot":"s","from_lsn":"0/1","to_lsn":"0/9","reason":"slot_missing"}"#.to_vec()),
    ], 0..20)) {
        let mut parser = walwitness::read::log::Parser::new();
        let mut validator = walwitness::read::log::Validator::new();
        let mut scratch = Vec::new();
        for (i, l) in lines.iter().enumerate() {
            let parsed = parser.parse(l, &mut scratch);
            let _ = validator.check(i as u64 + 1, parsed.as_ref().map(|(k, r)| (*k, r)).map_err(|e| e.clone()));
        }
        let _ = validator.finish(lines.len() as u64, 0);
    }

    /// The readers' line splitting over arbitrary bytes, read in arbitrary pieces, with an arbitrary
    /// line limit: exactly the input's lines in order, then either the unterminated rest or a stop at a
    /// line that really is over the limit (memory stays bounded by it), never a panic.
    #[test]
    fn line_splitting_is_exact_and_bounded(
        parts in proptest::collection::vec(prop_oneof![
            proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'\r'), any::<u8>()], 0..40),
            (0usize..6000).prop_map(|n| vec![b'x'; n]),
        ], 0..30),
        limit in 1usize..5000,
        piece in 1usize..700,
    ) {
        let data: Vec<u8> = parts.concat();
        let mut want: Vec<&[u8]> = data.split(|b| *b == b'\n').collect();
        let tail = want.pop().unwrap_or_default();
        let strip = |l: &[u8]| l.strip_suffix(b"\r").unwrap_or(l).to_vec();
        // read_chunks (replay, report).
        let input = Box::new(std::io::BufReader::with_capacity(piece, std::io::Cursor::new(data.clone())));
        let (rx, back) = walwitness::read::log::read_chunks(input, limit);
        let mut got = Vec::new();
        let mut end = None;
        for c in rx {
            match c {
                walwitness::read::log::Chunk::Lines(b) => {
                    got.extend(walwitness::read::log::block_lines(&b).map(<[u8]>::to_vec));
                    let _ = back.send(b);
                }
                walwitness::read::log::Chunk::Incomplete(n) => end = Some(Ok(n)),
                walwitness::read::log::Chunk::TooLong(n) => end = Some(Err(n)),
                walwitness::read::log::Chunk::Err(e) => panic!("{e}"),
            }
        }
        prop_assert!(got.len() <= want.len());
        for (g, w) in got.iter().zip(&want) {
            prop_assert_eq!(g, &strip(w));
        }
        match end {
            Some(Ok(n)) => {
                prop_assert_eq!(got.len(), want.len());
                prop_assert_eq!(n, tail.len());
            }
            Some(Err(n)) => {
                let line = want.get(got.len()).copied().unwrap_or(tail);
                prop_assert!(n > limit && n <= line.len(), "stopped at {} for a line of {}", n, line.len());
            }
            None => prop_assert!(false, "no end"),
        }
        // LineReader (tail, tail -f).
        let mut r = walwitness::read::log::LineReader::with_limit(
            std::io::BufReader::with_capacity(piece, std::io::Cursor::new(data.clone())), limit);
        let mut n = 0;
        loop {
            match r.next_line() {
                Ok(Some(l)) => {
                    prop_assert!(l.len() <= limit);
                    prop_assert_eq!(l.to_vec(), strip(want[n]));
                    n += 1;
                }
                Ok(None) => {
                    prop_assert_eq!(n, want.len());
                    prop_assert_eq!(r.pending(), tail.len());
                    break;
                }
                Err(e) => {
                    prop_assert!(walwitness::read::log::too_long(&e).is_some(), "{}", e);
                    let line = want.get(n).copied().unwrap_or(tail);
                    prop_assert!(line.len() > limit);
                    break;
                }
            }
        }
    }

    /// Raw capture files: arbitrary bytes never panic the reader; 1 to 4 damaged bytes of a valid file
    /// are detected (an error) or change nothing (the same frames), never silently change a frame.
    #[test]
    fn raw_reader_detects_damage(
        junk in proptest::collection::vec(any::<u8>(), 0..200),
        damage in proptest::collection::vec((any::<proptest::sample::Index>(), 1u8..=255), 1..5),
    ) {
        let _ = raw_frames(&junk);
        let mut with_magic = b"WWRAW\x02".to_vec();
        with_magic.extend_from_slice(&junk);
        let _ = raw_frames(&with_magic);
        let (valid, frames) = valid_raw();
        let mut d = valid.clone();
        let len = d.len();
        for (i, x) in &damage {
            d[i.index(len)] ^= x;
        }
        if let Ok(got) = raw_frames(&d) {
            prop_assert!(got == *frames, "damage changed the frames silently");
        }
    }
}

fn raw_frames(bytes: &[u8]) -> Result<Vec<walwitness::sink::raw::Frame>, String> {
    let (_, mut r) = walwitness::sink::raw::RawReader::open(bytes, 1 << 16).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    while let Some(f) = r.next_frame().map_err(|e| e.to_string())? {
        out.push(f);
    }
    Ok(out)
}

/// A raw file with a frame of each type and every seed message, and its frames.
fn valid_raw() -> &'static (Vec<u8>, Vec<walwitness::sink::raw::Frame>) {
    static V: std::sync::OnceLock<(Vec<u8>, Vec<walwitness::sink::raw::Frame>)> = std::sync::OnceLock::new();
    V.get_or_init(|| {
        use walwitness::sink::raw::{RawHeader, RawTable, RawWriter};
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.raw");
        let h = RawHeader {
            tables: vec![RawTable {
                schema: "public".into(),
                table: "cache".into(),
                primary_key: Some(vec!["cache_key".into()]),
                oid: Some(16384),
                partitions: vec![],
            }],
            slot: "s".into(),
            publication: "p".into(),
            proto_version: 1,
        };
        let mut w = RawWriter::open(&p, &h).unwrap();
        w.activity(7, br#"{"attributed_by":"activity","pid":1}"#).unwrap();
        for (i, s) in seeds().iter().enumerate() {
            w.xlog(Lsn(0x100 + i as u64), s).unwrap();
        }
        w.partition(16385, 16384, None).unwrap();
        w.reconnected().unwrap();
        w.flush().unwrap();
        let bytes = std::fs::read(&p).unwrap();
        let frames = raw_frames(&bytes).unwrap();
        (bytes, frames)
    })
}
