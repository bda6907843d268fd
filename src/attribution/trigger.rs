//! Exact attribution: statement triggers that bracket each statement's rows with evidence in the WAL.
//!
//! Each watched table gets four statement-level triggers (see `proto-notes/attribution.md`):
//! * `BEFORE DELETE` / `BEFORE TRUNCATE` run [`OPEN_FN`]: it emits a transactional logical decoding
//!   message `<hmac> <json>` that **opens** the statement's bracket. The signed JSON names the session
//!   and the statement (pid, backend start, user, role, application, client, `current_query()`, times,
//!   nesting depth, table, operation), the cluster (system identifier) and the transaction (full xid with
//!   epoch), plus `armed`: whether the closing trigger will fire for this statement.
//! * `AFTER DELETE` / `AFTER TRUNCATE` run [`CLOSE_FN`]: a transactional `close <json>` message (table,
//!   operation, depth, statement start) that **closes** the bracket.
//!
//! A row is attributed by the trigger only when it lies inside a valid bracket of its own table: after
//! a verified open (right key, cluster, transaction, not a duplicate) that said its close is armed, with
//! no error report of the trigger in between and before the close. Every other row of a table the
//! trigger watches is flagged `trigger_evidence: "missing"` with a reason. The close is not signed: a
//! forged one can only end a bracket early, which flags rows and never attributes them.
//!
//! Why an HMAC: `pg_logical_emit_message` is executable by every role, so anyone can emit a message with
//! our prefix. The key lives in `walwitness.hmac_key`, readable only by the owner of the schema (the role
//! that installed it); the functions are SECURITY DEFINER and name every function, operator, type and
//! table with its schema (`pg_catalog.…`, `OPERATOR(pg_catalog.=)`), so a table owner or any other user
//! can neither read the key nor make the functions run their code whatever their `search_path`. The key
//! is stored as the two HMAC pads so the server needs only the core `sha256()`.
//!
//! The payload (version 3) is a JSON array of text values in a fixed order, timestamps as the server's
//! 8-byte microsecond count in hex; the capture still reads version 2's JSON objects (a WAL written before
//! an upgrade). Why this shape: it is what costs the server least per statement (`proto-notes/attribution.md`).
//!
//! The open never makes the user's statement fail: its work runs in an exception block without writing
//! anything (so the block's subtransaction gets no xid and costs little), and an error there is reported
//! by a **non-transactional** `error …` message, which needs no transaction id or lock and reaches the
//! capture even when the transaction's own messages cannot be written. The signed messages themselves
//! are emitted outside the block, in the statement's own transaction.
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::Sha256;
use tokio_postgres::Client;

use super::session::Session;
use crate::error::{Exit, Failure};
use crate::pg::leftover::Leftover;
use crate::pg::names::{quote_ident, quote_literal};

/// The logical decoding message prefix the triggers use.
pub const PREFIX: &str = "walwitness";
pub const SCHEMA: &str = "walwitness";
/// The opening triggers (the names version 1 used for its single trigger).
pub const DELETE_TRIGGER: &str = "walwitness_attribution_delete";
pub const TRUNCATE_TRIGGER: &str = "walwitness_attribution_truncate";
/// The closing triggers.
pub const DELETE_END_TRIGGER: &str = "walwitness_attribution_delete_end";
pub const TRUNCATE_END_TRIGGER: &str = "walwitness_attribution_truncate_end";
pub const ALL_TRIGGERS: [&str; 4] = [DELETE_TRIGGER, TRUNCATE_TRIGGER, DELETE_END_TRIGGER, TRUNCATE_END_TRIGGER];
pub const OPEN_FN: &str = "attribution_open";
pub const CLOSE_FN: &str = "attribution_close";
/// The version 1 function, dropped when installing.
const OLD_FN: &str = "attribution_trigger";
/// Longest statement text carried in a message.
pub const QUERY_LIMIT: usize = 8192;
/// How many backend status entries the opening trigger scans for its own before asking
/// `pg_stat_get_activity()` (entries are numbered 1.. in PostgreSQL 14 and 15, by backend id from 16 on).
const BACKEND_SCAN: u32 = 64;
/// Version of the signed payload.
pub const PAYLOAD_VERSION: u32 = 3;

/// Verifies messages with the installed key, for one cluster.
pub struct Verifier {
    /// The HMAC key, recovered from the stored pads (`key XOR 0x36…`); zero-padded to the block size,
    /// which HMAC does anyway.
    key: Vec<u8>,
    /// The stored pads are the two pads of one key; when not, nothing verifies.
    key_whole: bool,
    /// The cluster's system identifier: a message signed for another cluster is rejected.
    pub system_identifier: String,
    /// A recent full transaction id (with epoch) of this cluster, to widen pgoutput's 32-bit xids.
    pub xid_reference: u64,
}

/// The signed payload of an opening message.
#[derive(Debug, Clone, Deserialize)]
pub struct Open {
    pub v: u32,
    pub k: String,
    pub sys: String,
    /// Full transaction id (epoch << 32 | xid) of the top-level transaction.
    pub xid: u64,
    /// Per-statement identifier: the server clock when the statement's open fired, in microseconds.
    pub id: i64,
    pub pid: i32,
    pub bs: Option<i64>,
    pub user: Option<String>,
    pub role: Option<String>,
    pub app: Option<String>,
    pub ca: Option<String>,
    pub cp: Option<i32>,
    pub q: Option<String>,
    #[serde(default)]
    pub qt: bool,
    pub xs: Option<i64>,
    pub ss: Option<i64>,
    pub d: i32,
    pub op: String,
    /// The table's OID (`TG_RELID`): evidence is matched to rows by OID, never by name.
    pub r: u32,
    pub s: String,
    pub t: String,
    /// The closing trigger is present, ours, enabled for this session and will fire for the statement.
    pub armed: bool,
}

/// An (unsigned) closing message.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Close {
    pub d: i32,
    pub ss: Option<i64>,
    pub op: String,
    /// The table's OID (`TG_RELID`): evidence is matched to rows by OID, never by name.
    pub r: u32,
    pub s: String,
    pub t: String,
}

/// A non-transactional error report of the trigger (its work failed and the error was swallowed).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ErrorReport {
    /// Full xid when the transaction had one when the error happened.
    pub xid: Option<u64>,
    pub pid: i32,
    /// `BEFORE` or `AFTER`.
    pub w: String,
    pub op: String,
    /// The table's OID (`TG_RELID`): evidence is matched to rows by OID, never by name.
    pub r: u32,
    pub s: String,
    pub t: String,
    /// SQLSTATE and message.
    pub e: String,
    #[serde(default)]
    pub sys: Option<String>,
    /// Whether the report was signed with the key (it is not when reading the key is what failed).
    #[serde(skip)]
    pub signed: bool,
}

/// What a message with our prefix turned out to be.
#[derive(Debug)]
pub enum Evidence {
    Open(Box<Open>),
    Close(Close),
    Error(ErrorReport),
}

fn micros_to_rfc3339(us: Option<i64>) -> Option<String> {
    us.map(crate::sink::record::format_unix_micros)
}

impl Open {
    pub fn session(&self) -> Session {
        let current_user = match self.role.as_deref() {
            None | Some("none") | Some("") => None,
            Some(r) if Some(r) == self.user.as_deref() => None,
            Some(r) => Some(r.to_owned()),
        };
        Session {
            attributed_by: "trigger".into(),
            pid: self.pid,
            backend_start: micros_to_rfc3339(self.bs),
            user: self.user.clone(),
            current_user,
            application_name: self.app.clone(),
            client_addr: self.ca.clone(),
            client_port: self.cp,
            query: self.q.clone(),
            query_truncated: self.qt,
            xact_start: micros_to_rfc3339(self.xs),
            statement_start: micros_to_rfc3339(self.ss),
            trigger_depth: Some(self.d),
            sampled_at: None,
            details_hidden: false,
            conflict: None,
        }
    }

