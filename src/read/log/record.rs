//! Records as the readers see them: typed, borrowed from the line wherever the JSON needs no
//! unescaping, with "missing" kept apart from "null".

use std::borrow::Cow;
use std::fmt;
use std::rc::Rc;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

use crate::protocol::Lsn;

/// A field that may be absent, `null`, or a value: the format requires some fields to be present even
/// when null (`session`, `key`, `old`, `origin`), so "missing" must stay distinguishable from "null".
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Field<T> {
    #[default]
    Missing,
    Null,
    Value(T),
}

impl<T> Field<T> {
    pub fn value(&self) -> Option<&T> {
        match self {
            Field::Value(v) => Some(v),
            _ => None,
        }
    }
    pub fn present(&self) -> bool {
        !matches!(self, Field::Missing)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Field<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match Option::<T>::deserialize(d)? {
            Some(v) => Field::Value(v),
            None => Field::Null,
        })
    }
}

/// A present field whose content is not needed (only its presence is checked).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Present(pub bool);

impl<'de> Deserialize<'de> for Present {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        IgnoredAny::deserialize(d)?;
        Ok(Present(true))
    }
}

/// A key column's value as the readers need it: text, SQL NULL, text that is not UTF-8 (the hex of
/// `{"text_hex":"…"}`), or another marker object (binary/TOAST).
#[derive(Debug, Clone, PartialEq)]
pub enum KeyValue<'a> {
    Text(Cow<'a, str>),
    Null,
    TextHex(String),
    Other,
}

impl fmt::Display for KeyValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyValue::Text(s) => f.write_str(s),
            KeyValue::Null => f.write_str("NULL"),
            // PostgreSQL's bytea notation, as the log writes names that are not UTF-8.
            KeyValue::TextHex(h) => write!(f, "\\x{h}"),
            KeyValue::Other => f.write_str("{…}"),
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for KeyValue<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyValue<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key value (string, null or object)")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(KeyValue::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(KeyValue::Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(KeyValue::Text(Cow::Owned(v)))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(KeyValue::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(KeyValue::Null)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut hex = None;
                let mut fields = 0;
                while let Some(k) = m.next_key::<Cow<'de, str>>()? {
                    fields += 1;
                    if k == "text_hex" {
                        hex = m.next_value::<Option<String>>()?;
                    } else {
                        m.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(match hex {
                    Some(h) if fields == 1 => KeyValue::TextHex(h),
                    _ => KeyValue::Other,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// The `key` object, in the order the log wrote its columns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Key<'a>(pub Vec<(Cow<'a, str>, KeyValue<'a>)>);

impl<'de: 'a, 'a> Deserialize<'de> for Key<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key object (column → value)")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut cols = Vec::with_capacity(2);
                while let Some((k, v)) = m.next_entry::<Cow<'de, str>, KeyValue<'de>>()? {
                    cols.push((k, v));
                }
                Ok(Key(cols))
            }
        }
        d.deserialize_map(V)
    }
}

impl fmt::Display for Key<'_> {
    /// One column: its value. Several: `col=value` joined by commas.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let [(_, v)] = self.0.as_slice() {
            return write!(f, "{v}");
        }
        for (i, (c, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{c}={v}")?;
        }
        Ok(())
    }
}

/// The `session` object, as far as the readers need it (see `crate::attribution::session::Session`).
/// Owned, because it is parsed once and shared by every row of a transaction (see [`Parser`](super::Parser)).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct SessionRef {
    #[serde(default)]
    pub attributed_by: Option<String>,
    pub pid: i64,
    #[serde(default)]
    pub backend_start: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub application_name: Option<String>,
    #[serde(default)]
    pub client_addr: Option<String>,
    #[serde(default)]
    pub client_port: Option<i64>,
    #[serde(default)]
    pub query: Option<String>,
    #[serde(default)]
    pub query_truncated: Option<bool>,
    /// Format 2: the number of the transaction's `statement` record that holds the query and times.
    #[serde(default)]
    pub statement: Option<u64>,
}

impl SessionRef {
    /// `addr:port`, `[v6]:port`, or "local socket" for Unix-socket clients.
    pub fn client(&self) -> String {
        match (&self.client_addr, self.client_port) {
            (None, _) => "local socket".to_owned(),
            (Some(a), Some(p)) if a.contains(':') => format!("[{a}]:{p}"),
            (Some(a), Some(p)) => format!("{a}:{p}"),
            (Some(a), None) => a.to_string(),
        }
    }
}

