//! Inference, kept apart from evidence: which session most likely ran a transaction nobody saw live.
//!
//! The sampler sees every session's *last* statement (`query`, `query_start`, `state_change`, `state`)
//! even when it is idle. An autocommit DELETE commits between its `query_start` and the `state_change`
//! that makes the session idle again, and pgoutput gives the commit time from the same server clock.
//! So for a committed transaction without evidence, the sessions whose statement window brackets the
//! commit time and whose statement is a DELETE or TRUNCATE that can touch a watched table are its
//! candidates:
//! * one → `inferred` names it (`candidates: 1`), and the window is used up: one statement window
//!   explains at most one transaction;
//! * several → `inferred` lists them (at most `MAX_POSSIBLE`), no single answer;
//! * none → no `inferred`; the commit record says why (`unattributed_reason`).
//!
//! Weaker candidates — a COMMIT that ended a transaction block (its DELETE was not seen), a SELECT, CALL
//! or DO that calls a function (which could delete), a DELETE or TRUNCATE of another table (foreign
//! keys with ON DELETE CASCADE) — are never named; they are only counted in the reason.
//!
//! Bounded: at most `MAX_WINDOWS_PER_SESSION` windows per session and `MAX_WINDOWS` in all, forgotten
//! `HORIZON_US` of server time after they ended.
use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

use super::session::Session;
use crate::sink::record::format_pg_time;

pub const MAX_POSSIBLE: usize = 5;
pub const MAX_WINDOWS_PER_SESSION: usize = 8;
pub const MAX_WINDOWS: usize = 200_000;
/// How long (server time) a finished window is kept for transactions that arrive late.
pub const HORIZON_US: i64 = 15 * 60 * 1_000_000;

/// What a statement could have done to the watched tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A DELETE or TRUNCATE naming a watched table (also inside WITH, or in a multi-statement string).
    Deletes,
    /// Could have deleted watched rows without saying so: COMMIT/END of a block, a function call,
    /// a DELETE or TRUNCATE of another table (cascades).
    Weak,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    /// Unquoted word, lowercased.
    Word(String),
    /// Quoted identifier, as written.
    Quoted(String),
    Punct(char),
    Literal,
}

fn tokenize(sql: &str) -> Vec<Tok> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'-' && b.get(i + 1) == Some(&b'-') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            i = block_comment_end(b, i);
        } else if c == b'\'' {
            // 'it''s'; E'...' escapes were consumed as a word 'e' before: handle backslashes too.
            let backslash = matches!(out.last(), Some(Tok::Word(w)) if w == "e");
            i = string_end(b, i, backslash);
            out.push(Tok::Literal);
        } else if c == b'"' {
            let (end, s) = quoted_identifier(b, i);
            i = end;
            out.push(Tok::Quoted(s));
        } else if c == b'$' {
            i = dollar_end(b, i);
            out.push(Tok::Literal);
        } else if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            let mut j = i;
            while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] == b'$' || b[j] >= 0x80) {
                j += 1;
            }
            out.push(Tok::Word(String::from_utf8_lossy(&b[i..j]).to_lowercase()));
            i = j;
        } else if c.is_ascii_digit() {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                i += 1;
            }
            out.push(Tok::Literal);
        } else {
            out.push(Tok::Punct(c as char));
            i += 1;
        }
    }
    out
}

/// Past a `/* … */` comment starting at `i` (they nest).
fn block_comment_end(b: &[u8], mut i: usize) -> usize {
    let mut depth = 1;
    i += 2;
    while i < b.len() && depth > 0 {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            depth += 1;
            i += 2;
        } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
            depth -= 1;
            i += 2;
        } else {
            i += 1;
        }
    }
    i
}

/// Past a string literal starting at `i`; `backslash`: an E'…' string, where backslashes escape.
fn string_end(b: &[u8], mut i: usize, backslash: bool) -> usize {
    i += 1;
    while i < b.len() {
        if backslash && b[i] == b'\\' {
            i += 2;
        } else if b[i] == b'\'' {
            if b.get(i + 1) == Some(&b'\'') {
                i += 2;
            } else {
                i += 1;
                break;
            }
        } else {
            i += 1;
        }
    }
    i
}