    /// The table's name as the trigger saw it (lossless form), for messages.
    pub fn table(&self) -> String {
        qualified(&self.s, &self.t)
    }

    /// Whether `c` is the close of this statement (same table, operation, depth and client statement).
    pub fn closed_by(&self, c: &Close) -> bool {
        c.r == self.r && c.op == self.op && c.d == self.d && c.ss == self.ss
    }
}

pub fn qualified(schema: &str, table: &str) -> String {
    use crate::protocol::buf::lossless_name;
    format!("{}.{}", lossless_name(schema.as_bytes()), lossless_name(table.as_bytes()))
}

impl Close {
    pub fn table(&self) -> String {
        qualified(&self.s, &self.t)
    }
}

impl ErrorReport {
    pub fn table(&self) -> String {
        qualified(&self.s, &self.t)
    }
}

/// Whether `ipad` and `opad` are the two pads of one key (both one block long).
pub fn pads_agree(ipad: &[u8], opad: &[u8]) -> bool {
    ipad.len() == 64 && opad.len() == 64 && ipad.iter().zip(opad).all(|(i, o)| i ^ 0x36 == o ^ 0x5c)
}

/// HMAC-SHA256 pads for a key (RFC 2104): the key is at most one block, so no pre-hashing.
pub fn pads(key: &[u8; 32]) -> (Vec<u8>, Vec<u8>) {
    let mut ipad = vec![0x36u8; 64];
    let mut opad = vec![0x5cu8; 64];
    for (i, k) in key.iter().enumerate() {
        ipad[i] ^= k;
        opad[i] ^= k;
    }
    (ipad, opad)
}

/// Widens a 32-bit xid to the full xid nearest to `reference` (within 2^31 either way), as PostgreSQL
/// does for xids of the recent past and near future.
pub fn widen_xid(xid: u32, reference: u64) -> u64 {
    let candidate = (reference & !0xFFFF_FFFF) | u64::from(xid);
    if candidate > reference.saturating_add(1 << 31) && candidate >= (1 << 32) {
        candidate - (1 << 32)
    } else if candidate.saturating_add(1 << 31) < reference {
        candidate + (1 << 32)
    } else {
        candidate
    }
}

impl Verifier {
    /// From the pads the server stores (see [`pads`]). Pads that do not come from one key make every
    /// signature fail to verify (`load_verifier` refuses them first, with the fix).
    pub fn from_pads(ipad: Vec<u8>, opad: Vec<u8>) -> Verifier {
        let key = ipad.iter().map(|b| b ^ 0x36).collect();
        Verifier { key, key_whole: pads_agree(&ipad, &opad), system_identifier: String::new(), xid_reference: 0 }
    }

    pub fn for_cluster(mut self, system_identifier: &str, xid_reference: u64) -> Verifier {
        self.system_identifier = system_identifier.to_owned();
        self.xid_reference = xid_reference;
        self
    }

    fn hmac(&self) -> Hmac<Sha256> {
        // Any key length is accepted by HMAC.
        <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key).expect("HMAC takes keys of any length")
    }

    pub fn mac(&self, payload: &[u8]) -> [u8; 32] {
        let mut m = self.hmac();
        m.update(payload);
        m.finalize().into_bytes().into()
    }

    fn check_mac(&self, mac_hex: &[u8], payload: &[u8]) -> Result<(), String> {
        let given = hex::decode(mac_hex).map_err(|_| "signature is not hex".to_owned())?;
        if !self.key_whole {
            return Err("signature does not match the installed key (its two pads are not of one key)".into());
        }
        let mut m = self.hmac();
        m.update(payload);
        // Constant-time comparison.
        m.verify_slice(&given).map_err(|_| "signature does not match the installed key".to_owned())
    }

    /// Classifies and checks a message with our prefix. Opens must be signed for this cluster; the
    /// transaction check is the caller's (it knows the transaction). Errors say why it was rejected.
    pub fn verify(&self, content: &[u8]) -> Result<Evidence, String> {
        let (head, rest) = split_word(content);
        match head {
            b"close" => {
                let c = if rest.first() == Some(&b'[') {
                    close_v3(rest)
                } else {
                    serde_json::from_slice(rest).map_err(|e| e.to_string())
                };
                Ok(Evidence::Close(c.map_err(|e| format!("close message not understood: {e}"))?))
            }
            b"error" => {
                let (mac, payload) = split_word(rest);
                let signed = mac != b"-" && self.check_mac(mac, payload).is_ok();
                // In a SQL_ASCII database the error text may hold bytes that are not UTF-8.
                let text = String::from_utf8_lossy(payload);
                let r = if text.starts_with('[') {
                    error_v3(&text)
                } else {
                    serde_json::from_str(&text).map_err(|e| e.to_string())
                };
                let mut r = r.map_err(|e| format!("error report not understood: {e}"))?;
                r.signed = signed;
                if signed
                    && r.sys
                        .as_deref()
                        .is_some_and(|s| !self.system_identifier.is_empty() && s != self.system_identifier)
                {
                    return Err(format!("error report signed for another cluster ({})", r.sys.unwrap_or_default()));
                }
                Ok(Evidence::Error(r))
            }
            mac => {
                if rest.is_empty() && !content.contains(&b' ') {
                    return Err("no signature".into());
                }
                self.check_mac(mac, rest)?;
                // The signature is good, so the message is the trigger's. In a SQL_ASCII database its text
                // (the statement, the application name) may hold bytes that are not UTF-8, which JSON cannot
                // carry: those become U+FFFD rather than turning an authentic message into a rejected one.
                let text = String::from_utf8_lossy(rest);
                if text.starts_with('[') {
                    let o = open_v3(&text).map_err(|e| format!("signed payload is not understood: {e}"))?;
                    return self.same_cluster(o);
                }
                let v: serde_json::Value =
                    serde_json::from_str(&text).map_err(|e| format!("signed payload is not understood: {e}"))?;
                match v.get("v").and_then(|v| v.as_u64()) {
                    Some(2) => {}
                    Some(1) => {
                        return Err(
                            "a version 1 trigger message (no statement bracket): run walwitness attribution install"
                                .into(),
                        )
                    }
                    other => return Err(format!("unknown payload version {other:?}")),
                }
                let o: Open =
                    serde_json::from_value(v).map_err(|e| format!("signed payload is not understood: {e}"))?;
                if o.k != "open" {
                    return Err(format!("signed message of unknown kind {:?}", o.k));
                }
                self.same_cluster(o)
            }
        }
    }

    fn same_cluster(&self, o: Open) -> Result<Evidence, String> {
        if !self.system_identifier.is_empty() && o.sys != self.system_identifier {
            return Err(format!(
                "signed for the cluster with system identifier {}, not this one ({})",
                o.sys, self.system_identifier
            ));
        }
        Ok(Evidence::Open(Box::new(o)))
    }
}

/// Microseconds since 2000-01-01 UTC (PostgreSQL's epoch) to microseconds since 1970.
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// A timestamp as `ts_hex` writes it: null, or 16 hex digits of the server's 8-byte integer.
fn ts_from_hex(v: Option<&str>, field: &str) -> Result<Option<i64>, String> {
    let Some(h) = v else { return Ok(None) };
    let n = (h.len() == 16)
        .then(|| u64::from_str_radix(h, 16).ok())
        .flatten()
        .ok_or_else(|| format!("{field} is not a timestamp: {h:?}"))? as i64;
    // -infinity and infinity have no instant; no session or statement has them.
    if n == i64::MIN || n == i64::MAX {
        return Ok(None);
    }
    n.checked_add(PG_EPOCH_UNIX_MICROS).map(Some).ok_or_else(|| format!("{field} is out of range: {h:?}"))
}

