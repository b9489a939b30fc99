//! The picture `diffsteer eval --methods` writes beside its CSV (methods.png), two
//! panels with one labelled point per method: mean reward against seconds per image
//! (what alignment costs), and target share against realism (what it costs in
//! looks; the Fréchet distance to real digits, lower is better). Drawn as
//! eval_chart.rs draws eval.png, with the same bundled font: same points, same bytes.

use diffsteer::image::Image8;
use diffsteer::Error;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::eval_chart::{padded, register_font, tick_label, DrawResult, FONT};

/// One method's results, as the methods table reports them.
#[derive(Debug, Clone, PartialEq)]
pub struct MethodPoint {
    pub label: String,
    pub mean_reward: f64,
    /// In [0, 1].
    pub target_share: f64,
    pub realism_fd: f64,
    pub seconds_per_image: f64,
}

const WIDTH: u32 = 1200;
const HEIGHT: u32 = 500;
const COST: RGBColor = RGBColor(44, 160, 44);
const LOOKS: RGBColor = RGBColor(148, 103, 189);

/// methods.png for `points` (in the order given).
pub fn methods_chart_png(points: &[MethodPoint]) -> Result<Vec<u8>, Error> {
    if points.is_empty() {
        return Err(Error::invalid("methods.png", "no methods to draw"));
    }
    register_font()?;
    let mut pixels = vec![0u8; WIDTH as usize * HEIGHT as usize * 3];
    draw(points, &mut pixels)
        .map_err(|e| Error::invalid("methods.png", format!("cannot draw the chart: {e}")))?;
    Image8 {
        width: WIDTH as usize,
        height: HEIGHT as usize,
        channels: 3,
        pixels,
    }
    .encode_png()
}

fn draw(points: &[MethodPoint], pixels: &mut [u8]) -> DrawResult {
    let root = BitMapBackend::with_buffer(pixels, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        "diffsteer eval: alignment methods compared",
        (FONT, 22).into_font().color(&BLACK),
    )?;
    let panels = root.split_evenly((1, 2));
    let cost: Vec<(f64, f64, &str)> = points
        .iter()
        .map(|p| (p.seconds_per_image, p.mean_reward, p.label.as_str()))
        .collect();
    scatter(
        &panels[0],
        "reward vs. compute",
        ("seconds per image", "mean final reward (log-probability)"),
        &cost,
        None,
        COST,
    )?;
    let looks: Vec<(f64, f64, &str)> = points
        .iter()
        .map(|p| (p.realism_fd, 100.0 * p.target_share, p.label.as_str()))
        .collect();
    scatter(
        &panels[1],
        "target share vs. realism",
        (
            "Fréchet distance to real digits (lower: more real)",
            "target share (%)",
        ),
        &looks,
        Some((0.0, 105.0)),
        LOOKS,
    )?;
    root.present()?;
    Ok(())
}

/// Labelled points (x, y, label); labels sit right of their point in the left half
/// of the panel and left of it in the right half, so none runs off the panel.
fn scatter(
    area: &DrawingArea<BitMapBackend, Shift>,
    caption: &str,
    (x_desc, y_desc): (&str, &str),
    points: &[(f64, f64, &str)],
    y_range: Option<(f64, f64)>,
    colour: RGBColor,
) -> DrawResult {
    let points: Vec<(f64, f64, &str)> = points
        .iter()
        .copied()
        .filter(|(x, y, _)| x.is_finite() && y.is_finite())
        .collect();
    let xs: Vec<f64> = points.iter().map(|p| p.0).collect();
    let ys: Vec<f64> = points.iter().map(|p| p.1).collect();
    let (x0, x1) = padded(&xs);
    let (x0, x1) = (x0, x1 + 0.15 * (x1 - x0));
    let (y0, y1) = y_range.unwrap_or_else(|| padded(&ys));
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 17))
        .margin(14)
        .x_label_area_size(48)
        .y_label_area_size(66)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    let (x_tick, y_tick) = (tick_label((x0, x1)), tick_label((y0, y1)));
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_labels(6)
        .x_label_formatter(&x_tick)
        .y_label_formatter(&y_tick)
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 14))
        .draw()?;
    let middle = 0.5 * (x0 + x1);
    let pixels: Vec<(i32, i32)> = points
        .iter()
        .map(|&(x, y, _)| chart.backend_coord(&(x, y)))
        .collect();
    let placed = label_offsets(&points, &pixels, |x| x <= middle);
    chart.draw_series(points.iter().zip(placed).map(|(&(x, y, label), dy)| {
        let (dx, side) = if x <= middle {
            (7, HPos::Left)
        } else {
            (-7, HPos::Right)
        };
        let style = (FONT, 14)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(side, VPos::Center));
        EmptyElement::at((x, y))
            + Circle::new((0, 0), 5, colour.filled())
            + Text::new(label.to_string(), (dx, dy), style)
    }))?;
    Ok(())
}

