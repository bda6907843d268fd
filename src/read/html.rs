//! `report --html FILE`: one self-contained page (inline CSS, JS and SVG; no network, no external
//! assets), so it can be mailed or attached to an incident ticket and opened anywhere.
//!
//! The chart is SVG generated here rather than drawn by script, so the page shows the same picture with
//! JavaScript off. The JSON report is embedded (`<script type="application/json" id="report">`), and
//! every number shown carries `data-k="path.in.report"`: the inline script checks each one against the
//! JSON and records the outcome in `<body data-check="ok">`, which tests (and curious readers) can read.
use std::fmt::Write as _;

use super::one_line;
use super::summary::{BinOut, Report};

/// Session colours (colour-blind-friendly Okabe–Ito order, then extras); the unattributed share is grey.
const PALETTE: [&str; 10] =
    ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#7F3C8D", "#11A579", "#3969AC"];
const UNATTRIBUTED: &str = "#9a9a9a";

pub fn colour(session: Option<usize>) -> &'static str {
    session.map_or(UNATTRIBUTED, |i| PALETTE[i % PALETTE.len()])
}

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn num(k: &str, v: u64) -> String {
    format!("<span class=\"n\" data-k=\"{k}\">{v}</span>")
}

fn pct(k: &str, v: f64) -> String {
    format!("<span class=\"n p\" data-k=\"{k}\">{v:.1}</span>%")
}

/// The bin index (since the epoch) of a bin start (`2026-11-26T15:21:05Z`), bins `width` seconds wide.
fn bin_index(start: &str, width: i64) -> Option<i64> {
    super::log::parse_time(start).map(|t| t.div_euclid(width.max(1) * 1_000_000))
}

/// The chart's size and margins (left, right, top, bottom), in SVG units.
const W: f64 = 960.0;
const H: f64 = 280.0;
const L: f64 = 60.0;
const R: f64 = 10.0;
const T: f64 = 20.0;
const B: f64 = 40.0;

/// The SVG timeline: a stacked bar per bin, coloured by session, bursts marked.
fn chart(r: &Report) -> String {
    let width = (r.bin_seconds as i64).max(1);
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg id=\"timeline\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {W} {H}\" width=\"100%\" role=\"img\" aria-label=\"Deleted rows per {}, coloured by session\">",
        super::rollup::fmt_width(width)
    );
    let idx: Vec<i64> = r.bins.iter().filter_map(|m| bin_index(&m.start, width)).collect();
    let (Some(&first), Some(&last)) = (idx.iter().min(), idx.iter().max()) else {
        s.push_str("<text x=\"20\" y=\"40\">No committed deletes.</text></svg>");
        return s;
    };
    let span = (last - first + 1) as f64;
    let plot_w = W - L - R;
    let slot = plot_w / span;
    // A few minutes would otherwise become slabs as wide as the chart.
    let bar_w = slot.clamp(1.0, 48.0);
    let max = r.bins.iter().map(|m| m.rows).max().unwrap_or(1).max(1) as f64;
    axes(&mut s, max);
    for (m, &i) in r.bins.iter().zip(&idx) {
        let x = L + (i - first) as f64 * slot + (slot - bar_w) / 2.0;
        bin_bars(&mut s, m, x, bar_w, max);
    }
    let cut = if width % 60 == 0 { 16 } else { 19 };
    let label = |m: i64| crate::sink::record::format_unix_micros(m * width * 1_000_000)[..cut].replace('T', " ");
    let _ = write!(
        s,
        "<text class=\"tick\" x=\"{L}\" y=\"{y}\">{a} UTC</text><text class=\"tick\" x=\"{x}\" y=\"{y}\" text-anchor=\"end\">{b} UTC</text>",
        y = H - 14.0,
        x = L + plot_w,
        a = label(first),
        b = label(last)
    );
    s.push_str("</svg>");
    s
}

