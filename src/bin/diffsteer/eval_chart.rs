//! The picture `diffsteer eval` writes beside its CSV (eval.png), three panels: the
//! mean final reward and the share of images read as their target, each against
//! the swept setting, and the mean reward against seconds per image with each point
//! labelled by its setting (what the reward costs).
//!
//! Drawn with plotters into an RGB buffer and encoded with [`Image8`]. Text uses
//! DejaVu Sans from the `dejavu` crate, compiled into the binary: no system font is
//! looked up at run time (servers often have none). Same points, same bytes.

use std::error::Error as StdError;
use std::ops::Range;
use std::sync::OnceLock;

use diffsteer::image::Image8;
use diffsteer::Error;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// One swept value's results, as the eval table reports them.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalChartPoint {
    pub value: String,
    pub mean_reward: f64,
    /// In [0, 1].
    pub target_share: f64,
    pub seconds_per_image: f64,
}

const WIDTH: u32 = 1320;
const HEIGHT: u32 = 440;
/// The family name the bundled font is registered under with plotters.
pub(crate) const FONT: &str = "sans-serif";
const REWARD: RGBColor = RGBColor(31, 119, 180);
const SHARE: RGBColor = RGBColor(255, 127, 14);
const COST: RGBColor = RGBColor(44, 160, 44);
/// A numeric setting whose values span at least this ratio gets a log axis.
const LOG_RATIO: f64 = 20.0;

pub(crate) type DrawResult = Result<(), Box<dyn StdError>>;

/// eval.png for a sweep of `sweep_key` over `points` (in sweep order).
pub fn eval_chart_png(sweep_key: &str, points: &[EvalChartPoint]) -> Result<Vec<u8>, Error> {
    if points.is_empty() {
        return Err(Error::invalid("eval.png", "no swept values to draw"));
    }
    register_font()?;
    let mut pixels = vec![0u8; WIDTH as usize * HEIGHT as usize * 3];
    draw(sweep_key, points, &mut pixels)
        .map_err(|e| Error::invalid("eval.png", format!("cannot draw the chart: {e}")))?;
    Image8 {
        width: WIDTH as usize,
        height: HEIGHT as usize,
        channels: 3,
        pixels,
    }
    .encode_png()
}

pub(crate) fn register_font() -> Result<(), Error> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "eval.png",
            "the bundled DejaVu Sans font did not load",
        ))
    }
}

/// Where the swept values sit on an x axis: at their own value for numbers (log10
/// of it when they span [`LOG_RATIO`] or more, all positive), else one slot each in
/// sweep order (`steer=fk,best-of-n`).
struct SettingAxis {
    positions: Vec<f64>,
    labels: Vec<String>,
    description: String,
    range: (f64, f64),
}

impl SettingAxis {
    fn new(sweep_key: &str, points: &[EvalChartPoint]) -> Self {
        let labels: Vec<String> = points.iter().map(|p| p.value.clone()).collect();
        let numbers: Option<Vec<f64>> = labels
            .iter()
            .map(|v| v.parse::<f64>().ok().filter(|x| x.is_finite()))
            .collect();
        let distinct = |xs: &[f64]| {
            let mut sorted = xs.to_vec();
            sorted.sort_by(f64::total_cmp);
            sorted.windows(2).all(|w| w[0] < w[1])
        };
        let (positions, description) = match numbers.filter(|xs| distinct(xs)) {
            Some(xs) => {
                let (lo, hi) = min_max(&xs).unwrap_or((0.0, 1.0));
                if lo > 0.0 && hi / lo >= LOG_RATIO {
                    let logs = xs.iter().map(|x| x.log10()).collect();
                    (logs, format!("{sweep_key} (log scale)"))
                } else {
                    (xs, sweep_key.to_string())
                }
            }
            None => (
                (0..labels.len()).map(|i| i as f64).collect(),
                sweep_key.to_string(),
            ),
        };
        let (lo, hi) = min_max(&positions).unwrap_or((0.0, 0.0));
        let pad = if hi > lo { 0.08 * (hi - lo) } else { 0.5 };
        SettingAxis {
            positions,
            labels,
            description,
            range: (lo - pad, hi + pad),
        }
    }

    fn label_at(&self, x: &f64) -> String {
        self.positions
            .iter()
            .position(|p| p == x)
            .map(|i| self.labels[i].clone())
            .unwrap_or_default()
    }
}

/// The setting axis as a plotters coordinate: linear over `range`, with a tick at
/// every swept value and nowhere else (plotters' own f64 axis picks round numbers,
/// and its fixed-tick wrapper cannot take a label formatter).
impl Ranged for &SettingAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let (lo, hi) = self.range;
        let t = (value - lo) / (hi - lo);
        limit.0 + (t * f64::from(limit.1 - limit.0)).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, _hint: Hint) -> Vec<f64> {
        self.positions.clone()
    }

    fn range(&self) -> Range<f64> {
        self.range.0..self.range.1
    }
}

