//! The report: every figure in one serializable value, the project's
//! targets judged against it, and the tables (plain for the terminal,
//! Markdown for the README).

use std::fmt::Write as _;

use serde::Serialize;

use crate::{
    admin,
    cost::{self, Path},
    flood::{self, Mode, Shape},
    kernel::Machine,
    kills, live, scale,
};

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub taken_at: String,
    pub quick: bool,
    pub machine: Machine,
    pub wall_secs: f64,
    pub cost: Option<cost::Results>,
    pub flood: Option<flood::Results>,
    pub live: Option<live::Results>,
    pub scale: Option<scale::Results>,
    pub admin: Vec<admin::Row>,
    pub kills: Option<kills::Results>,
    pub fuzz: Option<throttle_tests::fuzz::Outcome>,
    pub targets: Vec<Target>,
    pub failures: Vec<String>,
}

/// A target with what was measured.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub what: String,
    pub bound: String,
    pub measured: String,
    /// `None`: not measured in this run.
    pub met: Option<bool>,
}

impl Target {
    fn new(
        what: impl Into<String>,
        target: impl Into<String>,
        measured: impl Into<String>,
        met: Option<bool>,
    ) -> Self {
        Self { what: what.into(), bound: target.into(), measured: measured.into(), met }
    }

    pub fn verdict(&self) -> &'static str {
        match self.met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None if self.bound == "-" && self.measured != admin::NOT_MEASURED => "-",
            None => "not measured",
        }
    }
}

/// Judges the targets.
pub fn targets(report: &Report) -> Vec<Target> {
    let mut out = Vec::new();
    if let Some(cost) = &report.cost {
        for (what, paths, bound) in [
            ("over-budget drop vs count-and-pass", &[Path::OverBudget][..], 4.0),
            ("in-budget pass vs count-and-pass", &[Path::InBudget][..], 5.0),
            ("non-IP vs count-and-pass", &[Path::NonIp][..], 1.5),
            ("out of scope vs count-and-pass", &[Path::OutOfScope][..], 1.5),
        ] {
            let worst = cost
                .rows
                .iter()
                .filter(|r| paths.contains(&r.path))
                .max_by(|a, b| a.ratio.total_cmp(&b.ratio));
            if let Some(row) = worst {
                out.push(Target::new(
                    what,
                    format!("<= {bound}x"),
                    format!(
                        "{:.2}x (worst: {}, {} rules: {:.1} ns vs {:.1} ns)",
                        row.ratio,
                        row.family,
                        row.rules.label(),
                        row.ns,
                        row.baseline_ns
                    ),
                    Some(row.ratio <= bound),
                ));
            }
        }
    }
    if let Some(flood) = &report.flood {
        for shape in Shape::ALL {
            for (reference, bound) in [(Mode::XdpDrop, 0.9), (Mode::Nftables, 1.25), (Mode::Hashlimit, 1.25)]
            {
                if let Some(r) = flood.ratios.iter().find(|r| r.shape == shape && r.reference == reference) {
                    out.push(Target::new(
                        format!("flood drop rate vs {}, {}", reference.short(), shape.label()),
                        format!(">= {bound}x"),
                        format!("{:.2}x", r.pps),
                        Some(r.pps >= bound),
                    ));
                }
            }
        }
        for shape in Shape::ALL {
            if let Some(s) = flood.summary(shape, Mode::Throttle) {
                if let (Some(rate), Some(admitted), Some(err)) =
                    (s.configured_rate, s.admitted_rate_per_source, s.rate_error_pct)
                {
                    out.push(Target::new(
                        format!("admitted rate under flood, {}", shape.label()),
                        "within 5 %",
                        format!("{admitted:.2}/s per source for {rate}/s ({err:+.2} %)"),
                        Some(err.abs() <= 5.0),
                    ));
                }
            }
        }
    }
    if let Some(live) = &report.live {
        out.extend(live_targets(live));
    }
    if let Some(scale) = &report.scale {
        out.push(Target::new(
            "kernel memory per tracked source, table full",
            "<= 64 bytes",
            format!(
                "{:.1} bytes ({} MiB for {} sources)",
                scale.bytes_per_tracked_source,
                scale.memlock_bytes >> 20,
                scale.tracked
            ),
            Some(scale.bytes_per_tracked_source <= 64.0),
        ));
        out.push(Target::new(
            format!("top 20 of {} sources (Dataplane::for_each_bucket)", scale.tracked),
            "< 1 s",
            format!(
                "{:.3} s (every source by its key, Dataplane::bucket: {:.2} s)",
                scale.top_secs, scale.top_buckets_secs
            ),
            Some(scale.top_secs < 1.0),
        ));
    }
    for row in &report.admin {
        out.push(Target::new(
            row.what.clone(),
            row.target,
            row.value.clone().unwrap_or_else(|| admin::NOT_MEASURED.to_owned()),
            row.met,
        ));
    }
    out
}