/// The axes, and gridlines at half and full height labelled with their row counts (`max` at the top).
fn axes(s: &mut String, max: f64) {
    let plot_w = W - L - R;
    let plot_h = H - T - B;
    let _ = write!(
        s,
        "<line class=\"axis\" x1=\"{L}\" y1=\"{y0}\" x2=\"{x1}\" y2=\"{y0}\"/><line class=\"axis\" x1=\"{L}\" y1=\"{T}\" x2=\"{L}\" y2=\"{y0}\"/>",
        y0 = T + plot_h,
        x1 = L + plot_w
    );
    for f in [0.5, 1.0] {
        let y = T + plot_h - plot_h * f;
        let _ = write!(
            s,
            "<line class=\"grid\" x1=\"{L}\" y1=\"{y:.1}\" x2=\"{x1}\" y2=\"{y:.1}\"/><text class=\"tick\" x=\"{tx}\" y=\"{ty:.1}\" text-anchor=\"end\">{v}</text>",
            x1 = L + plot_w,
            tx = L - 6.0,
            ty = y + 4.0,
            v = (max * f).round() as u64
        );
    }
}

/// One bin's bar at `x`: a segment per session, stacked, and the burst mark above.
fn bin_bars(s: &mut String, m: &BinOut, x: f64, bar_w: f64, max: f64) {
    let plot_h = H - T - B;
    let mut y = T + plot_h;
    for ms in &m.sessions {
        let h = ms.rows as f64 / max * plot_h;
        y -= h;
        let who = ms.session.map_or("unattributed".to_owned(), |id| format!("session #{id}"));
        let _ = write!(
            s,
            "<rect class=\"bar\" x=\"{x:.2}\" y=\"{y:.2}\" width=\"{bar_w:.2}\" height=\"{h:.2}\" fill=\"{c}\" data-bin=\"{mi}\" data-session=\"{sid}\" data-rows=\"{rows}\"><title>{mi}: {rows} rows, {who}</title></rect>",
            c = colour(ms.session),
            mi = esc(&m.start),
            sid = ms.session.map_or("none".to_owned(), |i| i.to_string()),
            rows = ms.rows
        );
    }
    if m.burst {
        let _ = write!(
            s,
            "<text class=\"burst\" x=\"{cx:.2}\" y=\"{ty:.2}\" text-anchor=\"middle\" data-burst=\"{mi}\">▼</text>",
            cx = x + bar_w / 2.0,
            ty = (y - 3.0).max(T - 4.0),
            mi = esc(&m.start)
        );
    }
}