/// The version 3 payloads are JSON arrays of text (or null) in a fixed order; see `open_function_sql`.
fn text_array(json: &[u8], want: usize, what: &str) -> Result<Vec<Option<String>>, String> {
    let a: Vec<Option<String>> = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    if a.len() != want {
        return Err(format!("{what} has {} values, not {want}", a.len()));
    }
    Ok(a)
}

fn number<T: std::str::FromStr>(v: &Option<String>, field: &str) -> Result<T, String> {
    v.as_deref().and_then(|s| s.parse().ok()).ok_or_else(|| format!("{field} is not a number: {v:?}"))
}

fn number_or_null<T: std::str::FromStr>(v: &Option<String>, field: &str) -> Result<Option<T>, String> {
    v.as_ref().map(|_| number(v, field)).transpose()
}

fn required(v: &mut Option<String>, field: &str) -> Result<String, String> {
    v.take().ok_or_else(|| format!("{field} is null"))
}

/// `close [depth, statement start, operation, table OID, schema, table]`.
fn close_v3(json: &[u8]) -> Result<Close, String> {
    let mut a = text_array(json, 6, "close message")?;
    Ok(Close {
        d: number(&a[0], "depth")?,
        ss: ts_from_hex(a[1].as_deref(), "statement start")?,
        op: required(&mut a[2], "operation")?,
        r: number(&a[3], "table OID")?,
        s: required(&mut a[4], "schema")?,
        t: required(&mut a[5], "table")?,
    })
}

/// `error <signature or -> [version, system identifier, full xid, pid, trigger, operation, table OID,
/// schema, table, error]`.
fn error_v3(text: &str) -> Result<ErrorReport, String> {
    let mut a = text_array(text.as_bytes(), 10, "error report")?;
    if a[0].as_deref() != Some("3") {
        return Err(format!("unknown payload version {:?}", a[0]));
    }
    Ok(ErrorReport {
        sys: a[1].take(),
        xid: number_or_null(&a[2], "xid")?,
        pid: number(&a[3], "pid")?,
        w: required(&mut a[4], "trigger")?,
        op: required(&mut a[5], "operation")?,
        r: number(&a[6], "table OID")?,
        s: required(&mut a[7], "schema")?,
        t: required(&mut a[8], "table")?,
        e: required(&mut a[9], "error")?,
        signed: false,
    })
}

/// The signed version 3 open (its order is `open_function_sql`'s).
fn open_v3(text: &str) -> Result<Open, String> {
    let mut a = text_array(text.as_bytes(), 22, "open message")?;
    if a[0].as_deref() != Some("3") {
        return Err(format!("unknown payload version {:?}", a[0]));
    }
    let qt = match a[21].as_deref() {
        Some("true") => true,
        Some("false") | None => false,
        Some(other) => return Err(format!("statement cut flag is not a boolean: {other:?}")),
    };
    // Whether the closing trigger fires for this statement, as PostgreSQL decides it for the session's
    // session_replication_role (`tgenabled`: O origin and local, R replica, A always, D disabled).
    let replica = a[20].as_deref() == Some("replica");
    let armed = match a[19].as_deref() {
        Some("A") => true,
        Some("O") => !replica,
        Some("R") => replica,
        _ => false,
    };
    Ok(Open {
        v: 3,
        k: "open".into(),
        sys: required(&mut a[1], "system identifier")?,
        xid: number(&a[2], "xid")?,
        id: ts_from_hex(a[3].as_deref(), "statement id")?.ok_or("statement id is null")?,
        pid: number(&a[4], "pid")?,
        bs: ts_from_hex(a[5].as_deref(), "backend start")?,
        user: a[6].take(),
        role: a[7].take(),
        app: a[8].take(),
        ca: a[9].take(),
        cp: number_or_null(&a[10], "client port")?,
        q: a[11].take(),
        qt,
        xs: ts_from_hex(a[12].as_deref(), "transaction start")?,
        ss: ts_from_hex(a[13].as_deref(), "statement start")?,
        d: number(&a[14], "depth")?,
        op: required(&mut a[15], "operation")?,
        r: number(&a[16], "table OID")?,
        s: required(&mut a[17], "schema")?,
        t: required(&mut a[18], "table")?,
        armed,
    })
}

fn split_word(b: &[u8]) -> (&[u8], &[u8]) {
    match b.iter().position(|&c| c == b' ') {
        Some(i) => (&b[..i], &b[i + 1..]),
        None => (b, &[]),
    }
}

fn random_key() -> std::io::Result<[u8; 32]> {
    use std::io::Read;
    let mut k = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut k)?;
    Ok(k)
}

/// `pg_catalog.encode(pg_catalog.timestamptz_send(e), 'hex')`: the timestamp's 8-byte integer (microseconds
/// since 2000-01-01 UTC) in hex. Exact and independent of every setting the session may change
/// (`DateStyle`, `TimeZone`, `extra_float_digits`), and several times cheaper than `extract(epoch …)`,
/// which computes in numeric.
fn ts_hex(e: &str) -> String {
    format!("pg_catalog.encode(pg_catalog.timestamptz_send({e}), 'hex')")
}

/// HMAC of `var` (text) with the key in `ki`/`ko`, as lower-case hex.
fn hmac_sql(var: &str) -> String {
    format!(
        "pg_catalog.encode(pg_catalog.sha256(ko OPERATOR(pg_catalog.||) pg_catalog.sha256(ki OPERATOR(pg_catalog.||) \
         pg_catalog.convert_to({var}, 'UTF8'))), 'hex')"
    )
}

/// The closing function: one unsigned message naming the statement it ends. It reads no key.
///
/// Neither function sets `search_path` (a function-level setting is saved and restored on every call,
/// about a tenth of the trigger's cost): every function, operator, type and table is qualified, with
/// operators written `OPERATOR(pg_catalog.…)`, and `pg_temp` is never searched for functions or
/// operators. Nothing the calling session defines can run with the owner's rights
/// (`attribution::the_trigger_function_cannot_be_hijacked`).
fn close_function_sql() -> String {
    format!(
        r#"CREATE OR REPLACE FUNCTION {SCHEMA}.{CLOSE_FN}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $walwitness$
BEGIN
  -- Unsigned on purpose (no key read): a forged close can only end a bracket early, which flags rows.
  -- [depth, statement start, operation, table OID, schema, table]
  PERFORM pg_catalog.pg_logical_emit_message(true, '{PREFIX}'::pg_catalog.text, 'close ' OPERATOR(pg_catalog.||)
    pg_catalog.array_to_json(ARRAY[(pg_catalog.pg_trigger_depth() OPERATOR(pg_catalog.-) 1)::pg_catalog.text,
      {ss}, TG_OP, TG_RELID::pg_catalog.text, TG_TABLE_SCHEMA::pg_catalog.text, TG_TABLE_NAME::pg_catalog.text])::pg_catalog.text);
  RETURN NULL;
END
$walwitness$"#,
        ss = ts_hex("pg_catalog.statement_timestamp()"),
    )
}