fn min_max(values: &[f64]) -> Option<(f64, f64)> {
    let finite = values.iter().copied().filter(|v| v.is_finite());
    finite.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// Tick labels for an axis over `range` with about ten ticks: as many decimals as
/// the tick spacing needs, up to four; past that (a near-flat reward) scientific
/// notation with as many digits as tell the ticks apart. Plotters' default prints a
/// tiny range as "-0.0" at every tick. A tick at zero up to rounding is "0".
pub(crate) fn tick_label(range: (f64, f64)) -> impl Fn(&f64) -> String {
    let step = (range.1 - range.0).abs() / 10.0;
    let usable = step > 0.0 && step.is_finite();
    let decimals = if usable {
        (-step.log10().floor()).max(0.0) as usize
    } else {
        1
    };
    let largest = range.0.abs().max(range.1.abs());
    let exponent = if largest > 0.0 && largest.is_finite() {
        largest.log10().floor() as i64
    } else {
        0
    };
    let digits = (exponent + decimals as i64).max(1) as usize;
    move |v: &f64| {
        if usable && v.abs() <= step * 1e-3 {
            "0".into()
        } else if decimals <= 4 {
            format!("{v:.decimals$}")
        } else {
            format!("{v:.digits$e}")
        }
    }
}

/// A range holding every finite value with a margin (0..1 when there is none).
pub(crate) fn padded(values: &[f64]) -> (f64, f64) {
    match min_max(values) {
        None => (0.0, 1.0),
        Some((lo, hi)) if hi > lo => {
            let pad = 0.1 * (hi - lo);
            (lo - pad, hi + pad)
        }
        Some((v, _)) => {
            let pad = (0.1 * v.abs()).max(0.1);
            (v - pad, v + pad)
        }
    }
}

fn draw(sweep_key: &str, points: &[EvalChartPoint], pixels: &mut [u8]) -> DrawResult {
    let root = BitMapBackend::with_buffer(pixels, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        &format!("diffsteer eval: sweeping {sweep_key}"),
        (FONT, 22).into_font().color(&BLACK),
    )?;
    let panels = root.split_evenly((1, 3));
    let axis = SettingAxis::new(sweep_key, points);
    let rewards: Vec<f64> = points.iter().map(|p| p.mean_reward).collect();
    let shares: Vec<f64> = points.iter().map(|p| 100.0 * p.target_share).collect();
    setting_panel(
        &panels[0],
        &axis,
        "mean final reward",
        &rewards,
        padded(&rewards),
        REWARD,
    )?;
    setting_panel(
        &panels[1],
        &axis,
        "target share (%)",
        &shares,
        (0.0, 100.0),
        SHARE,
    )?;
    cost_panel(&panels[2], sweep_key, points)?;
    root.present()?;
    Ok(())
}

/// One quantity against the swept setting: a line through its values with a marker
/// at each.
fn setting_panel(
    area: &DrawingArea<BitMapBackend, Shift>,
    axis: &SettingAxis,
    what: &str,
    values: &[f64],
    y_range: (f64, f64),
    colour: RGBColor,
) -> DrawResult {
    let mut chart = ChartBuilder::on(area)
        .caption(what, (FONT, 17))
        .margin(14)
        .x_label_area_size(48)
        .y_label_area_size(66)
        .build_cartesian_2d(axis, y_range.0..y_range.1)?;
    let label_at = |x: &f64| axis.label_at(x);
    let y_tick = tick_label(y_range);
    chart
        .configure_mesh()
        .x_desc(axis.description.as_str())
        .y_desc(what)
        .x_label_formatter(&label_at)
        .y_label_formatter(&y_tick)
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 14))
        .draw()?;
    let line: Vec<(f64, f64)> = axis
        .positions
        .iter()
        .zip(values)
        .map(|(&x, &y)| (x, y))
        .filter(|(_, y)| y.is_finite())
        .collect();
    chart.draw_series(LineSeries::new(line.clone(), colour.stroke_width(2)))?;
    chart.draw_series(line.iter().map(|&p| Circle::new(p, 4, colour.filled())))?;
    Ok(())
}

