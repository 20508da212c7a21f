//! Apply: the backup side's "match and merge" and apply (iCluster's HADTUP).
//!
//! Today this crate holds the reference semantics: `SerialReplica` applies a
//! journal's entries one transaction at a time, in commit order, in memory.
//! It defines what "the replica equals the source" means, and it is the
//! oracle that the lock-striped parallel apply and the replica tables (issue
//! 4) are tested against ("parallel equals serial", DESIGN.md invariant 5).
//!
//! Semantics (also in docs/ARCHITECTURE.md):
//! - Entries outside commitment control (cycle 0) apply at once, each its own
//!   transaction.
//! - Entries of cycle `c` are held until C-CM `c`, then applied together, in
//!   journal order; C-RB `c` discards them: a rollback leaves no trace.
//! - R-PT and R-UP store the after image (upsert); R-DL removes the key.
//! - F-CR creates an empty object, F-DO drops it with its records, F-CL
//!   empties it, F-RN renames it. Records of an unknown object are refused.

mod assemble;
pub mod check;
mod follow;
mod index;
mod parallel;
mod position;
mod run;
mod serial;
mod source;
mod sqlite;
mod store;
mod tables;
mod txn;

pub use assemble::{AssembleError, Assembler};
pub use follow::{follow_journal, FollowError};
pub use parallel::{ApplyOptions, ParallelApply};
pub use position::{AppliedPosition, JournalPosition};
pub use run::{
    run, RunError, RunOptions, RunStatus, StagedJournal, APPLIED_FILE, CHECKPOINT_SPACING,
};
pub use serial::{ApplyError, ObjectState, SerialReplica};
pub use source::{JournaledStore, OpenReport, SourceError, SourceOptions, SourceTxn, SOURCE_HOLD};
pub use sqlite::SqliteStore;
pub use store::{
    check_objects, contents, record_hash, stripe_of, CheckpointTimes, Contents, ObjectCheck,
    ObjectInfo, PendingCheckpoint, Store, StoreError, StoreSpace,
};
pub use tables::{ReplicaTables, DATA_FILE_BYTES};
pub use txn::{LargeRef, LargeTxn, Op, OpKind, Txn, TxnBatch, TxnMeta};
