//! End to end, as root: the dashboard at `/` in a real browser (Debian's
//! headless Chromium) against the real daemon under a flood.

use std::{path::PathBuf, process::Output, time::Duration};

use throttle_tests::{require_root, Checks, Daemon, Flood, Flow, Netns, VethPair};

/// Chromium, headless, in `ns`: the page's DOM after `budget_ms` of its
/// (virtual) time, with its console on stderr; and a screenshot when asked.
fn chromium(ns: &Netns, url: &str, budget_ms: u32, screenshot: Option<&PathBuf>) -> Output {
    let mut cmd = ns.command("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--enable-logging=stderr",
        "--v=0",
        "--window-size=1280,1100",
        &format!("--virtual-time-budget={budget_ms}"),
    ]);
    let profile = std::env::temp_dir().join(format!("throttle-chromium-{}", throttle_tests::unique_id()));
    cmd.arg(format!("--user-data-dir={}", profile.display()));
    match screenshot {
        Some(path) => cmd.arg(format!("--screenshot={}", path.display())),
        None => cmd.arg("--dump-dom"),
    };
    let out = cmd
        .arg(url)
        .output()
        .unwrap_or_else(|e| panic!("running chromium (cargo xtask setup installs it): {e}"));
    throttle_tests::remove_dir(&profile);
    out
}

/// The page's console errors in chromium's log.
fn console_errors(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.contains("CONSOLE") && (l.contains("Uncaught") || l.contains("Error")))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_dashboard_shows_the_flood_its_source_and_its_first_drop() {
    require_root!();
    let test = "the_dashboard_shows_the_flood_its_source_and_its_first_drop";
    let mut checks = Checks::new(test);
    let pair = VethPair::builder().sender_addrs(["10.99.11.1/16"]).build();
    let src = pair.sender_ips()[0];
    let config = "[limits]\nrate = 100\nburst = 100\n";
    let daemon = Daemon::builder(&pair.receiver, &pair.rx_if).config(config).start_ready();
    let flood = Flood::start(
        &pair.sender,
        vec![Flow::new(src, pair.dst_for(src, 9000)).rate(2_000)],
        Some(Duration::from_secs(20)),
    );
    std::thread::sleep(Duration::from_millis(500));
    let url = format!("http://{}/", daemon.admin());
    let out = chromium(&pair.receiver, &url, 6_000, None);
    let dom = String::from_utf8_lossy(&out.stdout);
    let errors = console_errors(&out);
    checks.that(
        out.status.success() && errors.is_empty(),
        &format!("the page loads without console errors: {errors:?}"),
    );
    let points = dom
        .split("id=\"packets-chart\"")
        .nth(1)
        .and_then(|rest| rest.split("data-points=\"").nth(1))
        .and_then(|rest| rest.split('"').next())
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(0);
    checks.that(points >= 2 && dom.contains("<canvas"), &format!("the packets chart draws points: {points}"));
    let top = dom.split("id=\"top\"").nth(1).unwrap_or("");
    checks.that(
        top.contains(&format!("<td>{src}</td>")),
        &format!(
            "the flooding source {src} is in the top list: {}",
            top.chars().take(300).collect::<String>()
        ),
    );
    checks.that(dom.contains(&format!("drop_start source={src}")), "the event of its first drop shows");
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let out = chromium(&pair.receiver, &url, 6_000, Some(&shot));
    checks.that(out.status.success() && shot.exists(), &format!("a screenshot at {}", shot.display()));
    let _ = flood.stop();
    checks.assert_all();
}

#[test]
fn with_a_token_the_dashboard_asks_for_it_and_sends_it() {
    require_root!();
    let test = "with_a_token_the_dashboard_asks_for_it_and_sends_it";
    let mut checks = Checks::new(test);
    let pair = VethPair::builder().build();
    let daemon = Daemon::builder(&pair.receiver, &pair.rx_if).token("s3cret-token").start_ready();
    let url = format!("http://{}/", daemon.admin());
    let out = chromium(&pair.receiver, &url, 3_000, None);
    let dom = String::from_utf8_lossy(&out.stdout);
    checks.that(
        dom.contains("<form id=\"token-prompt\">") && dom.contains("a token is needed"),
        "without the token, the page asks for it",
    );
    let out = chromium(&pair.receiver, &format!("{url}#token=s3cret-token"), 3_000, None);
    let dom = String::from_utf8_lossy(&out.stdout);
    checks.that(
        dom.contains("<form id=\"token-prompt\" hidden=\"\">") && dom.contains("ready"),
        "with it, the page reads the API",
    );
    let out = chromium(&pair.receiver, &format!("{url}#token=wrong"), 3_000, None);
    let dom = String::from_utf8_lossy(&out.stdout);
    checks.that(dom.contains("the token was refused"), "a wrong token is refused, and the page says so");
    checks.assert_all();
}
