//! The daemon's log output: lines to stderr that never stop the daemon.
//!
//! A daemon's stderr is often a pipe (`throttle daemon 2>&1 | tee log`,
//! a terminal multiplexer, a supervisor's log reader), and its reader may go
//! away while the daemon runs. Rust ignores SIGPIPE, so a write then fails
//! with `EPIPE`; the standard `eprintln!` panics on that, and so does
//! tracing-subscriber when it reports its own write errors. Enforcement and
//! the clean-up on exit must not depend on anyone reading the log: every
//! write error is swallowed here, and counted
//! (`throttle_log_write_errors_total`).

use std::{
    fmt,
    io::{self, Write},
    sync::atomic::{AtomicU64, Ordering},
};

use tracing_subscriber::fmt::MakeWriter;

/// Log writes that failed since the daemon started.
static WRITE_ERRORS: AtomicU64 = AtomicU64::new(0);

/// Log writes that failed (and were dropped) since the daemon started.
#[must_use]
pub fn write_errors() -> u64 {
    WRITE_ERRORS.load(Ordering::Relaxed)
}

/// A writer whose writes always succeed: a failure of `inner` is counted
/// and the bytes are dropped.
#[derive(Debug)]
pub struct Forgiving<W>(pub W);

impl<W: Write> Write for Forgiving<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.0.write_all(buf).is_err() {
            WRITE_ERRORS.fetch_add(1, Ordering::Relaxed);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.0.flush().is_err() {
            WRITE_ERRORS.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// The daemon's log destination: stderr, through [`Forgiving`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Stderr;

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = Forgiving<io::StderrLock<'static>>;

    fn make_writer(&'a self) -> Self::Writer {
        Forgiving(io::stderr().lock())
    }
}

/// Writes one line to stderr, as `eprintln!` would, but never panics:
/// for the messages a process prints on its way out.
pub fn eprint_line(args: fmt::Arguments<'_>) {
    let _ = writeln!(Forgiving(io::stderr().lock()), "{args}");
}

/// Writes `text` to stdout, as `print!` would, but never panics; false when
/// it could not be written (a closed pipe: `throttle status | head -1`).
#[must_use = "false: the reader has gone"]
pub fn print_text(text: &str) -> bool {
    let mut stdout = io::stdout().lock();
    stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()).is_ok()
}

#[cfg(test)]
mod tests {
    use std::io::{self, Write as _};

    use super::{write_errors, Forgiving};

    /// A writer whose reader has gone.
    struct BrokenPipe;

    impl io::Write for BrokenPipe {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }

        fn flush(&mut self) -> io::Result<()> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
    }

    #[test]
    fn a_broken_pipe_is_counted_not_returned() {
        let before = write_errors();
        let mut writer = Forgiving(BrokenPipe);
        assert_eq!(writer.write(b"a line\n").unwrap(), 7);
        writer.flush().unwrap();
        writeln!(writer, "another").unwrap();
        assert!(write_errors() >= before + 3, "{} errors counted, {before} before", write_errors());
    }

    #[test]
    fn a_working_writer_gets_every_byte() {
        let mut writer = Forgiving(Vec::new());
        writeln!(writer, "x = {}", 1).unwrap();
        assert_eq!(writer.0, b"x = 1\n");
    }
}