/// Mean reward against seconds per image, each point labelled with its setting.
fn cost_panel(
    area: &DrawingArea<BitMapBackend, Shift>,
    sweep_key: &str,
    points: &[EvalChartPoint],
) -> DrawResult {
    let line: Vec<(f64, f64, &str)> = points
        .iter()
        .map(|p| (p.seconds_per_image, p.mean_reward, p.value.as_str()))
        .filter(|(x, y, _)| x.is_finite() && y.is_finite())
        .collect();
    let xs: Vec<f64> = line.iter().map(|p| p.0).collect();
    let ys: Vec<f64> = line.iter().map(|p| p.1).collect();
    let (x0, x1) = padded(&xs);
    let (y0, y1) = padded(&ys);
    let mut chart = ChartBuilder::on(area)
        .caption(format!("reward vs. compute, by {sweep_key}"), (FONT, 17))
        .margin(14)
        .x_label_area_size(48)
        .y_label_area_size(66)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    let (x_tick, y_tick) = (tick_label((x0, x1)), tick_label((y0, y1)));
    chart
        .configure_mesh()
        .x_desc("seconds per image")
        .y_desc("mean final reward")
        .x_labels(6)
        .x_label_formatter(&x_tick)
        .y_label_formatter(&y_tick)
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 14))
        .draw()?;
    chart.draw_series(LineSeries::new(
        line.iter().map(|&(x, y, _)| (x, y)),
        COST.stroke_width(2),
    ))?;
    // Labels right of their point in the left half, left of it in the right half,
    // so none runs off the panel.
    let middle = 0.5 * (x0 + x1);
    chart.draw_series(line.iter().map(|&(x, y, value)| {
        let (dx, side) = if x <= middle {
            (6, HPos::Left)
        } else {
            (-6, HPos::Right)
        };
        let style = (FONT, 13)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(side, VPos::Bottom));
        EmptyElement::at((x, y))
            + Circle::new((0, 0), 4, COST.filled())
            + Text::new(value.to_string(), (dx, -4), style)
    }))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(value: &str, reward: f64, share: f64, seconds: f64) -> EvalChartPoint {
        EvalChartPoint {
            value: value.into(),
            mean_reward: reward,
            target_share: share,
            seconds_per_image: seconds,
        }
    }

    /// The decoded RGB pixels of a PNG, after checking its size.
    fn decode(png: &[u8]) -> Vec<u8> {
        let decoder = png::Decoder::new(std::io::Cursor::new(png));
        let mut reader = decoder.read_info().expect("a PNG header");
        let mut pixels = vec![0; reader.output_buffer_size().expect("a size")];
        let info = reader.next_frame(&mut pixels).expect("a frame");
        assert_eq!((info.width, info.height), (WIDTH, HEIGHT));
        assert_eq!(info.color_type, png::ColorType::Rgb);
        pixels.truncate(info.buffer_size());
        pixels
    }

    /// How many pixels have exactly this colour.
    fn count(pixels: &[u8], colour: RGBColor) -> usize {
        pixels
            .chunks_exact(3)
            .filter(|p| p == &[colour.0, colour.1, colour.2])
            .count()
    }

    #[test]
    fn a_numeric_sweep_draws_every_panel_the_same_way_twice() {
        let points = [
            point("0", -1.9, 0.35, 0.21),
            point("0.5", -0.8, 0.7, 0.33),
            point("2", -0.1, 0.95, 0.52),
        ];
        let png = eval_chart_png("reward-scale", &points).expect("png");
        let pixels = decode(&png);
        let white = count(&pixels, WHITE);
        assert!(white < pixels.len() / 3, "nothing drawn");
        assert!(white > pixels.len() / 3 / 2, "not a white background");
        // Lines and markers of each panel in their colours, and dark text.
        for colour in [REWARD, SHARE, COST] {
            assert!(count(&pixels, colour) > 200, "{colour:?} missing");
        }
        let dark = pixels
            .chunks_exact(3)
            .filter(|p| p.iter().all(|&c| c < 64))
            .count();
        assert!(dark > 2000, "too little text: {dark} dark pixels");
        assert_eq!(eval_chart_png("reward-scale", &points).expect("png"), png);
    }

    #[test]
    fn tick_labels_tell_ticks_apart_at_any_scale() {
        let tiny = tick_label((-6.6e-6, 6e-7));
        assert_eq!(tiny(&-6.0e-6), "-6.0e-6");
        assert_eq!(tiny(&-8.5e-22), "0");
        let share = tick_label((0.0, 100.0));
        assert_eq!((share(&90.0), share(&0.0)), ("90".into(), "0".into()));
        let seconds = tick_label((0.0576, 0.0612));
        assert_ne!(seconds(&0.058), seconds(&0.0585));
        assert_eq!(seconds(&0.058), "0.0580");
    }

    #[test]
    fn categorical_log_and_non_finite_sweeps_draw_without_error() {
        let steer = [
            point("fk", -0.4, 0.9, 1.1),
            point("best-of-n", -0.6, 0.8, 1.0),
        ];
        decode(&eval_chart_png("steer", &steer).expect("categorical"));
        let lambda = [
            point("1", -1.0, 0.5, 0.2),
            point("10", -0.5, 0.6, 0.2),
            point("100", f64::NAN, 0.7, f64::INFINITY),
        ];
        let axis = SettingAxis::new("fk-lambda", &lambda);
        assert_eq!(axis.positions, [0.0, 1.0, 2.0]);
        assert_eq!(axis.description, "fk-lambda (log scale)");
        decode(&eval_chart_png("fk-lambda", &lambda).expect("log"));
        let one = [point("4", f64::NAN, 0.0, 0.0)];
        decode(&eval_chart_png("particles", &one).expect("one point"));
        assert!(eval_chart_png("particles", &[]).is_err());
    }
}
