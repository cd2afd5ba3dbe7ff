//! `cargo xtask fuzz`: the fuzz targets of `throttle-userspace/fuzz`
//! (cargo-fuzz, libFuzzer), each for a while, and what each found.
//!
//! The targets read what throttle takes from outside: the configuration
//! file, rates, set files and the admin API's bodies
//! ([docs/testing.md](../../docs/testing.md#fuzz-targets)). Each runs on its
//! committed seeds (`fuzz/seeds/<target>`, read only) and a corpus of its own
//! that grows run after run (`fuzz/corpus/<target>`, not committed). Not part
//! of `cargo xtask test`: fuzzing finds, it proves nothing in a given time.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context as _, Result};

use crate::{
    build, cmd,
    out::{errln, outln},
    setup::{self, NIGHTLY},
};

/// The fuzz targets, in the order they run.
pub const TARGETS: [&str; 4] = ["config", "rate", "set_file", "api_body"];

/// The crate whose `fuzz/` directory holds them, from the workspace's root.
const FUZZED_CRATE: &str = "throttle-userspace";

/// cargo-fuzz 0.13.2 is the newest release; pinned so that every machine
/// builds the targets with the same flags.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

#[derive(clap::Args)]
pub struct Options {
    /// Seconds each target runs.
    #[arg(long, default_value_t = 60, value_name = "N")]
    pub secs: u64,
    /// The targets to run [default: all of them].
    #[arg(value_name = "TARGET", value_parser = clap::builder::PossibleValuesParser::new(TARGETS))]
    pub targets: Vec<String>,
}

/// What one target's run came to, from libFuzzer's output.
#[derive(Debug, Default, PartialEq)]
struct Outcome {
    /// Inputs run.
    executions: Option<u64>,
    /// Seconds, as libFuzzer counted them (`Done N runs in S second(s)`).
    secs: Option<u64>,
    /// Coverage (`cov:`, edges) and features (`ft:`) at its last status line.
    cov: Option<u64>,
    ft: Option<u64>,
    /// The input that failed, as cargo-fuzz or libFuzzer names it.
    artifact: Option<String>,
    /// The line after cargo-fuzz's `Failing input:` names it.
    failing_input_next: bool,
}

impl Outcome {
    /// Takes what a line of the run's output says.
    fn read(&mut self, line: &str) {
        let line = line.trim();
        if let Some(status) = line.strip_prefix('#') {
            // `#1234	NEW    cov: 2231 ft: 4098 corp: ...`, `#514217	DONE   cov: ...`.
            let mut words = status.split_whitespace();
            if let Some(n) = words.next().and_then(|n| n.parse().ok()) {
                self.executions = Some(n);
            }
            let words: Vec<&str> = words.collect();
            for pair in words.windows(2) {
                match pair[0] {
                    "cov:" => self.cov = pair[1].parse().ok().or(self.cov),
                    "ft:" => self.ft = pair[1].parse().ok().or(self.ft),
                    _ => {}
                }
            }
        } else if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
            self.executions = n.trim().parse().ok().or(self.executions);
        } else if let Some(rest) = line.strip_prefix("Done ") {
            // `Done 514217 runs in 21 second(s)`.
            let words: Vec<&str> = rest.split_whitespace().collect();
            if let [runs, "runs", "in", secs, ..] = words[..] {
                self.executions = runs.parse().ok().or(self.executions);
                self.secs = secs.parse().ok();
            }
        } else if let Some((_, path)) = line.split_once("Test unit written to ") {
            // Slow units are written too, and are no failure.
            if !path.contains("slow-unit-") {
                self.artifact = Some(path.trim().to_owned());
            }
        } else if line == "Failing input:" {
            self.failing_input_next = true;
        } else if self.failing_input_next && !line.is_empty() {
            // cargo-fuzz names it again, from the crate's directory.
            self.artifact = Some(line.to_owned());
            self.failing_input_next = false;
        }
    }
}

pub fn fuzz(options: &Options) -> Result<()> {
    // The targets link the library, whose build script builds the XDP
    // program: the same set-up as any build.
    setup::setup()?;
    cargo_fuzz()?;
    let targets: Vec<&str> = if options.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        options.targets.iter().map(String::as_str).collect()
    };
    let dir = build::workspace_dir()?.join(FUZZED_CRATE);
    let fuzz_dir = dir.join("fuzz");
    cmd::run(Command::new("cargo").arg(format!("+{NIGHTLY}")).args(["fuzz", "build"]).current_dir(&dir))?;

    let mut results = Vec::new();
    for target in &targets {
        let corpus = fuzz_dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
        let seeds = fuzz_dir.join("seeds").join(target);
        let started = Instant::now();
        let (ok, mut outcome) = run_target(&dir, target, &corpus, &seeds, options.secs)?;
        outcome.secs = outcome.secs.or(Some(started.elapsed().as_secs()));
        if !ok && outcome.artifact.is_none() {
            outcome.artifact = Some("(none named: see the output above)".to_owned());
        }
        results.push((*target, outcome));
    }

    outln!("\n{:<10} {:>12} {:>6} {:>8} {:>8}  result", "target", "executions", "secs", "cov", "ft");
    let shown = |n: Option<u64>| n.map_or_else(|| "?".to_owned(), |n| n.to_string());
    for (target, o) in &results {
        let result = o.artifact.as_ref().map_or_else(|| "no crash".to_owned(), |a| format!("CRASH: {a}"));
        outln!(
            "{target:<10} {:>12} {:>6} {:>8} {:>8}  {result}",
            shown(o.executions),
            shown(o.secs),
            shown(o.cov),
            shown(o.ft)
        );
    }
    let crashed: Vec<String> = results
        .iter()
        .filter_map(|(target, o)| o.artifact.as_ref().map(|a| format!("{target} ({a})")))
        .collect();
    if !crashed.is_empty() {
        bail!(
            "fuzzing found a failing input: {}; run one again with \
             `cd {FUZZED_CRATE} && cargo +{NIGHTLY} fuzz run TARGET ARTIFACT`",
            crashed.join(", ")
        );
    }
    Ok(())
}

