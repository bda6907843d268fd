//! `report`'s terminal rendering.

use std::borrow::Cow;
use std::io::{self, Write};

use super::headline::principal_name;
use crate::read::one_line;
use crate::read::summary::Report;
use crate::term::clean;

pub(super) fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn or_dash(s: &Option<String>) -> Cow<'_, str> {
    clean(s.as_deref().unwrap_or("-"))
}

/// The terminal rendering. Every string that comes from the log is escaped (`crate::term`): the
/// culprit controls statements, keys, application names and more.
pub fn render_text(r: &Report, w: &mut impl Write) -> io::Result<()> {
    totals(r, w)?;
    unattributed(r, w)?;
    who(r, w)?;
    sessions(r, w)?;
    when(r, w)?;
    what(r, w)
}

/// The title, the headline, the totals, gaps and aborted attempts.
fn totals(r: &Report, w: &mut impl Write) -> io::Result<()> {
    writeln!(
        w,
        "walwitness report: {} ({} lines{})",
        clean(&r.files.join(", ")),
        thousands(r.lines),
        if r.skipped_lines > 0 {
            format!(", {} damaged lines skipped", thousands(r.skipped_lines))
        } else {
            String::new()
        }
    )?;
    if let Some(h) = &r.headline {
        writeln!(w, "\n{}\n", clean(&h.text))?;
    }
    writeln!(
        w,
        "Deleted rows: {} in {} committed transactions; {} truncates; from {} to {}",
        thousands(r.rows),
        thousands(r.transactions),
        thousands(r.truncates),
        or_dash(&r.first_time),
        or_dash(&r.last_time)
    )?;
    if !r.gaps.is_empty() {
        writeln!(w, "GAPS: {} stretch(es) of WAL not covered — deletes there may be missing:", r.gaps.len())?;
        for g in &r.gaps {
            let to = if g.open { "(still open)" } else { g.to_lsn.as_str() };
            let table = g.table.as_deref().map(|t| format!(", {}", clean(t))).unwrap_or_default();
            writeln!(
                w,
                "  {}  LSN {} .. {}  ({}{table})",
                clean(&g.time),
                clean(&g.from_lsn),
                clean(to),
                clean(&g.reason)
            )?;
        }
    }
    if r.aborted_attempts > 0 {
        writeln!(
            w,
            "Aborted attempts (rolled back, nothing deleted): {} transactions or savepoints, {} rows",
            thousands(r.aborted_attempts),
            thousands(r.aborted_rows)
        )?;
    }
    Ok(())
}

/// The unattributed share, why, and the inferred rows.
fn unattributed(r: &Report, w: &mut impl Write) -> io::Result<()> {
    let u = &r.unattributed;
    writeln!(
        w,
        "Not attributed: {} rows ({:.1}%), {} transactions ({:.1}%)",
        thousands(u.rows),
        u.row_share_pct,
        thousands(u.transactions),
        u.transaction_share_pct
    )?;
    if u.ambiguous_rows > 0 {
        writeln!(w, "  of which {} rows had several candidate sessions (none is named)", thousands(u.ambiguous_rows))?;
    }
    for reason in u.reasons.iter().filter(|x| !x.reason.is_empty()).take(5) {
        writeln!(w, "  {:>9} rows  {}", thousands(reason.rows), clean(&one_line(&reason.reason, 120)))?;
    }
    if r.inferred_rows > 0 {
        writeln!(
            w,
            "Inferred, not evidence: {} rows attributed to the one session that could have run them (marked \"inferred\")",
            thousands(r.inferred_rows)
        )?;
    }
    Ok(())
}

/// WHO: principals, then the roll-ups that have more than one entry.
fn who(r: &Report, w: &mut impl Write) -> io::Result<()> {
    writeln!(w, "\nWHO — application (user@client host), across sessions")?;
    for p in r.principals.iter().take(20) {
        writeln!(
            w,
            "  {:>9} rows {:>6} {:>7} txns {:>5} sessions  {}{}{}",
            thousands(p.rows),
            format!("{:.1}%", p.row_share_pct),
            thousands(p.transactions),
            thousands(p.sessions),
            clean(&principal_name(p)),
            period_note(p.period_s),
            inferred_note(p.rows_inferred)
        )?;
    }
    if r.principals.is_empty() {
        writeln!(w, "  (no attributed rows)")?;
    }
    for (title, list) in [("application", &r.by_application), ("user", &r.by_user), ("client host", &r.by_client_host)]
    {
        if list.len() < 2 {
            continue;
        }
        writeln!(w, "  by {title}:")?;
        for g in list.iter().take(10) {
            writeln!(
                w,
                "  {:>9} rows {:>6} {:>7} txns {:>5} sessions  {}{}{}",
                thousands(g.rows),
                format!("{:.1}%", g.row_share_pct),
                thousands(g.transactions),
                thousands(g.sessions),
                or_dash(&g.name),
                period_note(g.period_s),
                inferred_note(g.rows_inferred)
            )?;
        }
    }
    Ok(())
}

