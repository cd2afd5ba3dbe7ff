//! The example alerting rules, checked by Prometheus's own promtool (Debian's
//! `prometheus` package, which `cargo xtask setup` installs). That every
//! metric they name is served is checked in the daemon's API tests.

use std::{path::Path, process::Command};

use throttle_tests::require_root;

#[test]
fn the_alerting_rules_pass_promtool() {
    // Not for want of root: this tier is the one that runs with the tools
    // `cargo xtask setup` installs, and fails in CI when one is missing.
    require_root!();
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/monitoring/alerts.yml");
    let out =
        Command::new("promtool").args(["check", "rules"]).arg(&rules).output().unwrap_or_else(|e| {
            panic!("running promtool (cargo xtask setup installs Debian's prometheus): {e}")
        });
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success() && text.contains("SUCCESS"),
        "promtool check rules {}:\n{text}",
        rules.display()
    );
}
