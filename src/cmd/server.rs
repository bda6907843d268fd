//! `walwitness doctor`, `walwitness cleanup` and `walwitness attribution install|remove`: flags → options → run.
use crate::cli::{AttributionCommand, AttributionSource, CleanupCliArgs, DoctorCliArgs};
use crate::error::{Exit, Failure};
use crate::pg::error::from_pg;

pub async fn doctor(a: DoctorCliArgs) -> Result<Exit, Failure> {
    let dsn = a.conn.resolve()?;
    crate::doctor::run(crate::doctor::DoctorArgs {
        dsn,
        tables: a.tables,
        publication: a.publication,
        json: a.format == crate::cli::ReportFormat::Json,
        attribution: crate::attribution::Sources {
            trigger: a.attribution.contains(&AttributionSource::Trigger),
            activity: a.attribution.contains(&AttributionSource::Activity),
        },
    })
    .await
}

pub async fn cleanup(a: CleanupCliArgs) -> Result<Exit, Failure> {
    let dsn = a.conn.resolve()?;
    crate::cleanup::run(crate::cleanup::CleanupArgs { dsn, yes: a.yes }).await.map(|()| Exit::Ok)
}

/// `walwitness attribution install|remove`.
pub async fn attribution(cmd: AttributionCommand) -> Result<(), Failure> {
    let (args, install) = match cmd {
        AttributionCommand::Install(a) => (a, true),
        AttributionCommand::Remove(a) => (a, false),
    };
    let spec = crate::pg::config::ConnSpec::parse(&args.conn.resolve()?).map_err(|e| from_pg("invalid --dsn", e))?;
    let sql = crate::pg::connect_sql(&spec)
        .await
        .map_err(|e| from_pg(&format!("cannot connect to {}", spec.describe()), e))?;
    let mut names = Vec::new();
    for t in &args.tables {
        let arg = crate::pg::names::parse_table(t).map_err(|e| Failure::new(Exit::Usage, e))?;
        let table = crate::pg::catalog::resolve_table(&sql, &arg).await?;
        names.push(table.sql_name());
    }
    if install {
        crate::attribution::trigger::check_removable(&sql, &names).await?;
        crate::attribution::trigger::install(&sql, &names).await?;
        crate::term::eprint_line(&format!("walwitness: attribution trigger installed on {}", names.join(", ")));
    } else {
        crate::attribution::trigger::remove(&sql, &names).await?;
        crate::term::eprint_line(&format!("walwitness: attribution trigger removed from {}", names.join(", ")));
    }
    Ok(())
}
