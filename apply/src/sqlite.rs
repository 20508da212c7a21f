//! The SQLite store: a replica anyone can read with SQL.
//!
//! Layout of the database file:
//! - `repl_objects(object_id INTEGER PRIMARY KEY, name TEXT, table_name TEXT)`
//! - one table per object, `obj_<id>(key BLOB PRIMARY KEY, value BLOB)
//!   WITHOUT ROWID`, created by F-CR and dropped by F-DO;
//! - `repl_applied(journal INTEGER PRIMARY KEY, applied INTEGER,
//!   resume_from INTEGER)`: the applied position.
//!
//! Each replicated transaction is one SQLite transaction that also moves the
//! applied position, so the data and the position can never disagree. The
//! database runs in WAL mode with `synchronous = NORMAL`: a commit is not
//! fsynced, and after a power loss the database may come back at an earlier
//! transaction, with the matching position (replay from staging redoes the
//! rest). `checkpoint` syncs the WAL, so everything before it survives;
//! only then does the apply loop let staging be purged.
//!
//! One connection applies (`max_parallel` is 1). Other processes may read
//! the file while apply runs (WAL readers do not block the writer).

use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension};

use crate::position::AppliedPosition;
use crate::store::{check_objects, ObjectCheck, ObjectInfo, Store, StoreError};
use crate::txn::{LargeTxn, Op, OpKind, Txn, TxnMeta};

/// A replica kept in one SQLite database file.
#[derive(Debug)]
pub struct SqliteStore {
    path: PathBuf,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    conn: Connection,
    position: AppliedPosition,
}

fn db(path: &Path) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |e| StoreError::Database(format!("SQLite replica {}: {e}", path.display()))
}

fn table(object_id: u64) -> String {
    format!("obj_{object_id}")
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteStore, StoreError> {
        let path = path.as_ref().to_owned();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(StoreError::io("create directory", parent))?;
        }
        let conn = Connection::open(&path).map_err(db(&path))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS repl_objects (
                 object_id INTEGER PRIMARY KEY, name TEXT NOT NULL, table_name TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS repl_applied (
                 journal INTEGER PRIMARY KEY, applied INTEGER NOT NULL, resume_from INTEGER NOT NULL);",
        )
        .map_err(db(&path))?;
        let position = read_position(&conn).map_err(db(&path))?;
        Ok(SqliteStore {
            inner: Mutex::new(Inner { conn, position }),
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn read_position(conn: &Connection) -> rusqlite::Result<AppliedPosition> {
    let mut position = AppliedPosition::default();
    let mut stmt =
        conn.prepare("SELECT journal, applied, resume_from FROM repl_applied ORDER BY journal")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    for row in rows {
        let (journal, applied, resume_from) = row?;
        position.advance(&TxnMeta {
            journal: journal as u32,
            commit_sequence: applied as u64,
            resume_from: resume_from as u64,
            commit_time_ns: 0,
        });
    }
    Ok(position)
}

fn object_exists(conn: &Connection, object_id: u64) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT 1 FROM repl_objects WHERE object_id = ?1")?
        .exists([object_id as i64])
}

/// Applies the changes of `txn` inside the open SQLite transaction.
fn apply_changes(conn: &Connection, txn: &Txn<'_>) -> rusqlite::Result<()> {
    for op in txn.ops() {
        apply_op(conn, &op)?;
    }
    record_position(conn, &txn.meta())
}

/// Applies one change inside the open SQLite transaction.
fn apply_op(conn: &Connection, op: &Op<'_>) -> rusqlite::Result<()> {
    let id = op.object_id as i64;
    match op.kind {
        OpKind::Probe => {}
        OpKind::Put => {
            conn.prepare_cached(&format!(
                "INSERT OR REPLACE INTO {} (key, value) VALUES (?1, ?2)",
                table(op.object_id)
            ))?
            .execute(params![op.key, op.value])?;
        }
        OpKind::Delete => {
            conn.prepare_cached(&format!(
                "DELETE FROM {} WHERE key = ?1",
                table(op.object_id)
            ))?
            .execute([op.key])?;
        }
        OpKind::Create => {
            conn.execute_batch(&format!(
                "CREATE TABLE {} (key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID",
                table(op.object_id)
            ))?;
            conn.prepare_cached(
                "INSERT INTO repl_objects (object_id, name, table_name) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![
                id,
                String::from_utf8_lossy(op.key),
                table(op.object_id)
            ])?;
        }
        OpKind::Drop => {
            // Cached statements may name the table: forget them first.
            conn.flush_prepared_statement_cache();
            conn.execute_batch(&format!("DROP TABLE {}", table(op.object_id)))?;
            conn.prepare_cached("DELETE FROM repl_objects WHERE object_id = ?1")?
                .execute([id])?;
        }
        OpKind::Clear => {
            conn.execute_batch(&format!("DELETE FROM {}", table(op.object_id)))?;
        }
        OpKind::Rename => {
            conn.prepare_cached("UPDATE repl_objects SET name = ?2 WHERE object_id = ?1")?
                .execute(params![id, String::from_utf8_lossy(op.key)])?;
        }
    }
    Ok(())
}

/// Moves the stored position past a transaction (applied or refused).
fn record_position(conn: &Connection, meta: &TxnMeta) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT OR REPLACE INTO repl_applied (journal, applied, resume_from) VALUES (?1, ?2, ?3)",
    )?
    .execute(params![
        meta.journal as i64,
        meta.commit_sequence as i64,
        meta.resume_from as i64
    ])?;
    Ok(())
}

