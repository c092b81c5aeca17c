//! Line charts as inline SVG: axes with ticks, a legend, series, dashed thresholds and
//! vertical decision markers. Built with maud, which escapes every text it writes.

use crate::model::{Marker, Threshold};
use maud::{Markup, html};

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 280.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 42.0;

/// Stable's colour.
pub(crate) const STABLE: &str = "#1f77b4";
/// The canary's colour.
pub(crate) const CANARY: &str = "#ff7f0e";
/// Thresholds' colour.
pub(crate) const THRESHOLD: &str = "#d62728";
const MARKER: &str = "#666666";

/// One line of a chart.
pub(crate) struct Series<'a> {
    /// The legend's name.
    pub(crate) name: &'a str,
    /// The line's colour.
    pub(crate) color: &'a str,
    /// (x, y) points, x in hours.
    pub(crate) points: &'a [(f64, f64)],
    /// Drawn as steps (the value holds until the next point).
    pub(crate) step: bool,
}

/// A chart to draw.
pub(crate) struct Chart<'a> {
    /// Accessible title.
    pub(crate) title: &'a str,
    /// The y axis's label.
    pub(crate) y_label: &'a str,
    /// The x axis's span in hours.
    pub(crate) span_hours: f64,
    /// A fixed top of the y axis, or `None` to fit the data.
    pub(crate) y_max: Option<f64>,
    /// How y values read.
    pub(crate) y_fmt: fn(f64) -> String,
    /// The lines.
    pub(crate) series: Vec<Series<'a>>,
    /// Dashed horizontal lines.
    pub(crate) thresholds: &'a [Threshold],
    /// Vertical decision lines.
    pub(crate) markers: &'a [Marker],
}

/// A step of 1, 2 or 5 times a power of ten giving about `target` ticks over `range`.
pub(crate) fn nice_step(range: f64, target: f64) -> f64 {
    if !(range.is_finite() && range > 0.0) {
        return 1.0;
    }
    let raw = range / target.max(1.0);
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let m = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * mag
}

/// Ticks from 0 to `max` by `step` (at most 50).
fn ticks(max: f64, step: f64) -> Vec<f64> {
    (0..=50)
        .map(|i| f64::from(i) * step)
        .take_while(|t| *t <= max * (1.0 + 1e-9))
        .collect()
}

fn n(v: f64) -> String {
    format!("{v:.1}")
}

impl Chart<'_> {
    fn y_top(&self) -> f64 {
        if let Some(m) = self.y_max {
            return m;
        }
        let data = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1));
        let th = self.thresholds.iter().map(|t| t.value);
        let max = data.chain(th).filter(|v| v.is_finite()).fold(0.0, f64::max);
        if max <= 0.0 {
            return 1.0;
        }
        let step = nice_step(max * 1.1, 5.0);
        (max * 1.1 / step).ceil() * step
    }

    fn span(&self) -> f64 {
        if self.span_hours.is_finite() && self.span_hours > 0.0 {
            self.span_hours
        } else {
            1.0
        }
    }

    fn x(&self, h: f64) -> f64 {
        LEFT + (h / self.span()).clamp(0.0, 1.0) * (WIDTH - LEFT - RIGHT)
    }

    fn y(&self, v: f64, top: f64) -> f64 {
        let f = if top > 0.0 { v / top } else { 0.0 };
        HEIGHT - BOTTOM - f.clamp(0.0, 1.0) * (HEIGHT - TOP - BOTTOM)
    }

    fn points(&self, s: &Series<'_>, top: f64) -> String {
        let mut out = Vec::with_capacity(s.points.len() * 2);
        let mut prev: Option<f64> = None;
        for &(h, v) in s
            .points
            .iter()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
        {
            if let (true, Some(pv)) = (s.step, prev) {
                out.push(format!("{},{}", n(self.x(h)), n(self.y(pv, top))));
            }
            out.push(format!("{},{}", n(self.x(h)), n(self.y(v, top))));
            prev = Some(v);
        }
        out.join(" ")
    }
}

