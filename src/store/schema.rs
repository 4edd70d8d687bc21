//! The database file: how it is opened, its schema and the migrations between schema versions,
//! and the sentences that explain SQLite's failures to whoever runs Banter.
//!
//! The schema's version is SQLite's `user_version`. Each migration is frozen SQL, run in order in
//! one write transaction at start; a migration is never edited once released, so that applying
//! the first N of them makes exactly the database that version N made.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use rusqlite::{Connection, ErrorCode, OpenFlags, TransactionBehavior};

use crate::store::SyncMode;

/// The file inside the data directory.
pub const DB_FILE: &str = "banter.db";

/// Marks the file as Banter's (SQLite's `application_id`, "BNTR"), so that another program's
/// database is refused rather than written into.
const APPLICATION_ID: i32 = 0x424E_5452;

/// Migration `i` takes a database from version `i` to version `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    // 1: messages per room, ordered by id; when the database was made (the history of a room
    // reaches back no further than that).
    "CREATE TABLE meta (
         key TEXT PRIMARY KEY,
         value INTEGER NOT NULL
     ) WITHOUT ROWID;
     INSERT INTO meta (key, value) VALUES ('created_ms', CAST(unixepoch('subsec') * 1000 AS INTEGER));
     CREATE TABLE messages (
         room TEXT NOT NULL,
         id INTEGER NOT NULL,
         ts INTEGER NOT NULL,
         username TEXT NOT NULL,
         message TEXT NOT NULL,
         PRIMARY KEY (room, id)
     ) WITHOUT ROWID;",
    // 2: retention. Per room, the floor: every message with an id above it is still stored
    // (retention deletes oldest first and raises it). Rooms of a version-1 database lost nothing
    // yet: their floor is the database's creation.
    "CREATE TABLE rooms (
         room TEXT PRIMARY KEY,
         floor INTEGER NOT NULL
     ) WITHOUT ROWID;
     INSERT INTO rooms (room, floor)
         SELECT DISTINCT room, (SELECT value FROM meta WHERE key = 'created_ms') * 1000
         FROM messages;",
];

/// The version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Opens the database with the settings every connection of Banter's uses: WAL (readers never
/// wait for the writer, one fsync per commit), `synchronous = FULL` by default (a commit is on
/// the disk when it returns, so an acked message survives a power cut, not only a crash of the
/// process; `SyncMode::Normal` syncs at checkpoints only), and `wait` as the longest wait for a
/// lock another process holds.
pub fn open(
    path: &Path,
    create: bool,
    wait: Duration,
    sync: SyncMode,
) -> rusqlite::Result<Connection> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(wait)?;
    // Reading the mode back is what touches the file: a file that is not a database fails here.
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
            Some(format!(
                "the file system refused WAL mode (journal mode is {mode})"
            )),
        ));
    }
    let synchronous = match sync {
        SyncMode::Full => "FULL",
        SyncMode::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", synchronous)?;
    Ok(conn)
}

/// Opens a database for reading only (backup, export): never creates, migrates or writes it.
pub fn open_read_only(path: &Path) -> anyhow::Result<Connection> {
    if !path.is_file() {
        bail!("there is no history database at {}", path.display());
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|err| explain(path, &err))
        .context("cannot open the history database")?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let version = version(&conn).map_err(|err| explain(path, &err))?;
    check_known(path, &conn, version)?;
    if version < SCHEMA_VERSION {
        bail!(
            "{} has schema version {version}; start this version of Banter on it once to \
             migrate it to version {SCHEMA_VERSION}",
            path.display()
        );
    }
    Ok(conn)
}

fn version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.pragma_query_value(None, "user_version", |row| row.get(0))
}

fn check_known(path: &Path, conn: &Connection, version: i64) -> anyhow::Result<()> {
    let app: i32 = conn
        .pragma_query_value(None, "application_id", |row| row.get(0))
        .map_err(|err| explain(path, &err))?;
    if version > 0 && app != APPLICATION_ID {
        bail!(
            "{} is a SQLite database, but not Banter's (application_id {app:#x}); point \
             --data-dir elsewhere",
            path.display()
        );
    }
    if version > SCHEMA_VERSION {
        bail!(
            "{} was written by a newer Banter (schema version {version}; this one knows up to \
             {SCHEMA_VERSION}): run that version, or restore a backup made by this one",
            path.display()
        );
    }
    Ok(())
}

