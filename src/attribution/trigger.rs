//! Exact attribution: a statement-level trigger that signs the session's identity into the WAL.
//!
//! The trigger function emits `pg_logical_emit_message(true, 'walwitness', '<hmac> <json>')`. Being
//! transactional, the message is decoded inside the same transaction as the rows, before the rows of its
//! statement (a BEFORE STATEMENT trigger runs before the executor deletes anything), so it names exactly
//! the session and statement that deleted them.
//!
//! Why an HMAC: `pg_logical_emit_message` is executable by every role, so anyone can emit a message with
//! our prefix. The key lives in `walwitness.hmac_key`, readable only by the owner of the schema (the role
//! that installed it); the function is SECURITY DEFINER with a fixed `search_path`, so a table owner or
//! any other user can neither read the key nor make the function run their code. The key is stored as
//! the two HMAC pads so the server needs only the core `sha256()`.
//!
//! The function never makes the user's statement fail: its body runs in an exception block that
//! swallows any error (the rows are still logged, without a trigger session).
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio_postgres::Client;

use super::session::Session;
use crate::capture::names::{quote_ident, quote_literal};
use crate::capture::teardown::Leftover;
use crate::error::{Exit, Failure};

/// The logical decoding message prefix the trigger uses.
pub const PREFIX: &str = "walwitness";
pub const SCHEMA: &str = "walwitness";
pub const DELETE_TRIGGER: &str = "walwitness_attribution_delete";
pub const TRUNCATE_TRIGGER: &str = "walwitness_attribution_truncate";
/// Longest statement text carried in a message.
pub const QUERY_LIMIT: usize = 8192;

/// Verifies messages with the installed key.
pub struct Verifier {
    ipad: Vec<u8>,
    opad: Vec<u8>,
}

/// What the trigger sends, before it becomes a [`Session`].
#[derive(Debug, Clone, Deserialize)]
pub struct Payload {
    pub v: u32,
    pub xid: u64,
    pub pid: i32,
    pub backend_start: Option<String>,
    pub user: Option<String>,
    pub role: Option<String>,
    pub application_name: Option<String>,
    pub client_addr: Option<String>,
    pub client_port: Option<i32>,
    pub query: Option<String>,
    #[serde(default)]
    pub query_truncated: bool,
    pub xact_start: Option<String>,
    pub statement_start: Option<String>,
    pub trigger_depth: Option<i32>,
    pub schema: String,
    pub table: String,
    /// The table's OID (`TG_RELID`); absent from triggers installed by earlier walwitness versions,
    /// whose messages are matched by name.
    #[serde(default)]
    pub relid: Option<u32>,
    pub op: String,
}

impl Payload {
    pub fn session(&self) -> Session {
        let current_user = match self.role.as_deref() {
            None | Some("none") | Some("") => None,
            Some(r) if Some(r) == self.user.as_deref() => None,
            Some(r) => Some(r.to_owned()),
        };
        Session {
            attributed_by: "trigger".into(),
            pid: self.pid,
            backend_start: self.backend_start.clone(),
            user: self.user.clone(),
            current_user,
            application_name: self.application_name.clone(),
            client_addr: self.client_addr.clone(),
            client_port: self.client_port,
            query: self.query.clone(),
            query_truncated: self.query_truncated,
            xact_start: self.xact_start.clone(),
            statement_start: self.statement_start.clone(),
            trigger_depth: self.trigger_depth,
            sampled_at: None,
            details_hidden: false,
            conflict: None,
        }
    }
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

impl Verifier {
    pub fn from_pads(ipad: Vec<u8>, opad: Vec<u8>) -> Verifier {
        Verifier { ipad, opad }
    }

    pub fn mac(&self, payload: &[u8]) -> [u8; 32] {
        let inner = Sha256::new().chain_update(&self.ipad).chain_update(payload).finalize();
        Sha256::new().chain_update(&self.opad).chain_update(inner).finalize().into()
    }

    /// Checks a message's signature and decodes it. Errors say why it was rejected.
    pub fn verify(&self, content: &[u8]) -> Result<Payload, String> {
        let (mac_hex, payload) = match content.iter().position(|&b| b == b' ') {
            Some(i) => (&content[..i], &content[i + 1..]),
            None => return Err("no signature".into()),
        };
        let given = hex::decode(mac_hex).map_err(|_| "signature is not hex".to_owned())?;
        let want = self.mac(payload);
        if given.len() != want.len() || given.iter().zip(want.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) != 0 {
            return Err("signature does not match the installed key".into());
        }
        // The signature is good, so the message is the trigger's. In a SQL_ASCII database its text (the
        // statement, the application name) may hold bytes that are not UTF-8, which JSON cannot carry:
        // those become U+FFFD rather than turning an authentic message into a rejected one.
        let payload = String::from_utf8_lossy(payload);
        let p: Payload =
            serde_json::from_str(&payload).map_err(|e| format!("signed payload is not understood: {e}"))?;
        if p.v != 1 {
            return Err(format!("unknown payload version {}", p.v));
        }
        Ok(p)
    }
}

fn random_key() -> std::io::Result<[u8; 32]> {
    use std::io::Read;
    let mut k = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut k)?;
    Ok(k)
}