/// The live-frames targets: throttle against the bare `XDP_DROP` and
/// against hashlimit, in the floods over their limits.
fn live_targets(live: &live::Results) -> Vec<Target> {
    let mut out = Vec::new();
    let goals = [
        (0, live::System::XdpDrop, 0.85),
        (1, live::System::XdpDrop, 0.6),
        (1, live::System::Hashlimit, 1.6),
        (2, live::System::Hashlimit, 1.5),
    ];
    for (flood, reference, bound) in goals {
        let Some(f) = live.floods.get(flood) else { continue };
        let find = |system| live.summaries.iter().find(|s| s.flood == flood && s.system == system);
        let (Some(throttle), Some(other)) = (find(live::System::Throttle), find(reference)) else { continue };
        let what = format!("live flood vs {}, {}", reference.label(), f.label);
        let valid = throttle.parity != Some(false) && other.parity != Some(false);
        let ratio = throttle.mpps / other.mpps.max(1e-9);
        out.push(if valid {
            Target::new(
                what,
                format!(">= {bound}x"),
                format!("{ratio:.2}x ({:.2} vs {:.2} Mpps)", throttle.mpps, other.mpps),
                Some(ratio >= bound),
            )
        } else {
            Target::new(what, format!(">= {bound}x"), "invalid: the verdict counts differ", None)
        });
    }
    out
}