/// The opening function. `close_oid` is the closing function's OID, which the `armed` check requires of
/// the closing trigger.
///
/// Its cost is what attribution costs the server, so it is built to do little (see
/// `scripts/bench-trigger.sh` and `proto-notes/attribution.md`): one query reads the key, the closing
/// trigger's state and every value of the payload at once; the payload is one text array turned into
/// JSON (each value escaped by the same code, no per-field `to_json`), and the check the capture can do
/// itself (the closing trigger's enabled state against `session_replication_role`) is left to it. The
/// signature is the same HMAC-SHA256 as before.
fn open_function_sql(close_oid: u32) -> String {
    format!(
        r#"CREATE OR REPLACE FUNCTION {SCHEMA}.{OPEN_FN}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $walwitness$
DECLARE
  ki pg_catalog.bytea;
  ko pg_catalog.bytea;
  sys pg_catalog.text;
  bs pg_catalog.timestamptz;
  xt pg_catalog.text;
  p pg_catalog.text;
  e pg_catalog.text;
  seen pg_catalog.bool := false;
BEGIN
  BEGIN
    -- Nothing in this block writes, so its subtransaction gets no xid (no lock, no WAL of its own);
    -- the top-level transaction's xid is assigned here, where a failure is caught.
    xt := pg_catalog.pg_current_xact_id()::pg_catalog.text;
    -- The backend's start time, which with the pid tells sessions apart. pg_stat_get_activity() builds
    -- the whole activity row; the per-backend accessors are cheap, so find this backend's entry among the
    -- first ones and fall back to the row past them.
    FOR i IN 1..{BACKEND_SCAN} LOOP
      IF pg_catalog.pg_stat_get_backend_pid(i) OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid() THEN
        bs := pg_catalog.pg_stat_get_backend_start(i);
        seen := true;
        EXIT;
      END IF;
    END LOOP;
    IF NOT seen THEN
      SELECT a.backend_start INTO bs FROM pg_catalog.pg_stat_get_activity(pg_catalog.pg_backend_pid()) a;
    END IF;
    -- The payload, version {PAYLOAD_VERSION}: ["3", system identifier, full xid, statement id (clock), pid,
    -- backend start, session user, role, application, client address, client port, statement (cut at the
    -- limit), transaction start, statement start, depth, operation, table OID, schema, table, the closing
    -- trigger's tgenabled (null: absent, not ours, not statement level AFTER <op>, or with a WHEN),
    -- session_replication_role, whether the statement was cut]; timestamps as hex (see ts_hex). The cut
    -- is decided here, in the database's own characters: in SQL_ASCII `left` counts bytes, and the
    -- capture cannot tell a cut multi-byte statement from a whole one.
    SELECT pg_catalog.array_to_json(ARRAY['{PAYLOAD_VERSION}', h.system_identifier, xt, {id}, pg_catalog.pg_backend_pid()::pg_catalog.text,
        {bs}, SESSION_USER::pg_catalog.text, pg_catalog.current_setting('role'), pg_catalog.current_setting('application_name'),
        pg_catalog.host(pg_catalog.inet_client_addr()), pg_catalog.inet_client_port()::pg_catalog.text,
        pg_catalog.left(pg_catalog.current_query(), {QUERY_LIMIT}), {xs}, {ss},
        (pg_catalog.pg_trigger_depth() OPERATOR(pg_catalog.-) 1)::pg_catalog.text, TG_OP, TG_RELID::pg_catalog.text,
        TG_TABLE_SCHEMA::pg_catalog.text, TG_TABLE_NAME::pg_catalog.text, t.tgenabled::pg_catalog.text,
        pg_catalog.current_setting('session_replication_role'),
        (pg_catalog.length(pg_catalog.current_query()) OPERATOR(pg_catalog.>) {QUERY_LIMIT})::pg_catalog.text])::pg_catalog.text,
      h.ipad, h.opad, h.system_identifier
      INTO STRICT p, ki, ko, sys
      FROM {SCHEMA}.hmac_key h LEFT JOIN pg_catalog.pg_trigger t
        ON t.tgrelid OPERATOR(pg_catalog.=) TG_RELID
       AND t.tgname OPERATOR(pg_catalog.=) (CASE WHEN TG_OP OPERATOR(pg_catalog.=) 'DELETE' THEN '{DELETE_END_TRIGGER}' ELSE '{TRUNCATE_END_TRIGGER}' END)::pg_catalog.name
       AND t.tgfoid OPERATOR(pg_catalog.=) {close_oid}::pg_catalog.oid AND t.tgqual IS NULL
       AND t.tgtype OPERATOR(pg_catalog.=) (CASE WHEN TG_OP OPERATOR(pg_catalog.=) 'DELETE' THEN 8 ELSE 32 END)::pg_catalog.int2;
    p := {mac_p} OPERATOR(pg_catalog.||) ' ' OPERATOR(pg_catalog.||) p;
  EXCEPTION WHEN OTHERS THEN
    -- Never make the user's statement fail; report the error where the capture sees it even without a
    -- transaction id: a non-transactional message (signed when the key could be read). Only functions,
    -- operators and casts the block above also uses: planning this the first time must find everything
    -- in the session's catalog caches, as the failure may be that no lock can be taken.
    p := NULL;
    -- [version, system identifier, full xid, pid, trigger, operation, table OID, schema, table, error]
    e := pg_catalog.array_to_json(ARRAY['{PAYLOAD_VERSION}', sys, xt, pg_catalog.pg_backend_pid()::pg_catalog.text, 'BEFORE', TG_OP,
      TG_RELID::pg_catalog.text, TG_TABLE_SCHEMA::pg_catalog.text, TG_TABLE_NAME::pg_catalog.text,
      SQLSTATE OPERATOR(pg_catalog.||) ' ' OPERATOR(pg_catalog.||) SQLERRM])::pg_catalog.text;
    e := 'error ' OPERATOR(pg_catalog.||) (CASE WHEN ko IS NULL THEN '-' ELSE {mac_e} END) OPERATOR(pg_catalog.||) ' ' OPERATOR(pg_catalog.||) e;
  END;
  IF p IS NOT NULL THEN
    -- Outside the block: the message belongs to the statement's own (sub)transaction.
    PERFORM pg_catalog.pg_logical_emit_message(true, '{PREFIX}'::pg_catalog.text, p);
  ELSE
    PERFORM pg_catalog.pg_logical_emit_message(false, '{PREFIX}'::pg_catalog.text, e);
  END IF;
  RETURN NULL;
END
$walwitness$"#,
        id = ts_hex("pg_catalog.clock_timestamp()"),
        bs = ts_hex("bs"),
        xs = ts_hex("pg_catalog.transaction_timestamp()"),
        ss = ts_hex("pg_catalog.statement_timestamp()"),
        mac_p = hmac_sql("p"),
        mac_e = hmac_sql("e"),
    )
}

use crate::error::from_sql as q;

