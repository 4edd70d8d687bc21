//! `banter backup` and `banter export`: what an operator does with the SQLite history from the
//! command line, while Banter runs or not. Neither writes to the live database.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use rusqlite::Connection;
use rusqlite::backup::{Backup, StepResult};

use super::schema::{self, DB_FILE};
use crate::chat::StoredMessage;

/// How long `backup` keeps retrying while the source is busy (a checkpoint, a retention step).
const BACKUP_BUSY_RETRIES: u32 = 100;
const BACKUP_BUSY_PAUSE: Duration = Duration::from_millis(50);

/// What a backup copied.
#[derive(Debug)]
pub struct BackupReport {
    pub path: PathBuf,
    pub messages: u64,
    pub rooms: u64,
    pub bytes: u64,
}

/// Copies the history database in `data_dir` to `dest`, a new file, with SQLite's online backup:
/// one read transaction over the whole copy, so the copy is the database as of one commit,
/// while Banter keeps committing. The copy is a single self-contained file (no WAL), checked
/// with `integrity_check`, written under a temporary name and renamed when complete.
pub fn backup(data_dir: &Path, dest: &Path) -> anyhow::Result<BackupReport> {
    let source_path = data_dir.join(DB_FILE);
    let source = schema::open_read_only(&source_path)?;
    if dest.exists() {
        bail!(
            "{} exists already: give the backup a new name",
            dest.display()
        );
    }
    let mut partial = dest.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let _ = std::fs::remove_file(&partial);
    let mut target = Connection::open(&partial)
        .with_context(|| format!("cannot create {}", partial.display()))?;
    copy(&source, &mut target).with_context(|| {
        format!(
            "backup of {} to {} failed",
            source_path.display(),
            partial.display()
        )
    })?;
    // The source is in WAL mode and the copy says so too: one file is easier to keep and restore.
    let mode: String = target.query_row("PRAGMA journal_mode = DELETE", [], |row| row.get(0))?;
    anyhow::ensure!(mode.eq_ignore_ascii_case("delete"), "journal mode {mode}");
    let verdict: String = target.query_row("PRAGMA integrity_check", [], |row| row.get(0))?;
    if verdict != "ok" {
        bail!("the copy failed SQLite's integrity check: {verdict}");
    }
    let (messages, rooms): (i64, i64) = target.query_row(
        "SELECT count(*), count(DISTINCT room) FROM messages",
        [],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    drop(target);
    std::fs::File::open(&partial)?.sync_all()?;
    std::fs::rename(&partial, dest)
        .with_context(|| format!("cannot rename {} to {}", partial.display(), dest.display()))?;
    Ok(BackupReport {
        path: dest.to_owned(),
        messages: u64::try_from(messages).unwrap_or(0),
        rooms: u64::try_from(rooms).unwrap_or(0),
        bytes: std::fs::metadata(dest)?.len(),
    })
}

fn copy(source: &Connection, target: &mut Connection) -> anyhow::Result<()> {
    let backup = Backup::new(source, target)?;
    for _ in 0..BACKUP_BUSY_RETRIES {
        // -1: every page in one step, within one read transaction of the source.
        match backup.step(-1)? {
            StepResult::Done => return Ok(()),
            StepResult::More | StepResult::Busy | StepResult::Locked => {
                std::thread::sleep(BACKUP_BUSY_PAUSE)
            }
            _ => std::thread::sleep(BACKUP_BUSY_PAUSE),
        }
    }
    bail!("the database stayed busy; try again")
}

/// Writes the messages of `room` stored in `data_dir`'s database to `out`, oldest first, one
/// JSON object per line, as clients receive them (`{"id","ts","username","message"}`). Reads one
/// snapshot. Returns how many.
pub fn export(data_dir: &Path, room: &str, out: &mut dyn Write) -> anyhow::Result<u64> {
    let path = data_dir.join(DB_FILE);
    let mut conn = schema::open_read_only(&path)?;
    let snapshot = conn.transaction()?;
    let mut select = snapshot
        .prepare("SELECT id, ts, username, message FROM messages WHERE room = ?1 ORDER BY id")?;
    let mut rows = select.query([room])?;
    let mut count = 0;
    while let Some(row) = rows.next()? {
        let message = StoredMessage {
            id: u64::try_from(row.get::<_, i64>(0)?).unwrap_or(0),
            ts: u64::try_from(row.get::<_, i64>(1)?).unwrap_or(0),
            username: row.get(2)?,
            message: row.get(3)?,
        };
        serde_json::to_writer(&mut *out, &message)?;
        out.write_all(b"\n")?;
        count += 1;
    }
    out.flush()?;
    Ok(count)
}
