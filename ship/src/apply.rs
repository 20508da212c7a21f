//! The body of replapply: the configuration's [apply] section wired to the
//! apply loop (`apply::run`) over the group's staging directories.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;

use crate::config::Config;

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
    let store = apply::ReplicaTables::open(&a.replica)
        .with_context(|| format!("opening the replica {}", a.replica.display()))?;
    tracing::info!(
        "HAD0225I replica {} opened in {} ms ({} records)",
        a.replica.display(),
        started.elapsed().as_millis(),
        store.len()
    );
    let options = apply::RunOptions {
        apply: apply::ApplyOptions {
            workers: a.workers,
            stripes: a.stripes,
        },
        checkpoint_every: a.checkpoint,
        merge_wait: a.merge_wait,
        ..apply::RunOptions::default()
    };
    apply::run(Arc::new(store), &journals, &options, stop, status)?;
    Ok(())
}