/// A quoted identifier starting at `i`: where it ends, and its name.
fn quoted_identifier(b: &[u8], mut i: usize) -> (usize, String) {
    let mut s = Vec::new();
    i += 1;
    while i < b.len() {
        if b[i] == b'"' {
            if b.get(i + 1) == Some(&b'"') {
                s.push(b'"');
                i += 2;
            } else {
                i += 1;
                break;
            }
        } else {
            s.push(b[i]);
            i += 1;
        }
    }
    (i, String::from_utf8_lossy(&s).into_owned())
}

/// Past `$tag$ ... $tag$` (dollar quoting) or `$1` (a parameter) starting at `i`.
fn dollar_end(b: &[u8], i: usize) -> usize {
    let mut j = i + 1;
    while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
        j += 1;
    }
    if j < b.len() && b[j] == b'$' && !b[i + 1..j].first().is_some_and(u8::is_ascii_digit) {
        let tag = &b[i..=j];
        let body = j + 1;
        let end = b[body..].windows(tag.len()).position(|w| w == tag).map(|p| body + p + tag.len());
        end.unwrap_or(b.len())
    } else {
        j
    }
}

fn is_word(t: Option<&Tok>, w: &str) -> bool {
    matches!(t, Some(Tok::Word(x)) if x == w)
}

fn ident(t: Option<&Tok>) -> Option<&str> {
    match t {
        Some(Tok::Word(w)) | Some(Tok::Quoted(w)) => Some(w),
        _ => None,
    }
}

/// A possibly schema-qualified name at `i`: (schema, name, tokens used).
fn qualified(toks: &[Tok], i: usize) -> Option<(Option<&str>, &str, usize)> {
    let first = ident(toks.get(i))?;
    if toks.get(i + 1) == Some(&Tok::Punct('.')) {
        if let Some(second) = ident(toks.get(i + 2)) {
            // database.schema.table: keep the last two.
            if toks.get(i + 3) == Some(&Tok::Punct('.')) {
                if let Some(third) = ident(toks.get(i + 4)) {
                    return Some((Some(second), third, 5));
                }
            }
            return Some((Some(first), second, 3));
        }
    }
    Some((None, first, 1))
}

/// Functions so common in plain queries that calling them says nothing about deleting.
const HARMLESS_FUNCTIONS: &[&str] = &[
    "count",
    "sum",
    "min",
    "max",
    "avg",
    "now",
    "coalesce",
    "nullif",
    "lower",
    "upper",
    "length",
    "array_agg",
    "string_agg",
    "to_char",
    "to_timestamp",
    "exists",
    "in",
    "any",
    "all",
    "values",
    "cast",
    "extract",
    "date_trunc",
    "current_setting",
    "set_config",
    "pg_backend_pid",
    "txid_current",
    "version",
    "clock_timestamp",
    "statement_timestamp",
    "abs",
    "round",
    "greatest",
    "least",
    "substring",
    "concat",
    "trim",
    "json_build_object",
    "jsonb_build_object",
    "row_number",
    "rank",
    "over",
    "filter",
    "interval",
    "timestamp",
    "date",
    "numeric",
    "varchar",
    "char",
    "decimal",
    "from",
    "where",
    "and",
    "or",
    "not",
    "on",
    "using",
    "as",
    "select",
    "with",
];