/// WHO: the top sessions and their statements.
fn sessions(r: &Report, w: &mut impl Write) -> io::Result<()> {
    writeln!(w, "\nWHO — per session (pid + backend start)")?;
    const SHOWN_SESSIONS: usize = 20;
    for s in r.sessions.iter().take(SHOWN_SESSIONS) {
        writeln!(
            w,
            "  #{} pid {} started {}  user {}  app {}  client {}  ({}){}",
            s.id,
            s.pid,
            or_dash(&s.backend_start),
            or_dash(&s.user),
            or_dash(&s.application_name),
            clean(&s.client),
            or_dash(&s.attributed_by),
            if s.inferred { "  INFERRED, not evidence" } else { "" }
        )?;
        writeln!(
            w,
            "      {} rows, {} truncates in {} transactions, {} … {}; {} distinct statement{}{}",
            thousands(s.rows),
            thousands(s.truncates),
            thousands(s.transactions),
            clean(&s.first_time),
            clean(&s.last_time),
            s.distinct_statements,
            if s.distinct_statements == 1 { "" } else { "s" },
            period_note(s.period_s)
        )?;
        for st in s.statements.iter().take(5) {
            writeln!(w, "      {:>9} rows  {}", thousands(st.rows), clean(&one_line(&st.statement, 120)))?;
        }
        let more = s.statements.len().saturating_sub(5) as u64 + s.statements_other.statements;
        if more > 0 {
            writeln!(w, "      … and {more} more statements")?;
        }
    }
    if r.sessions.len() > SHOWN_SESSIONS {
        writeln!(
            w,
            "  … and {} more sessions (--format json or --html has them all)",
            r.sessions.len() - SHOWN_SESSIONS
        )?;
    }
    if r.sessions.is_empty() {
        writeln!(w, "  (no attributed rows)")?;
    }
    Ok(())
}

/// WHEN: rows per bin, only the bursts when there are many bins.
fn when(r: &Report, w: &mut impl Write) -> io::Result<()> {
    let width = crate::read::rollup::fmt_width(r.bin_seconds as i64);
    writeln!(
        w,
        "\nWHEN — rows per {width} (UTC; median {}, burst above {})",
        thousands(r.median_rows_per_bin),
        thousands(r.bin_burst_threshold)
    )?;
    let max = r.bins.iter().map(|m| m.rows).max().unwrap_or(0).max(1);
    let show_all = r.bins.len() <= 60;
    let mut hidden = 0;
    for m in &r.bins {
        if !show_all && !m.burst {
            hidden += 1;
            continue;
        }
        let bar = "#".repeat(((m.rows * 40).div_ceil(max)) as usize);
        let label = m.start.replace('T', " ");
        let label = label.trim_end_matches('Z');
        let label = if r.bin_seconds.is_multiple_of(60) { label.strip_suffix(":00").unwrap_or(label) } else { label };
        writeln!(w, "  {}  {:>9}  {bar}{}", clean(label), thousands(m.rows), if m.burst { "  <- burst" } else { "" })?;
    }
    if hidden > 0 {
        writeln!(w, "  ({hidden} quieter bins not shown; --format json or --html has them all)")?;
    }
    Ok(())
}

/// WHAT: statement shapes, key prefixes, tables.
fn what(r: &Report, w: &mut impl Write) -> io::Result<()> {
    writeln!(w, "\nWHAT — statement shapes")?;
    for s in &r.statements {
        writeln!(
            w,
            "  {:>9} rows {:>7} txns  {}{}{}",
            thousands(s.rows),
            thousands(s.transactions),
            clean(&one_line(&s.shape, 140)),
            period_note(s.period_s),
            inferred_note(s.rows_inferred)
        )?;
    }
    if r.statements_other.shapes > 0 {
        writeln!(
            w,
            "  {:>9} rows {:>7} txns  (other: {} shapes)",
            thousands(r.statements_other.rows),
            thousands(r.statements_other.transactions),
            r.statements_other.shapes
        )?;
    }
    writeln!(w, "\nWHAT — key prefixes")?;
    for p in &r.key_prefixes {
        writeln!(w, "  {:>9} rows  {}", thousands(p.rows), clean(&p.prefix))?;
    }
    if r.key_prefixes_other.prefixes > 0 {
        writeln!(
            w,
            "  {:>9} rows  (other: {} prefixes)",
            thousands(r.key_prefixes_other.rows),
            r.key_prefixes_other.prefixes
        )?;
    }
    writeln!(w, "\nTables")?;
    for t in &r.tables {
        writeln!(w, "  {:>9} rows {:>5} truncates  {}", thousands(t.rows), thousands(t.truncates), clean(&t.table))?;
    }
    Ok(())
}

/// `  every ~…` for a regular period.
fn period_note(p: Option<f64>) -> String {
    p.map(|p| format!("  every ~{}", crate::read::rollup::fmt_period(p))).unwrap_or_default()
}

/// `  (… inferred)` when some rows are inferred.
fn inferred_note(n: u64) -> String {
    if n > 0 {
        format!("  ({} inferred)", thousands(n))
    } else {
        String::new()
    }
}
