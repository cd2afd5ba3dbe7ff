//! The flood comparison as an SVG bar chart: packets per second each
//! receiving end sustained, one group per flood shape.

use std::fmt::Write as _;

use crate::flood::{Mode, Results, Shape};

const WIDTH: f64 = 760.0;
const LEFT: f64 = 190.0;
const RIGHT: f64 = 90.0;
const BAR: f64 = 18.0;
const GAP: f64 = 6.0;
const GROUP_GAP: f64 = 34.0;
const TOP: f64 = 64.0;

fn colour(mode: Mode) -> &'static str {
    match mode {
        Mode::Stack => "#9e9e9e",
        Mode::XdpDrop => "#546e7a",
        Mode::Throttle => "#e65100",
        Mode::Nftables => "#1e88e5",
        Mode::Hashlimit => "#43a047",
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The chart; `subtitle` names the machine and the run.
pub fn svg(flood: &Results, subtitle: &str) -> String {
    let max = flood.summaries.iter().map(|s| s.handled_pps).fold(1.0, f64::max);
    let scale = (WIDTH - LEFT - RIGHT) / max;
    let modes = f64::from(u8::try_from(Mode::ALL.len()).expect("a few modes"));
    let shapes = f64::from(u8::try_from(Shape::ALL.len()).expect("a few shapes"));
    let group_height = modes * (BAR + GAP);
    let height = TOP + shapes * (group_height + GROUP_GAP) + 44.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="#ffffff"/>"##);
    let _ = writeln!(
        s,
        r#"<text x="12" y="22" font-size="15" font-weight="bold">UDP flood on a veth pair: packets per second handled (higher is better)</text>"#
    );
    let _ = writeln!(s, r##"<text x="12" y="42" fill="#555555">{}</text>"##, escape(subtitle));
    let mut y = TOP;
    for shape in Shape::ALL {
        let (rate, burst) = shape.limit();
        let _ = writeln!(
            s,
            r#"<text x="12" y="{:.1}" font-weight="bold">{} (limiters: {rate}/s per source, burst {burst})</text>"#,
            y + 4.0,
            shape.label()
        );
        y += 14.0;
        for mode in Mode::ALL {
            let Some(summary) = flood.summary(shape, mode) else { continue };
            let w = (summary.handled_pps * scale).max(1.0);
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                LEFT - 8.0,
                y + BAR * 0.72,
                escape(mode.label())
            );
            let _ = writeln!(
                s,
                r#"<rect x="{LEFT}" y="{y:.1}" width="{w:.1}" height="{BAR}" fill="{}"/>"#,
                colour(mode)
            );
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}">{:.3} Mpps</text>"#,
                LEFT + w + 6.0,
                y + BAR * 0.72,
                summary.handled_pps / 1e6
            );
            y += BAR + GAP;
        }
        y += GROUP_GAP - 14.0;
    }
    let _ = writeln!(
        s,
        r##"<text x="12" y="{:.1}" fill="#555555">trafgen on one CPU; the receiving path runs on the same CPU, so every bar includes the sender's cost.</text>"##,
        height - 28.0
    );
    let _ = writeln!(
        s,
        r##"<text x="12" y="{:.1}" fill="#555555">Medians of {} rounds of {:.0} s.</text>"##,
        height - 12.0,
        flood.rounds,
        flood.secs
    );
    s.push_str("</svg>\n");
    s
}