/// Classifies a statement (or a string of several) against the watched tables (schema, name).
/// An unqualified name matches a watched table of that name in any schema (the session's search_path
/// is not known).
pub fn classify(sql: &str, watched: &[(String, String)]) -> Class {
    let toks = tokenize(sql);
    let is_watched =
        |schema: Option<&str>, name: &str| watched.iter().any(|(s, n)| n == name && schema.is_none_or(|x| x == s));
    let mut weak = false;
    let mut i = 0;
    while i < toks.len() {
        if is_word(toks.get(i), "delete") && is_word(toks.get(i + 1), "from") {
            let mut j = i + 2;
            if is_word(toks.get(j), "only") {
                j += 1;
            }
            if let Some((s, n, _)) = qualified(&toks, j) {
                if is_watched(s, n) {
                    return Class::Deletes;
                }
            }
            weak = true;
        } else if is_word(toks.get(i), "truncate") {
            let mut j = i + 1;
            if is_word(toks.get(j), "table") {
                j += 1;
            }
            loop {
                if is_word(toks.get(j), "only") {
                    j += 1;
                }
                let Some((s, n, used)) = qualified(&toks, j) else { break };
                if is_watched(s, n) {
                    return Class::Deletes;
                }
                j += used;
                if toks.get(j) == Some(&Tok::Punct('*')) {
                    j += 1;
                }
                if toks.get(j) != Some(&Tok::Punct(',')) {
                    break;
                }
                j += 1;
            }
            weak = true;
        } else if i == 0 || toks.get(i - 1) == Some(&Tok::Punct(';')) {
            // The first word of a statement.
            if is_word(toks.get(i), "commit")
                || is_word(toks.get(i), "end")
                || is_word(toks.get(i), "call")
                || is_word(toks.get(i), "do")
            {
                weak = true;
            }
        }
        if let (Some(Tok::Word(w)), Some(Tok::Punct('('))) = (toks.get(i), toks.get(i + 1)) {
            if !HARMLESS_FUNCTIONS.contains(&w.as_str()) && !is_word(toks.get(i.wrapping_sub(1)), "into") {
                // A call of a user function: could delete. (`INSERT INTO t (cols)` is not a call.)
                let after_table =
                    i >= 1 && matches!(toks.get(i - 1), Some(Tok::Word(x)) if x == "table" || x == "update");
                if !after_table {
                    weak = true;
                }
            }
        }
        i += 1;
    }
    if weak {
        Class::Weak
    } else {
        Class::Other
    }
}

/// One sampled statement of one session: from `query_start` until `state_change` (end of the statement)
/// or, while it runs, open.
#[derive(Debug, Clone)]
pub struct Window {
    pub session: Session,
    pub start_us: i64,
    /// The end of the statement (`state_change` once not active); `None` while active.
    pub end_us: Option<i64>,
    /// Server time of the last sample that showed it.
    pub seen_us: i64,
    /// The xid the session held when a sample showed this statement: the window explains only it.
    pub xid: Option<u32>,
    pub class: Class,
    pub used: bool,
}

impl Window {
    fn brackets(&self, t: i64) -> bool {
        self.start_us <= t && self.end_us.is_none_or(|e| t <= e)
    }

    fn push_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"\"session\":");
        let mut s = self.session.clone();
        s.attributed_by = "inferred".into();
        out.extend_from_slice(&serde_json::to_vec(&s).unwrap_or_else(|_| b"null".to_vec()));
        out.extend_from_slice(b",\"statement\":");
        out.extend_from_slice(&serde_json::to_vec(&s.query).unwrap_or_else(|_| b"null".to_vec()));
        out.extend_from_slice(b",\"statement_start\":");
        out.extend_from_slice(&serde_json::to_vec(&format_pg_time(self.start_us)).unwrap_or_default());
        out.extend_from_slice(b",\"statement_end\":");
        match self.end_us {
            Some(e) => out.extend_from_slice(&serde_json::to_vec(&format_pg_time(e)).unwrap_or_default()),
            None => out.extend_from_slice(b"null"),
        }
    }
}

/// What inference says about one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inference {
    /// The `inferred` object (JSON), with one or several candidates.
    Inferred { json: Bytes, named: bool },
    /// No candidate: why.
    Unattributed(String),
}

