//! Where the libraries' log records go when the `bluepoll` command runs: stderr, one line each,
//! as the messages were written (they name their layer). `BLUEPOLL_LOG=error|warn|info|debug|
//! trace|off` sets the level; warnings and errors by default. A program embedding the crates
//! installs its own `log` implementation instead.

use std::io::Write as _;

use log::{LevelFilter, Log, Metadata, Record};

struct Stderr;

impl Log for Stderr {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if self.enabled(record.metadata()) {
            // One write per line so lines from threads do not interleave.
            let line = format!("{}\n", record.args());
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        }
    }

    fn flush(&self) {}
}

/// Installs the stderr logger at the level `BLUEPOLL_LOG` names (an unknown name is refused
/// rather than silently ignored).
pub fn install() -> anyhow::Result<()> {
    let level = match std::env::var("BLUEPOLL_LOG") {
        Err(_) => LevelFilter::Warn,
        Ok(name) => name.parse::<LevelFilter>().map_err(|_| {
            anyhow::anyhow!("BLUEPOLL_LOG={name}: not one of off, error, warn, info, debug, trace")
        })?,
    };
    log::set_logger(&Stderr).map_err(|e| anyhow::anyhow!("installing the logger: {e}"))?;
    log::set_max_level(level);
    Ok(())
}
