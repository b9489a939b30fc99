//! Small line charts rendered straight to PNG, with no plotting dependency: `diffsteer
//! eval` uses them for "reward vs. compute" plots beside its CSV.
//!
//! ```
//! use diffsteer::plot::{Chart, Series};
//!
//! # fn main() -> diffsteer::Result<()> {
//! let chart = Chart {
//!     title: "Reward vs. compute".into(),
//!     x_label: "NFE".into(),
//!     y_label: "mean reward".into(),
//!     series: vec![Series::new("cfg", vec![(10.0, 0.41), (20.0, 0.55), (50.0, 0.62)])],
//!     log_x: true,
//! };
//! let png = chart.render_png(800, 500)?;
//! assert_eq!(&png[1..4], b"PNG");
//! # Ok(())
//! # }
//! ```
//!
//! Each series is a line through its points (in the order given, broken where a point
//! is NaN or infinite) with a marker at each point; series differ in colour and marker
//! shape. The chart has a legend (in the plot corner that hides the least data, or
//! beside the plot when every corner would hide a marker, a point label or 100 pixels
//! of line), axes with ticks at "nice" values (1, 2 or 5 × 10^k; on a log x axis
//! powers of ten, then 2 and 5 multiples when the range is short), a light grid, axis
//! labels and a title.

pub mod canvas;
pub mod font;

use std::path::Path;

use crate::error::{Error, Result};
use canvas::{Canvas, Rgb};

/// Series colours, in order (matplotlib's "tab10"); more series reuse them.
pub const PALETTE: [Rgb; 10] = [
    Rgb::hex(0x1f77b4),
    Rgb::hex(0xff7f0e),
    Rgb::hex(0x2ca02c),
    Rgb::hex(0xd62728),
    Rgb::hex(0x9467bd),
    Rgb::hex(0x8c564b),
    Rgb::hex(0xe377c2),
    Rgb::hex(0x7f7f7f),
    Rgb::hex(0xbcbd22),
    Rgb::hex(0x17becf),
];

const TEXT: Rgb = Rgb::hex(0x202020);
const TICK_TEXT: Rgb = Rgb::hex(0x404040);
const FRAME: Rgb = Rgb::hex(0x505050);
const GRID: Rgb = Rgb::hex(0xe2e2e2);
const MINOR_GRID: Rgb = Rgb::hex(0xf1f1f1);
const LEGEND_BORDER: Rgb = Rgb::hex(0xb0b0b0);

/// Most ticks on an axis, whatever its length.
const MAX_TICKS: usize = 12;
/// Smallest plot area (either side, in pixels) left once the text is laid out.
const MIN_PLOT_SIDE: i64 = 40;
/// Log axes are limited to 10^±LOG_LIMIT so every tick value is a normal float.
const LOG_LIMIT: f64 = 300.0;
/// Legend padding inside its box, in font pixels.
const LEGEND_INNER: i64 = 5;
/// Length of the legend's line sample, in font pixels.
const LEGEND_SAMPLE: i64 = 20;
/// Gap between the legend and the plot frame, in font pixels.
const LEGEND_MARGIN: i64 = 6;

/// One line of a chart.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    /// Name in the legend (a series with an empty label is left out of the legend).
    pub label: String,
    /// (x, y) points, joined in this order. Points with a NaN or infinite coordinate
    /// are skipped, breaking the line there.
    pub points: Vec<(f64, f64)>,
    /// Optional text drawn beside each point's marker: empty, or one per point (an
    /// empty string draws nothing for that point).
    pub point_labels: Vec<String>,
}

impl Series {
    /// A series without point labels.
    pub fn new(label: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Series {
            label: label.into(),
            points,
            point_labels: Vec::new(),
        }
    }

    /// The series with `labels` drawn beside its points (one per point).
    pub fn with_point_labels(mut self, labels: Vec<String>) -> Self {
        self.point_labels = labels;
        self
    }
}

/// A line chart: one or more [`Series`] on shared axes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Chart {
    /// Drawn centred above the plot; empty for none.
    pub title: String,
    /// Drawn under the x axis; empty for none.
    pub x_label: String,
    /// Drawn rotated beside the y axis; empty for none.
    pub y_label: String,
    /// The lines to draw; at least one.
    pub series: Vec<Series>,
    /// Logarithmic x axis (every finite x must then be > 0).
    pub log_x: bool,
}

impl Chart {
    /// Draws the chart onto a new `width` × `height` canvas.
    ///
    /// Errors when there is no series, no point with finite coordinates, a series has
    /// point labels but not one per point, `log_x` is set and a finite x is ≤ 0, the
    /// values span more than floats can lay out, or the size is 0, over
    /// [`canvas::MAX_SIDE`], or too small for the text.
    pub fn render(&self, width: u32, height: u32) -> Result<Canvas> {
        let mut canvas = Canvas::new(width, height, Rgb::WHITE)?;
        let layout = Layout::new(self, width, height)?;
        layout.draw(self, &mut canvas);
        Ok(canvas)
    }

    /// The chart as a `width` × `height` RGB PNG (see [`Chart::render`] for errors).
    pub fn render_png(&self, width: u32, height: u32) -> Result<Vec<u8>> {
        self.render(width, height)?.encode_png()
    }

    /// Renders the chart and writes it to `path` as PNG, atomically.
    pub fn save_png(&self, path: &Path, width: u32, height: u32) -> Result<()> {
        crate::fsutil::write_atomic(path, &self.render_png(width, height)?)
    }
}

/// Marker shapes, cycled through by series (so series differ beyond colour).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker {
    Circle,
    Square,
    Diamond,
    Triangle,
}

const MARKERS: [Marker; 4] = [
    Marker::Circle,
    Marker::Square,
    Marker::Diamond,
    Marker::Triangle,
];

fn series_style(i: usize) -> (Rgb, Marker) {
    (PALETTE[i % PALETTE.len()], MARKERS[i % MARKERS.len()])
}

/// A data range shown along one axis.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Axis {
    lo: f64,
    hi: f64,
    log: bool,
}

impl Axis {
    fn t(&self, v: f64) -> f64 {
        if self.log {
            v.log10()
        } else {
            v
        }
    }

    /// Where `v` falls along the axis: 0 at `lo`, 1 at `hi`.
    fn frac(&self, v: f64) -> f64 {
        let (a, b) = (self.t(self.lo), self.t(self.hi));
        (self.t(v) - a) / (b - a)
    }
}

/// Tick positions (data units) with their labels, and unlabelled minor ticks.
#[derive(Debug, Clone, Default, PartialEq)]
struct Ticks {
    major: Vec<f64>,
    labels: Vec<String>,
    minor: Vec<f64>,
}

