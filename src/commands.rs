//! The commands of `banter` other than serving: `backup` and `export` of the SQLite history.

use anyhow::Context;

use crate::config::{Command, Config};
use crate::store::tools;

/// Runs a command of `banter` other than serving (`backup`, `export`).
pub fn run(command: &Command, config: &Config) -> anyhow::Result<()> {
    match command {
        Command::Backup { path } => {
            let report = tools::backup(&config.data_dir, path)?;
            tracing::info!(
                path = %report.path.display(),
                messages = report.messages,
                rooms = report.rooms,
                bytes = report.bytes,
                "backup written"
            );
        }
        Command::Export { room, out } => {
            let count = match out {
                Some(path) => {
                    let file = std::fs::File::create(path)
                        .with_context(|| format!("cannot create {}", path.display()))?;
                    tools::export(&config.data_dir, room, &mut std::io::BufWriter::new(file))?
                }
                None => {
                    match tools::export(&config.data_dir, room, &mut std::io::stdout().lock()) {
                        // The reader stopped (`banter export | head`): it has what it wanted.
                        Err(err) if broken_pipe(&err) => return Ok(()),
                        result => result?,
                    }
                }
            };
            tracing::info!(room, messages = count, "exported");
        }
    }
    Ok(())
}

/// Whether writing failed because the reading end of a pipe was closed.
fn broken_pipe(err: &anyhow::Error) -> bool {
    use std::io::ErrorKind::BrokenPipe;
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == BrokenPipe)
            || e.downcast_ref::<serde_json::Error>()
                .and_then(serde_json::Error::io_error_kind)
                == Some(BrokenPipe)
    })
}