/// Label height and approximate width per character at the label font, in pixels.
const LABEL_HEIGHT: i32 = 16;
const LABEL_CHAR_WIDTH: i32 = 8;

/// A vertical offset per label so that no two labels overlap: labels are placed
/// top to bottom, each moved down below any placed label its box would cross
/// (methods often share a reward or a share, and would print over one another).
fn label_offsets(
    points: &[(f64, f64, &str)],
    pixels: &[(i32, i32)],
    right_of_point: impl Fn(f64) -> bool,
) -> Vec<i32> {
    let boxes: Vec<(i32, i32)> = points
        .iter()
        .zip(pixels)
        .map(|(&(x, _, label), &(px, _))| {
            let width = LABEL_CHAR_WIDTH * label.chars().count() as i32;
            if right_of_point(x) {
                (px + 7, px + 7 + width)
            } else {
                (px - 7 - width, px - 7)
            }
        })
        .collect();
    let mut order: Vec<usize> = (0..points.len()).collect();
    order.sort_by_key(|&i| (pixels[i].1, pixels[i].0));
    let mut offsets = vec![0; points.len()];
    let mut placed: Vec<(i32, i32, i32)> = Vec::new();
    for i in order {
        let (left, right) = boxes[i];
        let mut top = pixels[i].1 - LABEL_HEIGHT / 2;
        while let Some(&(_, _, other)) = placed.iter().find(|&&(l, r, t)| {
            l < right && left < r && t < top + LABEL_HEIGHT && top < t + LABEL_HEIGHT
        }) {
            top = other + LABEL_HEIGHT;
        }
        placed.push((left, right, top));
        offsets[i] = top + LABEL_HEIGHT / 2 - pixels[i].1;
    }
    offsets
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(label: &str, reward: f64, share: f64, fd: f64, seconds: f64) -> MethodPoint {
        MethodPoint {
            label: label.into(),
            mean_reward: reward,
            target_share: share,
            realism_fd: fd,
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
        pixels.truncate(info.buffer_size());
        pixels
    }

    fn count(pixels: &[u8], colour: RGBColor) -> usize {
        pixels
            .chunks_exact(3)
            .filter(|p| p == &[colour.0, colour.1, colour.2])
            .count()
    }

    #[test]
    fn both_panels_draw_a_marker_per_method_the_same_way_twice() {
        let one = [point("cfg", -0.01, 1.0, 2.0, 0.5)];
        let one_png = methods_chart_png(&one).expect("png");
        let three = [
            point("cfg", -0.01, 1.0, 2.0, 0.5),
            point("reward", -0.02, 0.98, 3.0, 0.3),
            point("fk4", -0.001, 1.0, 2.5, 1.2),
        ];
        let png = methods_chart_png(&three).expect("png");
        let (single, pixels) = (decode(&one_png), decode(&png));
        for colour in [COST, LOOKS] {
            let (a, b) = (count(&single, colour), count(&pixels, colour));
            assert!(a > 40, "{colour:?}: {a} pixels for one marker");
            assert!(
                b >= 2 * a,
                "{colour:?}: {b} pixels for three markers, {a} for one"
            );
        }
        let dark = pixels
            .chunks_exact(3)
            .filter(|p| p.iter().all(|&c| c < 64))
            .count();
        assert!(dark > 2000, "too little text: {dark} dark pixels");
        assert_eq!(methods_chart_png(&three).expect("png"), png);
        assert!(methods_chart_png(&[]).is_err());
        decode(&methods_chart_png(&[point("x", f64::NAN, 0.5, f64::INFINITY, 0.1)]).expect("nan"));
    }
}