/// The chart as an `<svg>` element.
pub(crate) fn chart(c: &Chart<'_>) -> Markup {
    let top = c.y_top();
    let y_ticks = ticks(top, nice_step(top, 5.0));
    let x_step = nice_step(c.span(), 8.0);
    let x_ticks = ticks(c.span(), x_step);
    let empty = c.series.iter().all(|s| s.points.is_empty());
    let (x0, x1, y0, y1) = (LEFT, WIDTH - RIGHT, HEIGHT - BOTTOM, TOP);
    html! {
        svg.chart viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img" aria-label=(c.title) {
            title { (c.title) }
            rect x="0" y="0" width=(WIDTH) height=(HEIGHT) fill="#ffffff" {}
            @for t in &y_ticks {
                line x1=(x0) x2=(x1) y1=(n(c.y(*t, top))) y2=(n(c.y(*t, top))) stroke="#e5e5e5" {}
                text x=(x0 - 6.0) y=(n(c.y(*t, top) + 4.0)) text-anchor="end" font-size="11" { ((c.y_fmt)(*t)) }
            }
            @for t in &x_ticks {
                line x1=(n(c.x(*t))) x2=(n(c.x(*t))) y1=(y0) y2=(y0 + 5.0) stroke="#333333" {}
                text x=(n(c.x(*t))) y=(y0 + 18.0) text-anchor="middle" font-size="11" { (hours_label(*t, x_step)) }
            }
            line x1=(x0) x2=(x1) y1=(y0) y2=(y0) stroke="#333333" {}
            line x1=(x0) x2=(x0) y1=(y0) y2=(y1) stroke="#333333" {}
            text x=(n((x0 + x1) / 2.0)) y=(HEIGHT - 6.0) text-anchor="middle" font-size="12" { "hours since start" }
            text x="14" y=(n((y0 + y1) / 2.0)) text-anchor="middle" font-size="12"
                transform=(format!("rotate(-90 14 {})", n((y0 + y1) / 2.0))) { (c.y_label) }
            @for t in c.thresholds {
                line.threshold x1=(x0) x2=(x1) y1=(n(c.y(t.value, top))) y2=(n(c.y(t.value, top)))
                    stroke=(THRESHOLD) stroke-width="1.5" stroke-dasharray="6 4" {
                    title { (t.label) ": " ((c.y_fmt)(t.value)) }
                }
                text x=(x1 - 4.0) y=(n(c.y(t.value, top) - 4.0)) text-anchor="end" font-size="10" fill=(THRESHOLD) {
                    (t.label) " " ((c.y_fmt)(t.value))
                }
            }
            @for m in c.markers {
                (marker(c, m))
            }
            @for s in &c.series {
                @if !s.points.is_empty() {
                    polyline points=(c.points(s, top)) fill="none" stroke=(s.color) stroke-width="2" {
                        title { (s.name) }
                    }
                }
            }
            @if empty {
                text x=(n((x0 + x1) / 2.0)) y=(n((y0 + y1) / 2.0)) text-anchor="middle" font-size="14" fill="#888888" { "no data yet" }
            }
            (legend(c))
        }
    }
}

fn hours_label(t: f64, step: f64) -> String {
    if step < 1.0 {
        format!("{t:.1}h")
    } else {
        format!("{t:.0}h")
    }
}

fn marker(c: &Chart<'_>, m: &Marker) -> Markup {
    let x = n(c.x(m.hours));
    let (y0, y1) = (HEIGHT - BOTTOM, TOP);
    html! {
        line.decision x1=(x) x2=(x) y1=(y0) y2=(y1) stroke=(MARKER) stroke-width="1" stroke-dasharray="2 3" {
            title { (m.label) }
        }
        text x=(x) y=(y1 + 4.0) font-size="10" fill=(MARKER) text-anchor="end"
            transform=(format!("rotate(-90 {x} {})", y1 + 4.0)) dx="-2" dy="-3" {
            (m.label)
        }
    }
}

fn legend(c: &Chart<'_>) -> Markup {
    let mut items: Vec<(&str, &str, bool)> =
        c.series.iter().map(|s| (s.name, s.color, false)).collect();
    if !c.thresholds.is_empty() {
        items.push(("threshold", THRESHOLD, true));
    }
    if !c.markers.is_empty() {
        items.push(("decision", MARKER, true));
    }
    html! {
        g.legend {
            @for (i, (name, color, dashed)) in items.iter().enumerate() {
                @let x = LEFT + 130.0 * i as f64;
                line x1=(x) x2=(x + 22.0) y1="12" y2="12" stroke=(color) stroke-width="2"
                    stroke-dasharray=(if *dashed { "6 4" } else { "none" }) {}
                text x=(x + 28.0) y="16" font-size="12" { (name) }
            }
        }
    }
}
