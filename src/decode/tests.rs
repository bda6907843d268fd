//! The Assembler on hand-built message sequences: records, attribution and trigger evidence. Compiled
//! only for tests (`#[cfg(test)] mod tests` in `decode`).
use super::*;
use crate::attribution::activity::ActivityMap;
use crate::attribution::trigger::{pads, Verifier};
use crate::attribution::Session;
use crate::protocol::pgoutput::{Column, OldTuple, ReplicaIdentity, TupleData};
use bytes::Bytes;

fn watch() -> WatchList {
    let mut w = WatchList::new();
    w.add("public", "cache", Some(vec!["cache_key".into()]));
    w
}

fn rel(identity: ReplicaIdentity, key_flags: bool) -> Message {
    Message::Relation {
        xid: None,
        oid: 10,
        namespace: "public".into(),
        name: "cache".into(),
        replica_identity: identity,
        columns: vec![
            Column { is_key: true, flags: 1, name: "cache_key".into(), type_oid: 25, type_modifier: -1 },
            Column { is_key: key_flags, flags: key_flags as u8, name: "value".into(), type_oid: 25, type_modifier: -1 },
        ],
    }
}

fn del(kind: OldKind, key: &str, value: Option<&str>) -> Message {
    let v = |s: Option<&str>| s.map_or(Value::Null, |s| Value::Text(Bytes::copy_from_slice(s.as_bytes())));
    Message::Delete {
        xid: None,
        relid: 10,
        old: OldTuple { kind, tuple: TupleData { columns: vec![v(Some(key)), v(value)] } },
    }
}

fn begin(xid: u32, final_lsn: u64) -> Message {
    Message::Begin { final_lsn: Lsn(final_lsn), commit_time: 0, xid }
}

fn commit(final_lsn: u64, end: u64) -> Message {
    Message::Commit { flags: 0, commit_lsn: Lsn(final_lsn), end_lsn: Lsn(end), commit_time: 0 }
}

fn run(asm: &mut Assembler, msgs: Vec<(u64, Message)>) -> (String, Vec<Step>) {
    let mut out = BytesMut::new();
    let mut steps = Vec::new();
    for (lsn, m) in msgs {
        steps.push(asm.handle(Lsn(lsn), m, &mut out).unwrap());
    }
    (String::from_utf8(out.to_vec()).unwrap(), steps)
}

#[test]
fn a_transaction_becomes_rows_then_commit() {
    let mut asm = Assembler::new(watch(), Lsn(0), Attributor::default());
    let (out, steps) = run(
        &mut asm,
        vec![
            (0, begin(7, 0x100)),
            (0, rel(ReplicaIdentity::Default, false)),
            (0x50, del(OldKind::Key, "k\"1", None)),
            (0x100, commit(0x100, 0x130)),
        ],
    );
    assert_eq!(
        out,
        "{\"type\":\"delete\",\"table\":\"public.cache\",\"schema\":\"public\",\"name\":\"cache\",\"xid\":7,\"lsn\":\"0/50\",\"commit_lsn\":\"0/100\",\"commit_time\":\"2000-01-01T00:00:00.000000Z\",\"origin\":null,\"key\":{\"cache_key\":\"k\\\"1\"},\"old\":null,\"session\":null}\n\
         {\"type\":\"commit\",\"xid\":7,\"commit_lsn\":\"0/100\",\"end_lsn\":\"0/130\",\"commit_time\":\"2000-01-01T00:00:00.000000Z\",\"origin\":null,\"deletes\":1,\"truncates\":0,\"session\":null,\"attribution\":\"none\"}\n"
    );
    assert_eq!(
        steps.last().unwrap(),
        &Step::Committed { end_lsn: Lsn(0x130), wrote: true, deletes: 1, truncates: 0, commit_time: 0 }
    );
}

#[test]
fn full_identity_uses_primary_key_and_old_row() {
    let mut asm = Assembler::new(watch(), Lsn(0), Attributor::default());
    let (out, _) = run(
        &mut asm,
        vec![
            (0, begin(7, 0x100)),
            (0, rel(ReplicaIdentity::Full, true)),
            (0x50, del(OldKind::Old, "a", None)),
            (0x100, commit(0x100, 0x130)),
        ],
    );
    assert!(out.contains("\"key\":{\"cache_key\":\"a\"},\"old\":{\"cache_key\":\"a\",\"value\":null}"), "{out}");
}