const CSS: &str = r#"
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1200px;padding:0 16px;color:#1d1d1f;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#555}.cards{display:flex;gap:12px;flex-wrap:wrap;margin:16px 0}
.card{border:1px solid #ddd;border-radius:8px;padding:10px 14px;min-width:150px}.card b{display:block;font-size:22px}
.card.warn{border-color:#c9a227;background:#fffbea}
table{border-collapse:collapse;width:100%;font-size:13px}th,td{text-align:left;padding:4px 6px;border-bottom:1px solid #eee;vertical-align:top}
th{background:#f6f6f6}td.r,th.r{text-align:right;font-variant-numeric:tabular-nums}
code{font:12px ui-monospace,SFMono-Regular,Menlo,monospace;white-space:pre-wrap;word-break:break-word}
.sw{display:inline-block;width:11px;height:11px;border-radius:2px;margin-right:6px;vertical-align:-1px}
svg .axis{stroke:#444}svg .grid{stroke:#e3e3e3}svg .tick{font-size:11px;fill:#555}svg .burst{fill:#c62828;font-size:11px}
svg rect.bar:hover{opacity:.75}.legend{margin:6px 0 0;font-size:12px;color:#333}.legend span{margin-right:14px}
#check{font-size:12px;color:#888;margin-top:30px}#sessions td:last-child{min-width:240px}
td.t{overflow-wrap:anywhere;min-width:4em}td.r{white-space:nowrap}.wide{overflow-x:auto;max-width:100%}
#headline{font-size:19px;line-height:1.35;margin:12px 0 4px;padding:10px 14px;border-left:5px solid #0072B2;background:#f3f8fc;overflow-wrap:anywhere}
#headline.none{border-left-color:#9a9a9a;background:#f6f6f6}#headline.inferred,#headline.mixed{border-left-style:dashed}
.tag{display:inline-block;font-size:11px;padding:0 5px;border-radius:3px;border:1px solid #bbb;color:#444}
.tag.inferred{border-style:dashed;border-color:#c9a227;background:#fffbea;color:#7a5d00}
tr.inferred td{font-style:italic;background:#fffdf3}
"#;

const JS: &str = r#"
(function(){
  var report = JSON.parse(document.getElementById('report').textContent);
  function get(path){ return path.split('.').reduce(function(o,k){ return o == null ? undefined : o[k]; }, report); }
  var bad = [], n = 0;
  document.querySelectorAll('[data-k]').forEach(function(el){
    n++;
    var want = get(el.getAttribute('data-k')), got = parseFloat(el.textContent.replace(/,/g,''));
    if (typeof want !== 'number' || Math.abs(want - got) > 0.05) bad.push(el.getAttribute('data-k'));
  });
  var rows = 0;
  document.querySelectorAll('rect.bar').forEach(function(r){ rows += parseInt(r.getAttribute('data-rows'), 10); });
  var chartRows = report.bins.reduce(function(a,m){ return a + m.rows; }, 0);
  if (rows !== chartRows) bad.push('chart rows ' + rows + ' != ' + chartRows);
  document.body.setAttribute('data-check', bad.length ? 'mismatch: ' + bad.join(', ') : 'ok');
  document.body.setAttribute('data-checked', String(n));
  // What the page needs horizontally at this window width (tests: fits 1280 px without scrolling).
  document.body.setAttribute('data-scroll-width', String(document.documentElement.scrollWidth));
  document.body.setAttribute('data-inner-width', String(window.innerWidth));
  var hidden = 0;
  document.querySelectorAll('.wide').forEach(function(el){ hidden = Math.max(hidden, el.scrollWidth - el.clientWidth); });
  document.body.setAttribute('data-wide-overflow', String(hidden));
  document.getElementById('check').textContent = bad.length
    ? 'Check failed: ' + bad.join(', ')
    : 'All ' + n + ' numbers on this page match the embedded report.';
  // Numbers are written plainly for the check above; group digits for people afterwards.
  document.querySelectorAll('span.n:not(.p)').forEach(function(el){
    var v = Number(el.textContent);
    if (Number.isInteger(v)) el.textContent = v.toLocaleString('en-US');
  });
})();
"#;

/// The whole page.
pub fn render(r: &Report) -> String {
    let mut h = String::with_capacity(64 * 1024);
    summary(&mut h, r);
    when(&mut h, r);
    principals(&mut h, r);
    sessions(&mut h, r);
    shapes(&mut h, r);
    prefixes(&mut h, r);
    tables(&mut h, r);
    h.push_str("</table></div><div id=\"check\">Numbers not checked (JavaScript is off).</div>");
    // '<' escaped as \u003c keeps "</script>" inside a statement from ending the block; still valid JSON.
    let json = serde_json::to_string(r).unwrap_or_else(|_| "{}".to_owned()).replace('<', "\\u003c");
    let _ =
        write!(h, "<script type=\"application/json\" id=\"report\">{json}</script><script>{JS}</script></body></html>");
    h.push('\n');
    h
}

/// The head, the title line, the headline and the cards of totals.
fn summary(h: &mut String, r: &Report) {
    let title = format!("walwitness report — {}", r.files.join(", "));
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>{}</title><style>{CSS}</style></head><body data-check=\"not-run\">",
        esc(&title)
    );
    let _ = write!(
        h,
        "<h1>Who deleted the rows?</h1><div class=\"sub\">{} · {} lines · commits from {} to {} (UTC)</div>",
        esc(&r.files.join(", ")),
        num("lines", r.lines),
        esc(r.first_time.as_deref().unwrap_or("-")),
        esc(r.last_time.as_deref().unwrap_or("-"))
    );
    if let Some(hl) = &r.headline {
        let _ = write!(
            h,
            "<p id=\"headline\" class=\"{basis}\" data-basis=\"{basis}\">{}</p>",
            esc(&hl.text),
            basis = esc(&hl.basis)
        );
    }
    let u = &r.unattributed;
    let _ = write!(
        h,
        "<div class=\"cards\"><div class=\"card\">Deleted rows<b>{}</b></div><div class=\"card\">Transactions<b>{}</b></div><div class=\"card\">Truncates<b>{}</b></div><div class=\"card\">Sessions<b>{}</b></div><div class=\"card{}\" id=\"unattributed\">Not attributed<b>{}</b>{} rows · {} transactions ({})</div>",
        num("rows", r.rows),
        num("transactions", r.transactions),
        num("truncates", r.truncates),
        r.sessions.len(),
        if u.rows + u.truncates > 0 { " warn" } else { "" },
        pct("unattributed.row_share_pct", u.row_share_pct),
        num("unattributed.rows", u.rows),
        num("unattributed.transactions", u.transactions),
        pct("unattributed.transaction_share_pct", u.transaction_share_pct),
    );
    if r.skipped_lines > 0 {
        let _ = write!(
            h,
            "<div class=\"card warn\">Damaged lines skipped<b>{}</b></div>",
            num("skipped_lines", r.skipped_lines)
        );
    }
    h.push_str("</div>");
}

/// The chart of rows per bin, and its legend.
fn when(h: &mut String, r: &Report) {
    let _ = write!(
        h,
        "<h2>When: deleted rows per {w}</h2><div class=\"sub\">Bins of {} s, chosen for the span of the commits; median {} rows per non-empty bin; ▼ marks a burst (more than {} rows).</div>",
        num("bin_seconds", r.bin_seconds),
        num("median_rows_per_bin", r.median_rows_per_bin),
        num("bin_burst_threshold", r.bin_burst_threshold),
        w = super::rollup::fmt_width(r.bin_seconds as i64)
    );
    h.push_str(&chart(r));
    h.push_str("<div class=\"legend\">");
    for s in r.sessions.iter().take(PALETTE.len()) {
        let _ = write!(
            h,
            "<span><i class=\"sw\" style=\"background:{}\"></i>#{} pid {} {}</span>",
            colour(Some(s.id)),
            s.id,
            s.pid,
            esc(&one_line(s.application_name.as_deref().unwrap_or(""), 40))
        );
    }
    if r.sessions.len() > PALETTE.len() {
        h.push_str("<span>(colours repeat after 10 sessions)</span>");
    }
    let _ = write!(h, "<span><i class=\"sw\" style=\"background:{UNATTRIBUTED}\"></i>not attributed</span></div>");
}

/// "every ~…" for a regular period, else a dash.
fn period_cell(p: Option<f64>) -> String {
    p.map_or("–".to_owned(), |p| format!("every ~{}", super::rollup::fmt_period(p)))
}

fn principals(h: &mut String, r: &Report) {
    h.push_str("<h2>Who: application, user and client host, across sessions</h2><div class=\"sub\">Sessions come and go (a job that connects each time has a new pid each time); these do not. <span class=\"tag inferred\">inferred</span> rows were attributed to the one session that could have run them, without evidence.</div><div class=\"wide\"><table id=\"principals\"><tr><th>application</th><th>user</th><th>client host</th><th class=\"r\">rows</th><th class=\"r\">share</th><th class=\"r\">of which inferred</th><th class=\"r\">transactions</th><th class=\"r\">sessions</th><th>period</th></tr>");
    for (i, p) in r.principals.iter().enumerate() {
        let _ = write!(
            h,
            "<tr{cls}><td class=\"t\">{app}</td><td class=\"t\">{user}</td><td class=\"t\">{host}</td><td class=\"r\">{rows}</td><td class=\"r\">{share}</td><td class=\"r\">{inf}</td><td class=\"r\">{tx}</td><td class=\"r\">{sess}</td><td>{per}</td></tr>",
            cls = if p.rows_inferred > 0 && p.rows_inferred >= p.rows { " class=\"inferred\"" } else { "" },
            app = esc(p.application_name.as_deref().unwrap_or("-")),
            user = esc(p.user.as_deref().unwrap_or("-")),
            host = esc(&p.client_host),
            rows = num(&format!("principals.{i}.rows"), p.rows),
            share = pct(&format!("principals.{i}.row_share_pct"), p.row_share_pct),
            inf = num(&format!("principals.{i}.rows_inferred"), p.rows_inferred),
            tx = num(&format!("principals.{i}.transactions"), p.transactions),
            sess = num(&format!("principals.{i}.sessions"), p.sessions),
            per = esc(&period_cell(p.period_s)),
        );
    }
    h.push_str("</table></div>");
}

/// The sessions table, ending with the unattributed share.
fn sessions(h: &mut String, r: &Report) {
    let u = &r.unattributed;
    h.push_str("<h2>Who: sessions</h2><div class=\"wide\"><table id=\"sessions\"><tr><th>#</th><th class=\"r\">pid</th><th>backend start</th><th>user</th><th>application</th><th>client</th><th>basis</th><th class=\"r\" title=\"transactions\">txns</th><th class=\"r\">rows</th><th class=\"r\" title=\"truncates\">trunc.</th><th>first / last commit</th><th>statements</th></tr>");
    for (i, s) in r.sessions.iter().enumerate() {
        let mut st = String::new();
        for (j, x) in s.statements.iter().take(5).enumerate() {
            let _ = write!(
                st,
                "<div><code>{}</code> · {} rows</div>",
                esc(&one_line(&x.statement, 300)),
                num(&format!("sessions.{i}.statements.{j}.rows"), x.rows)
            );
        }
        if s.distinct_statements > 5 {
            let _ = write!(st, "<div class=\"sub\">{} distinct in all</div>", s.distinct_statements);
        }
        let _ = write!(
            h,
            "<tr data-session=\"{id}\"{cls}><td><i class=\"sw\" style=\"background:{c}\"></i>{id}</td><td class=\"r\">{pid}</td><td>{bs}</td><td class=\"t\">{user}</td><td class=\"t\">{app}</td><td class=\"t\">{client}</td><td>{basis}</td><td class=\"r\">{tx}</td><td class=\"r\">{rows}</td><td class=\"r\">{tr}</td><td>{first}<br>{last}</td><td>{st}</td></tr>",
            id = s.id,
            cls = if s.inferred { " class=\"inferred\" data-inferred=\"true\"" } else { "" },
            basis = if s.inferred {
                "<span class=\"tag inferred\">inferred</span>".to_owned()
            } else {
                format!("<span class=\"tag\">evidence · {}</span>", esc(s.attributed_by.as_deref().unwrap_or("?")))
            },
            c = colour(Some(s.id)),
            pid = s.pid,
            bs = esc(&s.backend_start.as_deref().unwrap_or("-").replacen('T', " ", 1)),
            user = esc(s.user.as_deref().unwrap_or("-")),
            app = esc(s.application_name.as_deref().unwrap_or("-")),
            client = esc(&s.client),
            tx = num(&format!("sessions.{i}.transactions"), s.transactions),
            rows = num(&format!("sessions.{i}.rows"), s.rows),
            tr = num(&format!("sessions.{i}.truncates"), s.truncates),
            first = esc(&s.first_time.replacen('T', " ", 1)),
            last = esc(&s.last_time.replacen('T', " ", 1)),
        );
    }
    let _ = write!(
        h,
        "<tr data-session=\"none\"><td><i class=\"sw\" style=\"background:{UNATTRIBUTED}\"></i>–</td><td colspan=\"6\">not attributed (no session, and no single candidate); {} rows with several candidate sessions</td><td class=\"r\">{}</td><td class=\"r\">{}</td><td class=\"r\">{}</td><td colspan=\"2\">{}</td></tr></table></div>",
        num("unattributed.ambiguous_rows", u.ambiguous_rows),
        num("unattributed.transactions", u.transactions),
        num("unattributed.rows", u.rows),
        num("unattributed.truncates", u.truncates),
        u.reasons
            .iter()
            .filter(|x| !x.reason.is_empty())
            .take(5)
            .map(|x| format!("<div>{} · {} rows</div>", esc(&x.reason), x.rows))
            .collect::<String>()
    );
}

fn shapes(h: &mut String, r: &Report) {
    h.push_str("<h2>What: statement shapes</h2><div class=\"wide\"><table id=\"shapes\"><tr><th>shape (literals → ?)</th><th class=\"r\">rows</th><th class=\"r\">of which inferred</th><th class=\"r\">transactions</th><th class=\"r\">sessions</th><th>period</th></tr>");
    for (i, s) in r.statements.iter().enumerate() {
        let _ = write!(
            h,
            "<tr><td><code>{}</code></td><td class=\"r\">{}</td><td class=\"r\">{}</td><td class=\"r\">{}</td><td class=\"r\">{}</td><td>{}</td></tr>",
            esc(&s.shape),
            num(&format!("statements.{i}.rows"), s.rows),
            num(&format!("statements.{i}.rows_inferred"), s.rows_inferred),
            num(&format!("statements.{i}.transactions"), s.transactions),
            num(&format!("statements.{i}.sessions"), s.sessions),
            esc(&period_cell(s.period_s))
        );
    }
    if r.statements_other.shapes > 0 {
        let _ = write!(
            h,
            "<tr><td>other ({} shapes)</td><td class=\"r\">{}</td><td></td><td class=\"r\">{}</td><td></td><td></td></tr>",
            r.statements_other.shapes,
            num("statements_other.rows", r.statements_other.rows),
            num("statements_other.transactions", r.statements_other.transactions)
        );
    }
    h.push_str("</table></div>");
}

fn prefixes(h: &mut String, r: &Report) {
    h.push_str("<h2>What: key prefixes</h2><div class=\"sub\">Django cache keys (<code>KEY_PREFIX:VERSION:key</code>): the prefix, the version and the key's leading words, up to the first word with a digit; other keys: the text before the first <code>:</code> or <code>_</code>.</div><div class=\"wide\"><table id=\"prefixes\"><tr><th>prefix</th><th class=\"r\">rows</th></tr>");
    for (i, p) in r.key_prefixes.iter().enumerate() {
        let _ = write!(
            h,
            "<tr><td><code>{}</code></td><td class=\"r\">{}</td></tr>",
            esc(&p.prefix),
            num(&format!("key_prefixes.{i}.rows"), p.rows)
        );
    }
    if r.key_prefixes_other.prefixes > 0 {
        let _ = write!(
            h,
            "<tr><td>other ({} prefixes)</td><td class=\"r\">{}</td></tr>",
            r.key_prefixes_other.prefixes,
            num("key_prefixes_other.rows", r.key_prefixes_other.rows)
        );
    }
}

fn tables(h: &mut String, r: &Report) {
    h.push_str("</table></div><h2>Tables</h2><div class=\"wide\"><table id=\"tables\"><tr><th>table</th><th class=\"r\">rows</th><th class=\"r\">truncates</th></tr>");
    for (i, t) in r.tables.iter().enumerate() {
        let _ = write!(
            h,
            "<tr><td><code>{}</code></td><td class=\"r\">{}</td><td class=\"r\">{}</td></tr>",
            esc(&t.table),
            num(&format!("tables.{i}.rows"), t.rows),
            num(&format!("tables.{i}.truncates"), t.truncates)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_is_self_contained_and_escapes() {
        let r: Report = serde_json::from_str(
            r#"{"format":1,"files":["a<b>.jsonl"],"lines":3,"skipped_lines":0,"transactions":1,"rows":2,"truncates":0,
            "first_time":"2026-11-26T15:01:00.000000Z","last_time":"2026-11-26T15:01:00.000000Z",
            "sessions":[{"id":0,"pid":7,"backend_start":null,"user":"u","application_name":"</script><b>x","client":"local socket",
              "attributed_by":"trigger","transactions":1,"rows":2,"truncates":0,"first_time":"2026-11-26T15:01:00.000000Z",
              "last_time":"2026-11-26T15:01:00.000000Z","distinct_statements":1,
              "statements":[{"statement":"DELETE '</script>'","rows":2,"transactions":1}],
              "statements_other":{"statements":0,"rows":0,"transactions":0}}],
            "unattributed":{"rows":0,"truncates":0,"transactions":0,"row_share_pct":0.0,"transaction_share_pct":0.0},
            "minutes":[{"minute":"2026-11-26T15:01Z","rows":2,"truncates":0,"burst":false,"sessions":[{"session":0,"rows":2}]}],
            "median_rows_per_minute":2,"burst_threshold":100,"statements":[],"statements_other":{"shapes":0,"rows":0,"transactions":0},
            "key_prefixes":[],"key_prefixes_other":{"prefixes":0,"rows":0},"tables":[],
            "bin_seconds":1,"bins":[{"start":"2026-11-26T15:01:00Z","rows":2,"truncates":0,"burst":false,"sessions":[{"session":0,"rows":2}]}],
            "headline":{"text":"</script><b>x (u, local socket) deleted 100 % of the rows","application_name":"</script><b>x","user":"u",
              "client_host":"local socket","shape":null,"rows":2,"truncates":0,"row_share_pct":100.0,"rows_inferred":0,
              "basis":"evidence","period_s":null}}"#,
        )
        .unwrap();
        let page = render(&r);
        assert_eq!(page.matches("</script>").count(), 2, "only the two real script ends");
        assert!(!page.contains("http://") || page.matches("http://").count() == 1, "only the SVG namespace");
        assert!(!page.contains("src="));
        assert!(page.contains("<rect class=\"bar\""));
        assert!(page.contains("data-k=\"sessions.0.rows\">2<"));
        assert!(page.contains("<p id=\"headline\" class=\"evidence\" data-basis=\"evidence\">&lt;/script&gt;&lt;b&gt;x (u, local socket) deleted 100 % of the rows</p>"));
    }
}