/// `n · 10^e`, computed so that decimal values come out as their nearest float
/// (0.2 · 3 gives 0.6, not 0.6000000000000001).
fn scaled(n: i64, e: i32) -> f64 {
    if e >= 0 {
        n as f64 * 10f64.powi(e)
    } else {
        n as f64 / 10f64.powi(-e)
    }
}

/// Ticks at multiples of a "nice" step (1, 2 or 5 × 10^k) inside `[lo, hi]`: the
/// smallest such step that gives at most `max_ticks` ticks. Returns the ticks and the
/// step's exponent k, or `None` when the range is empty or not finite.
fn nice_ticks(lo: f64, hi: f64, max_ticks: usize) -> Option<(Vec<f64>, i32)> {
    let span = hi - lo;
    if span <= 0.0 || !span.is_finite() {
        return None;
    }
    // Start a decade below the step that would spread `max_ticks` ticks evenly, and
    // take the first step (1, 2, 5, 10, 20, …) whose ticks fit.
    let raw = span / (max_ticks.max(2) - 1) as f64;
    let mut e = raw.log10().floor() as i32 - 1;
    let mut mi = 0;
    for _ in 0..40 {
        let m = [1i64, 2, 5][mi];
        let step = scaled(m, e);
        if step > 0.0 && step.is_finite() {
            let k0 = (lo / step - 1e-9).ceil();
            let k1 = (hi / step + 1e-9).floor();
            if k0.abs() < 1e15 && k1.abs() < 1e15 && k1 - k0 + 1.0 <= max_ticks.max(2) as f64 {
                let ticks = (k0 as i64..=k1 as i64).map(|k| scaled(k * m, e)).collect();
                return Some((ticks, e));
            }
        }
        mi += 1;
        if mi == 3 {
            mi = 0;
            e += 1;
        }
    }
    None
}

/// Removes trailing zeros (and a then-trailing point) from a decimal mantissa.
fn trim_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

/// A linear tick label for `v` on an axis whose step is m × 10^`e` and whose largest
/// magnitude is `max_abs`: plain decimals, or `1.5e7` style for very large or small
/// values.
fn format_linear(v: f64, e: i32, max_abs: f64) -> String {
    // Snap float noise around zero to a positive zero (never "-0.0").
    let v = if v.abs() < scaled(1, e) * 1e-6 {
        0.0
    } else {
        v
    };
    if (1e-3..1e6).contains(&max_abs) {
        return format!("{:.*}", (-e).max(0) as usize, v);
    }
    if v == 0.0 {
        return "0".to_string();
    }
    let exp_v = v.abs().log10().floor() as i32;
    let s = format!("{:.*e}", (exp_v - e).max(0) as usize + 1, v);
    match s.split_once('e') {
        Some((mantissa, exp)) => format!("{}e{exp}", trim_zeros(mantissa)),
        None => s,
    }
}

/// A log-axis tick label for m × 10^e.
fn format_log(m: i64, e: i32) -> String {
    if (-3..=4).contains(&e) {
        format!("{:.*}", (-e).max(0) as usize, scaled(m, e))
    } else {
        format!("{m}e{e}")
    }
}

/// Linear ticks with labels for `[lo, hi]`.
fn linear_ticks(lo: f64, hi: f64, max_ticks: usize) -> Ticks {
    match nice_ticks(lo, hi, max_ticks) {
        Some((major, e)) => {
            let max_abs = lo.abs().max(hi.abs());
            let labels = major
                .iter()
                .map(|&v| format_linear(v, e, max_abs))
                .collect();
            Ticks {
                major,
                labels,
                minor: Vec::new(),
            }
        }
        None => Ticks::default(),
    }
}

/// Log-axis ticks inside `[lo, hi]` (both > 0): powers of ten; when fewer than two fall
/// inside, 1/2/5 multiples; then every 1–9 multiple; failing that, linear ticks.
/// Powers of ten are thinned (every 2nd, 3rd, … decade) to at most `max_ticks`.
fn log_ticks(lo: f64, hi: f64, max_ticks: usize) -> Ticks {
    let max_ticks = max_ticks.max(2);
    let e0 = lo.log10().floor() as i32 - 1;
    let e1 = hi.log10().ceil() as i32 + 1;
    let within = |v: f64| v >= lo * (1.0 - 1e-9) && v <= hi * (1.0 + 1e-9);
    let levels: [&[i64]; 3] = [&[1], &[1, 2, 5], &[1, 2, 3, 4, 5, 6, 7, 8, 9]];
    for (level, mults) in levels.iter().enumerate() {
        let mut found: Vec<(i64, i32)> = Vec::new();
        for e in e0..=e1 {
            for &m in mults.iter() {
                if within(scaled(m, e)) {
                    found.push((m, e));
                }
            }
        }
        if found.len() < 2 {
            continue;
        }
        let stride = found.len().div_ceil(max_ticks);
        let mut major: Vec<(i64, i32)> = if level == 0 {
            let aligned: Vec<_> = found
                .iter()
                .copied()
                .filter(|&(_, e)| e.rem_euclid(stride as i32) == 0)
                .collect();
            if aligned.len() >= 2 {
                aligned
            } else {
                found.iter().copied().step_by(stride).collect()
            }
        } else {
            found.iter().copied().step_by(stride).collect()
        };
        major.dedup();
        // Minor ticks at the remaining 1–9 multiples, when they are not too dense.
        let mut minor = Vec::new();
        if stride == 1 && level < 2 {
            for e in e0..=e1 {
                for m in 1..=9 {
                    let v = scaled(m, e);
                    if within(v) && !major.contains(&(m, e)) {
                        minor.push(v);
                    }
                }
            }
        }
        return Ticks {
            major: major.iter().map(|&(m, e)| scaled(m, e)).collect(),
            labels: major.iter().map(|&(m, e)| format_log(m, e)).collect(),
            minor,
        };
    }
    linear_ticks(lo, hi, max_ticks)
}

fn axis_ticks(axis: &Axis, max_ticks: usize) -> Ticks {
    if axis.log {
        log_ticks(axis.lo, axis.hi, max_ticks)
    } else {
        linear_ticks(axis.lo, axis.hi, max_ticks)
    }
}