/// Installs (idempotently) the schema, key, functions and the four triggers on `tables` (SQL names).
pub async fn install(c: &Client, tables: &[String]) -> Result<(), Failure> {
    let owner: Option<String> = c
        .query_opt("SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = $1", &[&SCHEMA])
        .await
        .map_err(|e| q("cannot read pg_namespace", e))?
        .map(|r| r.get(0));
    let me: String =
        c.query_one("SELECT current_user::text", &[]).await.map_err(|e| q("cannot read current_user", e))?.get(0);
    if let Some(o) = &owner {
        if o.trim_matches('"') != me {
            return Err(Failure::new(
                Exit::Privilege,
                format!("schema {SCHEMA} belongs to {o}, not {me}: install and capture as {o} (the key must stay readable only by its owner)"),
            ));
        }
    }
    let key = random_key().map_err(|e| Failure::new(Exit::Internal, format!("cannot read /dev/urandom: {e}")))?;
    let (ipad, opad) = pads(&key);
    if let Err(e) = c.batch_execute(&format!(
        "BEGIN; CREATE SCHEMA IF NOT EXISTS {SCHEMA}; REVOKE ALL ON SCHEMA {SCHEMA} FROM PUBLIC; \
         CREATE TABLE IF NOT EXISTS {SCHEMA}.hmac_key (id int PRIMARY KEY CHECK (id = 1), ipad bytea NOT NULL, opad bytea NOT NULL, created_at timestamptz NOT NULL DEFAULT now()); \
         ALTER TABLE {SCHEMA}.hmac_key ADD COLUMN IF NOT EXISTS system_identifier text; \
         REVOKE ALL ON {SCHEMA}.hmac_key FROM PUBLIC; COMMIT"
    ))
    .await
    {
        let _ = c.batch_execute("ROLLBACK").await;
        return Err(q(&format!("cannot create schema {SCHEMA}"), e));
    }
    c.execute(
        &format!("INSERT INTO {SCHEMA}.hmac_key (id, ipad, opad) VALUES (1, $1, $2) ON CONFLICT (id) DO NOTHING"),
        &[&ipad, &opad],
    )
    .await
    .map_err(|e| q("cannot store the attribution key", e))?;
    // The cluster the signatures are bound to; kept with the key so the trigger need not read pg_control
    // on every statement, and refreshed by every install (a copied schema then names the right cluster).
    c.batch_execute(&format!(
        "UPDATE {SCHEMA}.hmac_key SET system_identifier = s.id FROM (SELECT system_identifier::text AS id FROM pg_control_system()) s \
         WHERE system_identifier IS DISTINCT FROM s.id"
    ))
    .await
    .map_err(|e| q("cannot store the cluster's system identifier with the attribution key", e))?;
    c.batch_execute(&format!("{}; REVOKE ALL ON FUNCTION {SCHEMA}.{CLOSE_FN}() FROM PUBLIC", close_function_sql()))
        .await
        .map_err(|e| q("cannot create the attribution functions", e))?;
    let close_oid: u32 = c
        .query_one(&format!("SELECT '{SCHEMA}.{CLOSE_FN}()'::regprocedure::oid"), &[])
        .await
        .map_err(|e| q("cannot read the closing function's OID", e))?
        .get(0);
    c.batch_execute(&format!(
        "{}; REVOKE ALL ON FUNCTION {SCHEMA}.{OPEN_FN}() FROM PUBLIC",
        open_function_sql(close_oid)
    ))
    .await
    .map_err(|e| q("cannot create the attribution functions", e))?;
    for t in tables {
        // The closing triggers first: the opening trigger checks that they are there.
        let sql = format!(
            "BEGIN; SET LOCAL lock_timeout = '100ms'; \
             CREATE OR REPLACE TRIGGER {DELETE_END_TRIGGER} AFTER DELETE ON {t} FOR EACH STATEMENT EXECUTE FUNCTION {SCHEMA}.{CLOSE_FN}(); \
             CREATE OR REPLACE TRIGGER {TRUNCATE_END_TRIGGER} AFTER TRUNCATE ON {t} FOR EACH STATEMENT EXECUTE FUNCTION {SCHEMA}.{CLOSE_FN}(); \
             CREATE OR REPLACE TRIGGER {DELETE_TRIGGER} BEFORE DELETE ON {t} FOR EACH STATEMENT EXECUTE FUNCTION {SCHEMA}.{OPEN_FN}(); \
             CREATE OR REPLACE TRIGGER {TRUNCATE_TRIGGER} BEFORE TRUNCATE ON {t} FOR EACH STATEMENT EXECUTE FUNCTION {SCHEMA}.{OPEN_FN}(); \
             COMMIT"
        );
        with_lock_retries(c, &sql, &format!("cannot install the attribution triggers on {t}")).await?;
    }
    // Version 1's function, once no trigger uses it any more.
    let _ = c
        .batch_execute(&format!(
            "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgfoid = to_regprocedure('{SCHEMA}.{OLD_FN}()')) THEN \
             DROP FUNCTION IF EXISTS {SCHEMA}.{OLD_FN}(); END IF; END $$"
        ))
        .await;
    Ok(())
}

/// Runs DDL that needs a table lock without ever queueing behind a long transaction for long: each
/// try waits at most `lock_timeout`, then backs off so the application's own statements go first.
async fn with_lock_retries(c: &Client, sql: &str, context: &str) -> Result<(), Failure> {
    let mut wait = std::time::Duration::from_millis(50);
    for attempt in 1..=60 {
        match c.batch_execute(sql).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                let _ = c.batch_execute("ROLLBACK").await;
                if e.code().map(|c| c.code()) == Some("55P03") && attempt < 60 {
                    tracing::info!("{context}: table busy (attempt {attempt}), retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(std::time::Duration::from_secs(2));
                    continue;
                }
                let mut f = q(context, e);
                if attempt > 1 {
                    f.message.push_str(&format!(" (after {attempt} attempts)"));
                }
                return Err(f);
            }
        }
    }
    Err(Failure::new(Exit::Internal, format!("{context}: the table stayed locked")))
}

/// Reads the key for verifying; the capture's role must be the installer (or a superuser).
pub async fn load_verifier(c: &Client) -> Result<Verifier, Failure> {
    let row = c
        .query_opt(
            &format!(
                "SELECT h.ipad, h.opad, h.system_identifier, (SELECT system_identifier::text FROM pg_control_system()), \
                 pg_snapshot_xmax(pg_current_snapshot())::text FROM {SCHEMA}.hmac_key h WHERE h.id = 1"
            ),
            &[],
        )
        .await
        .map_err(|e| {
            let mut f = q("cannot read the attribution key", e);
            f.message.push_str(&format!(
                " (capture with --attribution trigger as the role that installed it, or run walwitness attribution install first); schema {}",
                quote_literal(SCHEMA)
            ));
            f
        })?
        .ok_or_else(|| Failure::new(Exit::Internal, "the attribution key is missing: run walwitness attribution install"))?;
    let (ipad, opad): (Vec<u8>, Vec<u8>) = (row.get(0), row.get(1));
    if !pads_agree(&ipad, &opad) {
        return Err(Failure::new(
            Exit::Internal,
            format!("the attribution key in {SCHEMA}.hmac_key is damaged (its two pads are not of one key): run walwitness attribution remove, then install"),
        ));
    }
    let stored: Option<String> = row.get(2);
    let actual: String = row.get(3);
    if stored.as_deref() != Some(actual.as_str()) {
        return Err(Failure::new(
            Exit::Internal,
            format!(
                "the attribution key is bound to cluster {} but this is cluster {actual}: run walwitness attribution install",
                stored.as_deref().unwrap_or("(none: installed by an older walwitness)")
            ),
        ));
    }
    let next_xid: String = row.get(4);
    let reference = next_xid.parse::<u64>().map_err(|_| {
        Failure::new(Exit::Internal, format!("the server's next transaction id {next_xid:?} is not a number"))
    })?;
    Ok(Verifier::from_pads(ipad, opad).for_cluster(&actual, reference))
}

pub fn sql_table(schema: &str, table: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(table))
}

// ---- Privileges and removal -------------------------------------------------------------------------
//
// What is installed must be removable by the role that installs it: `CREATE TRIGGER` needs only the
// TRIGGER privilege, but `DROP TRIGGER` needs ownership of the table (or the privileges of its owner
// through membership), so a role with TRIGGER alone would leave its triggers behind at every stop.