/// Every record type, read leniently (unknown fields ignored: the format only ever adds fields) and
/// checked by [`Record::check`]. Borrows from the line wherever the JSON needs no unescaping.
#[derive(Debug, Default, Deserialize)]
pub struct Record<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(borrow, default)]
    pub table: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub tables: Option<Vec<Cow<'a, str>>>,
    /// The watched table's schema and name (format version 2; `table` joins them ambiguously).
    #[serde(borrow, default)]
    pub schema: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub name: Option<Cow<'a, str>>,
    /// The partition a deleted row was in, when it was not in the watched table itself.
    #[serde(borrow, default)]
    pub partition: Option<RelName<'a>>,
    /// A truncate's watched relations (format version 2).
    #[serde(borrow, default)]
    pub relations: Option<Vec<RelRef<'a>>>,
    /// relation_renamed: the name the log showed before.
    #[serde(borrow, default)]
    pub previous_table: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub previous_schema: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub previous_name: Option<Cow<'a, str>>,
    #[serde(default)]
    pub xid: Option<u64>,
    #[serde(default)]
    pub lsn: Option<Lsn>,
    #[serde(default)]
    pub commit_lsn: Option<Lsn>,
    #[serde(default)]
    pub end_lsn: Option<Lsn>,
    #[serde(default)]
    pub start_lsn: Option<Lsn>,
    #[serde(default)]
    pub last_lsn: Option<Lsn>,
    #[serde(default)]
    pub from_lsn: Option<Lsn>,
    #[serde(default)]
    pub to_lsn: Option<Lsn>,
    #[serde(borrow, default)]
    pub commit_time: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub time: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub origin: Field<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub key: Field<Key<'a>>,
    #[serde(default)]
    pub old: Present,
    /// The raw `session` JSON: parsed by [`Parser`](super::Parser) only when it differs from the previous line's.
    #[serde(rename = "session", borrow, default)]
    pub session_raw: Field<&'a serde_json::value::RawValue>,
    /// The parsed session, filled in by [`Parser::parse`](super::Parser::parse).
    #[serde(skip)]
    pub session: Field<Rc<SessionRef>>,
    #[serde(default)]
    pub deletes: Option<u64>,
    #[serde(default)]
    pub truncates: Option<u64>,
    #[serde(borrow, default)]
    pub attribution: Option<Cow<'a, str>>,
    #[serde(default)]
    pub cascade: Option<bool>,
    #[serde(default)]
    pub restart_identity: Option<bool>,
    #[serde(borrow, default)]
    pub slot: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub publication: Option<Cow<'a, str>>,
    #[serde(default)]
    pub format_version: Option<u64>,
    #[serde(borrow, default)]
    pub reason: Option<Cow<'a, str>>,
    /// `gap`: its end is not known yet (`to_lsn` is `null`).
    #[serde(default)]
    pub open: Option<bool>,
    /// `gap`: ends the open gap with the same `reason`, `table` and `from_lsn`.
    #[serde(default)]
    pub closes: Option<bool>,
    #[serde(borrow, default)]
    pub detail: Option<Cow<'a, str>>,
    /// Rows and commits without evidence (`session` null) may carry the sessions that could have run
    /// them: `{"candidates": 1, "session": {…}, "statement", …}` or `{"candidates": N, "possible": […]}`.
    /// Kept raw: only `report` reads it (see `report::Inferred`).
    #[serde(borrow, default)]
    pub inferred: Option<&'a serde_json::value::RawValue>,
    /// Why a row or commit has no session, when the capture says.
    #[serde(borrow, default)]
    pub unattributed_reason: Option<Cow<'a, str>>,
    /// `statement` records: their number in the transaction.
    #[serde(default)]
    pub statement: Option<u64>,
}

/// A schema and name (a `partition`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RelName<'a> {
    #[serde(borrow)]
    pub schema: Cow<'a, str>,
    #[serde(borrow)]
    pub name: Cow<'a, str>,
}

/// One entry of a truncate's `relations`: the watched table, and the partition truncated if it was one.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RelRef<'a> {
    #[serde(borrow)]
    pub schema: Cow<'a, str>,
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    #[serde(borrow, default)]
    pub partition: Option<RelName<'a>>,
}

impl Record<'_> {
    /// The watched tables (schema, name) and partitions a row record names: from `schema`/`name`,
    /// `partition` and `relations` when the log has them (format version 2); `None` for older logs,
    /// which only have the ambiguous `table`/`tables` strings.
    pub fn named_relations(&self) -> Option<Vec<(&str, &str)>> {
        if let Some(rs) = &self.relations {
            let mut v = Vec::with_capacity(rs.len() * 2);
            for r in rs {
                v.push((r.schema.as_ref(), r.name.as_ref()));
                if let Some(p) = &r.partition {
                    v.push((p.schema.as_ref(), p.name.as_ref()));
                }
            }
            return Some(v);
        }
        let (s, n) = (self.schema.as_deref()?, self.name.as_deref()?);
        let mut v = vec![(s, n)];
        if let Some(p) = &self.partition {
            v.push((p.schema.as_ref(), p.name.as_ref()));
        }
        if let (Some(ps), Some(pn)) = (self.previous_schema.as_deref(), self.previous_name.as_deref()) {
            v.push((ps, pn));
        }
        Some(v)
    }
}