/// Brings the schema to `SCHEMA_VERSION`, in one write transaction, and checks that the file is
/// sound. Taking the write lock here also proves, before any client is served, that no other
/// process holds the database.
pub fn migrate(path: &Path, conn: &mut Connection) -> anyhow::Result<()> {
    let explained = |err: rusqlite::Error| explain(path, &err);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(explained)?;
    let from = version(&tx).map_err(explained)?;
    check_known(path, &tx, from)?;
    for (step, sql) in MIGRATIONS.iter().enumerate().skip(from as usize) {
        tx.execute_batch(sql)
            .map_err(explained)
            .with_context(|| format!("migration to schema version {} failed", step + 1))?;
    }
    if from < SCHEMA_VERSION {
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(explained)?;
        tx.pragma_update(None, "application_id", APPLICATION_ID)
            .map_err(explained)?;
        tracing::info!(from, to = SCHEMA_VERSION, "migrated the history database");
    }
    tx.commit().map_err(explained)?;
    // A damaged page is found now rather than when a client's message lands on it. The file is
    // bounded by retention, so this takes milliseconds.
    let verdict: String = conn
        .query_row("PRAGMA quick_check", [], |row| row.get(0))
        .map_err(explained)?;
    if verdict != "ok" {
        bail!(
            "{} is damaged (SQLite's quick_check: {verdict}). Restore it from a backup (docs/deploy.md), \
             or move it away to start with an empty history",
            path.display()
        );
    }
    Ok(())
}

/// Applies the first `version` migrations to an empty database: the database that version
/// made. For tests of the migrations.
pub fn create_at_version(conn: &Connection, version: usize) -> rusqlite::Result<()> {
    for sql in &MIGRATIONS[..version] {
        conn.execute_batch(sql)?;
    }
    conn.pragma_update(None, "user_version", version as i64)?;
    conn.pragma_update(None, "application_id", APPLICATION_ID)
}

/// What a SQLite failure means for whoever runs Banter, with what to do about it.
pub fn explain(path: &Path, err: &rusqlite::Error) -> anyhow::Error {
    let file = path.display();
    let code = err.sqlite_error_code();
    let what = match code {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => format!(
            "{file} is locked by another process (another Banter on the same data directory, or \
             a tool holding a write transaction on it)"
        ),
        Some(ErrorCode::NotADatabase) => format!(
            "{file} is not a SQLite database, or it is damaged. Restore it from a backup \
             (docs/deploy.md), or move it away to start with an empty history"
        ),
        Some(ErrorCode::DatabaseCorrupt) => format!(
            "{file} is damaged. Restore it from a backup (docs/deploy.md), or move it away to \
             start with an empty history"
        ),
        Some(ErrorCode::DiskFull) => format!("the disk that holds {file} is full"),
        Some(ErrorCode::ReadOnly) => format!("{file} cannot be written (a read-only file or disk)"),
        Some(ErrorCode::CannotOpen | ErrorCode::PermissionDenied) => format!(
            "{file} cannot be opened for writing (check that the data directory exists and \
             that Banter's user may write in it)"
        ),
        Some(ErrorCode::SystemIoFailure) => format!("reading or writing {file} failed (I/O error)"),
        _ => format!("the history database {file} failed"),
    };
    anyhow::anyhow!("{what}: {err}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_database_gets_the_current_schema_and_a_second_start_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let mut conn = open(&path, true, Duration::from_secs(1), SyncMode::Full).unwrap();
        migrate(&path, &mut conn).unwrap();
        assert_eq!(version(&conn).unwrap(), SCHEMA_VERSION);
        let created: i64 = conn
            .query_row("SELECT value FROM meta WHERE key = 'created_ms'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert!((created - crate::chat::now_millis() as i64).abs() < 60_000);
        migrate(&path, &mut conn).unwrap();
        assert_eq!(version(&conn).unwrap(), SCHEMA_VERSION);
    }

    #[test]
    fn a_newer_or_foreign_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let mut conn = open(&path, true, Duration::from_secs(1), SyncMode::Full).unwrap();
        migrate(&path, &mut conn).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        let err = migrate(&path, &mut conn).unwrap_err().to_string();
        assert!(err.contains("newer Banter"), "{err}");

        let other = dir.path().join("other.db");
        let mut conn = open(&other, true, Duration::from_secs(1), SyncMode::Full).unwrap();
        conn.execute_batch("CREATE TABLE t (x); PRAGMA user_version = 1;")
            .unwrap();
        let err = migrate(&other, &mut conn).unwrap_err().to_string();
        assert!(err.contains("not Banter's"), "{err}");
    }
}
