//! The body of replapply: the configuration's [apply] section wired to the
//! apply loop (`apply::run`) over the group's staging directories.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;

use crate::config::{Config, StoreKind};

/// The SQLite store's file in the replica directory.
pub const SQLITE_FILE: &str = "replica.db";

/// Opens the replica and applies until `stop` is set.
pub fn run(config: &Config, stop: &AtomicBool, status: &apply::RunStatus) -> anyhow::Result<()> {
    let a = &config.apply;
    let journals: Vec<apply::StagedJournal> = a
        .journals
        .iter()
        .map(|name| apply::StagedJournal {
            name: name.clone(),
            dir: config.journal_staging_dir(name),
        })
        .collect();
    let started = std::time::Instant::now();
    let context = || format!("opening the replica {}", a.replica.display());
    let (store, records): (Arc<dyn apply::Store>, String) = match a.store {
        StoreKind::Tables => {
            let tables = apply::ReplicaTables::open(&a.replica).with_context(context)?;
            let records = format!("replica tables, {} records", tables.len());
            (Arc::new(tables), records)
        }
        StoreKind::Sqlite => {
            let sqlite =
                apply::SqliteStore::open(a.replica.join(SQLITE_FILE)).with_context(context)?;
            (Arc::new(sqlite), format!("SQLite {SQLITE_FILE}"))
        }
    };
    tracing::info!(
        "HAD0225I replica {} ({records}) opened in {} ms",
        a.replica.display(),
        started.elapsed().as_millis(),
    );
    let options = apply::RunOptions {
        apply: apply::ApplyOptions {
            workers: a.workers,
            stripes: a.stripes,
            ..apply::ApplyOptions::default()
        },
        checkpoint_every: a.checkpoint,
        merge_wait: a.merge_wait,
        spill_bytes: a.spill_bytes as usize,
        ..apply::RunOptions::default()
    };
    apply::run(store, &journals, &options, stop, status)?;
    Ok(())
}
