//! `walwitness doctor` and `walwitness cleanup`: flags → options → run.
use crate::cli::{AttributionSource, CleanupCliArgs, DoctorCliArgs};
use crate::error::{Exit, Failure};

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
