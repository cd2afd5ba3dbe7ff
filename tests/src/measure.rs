//! Expected-versus-measured checks that print every figure before judging.

use std::fmt::Write as _;

use crate::{Arrivals, FlowReport};

/// What one token bucket of `rate` per second and `burst` admits to a demand
/// above its rate over `secs`: the burst, then the rate.
#[must_use]
#[expect(clippy::cast_precision_loss, reason = "rates and bursts of a test fit in f64's 52-bit mantissa")]
pub fn bucket_allowance(rate: u64, burst: u64, secs: f64) -> f64 {
    burst as f64 + rate as f64 * secs
}

/// A list of checks for one test. Each check prints a line at once, past
/// libtest's capture (so the run log shows the accuracy of passing runs too); [`Checks::assert_all`]
/// then fails the test with every check that did not hold.
#[derive(Debug)]
pub struct Checks {
    test: String,
    failures: Vec<String>,
}

impl Checks {
    /// Checks for the test named `test` (printed before each line).
    #[must_use]
    pub fn new(test: &str) -> Self {
        Self { test: test.to_owned(), failures: Vec::new() }
    }

    /// Checks that `got` is within `tolerance` (a fraction: 0.1 for 10 %) of
    /// `expected`.
    #[expect(clippy::cast_precision_loss, reason = "packet counts of a test fit in f64's 52-bit mantissa")]
    pub fn within(&mut self, what: &str, expected: f64, got: u64, tolerance: f64) {
        let got_f = got as f64;
        let error = if expected == 0.0 {
            if got == 0 {
                0.0
            } else {
                f64::INFINITY
            }
        } else {
            (got_f - expected) / expected
        };
        let ok = error.abs() <= tolerance;
        self.record(
            ok,
            format!(
                "{what}: expected {expected:.0}, got {got} ({:+.1} %, tolerance ±{:.0} %)",
                error * 100.0,
                tolerance * 100.0
            ),
        );
    }

    /// Checks that `got` is below `bound` (`why` says what exceeding it means).
    #[expect(clippy::cast_precision_loss, reason = "packet counts of a test fit in f64's 52-bit mantissa")]
    pub fn below(&mut self, what: &str, bound: f64, got: u64, why: &str) {
        let ok = (got as f64) < bound;
        self.record(ok, format!("{what}: got {got}, must stay below {bound:.0} ({why})"));
    }

    /// Checks that `got` is at least `bound` (`why` says what the check is for).
    pub fn at_least(&mut self, what: &str, bound: f64, got: f64, why: &str) {
        let ok = got >= bound;
        self.record(ok, format!("{what}: got {got:.0}, must be at least {bound:.0} ({why})"));
    }

    /// Checks that a flow offered at least `min_pps` datagrams per second
    /// (`why` says what the test needs them for).
    pub fn offered(&mut self, what: &str, report: &FlowReport, min_pps: f64, why: &str) {
        self.at_least(
            &format!(
                "{what} offered {} datagrams in {:.3} s ({} send errors), per second",
                report.sent,
                report.secs(),
                report.send_errors
            ),
            min_pps,
            report.pps(),
            why,
        );
    }

    /// Checks that the receiver lost nothing itself: what did not arrive was
    /// dropped before its socket.
    pub fn receiver_lost_nothing(&mut self, arrivals: &Arrivals) {
        self.that(
            arrivals.udp_drops == 0,
            &format!(
                "receiver socket drops: {} (datagrams read: {})",
                arrivals.udp_drops,
                arrivals.list.len()
            ),
        );
    }

    /// Records a condition with its explanation.
    pub fn that(&mut self, ok: bool, what: &str) {
        self.record(ok, what.to_owned());
    }

    /// Prints a figure that is not checked.
    pub fn note(&self, what: &str) {
        crate::report(&format!("[{}]      {what}", self.test));
    }

    fn record(&mut self, ok: bool, line: String) {
        crate::report(&format!("[{}] {} {line}", self.test, if ok { "ok  " } else { "FAIL" }));
        if !ok {
            self.failures.push(line);
        }
    }

    /// Panics listing every failed check, if any.
    pub fn assert_all(self) {
        if self.failures.is_empty() {
            return;
        }
        let mut msg = format!("{}: {} check(s) failed:", self.test, self.failures.len());
        for f in &self.failures {
            let _ = write!(msg, "\n  - {f}");
        }
        panic!("{msg}");
    }
}
