//! The serial, in-memory reference replica.
//!
//! Not the fast path: it copies every entry it holds (open transactions) and
//! keeps records in ordered maps, so that comparisons and digests are simple
//! and obviously right.

use std::collections::{BTreeMap, HashMap};

use engine::journal::{Entry, EntryType};

use crate::store::{check_objects, StoreError};
use crate::txn::OpKind;

/// One object of the replica: its name and records (key -> image).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectState {
    pub name: String,
    pub records: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// A change held until its transaction commits.
#[derive(Clone, Debug)]
struct Change {
    sequence: u64,
    entry_type: EntryType,
    object_id: u64,
    key: Vec<u8>,
    after: Vec<u8>,
}

/// Why an entry could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    #[error("HAD0201E sequence {sequence}: {entry_type} for object {object_id}, which the replica does not have")]
    UnknownObject {
        sequence: u64,
        entry_type: &'static str,
        object_id: u64,
    },
    #[error(
        "HAD0202E sequence {sequence}: F-CR for object {object_id}, which the replica already has"
    )]
    ObjectExists { sequence: u64, object_id: u64 },
    #[error("HAD0203E sequence {sequence} arrived after {last}: entries must be applied in journal order")]
    OutOfOrder { sequence: u64, last: u64 },
}

/// Applies entries in journal order, a transaction at a time.
#[derive(Clone, Debug, Default)]
pub struct SerialReplica {
    objects: BTreeMap<u64, ObjectState>,
    open: HashMap<u64, Vec<Change>>,
    last_sequence: u64,
    committed_transactions: u64,
    rolled_back_transactions: u64,
}

impl SerialReplica {
    pub fn new() -> SerialReplica {
        SerialReplica::default()
    }

    /// Takes the next entry of the journal. Changes become visible when their
    /// transaction commits (at once for cycle 0). On error, nothing of the
    /// failing transaction was applied.
    pub fn apply(&mut self, entry: &Entry<'_>) -> Result<(), ApplyError> {
        let sequence = entry.sequence();
        if sequence <= self.last_sequence {
            return Err(ApplyError::OutOfOrder {
                sequence,
                last: self.last_sequence,
            });
        }
        self.last_sequence = sequence;
        let cycle = entry.commit_cycle();
        match entry.entry_type() {
            EntryType::NextSegment => Ok(()),
            EntryType::CommitStart => {
                self.open.entry(cycle).or_default();
                Ok(())
            }
            EntryType::Commit => {
                let changes = self.open.remove(&cycle).unwrap_or_default();
                self.apply_transaction(&changes)?;
                self.committed_transactions += 1;
                Ok(())
            }
            EntryType::Rollback => {
                self.open.remove(&cycle);
                self.rolled_back_transactions += 1;
                Ok(())
            }
            entry_type => {
                let change = Change {
                    sequence,
                    entry_type,
                    object_id: entry.object_id(),
                    key: entry.key().to_vec(),
                    after: entry.after().to_vec(),
                };
                if cycle == 0 {
                    self.apply_transaction(std::slice::from_ref(&change))?;
                    self.committed_transactions += 1;
                } else {
                    self.open.entry(cycle).or_default().push(change);
                }
                Ok(())
            }
        }
    }

    /// Applies `changes` all or nothing: a first pass checks every change
    /// against object existence as the transaction itself changes it, the
    /// second applies them (and cannot fail).
    fn apply_transaction(&mut self, changes: &[Change]) -> Result<(), ApplyError> {
        let checked = check_objects(
            changes.iter().filter_map(|c| {
                let kind = OpKind::of(c.entry_type)?;
                Some((kind, c.object_id, c.sequence, c.entry_type.label()))
            }),
            |id| self.objects.contains_key(&id),
        );
        match checked {
            Ok(()) => {}
            Err(StoreError::ObjectExists {
                sequence,
                object_id,
            }) => {
                return Err(ApplyError::ObjectExists {
                    sequence,
                    object_id,
                })
            }
            Err(StoreError::UnknownObject {
                sequence,
                label,
                object_id,
            }) => {
                return Err(ApplyError::UnknownObject {
                    sequence,
                    entry_type: label,
                    object_id,
                })
            }
            Err(other) => unreachable!("check_objects only refuses: {other}"),
        }
        for change in changes {
            apply_change(&mut self.objects, change);
        }
        Ok(())
    }

    pub fn objects(&self) -> &BTreeMap<u64, ObjectState> {
        &self.objects
    }

    /// Its whole state in the form stores give (`store::contents`).
    pub fn contents(&self) -> crate::store::Contents {
        self.objects
            .iter()
            .map(|(id, o)| (*id, (o.name.clone(), o.records.clone())))
            .collect()
    }

    pub fn get(&self, object_id: u64, key: &[u8]) -> Option<&[u8]> {
        self.objects
            .get(&object_id)?
            .records
            .get(key)
            .map(Vec::as_slice)
    }

    /// Cycles with entries held, awaiting their commit or rollback.
    pub fn open_transactions(&self) -> usize {
        self.open.len()
    }

    pub fn committed_transactions(&self) -> u64 {
        self.committed_transactions
    }

    pub fn rolled_back_transactions(&self) -> u64 {
        self.rolled_back_transactions
    }

    /// Sequence of the last entry taken.
    pub fn last_sequence(&self) -> u64 {
        self.last_sequence
    }
}

/// Applies one change whose object was checked by `apply_transaction`.
fn apply_change(objects: &mut BTreeMap<u64, ObjectState>, change: &Change) {
    match change.entry_type {
        EntryType::ObjectCreate => {
            let name = String::from_utf8_lossy(&change.key).into_owned();
            objects.insert(
                change.object_id,
                ObjectState {
                    name,
                    records: BTreeMap::new(),
                },
            );
        }
        EntryType::ObjectDrop => {
            objects.remove(&change.object_id);
        }
        EntryType::CheckProbe => {}
        entry_type => {
            let state = objects
                .get_mut(&change.object_id)
                .expect("object existence checked by apply_transaction");
            match entry_type {
                EntryType::ObjectClear => state.records.clear(),
                EntryType::ObjectRename => {
                    state.name = String::from_utf8_lossy(&change.key).into_owned()
                }
                EntryType::RecordPut | EntryType::RecordUpdate => {
                    state
                        .records
                        .insert(change.key.clone(), change.after.clone());
                }
                EntryType::RecordDelete => {
                    state.records.remove(&change.key);
                }
                _ => {}
            }
        }
    }
}
