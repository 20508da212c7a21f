//! A replica of a journal on the same host: reads the journal directly (no
//! shipping, no staging), assembles and applies it in parallel as it grows.
//! For tests and benchmarks that need a replica following a source (sync-
//! check), and for a local copy; replapply does the same from staging.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use engine::journal::{JournalCursor, ReadError, Step};

use crate::assemble::{AssembleError, Assembler};
use crate::parallel::{ApplyOptions, ParallelApply};
use crate::position::AppliedPosition;
use crate::store::{Store, StoreError};
use crate::txn::TxnBatch;

/// Changes gathered before a batch is submitted.
const FOLLOW_BATCH_OPS: usize = 4096;

/// Why following a journal stopped.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Assemble(#[from] AssembleError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Applies the journal in `dir` to `store` from the store's position, as the
/// journal grows, until `stop` is set; then drains and returns the position
/// applied (no checkpoint).
pub fn follow_journal(
    dir: &Path,
    store: Arc<dyn Store>,
    options: &ApplyOptions,
    stop: &AtomicBool,
) -> Result<AppliedPosition, FollowError> {
    let position = store.applied_position();
    let mut apply = ParallelApply::new(store, options);
    let mut assembler = Assembler::new(&position);
    let mut cursor = JournalCursor::open(dir, position.journal(0).resume_from)?;
    let mut batch = TxnBatch::new();
    while !stop.load(Ordering::Relaxed) {
        match cursor.step()? {
            Step::Entry(at) => {
                let entry = cursor.entry(at).expect("the cursor validated it");
                assembler.push(0, &entry, &mut batch)?;
                if batch.op_count() < FOLLOW_BATCH_OPS {
                    continue;
                }
            }
            Step::EndOfSegment => {
                cursor.next_segment()?;
                continue;
            }
            Step::Idle if batch.is_empty() => {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            Step::Idle => {}
        }
        apply.submit(&batch)?;
        batch.clear();
    }
    Ok(apply.finish()?)
}
