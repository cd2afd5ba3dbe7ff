//! Running external commands: echoed before they run, with the command line
//! in every error. Probes (commands that only ask about the machine) run
//! quietly.

use std::{
    ffi::OsStr,
    process::{Command, Stdio},
};

use anyhow::{bail, ensure, Context as _, Result};

use crate::out::errln;

/// The command line as a shell would take it, with the environment variables
/// the command sets in front.
pub fn display(cmd: &Command) -> String {
    let envs = cmd
        .get_envs()
        .filter_map(|(key, value)| value.map(|value| format!("{}={}", key.to_string_lossy(), quote(value))));
    let program = std::iter::once(quote(cmd.get_program()));
    let args = cmd.get_args().map(quote);
    envs.chain(program).chain(args).collect::<Vec<_>>().join(" ")
}

fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Echoes `cmd`, runs it with inherited stdio and fails unless it succeeds.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = display(cmd);
    errln!("$ {shown}");
    let status = cmd.status().with_context(|| format!("running `{shown}`"))?;
    ensure!(status.success(), "`{shown}` failed: {status}");
    Ok(())
}

/// Runs `cmd` quietly and returns its standard output; fails with its
/// standard error unless it succeeds.
pub fn output(cmd: &mut Command) -> Result<String> {
    let shown = display(cmd);
    let output = cmd.stdin(Stdio::null()).output().with_context(|| format!("running `{shown}`"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        bail!("`{shown}` failed: {}: {}", output.status, stderr.trim());
    }
    String::from_utf8(output.stdout).with_context(|| format!("output of `{shown}` is not UTF-8"))
}

/// Whether the effective user is root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// How a command that needs root gets it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Privilege {
    /// We are root already.
    Root,
    /// Through `sudo -E`, which keeps the environment (`THROTTLE_BIN` and the
    /// like).
    Sudo,
}

impl Privilege {
    /// Root if we are root, else sudo if there is one, else nothing.
    pub fn detect() -> Option<Self> {
        if is_root() {
            Some(Self::Root)
        } else if which::which("sudo").is_ok() {
            Some(Self::Sudo)
        } else {
            None
        }
    }

    /// Like [`Privilege::detect`], but an error naming `what` needs root.
    pub fn require(what: &str) -> Result<Self> {
        Self::detect().with_context(|| {
            format!("{what} needs root: run it as root, or install sudo (not found on PATH)")
        })
    }

    /// `program`, run as root.
    pub fn command(self, program: impl AsRef<OsStr>) -> Command {
        match self {
            Self::Root => Command::new(program),
            Self::Sudo => {
                let mut cmd = Command::new("sudo");
                cmd.arg("-E").arg(program);
                cmd
            }
        }
    }

    /// The prefix a user types in front of a command to run it like this.
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Root => "",
            Self::Sudo => "sudo ",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_quotes_what_a_shell_would_split() {
        let mut cmd = Command::new("cargo");
        cmd.env("LLVM_PREFIX", "/a b").args(["install", "--features", "llvm-22", "it's"]);
        assert_eq!(display(&cmd), r"LLVM_PREFIX='/a b' cargo install --features llvm-22 'it'\''s'");
    }
}
