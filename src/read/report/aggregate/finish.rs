//! The finished [`Report`]: sessions renumbered by rows, lists sorted and cut to [`TOP`], bursts found.

use super::Aggregator;
use crate::read::report::headline::headline;
use crate::read::report::TOP;
use crate::read::summary::*;
use crate::sink::record::format_unix_micros;

impl Aggregator {
    /// The finished report.
    pub fn report(&self, files: &[String], lines: u64, skipped: u64) -> Report {
        let mut ids: Vec<usize> =
            (0..self.sessions.len()).filter(|&i| self.sessions[i].rows + self.sessions[i].truncates > 0).collect();
        ids.sort_by(|&a, &b| {
            let (x, y) = (&self.sessions[a], &self.sessions[b]);
            (y.rows, y.truncates).cmp(&(x.rows, x.truncates)).then(x.first.cmp(&y.first))
        });
        // Output ids are positions in the sorted list, so `sessions[id]` works for readers of the JSON.
        let mut new_id = vec![usize::MAX; self.sessions.len()];
        for (n, &i) in ids.iter().enumerate() {
            new_id[i] = n;
        }
        let sessions = self.sessions_out(&ids);
        let (minutes, median, threshold) = self.minutes_out(&new_id);
        let (bin_seconds, shown) = self.bins.shown();
        let bin_median = median_of(shown.iter().map(|b| b.1.rows).collect());
        let bin_threshold = (3 * bin_median).max(10);
        let bins = shown
            .iter()
            .map(|(t, a)| BinOut {
                start: format_unix_micros(*t)[..19].to_owned() + "Z",
                rows: a.rows,
                truncates: a.truncates,
                burst: a.rows > bin_threshold,
                sessions: session_list(&a.sessions, &new_id),
            })
            .collect();
        let (shapes, statements_other) = self.shapes_out();
        let (prefixes, prefixes_other) = self.prefixes_out();
        let mut tables: Vec<TableOut> =
            self.tables.iter().map(|(k, v)| TableOut { table: k.clone(), rows: v.0, truncates: v.1 }).collect();
        tables.sort_by(|a, b| (b.rows, b.truncates).cmp(&(a.rows, a.truncates)).then(a.table.cmp(&b.table)));
        let principals = self.principals_out();
        let unattributed = self.unattributed_out();
        let headline = headline(self.rows, self.truncates, principals.first(), &unattributed);
        Report {
            format: 1,
            files: files.to_vec(),
            lines,
            skipped_lines: skipped,
            transactions: self.transactions,
            rows: self.rows,
            truncates: self.truncates,
            first_time: self.first.map(format_unix_micros),
            last_time: self.last.map(format_unix_micros),
            sessions,
            unattributed,
            minutes,
            median_rows_per_minute: median,
            burst_threshold: threshold,
            statements: shapes,
            statements_other,
            key_prefixes: prefixes,
            key_prefixes_other: prefixes_other,
            tables,
            gaps: self.gaps.clone(),
            aborted_attempts: self.aborted_attempts,
            aborted_rows: self.aborted_rows,
            headline: Some(headline),
            inferred_rows: self.inferred_rows,
            by_application: self.groups_out(0),
            by_user: self.groups_out(1),
            by_client_host: self.groups_out(2),
            principals,
            bin_seconds: bin_seconds as u64,
            bins,
            median_rows_per_bin: bin_median,
            bin_burst_threshold: bin_threshold,
        }
    }

    /// Rows per minute, with their median and the burst threshold derived from it.
    fn minutes_out(&self, new_id: &[usize]) -> (Vec<MinuteOut>, u64, u64) {
        let median = median_of(self.minutes.values().map(|m| m.rows).collect());
        let threshold = (3 * median).max(100);
        let minutes = self
            .minutes
            .iter()
            .map(|(&m, a)| MinuteOut {
                minute: format_unix_micros(m * 60_000_000)[..16].to_owned() + "Z",
                rows: a.rows,
                truncates: a.truncates,
                burst: a.rows > threshold,
                sessions: session_list(&a.sessions, new_id),
            })
            .collect();
        (minutes, median, threshold)
    }

    /// The sessions `ids` (in that order), numbered by their position.
    fn sessions_out(&self, ids: &[usize]) -> Vec<SessionOut> {
        ids.iter()
            .enumerate()
            .map(|(n, &i)| {
                let s = &self.sessions[i];
                let mut st: Vec<StatementOut> = s
                    .statements
                    .iter()
                    .map(|(q, r, t, _)| StatementOut { statement: q.clone(), rows: *r, transactions: *t })
                    .collect();
                st.sort_by(|a, b| b.rows.cmp(&a.rows).then(a.statement.cmp(&b.statement)));
                SessionOut {
                    id: n,
                    pid: s.pid,
                    backend_start: s.backend_start.clone(),
                    user: s.user.clone(),
                    application_name: s.application_name.clone(),
                    client: s.client.clone(),
                    attributed_by: s.attributed_by.clone(),
                    transactions: s.transactions,
                    rows: s.rows,
                    truncates: s.truncates,
                    first_time: format_unix_micros(s.first),
                    last_time: format_unix_micros(s.last),
                    distinct_statements: s.statements.len() as u64 + s.statements_other.statements,
                    statements: st,
                    statements_other: s.statements_other.clone(),
                    inferred: s.inferred,
                    client_host: s.client_host.clone(),
                    period_s: s.period.period_s(),
                }
            })
            .collect()
    }

