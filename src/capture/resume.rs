//! Where a capture starts, given what the log says about the run that wrote it last and what the server
//! says about itself. Pure: the caller gathers the facts (IDENTIFY_SYSTEM, the slot, TIMELINE_HISTORY).
//!
//! The log's positions mean something only on the server, database and history that produced them. A
//! log resumed against another cluster (a fresh server at the same address, a restored copy with a new
//! system identifier, a `pg_upgrade`), another database, or a server whose history went back behind the
//! log (point-in-time recovery, a restored file-system snapshot, `pg_rewind`) must not skip that server's
//! transactions as "already in the log": the capture then starts from the slot, skips only what is
//! provably in the log, and writes a `gap` record saying why.
use crate::protocol::Lsn;
use crate::sink::writer::{LastRun, Recovery};

/// What the server and slot look like now.
#[derive(Debug, Clone)]
pub struct Server<'a> {
    pub system_identifier: &'a str,
    pub database: &'a str,
    pub timeline: u32,
    /// IDENTIFY_SYSTEM `xlogpos`: the server's WAL flush position.
    pub flush_lsn: Lsn,
    pub slot: &'a str,
    /// The slot's confirmed position, or where it was just created.
    pub slot_start: Lsn,
    /// The slot did not exist (or was invalidated and dropped) and was created by this run.
    pub slot_created: bool,
    /// The slot was found invalidated by the server (`wal_status = lost`).
    pub slot_invalidated: bool,
    pub two_phase: bool,
    /// The current timeline's history (`TIMELINE_HISTORY`): `(timeline, where it ended)`, oldest first.
    /// Only needed when the log's last run was on another timeline.
    pub history: Option<&'a [(u32, Lsn)]>,
}

/// A gap to record at start: deletes between the two positions may be missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartGap {
    pub reason: &'static str,
    pub from_lsn: Lsn,
    pub to_lsn: Lsn,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// START_REPLICATION position.
    pub start_lsn: Lsn,
    /// Transactions ending at or below this are already in the log and are skipped.
    pub resume_after: Lsn,
    pub gap: Option<StartGap>,
    /// The log's positions hold on this server: gaps the last run left open close at `start_lsn`.
    pub close_open_gaps: bool,
}

/// The timeline whose history must be read: the log's last run was on another one.
pub fn history_needed(recovery: &Recovery, current: u32) -> bool {
    recovery.last_run.as_ref().and_then(|r| r.timeline).is_some_and(|t| t != current)
}

/// Parses the content of a timeline history file (`TIMELINE_HISTORY`): lines of `parentTLI<TAB>X/X<TAB>reason`,
/// `#` comments and blank lines ignored; lines that do not parse are skipped.
pub fn parse_history(text: &str) -> Vec<(u32, Lsn)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let tli = f.next()?.parse::<u32>().ok()?;
            let end = f.next()?.parse::<Lsn>().ok()?;
            Some((tli, end))
        })
        .collect()
}

pub fn plan(recovery: &Recovery, s: &Server) -> Plan {
    let mark = recovery.resume_mark();
    let normal_start = if s.two_phase { s.slot_start } else { s.slot_start.max(mark) };
    let Some(run) = recovery.last_run.as_ref() else {
        return Plan { start_lsn: normal_start, resume_after: mark, gap: None, close_open_gaps: true };
    };

    // Another server or database: none of the log's positions say anything about this one.
    let other = if !run.system_identifier.is_empty() && run.system_identifier != s.system_identifier {
        Some((
            "other_cluster",
            format!(
                "the log's last run captured the cluster with system identifier {} (database {}, slot {}) up to LSN {}; this server is cluster {}, whose positions are unrelated: nothing of this server's before LSN {} is in the log (nor, from then on, anything of the other cluster's)",
                run.system_identifier, run.database, run.slot, run.covered_to, s.system_identifier, s.slot_start
            ),
        ))
    } else if !run.database.is_empty() && run.database != s.database {
        Some((
            "other_database",
            format!(
                "the log's last run captured database {} (slot {}) up to LSN {}; this capture is of database {}: nothing of it before LSN {} is in the log",
                run.database, run.slot, run.covered_to, s.database, s.slot_start
            ),
        ))
    } else {
        None
    };
    if let Some((reason, detail)) = other {
        return Plan {
            start_lsn: s.slot_start,
            resume_after: Lsn::INVALID,
            gap: Some(StartGap { reason, from_lsn: Lsn::INVALID, to_lsn: s.slot_start, detail }),
            close_open_gaps: false,
        };
    }

    if let Some(p) = rewound(run, mark, s) {
        return p;
    }

    let gap = if s.slot_invalidated {
        Some(StartGap {
            reason: "slot_invalidated",
            from_lsn: run.covered_to,
            to_lsn: normal_start,
            detail: format!(
                "replication slot {} was invalidated by the server (wal_status = lost): the WAL after LSN {} it needed is gone",
                s.slot, run.covered_to
            ),
        })
    } else if s.slot_created && run.slot == s.slot && run.left_slot() {
        Some(StartGap {
            reason: "slot_missing",
            from_lsn: run.covered_to,
            to_lsn: normal_start,
            detail: format!(
                "replication slot {}, which the log's last run left to resume from at LSN {}, is gone (dropped by someone, or by the server) and was created again",
                s.slot, run.covered_to
            ),
        })
    } else if run.slot != s.slot && run.left_slot() && s.slot_start > run.covered_to {
        Some(StartGap {
            reason: "other_slot",
            from_lsn: run.covered_to,
            to_lsn: s.slot_start,
            detail: format!(
                "the log's last run captured through slot {} up to LSN {}; this run uses slot {}, which starts at LSN {}",
                run.slot, run.covered_to, s.slot, s.slot_start
            ),
        })
    } else {
        None
    };
    Plan { start_lsn: normal_start, resume_after: mark, gap, close_open_gaps: true }
}