#[test]
fn transactions_already_in_the_log_are_skipped_and_empty_ones_write_nothing() {
    let mut asm = Assembler::new(watch(), Lsn(0x130), Attributor::default());
    let (out, steps) = run(
        &mut asm,
        vec![
            (0, begin(7, 0x100)),
            (0, rel(ReplicaIdentity::Default, false)),
            (0x50, del(OldKind::Key, "a", None)),
            (0x100, commit(0x100, 0x130)),
            (0, begin(8, 0x200)),
            (0x200, commit(0x200, 0x230)),
        ],
    );
    assert_eq!(out, "");
    assert!(matches!(steps[3], Step::Committed { wrote: false, .. }));
    assert!(matches!(steps[5], Step::Committed { wrote: false, end_lsn: Lsn(0x230), .. }));
}

#[test]
fn protocol_violations_are_errors_with_context() {
    let mut asm = Assembler::new(watch(), Lsn(0), Attributor::default());
    let mut out = BytesMut::new();
    let e = asm.handle(Lsn(5), del(OldKind::Key, "a", None), &mut out).unwrap_err();
    assert!(e.to_string().contains("at LSN 0/5") && e.to_string().contains("outside a transaction"), "{e}");
    asm.handle(Lsn(0), begin(1, 0x100), &mut out).unwrap();
    let e = asm.handle(Lsn(6), del(OldKind::Key, "a", None), &mut out).unwrap_err();
    assert!(e.to_string().contains("never described"), "{e}");
    let e = asm.handle(Lsn(7), commit(0x999, 0x1000), &mut out).unwrap_err();
    assert!(e.to_string().contains("Begin announced 0/100"), "{e}");
}

fn signed(v: &Verifier, payload: &str) -> Bytes {
    Bytes::from(format!("{} {payload}", hex::encode(v.mac(payload.as_bytes()))))
}

const SYS: &str = "7000000000000000001";

/// An open for table cache by `pid` with application `app`, statement start `ss`, statement id `id`.
fn open(v: &Verifier, xid: u64, pid: i32, app: &str, ss: i64, id: i64, armed: bool) -> Bytes {
    let p = crate::attribution::trigger::tests::open_payload(SYS, xid, pid, app, "cache", ss)
        .replace("\"id\":1,", &format!("\"id\":{id},"))
        .replace("\"armed\":true", &format!("\"armed\":{armed}"));
    signed(v, &p)
}

