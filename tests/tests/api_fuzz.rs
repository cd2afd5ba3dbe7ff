//! End to end, as root: the admin API fuzzed from its own OpenAPI document
//! by schemathesis (from the Python Package Index; `cargo xtask setup` installs it in a venv) against
//! a real daemon, writes included: no 5xx, no answer the document does not
//! describe (status, content type, schema). Then the daemon still answers,
//! and what the accepted requests changed is what a restart loads from its
//! state file: nothing half-applied.

use std::{path::PathBuf, time::Duration};

use serde_json::{json, Value};
use throttle_tests::{poll_until, report, require_root, Daemon, Netns, VethPair};

/// Where `cargo xtask test` says schemathesis is.
const SCHEMATHESIS_ENV: &str = "THROTTLE_SCHEMATHESIS";

/// Test cases per operation and phase: the run stays within a few minutes
/// on two cores.
const MAX_EXAMPLES: &str = "100";

/// The checks run on every answer.
const CHECKS: &str =
    "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance";

/// schemathesis: where `cargo xtask test` says, else where `cargo xtask
/// setup` puts it.
fn schemathesis() -> PathBuf {
    if let Some(path) = std::env::var_os(SCHEMATHESIS_ENV) {
        return PathBuf::from(path);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache"),
        PathBuf::from,
    );
    let venvs = cache.join("throttle");
    let venv = std::fs::read_dir(&venvs)
        .ok()
        .and_then(|dirs| {
            dirs.filter_map(|d| d.ok().map(|d| d.path()))
                .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("schemathesis-")))
                .max()
        })
        .unwrap_or_else(|| {
            panic!(
                "no schemathesis under {} and no {SCHEMATHESIS_ENV}: run `cargo xtask setup`",
                venvs.display()
            )
        });
    venv.join("bin/schemathesis")
}

/// What a restart must load as it was: the policy and the sets, as the API
/// shows them.
fn policy(daemon: &Daemon, ns: &Netns) -> Value {
    let sets: Vec<Value> = daemon.api_get(ns, "/v1/sets")["sets"]
        .as_array()
        .expect("a list of sets")
        .iter()
        .map(|s| json!({"name": s["name"], "prefixes": s["prefixes"], "rule": s["rule"]}))
        .collect();
    json!({
        "limits": daemon.api_get(ns, "/v1/limits"),
        "scope": daemon.api_get(ns, "/v1/scope"),
        "classes": daemon.api_get(ns, "/v1/classes"),
        "unmatched": daemon.api_get(ns, "/v1/unmatched"),
        "rules": daemon.api_get(ns, "/v1/rules"),
        "sets": sets,
    })
}

