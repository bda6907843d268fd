//! The server objects a capture sets up before it streams: a lost slot replaced, the publication (checked
//! for what it covers), attribution (the trigger, the activity sampler). Whatever this run created is
//! removed again if a later step refuses.
use std::sync::Arc;

use crate::attribution::{activity, trigger, Attributor};
use crate::error::{Exit, Failure};
use crate::pg::catalog as setup;
use crate::pg::config::ConnSpec;
use crate::pg::names::quote_ident;
use crate::protocol::Lsn;
use setup::{PubOrigin, SlotState};

use super::preflight::Checked;
use super::{coverage, say, CaptureOptions};

/// What `set_up` made ready.
pub(super) struct Objects {
    pub pub_origin: PubOrigin,
    pub expect: coverage::Expect,
    /// Where the coverage watch starts: read before the publication was checked.
    pub coverage_start: Lsn,
    pub attributor: Attributor,
    pub sampler: Option<tokio::task::JoinHandle<()>>,
    /// SQL names of the watched tables (the trigger's tables).
    pub sql_tables: Vec<String>,
}

/// A slot the server invalidated cannot be resumed: recreated, and a gap recorded (`resume`). Whether
/// it was.
pub(super) async fn replace_lost_slot(sql: &tokio_postgres::Client, checked: &mut Checked) -> Result<bool, Failure> {
    let invalidated = checked.slot_state == SlotState::Lost;
    if invalidated {
        let slot = &checked.slot;
        eprintln!(
            "walwitness: warning: replication slot {slot} was invalidated by the server (wal_status = lost): the WAL it needed is gone, so deletes since it last ran cannot be recovered; recreating it and recording a gap"
        );
        setup::drop_slot(sql, slot).await?;
        checked.slot_state = SlotState::Absent;
    }
    Ok(invalidated)
}

pub(super) async fn set_up(
    opts: &CaptureOptions,
    spec: &ConnSpec,
    sql: &Arc<tokio_postgres::Client>,
    checked: &Checked,
) -> Result<Objects, Failure> {
    let Checked { info, tables, partitions, publication, .. } = checked;
    // Read before the publication is checked: coverage lost after that check opens a gap from here.
    let coverage_start = coverage::current_lsn(sql).await.unwrap_or_default();
    let (pub_origin, warnings) =
        setup::ensure_publication(sql, publication, opts.publication.is_some(), tables).await?;
    for w in warnings {
        crate::term::eprint_line(&format!("walwitness: warning: {w}"));
    }
    // Refused after this point: a publication this run created must not stay behind.
    let drop_created = |e: Failure| {
        let sql = sql.clone();
        let publication = publication.clone();
        async move {
            if pub_origin == PubOrigin::Created {
                let _ = setup::drop_publication(&sql, &publication).await;
            }
            e
        }
    };
    let expect = match coverage_at_start(sql, publication, tables, info.version_num).await {
        Ok(e) => e,
        Err(e) => return Err(drop_created(e).await),
    };

    let sql_tables: Vec<String> = tables.iter().map(setup::Table::sql_name).collect();
    // The names a statement may use for the watched rows: the tables and their partitions.
    let watched_names: Vec<(String, String)> = tables
        .iter()
        .map(|t| (t.schema.clone(), t.name.clone()))
        .chain(partitions.iter().flat_map(|(_, ps)| ps.iter().map(|p| (p.schema.clone(), p.name.clone()))))
        .collect();
    let (attributor, sampler) = match attribution(opts, spec, sql, info, &sql_tables, watched_names).await {
        Ok(a) => a,
        Err(e) => return Err(drop_created(e).await),
    };
    Ok(Objects { pub_origin, expect, coverage_start, attributor, sampler, sql_tables })
}

/// After a failed capture: nothing was captured into a slot that does not exist yet, so a publication
/// this run created goes.
pub(super) async fn drop_unused_publication(
    opts: &CaptureOptions,
    spec: &ConnSpec,
    sql: &Arc<tokio_postgres::Client>,
    checked: &Checked,
    pub_origin: PubOrigin,
) {
    if pub_origin == PubOrigin::Created {
        if let Some(sql) = super::stop::usable(sql, spec).await {
            if matches!(
                setup::inspect_slot(&sql, &checked.slot, &checked.info.database, opts.two_phase).await,
                Ok(SlotState::Absent)
            ) {
                let _ = setup::drop_publication(&sql, &checked.publication).await;
            }
        }
    }
}

/// What the publication covers at start, checked like the running capture will check it: a row filter on
/// a watched table is refused (deletes of rows outside it would not be sent).
async fn coverage_at_start(
    sql: &tokio_postgres::Client,
    publication: &str,
    tables: &[setup::Table],
    version_num: u32,
) -> Result<coverage::Expect, Failure> {
    let mut expect = coverage::Expect {
        publication: publication.to_owned(),
        tables: tables.iter().map(|t| coverage::Watched { oid: t.oid, name: t.qualified() }).collect(),
        truncates: true,
    };
    let (_, _, rows) = coverage::query(sql, &expect, version_num)
        .await
        .map_err(|e| crate::error::from_sql("cannot check what the publication covers", e))?;
    expect.truncates = rows.first().and_then(|r| r.pubtruncate).unwrap_or(false);
    if let Some(f) = coverage::findings(&expect, &rows).first() {
        return Err(Failure::new(
            Exit::Conflict,
            format!(
                "{}: fix the publication (ALTER PUBLICATION {} …) or use another",
                f.detail,
                quote_ident(publication)
            ),
        ));
    }
    Ok(expect)
}

/// Sets up attribution: the trigger (installed now, removed again if installing it fails part way and
/// this run created its schema) and the activity sampler.
async fn attribution(
    opts: &CaptureOptions,
    spec: &ConnSpec,
    sql: &tokio_postgres::Client,
    info: &setup::ServerInfo,
    sql_tables: &[String],
    watched_names: Vec<(String, String)>,
) -> Result<(Attributor, Option<tokio::task::JoinHandle<()>>), Failure> {
    let mut attributor = Attributor::default();
    if opts.attribution.trigger {
        let existed: bool = sql
            .query_one("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", &[&trigger::SCHEMA])
            .await
            .map_err(|e| crate::error::from_sql("cannot read pg_namespace", e))?
            .get(0);
        let installed = async {
            trigger::install(sql, sql_tables).await?;
            trigger::load_verifier(sql).await
        }
        .await;
        match installed {
            Ok(v) => attributor.verifier = Some(std::sync::Arc::new(v)),
            Err(e) => {
                if !existed {
                    let _ = trigger::remove(sql, sql_tables).await;
                }
                return Err(e);
            }
        }
        say(opts.progress, &format!("walwitness: attribution trigger installed on {}", sql_tables.join(", ")));
    }
    let mut sampler = None;
    if opts.attribution.activity {
        if !activity::can_read_all_stats(sql).await {
            eprintln!(
                "walwitness: warning: role {} is not a member of pg_read_all_stats: for other roles' sessions only pid, user and application are visible (no statement, client address or start time); GRANT pg_read_all_stats TO {}",
                info.user,
                quote_ident(&info.user)
            );
        }
        let map = std::sync::Arc::new(activity::ActivityMap::live(watched_names, opts.activity_interval));
        sampler = Some(activity::spawn_sampler(spec.clone(), map.clone(), opts.activity_interval));
        attributor.activity = Some(map);
    }
    Ok((attributor, sampler))
}
