//! The general-purpose baseline for applybench: the `Store` trait over redb
//! (a B-tree store with copy-on-write pages), so the same workload runs
//! through the same `ParallelApply` into it.
//!
//! Shaped for a fair comparison with the replica tables, which fsync only at
//! checkpoints: each replicated transaction is one redb write transaction
//! with `Durability::None` (no fsync) that also stores the applied position,
//! and `checkpoint` commits with `Durability::Immediate`. One table per
//! object (`obj_<id>`), names in `objects`.

use std::path::Path;

use apply::{check_objects, AppliedPosition, ObjectInfo, OpKind, Store, StoreError, Txn};
use redb::{Database, Durability, ReadableTable, TableDefinition};

const OBJECTS: TableDefinition<u64, &str> = TableDefinition::new("objects");
const POSITION: TableDefinition<u32, (u64, u64)> = TableDefinition::new("position");

/// Replica kept in one redb database.
#[derive(Debug)]
pub struct RedbStore {
    db: Database,
    position: parking_lot::Mutex<AppliedPosition>,
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Database(format!("redb: {e}"))
}

fn records(object_id: u64) -> String {
    format!("obj_{object_id}")
}

impl RedbStore {
    pub fn create(path: &Path) -> Result<RedbStore, StoreError> {
        let db = Database::create(path).map_err(err)?;
        let tx = db.begin_write().map_err(err)?;
        tx.open_table(OBJECTS).map_err(err)?;
        tx.open_table(POSITION).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(RedbStore {
            db,
            position: Default::default(),
        })
    }
}

impl Store for RedbStore {
    fn apply(&self, txn: &Txn<'_>) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write().map_err(err)?;
        tx.set_durability(Durability::None);
        let refused = {
            let objects = tx.open_table(OBJECTS).map_err(err)?;
            check_objects(
                txn.ops()
                    .map(|op| (op.kind, op.object_id, op.sequence, op.kind.label())),
                |id| matches!(objects.get(id), Ok(Some(_))),
            )
            .err()
        };
        if refused.is_none() {
            for op in txn.ops() {
                let name = records(op.object_id);
                let table = TableDefinition::<&[u8], &[u8]>::new(&name);
                match op.kind {
                    OpKind::Probe => {}
                    OpKind::Put => {
                        tx.open_table(table)
                            .and_then(|mut t| {
                                t.insert(op.key, op.value).map(drop).map_err(Into::into)
                            })
                            .map_err(err)?;
                    }
                    OpKind::Delete => {
                        tx.open_table(table)
                            .and_then(|mut t| t.remove(op.key).map(drop).map_err(Into::into))
                            .map_err(err)?;
                    }
                    OpKind::Create | OpKind::Rename => {
                        let label = String::from_utf8_lossy(op.key);
                        tx.open_table(OBJECTS)
                            .and_then(|mut t| {
                                t.insert(op.object_id, &*label)
                                    .map(drop)
                                    .map_err(Into::into)
                            })
                            .map_err(err)?;
                        tx.open_table(table).map_err(err)?;
                    }
                    OpKind::Drop | OpKind::Clear => {
                        tx.delete_table(table).map_err(err)?;
                        if op.kind == OpKind::Drop {
                            tx.open_table(OBJECTS)
                                .and_then(|mut t| {
                                    t.remove(op.object_id).map(drop).map_err(Into::into)
                                })
                                .map_err(err)?;
                        } else {
                            tx.open_table(table).map_err(err)?;
                        }
                    }
                }
            }
        }
        let meta = txn.meta();
        tx.open_table(POSITION)
            .and_then(|mut t| {
                t.insert(meta.journal, (meta.commit_sequence, meta.resume_from))
                    .map(drop)
                    .map_err(Into::into)
            })
            .map_err(err)?;
        tx.commit().map_err(err)?;
        self.position.lock().advance(&meta);
        refused.map_or(Ok(()), Err)
    }

    fn checkpoint(&self, _position: &AppliedPosition) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write().map_err(err)?;
        tx.set_durability(Durability::Immediate);
        tx.commit().map_err(err)
    }

    fn applied_position(&self) -> AppliedPosition {
        self.position.lock().clone()
    }

    fn objects(&self) -> Result<Vec<ObjectInfo>, StoreError> {
        let tx = self.db.begin_read().map_err(err)?;
        let table = tx.open_table(OBJECTS).map_err(err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(err)? {
            let (id, name) = row.map_err(err)?;
            out.push(ObjectInfo {
                object_id: id.value(),
                name: name.value().to_owned(),
            });
        }
        Ok(out)
    }

    fn scan(&self, object_id: u64, visit: &mut dyn FnMut(&[u8], &[u8])) -> Result<(), StoreError> {
        let name = records(object_id);
        let tx = self.db.begin_read().map_err(err)?;
        let Ok(table) = tx.open_table(TableDefinition::<&[u8], &[u8]>::new(&name)) else {
            return Ok(());
        };
        for row in table.iter().map_err(err)? {
            let (k, v) = row.map_err(err)?;
            visit(k.value(), v.value());
        }
        Ok(())
    }

    fn get(&self, object_id: u64, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let name = records(object_id);
        let tx = self.db.begin_read().map_err(err)?;
        let Ok(table) = tx.open_table(TableDefinition::<&[u8], &[u8]>::new(&name)) else {
            return Ok(None);
        };
        Ok(table.get(key).map_err(err)?.map(|v| v.value().to_vec()))
    }

    fn max_parallel(&self) -> usize {
        // One write transaction at a time.
        1
    }
}