/// `[lo, hi]` widened by 5% each side, or (when the values are all equal) by 10% of
/// their magnitude, or ±1 around 0.
fn pad_linear(lo: f64, hi: f64, what: &str) -> Result<(f64, f64)> {
    let span = hi - lo;
    let mag = lo.abs().max(hi.abs());
    let (a, b) = if span <= mag * 1e-9 || span < 1e-290 {
        let c = lo / 2.0 + hi / 2.0;
        let d = if mag > 1e-290 { mag * 0.1 } else { 1.0 };
        (c - d, c + d)
    } else {
        (lo - span * 0.05, hi + span * 0.05)
    };
    if a.is_finite() && b.is_finite() && (b - a).is_finite() {
        Ok((a, b))
    } else {
        Err(Error::invalid(
            "plot",
            format!("{what} values from {lo} to {hi} span too wide a range to plot"),
        ))
    }
}

/// Log-axis range for positive `[lo, hi]`: 5% of the decades each side, or half a
/// decade each side when the values are all equal.
fn pad_log(lo: f64, hi: f64, what: &str) -> Result<(f64, f64)> {
    let (a, b) = (lo.log10(), hi.log10());
    let (a, b) = if b - a < 1e-9 {
        (a - 0.5, b + 0.5)
    } else {
        (a - (b - a) * 0.05, b + (b - a) * 0.05)
    };
    if a < -LOG_LIMIT || b > LOG_LIMIT {
        return Err(Error::invalid(
            "plot",
            format!("{what} values from {lo} to {hi} go beyond 1e±300, too far for a log axis"),
        ));
    }
    Ok((10f64.powf(a), 10f64.powf(b)))
}

/// The text scale for a canvas: font pixels become `scale` × `scale` blocks.
fn text_scale(width: u32, height: u32) -> u32 {
    let side = f64::from(width).min(f64::from(height) * 1.6);
    ((side / 450.0).round() as u32).max(1)
}

/// Everything about where things go, computed before any drawing.
struct Layout {
    /// Text scale for tick labels, axis labels, legend and point labels.
    s: u32,
    title_scale: u32,
    /// Frame of the plot area: pixel columns/rows of its left, top, right, bottom edges.
    left: i64,
    top: i64,
    right: i64,
    bottom: i64,
    x: Axis,
    y: Axis,
    x_ticks: Ticks,
    y_ticks: Ticks,
    /// Per series, its points with non-finite ones as `None`.
    points: Vec<SeriesPoints>,
    line_width: f64,
    marker_r: f64,
    /// Point labels: series index, text, box (text inset by the scale on each side).
    labels: Vec<(usize, String, Rect)>,
    /// Where the legend goes, if any series has a label.
    legend: Option<Rect>,
}

/// One series' points, with non-finite ones as `None`.
type SeriesPoints = Vec<Option<(f64, f64)>>;

/// Line segments (x0, y0, x1, y1) and marker centres of all series, in pixels.
type PixelData = (Vec<[f64; 4]>, Vec<(f64, f64)>);

/// A rectangle in pixels: x, y (top-left), width, height.
type Rect = (i64, i64, i64, i64);

fn overlaps(a: Rect, b: Rect) -> bool {
    a.0 < b.0 + b.2 && b.0 < a.0 + a.2 && a.1 < b.1 + b.3 && b.1 < a.1 + a.3
}

fn contains(r: Rect, x: f64, y: f64) -> bool {
    x >= r.0 as f64 && x < (r.0 + r.2) as f64 && y >= r.1 as f64 && y < (r.1 + r.3) as f64
}

fn tw(text: &str, scale: u32) -> i64 {
    i64::from(font::text_width(text, scale))
}

fn th(scale: u32) -> i64 {
    i64::from(font::text_height(scale))
}

fn cap(scale: u32) -> i64 {
    i64::from(font::CAP_HEIGHT * scale)
}

impl Layout {
    /// Lays the chart out: the legend goes in the plot corner hiding the least, or, when
    /// every corner would hide a marker, a label or 100 pixels of line, beside the plot
    /// (if that leaves the plot at least half the width).
    fn new(chart: &Chart, width: u32, height: u32) -> Result<Layout> {
        let mut layout = Layout::frame(chart, width, height, 0)?;
        layout.labels = layout.place_point_labels(chart);
        let Some((corner, hidden)) = layout.best_legend_corner(chart) else {
            return Ok(layout);
        };
        layout.legend = Some(corner);
        if hidden >= 50 {
            if let Some((bw, bh)) = layout.legend_size(chart) {
                let m = LEGEND_MARGIN * i64::from(layout.s);
                if let Ok(mut beside) = Layout::frame(chart, width, height, bw + m) {
                    if (beside.right - beside.left) * 2 >= i64::from(width) {
                        beside.labels = beside.place_point_labels(chart);
                        beside.legend = Some((beside.right + m, beside.top, bw, bh));
                        return Ok(beside);
                    }
                }
            }
        }
        Ok(layout)
    }

    /// Places the plot frame, axes and ticks, leaving `reserve_right` pixels free right
    /// of the plot (for a legend).
    fn frame(chart: &Chart, width: u32, height: u32, reserve_right: i64) -> Result<Layout> {
        let points = finite_points(chart)?;
        let all = || points.iter().flatten().flatten();
        let (x_lo, x_hi) = min_max(all().map(|p| p.0));
        let (y_lo, y_hi) = min_max(all().map(|p| p.1));
        let (xa, xb) = if chart.log_x {
            pad_log(x_lo, x_hi, "x")?
        } else {
            pad_linear(x_lo, x_hi, "x")?
        };
        let (ya, yb) = pad_linear(y_lo, y_hi, "y")?;
        let x = Axis {
            lo: xa,
            hi: xb,
            log: chart.log_x,
        };
        let y = Axis {
            lo: ya,
            hi: yb,
            log: false,
        };

        let (w, h) = (i64::from(width), i64::from(height));
        let s = text_scale(width, height);
        let si = i64::from(s);
        let pad = 6 * si;
        let gap = 4 * si;
        let tick_len = 4 * si;

        let mut title_scale = s + 1;
        while title_scale > 1 && tw(&chart.title, title_scale) > w - 2 * pad {
            title_scale -= 1;
        }
        let top = if chart.title.is_empty() {
            pad + th(s) / 2
        } else {
            pad + th(title_scale) + pad
        };
        let mut bottom_margin = tick_len + gap + cap(s) + pad;
        if !chart.x_label.is_empty() {
            bottom_margin += 2 * gap + cap(s);
        }
        let bottom = h - 1 - bottom_margin;
        let too_small = || {
            Error::invalid(
                "plot",
                format!("{width}×{height} pixels is too small for the chart's text"),
            )
        };
        if bottom - top < MIN_PLOT_SIDE {
            return Err(too_small());
        }

        let y_ticks = fit_y_ticks(&y, bottom - top, s);
        let y_label_w = y_ticks.labels.iter().map(|l| tw(l, s)).max().unwrap_or(0);
        let mut left = pad + y_label_w + gap + tick_len;
        if !chart.y_label.is_empty() {
            left += th(s) + 2 * gap;
        }

        let mut right = w - 1 - pad - 2 * si * i64::from(font::ADVANCE) - reserve_right;
        let mut x_ticks = Ticks::default();
        for _ in 0..2 {
            if right - left < MIN_PLOT_SIDE {
                return Err(too_small());
            }
            x_ticks = fit_x_ticks(&x, left, right, s);
            // Pull the frame in if the last label would run off the canvas.
            let last = x_ticks.major.last().zip(x_ticks.labels.last());
            let overflow = last.map_or(0, |(&v, l)| {
                let px = left as f64 + 0.5 + x.frac(v) * (right - left) as f64;
                px as i64 + tw(l, s) / 2 + 2 - (w - 1)
            });
            if overflow <= 0 {
                break;
            }
            right -= overflow;
        }
        if right - left < MIN_PLOT_SIDE {
            return Err(too_small());
        }

        Ok(Layout {
            s,
            title_scale,
            left,
            top,
            right,
            bottom,
            x,
            y,
            x_ticks,
            y_ticks,
            points,
            line_width: 1.0 + 0.75 * f64::from(s),
            marker_r: 1.5 + 1.25 * f64::from(s),
            labels: Vec::new(),
            legend: None,
        })
    }