/// Why the current role could not remove (or install) the attribution objects on `tables` (SQL names),
/// each with its fix; empty when it can. A superuser always can.
pub async fn removal_problems(c: &Client, tables: &[String]) -> Result<Vec<String>, Failure> {
    let row = c
        .query_one(
            "SELECT current_user::text, r.rolsuper, has_database_privilege(current_database(), 'CREATE'), current_database()::text, \
               (SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = $1), \
               (SELECT nspowner = r.oid FROM pg_namespace WHERE nspname = $1) \
             FROM pg_roles r WHERE r.rolname = current_user",
            &[&SCHEMA],
        )
        .await
        .map_err(|e| q("cannot read the role's privileges", e))?;
    let (me, superuser, can_create, database): (String, bool, bool, String) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    let (schema_owner, schema_mine): (Option<String>, Option<bool>) = (row.get(4), row.get(5));
    if superuser {
        return Ok(Vec::new());
    }
    let mut problems = Vec::new();
    match (schema_owner, schema_mine) {
        (None, _) if !can_create => problems.push(format!(
            "role {me} cannot create schema {SCHEMA} (attribution key and function): it lacks CREATE on database {database} → GRANT CREATE ON DATABASE {} TO {};",
            quote_ident(&database),
            quote_ident(&me)
        )),
        (Some(o), Some(false)) => problems.push(format!(
            "schema {SCHEMA} belongs to {o}, not {me}: install and capture as {o} (the key must stay readable only by its owner)"
        )),
        _ => {}
    }
    for t in tables {
        let row = c
            .query_opt(
                "SELECT n.nspname::text, c.relname::text, c.relowner::regrole::text, pg_has_role(c.relowner, 'USAGE'), \
                   pg_has_role(c.relowner, 'MEMBER'), has_table_privilege(c.oid, 'TRIGGER') \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass($1)",
                &[t],
            )
            .await
            .map_err(|e| q(&format!("cannot read the privileges on {t}"), e))?;
        let Some(row) = row else { continue };
        let (schema, name, owner, usage, member, trigger): (String, String, String, bool, bool, bool) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4), row.get(5));
        let owner_bare = owner.trim_matches('"').replace("\"\"", "\"");
        let table = format!("{schema}.{name}");
        if !usage {
            let how = if member {
                format!("{me} is a member of {owner} but does not inherit its privileges → GRANT {} TO {} WITH INHERIT TRUE; (PostgreSQL 16+) or ALTER ROLE {} INHERIT;", quote_ident(&owner_bare), quote_ident(&me), quote_ident(&me))
            } else {
                format!("GRANT {} TO {};", quote_ident(&owner_bare), quote_ident(&me))
            };
            problems.push(format!(
                "role {me} could install the attribution triggers on {table}{} but not remove them: DROP TRIGGER needs ownership of the table, which belongs to role {owner}, so every stop would leave the triggers behind → {how} (as a superuser, or a role with ADMIN OPTION on {owner}); or capture as role {owner} (it needs REPLICATION); or capture without --attribution trigger",
                if trigger { " (TRIGGER privilege)" } else { "" }
            ));
        } else if !trigger {
            problems.push(format!(
                "role {me} lacks the TRIGGER privilege on {table} (its owner {owner} revoked it from itself) → GRANT TRIGGER ON {} TO {};",
                sql_table(&schema, &name),
                quote_ident(&owner_bare)
            ));
        }
    }
    Ok(problems)
}

/// Refuses, before anything is installed, when the role could not also remove what it installs.
pub async fn check_removable(c: &Client, tables: &[String]) -> Result<(), Failure> {
    let problems = removal_problems(c, tables).await?;
    if problems.is_empty() {
        return Ok(());
    }
    Err(Failure::new(
        Exit::Privilege,
        format!("trigger attribution refused, nothing was installed: {}", problems.join("; and ")),
    ))
}

/// Every trigger on the table `oid` whose function lives in the attribution schema (partition clones,
/// dropped with their parent's, are left out).
const OUR_TRIGGERS: &str = "SELECT t.tgname::text FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid \
    JOIN pg_namespace n ON n.oid = p.pronamespace \
    WHERE t.tgrelid = $1 AND n.nspname = $2 AND t.tgparentid = 0 ORDER BY 1";