impl Inference {
    /// The form stored in raw files (see `sink::raw`, tag 'i').
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Inference::Inferred { json, named } => [if *named { &b"1"[..] } else { b"n" }, json].concat(),
            Inference::Unattributed(r) => [&b"r"[..], r.as_bytes()].concat(),
        }
    }

    pub fn decode(b: &[u8]) -> Option<Inference> {
        let (tag, rest) = b.split_first()?;
        match tag {
            b'1' | b'n' => {
                // Only what inference writes: an object whose sessions say they were inferred (a raw
                // file's word never becomes evidence).
                let v = serde_json::from_slice::<serde_json::Value>(rest).ok().filter(serde_json::Value::is_object)?;
                let sessions = std::iter::once(&v["session"])
                    .chain(v["possible"].as_array().into_iter().flatten().map(|p| &p["session"]))
                    .filter(|s| !s.is_null());
                if sessions.clone().any(|s| s["attributed_by"] != "inferred") || v["candidates"].as_u64().is_none() {
                    return None;
                }
                Some(Inference::Inferred { json: Bytes::copy_from_slice(rest), named: *tag == b'1' })
            }
            b'r' => Some(Inference::Unattributed(String::from_utf8_lossy(rest).into_owned())),
            _ => None,
        }
    }
}

/// One sample row: a session and its current (or last) statement.
#[derive(Debug, Clone)]
pub struct Observed {
    pub session: Session,
    pub xid: Option<u32>,
    pub start_us: Option<i64>,
    pub state_change_us: Option<i64>,
    pub active: bool,
}

/// Recent statement windows per session (pid, backend_start).
#[derive(Default)]
pub struct History {
    sessions: HashMap<(i32, Option<String>), VecDeque<Window>>,
    total: usize,
    first_sample_us: Option<i64>,
    pub last_sample_us: Option<i64>,
}

impl History {
    /// Records one sample: its query started at server time `taken_us` (what it shows is at least as
    /// new) and ended at `now_us`.
    pub fn record(&mut self, taken_us: i64, now_us: i64, rows: &[Observed], watched: &[(String, String)]) {
        self.first_sample_us.get_or_insert(taken_us);
        for r in rows {
            let Some(start) = r.start_us else { continue };
            let key = (r.session.pid, r.session.backend_start.clone());
            let end = if r.active { None } else { r.state_change_us };
            if let Some(w) = self.sessions.get_mut(&key).and_then(|q| q.iter_mut().find(|w| w.start_us == start)) {
                w.end_us = end;
                w.seen_us = now_us;
                w.xid = w.xid.or(r.xid);
                continue;
            }
            let class = r.session.query.as_deref().map_or(Class::Other, |q| classify(q, watched));
            if class == Class::Other {
                continue;
            }
            let q = self.sessions.entry(key).or_default();
            q.push_back(Window {
                session: r.session.clone(),
                start_us: start,
                end_us: end,
                seen_us: now_us,
                xid: r.xid,
                class,
                used: false,
            });
            self.total += 1;
            if q.len() > MAX_WINDOWS_PER_SESSION {
                q.pop_front();
                self.total -= 1;
            }
        }
        // A window still open at an earlier sample but absent from this one ended before now (the
        // sample returns every active session).
        for q in self.sessions.values_mut() {
            for w in q.iter_mut() {
                if w.end_us.is_none() && w.seen_us < now_us {
                    w.end_us = Some(now_us);
                }
            }
        }
        self.last_sample_us = Some(taken_us);
        if self.total > MAX_WINDOWS {
            self.expire(now_us);
        }
    }

    /// Forgets windows that ended `HORIZON_US` before `now_us` (all but the newest per session when
    /// still over `MAX_WINDOWS`).
    pub fn expire(&mut self, now_us: i64) {
        let cut = now_us - HORIZON_US;
        for q in self.sessions.values_mut() {
            q.retain(|w| w.end_us.is_none_or(|e| e >= cut));
        }
        self.sessions.retain(|_, q| !q.is_empty());
        if self.sessions.values().map(VecDeque::len).sum::<usize>() > MAX_WINDOWS {
            for q in self.sessions.values_mut() {
                while q.len() > 1 {
                    q.pop_front();
                }
            }
        }
        self.total = self.sessions.values().map(VecDeque::len).sum();
    }