fn function_sql() -> String {
    let ts = |e: &str| format!("to_char({e} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')");
    format!(
        r#"CREATE OR REPLACE FUNCTION {SCHEMA}.attribution_trigger() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $walwitness$
DECLARE
  k_ipad bytea;
  k_opad bytea;
  q text;
  payload text;
BEGIN
  BEGIN
    SELECT h.ipad, h.opad INTO k_ipad, k_opad FROM {SCHEMA}.hmac_key h WHERE h.id = 1;
    q := current_query();
    payload := json_build_object(
      'v', 1,
      'xid', txid_current() % 4294967296,
      'pid', pg_backend_pid(),
      'backend_start', (SELECT {bs} FROM pg_stat_get_activity(pg_backend_pid()) a),
      'user', session_user,
      'role', current_setting('role'),
      'application_name', current_setting('application_name'),
      'client_addr', host(inet_client_addr()),
      'client_port', inet_client_port(),
      'query', left(q, {QUERY_LIMIT}),
      'query_truncated', length(q) > {QUERY_LIMIT},
      'xact_start', {xs},
      'statement_start', {ss},
      'trigger_depth', pg_trigger_depth() - 1,
      'schema', TG_TABLE_SCHEMA,
      'table', TG_TABLE_NAME,
      'relid', TG_RELID::bigint,
      'op', TG_OP)::text;
    PERFORM pg_logical_emit_message(true, '{PREFIX}',
      encode(sha256(k_opad || sha256(k_ipad || convert_to(payload, 'UTF8'))), 'hex') || ' ' || payload);
  EXCEPTION WHEN OTHERS THEN
    -- Never make the user's statement fail: the rows are still logged, just without this evidence.
    NULL;
  END;
  RETURN NULL;
END
$walwitness$"#,
        bs = ts("a.backend_start"),
        xs = ts("transaction_timestamp()"),
        ss = ts("statement_timestamp()"),
    )
}

use crate::error::from_sql as q;

