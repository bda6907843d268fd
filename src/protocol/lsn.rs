//! WAL positions (`XLogRecPtr`) and their textual form.
//!
//! PostgreSQL prints an LSN as two 32-bit halves in upper-case hex without
//! padding (`%X/%X`, e.g. `16/B374D848`). We use exactly that form everywhere a
//! human or a replication command sees an LSN, so values can be pasted straight
//! into `START_REPLICATION ... LOGICAL 16/B374D848` or compared with
//! `pg_replication_slots.confirmed_flush_lsn`.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A WAL location: a byte position in the server's write-ahead log.
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug)]
pub struct Lsn(pub u64);

impl Lsn {
    /// `InvalidXLogRecPtr`. The server sends it where a position does not
    /// apply (e.g. the XLogData header of a not-last write, Stream Abort after
    /// a crash), and `0/0` in START_REPLICATION means "resume at the slot's
    /// confirmed_flush".
    pub const INVALID: Lsn = Lsn(0);

    pub const fn is_valid(self) -> bool {
        self.0 != 0
    }

    pub const fn as_u64(self) -> u64 {
        self.0
    }
}

impl From<u64> for Lsn {
    fn from(v: u64) -> Self {
        Lsn(v)
    }
}

impl From<Lsn> for u64 {
    fn from(v: Lsn) -> Self {
        v.0
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Same as PostgreSQL's LSN_FORMAT_ARGS: high and low halves, no padding.
        write!(f, "{:X}/{:X}", (self.0 >> 32) as u32, self.0 as u32)
    }
}

/// Why a string is not an `X/Y` LSN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN {input:?}: {reason} (expected two hex numbers of at most 8 digits, like 16/B374D848)")]
pub struct LsnParseError {
    pub input: String,
    pub reason: &'static str,
}

impl FromStr for Lsn {
    type Err = LsnParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| LsnParseError { input: s.to_owned(), reason };
        let (hi, lo) = s.split_once('/').ok_or_else(|| err("missing '/'"))?;
        let half = |part: &str| -> Result<u32, LsnParseError> {
            if part.is_empty() {
                return Err(err("empty half"));
            }
            if part.len() > 8 {
                return Err(err("half longer than 8 hex digits"));
            }
            // from_str_radix alone would accept a leading '+'.
            if !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err("non-hex character"));
            }
            u32::from_str_radix(part, 16).map_err(|_| err("non-hex character"))
        };
        let hi = half(hi)?;
        let lo = half(lo)?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl Serialize for Lsn {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LsnVisitor;
        impl Visitor<'_> for LsnVisitor {
            type Value = Lsn;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an LSN string like \"16/B374D848\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Lsn, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(LsnVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_matches_postgres() {
        assert_eq!(Lsn(0).to_string(), "0/0");
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
        assert_eq!(Lsn(u64::MAX).to_string(), "FFFFFFFF/FFFFFFFF");
        assert_eq!(Lsn(0x1_0000_0000).to_string(), "1/0");
        assert_eq!(Lsn(0xA).to_string(), "0/A");
    }

    #[test]
    fn parse_round_trips() {
        for s in ["16/B374D848", "0/0", "FFFFFFFF/FFFFFFFF", "1/0", "0/1"] {
            let lsn: Lsn = s.parse().unwrap();
            assert_eq!(lsn.to_string(), s);
        }
        for v in [0u64, 1, 0x16_B374_D848, u64::MAX, 1 << 32, (1 << 32) - 1] {
            assert_eq!(Lsn(v).to_string().parse::<Lsn>().unwrap(), Lsn(v));
        }
    }

    #[test]
    fn parse_is_case_insensitive_and_accepts_padding() {
        assert_eq!("16/b374d848".parse::<Lsn>().unwrap(), Lsn(0x16_B374_D848));
        assert_eq!("00000016/0B374D84".parse::<Lsn>().unwrap(), Lsn(0x16_0B37_4D84));
    }

    #[test]
    fn parse_rejects_garbage() {
        for s in [
            "",
            "/",
            "16",
            "16/",
            "/B374D848",
            "1/2/3",
            "123456789/0",
            "0/123456789",
            "G/0",
            "+1/0",
            "-1/0",
            " 1/0",
            "1/0 ",
            "0x1/0",
        ] {
            let e = s.parse::<Lsn>().unwrap_err();
            assert!(e.to_string().contains("invalid LSN"), "{s:?}: {e}");
        }
    }

    #[test]
    fn serde_as_string() {
        let lsn = Lsn(0x16_B374_D848);
        let json = serde_json::to_string(&lsn).unwrap();
        assert_eq!(json, "\"16/B374D848\"");
        assert_eq!(serde_json::from_str::<Lsn>(&json).unwrap(), lsn);
        assert!(serde_json::from_str::<Lsn>("\"nope\"").is_err());
        assert!(serde_json::from_str::<Lsn>("42").is_err());
    }

    #[test]
    fn validity_and_order() {
        assert!(!Lsn::INVALID.is_valid());
        assert!(Lsn(1).is_valid());
        assert_eq!(Lsn::default(), Lsn::INVALID);
        assert!(Lsn(0x1_0000_0000) > Lsn(0xFFFF_FFFF));
        assert_eq!(Lsn(7).as_u64(), 7);
    }
}