    /// Infers the session of transaction `xid` that committed at `commit_us` (server time). `keys`: text
    /// of some of its deleted rows' keys; among several candidates, the only one whose statement holds
    /// one of them as a literal is named (a tie broken by evidence in the statement text).
    pub fn infer(&mut self, xid: u32, commit_us: i64, keys: &[String]) -> Inference {
        if let Some(why) = self.unsampled(commit_us) {
            return why;
        }
        let mut strong: Vec<&mut Window> = Vec::new();
        let mut weak = 0usize;
        for q in self.sessions.values_mut() {
            for w in q.iter_mut() {
                if w.used || !w.brackets(commit_us) || w.xid.is_some_and(|x| x != xid) {
                    continue;
                }
                match w.class {
                    Class::Deletes => strong.push(w),
                    Class::Weak => weak += 1,
                    Class::Other => {}
                }
            }
        }
        let (vetoed, set_aside) = narrow_by_keys(&mut strong, keys);
        conclude(strong, weak, vetoed, set_aside)
    }

    /// Why nothing can be inferred for a commit at `commit_us`: the samples do not cover it.
    fn unsampled(&self, commit_us: i64) -> Option<Inference> {
        match (self.first_sample_us, self.last_sample_us) {
            (None, _) | (_, None) => {
                Some(Inference::Unattributed("the activity sampler had taken no sample yet".into()))
            }
            (Some(first), _) if commit_us < first => Some(Inference::Unattributed(
                "committed before the activity sampler's first sample (before this capture ran)".into(),
            )),
            (_, Some(last)) if last <= commit_us => Some(Inference::Unattributed(
                "no activity sample after the commit (the sampler is late or failing)".into(),
            )),
            _ => None,
        }
    }
}

/// Narrows the strong candidates by the deleted keys; returns how many were vetoed and how many set
/// aside.
fn narrow_by_keys(strong: &mut Vec<&mut Window>, keys: &[String]) -> (usize, usize) {
    let mut set_aside = 0;
    let mut vetoed = 0;
    if !keys.is_empty() {
        let literals: Vec<String> = keys.iter().map(|k| format!("'{}'", k.replace('\'', "''"))).collect();
        let holds =
            |w: &Window| w.session.query.as_deref().is_some_and(|q| literals.iter().any(|l| q.contains(l.as_str())));
        // A whole statement with string literals but none of the deleted keys did not name these
        // rows by key (it may still have deleted them by another condition: set aside, not named).
        let has_literals = |w: &Window| w.session.query.as_deref().is_some_and(|q| q.contains('\''));
        let before = strong.len();
        strong.retain(|w| w.session.query_truncated || !has_literals(w) || holds(w));
        vetoed = before - strong.len();
        if strong.len() > 1 && strong.iter().filter(|w| holds(w)).count() == 1 {
            set_aside = strong.len() - 1;
            strong.retain(|w| holds(w));
        }
    }
    (vetoed, set_aside)
}