/// Installs (idempotently) the schema, key, function and the triggers on `tables` (SQL names).
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
    c.batch_execute(&format!("{}; REVOKE ALL ON FUNCTION {SCHEMA}.attribution_trigger() FROM PUBLIC", function_sql()))
        .await
        .map_err(|e| q("cannot create the attribution function", e))?;
    for t in tables {
        let sql = format!(
            "BEGIN; SET LOCAL lock_timeout = '100ms'; \
             CREATE OR REPLACE TRIGGER {DELETE_TRIGGER} BEFORE DELETE ON {t} FOR EACH STATEMENT EXECUTE FUNCTION {SCHEMA}.attribution_trigger(); \
             CREATE OR REPLACE TRIGGER {TRUNCATE_TRIGGER} BEFORE TRUNCATE ON {t} FOR EACH STATEMENT EXECUTE FUNCTION {SCHEMA}.attribution_trigger(); \
             COMMIT"
        );
        with_lock_retries(c, &sql, &format!("cannot install the attribution triggers on {t}")).await?;
    }
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
        .query_opt(&format!("SELECT ipad, opad FROM {SCHEMA}.hmac_key WHERE id = 1"), &[])
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
    Ok(Verifier::from_pads(row.get(0), row.get(1)))
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
    let names = [DELETE_TRIGGER.to_owned(), TRUNCATE_TRIGGER.to_owned()];
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
        let row = match c
            .query_opt(
                "SELECT c.oid, n.nspname::text, c.relname::text, c.relowner::regrole::text \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass($1)",
                &[t],
            )
            .await
        {
            Ok(Some(r)) => r,
            // The table is gone, and its triggers with it.
            Ok(None) => continue,
            Err(e) => {
                let mut l = unremoved(std::slice::from_ref(t), &q("cannot look up the table", e).message);
                l.truncate(1);
                failed.push((None, l.remove(0)));
                continue;
            }
        };
        let (oid, schema, name, owner): (u32, String, String, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        let mut names: Vec<String> = match c.query(OUR_TRIGGERS, &[&oid, &SCHEMA]).await {
            Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
            Err(_) => vec![DELETE_TRIGGER.to_owned(), TRUNCATE_TRIGGER.to_owned()],
        };
        names.dedup();
        if names.is_empty() {
            continue;
        }
        let table_sql = sql_table(&schema, &name);
        let drops = drop_triggers_sql(&names, &table_sql);
        let sql = format!("BEGIN; SET LOCAL lock_timeout = '100ms'; {drops} COMMIT");
        if let Err(f) =
            with_lock_retries(c, &sql, &format!("cannot remove the attribution triggers from {table_sql}")).await
        {
            failed.push((
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
            ));
        }
    }
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
    let mut left: Vec<Leftover> = Vec::new();
    match others {
        // Some table of another capture or install still uses the schema: it stays, and is not ours to report.
        Ok(n) if n > 0 => left.extend(failed.into_iter().map(|(_, l)| l)),
        // A failed lookup leaves a trigger of unknown table: dropping the schema could take another's.
        Ok(_) if known.len() < failed.len() => left.extend(failed.into_iter().map(|(_, l)| l)),
        Ok(_) => {
            let sql =
                format!("BEGIN; SET LOCAL lock_timeout = '100ms'; DROP SCHEMA IF EXISTS {SCHEMA} CASCADE; COMMIT");
            match with_lock_retries(c, &sql, &format!("cannot drop schema {SCHEMA}")).await {
                Ok(()) => {
                    if !failed.is_empty() {
                        tracing::info!(
                            "the attribution triggers DROP TRIGGER could not remove went with schema {SCHEMA}"
                        );
                    }
                }
                Err(f) => {
                    left.extend(failed.into_iter().map(|(_, l)| l));
                    let privilege = f.exit == Exit::Privilege;
                    left.push(Leftover { privilege, ..schema_leftover(Some(&owner), &f.message) });
                }
            }
        }
        Err(e) => {
            left.extend(failed.into_iter().map(|(_, l)| l));
            left.push(schema_leftover(Some(&owner), &q("cannot count the attribution triggers", e).message));
        }
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
    let text = crate::capture::teardown::explain("could not remove every attribution object", &left);
    let mut f = Failure::new(Exit::CleanupIncomplete, text.trim_end());
    if left.iter().all(|l| l.privilege) {
        f.exit = Exit::Privilege;
    }
    Err(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(v: &Verifier, payload: &str) -> Vec<u8> {
        format!("{} {payload}", hex::encode(v.mac(payload.as_bytes()))).into_bytes()
    }

    const P: &str = r#"{"v":1,"xid":1234,"pid":42,"backend_start":"2026-01-01T00:00:00.000000Z","user":"app","role":"none","application_name":"cron","client_addr":null,"client_port":null,"query":"DELETE FROM t","query_truncated":false,"xact_start":null,"statement_start":null,"trigger_depth":0,"schema":"public","table":"t","op":"DELETE"}"#;

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
    fn accepts_signed_and_rejects_forged() {
        let (i, o) = pads(&[7u8; 32]);
        let v = Verifier::from_pads(i, o);
        let p = v.verify(&signed(&v, P)).unwrap();
        assert_eq!(p.pid, 42);
        let s = p.session();
        assert_eq!(s.attributed_by, "trigger");
        assert_eq!(s.current_user, None);
        let mut forged = signed(&v, P);
        let n = forged.len();
        forged[n - 3] = b'X';
        assert!(v.verify(&forged).is_err());
        let (i2, o2) = pads(&[8u8; 32]);
        let other = Verifier::from_pads(i2, o2);
        assert!(v.verify(&signed(&other, P)).unwrap_err().contains("does not match"));
        assert!(v.verify(b"nosignature").is_err());
        assert!(v.verify(b"zz {}").is_err());
        assert!(v.verify(&signed(&v, "{\"v\":2}")).is_err());
    }

    #[test]
    fn signed_payload_with_bytes_that_are_not_utf8_is_accepted() {
        // A SQL_ASCII database: the statement held a raw 0xFF byte, which the server's JSON kept as is.
        let (i, o) = pads(&[7u8; 32]);
        let v = Verifier::from_pads(i, o);
        let payload = P.replace("DELETE FROM t", "DELETE FROM t WHERE k = '\u{1}'").into_bytes();
        let payload: Vec<u8> = payload.into_iter().map(|b| if b == 1 { 0xff } else { b }).collect();
        let mut msg = hex::encode(v.mac(&payload)).into_bytes();
        msg.push(b' ');
        msg.extend_from_slice(&payload);
        let p = v.verify(&msg).unwrap();
        assert_eq!(p.query.as_deref(), Some("DELETE FROM t WHERE k = '\u{fffd}'"));
        // The signature still covers the bytes as sent.
        let n = msg.len();
        msg[n - 3] ^= 1;
        assert!(v.verify(&msg).is_err());
    }
}