    /// Pixel position (continuous coordinates) of data point (`x`, `y`).
    fn to_px(&self, x: f64, y: f64) -> (f64, f64) {
        let px = self.left as f64 + 0.5 + self.x.frac(x) * (self.right - self.left) as f64;
        let py = self.bottom as f64 + 0.5 - self.y.frac(y) * (self.bottom - self.top) as f64;
        (px, py)
    }

    fn draw(&self, chart: &Chart, c: &mut Canvas) {
        let s = self.s;
        let si = i64::from(s);
        let gap = 4 * si;
        let tick_len = 4 * si;
        let w = i64::from(c.width());

        // Grid, under everything else.
        for &v in &self.x_ticks.minor {
            let px = self.to_px(v, self.y.lo).0.floor() as i64;
            c.line(px, self.top + 1, px, self.bottom - 1, MINOR_GRID);
        }
        for &v in &self.x_ticks.major {
            let px = self.to_px(v, self.y.lo).0.floor() as i64;
            c.line(px, self.top + 1, px, self.bottom - 1, GRID);
        }
        for &v in &self.y_ticks.major {
            let py = self.to_px(self.x.lo, v).1.floor() as i64;
            c.line(self.left + 1, py, self.right - 1, py, GRID);
        }

        // Data: each series' line, then its markers on top.
        for (i, pts) in self.points.iter().enumerate() {
            let (color, marker) = series_style(i);
            for pair in pts.windows(2) {
                if let [Some(a), Some(b)] = pair {
                    let (x0, y0) = self.to_px(a.0, a.1);
                    let (x1, y1) = self.to_px(b.0, b.1);
                    c.thick_line(x0, y0, x1, y1, self.line_width, color);
                }
            }
            for &(x, y) in pts.iter().flatten() {
                let (px, py) = self.to_px(x, y);
                draw_marker(c, marker, px, py, self.marker_r, color, f64::from(s));
            }
        }
        for (i, label, r) in &self.labels {
            let (i, r) = (*i, *r);
            let color = series_style(i).0.mix(Rgb::BLACK, 0.35);
            c.blend_rect(r.0, r.1, r.2 as u32, r.3 as u32, Rgb::WHITE, 0.75);
            font::draw_text(c, r.0 + si, r.1 + si, label, s, color);
        }

        // Frame, ticks and tick labels.
        let (fw, fh) = (
            (self.right - self.left + 1) as u32,
            (self.bottom - self.top + 1) as u32,
        );
        c.stroke_rect(self.left, self.top, fw, fh, FRAME);
        for &v in &self.x_ticks.minor {
            let px = self.to_px(v, self.y.lo).0.floor() as i64;
            c.line(px, self.bottom + 1, px, self.bottom + tick_len / 2, FRAME);
        }
        for (&v, label) in self.x_ticks.major.iter().zip(&self.x_ticks.labels) {
            let px = self.to_px(v, self.y.lo).0.floor() as i64;
            c.line(px, self.bottom + 1, px, self.bottom + tick_len, FRAME);
            let lx = px - (tw(label, s) - 1) / 2;
            font::draw_text(c, lx, self.bottom + tick_len + gap, label, s, TICK_TEXT);
        }
        for (&v, label) in self.y_ticks.major.iter().zip(&self.y_ticks.labels) {
            let py = self.to_px(self.x.lo, v).1.floor() as i64;
            c.line(self.left - tick_len, py, self.left - 1, py, FRAME);
            let lx = self.left - tick_len - gap - tw(label, s);
            font::draw_text(c, lx, py - (cap(s) - 1) / 2, label, s, TICK_TEXT);
        }

        // Axis labels and title.
        if !chart.x_label.is_empty() {
            let lx = (self.left + self.right) / 2 - tw(&chart.x_label, s) / 2;
            let ly = self.bottom + tick_len + gap + cap(s) + 2 * gap;
            font::draw_text(c, lx.max(0), ly, &chart.x_label, s, TEXT);
        }
        if !chart.y_label.is_empty() {
            let len = tw(&chart.y_label, s);
            let ly = ((self.top + self.bottom) / 2 - len / 2).max(0);
            font::draw_text_vertical(c, 6 * si, ly, &chart.y_label, s, TEXT);
        }
        if !chart.title.is_empty() {
            let ts = self.title_scale;
            let lx = (w / 2 - tw(&chart.title, ts) / 2).max(0);
            font::draw_text(c, lx, 6 * si, &chart.title, ts, TEXT);
        }

        self.draw_legend(chart, c);
    }

    /// Line segments and marker centres of all series, in pixels.
    fn pixel_data(&self) -> PixelData {
        let mut segments = Vec::new();
        let mut markers = Vec::new();
        for pts in &self.points {
            for pair in pts.windows(2) {
                if let [Some(a), Some(b)] = pair {
                    let (x0, y0) = self.to_px(a.0, a.1);
                    let (x1, y1) = self.to_px(b.0, b.1);
                    segments.push([x0, y0, x1, y1]);
                }
            }
            markers.extend(pts.iter().flatten().map(|&(x, y)| self.to_px(x, y)));
        }
        (segments, markers)
    }