/// The inference the remaining candidates make; a single one's window is used up.
fn conclude(mut strong: Vec<&mut Window>, weak: usize, vetoed: usize, set_aside: usize) -> Inference {
    match strong.len() {
        0 if vetoed > 0 => Inference::Unattributed(format!(
            "{vetoed} session(s) ran a DELETE or TRUNCATE of a watched table when it committed, but their \
             statements name none of the deleted keys (not named)"
        )),
        0 if weak > 0 => Inference::Unattributed(format!(
            "no session was seen running a DELETE or TRUNCATE of a watched table when it committed; \
             {weak} ran a COMMIT, a function call or a delete of another table then (not named: weaker evidence)"
        )),
        0 => Inference::Unattributed(
            "no session was seen running a DELETE or TRUNCATE of a watched table when it committed \
             (its statement ended and the session moved on between two samples)"
                .into(),
        ),
        1 => {
            let w = &mut strong[0];
            w.used = true;
            let mut out = b"{\"candidates\":1,".to_vec();
            if set_aside > 0 {
                out.extend_from_slice(format!("\"set_aside_by_keys\":{set_aside},").as_bytes());
            }
            w.push_json(&mut out);
            out.push(b'}');
            Inference::Inferred { json: Bytes::from(out), named: true }
        }
        n => {
            strong.sort_by_key(|w| std::cmp::Reverse(w.start_us));
            let mut out = format!("{{\"candidates\":{n},\"possible\":[").into_bytes();
            for (i, w) in strong.iter().take(MAX_POSSIBLE).enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.push(b'{');
                w.push_json(&mut out);
                out.push(b'}');
            }
            out.extend_from_slice(b"]}");
            Inference::Inferred { json: Bytes::from(out), named: false }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w() -> Vec<(String, String)> {
        vec![("public".into(), "django_cache".into()), ("App".into(), "My Table".into())]
    }

    #[test]
    fn classifies_statements() {
        let c = |s: &str| classify(s, &w());
        assert_eq!(c("DELETE FROM django_cache WHERE cache_key IN ('a', 'b')"), Class::Deletes);
        assert_eq!(c("delete from public.django_cache"), Class::Deletes);
        assert_eq!(c("DELETE FROM \"public\".\"django_cache\" WHERE x < $1"), Class::Deletes);
        assert_eq!(c("DELETE FROM ONLY \"App\".\"My Table\""), Class::Deletes);
        assert_eq!(c("DELETE FROM app.\"My Table\""), Class::Weak, "unquoted App folds to app");
        assert_eq!(c("DELETE FROM other.django_cache"), Class::Weak);
        assert_eq!(c("WITH d AS (DELETE FROM django_cache RETURNING 1) SELECT count(*) FROM d"), Class::Deletes);
        assert_eq!(c("/* DELETE FROM django_cache */ SELECT 1"), Class::Other);
        assert_eq!(c("SELECT 'DELETE FROM django_cache'"), Class::Other);
        assert_eq!(c("SELECT $x$ DELETE FROM django_cache $x$"), Class::Other);
        assert_eq!(c("-- delete from django_cache\nSELECT count(*) FROM django_cache"), Class::Other);
        assert_eq!(c("TRUNCATE django_cache"), Class::Deletes);
        assert_eq!(c("TRUNCATE TABLE ONLY a, public.django_cache * CASCADE"), Class::Deletes);
        assert_eq!(c("TRUNCATE a CASCADE"), Class::Weak);
        assert_eq!(c("SELECT purge_old_rows()"), Class::Weak);
        assert_eq!(c("CALL cleanup(1)"), Class::Weak);
        assert_eq!(c("COMMIT"), Class::Weak);
        assert_eq!(c("SELECT 1; DELETE FROM django_cache"), Class::Deletes);
        assert_eq!(c("INSERT INTO django_cache (cache_key, value) VALUES ($1, $2)"), Class::Other);
        assert_eq!(c("SELECT count(*) FROM django_cache"), Class::Other);
        assert_eq!(c("DELETE FROM other_table"), Class::Weak);
        assert_eq!(c("SELECT 'it''s' FROM django_cache; DELETE FROM x"), Class::Weak);
        assert_eq!(c("SELECT E'\\' DELETE FROM django_cache'"), Class::Other);
    }

    fn obs(pid: i32, q: &str, start: i64, end: Option<i64>, xid: Option<u32>) -> Observed {
        Observed {
            session: Session { attributed_by: "activity".into(), pid, query: Some(q.into()), ..Default::default() },
            xid,
            start_us: Some(start),
            state_change_us: end.or(Some(start)),
            active: end.is_none(),
        }
    }

    impl History {
        fn infer_t(&mut self, xid: u32, t: i64) -> Inference {
            self.infer(xid, t, &[])
        }
    }

    #[test]
    fn raw_encoding_round_trips_and_refuses_claims_of_evidence() {
        let i = Inference::Inferred {
            json: Bytes::from_static(br#"{"candidates":1,"session":{"attributed_by":"inferred","pid":1}}"#),
            named: true,
        };
        assert_eq!(Inference::decode(&i.encode()), Some(i));
        let r = Inference::Unattributed("why".into());
        assert_eq!(Inference::decode(&r.encode()), Some(r));
        assert_eq!(Inference::decode(br#"1{"candidates":1,"session":{"attributed_by":"trigger","pid":1}}"#), None);
        assert_eq!(
            Inference::decode(br#"n{"candidates":2,"possible":[{"session":{"attributed_by":"trigger"}}]}"#),
            None
        );
        assert_eq!(Inference::decode(b"1[]"), None);
        assert_eq!(Inference::decode(b"x"), None);
    }

    #[test]
    fn keys_break_a_tie_and_set_aside_statements_naming_other_keys() {
        let wl = w();
        let cut = Observed {
            session: Session {
                query_truncated: true,
                ..obs(1, "DELETE FROM django_cache WHERE cache_key IN ('a', 'b', ", 0, None, None).session
            },
            ..obs(1, "DELETE FROM django_cache WHERE cache_key IN ('a', 'b', ", 10, Some(50), None)
        };
        let names_it = obs(2, "DELETE FROM django_cache WHERE cache_key IN ('it''s')", 20, Some(60), None);
        let names_c = obs(3, "DELETE FROM django_cache WHERE cache_key IN ('c')", 20, Some(60), None);
        // A cut statement may hold the key: kept; the tie with pid 2 is broken by the key pid 2 names.
        let mut h = History::default();
        h.record(0, 0, &[], &wl);
        h.record(100, 100, &[cut, names_it.clone()], &wl);
        match h.infer(7, 30, &["it's".into()]) {
            Inference::Inferred { json, named: true } => {
                let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
                assert_eq!(v["session"]["pid"], 2, "{v}");
                assert_eq!(v["set_aside_by_keys"], 1, "{v}");
            }
            other => panic!("{other:?}"),
        }
        // Whole statements with literals, none of them the deleted key: set aside, not named.
        let mut h = History::default();
        h.record(0, 0, &[], &wl);
        h.record(100, 100, &[names_c, names_it], &wl);
        match h.infer(8, 30, &["zz".into()]) {
            Inference::Unattributed(r) => assert!(r.contains("name none of the deleted keys"), "{r}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn one_window_names_one_transaction() {
        let mut h = History::default();
        let wl = w();
        assert!(matches!(h.infer_t(1, 5), Inference::Unattributed(_)));
        h.record(0, 0, &[], &wl);
        h.record(
            100,
            100,
            &[
                obs(1, "DELETE FROM django_cache WHERE cache_key IN ('a')", 10, Some(20), None),
                obs(2, "SELECT count(*) FROM django_cache", 10, Some(30), None),
                obs(3, "COMMIT", 40, Some(41), None),
            ],
            &wl,
        );
        match h.infer_t(7, 15) {
            Inference::Inferred { json, named: true } => {
                let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
                assert_eq!(v["candidates"], 1);
                assert_eq!(v["session"]["pid"], 1);
                assert_eq!(v["session"]["attributed_by"], "inferred");
                assert!(v["statement"].as_str().unwrap().starts_with("DELETE"));
                assert!(v["statement_start"].is_string() && v["statement_end"].is_string());
            }
            other => panic!("{other:?}"),
        }
        // Used up: a second transaction in the same window is not explained by it.
        assert!(matches!(h.infer_t(8, 16), Inference::Unattributed(_)));
        // A COMMIT is weak: counted, not named.
        match h.infer_t(9, 40) {
            Inference::Unattributed(r) => assert!(r.contains("1 ran a COMMIT"), "{r}"),
            other => panic!("{other:?}"),
        }
        // After the last sample: no answer yet.
        assert!(matches!(h.infer_t(10, 1000), Inference::Unattributed(r) if r.contains("no activity sample after")));
    }

    #[test]
    fn several_candidates_are_listed_and_xids_exclude() {
        let mut h = History::default();
        let wl = w();
        h.record(0, 0, &[], &wl);
        h.record(
            100,
            100,
            &[
                obs(1, "DELETE FROM django_cache", 10, Some(50), None),
                obs(2, "TRUNCATE django_cache", 20, None, None),
                obs(3, "DELETE FROM django_cache", 5, None, Some(99)),
            ],
            &wl,
        );
        match h.infer_t(7, 30) {
            Inference::Inferred { json, named: false } => {
                let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
                assert_eq!(v["candidates"], 2);
                assert!(v.get("session").is_none());
                assert_eq!(v["possible"].as_array().unwrap().len(), 2);
            }
            other => panic!("{other:?}"),
        }
        // The active window of pid 2 ends when a later sample no longer shows it.
        h.record(200, 200, &[], &wl);
        assert!(matches!(h.infer_t(8, 300), Inference::Unattributed(_)));
    }
}
