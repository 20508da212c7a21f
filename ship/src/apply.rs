//! The body of replapply: the configuration's [apply] section wired to the
//! apply loop (`apply::run`) over the group's staging directories.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;

use crate::config::{Config, StoreKind};

/// The SQLite store's file in the replica directory.
pub const SQLITE_FILE: &str = "replica.db";

/// Opens the replica and applies until `stop` is set.
pub fn run(config: &Config, stop: &AtomicBool, status: &apply::RunStatus) -> anyhow::Result<()> {
    engine::sys::set_realtime_priority(config.backup.realtime_priority);
    engine::sys::enter_realtime();
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
            let mut records = format!("replica tables, {} records", tables.len());
            if a.expected_records > 0 {
                tables.reserve(a.expected_records);
                records += &format!(", index sized for {}", a.expected_records);
            }
            if a.reserve_data_bytes > 0 {
                let made = tables
                    .reserve_data(a.reserve_data_bytes)
                    .with_context(|| format!("{}: reserving data files", context()))?;
                records += &format!(
                    ", {made} data files of {} MiB made ahead",
                    apply::DATA_FILE_BYTES >> 20
                );
            }
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
    let probes = Arc::new(apply::check::ProbeLog::new());
    let service = match a.check_listen {
        Some(addr) => Some(serve_checks(addr, store.clone(), probes.clone())?),
        None => None,
    };
    let options = apply::RunOptions {
        apply: apply::ApplyOptions {
            workers: a.workers,
            stripes: a.stripes,
            probes: service.is_some().then_some(probes),
            ..apply::ApplyOptions::default()
        },
        checkpoint_every: a.checkpoint,
        merge_wait: a.merge_wait,
        spill_bytes: a.spill_bytes as usize,
        ..apply::RunOptions::default()
    };
    let result = apply::run(store, &journals, &options, stop, status);
    if let Some((stop_service, thread)) = service {
        stop_service.store(true, Ordering::Relaxed);
        let _ = thread.join();
    }
    result?;
    Ok(())
}

/// Starts the sync-check service on `addr` (a thread); returns its stop
/// flag and thread.
fn serve_checks(
    addr: std::net::SocketAddr,
    store: Arc<dyn apply::Store>,
    probes: Arc<apply::check::ProbeLog>,
) -> anyhow::Result<(Arc<AtomicBool>, std::thread::JoinHandle<()>)> {
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("SCI0101E cannot listen for sync-check on {addr}"))?;
    tracing::info!("SCI0004I sync-check service listening on {addr}");
    let service = apply::check::CheckService::new(store, probes);
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("sync-check".into())
            .spawn(move || {
                if let Err(e) = service.serve(listener, stop) {
                    tracing::error!("SCI0101E sync-check service on {addr} stopped: {e}");
                }
            })?
    };
    Ok((stop, thread))
}
