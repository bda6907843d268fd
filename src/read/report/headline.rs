//! The report's first sentence, and how a principal is named in it and in the text.

use super::text::thousands;
use crate::read::one_line;
use crate::read::summary::{Headline, PrincipalOut, Unattributed};

/// How a principal is named: `app (user@host)`, the statement shape when the application is unset.
pub(super) fn principal_name(p: &PrincipalOut) -> String {
    let user = p.user.as_deref().unwrap_or("?");
    let whom = if p.client_host == "local socket" {
        format!("{user}, local socket")
    } else {
        format!("{user}@{}", p.client_host)
    };
    match (p.application_name.as_deref().filter(|a| !a.is_empty()), &p.top_shape) {
        (Some(app), _) => format!("{app} ({whom})"),
        (None, Some(shape)) => format!("\"{}\" ({whom})", one_line(shape, 80)),
        (None, None) => format!("a client without application_name ({whom})"),
    }
}

/// The report's first sentence: who deleted the most rows, their share, and how regularly.
pub(super) fn headline(rows: u64, truncates: u64, top: Option<&PrincipalOut>, u: &Unattributed) -> Headline {
    use crate::read::rollup::{fmt_period, fmt_share};
    let none = |text: String| Headline {
        text,
        application_name: None,
        user: None,
        client_host: None,
        shape: None,
        rows: 0,
        truncates: 0,
        row_share_pct: 0.0,
        rows_inferred: 0,
        basis: "none".into(),
        period_s: None,
    };
    if rows == 0 && truncates == 0 {
        return none("No committed deletes in this log.".into());
    }
    let Some(p) = top else {
        let mut text = if rows > 0 {
            format!("None of the {} deleted rows can be attributed to a session", thousands(rows))
        } else {
            format!("None of the {} TRUNCATEs can be attributed to a session", thousands(truncates))
        };
        if let Some(r) = u.reasons.first().filter(|r| !r.reason.is_empty()) {
            text.push_str(&format!(" ({})", r.reason));
        }
        if u.ambiguous_rows > 0 {
            text.push_str(&format!(
                "; {} rows had several candidate sessions, and none is named",
                thousands(u.ambiguous_rows)
            ));
        }
        text.push('.');
        return none(text);
    };
    let who = principal_name(p);
    let share = if rows > 0 { (p.rows as f64 * 1000.0 / rows as f64).round() / 10.0 } else { 0.0 };
    let mut text = if rows > 0 && p.rows > 0 {
        format!("{who} deleted {} of the rows", fmt_share(share))
    } else {
        format!("{who} ran {} of the {} TRUNCATEs", thousands(p.truncates), thousands(truncates))
    };
    let basis = if p.rows_inferred == 0 {
        "evidence"
    } else if p.rows_inferred >= p.rows {
        text.push_str(" (inferred: no evidence session)");
        "inferred"
    } else {
        let part = (p.rows_inferred as f64 * 1000.0 / p.rows as f64).round() / 10.0;
        text.push_str(&format!(" ({} of them inferred)", fmt_share(part)));
        "mixed"
    };
    if let Some(s) = p.period_s {
        text.push_str(&format!(", every ~{}", fmt_period(s)));
    }
    if u.rows > 0 && rows > 0 {
        text.push_str(&format!("; {} of the rows are not attributed", fmt_share(u.row_share_pct)));
    }
    Headline {
        text,
        application_name: p.application_name.clone(),
        user: p.user.clone(),
        client_host: Some(p.client_host.clone()),
        shape: p.top_shape.clone(),
        rows: p.rows,
        truncates: p.truncates,
        row_share_pct: share,
        rows_inferred: p.rows_inferred,
        basis: basis.into(),
        period_s: p.period_s,
    }
}
