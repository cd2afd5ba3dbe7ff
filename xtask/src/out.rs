//! What xtask prints. Its output is often piped (`cargo xtask run | tee
//! log`), and the reader may go first: a Ctrl-C at the terminal stops `tee`
//! as well. Rust ignores SIGPIPE, so a write then fails with `EPIPE`, on
//! which `println!` panics; a panic there would skip forwarding the signal
//! to the daemon and waiting for it. Everything xtask prints goes through
//! [`line`], which drops what it cannot write.

use std::{fmt, io::Write};

/// Writes one line to `to`, and drops it when that fails.
pub fn line(mut to: impl Write, args: fmt::Arguments<'_>) {
    let _ = to.write_fmt(args).and_then(|()| to.write_all(b"\n")).and_then(|()| to.flush());
}

/// `println!` that never panics.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::out::line(std::io::stdout().lock(), format_args!($($arg)*))
    };
}

/// `eprintln!` that never panics.
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::out::line(std::io::stderr().lock(), format_args!($($arg)*))
    };
}

pub(crate) use {errln, outln};

#[cfg(test)]
mod tests {
    use std::io;

    use super::line;

    /// A pipe whose reader has gone.
    struct Closed;

    impl io::Write for Closed {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }

        fn flush(&mut self) -> io::Result<()> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
    }

    #[test]
    fn a_closed_output_is_no_panic() {
        line(Closed, format_args!("forwarding signal {} to the daemon", 2));
    }

    #[test]
    fn a_line_ends_with_a_newline() {
        let mut buf = Vec::new();
        line(&mut buf, format_args!("a {}", "b"));
        assert_eq!(buf, b"a b\n");
    }
}