/// The server's history no longer contains the log's last positions: its timeline forked off the log's
/// before them, or it has not even reached them.
fn rewound(run: &LastRun, mark: Lsn, s: &Server) -> Option<Plan> {
    let reached = run.covered_to.max(mark);
    // Where the server's history left the log's timeline: `Some(None)` if the fork point is unknown.
    let fork: Option<Option<Lsn>> = match run.timeline {
        Some(t) if t != s.timeline => {
            match s.history.and_then(|h| h.iter().find(|(tli, _)| *tli == t).map(|(_, end)| *end)) {
                Some(end) if end < reached => Some(Some(end)),
                Some(_) => None,
                None => Some(None),
            }
        }
        _ => None,
    };
    let fork = match fork {
        Some(f) => Some(f),
        None if s.flush_lsn < reached => Some(None),
        None => None,
    }?;
    // What is provably in both the log and the server's history.
    let common = match fork {
        Some(end) => end.min(mark),
        // A slot that survived the rewind holds a position of the shared history.
        None if !s.slot_created => s.slot_start.min(mark),
        None => Lsn::INVALID,
    };
    let from_lsn = match fork {
        Some(end) => end,
        None => common,
    };
    let tl = |t: Option<u32>| t.map_or_else(|| "unknown".to_owned(), |t| t.to_string());
    let detail = format!(
        "the log's last run reached LSN {} on timeline {}, but this server (same system identifier {}) is on timeline {} at LSN {}{}: it was restored to an earlier point (point-in-time recovery, a restored snapshot, pg_rewind). Records of the log after LSN {} may be of a history the server no longer has; this run starts from slot {} at LSN {} and skips only transactions ending at or below LSN {}",
        reached,
        tl(run.timeline),
        s.system_identifier,
        s.timeline,
        s.flush_lsn,
        match fork {
            Some(end) => format!(", and its history left timeline {} at LSN {end}", tl(run.timeline)),
            None => String::new(),
        },
        from_lsn,
        s.slot,
        s.slot_start,
        common
    );
    Some(Plan {
        start_lsn: s.slot_start,
        resume_after: common,
        gap: Some(StartGap { reason: "rewound", from_lsn, to_lsn: s.slot_start.max(from_lsn), detail }),
        close_open_gaps: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(sysid: &str, db: &str, slot: &str, tli: Option<u32>, covered: u64, commit: Option<u64>) -> Recovery {
        Recovery {
            last_commit_end: commit.map(Lsn),
            last_run: Some(LastRun {
                slot: slot.into(),
                covered_to: Lsn(covered),
                stopped: None,
                system_identifier: sysid.into(),
                database: db.into(),
                timeline: tli,
                resume_after: Some(Lsn(0)),
                last_commit_end: commit.map(Lsn),
                open_gaps: Vec::new(),
            }),
            ..Recovery::default()
        }
    }

    fn server(slot_start: u64, flush: u64) -> Server<'static> {
        Server {
            system_identifier: "1",
            database: "app",
            timeline: 1,
            flush_lsn: Lsn(flush),
            slot: "s",
            slot_start: Lsn(slot_start),
            slot_created: false,
            slot_invalidated: false,
            two_phase: false,
            history: None,
        }
    }

    #[test]
    fn a_plain_resume_starts_at_the_later_of_slot_and_log() {
        let r = run("1", "app", "s", Some(1), 500, Some(500));
        let p = plan(&r, &server(300, 900));
        assert_eq!(p, Plan { start_lsn: Lsn(500), resume_after: Lsn(500), gap: None, close_open_gaps: true });
        let p = plan(&r, &Server { two_phase: true, ..server(300, 900) });
        assert_eq!(p.start_lsn, Lsn(300));
        assert_eq!(p.resume_after, Lsn(500));
        let p = plan(&Recovery::default(), &server(300, 900));
        assert_eq!(p.start_lsn, Lsn(300));
        assert_eq!(p.gap, None);
    }

    #[test]
    fn another_cluster_starts_from_the_slot_and_skips_nothing() {
        let r = run("2", "app", "s", Some(1), 50_000, Some(50_000));
        let p = plan(&r, &Server { slot_created: true, ..server(300, 900) });
        assert_eq!(p.start_lsn, Lsn(300));
        assert_eq!(p.resume_after, Lsn(0));
        assert!(!p.close_open_gaps);
        let g = p.gap.unwrap();
        assert_eq!((g.reason, g.from_lsn, g.to_lsn), ("other_cluster", Lsn(0), Lsn(300)));
        assert!(g.detail.contains("system identifier 2"), "{}", g.detail);
        let r = run("1", "other", "s", Some(1), 50_000, Some(50_000));
        assert_eq!(plan(&r, &server(300, 900)).gap.unwrap().reason, "other_database");
        // An unknown identifier is not a mismatch.
        let r = run("", "app", "s", Some(1), 500, Some(500));
        assert_eq!(plan(&r, &server(300, 900)).gap, None);
    }

    #[test]
    fn a_server_behind_the_log_was_rewound() {
        let r = run("1", "app", "s", Some(1), 5000, Some(5000));
        // The slot came back with the data: it marks shared history.
        let p = plan(&r, &server(300, 900));
        assert_eq!((p.start_lsn, p.resume_after), (Lsn(300), Lsn(300)));
        assert_eq!(p.gap.as_ref().unwrap().reason, "rewound");
        // A slot created after the restore proves nothing: skip nothing.
        let p = plan(&r, &Server { slot_created: true, ..server(800, 900) });
        assert_eq!((p.start_lsn, p.resume_after), (Lsn(800), Lsn(0)));
        let g = p.gap.unwrap();
        assert_eq!((g.from_lsn, g.to_lsn), (Lsn(0), Lsn(800)));
    }

    #[test]
    fn a_timeline_fork_before_the_log_is_found_even_when_the_server_is_ahead() {
        let r = run("1", "app", "s", Some(1), 5000, Some(5000));
        let h = [(1u32, Lsn(2000))];
        let p = plan(&r, &Server { timeline: 2, history: Some(&h), ..server(1500, 90_000) });
        assert_eq!((p.start_lsn, p.resume_after), (Lsn(1500), Lsn(2000)));
        let g = p.gap.unwrap();
        assert_eq!((g.reason, g.from_lsn, g.to_lsn), ("rewound", Lsn(2000), Lsn(2000)));
        // Promoted after the log's last position: a plain resume.
        let h = [(1u32, Lsn(6000))];
        let p = plan(&r, &Server { timeline: 2, history: Some(&h), ..server(1500, 90_000) });
        assert_eq!(p.gap, None);
        assert_eq!(p.start_lsn, Lsn(5000));
        // The log's timeline is not in the server's history at all.
        let h = [(3u32, Lsn(6000))];
        let p = plan(&r, &Server { timeline: 4, history: Some(&h), ..server(1500, 90_000) });
        assert_eq!(p.gap.unwrap().reason, "rewound");
        assert_eq!(p.resume_after, Lsn(1500));
    }

    #[test]
    fn another_slot_records_what_it_cannot_cover() {
        let r = run("1", "app", "old", Some(1), 500, Some(500));
        let p = plan(&r, &Server { slot_created: true, ..server(800, 900) });
        let g = p.gap.unwrap();
        assert_eq!((g.reason, g.from_lsn, g.to_lsn), ("other_slot", Lsn(500), Lsn(800)));
        // A slot behind the log loses nothing: the log's transactions are skipped.
        let p = plan(&r, &server(300, 900));
        assert_eq!(p.gap, None);
        assert_eq!(p.resume_after, Lsn(500));
    }

    #[test]
    fn missing_and_invalidated_slots() {
        let r = run("1", "app", "s", Some(1), 500, Some(500));
        let p = plan(&r, &Server { slot_created: true, ..server(800, 900) });
        let g = p.gap.unwrap();
        assert_eq!((g.reason, g.from_lsn, g.to_lsn), ("slot_missing", Lsn(500), Lsn(800)));
        let p = plan(&r, &Server { slot_created: true, slot_invalidated: true, ..server(800, 900) });
        assert_eq!(p.gap.unwrap().reason, "slot_invalidated");
    }

    #[test]
    fn history_files_parse() {
        let h = parse_history("1\t0/3000000\tno recovery target specified\n\n# c\n2\t1/A0\tx\nbad\n");
        assert_eq!(h, [(1, Lsn(0x300_0000)), (2, Lsn(0x1_0000_00A0))]);
    }
}