fn drop_triggers_sql(names: &[String], table_sql: &str) -> String {
    names
        .iter()
        .map(|n| format!("DROP TRIGGER IF EXISTS {} ON {table_sql};", quote_ident(n)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The triggers on `tables` and the schema, as left when nothing could be asked of the server.
pub fn unremoved(tables: &[String], error: &str) -> Vec<Leftover> {
    let names: Vec<String> = ALL_TRIGGERS.iter().map(|n| (*n).to_owned()).collect();
    let mut left: Vec<Leftover> = tables
        .iter()
        .map(|t| Leftover {
            object: "trigger",
            name: names.join(", "),
            table: Some(t.clone()),
            sql: drop_triggers_sql(&names, t),
            run_as: format!("the owner of {t} or a superuser"),
            error: error.to_owned(),
            privilege: false,
        })
        .collect();
    left.push(schema_leftover(None, error));
    left
}

fn schema_leftover(owner: Option<&str>, error: &str) -> Leftover {
    Leftover {
        object: "schema",
        name: SCHEMA.to_owned(),
        table: None,
        sql: format!("DROP SCHEMA IF EXISTS {SCHEMA} CASCADE;"),
        run_as: match owner {
            Some(o) => format!("the owner of schema {SCHEMA} (role {o}) or a superuser, once no other table uses it"),
            None => format!("the owner of schema {SCHEMA} or a superuser, once no other table uses it"),
        },
        error: error.to_owned(),
        privilege: false,
    }
}

/// Removes the attribution triggers from `tables` (SQL names), trying every table whatever the others
/// did, then drops the schema (key and function) when no other table's trigger uses it — which also
/// takes with it the triggers `DROP TRIGGER` could not remove (a schema's owner may drop what depends
/// on it). Returns what is left, with the statements that remove it.
pub async fn remove_leaving(c: &Client, tables: &[String]) -> Vec<Leftover> {
    // (table OID if known, what is left)
    let mut failed: Vec<(Option<u32>, Leftover)> = Vec::new();
    for t in tables {
        if let Some(f) = remove_from_table(c, t).await {
            failed.push(f);
        }
    }
    remove_schema(c, failed).await
}

/// Drops our triggers from one table; what could not be dropped, with the table's OID when it is known.
async fn remove_from_table(c: &Client, t: &str) -> Option<(Option<u32>, Leftover)> {
    let row = match c
        .query_opt(
            "SELECT c.oid, n.nspname::text, c.relname::text, c.relowner::regrole::text \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass($1)",
            &[&t],
        )
        .await
    {
        Ok(Some(r)) => r,
        // The table is gone, and its triggers with it.
        Ok(None) => return None,
        Err(e) => {
            let mut l = unremoved(&[t.to_owned()], &q("cannot look up the table", e).message);
            l.truncate(1);
            return Some((None, l.remove(0)));
        }
    };
    let (oid, schema, name, owner): (u32, String, String, String) = (row.get(0), row.get(1), row.get(2), row.get(3));
    let mut names: Vec<String> = match c.query(OUR_TRIGGERS, &[&oid, &SCHEMA]).await {
        Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
        Err(_) => ALL_TRIGGERS.iter().map(|n| (*n).to_owned()).collect(),
    };
    names.dedup();
    if names.is_empty() {
        return None;
    }
    let table_sql = sql_table(&schema, &name);
    let drops = drop_triggers_sql(&names, &table_sql);
    let sql = format!("BEGIN; SET LOCAL lock_timeout = '100ms'; {drops} COMMIT");
    let f =
        with_lock_retries(c, &sql, &format!("cannot remove the attribution triggers from {table_sql}")).await.err()?;
    Some((
        Some(oid),
        Leftover {
            object: "trigger",
            name: names.join(", "),
            table: Some(format!("{schema}.{name}")),
            sql: drops,
            run_as: format!("the owner of {schema}.{name} (role {owner}) or a superuser"),
            privilege: f.exit == Exit::Privilege,
            error: f.message,
        },
    ))
}

/// Drops the schema when no trigger of another table uses it; returns what is left (`failed`: what the
/// tables' removals left).
async fn remove_schema(c: &Client, failed: Vec<(Option<u32>, Leftover)>) -> Vec<Leftover> {
    let schema = c.query_opt("SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = $1", &[&SCHEMA]).await;
    let owner: String = match schema {
        Ok(Some(r)) => r.get(0),
        Ok(None) => return failed.into_iter().map(|(_, l)| l).collect(),
        Err(e) => {
            let mut left: Vec<Leftover> = failed.into_iter().map(|(_, l)| l).collect();
            left.push(schema_leftover(None, &q(&format!("cannot read schema {SCHEMA}"), e).message));
            return left;
        }
    };
    let known: Vec<u32> = failed.iter().filter_map(|(o, _)| *o).collect();
    let others: Result<i64, _> = c
        .query_one(
            "SELECT count(*) FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid \
             JOIN pg_namespace n ON n.oid = p.pronamespace \
             WHERE n.nspname = $1 AND t.tgparentid = 0 AND NOT (t.tgrelid = ANY ($2::oid[]))",
            &[&SCHEMA, &known],
        )
        .await
        .map(|r| r.get(0));
    let unknown_table = known.len() < failed.len();
    let mut left: Vec<Leftover> = failed.into_iter().map(|(_, l)| l).collect();
    match others {
        // Some table of another capture or install still uses the schema: it stays, and is not ours to report.
        Ok(n) if n > 0 => {}
        // A failed lookup leaves a trigger of unknown table: dropping the schema could take another's.
        Ok(_) if unknown_table => {}
        Ok(_) => {
            let sql =
                format!("BEGIN; SET LOCAL lock_timeout = '100ms'; DROP SCHEMA IF EXISTS {SCHEMA} CASCADE; COMMIT");
            match with_lock_retries(c, &sql, &format!("cannot drop schema {SCHEMA}")).await {
                Ok(()) => {
                    if !left.is_empty() {
                        tracing::info!(
                            "the attribution triggers DROP TRIGGER could not remove went with schema {SCHEMA}"
                        );
                    }
                    left.clear();
                }
                Err(f) => {
                    let privilege = f.exit == Exit::Privilege;
                    left.push(Leftover { privilege, ..schema_leftover(Some(&owner), &f.message) });
                }
            }
        }
        Err(e) => left.push(schema_leftover(Some(&owner), &q("cannot count the attribution triggers", e).message)),
    }
    left
}

/// Removes the triggers from `tables` and, when no other table uses it, the schema; fails with the
/// statements that remove whatever is left.
pub async fn remove(c: &Client, tables: &[String]) -> Result<(), Failure> {
    let left = remove_leaving(c, tables).await;
    if left.is_empty() {
        return Ok(());
    }
    let text = crate::pg::leftover::explain("could not remove every attribution object", &left);
    let mut f = Failure::new(Exit::CleanupIncomplete, text.trim_end());
    if left.iter().all(|l| l.privilege) {
        f.exit = Exit::Privilege;
    }
    Err(f)
}

#[cfg(test)]
pub mod tests {
    use super::*;

    pub fn signed(v: &Verifier, payload: &str) -> Vec<u8> {
        format!("{} {payload}", hex::encode(v.mac(payload.as_bytes()))).into_bytes()
    }

    /// An open payload as the trigger writes it.
    pub fn open_payload(sys: &str, xid: u64, pid: i32, app: &str, table: &str, ss: i64) -> String {
        format!(
            r#"{{"v":2,"k":"open","sys":"{sys}","xid":{xid},"id":1,"pid":{pid},"bs":1767225600000000,"user":"app","role":"none","app":"{app}","ca":null,"cp":null,"q":"DELETE FROM {table}","qt":false,"xs":1767225600000000,"ss":{ss},"d":0,"op":"DELETE","r":10,"s":"public","t":"{table}","armed":true}}"#
        )
    }

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        // Zero-padding the key to 32 bytes does not change HMAC (the key is padded to 64 anyway).
        let (i, o) = pads(&key);
        let v = Verifier::from_pads(i, o);
        assert_eq!(
            hex::encode(v.mac(b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn pads_of_two_keys_verify_nothing() {
        let (i, o) = pads(&[3u8; 32]);
        let good = Verifier::from_pads(i.clone(), o.clone());
        let (_, o2) = pads(&[4u8; 32]);
        assert!(pads_agree(&i, &o) && !pads_agree(&i, &o2));
        let mixed = Verifier::from_pads(i, o2);
        let p = open_payload("42", 1, 1, "a", "t", 5);
        let msg = format!("{} {p}", hex::encode(good.mac(p.as_bytes())));
        assert!(good.verify(msg.as_bytes()).is_ok());
        assert!(mixed.verify(msg.as_bytes()).unwrap_err().contains("does not match"));
    }

    #[test]
    fn accepts_signed_opens_and_rejects_forged_other_cluster_and_old() {
        let (i, o) = pads(&[7u8; 32]);
        let v = Verifier::from_pads(i, o).for_cluster("42", 1000);
        let p = open_payload("42", 1234, 42, "cron", "t", 5);
        let Evidence::Open(open) = v.verify(&signed(&v, &p)).unwrap() else { panic!("not an open") };
        assert_eq!(open.pid, 42);
        let s = open.session();
        assert_eq!(s.attributed_by, "trigger");
        assert_eq!(s.current_user, None);
        assert_eq!(s.backend_start.as_deref(), Some("2026-01-01T00:00:00.000000Z"));
        let mut forged = signed(&v, &p);
        let n = forged.len();
        forged[n - 3] = b'X';
        assert!(v.verify(&forged).is_err());
        let (i2, o2) = pads(&[8u8; 32]);
        let other = Verifier::from_pads(i2, o2);
        assert!(v.verify(&signed(&other, &p)).unwrap_err().contains("does not match"));
        let elsewhere = open_payload("43", 1234, 42, "cron", "t", 5);
        assert!(v.verify(&signed(&v, &elsewhere)).unwrap_err().contains("cluster"));
        assert!(v.verify(b"nosignature").is_err());
        assert!(v.verify(b"zz {}").is_err());
        assert!(v.verify(&signed(&v, "{\"v\":1,\"pid\":1}")).unwrap_err().contains("version 1"));
        assert!(v.verify(&signed(&v, "{\"v\":3}")).is_err());
    }

    #[test]
    fn closes_and_error_reports() {
        let (i, o) = pads(&[7u8; 32]);
        let v = Verifier::from_pads(i, o).for_cluster("42", 1000);
        let Evidence::Close(c) =
            v.verify(br#"close {"d":0,"ss":5,"op":"DELETE","r":10,"s":"public","t":"t"}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(c.table(), "public.t");
        let e = r#"{"v":2,"k":"error","sys":"42","xid":77,"pid":9,"w":"BEFORE","op":"DELETE","r":10,"s":"public","t":"t","e":"53200 out of shared memory","at":1}"#;
        let Evidence::Error(r) = v.verify(format!("error - {e}").as_bytes()).unwrap() else { panic!() };
        assert!(!r.signed);
        assert_eq!(r.xid, Some(77));
        let Evidence::Error(r) =
            v.verify(format!("error {} {e}", hex::encode(v.mac(e.as_bytes()))).as_bytes()).unwrap()
        else {
            panic!()
        };
        assert!(r.signed);
        assert!(v.verify(b"close {").is_err());
    }

    #[test]
    fn signed_payload_with_bytes_that_are_not_utf8_is_accepted() {
        // A SQL_ASCII database: the statement held a raw 0xFF byte, which the server's JSON kept as is.
        let (i, o) = pads(&[7u8; 32]);
        let v = Verifier::from_pads(i, o).for_cluster("42", 1000);
        let payload = open_payload("42", 1, 1, "a", "t", 5).replace("DELETE FROM t", "DELETE FROM t WHERE k = '\u{1}'");
        let payload: Vec<u8> = payload.into_bytes().into_iter().map(|b| if b == 1 { 0xff } else { b }).collect();
        let mut msg = hex::encode(v.mac(&payload)).into_bytes();
        msg.push(b' ');
        msg.extend_from_slice(&payload);
        let Evidence::Open(p) = v.verify(&msg).unwrap() else { panic!() };
        assert_eq!(p.q.as_deref(), Some("DELETE FROM t WHERE k = '\u{fffd}'"));
        // The signature still covers the bytes as sent.
        let n = msg.len();
        msg[n - 3] ^= 1;
        assert!(v.verify(&msg).is_err());
    }

    /// A version 3 open as the trigger writes it: 2026-01-01T00:00:00Z for every timestamp, `tgenabled`
    /// and `session_replication_role` as given.
    fn open_v3_payload(sys: &str, q: &str, tgenabled: Option<&str>, srr: &str) -> String {
        let ts = format!("{:016x}", 1_767_225_600_000_000i64 - PG_EPOCH_UNIX_MICROS);
        let en = tgenabled.map_or("null".to_owned(), |e| format!("\"{e}\""));
        format!(
            r#"["3","{sys}","4294968530","{ts}","42","{ts}","app","none","cron","10.0.0.7","5432",{q},"{ts}","{ts}","0","DELETE","16384","public","t",{en},"{srr}","false"]"#,
            q = serde_json::to_string(q).unwrap()
        )
    }

    #[test]
    fn version_3_opens_read_like_version_2() {
        let (i, o) = pads(&[7u8; 32]);
        let v = Verifier::from_pads(i, o).for_cluster("42", 1000);
        let p = open_v3_payload("42", "DELETE FROM t", Some("O"), "origin");
        let Evidence::Open(open) = v.verify(&signed(&v, &p)).unwrap() else { panic!("not an open") };
        assert_eq!((open.xid, open.pid, open.r, open.d), ((1 << 32) + 1234, 42, 16384, 0));
        assert_eq!((open.id, open.op.as_str(), open.table().as_str()), (1_767_225_600_000_000, "DELETE", "public.t"));
        assert!(open.armed && !open.qt);
        let s = open.session();
        assert_eq!(s.backend_start.as_deref(), Some("2026-01-01T00:00:00.000000Z"));
        assert_eq!(s.statement_start.as_deref(), Some("2026-01-01T00:00:00.000000Z"));
        assert_eq!((s.client_addr.as_deref(), s.client_port), (Some("10.0.0.7"), Some(5432)));
        assert_eq!((s.application_name.as_deref(), s.query.as_deref()), (Some("cron"), Some("DELETE FROM t")));
        // The close it pairs with.
        let ts = format!("{:016x}", 1_767_225_600_000_000i64 - PG_EPOCH_UNIX_MICROS);
        let close = format!(r#"close ["0","{ts}","DELETE","16384","public","t"]"#);
        let Evidence::Close(c) = v.verify(close.as_bytes()).unwrap() else { panic!("not a close") };
        assert!(open.closed_by(&c));
        // Signed for another cluster, tampered with, or not of this shape: rejected.
        assert!(v
            .verify(&signed(&v, &open_v3_payload("43", "x", Some("O"), "origin")))
            .unwrap_err()
            .contains("cluster"));
        let mut forged = signed(&v, &p);
        let n = forged.len();
        forged[n - 5] ^= 1;
        assert!(v.verify(&forged).is_err());
        for bad in
            [p.replacen("[\"3\"", "[\"4\"", 1), p.replacen(",\"cron\"", "", 1), p.replacen("\"42\",\"", "null,\"", 1)]
        {
            assert!(v.verify(&signed(&v, &bad)).is_err(), "{bad}");
        }
        assert!(v.verify(br#"close ["0","zz","DELETE","1","s","t"]"#).is_err());
        // An error report, unsigned (the key could not be read) and signed.
        let e = r#"["3",null,"4294968530","9","BEFORE","DELETE","16384","public","t","53200 out of shared memory"]"#;
        let Evidence::Error(r) = v.verify(format!("error - {e}").as_bytes()).unwrap() else { panic!() };
        assert_eq!(
            (r.signed, r.xid, r.pid, r.r, r.e.as_str()),
            (false, Some((1 << 32) + 1234), 9, 16384, "53200 out of shared memory")
        );
        let Evidence::Error(r) =
            v.verify(format!("error {} {e}", hex::encode(v.mac(e.as_bytes()))).as_bytes()).unwrap()
        else {
            panic!()
        };
        assert!(r.signed && r.sys.is_none());
        assert!(v.verify(br#"error - ["3",null,null,"9"]"#).is_err());
    }

    #[test]
    fn version_3_armed_follows_the_session_replication_role() {
        let (i, o) = pads(&[7u8; 32]);
        let v = Verifier::from_pads(i, o).for_cluster("42", 1000);
        for (en, srr, armed) in [
            (Some("O"), "origin", true),
            (Some("O"), "local", true),
            (Some("O"), "replica", false),
            (Some("A"), "replica", true),
            (Some("R"), "origin", false),
            (Some("R"), "replica", true),
            (Some("D"), "origin", false),
            (None, "origin", false),
        ] {
            let Evidence::Open(open) = v.verify(&signed(&v, &open_v3_payload("42", "q", en, srr))).unwrap() else {
                panic!()
            };
            assert_eq!(open.armed, armed, "tgenabled {en:?} with {srr}");
        }
    }

    #[test]
    fn version_3_statement_cut_is_the_servers_word() {
        // The server cuts the statement in its own characters (bytes, in SQL_ASCII) and says so: the text
        // here, a multi-byte character cut in half as SQL_ASCII's `left` would, is not counted again.
        let (i, o) = pads(&[7u8; 32]);
        let v = Verifier::from_pads(i, o).for_cluster("42", 1000);
        let p = open_v3_payload("42", "QQQ", Some("O"), "origin").replacen(",\"false\"]", ",\"true\"]", 1);
        let mut q = "é".repeat(4095).into_bytes();
        q.extend_from_slice(&[b'x', 0xc3]);
        let (a, b) = p.split_once("QQQ").unwrap();
        let payload = [a.as_bytes(), &q, b.as_bytes()].concat();
        let msg = [hex::encode(v.mac(&payload)).as_bytes(), b" ", &payload].concat();
        let Evidence::Open(open) = v.verify(&msg).unwrap() else { panic!() };
        assert!(open.qt);
        assert!(open.q.unwrap().ends_with("x\u{fffd}"));
        let whole = open_v3_payload("42", "DELETE FROM t", Some("O"), "origin");
        let Evidence::Open(open) = v.verify(&signed(&v, &whole)).unwrap() else { panic!() };
        assert!(!open.qt);
        let odd = whole.replacen(",\"false\"]", ",\"maybe\"]", 1);
        assert!(v.verify(&signed(&v, &odd)).is_err());
    }

    #[test]
    fn xids_widen_around_the_reference() {
        let epoch = 3u64 << 32;
        assert_eq!(widen_xid(100, epoch + 90), epoch + 100);
        assert_eq!(widen_xid(u32::MAX - 5, epoch + 10), epoch - 6);
        assert_eq!(widen_xid(5, epoch + u64::from(u32::MAX) - 10), epoch + (1 << 32) + 5);
        assert_eq!(widen_xid(7, 3), 7);
        assert_eq!(widen_xid(u32::MAX, 3), u64::from(u32::MAX));
    }
}