/// The number after `label` in `text`, if there is one.
fn count_after(text: &str, label: &str) -> Option<u64> {
    let rest = &text[text.find(label)? + label.len()..];
    rest.trim_start().split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// What schemathesis's summary counts: the test cases it sent, the
/// failures it found (`Test cases: 1906 generated, 12 found 12 unique
/// failures`) and the errors (`Errors:`, one line per kind: `Runtime
/// Error: 1`).
fn summary(text: &str) -> (Option<u64>, u64, u64) {
    let cases = count_after(text, "Test cases:");
    let failures = text
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{} generated", cases.unwrap_or(0))))
        .and_then(|l| count_after(l, "found"))
        .unwrap_or(0);
    let errors = text
        .lines()
        .skip_while(|l| l.trim() != "Errors:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.rsplit(':').next()?.trim().parse::<u64>().ok())
        .sum();
    (cases, failures, errors)
}

#[test]
fn schemathesis_finds_no_server_error_and_no_answer_off_the_document() {
    require_root!();
    let pair = VethPair::builder().build();
    let mut daemon = Daemon::builder(&pair.receiver, &pair.rx_if).start_ready();
    let ns = &pair.receiver;
    let before = policy(&daemon, ns);
    let url = format!("http://{}/v1/openapi.json", daemon.admin());
    let reports = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("schemathesis");
    std::fs::create_dir_all(&reports).unwrap_or_else(|e| panic!("create {}: {e}", reports.display()));
    let bin = schemathesis();
    let mut cmd = ns.command(&bin);
    // Its own files (`.schemathesis/`) go beside the reports.
    cmd.current_dir(&reports);
    cmd.args(["run", &url, "--checks", CHECKS, "--max-examples", MAX_EXAMPLES])
        // A capture streams until the client goes away: no answer ends.
        .args(["--exclude-path", "/v1/capture"])
        // One worker: with two, Python 3.11's `ast` (which hypothesis calls to
        // describe its strategies) is not thread-safe and fails now and then
        // ("AST constructor recursion depth mismatch").
        .args(["--request-timeout", "10", "--workers", "1", "--no-color", "--generation-database", "none"])
        .args(["--report", "junit", "--report-dir"])
        .arg(&reports)
        .env("SCHEMATHESIS_HOOKS", "")
        .env("NO_COLOR", "1");
    let started = std::time::Instant::now();
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("running {} (cargo xtask setup installs schemathesis): {e}", bin.display())
    });
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let took = started.elapsed();
    let (cases, failures, errors) = summary(&text);
    report(&format!(
        "schemathesis: {} test cases in {:.0} s, {failures} failures, {errors} errors, {}; report in {}",
        cases.map_or_else(|| "?".to_owned(), |n| n.to_string()),
        took.as_secs_f64(),
        out.status,
        reports.display()
    ));
    assert!(
        out.status.success() && cases.is_some_and(|n| n > 0),
        "schemathesis found failures (or ran nothing):\n{text}\n--- daemon log ---\n{}",
        daemon.log()
    );

    // Still answering, and still consistent: what the accepted requests
    // left is what the state file holds.
    assert_eq!(daemon.api_get(ns, "/v1/status")["ready"], true, "the daemon answers after the run");
    // The controller (which a fuzzed request may have turned on) writes the
    // maps as it moves its scale: off, and settled, for the count below.
    let _ = daemon.cli(ns, ["controller", "set", "--enabled", "false"]).ok();
    let version = || daemon.api_get(ns, "/v1/status")["config_version"].as_u64();
    let settled = poll_until(Duration::from_secs(10), Duration::from_millis(500), || {
        let seen = version();
        std::thread::sleep(Duration::from_millis(500));
        (version() == seen).then_some(())
    });
    assert!(settled.is_some(), "the maps are still being written 10 s after the controller was turned off");
    let status = daemon.api_get(ns, "/v1/status");

    // And a thousand rules more from a file, in one change: one version.
    let rules: String = (0..1000u32)
        .map(|i| match i % 3 {
            0 => format!("198.18.{}.{}/30 deny\n", i / 64, i % 64 * 4),
            1 => format!("fd00:1000:{i:x}::/48 limit --rate {}/minute\n", i + 1),
            _ => format!("198.19.{}.{}/30 allow  # {i}\n", i / 64, i % 64 * 4),
        })
        .collect();
    let file = reports.join("rules.txt");
    std::fs::write(&file, rules).unwrap_or_else(|e| panic!("write {}: {e}", file.display()));
    let had = daemon.api_get(ns, "/v1/rules")["rules"].as_array().map_or(0, Vec::len);
    let started = std::time::Instant::now();
    let out = daemon.cli(ns, ["rules", "add", "--file", file.to_str().expect("a UTF-8 path")]);
    let took = started.elapsed();
    assert!(out.ok().starts_with("added 1000 rules: "), "{out}");
    let now = daemon.api_get(ns, "/v1/status");
    assert_eq!(now["rules"].as_u64(), Some(had as u64 + 1000), "{now}");
    assert_eq!(
        now["config_version"].as_u64(),
        status["config_version"].as_u64().map(|v| v + 1),
        "a thousand rules in one write of the maps"
    );
    report(&format!("1000 rules added from a file in one change in {:.0} ms", took.as_secs_f64() * 1e3));
    let after = policy(&daemon, ns);
    report(&format!(
        "schemathesis left {} rules, {} classes, {} sets (before: {} rules)",
        after["rules"]["rules"].as_array().map_or(0, Vec::len),
        after["classes"]["classes"].as_array().map_or(0, Vec::len),
        after["sets"].as_array().map_or(0, Vec::len),
        before["rules"]["rules"].as_array().map_or(0, Vec::len),
    ));
    daemon.restart(ns);
    daemon.wait_ready(Duration::from_secs(30));
    let restarted = policy(&daemon, ns);
    assert_eq!(
        restarted, after,
        "a restart loads from the state file what the API showed before it:\nbefore {after:#}\nafter {restarted:#}"
    );
}

#[test]
fn the_summary_is_read_as_schemathesis_prints_it() {
    let failed = "Errors:\n  🚫 Runtime Error: 1\n\nWarnings:\n  ⚠️ Missing test data: 3 operations\n\n\
                  Test cases:\n  1906 generated, 12 found 12 unique failures\n";
    assert_eq!(summary(failed), (Some(1906), 12, 1));
    assert_eq!(summary("Test cases:\n  2336 generated, 2336 passed\n"), (Some(2336), 0, 0));
    assert_eq!(summary("schemathesis: command not found\n"), (None, 0, 0));
}
