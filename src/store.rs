//! The sled database: named tables, a schema version checked on open, typed JSON values.
//!
//! Tables are fixed ([`Table`]); values are serde types serialized as JSON, so a table's value
//! type is decided by the module that owns it (books and trees by `cli`/`tree`, outputs and
//! candidates by `compose`, feedback by `feedback`). This module imports nothing else from the
//! crate. Writes that must land together go through [`Store::put_batch`]; [`Store::flush`]
//! makes them durable.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The on-disk layout version. Bump it when a table's key scheme or value type changes
/// incompatibly, and add the step from the previous version to [`MIGRATIONS`].
pub const SCHEMA_VERSION: u32 = 2;

/// A migration step: upgrades a database of version `from` to `from + 1`. Steps are idempotent
/// (a step interrupted by a crash runs again on the next open) and the version is written only
/// after a step has been flushed.
pub struct Migration {
    pub from: u32,
    pub what: &'static str,
    pub run: fn(&Store) -> Result<usize, StoreError>,
}

/// The migrations, oldest first. `MIGRATIONS[i].from == i + 1`.
pub const MIGRATIONS: &[Migration] = &[Migration {
    from: 1,
    what: "run records: one per run (run/<book>/<run-id>) instead of one per book (run/<book>)",
    run: migrate_runs_v1_to_v2,
}];

/// v1 kept one run record per book under `run/<book-id>`; v2 keeps every run under
/// `run/<book-id>/<run-id>` with its start time and completeness. Old records were finished runs.
fn migrate_runs_v1_to_v2(store: &Store) -> Result<usize, StoreError> {
    let meta = store.tree(Table::Meta)?;
    let sled_err = |source| StoreError::Sled { table: "meta", source };
    let mut moved = 0;
    for entry in meta.scan_prefix(b"run/") {
        let (k, v) = entry.map_err(sled_err)?;
        let key = String::from_utf8_lossy(&k).into_owned();
        let Some(book) = key.strip_prefix("run/").filter(|rest| !rest.contains('/')) else {
            continue;
        };
        let mut value: serde_json::Value = match serde_json::from_slice(&v) {
            Ok(value) => value,
            // A corrupt old record stays where it is, for `rrm db check` to report.
            Err(_) => continue,
        };
        let finished = value.get("finished_unix").and_then(|f| f.as_u64()).unwrap_or(0);
        let run_id = format!("{finished:010}-migrated");
        if let Some(obj) = value.as_object_mut() {
            obj.insert("run_id".into(), run_id.clone().into());
            obj.insert("started_unix".into(), finished.into());
            obj.insert("updated_unix".into(), finished.into());
            obj.insert("complete".into(), true.into());
        }
        let bytes = serde_json::to_vec(&value)
            .map_err(|source| StoreError::Encode { table: "meta", source })?;
        let mut batch = sled::Batch::default();
        batch.insert(format!("run/{book}/{run_id}").into_bytes(), bytes);
        batch.remove(k);
        meta.apply_batch(batch).map_err(sled_err)?;
        moved += 1;
    }
    Ok(moved)
}

const META_SCHEMA_KEY: &[u8] = b"schema_version";

/// The named trees of the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    /// book id → book record (source path, title, sizes).
    Books,
    /// book id → task tree record.
    TaskTrees,
    /// node content key → chosen output.
    Outputs,
    /// node content key → all candidates generated for it.
    Candidates,
    /// feedback id → feedback record.
    Feedback,
    /// text hash → embedding (encoder cache).
    Embeddings,
    /// free-form metadata (schema version, run records, registries).
    Meta,
    /// book id → normalized text, for books that have no file (built from text).
    BookTexts,
    /// `<table>/<key>` → a record `rrm db check --repair` moved out of its table.
    Quarantine,
    /// labeler name → labeler record (the hash of their sign-in token, never the token).
    Labelers,
}