    /// How much data the rectangle `r` would hide: `per_marker` for each marker centre
    /// within `margin` pixels of it, plus one per two pixels of line inside it.
    fn data_hits(&self, data: &PixelData, r: Rect, per_marker: i64, margin: i64) -> i64 {
        let grown = (
            r.0 - margin,
            r.1 - margin,
            r.2 + 2 * margin,
            r.3 + 2 * margin,
        );
        let mut score = 0;
        for &[x0, y0, x1, y1] in &data.0 {
            let bbox = (
                x0.min(x1).floor() as i64,
                y0.min(y1).floor() as i64,
                (x0 - x1).abs().ceil() as i64 + 1,
                (y0 - y1).abs().ceil() as i64 + 1,
            );
            if !overlaps(r, bbox) {
                continue;
            }
            let n = ((x1 - x0).hypot(y1 - y0) / 2.0).ceil().clamp(1.0, 10_000.0) as usize;
            score += (0..=n)
                .filter(|&k| {
                    let t = k as f64 / n as f64;
                    contains(r, x0 + (x1 - x0) * t, y0 + (y1 - y0) * t)
                })
                .count() as i64;
        }
        for &(px, py) in &data.1 {
            if contains(grown, px, py) {
                score += per_marker;
            }
        }
        score
    }

    /// Where each non-empty point label goes (series index, text, box): of the spots
    /// around its marker inside the plot area, the one hiding the least data and
    /// earlier labels.
    fn place_point_labels(&self, chart: &Chart) -> Vec<(usize, String, Rect)> {
        let data = self.pixel_data();
        let s = self.s;
        let si = i64::from(s);
        let off = self.marker_r.ceil() as i64 + si;
        // Small enough that a label never counts as hiding its own marker.
        let own_margin = self.marker_r.ceil() as i64 / 2;
        let mut placed: Vec<(usize, String, Rect)> = Vec::new();
        for (i, series) in chart.series.iter().enumerate() {
            for (label, p) in series.point_labels.iter().zip(&self.points[i]) {
                let (Some((x, y)), false) = (p, label.is_empty()) else {
                    continue;
                };
                let (px, py) = self.to_px(*x, *y);
                let (px, py) = (px as i64, py as i64);
                // The box has a margin of `s` around the text.
                let (bw, bh) = (tw(label, s) + 2 * si, cap(s) + 2 * si);
                let (right, left) = (px + off - si, px - off - bw + si);
                let (above, below) = (py - off - bh + 2 * si, py + off - 2 * si);
                let middle = py - bh / 2;
                let candidates = [
                    (right, above),
                    (left, below),
                    (left, above),
                    (right, below),
                    (right + si, middle),
                    (left - si, middle),
                ];
                let score = |&(lx, ly): &(i64, i64)| {
                    let r = (lx, ly, bw, bh);
                    let outside = lx < self.left + 1
                        || ly < self.top + 1
                        || lx + bw > self.right
                        || ly + bh > self.bottom;
                    let crowd = placed.iter().filter(|p| overlaps(p.2, r)).count() as i64;
                    self.data_hits(&data, r, 20, own_margin)
                        + crowd * 40
                        + if outside { 1000 } else { 0 }
                };
                if let Some(&(lx, ly)) = candidates.iter().min_by_key(|c| score(c)) {
                    placed.push((i, label.clone(), (lx, ly, bw, bh)));
                }
            }
        }
        placed
    }

    /// The series in the legend: index and label.
    fn legend_entries(chart: &Chart) -> Vec<(usize, &str)> {
        chart
            .series
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.label.is_empty())
            .map(|(i, s)| (i, s.label.as_str()))
            .collect()
    }

    /// The legend's width and height, or `None` when no series has a label.
    fn legend_size(&self, chart: &Chart) -> Option<(i64, i64)> {
        let entries = Self::legend_entries(chart);
        if entries.is_empty() {
            return None;
        }
        let si = i64::from(self.s);
        let label_w = entries
            .iter()
            .map(|(_, l)| tw(l, self.s))
            .max()
            .unwrap_or(0);
        let w = LEGEND_INNER * si * 4 + LEGEND_SAMPLE * si + label_w;
        let h = LEGEND_INNER * si * 2 + (th(self.s) + 2 * si) * entries.len() as i64 - 2 * si;
        Some((w, h))
    }

    /// The plot corner for the legend hiding the least data and point labels, and how
    /// much it hides (100 per marker, 50 per point label, 1 per 2 pixels of line).
    fn best_legend_corner(&self, chart: &Chart) -> Option<(Rect, i64)> {
        let (bw, bh) = self.legend_size(chart)?;
        let m = LEGEND_MARGIN * i64::from(self.s);
        let data = self.pixel_data();
        // matplotlib's "best" order: upper right, upper left, lower left, lower right.
        [
            (self.right - m - bw, self.top + m),
            (self.left + m, self.top + m),
            (self.left + m, self.bottom - m - bh),
            (self.right - m - bw, self.bottom - m - bh),
        ]
        .iter()
        .map(|&(x, y)| {
            let r = (x, y, bw, bh);
            let hidden = self.labels.iter().filter(|l| overlaps(l.2, r)).count() as i64;
            (
                r,
                self.data_hits(&data, r, 100, self.marker_r.ceil() as i64) + hidden * 50,
            )
        })
        .min_by_key(|&(_, score)| score)
    }

    fn draw_legend(&self, chart: &Chart, c: &mut Canvas) {
        let Some(rect) = self.legend else {
            return;
        };
        let s = self.s;
        let si = i64::from(s);
        let inner = LEGEND_INNER * si;
        let sample = LEGEND_SAMPLE * si;
        let row_h = th(s) + 2 * si;
        let (bw, bh) = (rect.2 as u32, rect.3 as u32);
        c.blend_rect(rect.0, rect.1, bw, bh, Rgb::WHITE, 0.88);
        c.stroke_rect(rect.0, rect.1, bw, bh, LEGEND_BORDER);
        for (row, &(i, label)) in Self::legend_entries(chart).iter().enumerate() {
            let (color, marker) = series_style(i);
            let ty = rect.1 + inner + row as i64 * row_h;
            let cy = ty as f64 + (cap(s) as f64) / 2.0;
            let x0 = (rect.0 + inner) as f64;
            let x1 = x0 + sample as f64;
            c.thick_line(x0, cy, x1, cy, self.line_width, color);
            let (cx, r) = ((x0 + x1) / 2.0, self.marker_r);
            draw_marker(c, marker, cx, cy, r, color, f64::from(s));
            font::draw_text(c, rect.0 + inner * 3 + sample, ty, label, s, TEXT);
        }
    }
}