/// A table: a header and rows of cells, rendered plain or as Markdown.
struct Table {
    title: String,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(title: &str, header: &[&str]) -> Self {
        Self {
            title: title.to_owned(),
            header: header.iter().map(|&h| h.to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn plain(&self) -> String {
        let widths: Vec<usize> = (0..self.header.len())
            .map(|i| {
                self.rows
                    .iter()
                    .map(|r| r[i].chars().count())
                    .chain([self.header[i].chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: &[String]| {
            cells
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(i, (c, w))| if i == 0 { format!("{c:<w$}") } else { format!("{c:>w$}") })
                .collect::<Vec<_>>()
                .join("  ")
        };
        let mut out = format!("{}\n{}\n", self.title, line(&self.header));
        let _ = writeln!(out, "{}", widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("  "));
        for r in &self.rows {
            let _ = writeln!(out, "{}", line(r));
        }
        out
    }

    fn markdown(&self) -> String {
        let mut out = format!("**{}**\n\n| {} |\n", self.title, self.header.join(" | "));
        let rule: Vec<&str> = (0..self.header.len()).map(|i| if i == 0 { "---" } else { "---:" }).collect();
        let _ = writeln!(out, "| {} |", rule.join(" | "));
        for r in &self.rows {
            let _ = writeln!(out, "| {} |", r.join(" | "));
        }
        out
    }
}

/// The over-budget drop over many sources against one.
fn spread_table(sp: &cost::Spread) -> Table {
    let mut t = Table::new(
        &format!(
            "Over-budget drop, 1 packet per call ({} calls per round): one tracked source, and {} tracked \
             sources in turn (random order)",
            sp.calls, sp.sources
        ),
        &["sources", "ns/call", "count-and-pass ns/call", "over one source"],
    );
    t.row(vec![
        "1".to_owned(),
        format!("{:.1}", sp.one_source_ns),
        format!("{:.1}", sp.baseline_ns),
        "-".to_owned(),
    ]);
    t.row(vec![
        sp.sources.to_string(),
        format!("{:.1}", sp.many_sources_ns),
        format!("{:.1}", sp.baseline_ns),
        format!("{:+.1} ns", sp.many_sources_ns - sp.one_source_ns),
    ]);
    t
}

fn sets_table(sets: &[cost::SetLoadStats]) -> Table {
    let mut t = Table::new(
        "The sets of the set rows, loaded (batched BPF_MAP_UPDATE_BATCH; memory per prefix as the kernel \
         accounts it, and as its slab grew)",
        &["set", "prefixes", "load ms", "memlock B/prefix", "slab B/prefix"],
    );
    for set in sets {
        t.row(vec![
            set.family.to_owned(),
            set.prefixes.to_string(),
            format!("{:.0}", set.load_ms),
            format!("{:.1}", set.memlock_bytes_per_prefix),
            format!("{:.1}", set.slab_bytes_per_prefix),
        ]);
    }
    t
}

/// The tables of the cost part.
fn cost_tables(cost: &cost::Results) -> Vec<Table> {
    let mut out = Vec::new();
    let mut t = Table::new(
        &format!(
            "Cost per packet (BPF_PROG_TEST_RUN, {} packets per run, median of {} rounds; \
             count-and-pass {:.1} ns, bare XDP_DROP {:.1} ns; {} verified instructions, {} bytes of BPF, {} bytes JITed)",
            cost.repeat,
            cost.rounds,
            cost.baseline_pass_ns,
            cost.baseline_drop_ns,
            cost.verified_instructions.map_or_else(|| "?".to_owned(), |n| n.to_string()),
            cost.xlated_bytes.map_or_else(|| "?".to_owned(), |n| n.to_string()),
            cost.jited_bytes
        ),
        &["path", "family", "rules", "ns/pkt", "baseline ns", "ratio"],
    );
    for r in &cost.rows {
        let label =
            if r.packets_per_call == 1 { format!("{} (1 pkt/call)", r.label) } else { r.label.clone() };
        t.row(vec![
            label,
            r.family.to_owned(),
            r.rules.label().to_owned(),
            format!("{:.1}", r.ns),
            format!("{:.1}", r.baseline_ns),
            format!("{:.2}x", r.ratio),
        ]);
    }
    out.push(t);
    let mut t = Table::new(
        "Steps of the metered path, alone (reference programs, same run)",
        &["program", "ns/pkt", "over count-and-pass"],
    );
    for c in &cost.components {
        t.row(vec![c.what.to_owned(), format!("{:.1}", c.ns), format!("{:+.1}", c.extra_ns)]);
    }
    out.push(t);
    out.push(spread_table(&cost.spread));
    if !cost.sets.is_empty() {
        out.push(sets_table(&cost.sets));
    }
    out
}

/// SIGKILLs under a line-rate flood: what was sent, seen and counted.
fn kills_table(k: &kills::Results) -> Table {
    #[expect(clippy::cast_precision_loss, reason = "frame counts")]
    let mpps = k.generated as f64 / k.secs.max(1e-9) / 1e6;
    let mut t = Table::new(
        &format!(
            "{} SIGKILLs in a row under the live generator's flood ({}), each daemon started again at once: \
             {:.2} s, {mpps:.2} Mpps",
            k.kills, k.flood, k.secs
        ),
        &["what", "frames"],
    );
    let rows = [
        ("sent by the generator", k.generated.to_string()),
        ("run through XDP on the receiving veth", k.received.to_string()),
        ("counted by throttle's program", k.counted.to_string()),
        ("unmetered (seen less counted)", k.received.abs_diff(k.counted).to_string()),
        ("admitted from the source", k.passed.to_string()),
        ("one bucket's bound over the run", format!("{:.0}", k.bound)),
        ("a fresh burst at each start would add", k.fresh_bursts.to_string()),
        ("starts that found the program detached", k.detached.to_string()),
    ];
    for (what, value) in rows {
        t.row(vec![what.to_owned(), value]);
    }
    t
}

/// The differential fuzz: how many frames, how fast, what they were.
fn fuzz_table(fuzz: &throttle_tests::fuzz::Outcome) -> Table {
    #[expect(clippy::cast_precision_loss, reason = "frame counts")]
    let rate = fuzz.frames as f64 / fuzz.secs.max(1e-9);
    let mut t = Table::new(
        &format!(
            "Differential fuzz: {} generated frames through the program (BPF_PROG_TEST_RUN) in {:.1} s \
             ({:.0} a second), each verdict and every 10 000 frames' counters against the reference model; \
             seed {} (THROTTLE_FUZZ_SEED runs it again in tests/tests/fuzz.rs)",
            fuzz.frames, fuzz.secs, rate, fuzz.seed
        ),
        &["what", "frames"],
    );
    for (name, n) in &fuzz.by_reason {
        t.row(vec![format!("verdict {name}"), n.to_string()]);
    }
    t.row(vec!["judged on a token's edge (either verdict right)".to_owned(), fuzz.edges.to_string()]);
    t.row(vec!["verdicts unlike the model's".to_owned(), fuzz.mismatches.len().to_string()]);
    t.row(vec!["batches whose counters differ".to_owned(), usize::from(fuzz.counters.is_some()).to_string()]);
    t
}

/// The flood table's note of runs repeated after their sender stalled.
fn stalled(stalls: &[String]) -> String {
    if stalls.is_empty() {
        return String::new();
    }
    format!(". Run again after the sender stalled ({}): {}", stalls.len(), stalls.join("; "))
}

fn tables(report: &Report) -> Vec<Table> {
    let mut out = Vec::new();
    if let Some(cost) = &report.cost {
        out.extend(cost_tables(cost));
    }
    if let Some(flood) = &report.flood {
        let mut t = Table::new(
            &(format!(
                "UDP flood on veth, one sending CPU ({:.0} s per run, median of {} rounds). ns/pkt: the sending \
                 CPU's time per packet (1 / rate; sender and receiving path together). CPU: kernel time on \
                 every CPU per packet. admitted: what reached the UDP socket",
                flood.secs, flood.rounds
            ) + &stalled(&flood.stalls)),
            &["flood", "receiving end", "Mpps", "ns/pkt", "CPU ns/pkt", "admitted Mpps", "throttle ratio", "admitted/s/source"],
        );
        for s in &flood.summaries {
            let ratio = if s.mode == Mode::Throttle {
                "-".to_owned()
            } else {
                let throttle = flood.summary(s.shape, Mode::Throttle).map_or(0.0, |t| t.handled_pps);
                format!("{:.2}x", throttle / s.handled_pps.max(1.0))
            };
            let admitted = match (s.admitted_rate_per_source, s.configured_rate, s.rate_error_pct) {
                (Some(a), Some(r), Some(e)) => format!("{a:.2} of {r} ({e:+.1} %)"),
                _ => "-".to_owned(),
            };
            t.row(vec![
                s.shape.label().to_owned(),
                s.mode.label().to_owned(),
                format!("{:.3}", s.handled_pps / 1e6),
                format!("{:.0}", 1e9 / s.handled_pps.max(1.0)),
                format!("{:.0}", s.cpu_ns_per_packet),
                format!("{:.3}", s.admitted_pps / 1e6),
                ratio,
                admitted,
            ]);
        }
        out.push(t);
    }
    if let Some(live) = &report.live {
        out.push(live_table(live));
    }
    if let Some(scale) = &report.scale {
        let mut t = Table::new("Scale (bucket table filled from user space)", &["what", "value"]);
        let rows = [
            ("max_sources", scale.max_sources.to_string()),
            ("sources written / tracked", format!("{} / {}", scale.inserted, scale.tracked)),
            ("write time", format!("{:.2} s", scale.insert_secs)),
            ("kernel memory (memlock)", format!("{} MiB", scale.memlock_bytes >> 20)),
            ("per tracked source", format!("{:.1} bytes", scale.bytes_per_tracked_source)),
            ("top 20 by dropped, Dataplane::for_each_bucket", format!("{:.3} s", scale.top_secs)),
            ("every source by its key, Dataplane::bucket", format!("{:.3} s", scale.top_buckets_secs)),
        ];
        for (what, value) in rows {
            t.row(vec![what.to_owned(), value]);
        }
        out.push(t);
    }
    if let Some(kills) = &report.kills {
        out.push(kills_table(kills));
    }
    if let Some(fuzz) = &report.fuzz {
        out.push(fuzz_table(fuzz));
    }
    let mut t = Table::new("Against its targets", &["target", "bound", "measured", "verdict"]);
    for target in &report.targets {
        t.row(vec![
            target.what.clone(),
            target.bound.clone(),
            target.measured.clone(),
            target.verdict().to_owned(),
        ]);
    }
    out.push(t);
    out
}

/// A count as the tables show it: 1 234 567.
pub fn grouped(n: f64) -> String {
    #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "a count, rounded")]
    let s = (n.round().max(0.0) as u64).to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// The live-frames floods: rate, cost, ratio, and the verdict counts that
/// make a row comparable.
fn live_table(live: &live::Results) -> Table {
    let mut t = Table::new(
        &format!(
            "Floods from the live-frames generator (60-byte frames, one CPU, CPU {}; median and range of {} \
             rounds). ns/frame: that CPU's time per frame, generator and receiving end together (the generator \
             alone: {:.1} ns). Behind XDP_PASS: the count-and-pass program first ({:.1} ns alone under \
             BPF_PROG_TEST_RUN; a bare XDP_DROP {:.1} ns). passed/dropped: frames per run. A limiter whose share \
             of dropped frames is more than 2 % of the frames off the median of the row's limiters is invalid",
            live.generator_cpu, live.rounds, live.generator_ns, live.pass_program_ns, live.drop_program_ns
        ),
        &[
            "flood",
            "receiving end",
            "Mpps",
            "range",
            "ns/frame",
            "over the generator",
            "vs XDP_DROP",
            "throttle vs this",
            "passed",
            "dropped",
            "parity",
        ],
    );
    for s in &live.summaries {
        let flood = &live.floods[s.flood];
        let invalid = s.parity == Some(false);
        let throttle = live
            .summaries
            .iter()
            .find(|t| t.flood == s.flood && t.system == live::System::Throttle && t.parity != Some(false));
        let against = match throttle {
            Some(t) if !invalid && s.system != live::System::Throttle => {
                format!("{:.2}x", t.mpps / s.mpps.max(1e-9))
            }
            _ => "-".to_owned(),
        };
        let figure = |text: String| if invalid { "invalid".to_owned() } else { text };
        let share = |n: f64| format!("{} ({:.1} %)", grouped(n), n / s.received.max(1.0) * 100.0);
        t.row(vec![
            flood.label.to_owned(),
            s.system.label().to_owned(),
            figure(format!("{:.2}", s.mpps)),
            figure(format!("{:.2}-{:.2}", s.mpps_min, s.mpps_max)),
            figure(format!("{:.1}", s.ns_per_frame)),
            figure(format!("{:+.1}", s.ns_per_frame - live.generator_ns)),
            figure(s.vs_drop.map_or_else(|| "-".to_owned(), |r| format!("{r:.2}x"))),
            against,
            share(s.passed),
            share(s.dropped),
            match s.parity {
                Some(true) => "ok".to_owned(),
                Some(false) => "INVALID".to_owned(),
                None => "-".to_owned(),
            },
        ]);
    }
    t
}

/// The tables as plain text, for the terminal.
pub fn plain(report: &Report) -> String {
    let mut out = format!(
        "throttle benchmark{}, {} — {}\n\n",
        if report.quick { " (quick)" } else { "" },
        report.taken_at,
        report.machine.describe()
    );
    for t in tables(report) {
        out.push_str(&t.plain());
        out.push('\n');
    }
    out
}

/// The tables as Markdown, for the README.
pub fn markdown(report: &Report) -> String {
    let mut out = format!(
        "Measured {}{} on {}.\n\n",
        report.taken_at,
        if report.quick { " (quick run)" } else { "" },
        report.machine.describe()
    );
    for t in tables(report) {
        out.push_str(&t.markdown());
        out.push('\n');
    }
    out
}