fn close(ss: i64) -> Bytes {
    Bytes::from(format!(r#"close {{"d":0,"ss":{ss},"op":"DELETE","r":10,"s":"public","t":"cache"}}"#))
}

fn msg(lsn: u64, content: Bytes) -> Message {
    Message::LogicalMessage { xid: None, transactional: true, lsn: Lsn(lsn), prefix: "walwitness".into(), content }
}

fn verifier() -> (Verifier, Attributor) {
    let (i, o) = pads(&[3u8; 32]);
    let v = Verifier::from_pads(i.clone(), o.clone()).for_cluster(SYS, 7);
    let attributor =
        Attributor { activity: None, verifier: Some(Arc::new(Verifier::from_pads(i, o).for_cluster(SYS, 7))) };
    (v, attributor)
}

fn lines(out: &str) -> Vec<serde_json::Value> {
    out.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn rows_inside_a_bracket_get_its_statement_even_when_the_first_row_ties_with_it() {
    let (v, attributor) = verifier();
    let mut asm = Assembler::new(watch(), Lsn(0), attributor);
    // The first row's start LSN equals the open's end LSN, and pgoutput sent the row first; the row
    // after the close starts where the close ends and was sent before it: it is outside.
    let (out, _) = run(
        &mut asm,
        vec![
            (0, begin(7, 0x100)),
            (0, rel(ReplicaIdentity::Default, false)),
            (0x40, del(OldKind::Key, "a", None)),
            (0x40, msg(0x40, open(&v, 7, 99, "cron", 5, 1, true))),
            (0x50, del(OldKind::Key, "b", None)),
            (0x70, del(OldKind::Key, "c", None)),
            (0x70, msg(0x70, close(5))),
            (0x100, commit(0x100, 0x130)),
        ],
    );
    let l = lines(&out);
    assert_eq!(l.len(), 5, "{out}");
    assert_eq!(l[0]["type"], "statement");
    assert_eq!(l[0]["statement"], 1);
    assert_eq!(l[0]["session"]["query"], "DELETE FROM cache");
    assert_eq!(l[0]["session"]["application_name"], "cron");
    for r in &l[1..3] {
        assert_eq!(r["session"]["pid"], 99, "{r}");
        assert_eq!(r["session"]["statement"], 1);
        assert_eq!(r["session"]["attributed_by"], "trigger");
        assert!(r["session"].get("query").is_none(), "the statement text is written once: {r}");
        assert!(r.get("trigger_evidence").is_none());
    }
    assert_eq!(l[3]["key"]["cache_key"], "c");
    assert_eq!(l[3]["session"], serde_json::Value::Null);
    assert_eq!(l[3]["trigger_evidence"], "missing");
    assert_eq!(l[3]["trigger_evidence_reason"], "no_trigger_fired");
    assert_eq!(l[4]["attribution"], "partial");
    assert_eq!(l[4]["trigger_evidence_missing"], 1);
    assert_eq!(l[4]["session"]["statement"], 1);
}

#[test]
fn a_decoy_statement_never_covers_the_rows_of_another() {
    let (v, attributor) = verifier();
    let mut asm = Assembler::new(watch(), Lsn(0), attributor);
    let (out, _) = run(
        &mut asm,
        vec![
            (0, begin(7, 0x300)),
            (0, rel(ReplicaIdentity::Default, false)),
            // Decoy: opens and closes with no rows.
            (0x10, msg(0x10, open(&v, 7, 99, "nightly", 5, 1, true))),
            (0x20, msg(0x20, close(5))),
            // The real delete ran with the opening trigger disabled: a Relation message comes again.
            (0x30, rel(ReplicaIdentity::Default, false)),
            (0x40, del(OldKind::Key, "a", None)),
            (0x50, msg(0x50, close(6))),
            // A decoy whose closing trigger was disabled: its open says so.
            (0x60, msg(0x60, open(&v, 7, 99, "nightly", 7, 2, false))),
            (0x70, del(OldKind::Key, "b", None)),
            // Replays of a valid open are rejected.
            (0x80, msg(0x80, open(&v, 7, 99, "nightly", 5, 1, true))),
            (0x90, del(OldKind::Key, "c", None)),
            (0x300, commit(0x300, 0x330)),
        ],
    );
    let l = lines(&out);
    let rows: Vec<_> = l.iter().filter(|r| r["type"] == "delete").collect();
    assert_eq!(rows.len(), 3);
    let reasons: Vec<_> = rows.iter().map(|r| r["trigger_evidence_reason"].as_str().unwrap()).collect();
    assert_eq!(reasons, ["table_altered", "closing_trigger_disabled", "closing_trigger_disabled"], "{out}");
    for r in &rows {
        assert_eq!(r["session"], serde_json::Value::Null, "never the decoy: {r}");
        assert_eq!(r["trigger_evidence"], "missing");
    }
    assert!(l.iter().all(|r| r["type"] != "statement"), "{out}");
    let c = l.last().unwrap();
    assert_eq!(c["attribution"], "none");
    assert_eq!(c["trigger_evidence_missing"], 3);
    let problems = c["trigger_evidence_problems"].to_string();
    assert!(problems.contains("without a matching start") && problems.contains("closing trigger"), "{c}");
    assert!(c["rejected_attribution_messages"][0].as_str().unwrap().contains("replayed"), "{c}");
}

#[test]
fn an_error_report_before_the_transaction_flags_the_rows_after_it() {
    let (v, attributor) = verifier();
    let mut asm = Assembler::new(watch(), Lsn(0), attributor);
    let report = r#"{"v":2,"k":"error","sys":null,"xid":7,"pid":99,"w":"BEFORE","op":"DELETE","r":10,"s":"public","t":"cache","e":"53200 out of shared memory","at":1}"#;
    let (out, _) = run(
        &mut asm,
        vec![
            (0, rel(ReplicaIdentity::Default, false)),
            (
                0x25,
                Message::LogicalMessage {
                    xid: None,
                    transactional: false,
                    lsn: Lsn(0x25),
                    prefix: "walwitness".into(),
                    content: Bytes::from(format!("error - {report}")),
                },
            ),
            (0, begin(7, 0x300)),
            (0x10, msg(0x10, open(&v, 7, 99, "nightly", 5, 1, true))),
            (0x18, del(OldKind::Key, "a", None)),
            // Rows after the error are not the decoy's even while its bracket is open.
            (0x30, del(OldKind::Key, "b", None)),
            (0x40, msg(0x40, close(5))),
            (0x300, commit(0x300, 0x330)),
        ],
    );
    let l = lines(&out);
    assert_eq!(l[0]["type"], "trigger_error", "{out}");
    assert_eq!(l[0]["error"], "53200 out of shared memory");
    assert_eq!(l[0]["signed"], false);
    assert_eq!(l[1]["type"], "statement");
    assert_eq!(l[2]["session"]["application_name"], "nightly", "the decoy's own row");
    assert_eq!(l[3]["trigger_evidence_reason"], "trigger_error");
    assert_eq!(l[3]["session"], serde_json::Value::Null);
    let _ = v;
}

#[test]
fn an_open_for_another_transaction_or_cluster_is_rejected() {
    let (v, attributor) = verifier();
    let mut asm = Assembler::new(watch(), Lsn(0), attributor);
    let (other_i, other_o) = pads(&[4u8; 32]);
    let forger = Verifier::from_pads(other_i, other_o);
    let elsewhere = crate::attribution::trigger::tests::open_payload("1", 7, 1, "x", "cache", 5);
    let (out, _) = run(
        &mut asm,
        vec![
            (0, begin(7, 0x100)),
            (0, rel(ReplicaIdentity::Default, false)),
            (0x10, msg(0x10, open(&forger, 7, 1, "x", 5, 1, true))),
            // Same low 32 bits, another epoch: a replay from 2^32 transactions ago.
            (0x20, msg(0x20, open(&v, 7 + (1 << 32), 2, "x", 5, 2, true))),
            (0x30, msg(0x30, signed(&v, &elsewhere))),
            (0x50, del(OldKind::Key, "a", None)),
            (0x100, commit(0x100, 0x130)),
        ],
    );
    let l = lines(&out);
    assert_eq!(l[0]["session"], serde_json::Value::Null);
    assert_eq!(l[0]["trigger_evidence_reason"], "rejected_evidence");
    let rejected = l[1]["rejected_attribution_messages"].as_array().unwrap();
    assert_eq!(rejected.len(), 3, "{}", l[1]);
    assert!(rejected[0].as_str().unwrap().contains("does not match"));
    assert!(rejected[1].as_str().unwrap().contains("signed for xid"));
    assert!(rejected[2].as_str().unwrap().contains("cluster"));
    assert_eq!(asm.rejected_messages, 3);
}

#[test]
fn rows_after_a_nested_statement_of_the_same_table_are_not_attributed_to_the_outer_one() {
    let (v, attributor) = verifier();
    let mut asm = Assembler::new(watch(), Lsn(0), attributor);
    let (out, _) = run(
        &mut asm,
        vec![
            (0, begin(7, 0x300)),
            (0, rel(ReplicaIdentity::Default, false)),
            (0x10, msg(0x10, open(&v, 7, 99, "outer", 5, 1, true))),
            (0x18, del(OldKind::Key, "a", None)),
            (0x20, msg(0x20, open(&v, 7, 99, "inner", 5, 2, true))),
            (0x28, del(OldKind::Key, "b", None)),
            (0x30, msg(0x30, close(5))),
            (0x38, del(OldKind::Key, "c", None)),
            (0x40, msg(0x40, close(5))),
            (0x300, commit(0x300, 0x330)),
        ],
    );
    let l = lines(&out);
    let rows: Vec<_> = l.iter().filter(|r| r["type"] == "delete").collect();
    assert_eq!(rows[0]["session"]["application_name"], "outer");
    assert_eq!(rows[1]["session"]["application_name"], "inner");
    assert_eq!(rows[2]["trigger_evidence_reason"], "after_nested_statement", "{out}");
    assert_eq!(l.iter().filter(|r| r["type"] == "statement").count(), 2);
}

#[test]
fn activity_and_trigger_disagreeing_is_flagged_not_hidden() {
    let (v, _) = verifier();
    let (i, o) = pads(&[3u8; 32]);
    let map = Arc::new(ActivityMap::new());
    map.record(
        std::time::Instant::now(),
        vec![(7, Session { attributed_by: "activity".into(), pid: 555, ..Default::default() })],
    );
    let attributor =
        Attributor { activity: Some(map), verifier: Some(Arc::new(Verifier::from_pads(i, o).for_cluster(SYS, 7))) };
    let mut asm = Assembler::new(watch(), Lsn(0), attributor);
    let (out, _) = run(
        &mut asm,
        vec![
            (0, begin(7, 0x100)),
            (0, rel(ReplicaIdentity::Default, false)),
            (0x10, msg(0x10, open(&v, 7, 99, "cron", 5, 1, true))),
            (0x50, del(OldKind::Key, "a", None)),
            (0x60, msg(0x60, close(5))),
            (0x70, del(OldKind::Key, "b", None)),
            (0x100, commit(0x100, 0x130)),
        ],
    );
    let l = lines(&out);
    assert_eq!(l[0]["session"]["pid"], 99, "the trigger wins");
    assert_eq!(l[0]["session"]["conflict"]["pid"], 555, "the activity view is kept");
    assert_eq!(l[1]["session"]["pid"], 99);
    // A row outside the bracket falls back to the activity session, flagged.
    assert_eq!(l[2]["type"], "statement");
    assert_eq!(l[3]["session"]["pid"], 555);
    assert_eq!(l[3]["session"]["attributed_by"], "activity");
    assert_eq!(l[3]["trigger_evidence"], "missing");
    assert_eq!(l[4]["attribution_conflict"], true);
    assert_eq!(l[4]["attribution"], "partial");
}

#[test]
fn inference_goes_on_the_commit_and_a_window_explains_one_transaction() {
    use crate::attribution::infer::Observed;
    let map =
        Arc::new(ActivityMap::live(vec![("public".into(), "cache".into())], std::time::Duration::from_millis(200)));
    let window = Observed {
        session: Session {
            attributed_by: "activity".into(),
            pid: 42,
            query: Some("DELETE FROM cache WHERE cache_key = 'a'".into()),
            ..Default::default()
        },
        xid: None,
        start_us: Some(-5),
        state_change_us: Some(5),
        active: false,
    };
    map.record_windows(-10, -10, &[]);
    map.record_windows(10, 10, &[window]);
    let mut asm = Assembler::new(watch(), Lsn(0), Attributor { activity: Some(map), verifier: None });
    let (out, _) = run(
        &mut asm,
        vec![
            (0, begin(7, 0x100)),
            (0, rel(ReplicaIdentity::Default, false)),
            (0x50, del(OldKind::Key, "a", None)),
            (0x100, commit(0x100, 0x130)),
            (0x200, begin(8, 0x300)),
            (0x250, del(OldKind::Key, "b", None)),
            (0x300, commit(0x300, 0x330)),
        ],
    );
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(
        lines[0]["session"].is_null() && lines[0].get("inferred").is_none(),
        "rows keep evidence only: {}",
        lines[0]
    );
    assert_eq!(lines[1]["inferred"]["candidates"], 1, "{}", lines[1]);
    assert_eq!(lines[1]["inferred"]["session"]["pid"], 42);
    assert_eq!(lines[1]["inferred"]["statement"], "DELETE FROM cache WHERE cache_key = 'a'");
    assert!(lines[1]["session"].is_null() && lines[1].get("unattributed_reason").is_none());
    // The window is used up: the next transaction at the same time is not explained by it.
    assert!(lines[3].get("inferred").is_none(), "{}", lines[3]);
    assert!(lines[3]["unattributed_reason"].is_string(), "{}", lines[3]);
    assert_eq!((asm.written_transactions, asm.unnamed_transactions), (2, 1));
}

#[test]
fn truncate_lists_only_watched_tables() {
    let mut asm = Assembler::new(watch(), Lsn(0), Attributor::default());
    let other = Message::Relation {
        xid: None,
        oid: 11,
        namespace: "public".into(),
        name: "other".into(),
        replica_identity: ReplicaIdentity::Default,
        columns: vec![],
    };
    let (out, _) = run(
        &mut asm,
        vec![
            (0, begin(7, 0x100)),
            (0, rel(ReplicaIdentity::Default, false)),
            (0, other),
            (
                0x50,
                Message::Truncate {
                    xid: None,
                    relids: vec![11, 10, 10],
                    flags: 1,
                    cascade: true,
                    restart_identity: false,
                },
            ),
            (0x100, commit(0x100, 0x130)),
        ],
    );
    assert!(
        out.starts_with("{\"type\":\"truncate\",\"tables\":[\"public.cache\"],\"relations\":[{\"table\":\"public.cache\",\"schema\":\"public\",\"name\":\"cache\"}],\"xid\":7,\"lsn\":\"0/50\""),
        "{out}"
    );
    assert!(out.contains("\"cascade\":true,\"restart_identity\":false"));
    assert!(out.contains("\"truncates\":1"));
}

fn watch_oid() -> WatchList {
    let mut w = WatchList::new();
    w.add_table(10, "public", "cache", Some(vec!["cache_key".into()]));
    w.add_partition(12, 10, None);
    w
}

fn rel_named(oid: u32, schema: &str, name: &str) -> Message {
    match rel(ReplicaIdentity::Default, false) {
        Message::Relation { xid, replica_identity, columns, .. } => {
            Message::Relation { xid, oid, namespace: schema.into(), name: name.into(), replica_identity, columns }
        }
        _ => unreachable!(),
    }
}

fn del_from(relid: u32, key: &str) -> Message {
    match del(OldKind::Key, key, None) {
        Message::Delete { xid, old, .. } => Message::Delete { xid, relid, old },
        _ => unreachable!(),
    }
}

/// The table owner renames the watched table and gives its name to another table whose triggers
/// open a bracket: evidence is matched by the table's OID, so the decoy's open covers nothing.
#[test]
fn evidence_from_another_table_with_the_watched_name_covers_nothing() {
    let (v, attributor) = verifier();
    let mut asm = Assembler::new(watch_oid(), Lsn(0), attributor);
    let decoy = crate::attribution::trigger::tests::open_payload(SYS, 7, 99, "decoy", "cache", 5)
        .replace("\"r\":10", "\"r\":13");
    let own = crate::attribution::trigger::tests::open_payload(SYS, 7, 98, "real", "cache_x", 6)
        .replace("\"id\":1,", "\"id\":2,");
    let (out, _) = run(
        &mut asm,
        vec![
            (0, begin(7, 0x300)),
            (0, rel_named(10, "public", "cache_x")),
            (0, rel_named(13, "public", "cache")),
            (0x10, msg(0x10, signed(&v, &decoy))),
            (0x20, del_from(10, "a")),
            (0x30, msg(0x30, signed(&v, &own))),
            (0x40, del_from(10, "b")),
            (0x300, commit(0x300, 0x330)),
        ],
    );
    let l = lines(&out);
    let rows: Vec<_> = l.iter().filter(|r| r["type"] == "delete").collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert_eq!(rows[0]["session"], serde_json::Value::Null, "never the decoy: {out}");
    assert_eq!(rows[0]["trigger_evidence"], "missing");
    assert_eq!(rows[1]["session"]["application_name"], "real", "{out}");
}

#[test]
fn watched_by_oid_through_renames_with_a_record_for_each_new_name() {
    let mut asm = Assembler::new(watch_oid(), Lsn(0), Attributor::default());
    let (out, _) = run(
        &mut asm,
        vec![
            // BEGIN; ALTER TABLE cache RENAME TO cache_x; DELETE FROM cache_x …; rename back; COMMIT
            (0, begin(7, 0x100)),
            (0x40, rel_named(10, "public", "cache_x")),
            (0x40, del_from(10, "a")),
            (0x100, commit(0x100, 0x130)),
            // A decoy given the watched name is not the watched table.
            (0, begin(8, 0x200)),
            (0x140, rel_named(11, "public", "cache")),
            (0x140, del_from(11, "decoy")),
            (0x200, commit(0x200, 0x230)),
            // The next change shows the original name again.
            (0, begin(9, 0x300)),
            (0x240, rel_named(10, "public", "cache")),
            (0x240, del_from(10, "b")),
            (0x300, commit(0x300, 0x330)),
        ],
    );
    let l = lines(&out);
    let kinds: Vec<&str> = l.iter().map(|r| r["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["relation_renamed", "delete", "commit", "relation_renamed", "delete", "commit"], "{out}");
    assert_eq!(l[0]["oid"], 10);
    assert_eq!((l[0]["schema"].as_str(), l[0]["name"].as_str()), (Some("public"), Some("cache_x")));
    assert_eq!((l[0]["previous_schema"].as_str(), l[0]["previous_name"].as_str()), (Some("public"), Some("cache")));
    assert_eq!(l[0]["xid"], 7);
    assert_eq!(l[0]["commit_lsn"], "0/100");
    assert_eq!((l[1]["table"].as_str(), l[1]["name"].as_str()), (Some("public.cache_x"), Some("cache_x")));
    assert_eq!(l[2]["deletes"], 1);
    assert_eq!(l[3]["previous_name"], "cache_x");
    assert_eq!(l[4]["key"]["cache_key"], "b");
}

#[test]
fn partitions_are_logged_as_their_watched_table_naming_the_partition() {
    let mut asm = Assembler::new(watch_oid(), Lsn(0), Attributor::default());
    let (out, _) = run(
        &mut asm,
        vec![
            (0, begin(7, 0x100)),
            (0x40, rel_named(12, "part", "cache_p1")),
            (0x40, del_from(12, "a")),
            (
                0x50,
                Message::Truncate { xid: None, relids: vec![12], flags: 0, cascade: false, restart_identity: false },
            ),
            (0x100, commit(0x100, 0x130)),
        ],
    );
    let l = lines(&out);
    assert_eq!(l.len(), 3, "{out}");
    assert_eq!(l[0]["table"], "public.cache");
    assert_eq!((l[0]["schema"].as_str(), l[0]["name"].as_str()), (Some("public"), Some("cache")));
    assert_eq!(l[0]["partition"], serde_json::json!({"schema": "part", "name": "cache_p1"}));
    assert_eq!(l[1]["tables"], serde_json::json!(["public.cache"]));
    assert_eq!(
        l[1]["relations"],
        serde_json::json!([{"table": "public.cache", "schema": "public", "name": "cache", "partition": {"schema": "part", "name": "cache_p1"}}])
    );
    // Unknown relations are for the capture to look up; known ones are not.
    assert_eq!(asm.needs_lookup(&rel_named(13, "part", "cache_p2")), Some(13));
    assert_eq!(asm.needs_lookup(&rel_named(12, "part", "cache_p1")), None);
    assert!(asm.add_partition(13, 10, None));
    assert_eq!(asm.needs_lookup(&rel_named(13, "part", "cache_p2")), None);
}

#[test]
fn an_abandoned_transaction_reports_its_rename_again_when_sent_again() {
    let mut asm = Assembler::new(watch_oid(), Lsn(0), Attributor::default());
    let mut out = BytesMut::new();
    for (lsn, m) in [(0, begin(7, 0x100)), (0x40, rel_named(10, "s2", "cache")), (0x40, del_from(10, "a"))] {
        asm.handle(Lsn(lsn), m, &mut out).unwrap();
    }
    asm.abandon_transaction();
    let (again, _) = run(
        &mut asm,
        vec![
            (0, begin(7, 0x100)),
            (0x40, rel_named(10, "s2", "cache")),
            (0x40, del_from(10, "a")),
            (0x100, commit(0x100, 0x130)),
        ],
    );
    assert!(again.starts_with("{\"type\":\"relation_renamed\""), "{again}");
}

#[test]
fn an_aborted_attempt_teaches_the_relation_cache_nothing() {
    let mut asm = Assembler::new(watch_oid(), Lsn(0), Attributor::default());
    let (out, _) = run(
        &mut asm,
        vec![
            (0, begin(6, 0x80)),
            (0x10, rel_named(10, "public", "cache")),
            (0x10, del_from(10, "x")),
            (0x80, commit(0x80, 0x90)),
            // Replay of a rolled-back streamed transaction that renamed the table first.
            (0, Message::Begin { final_lsn: ABORT_SENTINEL_LSN, commit_time: 0, xid: 7 }),
            (0x40, rel_named(10, "public", "cache_x")),
            (0x40, del_from(10, "a")),
            (
                u64::MAX,
                Message::Commit {
                    flags: 0,
                    commit_lsn: ABORT_SENTINEL_LSN,
                    end_lsn: ABORT_SENTINEL_LSN,
                    commit_time: 0,
                },
            ),
            // The server does not describe the table again: the name before the attempt holds.
            (0, begin(8, 0x200)),
            (0x140, del_from(10, "b")),
            (0x200, commit(0x200, 0x230)),
        ],
    );
    let l = lines(&out);
    assert!(l.iter().all(|r| r["type"] != "relation_renamed"), "{out}");
    assert_eq!(l[2]["table"], "public.cache_x", "the attempt's own rows show its names");
    assert_eq!(l.last().unwrap()["type"], "commit");
    assert_eq!(l[l.len() - 2]["table"], "public.cache", "{out}");
}