/// Picks y ticks for a plot `span` pixels tall: at most one per three text lines or
/// per 40 pixels, whichever is taller (but up to four when they fit), with a line of
/// space between labels.
fn fit_y_ticks(y: &Axis, span: i64, s: u32) -> Ticks {
    let mut max_y = ((span / (3 * th(s))).min(span / 40) as usize).clamp(4, MAX_TICKS);
    loop {
        let ticks = axis_ticks(y, max_y);
        let fits = ticks
            .major
            .windows(2)
            .all(|v| (y.frac(v[1]) - y.frac(v[0])) * span as f64 >= 2.0 * th(s) as f64);
        if fits || max_y <= 2 {
            return ticks;
        }
        max_y -= 1;
    }
}

/// Picks x ticks for a frame from `left` to `right`: at most one per seven characters
/// of width or per 60 pixels, whichever is wider (but up to five when they fit), with
/// three characters of space between labels.
fn fit_x_ticks(x: &Axis, left: i64, right: i64, s: u32) -> Ticks {
    let span = (right - left) as f64;
    let min_gap = tw("000", s);
    let per_tick = (7 * i64::from(font::ADVANCE * s)).max(60);
    let mut max_x = ((span as i64 / per_tick) as usize).clamp(5, MAX_TICKS);
    loop {
        let ticks = axis_ticks(x, max_x);
        let fits = ticks
            .major
            .windows(2)
            .zip(ticks.labels.windows(2))
            .all(|(v, l)| {
                let d = (x.frac(v[1]) - x.frac(v[0])) * span;
                d >= ((tw(&l[0], s) + tw(&l[1], s)) / 2 + min_gap) as f64
            });
        if fits || max_x <= 2 {
            return ticks;
        }
        max_x -= 1;
    }
}

/// Draws a marker of "radius" `r` with a white halo `halo` pixels wide.
fn draw_marker(c: &mut Canvas, m: Marker, cx: f64, cy: f64, r: f64, color: Rgb, halo: f64) {
    for (rr, col) in [(r + halo * 0.75, Rgb::WHITE), (r, color)] {
        match m {
            Marker::Circle => c.fill_circle(cx, cy, rr, col),
            Marker::Square => {
                let h = rr * 0.88;
                c.fill_shape((cx - h, cy - h, cx + h, cy + h), col, |x, y| {
                    (x - cx).abs() <= h && (y - cy).abs() <= h
                });
            }
            Marker::Diamond => {
                let h = rr * 1.25;
                c.fill_shape((cx - h, cy - h, cx + h, cy + h), col, |x, y| {
                    (x - cx).abs() + (y - cy).abs() <= h
                });
            }
            Marker::Triangle => {
                // Equilateral, apex up, circumradius 1.3·rr, centred on the point.
                let h = rr * 1.3;
                let (apex, base) = (cy - h, cy + h / 2.0);
                c.fill_shape((cx - h, apex, cx + h, base), col, |x, y| {
                    y >= apex && y <= base && (x - cx).abs() <= (y - apex) / 3f64.sqrt()
                });
            }
        }
    }
}

/// Smallest and largest of `values` (which must be non-empty to mean anything).
fn min_max(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    })
}