    /// The top statement shapes, and what the others add up to.
    fn shapes_out(&self) -> (Vec<ShapeOut>, ShapesOther) {
        let mut shapes: Vec<ShapeOut> = self
            .shapes
            .iter()
            .map(|(k, v)| ShapeOut {
                shape: k.clone(),
                rows: v.rows,
                transactions: v.transactions,
                sessions: v.sessions.len() as u64,
                rows_inferred: v.rows_inferred,
                period_s: v.period.period_s(),
            })
            .collect();
        shapes.sort_by(|a, b| b.rows.cmp(&a.rows).then(a.shape.cmp(&b.shape)));
        let mut other = self.shapes_other.clone();
        for s in shapes.iter().skip(TOP) {
            other.shapes += 1;
            other.rows += s.rows;
            other.transactions += s.transactions;
        }
        shapes.truncate(TOP);
        (shapes, other)
    }

    /// The top key prefixes, and what the others add up to.
    fn prefixes_out(&self) -> (Vec<PrefixOut>, PrefixesOther) {
        let mut prefixes: Vec<PrefixOut> = self
            .prefixes
            .iter()
            .map(|(k, v)| PrefixOut {
                prefix: k.clone(),
                rows: *v,
                django: crate::read::rollup::django_parts(k).is_some(),
            })
            .collect();
        prefixes.sort_by(|a, b| b.rows.cmp(&a.rows).then(a.prefix.cmp(&b.prefix)));
        let mut other = self.prefixes_other.clone();
        for p in prefixes.iter().skip(TOP) {
            other.prefixes += 1;
            other.rows += p.rows;
        }
        prefixes.truncate(TOP);
        (prefixes, other)
    }

    /// A roll-up (0 application, 1 user, 2 client host), by rows then truncates; groups without either
    /// (filtered out) are left out.
    fn groups_out(&self, kind: u8) -> Vec<GroupOut> {
        let mut v: Vec<GroupOut> = self
            .groups
            .iter()
            .filter(|(k, g)| k.0 == kind && g.rows + g.truncates > 0)
            .map(|(k, g)| GroupOut {
                name: k.1.clone().or(k.2.clone()).or(k.3.clone()),
                rows: g.rows,
                rows_inferred: g.rows_inferred,
                truncates: g.truncates,
                transactions: g.transactions,
                sessions: g.sessions,
                row_share_pct: pct(g.rows, self.rows),
                period_s: g.period.period_s(),
            })
            .collect();
        v.sort_by(|a, b| (b.rows, b.truncates).cmp(&(a.rows, a.truncates)).then(a.name.cmp(&b.name)));
        v.truncate(TOP);
        v
    }

    /// The principals (application, user, client host), by rows then truncates.
    fn principals_out(&self) -> Vec<PrincipalOut> {
        let mut principals: Vec<PrincipalOut> = self
            .groups
            .iter()
            .filter(|(k, g)| k.0 == 3 && g.rows + g.truncates > 0)
            .map(|(k, g)| PrincipalOut {
                application_name: k.1.clone(),
                user: k.2.clone(),
                client_host: k.3.clone().unwrap_or_default(),
                rows: g.rows,
                rows_inferred: g.rows_inferred,
                truncates: g.truncates,
                transactions: g.transactions,
                sessions: g.sessions,
                row_share_pct: pct(g.rows, self.rows),
                period_s: g.period.period_s(),
                top_shape: g.shapes.iter().max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0))).map(|s| s.0.clone()),
            })
            .collect();
        principals.sort_by(|a, b| {
            (b.rows, b.truncates)
                .cmp(&(a.rows, a.truncates))
                .then(a.application_name.cmp(&b.application_name))
                .then(a.user.cmp(&b.user))
                .then(a.client_host.cmp(&b.client_host))
        });
        principals.truncate(TOP);
        principals
    }

    fn unattributed_out(&self) -> Unattributed {
        let mut reasons: Vec<ReasonOut> =
            self.un_reasons.iter().map(|(r, n)| ReasonOut { reason: r.clone(), rows: *n }).collect();
        reasons.sort_by(|a, b| b.rows.cmp(&a.rows).then(a.reason.cmp(&b.reason)));
        reasons.truncate(TOP);
        Unattributed {
            rows: self.un_rows,
            truncates: self.un_truncates,
            transactions: self.un_transactions,
            row_share_pct: pct(self.un_rows + self.un_truncates, self.rows + self.truncates),
            transaction_share_pct: pct(self.un_transactions, self.transactions),
            ambiguous_rows: self.un_ambiguous,
            reasons,
        }
    }
}

/// `part` of `whole` in percent, to one decimal.
fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        (part as f64 * 1000.0 / whole as f64).round() / 10.0
    }
}

/// A minute's or bin's rows by session, under the sessions' output ids (`new_id`), unattributed last.
fn session_list(v: &[(Option<usize>, u64)], new_id: &[usize]) -> Vec<MinuteSession> {
    let mut sess: Vec<MinuteSession> = v
        .iter()
        .filter(|(_, r)| *r > 0)
        .map(|&(s, r)| MinuteSession { session: s.map(|i| new_id[i]), rows: r })
        .collect();
    sess.sort_by_key(|s| s.session.unwrap_or(usize::MAX));
    sess
}

fn median_of(mut counts: Vec<u64>) -> u64 {
    counts.sort_unstable();
    if counts.is_empty() {
        0
    } else if counts.len() % 2 == 1 {
        counts[counts.len() / 2]
    } else {
        (counts[counts.len() / 2 - 1] + counts[counts.len() / 2]) / 2
    }
}