/// Installs cargo-fuzz when `cargo fuzz` does not run.
fn cargo_fuzz() -> Result<()> {
    if let Ok(version) = cmd::output(Command::new("cargo").args(["fuzz", "--version"])) {
        outln!("{}: ok", version.trim());
        return Ok(());
    }
    outln!("cargo-fuzz: missing; installing {CARGO_FUZZ_VERSION} with `cargo install`, a minute or two");
    cmd::run(Command::new("cargo").args([
        "install",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
        "--locked",
    ]))?;
    cmd::output(Command::new("cargo").args(["fuzz", "--version"])).context(
        "cargo-fuzz was installed, but `cargo fuzz` does not run: is cargo's bin directory \
         (`$CARGO_HOME/bin`) on PATH?",
    )?;
    outln!("cargo-fuzz {CARGO_FUZZ_VERSION}: installed");
    Ok(())
}

/// Runs one target for `secs` seconds, its output passed on as it comes;
/// whether it ended without a failure, and what it said.
fn run_target(dir: &Path, target: &str, corpus: &Path, seeds: &Path, secs: u64) -> Result<(bool, Outcome)> {
    let mut cargo = Command::new("cargo");
    cargo
        .arg(format!("+{NIGHTLY}"))
        .args(["fuzz", "run", target])
        .arg(corpus)
        .arg(seeds)
        .arg("--")
        .arg(format!("-max_total_time={secs}"))
        .arg("-print_final_stats=1")
        .current_dir(dir)
        .stderr(Stdio::piped());
    let shown = cmd::display(&cargo);
    errln!("$ {shown}");
    let mut child = cargo.spawn().with_context(|| format!("running `{shown}`"))?;
    let mut outcome = Outcome::default();
    let stderr = child.stderr.take().context("the fuzzer's standard error")?;
    // libFuzzer's output is text, but a crash report may quote the input.
    for line in BufReader::new(stderr).split(b'\n') {
        let line = line.with_context(|| format!("reading the output of `{shown}`"))?;
        let line = String::from_utf8_lossy(&line);
        errln!("{line}");
        outcome.read(&line);
    }
    let status = child.wait().with_context(|| format!("waiting for `{shown}`"))?;
    Ok((status.success(), outcome))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(text: &str) -> Outcome {
        let mut outcome = Outcome::default();
        text.lines().for_each(|line| outcome.read(line));
        outcome
    }

    #[test]
    fn a_run_that_ends_is_read_from_its_last_lines() {
        let run = outcome(
            "#14\tINITED cov: 1452 ft: 1702 corp: 13/78b exec/s: 0 rss: 71Mb\n\
             #513742\tREDUCE cov: 2231 ft: 4098 corp: 832/30Kb lim: 965 exec/s: 25687 rss: 505Mb L: 161/866 MS: 3 ChangeBinInt-\n\
             #514217\tDONE   cov: 2231 ft: 4098 corp: 832/30Kb lim: 965 exec/s: 24486 rss: 505Mb\n\
             Done 514217 runs in 21 second(s)\n\
             stat::number_of_executed_units: 514217\n",
        );
        assert_eq!(
            run,
            Outcome {
                executions: Some(514_217),
                secs: Some(21),
                cov: Some(2231),
                ft: Some(4098),
                ..Outcome::default()
            }
        );
    }

    #[test]
    fn a_crash_is_named_by_its_artifact() {
        let run = outcome(
            "#9000\tNEW    cov: 900 ft: 1800 corp: 40/1Kb lim: 40 exec/s: 3000 rss: 60Mb L: 7/30 MS: 1 CopyPart-\n\
             thread '<unnamed>' panicked at src/policy/rate.rs:1:1:\n\
             ==1== ERROR: libFuzzer: deadly signal\n\
             artifact_prefix='/w/throttle-userspace/fuzz/artifacts/rate/'; Test unit written to /w/throttle-userspace/fuzz/artifacts/rate/crash-0a1b\n\
             stat::number_of_executed_units: 9012\n\
             Failing input:\n\
             \n\
             \tfuzz/artifacts/rate/crash-0a1b\n",
        );
        assert_eq!((run.executions, run.cov, run.ft), (Some(9012), Some(900), Some(1800)));
        assert_eq!(run.artifact.as_deref(), Some("fuzz/artifacts/rate/crash-0a1b"));
    }

    #[test]
    fn a_slow_unit_is_no_failure() {
        let run = outcome("Test unit written to fuzz/artifacts/api_body/slow-unit-77\n");
        assert_eq!(run.artifact, None);
    }
}