/// The chart's points with non-finite ones as `None`, after checking the chart can be
/// drawn at all.
fn finite_points(chart: &Chart) -> Result<Vec<SeriesPoints>> {
    if chart.series.is_empty() {
        return Err(Error::invalid("plot", "the chart has no series to draw"));
    }
    let mut out = Vec::with_capacity(chart.series.len());
    for (si, series) in chart.series.iter().enumerate() {
        let name = if series.label.is_empty() {
            format!("series {si}")
        } else {
            format!("series `{}`", series.label)
        };
        if !series.point_labels.is_empty() && series.point_labels.len() != series.points.len() {
            return Err(Error::invalid(
                "plot",
                format!(
                    "{name} has {} point labels for {} points (give one per point, or none)",
                    series.point_labels.len(),
                    series.points.len()
                ),
            ));
        }
        let mut pts = Vec::with_capacity(series.points.len());
        for (i, &(x, y)) in series.points.iter().enumerate() {
            if !(x.is_finite() && y.is_finite()) {
                pts.push(None);
            } else if chart.log_x && x <= 0.0 {
                return Err(Error::invalid(
                    "plot",
                    format!("{name} point {i} has x = {x}, but a log x axis needs every x > 0"),
                ));
            } else {
                pts.push(Some((x, y)));
            }
        }
        out.push(pts);
    }
    if out.iter().flatten().all(Option::is_none) {
        return Err(Error::invalid(
            "plot",
            "no point to draw: every point has a NaN or infinite coordinate",
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| (x - y).abs() <= 1e-12 * y.abs().max(1.0))
    }

    fn decode(png: &[u8]) -> (u32, u32, Vec<u8>) {
        let decoder = png::Decoder::new(std::io::Cursor::new(png));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgb);
        buf.truncate(info.buffer_size());
        (info.width, info.height, buf)
    }

    fn sample_chart() -> Chart {
        Chart {
            title: "Reward vs. compute (digits, 28×28)".into(),
            x_label: "denoiser evaluations per sample (NFE)".into(),
            y_label: "mean reward".into(),
            series: vec![
                Series::new(
                    "CFG w=3",
                    vec![
                        (10.0, 0.412),
                        (20.0, 0.553),
                        (50.0, 0.618),
                        (100.0, 0.634),
                        (250.0, 0.641),
                    ],
                ),
                Series::new(
                    "reward guidance",
                    vec![
                        (10.0, 0.45),
                        (20.0, 0.61),
                        (50.0, 0.70),
                        (100.0, 0.735),
                        (250.0, 0.752),
                    ],
                )
                .with_point_labels(
                    ["s=0.5", "s=1", "s=2", "s=4", "s=8"]
                        .map(String::from)
                        .to_vec(),
                ),
                Series::new(
                    "particles (k=4)",
                    vec![
                        (40.0, 0.58),
                        (80.0, 0.71),
                        (200.0, 0.79),
                        (400.0, f64::NAN),
                        (1000.0, 0.83),
                    ],
                ),
                Series::new(
                    "best-of-n",
                    vec![(30.0, 0.50), (120.0, 0.66), (600.0, 0.74)],
                ),
            ],
            log_x: true,
        }
    }

    #[test]
    fn nice_ticks_for_known_ranges() {
        let (t, e) = nice_ticks(0.0, 1.0, 6).unwrap();
        assert!(close(&t, &[0.0, 0.2, 0.4, 0.6, 0.8, 1.0]), "{t:?}");
        assert_eq!(e, -1);
        // Values come out as the nearest float to the decimal, not 3 × 0.2.
        assert_eq!(t[3], 0.6);
        let (t, _) = nice_ticks(0.0, 1.0, 11).unwrap();
        assert_eq!(t.len(), 11);
        let (t, e) = nice_ticks(-3.0, 7.0, 6).unwrap();
        assert!(close(&t, &[-2.0, 0.0, 2.0, 4.0, 6.0]), "{t:?}");
        assert_eq!(e, 0);
        let (t, _) = nice_ticks(13.0, 87.0, 5).unwrap();
        assert!(close(&t, &[20.0, 40.0, 60.0, 80.0]), "{t:?}");
        let (t, _) = nice_ticks(0.37, 0.52, 8).unwrap();
        assert!(
            close(&t, &[0.38, 0.4, 0.42, 0.44, 0.46, 0.48, 0.5, 0.52]),
            "{t:?}"
        );
        let (t, e) = nice_ticks(0.0, 3.1e9, 5).unwrap();
        assert!(close(&t, &[0.0, 1e9, 2e9, 3e9]), "{t:?}");
        assert_eq!(e, 9);
        assert!(nice_ticks(1.0, 1.0, 5).is_none());
        assert!(nice_ticks(0.0, f64::INFINITY, 5).is_none());
    }

    #[test]
    fn tick_labels() {
        let t = linear_ticks(0.0, 1.0, 6);
        assert_eq!(t.labels, ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]);
        let t = linear_ticks(-3.0, 7.0, 6);
        assert_eq!(t.labels, ["-2", "0", "2", "4", "6"]);
        let t = linear_ticks(0.0, 3.1e9, 5);
        assert_eq!(t.labels, ["0", "1e9", "2e9", "3e9"]);
        let t = linear_ticks(1.0e7, 2.6e7, 5);
        assert_eq!(t.labels, ["1e7", "1.5e7", "2e7", "2.5e7"]);
        let t = linear_ticks(0.0, 4e-5, 5);
        assert_eq!(t.labels, ["0", "1e-5", "2e-5", "3e-5", "4e-5"]);
        assert_eq!(format_log(1, 3), "1000");
        assert_eq!(format_log(2, -2), "0.02");
        assert_eq!(format_log(5, 6), "5e6");
        assert_eq!(format_log(1, -4), "1e-4");
    }

    #[test]
    fn log_ticks_for_known_ranges() {
        let t = log_ticks(3.0, 870.0, 10);
        assert!(close(&t.major, &[10.0, 100.0]), "{:?}", t.major);
        assert_eq!(t.labels, ["10", "100"]);
        // Minor ticks at the other multiples: 3..9, 20..90, 200..800.
        assert_eq!(t.minor.len(), 7 + 8 + 7);
        assert!(t.minor.contains(&3.0) && t.minor.contains(&800.0));

        // Under two powers of ten: 1/2/5 multiples.
        let t = log_ticks(15.0, 240.0, 10);
        assert!(
            close(&t.major, &[20.0, 50.0, 100.0, 200.0]),
            "{:?}",
            t.major
        );
        // Under two of those: every multiple.
        let t = log_ticks(2.5, 4.5, 10);
        assert!(close(&t.major, &[3.0, 4.0]), "{:?}", t.major);
        // Under two of those: linear ticks.
        let t = log_ticks(3.1, 3.9, 5);
        assert!(close(&t.major, &[3.2, 3.4, 3.6, 3.8]), "{:?}", t.major);

        // Many decades thin to every k-th power, aligned on multiples of k.
        let t = log_ticks(1e-3, 1e12, 6);
        assert!(
            close(&t.major, &[1e-3, 1.0, 1e3, 1e6, 1e9, 1e12]),
            "{:?}",
            t.major
        );
        assert_eq!(t.labels, ["0.001", "1", "1000", "1e6", "1e9", "1e12"]);
        assert!(t.minor.is_empty());
        let t = log_ticks(0.011, 0.99, 10);
        assert!(
            close(&t.major, &[0.02, 0.05, 0.1, 0.2, 0.5]),
            "{:?}",
            t.major
        );
        assert_eq!(t.labels, ["0.02", "0.05", "0.1", "0.2", "0.5"]);
    }

    #[test]
    fn renders_png_of_requested_size() {
        let chart = sample_chart();
        for (w, h) in [(800, 500), (640, 400), (1200, 750), (300, 200)] {
            let png = chart.render_png(w, h).unwrap();
            let (dw, dh, buf) = decode(&png);
            assert_eq!((dw, dh), (w, h));
            assert_eq!(buf.len(), (w * h * 3) as usize);
        }
        assert!(chart.render_png(60, 40).is_err());
    }

    #[test]
    fn marker_lands_where_the_axes_say() {
        let chart = Chart {
            series: vec![Series::new("a", vec![(0.0, 0.0), (1.0, 3.0), (2.0, 1.0)])],
            ..Chart::default()
        };
        let (w, h) = (640, 400);
        let layout = Layout::new(&chart, w, h).unwrap();
        let canvas = chart.render(w, h).unwrap();
        let (px, py) = layout.to_px(1.0, 3.0);
        assert_eq!(canvas.pixel(px as i64, py as i64), Some(PALETTE[0]));
        // The x range is 0..2 padded 5% each side, so x = 1 is the frame's middle.
        assert!((px - (layout.left + layout.right) as f64 / 2.0 - 0.5).abs() < 1e-9);
        // Same through the PNG.
        let (_, _, buf) = decode(&chart.render_png(w, h).unwrap());
        let i = ((py as usize) * w as usize + px as usize) * 3;
        let p = PALETTE[0];
        assert_eq!(&buf[i..i + 3], &[p.r, p.g, p.b]);
        // Away from data and grid lines the plot area is background.
        assert_eq!(
            canvas.pixel(layout.left + 3, layout.top + 3),
            Some(Rgb::WHITE)
        );
    }

    #[test]
    fn log_x_marker_position() {
        let chart = Chart {
            series: vec![Series::new("", vec![(1.0, 0.0), (10.0, 1.0), (100.0, 2.0)])],
            log_x: true,
            ..Chart::default()
        };
        let layout = Layout::new(&chart, 500, 300).unwrap();
        let (px, _) = layout.to_px(10.0, 1.0);
        assert!((px - (layout.left + layout.right) as f64 / 2.0 - 0.5).abs() < 1e-9);
        let canvas = chart.render(500, 300).unwrap();
        let (px, py) = layout.to_px(100.0, 2.0);
        assert_eq!(canvas.pixel(px as i64, py as i64), Some(PALETTE[0]));
    }

    #[test]
    fn legend_avoids_data() {
        // A rising line leaves the upper left free.
        let rising = Chart {
            series: vec![Series::new(
                "up",
                (0..20).map(|k| (k as f64, k as f64)).collect(),
            )],
            ..Chart::default()
        };
        let l = Layout::new(&rising, 800, 500).unwrap();
        let r = l.legend.unwrap();
        assert!(
            r.0 < (l.left + l.right) / 2 && r.1 < (l.top + l.bottom) / 2,
            "{r:?}"
        );
        // Markers in every corner: the legend moves beside the plot.
        let corners = Chart {
            series: vec![Series::new(
                "corners",
                vec![(0.0, 0.0), (1.0, 1.0), (0.0, 1.0), (1.0, 0.0)],
            )],
            ..Chart::default()
        };
        let l = Layout::new(&corners, 800, 500).unwrap();
        let r = l.legend.unwrap();
        assert!(r.0 > l.right && r.0 + r.2 < 800, "{r:?} right={}", l.right);
        // No labels, no legend.
        let unnamed = Chart {
            series: vec![Series::new("", vec![(0.0, 0.0)])],
            ..Chart::default()
        };
        assert!(Layout::new(&unnamed, 800, 500).unwrap().legend.is_none());
    }

    #[test]
    fn edge_cases_error_or_render() {
        let one = |points: Vec<(f64, f64)>| Chart {
            series: vec![Series::new("s", points)],
            ..Chart::default()
        };
        // Renders: a single point, all-equal values, zeros, some non-finite points.
        for pts in [
            vec![(5.0, 2.0)],
            vec![(1.0, 7.0), (2.0, 7.0), (3.0, 7.0)],
            vec![(0.0, 0.0), (0.0, 0.0)],
            vec![
                (1.0, f64::NAN),
                (2.0, 1.0),
                (f64::INFINITY, 2.0),
                (3.0, 0.5),
            ],
            vec![(-1e300, 1e-300), (1e300, -1e-300)],
            vec![(1e-300, 1.0), (1.5e-300, 1.0)],
        ] {
            let png = one(pts.clone()).render_png(400, 300);
            assert!(png.is_ok(), "{pts:?}: {png:?}");
        }
        let mut log = one(vec![(5.0, 2.0)]);
        log.log_x = true;
        assert!(log.render_png(400, 300).is_ok());

        let err = |c: Chart| c.render_png(400, 300).unwrap_err().to_string();
        assert!(err(Chart::default()).contains("no series"));
        assert!(err(one(vec![])).contains("no point"));
        assert!(err(one(vec![(f64::NAN, 1.0), (1.0, f64::NEG_INFINITY)])).contains("no point"));
        assert!(err(one(vec![(-f64::MAX, 0.0), (f64::MAX, 1.0)])).contains("too wide"));
        let mut log = one(vec![(1.0, 1.0), (0.0, 2.0)]);
        log.log_x = true;
        assert!(
            err(log.clone()).contains("log x axis needs every x > 0"),
            "{}",
            err(log)
        );
        let mut labels = one(vec![(1.0, 1.0), (2.0, 2.0)]);
        labels.series[0].point_labels = vec!["a".into()];
        assert!(err(labels).contains("1 point labels for 2 points"));
        // A series with no points next to one with points still renders.
        let mut mixed = one(vec![(1.0, 1.0)]);
        mixed.series.push(Series::new("empty", vec![]));
        assert!(mixed.render_png(400, 300).is_ok());
        // Sizes: too small for the text, zero, huge.
        assert!(one(vec![(1.0, 1.0)]).render_png(50, 50).is_err());
        assert!(one(vec![(1.0, 1.0)]).render_png(0, 300).is_err());
        assert!(one(vec![(1.0, 1.0)]).render_png(100_000, 300).is_err());
    }

    #[test]
    fn long_text_and_many_series_do_not_panic() {
        let series = (0..25)
            .map(|i| {
                let pts = (0..30).map(|k| (k as f64, (k * i) as f64 / 7.0)).collect();
                Series::new(format!("series number {i} with a long name €"), pts)
                    .with_point_labels((0..30).map(|k| format!("p{k}")).collect())
            })
            .collect();
        let chart = Chart {
            title: "a very long title ".repeat(20),
            x_label: "x".repeat(300),
            y_label: "y".repeat(300),
            series,
            log_x: false,
        };
        for (w, h) in [(800, 500), (200, 150)] {
            let (dw, dh, _) = decode(&chart.render_png(w, h).unwrap());
            assert_eq!((dw, dh), (w, h));
        }
    }

    #[test]
    #[ignore = "writes /tmp/plot-sample.png for a visual check"]
    fn write_sample() {
        let chart = sample_chart();
        chart
            .save_png(Path::new("/tmp/plot-sample.png"), 800, 500)
            .unwrap();
        let mut lin = chart.clone();
        lin.log_x = false;
        lin.title = "Linear x, single point, all-equal".into();
        lin.series
            .push(Series::new("flat", vec![(300.0, 0.6), (700.0, 0.6)]));
        lin.series.push(Series::new("single", vec![(500.0, 0.45)]));
        lin.save_png(Path::new("/tmp/plot-sample-linear.png"), 640, 400)
            .unwrap();
        // Data in every corner: the legend moves beside the plot.
        let crowded = Chart {
            title: "Crowded".into(),
            x_label: "step".into(),
            y_label: "value".into(),
            series: (0..3)
                .map(|i| {
                    let pts = (0..=40)
                        .map(|k| {
                            let t = k as f64 / 40.0;
                            (t * 1e-3, (t * 9.0 + i as f64).sin() * 2e4)
                        })
                        .collect();
                    Series::new(format!("phase {i}"), pts)
                })
                .collect(),
            log_x: false,
        };
        crowded
            .save_png(Path::new("/tmp/plot-sample-crowded.png"), 1200, 600)
            .unwrap();
        let corners = Chart {
            title: "Legend beside".into(),
            series: vec![Series::new(
                "corners",
                vec![(0.0, 0.0), (1.0, 1.0), (0.0, 1.0), (1.0, 0.0)],
            )],
            ..Chart::default()
        };
        corners
            .save_png(Path::new("/tmp/plot-sample-beside.png"), 800, 500)
            .unwrap();
        let single = Chart {
            series: vec![
                Series::new("only", vec![(3.0, 3.0)]).with_point_labels(vec!["here".into()])
            ],
            log_x: true,
            ..Chart::default()
        };
        single
            .save_png(Path::new("/tmp/plot-sample-single.png"), 400, 300)
            .unwrap();
    }
}