impl Store for SqliteStore {
    fn apply(&self, txn: &Txn<'_>) -> Result<(), StoreError> {
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        let tx = inner.conn.unchecked_transaction().map_err(db(&self.path))?;
        // A refused transaction still moves the position: apply goes on
        // past it, and replay must not meet it again.
        let refused = {
            let mut failed = None;
            let checked = check_objects(
                txn.ops()
                    .map(|op| (op.kind, op.object_id, op.sequence, op.kind.label())),
                |id| match object_exists(&tx, id) {
                    Ok(present) => present,
                    Err(e) => {
                        failed.get_or_insert(e);
                        false
                    }
                },
            );
            if let Some(e) = failed {
                return Err(db(&self.path)(e));
            }
            checked.err()
        };
        match &refused {
            None => apply_changes(&tx, txn),
            Some(_) => record_position(&tx, &txn.meta()),
        }
        .map_err(db(&self.path))?;
        tx.commit().map_err(db(&self.path))?;
        inner.position.advance(&txn.meta());
        refused.map_or(Ok(()), Err)
    }

    /// Checks, then applies, the streamed changes inside one SQLite
    /// transaction (SQLite spills its own large transactions to disk).
    fn apply_large(&self, txn: &mut dyn LargeTxn) -> Result<(), StoreError> {
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        let meta = txn.meta();
        let tx = inner.conn.unchecked_transaction().map_err(db(&self.path))?;
        let refused = {
            let mut failed = None;
            let mut check = ObjectCheck::new(|id| match object_exists(&tx, id) {
                Ok(present) => present,
                Err(e) => {
                    failed.get_or_insert(e);
                    false
                }
            });
            let checked = txn
                .for_each(&mut |op| check.see(op.kind, op.object_id, op.sequence, op.kind.label()));
            drop(check);
            if let Some(e) = failed {
                return Err(db(&self.path)(e));
            }
            match checked {
                Ok(()) => None,
                Err(e) if e.is_refusal() => Some(e),
                Err(e) => return Err(e),
            }
        };
        if refused.is_none() {
            let path = &self.path;
            txn.for_each(&mut |op| apply_op(&tx, &op).map_err(db(path)))?;
        }
        record_position(&tx, &meta).map_err(db(&self.path))?;
        tx.commit().map_err(db(&self.path))?;
        inner.position.advance(&meta);
        refused.map_or(Ok(()), Err)
    }

    fn checkpoint(&self, position: &AppliedPosition) -> Result<(), StoreError> {
        let inner = self.inner.lock();
        debug_assert_eq!(&inner.position, position);
        // Syncs the WAL (and copies it into the database file as far as
        // readers allow): every commit so far is durable after this.
        inner
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
            .map_err(db(&self.path))
    }

    fn applied_position(&self) -> AppliedPosition {
        self.inner.lock().position.clone()
    }

    fn objects(&self) -> Result<Vec<ObjectInfo>, StoreError> {
        let inner = self.inner.lock();
        let mut stmt = inner
            .conn
            .prepare_cached("SELECT object_id, name FROM repl_objects ORDER BY object_id")
            .map_err(db(&self.path))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(ObjectInfo {
                    object_id: r.get::<_, i64>(0)? as u64,
                    name: r.get(1)?,
                })
            })
            .map_err(db(&self.path))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(db(&self.path))
    }

    fn scan(&self, object_id: u64, visit: &mut dyn FnMut(&[u8], &[u8])) -> Result<(), StoreError> {
        let inner = self.inner.lock();
        if !object_exists(&inner.conn, object_id).map_err(db(&self.path))? {
            return Ok(());
        }
        // BLOB keys compare with memcmp: byte order, as the trait asks.
        let mut stmt = inner
            .conn
            .prepare(&format!(
                "SELECT key, value FROM {} ORDER BY key",
                table(object_id)
            ))
            .map_err(db(&self.path))?;
        let mut rows = stmt.query([]).map_err(db(&self.path))?;
        while let Some(row) = rows.next().map_err(db(&self.path))? {
            let key = row
                .get_ref(0)
                .and_then(|v| Ok(v.as_blob()?))
                .map_err(db(&self.path))?;
            let value = row
                .get_ref(1)
                .and_then(|v| Ok(v.as_blob()?))
                .map_err(db(&self.path))?;
            visit(key, value);
        }
        Ok(())
    }

    fn get(&self, object_id: u64, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let inner = self.inner.lock();
        if !object_exists(&inner.conn, object_id).map_err(db(&self.path))? {
            return Ok(None);
        }
        inner
            .conn
            .prepare_cached(&format!(
                "SELECT value FROM {} WHERE key = ?1",
                table(object_id)
            ))
            .and_then(|mut s| s.query_row([key], |r| r.get(0)).optional())
            .map_err(db(&self.path))
    }

    fn max_parallel(&self) -> usize {
        1
    }
}