impl Table {
    pub const ALL: [Table; 10] = [
        Table::Books,
        Table::TaskTrees,
        Table::Outputs,
        Table::Candidates,
        Table::Feedback,
        Table::Embeddings,
        Table::Meta,
        Table::BookTexts,
        Table::Quarantine,
        Table::Labelers,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Table::Books => "books",
            Table::TaskTrees => "task_trees",
            Table::Outputs => "outputs",
            Table::Candidates => "candidates",
            Table::Feedback => "feedback",
            Table::Embeddings => "embeddings",
            Table::Meta => "meta",
            Table::BookTexts => "book_texts",
            Table::Quarantine => "quarantine",
            Table::Labelers => "labelers",
        }
    }

    /// The table called `name`.
    pub fn from_name(name: &str) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.name() == name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the database; `owner` is what that process wrote beside it (see
    /// [`Owner`]), when it did.
    #[error("database {} {}", path.display(), locked_message(owner.as_ref()))]
    Locked { path: PathBuf, owner: Option<Owner> },
    #[error("database {path} has schema version {found}, newer than this rrm understands ({expected}); use a newer rrm")]
    SchemaMismatch { path: PathBuf, found: u32, expected: u32 },
    #[error("database {path}: migrating from schema version {from} failed: {source}")]
    Migration { path: PathBuf, from: u32, source: Box<StoreError> },
    #[error("database {path}: {source}")]
    Open { path: PathBuf, source: sled::Error },
    #[error("could not create the database folder {path}: {source}")]
    CreateDir { path: PathBuf, source: std::io::Error },
    #[error("database error in table {table}: {source}")]
    Sled { table: &'static str, source: sled::Error },
    #[error("corrupt value in table {table} under key {key}: {source} (run `rrm db check --repair` to move it aside)")]
    Decode { table: &'static str, key: String, source: serde_json::Error },
    #[error("could not encode a value for table {table}: {source}")]
    Encode { table: &'static str, source: serde_json::Error },
}

/// A long-running process that holds the database (`rrm serve`), as it describes itself in a
/// small file beside the database ([`Owner::file`]), so that a command which finds the database
/// locked can say who holds it and what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// The command, e.g. `rrm serve`.
    pub program: String,
    /// Where it can be reached (e.g. `http://127.0.0.1:8080`), if anywhere.
    #[serde(default)]
    pub addr: Option<String>,
    pub pid: u32,
    pub started_unix: u64,
}

impl Owner {
    /// `<db>.owner.json`, beside the database folder.
    pub fn file(db: &Path) -> PathBuf {
        let mut name = db.as_os_str().to_owned();
        name.push(".owner.json");
        PathBuf::from(name)
    }

    /// Writes the file for the database at `db` (the caller holds the database).
    pub fn write(&self, db: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(Owner::file(db), bytes)
    }

    /// Removes the file (when the owner lets the database go).
    pub fn remove(db: &Path) {
        let _ = std::fs::remove_file(Owner::file(db));
    }

    /// What the file beside `db` says, if it exists and reads.
    pub fn read(db: &Path) -> Option<Owner> {
        let bytes = std::fs::read(Owner::file(db)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

fn locked_message(owner: Option<&Owner>) -> String {
    match owner {
        Some(o) => format!(
            "is held by `{}`{} (pid {}): use it there{}, or stop it (Ctrl-C in its terminal, or \
             `kill {}`) and run this command again",
            o.program,
            o.addr.as_deref().map(|a| format!(" at {a}")).unwrap_or_default(),
            o.pid,
            if o.addr.is_some() { " (pages, and the JSON API under /api/)" } else { "" },
            o.pid
        ),
        None => "is in use by another rrm process (close it, or pass another --db)".into(),
    }
}

/// A raw entry of a table: key bytes, value bytes.
pub type RawEntry = (Vec<u8>, Vec<u8>);

/// An open database. Cheap to clone (sled handles are reference counted).
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// How long [`Store::open`] waits for a locked database before it says who holds it.
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_millis(1500);

impl Store {
    /// The default location, relative to the working directory.
    pub fn default_path() -> PathBuf {
        PathBuf::from(".rrm/db")
    }

    /// Opens (or creates) the database at `path` and checks its schema version. Fails with
    /// [`StoreError::Locked`] when another process holds it, after [`LOCK_WAIT`] at most: a
    /// database just closed in this process can stay locked for a moment while sled's flusher
    /// thread lets go of its file.
    pub fn open(path: impl AsRef<Path>) -> Result<Store, StoreError> {
        let path = path.as_ref().to_path_buf();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|source| StoreError::CreateDir { path: parent.to_path_buf(), source })?;
        }
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let db = loop {
            match sled::Config::new().path(&path).open() {
                Ok(db) => break db,
                Err(source) if is_lock_error(&source) => {
                    if std::time::Instant::now() >= deadline {
                        return Err(StoreError::Locked {
                            path: path.clone(),
                            owner: Owner::read(&path),
                        });
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(source) => return Err(StoreError::Open { path: path.clone(), source }),
            }
        };
        let store = Store { db, path };
        store.check_schema()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn check_schema(&self) -> Result<(), StoreError> {
        let meta = self.tree(Table::Meta)?;
        let sled_err = |source| StoreError::Sled { table: "meta", source };
        let found = meta.get(META_SCHEMA_KEY).map_err(sled_err)?;
        let mut version = match found {
            // A new database (no tables written yet) starts at the current version.
            None if self.is_new()? => SCHEMA_VERSION,
            None => 1,
            Some(bytes) => <[u8; 4]>::try_from(bytes.as_ref()).map(u32::from_le_bytes).unwrap_or(0),
        };
        if version > SCHEMA_VERSION || version == 0 {
            return Err(StoreError::SchemaMismatch {
                path: self.path.clone(),
                found: version,
                expected: SCHEMA_VERSION,
            });
        }
        while version < SCHEMA_VERSION {
            let step = MIGRATIONS.iter().find(|m| m.from == version).ok_or_else(|| {
                StoreError::SchemaMismatch {
                    path: self.path.clone(),
                    found: version,
                    expected: SCHEMA_VERSION,
                }
            })?;
            let wrap = |e: StoreError| StoreError::Migration {
                path: self.path.clone(),
                from: version,
                source: Box::new(e),
            };
            let changed = (step.run)(self).map_err(wrap)?;
            self.flush().map_err(wrap)?;
            tracing::info!(
                "database {}: migrated from schema version {version} ({}; {changed} records)",
                self.path.display(),
                step.what
            );
            version += 1;
            meta.insert(META_SCHEMA_KEY, &version.to_le_bytes()).map_err(sled_err)?;
            self.flush()?;
        }
        if found_missing(&meta)? {
            meta.insert(META_SCHEMA_KEY, &SCHEMA_VERSION.to_le_bytes()).map_err(sled_err)?;
            self.flush()?;
        }
        Ok(())
    }

    /// Whether no table holds anything yet.
    fn is_new(&self) -> Result<bool, StoreError> {
        for table in Table::ALL {
            if !self.tree(table)?.is_empty() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn tree(&self, table: Table) -> Result<sled::Tree, StoreError> {
        self.db
            .open_tree(table.name())
            .map_err(|source| StoreError::Sled { table: table.name(), source })
    }

    /// The value under `key`, if any.
    pub fn get<T: DeserializeOwned>(
        &self,
        table: Table,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let tree = self.tree(table)?;
        let Some(bytes) = tree
            .get(key.as_bytes())
            .map_err(|source| StoreError::Sled { table: table.name(), source })?
        else {
            return Ok(None);
        };
        decode(table, key.as_bytes(), &bytes).map(Some)
    }

    pub fn contains(&self, table: Table, key: &str) -> Result<bool, StoreError> {
        self.tree(table)?
            .contains_key(key.as_bytes())
            .map_err(|source| StoreError::Sled { table: table.name(), source })
    }

    /// Stores `value` under `key` (not yet flushed: see [`Store::flush`]).
    pub fn put<T: Serialize>(&self, table: Table, key: &str, value: &T) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value)
            .map_err(|source| StoreError::Encode { table: table.name(), source })?;
        self.tree(table)?
            .insert(key.as_bytes(), bytes)
            .map_err(|source| StoreError::Sled { table: table.name(), source })?;
        Ok(())
    }

    /// Stores all `items` atomically: after a crash either all of them are there or none.
    pub fn put_batch<T: Serialize>(
        &self,
        table: Table,
        items: &[(String, T)],
    ) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for (key, value) in items {
            let bytes = serde_json::to_vec(value)
                .map_err(|source| StoreError::Encode { table: table.name(), source })?;
            batch.insert(key.as_bytes(), bytes);
        }
        self.tree(table)?
            .apply_batch(batch)
            .map_err(|source| StoreError::Sled { table: table.name(), source })
    }

    pub fn remove(&self, table: Table, key: &str) -> Result<bool, StoreError> {
        self.tree(table)?
            .remove(key.as_bytes())
            .map(|old| old.is_some())
            .map_err(|source| StoreError::Sled { table: table.name(), source })
    }

    /// All keys of a table, in byte order.
    pub fn keys(&self, table: Table) -> Result<Vec<String>, StoreError> {
        self.scan_keys(table, "")
    }

    /// Keys that start with `prefix`, in byte order.
    pub fn scan_keys(&self, table: Table, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.tree(table)?
            .scan_prefix(prefix.as_bytes())
            .keys()
            .map(|k| {
                k.map(|k| String::from_utf8_lossy(&k).into_owned())
                    .map_err(|source| StoreError::Sled { table: table.name(), source })
            })
            .collect()
    }

    /// All entries whose key starts with `prefix`, decoded, in key order.
    pub fn scan<T: DeserializeOwned>(
        &self,
        table: Table,
        prefix: &str,
    ) -> Result<Vec<(String, T)>, StoreError> {
        self.tree(table)?
            .scan_prefix(prefix.as_bytes())
            .map(|entry| {
                let (k, v) =
                    entry.map_err(|source| StoreError::Sled { table: table.name(), source })?;
                let value = decode(table, &k, &v)?;
                Ok((String::from_utf8_lossy(&k).into_owned(), value))
            })
            .collect()
    }

    /// Like [`Store::scan`], but a value that does not decode is reported (naming its table and
    /// key, and how to repair it) and skipped instead of failing the whole scan: one corrupt
    /// record must not stop rating, the queue or training.
    pub fn scan_lenient<T: DeserializeOwned>(
        &self,
        table: Table,
        prefix: &str,
    ) -> Result<Vec<(String, T)>, StoreError> {
        let mut out = Vec::new();
        for entry in self.tree(table)?.scan_prefix(prefix.as_bytes()) {
            let (k, v) =
                entry.map_err(|source| StoreError::Sled { table: table.name(), source })?;
            match decode(table, &k, &v) {
                Ok(value) => out.push((String::from_utf8_lossy(&k).into_owned(), value)),
                Err(err) => tracing::warn!("skipped: {err}"),
            }
        }
        Ok(out)
    }

    /// Every raw entry whose key starts with `prefix` (for `rrm db check`).
    pub fn scan_raw(&self, table: Table, prefix: &str) -> Result<Vec<RawEntry>, StoreError> {
        self.tree(table)?
            .scan_prefix(prefix.as_bytes())
            .map(|entry| {
                entry
                    .map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .map_err(|source| StoreError::Sled { table: table.name(), source })
            })
            .collect()
    }

    /// Stores raw bytes under a raw key (for moving records aside, and for tests that corrupt a
    /// value on purpose).
    pub fn put_raw(&self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.tree(table)?
            .insert(key, value)
            .map(|_| ())
            .map_err(|source| StoreError::Sled { table: table.name(), source })
    }

    /// Moves the raw entry `key` of `table` into [`Table::Quarantine`] (as `<table>/<key>`,
    /// with the reason and the raw bytes). The copy is written and flushed before the original is
    /// removed: a crash in between leaves two copies, never none.
    pub fn quarantine(&self, table: Table, key: &[u8], reason: &str) -> Result<(), StoreError> {
        let tree = self.tree(table)?;
        let sled_err = |source| StoreError::Sled { table: table.name(), source };
        let Some(value) = tree.get(key).map_err(sled_err)? else { return Ok(()) };
        let record = serde_json::json!({
            "table": table.name(),
            "key": String::from_utf8_lossy(key),
            "reason": reason,
            "value": String::from_utf8_lossy(&value),
            "value_hex": hex::encode(&value),
        });
        let mut qkey = format!("{}/", table.name()).into_bytes();
        qkey.extend_from_slice(key);
        self.put(Table::Quarantine, &String::from_utf8_lossy(&qkey), &record)?;
        self.flush()?;
        tree.remove(key).map_err(sled_err)?;
        self.flush()
    }

    pub fn len(&self, table: Table) -> Result<usize, StoreError> {
        Ok(self.tree(table)?.len())
    }

    pub fn is_empty(&self, table: Table) -> Result<bool, StoreError> {
        Ok(self.tree(table)?.is_empty())
    }

    /// Bytes the database takes on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.db.size_on_disk().map_err(|source| StoreError::Sled { table: "db", source })
    }

    /// Makes every write so far durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(|source| StoreError::Sled { table: "db", source })
    }
}

fn found_missing(meta: &sled::Tree) -> Result<bool, StoreError> {
    Ok(meta
        .get(META_SCHEMA_KEY)
        .map_err(|source| StoreError::Sled { table: "meta", source })?
        .is_none())
}

fn decode<T: DeserializeOwned>(table: Table, key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Decode {
        table: table.name(),
        key: String::from_utf8_lossy(key).into_owned(),
        source,
    })
}

fn is_lock_error(error: &sled::Error) -> bool {
    match error {
        sled::Error::Io(io) => {
            io.kind() == std::io::ErrorKind::WouldBlock
                || io.to_string().contains("lock")
                || io.raw_os_error() == Some(11)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_scan_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("db")).unwrap();
        store.put(Table::Outputs, "k1", &vec![1, 2, 3]).unwrap();
        store
            .put_batch(Table::Outputs, &[("k2".to_string(), vec![4]), ("j".to_string(), vec![5])])
            .unwrap();
        assert_eq!(store.get::<Vec<i32>>(Table::Outputs, "k1").unwrap(), Some(vec![1, 2, 3]));
        assert_eq!(store.get::<Vec<i32>>(Table::Outputs, "missing").unwrap(), None);
        let ks: Vec<_> = store.scan::<Vec<i32>>(Table::Outputs, "k").unwrap();
        assert_eq!(ks.len(), 2);
        assert!(store.remove(Table::Outputs, "k1").unwrap());
        assert_eq!(store.len(Table::Outputs).unwrap(), 2);
    }

    #[test]
    fn reopen_keeps_data_and_checks_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let store = Store::open(&path).unwrap();
            store.put(Table::Books, "b", &"x").unwrap();
            store.flush().unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.get::<String>(Table::Books, "b").unwrap().as_deref(), Some("x"));
        // A future schema is refused, not misread.
        store.tree(Table::Meta).unwrap().insert(META_SCHEMA_KEY, &99u32.to_le_bytes()).unwrap();
        store.flush().unwrap();
        drop(store);
        match Store::open(&path) {
            Err(StoreError::SchemaMismatch { found: 99, .. }) => {}
            other => panic!("expected schema mismatch, got {other:?}"),
        }
    }

    #[test]
    fn a_held_database_names_its_owner() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let owner = Owner {
            program: "rrm serve".into(),
            addr: Some("http://127.0.0.1:8080".into()),
            pid: 4242,
            started_unix: 1,
        };
        owner.write(&path).unwrap();
        assert_eq!(Owner::read(&path), Some(owner.clone()));
        let err = StoreError::Locked { path: path.clone(), owner: Some(owner) }.to_string();
        assert!(err.contains("rrm serve` at http://127.0.0.1:8080 (pid 4242)"), "{err}");
        assert!(err.contains("kill 4242"), "{err}");
        Owner::remove(&path);
        assert_eq!(Owner::read(&path), None);
        let err = StoreError::Locked { path, owner: None }.to_string();
        assert!(err.contains("another rrm process"), "{err}");
    }

    #[test]
    fn version_1_databases_are_migrated_not_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let store = Store::open(&path).unwrap();
            // A v1 database: one run record per book under run/<book>.
            let old =
                serde_json::json!({"book_id": "b1", "finished_unix": 1700000000u64, "outputs": {}});
            store.put_raw(Table::Meta, b"run/b1", old.to_string().as_bytes()).unwrap();
            store.put_raw(Table::Meta, META_SCHEMA_KEY, &1u32.to_le_bytes()).unwrap();
            store.flush().unwrap();
        }
        let store = Store::open(&path).unwrap();
        let runs = store.scan::<serde_json::Value>(Table::Meta, "run/").unwrap();
        assert_eq!(runs.len(), 1, "{runs:?}");
        assert_eq!(runs[0].0, "run/b1/1700000000-migrated");
        assert_eq!(runs[0].1["complete"], true);
        assert_eq!(runs[0].1["started_unix"], 1700000000u64);
        let version = store.tree(Table::Meta).unwrap().get(META_SCHEMA_KEY).unwrap().unwrap();
        assert_eq!(version.as_ref(), &SCHEMA_VERSION.to_le_bytes());
    }

    #[test]
    fn lenient_scans_skip_and_strict_scans_name_a_corrupt_value() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("db")).unwrap();
        store.put(Table::Outputs, "a", &vec![1]).unwrap();
        store.put_raw(Table::Outputs, b"b", b"{oops").unwrap();
        store.put(Table::Outputs, "c", &vec![3]).unwrap();
        let err = store.scan::<Vec<i32>>(Table::Outputs, "").unwrap_err();
        assert!(err.to_string().contains("under key b"), "{err}");
        let good = store.scan_lenient::<Vec<i32>>(Table::Outputs, "").unwrap();
        assert_eq!(good.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), vec!["a", "c"]);
        store.quarantine(Table::Outputs, b"b", "test").unwrap();
        assert!(store.scan::<Vec<i32>>(Table::Outputs, "").is_ok());
        let q = store.scan::<serde_json::Value>(Table::Quarantine, "").unwrap();
        assert_eq!(q[0].0, "outputs/b");
        assert_eq!(q[0].1["value"], "{oops");
    }

    #[test]
    fn corrupt_value_is_a_decode_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("db")).unwrap();
        store.tree(Table::Outputs).unwrap().insert("bad", b"{not json".as_slice()).unwrap();
        let err = store.get::<Vec<i32>>(Table::Outputs, "bad").unwrap_err();
        assert!(err.to_string().contains("outputs"), "{err}");
    }
}
