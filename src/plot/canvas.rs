//! An 8-bit RGB raster with the few drawing primitives a chart needs: pixels, 1-pixel
//! lines (Bresenham), rectangles, and anti-aliased thick lines and filled shapes.
//! Everything clips at the canvas edge, so callers may draw partly (or wholly) off it.

use crate::error::{Error, Result};
use crate::image::Image8;

/// The largest canvas side accepted, in pixels (keeps allocations bounded).
pub const MAX_SIDE: u32 = 16_384;

/// Samples per axis when anti-aliasing a filled shape (so `AA_SAMPLES²` per pixel).
const AA_SAMPLES: u32 = 4;

/// An opaque 8-bit sRGB colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rgb {
    pub r: u8,
    pub g: u8,
    pub b: u8,
}

impl Rgb {
    pub const WHITE: Rgb = Rgb::new(255, 255, 255);
    pub const BLACK: Rgb = Rgb::new(0, 0, 0);

    /// A colour from its three channels.
    pub const fn new(r: u8, g: u8, b: u8) -> Self {
        Rgb { r, g, b }
    }

    /// A colour from `0xRRGGBB`.
    pub const fn hex(rgb: u32) -> Self {
        Rgb::new((rgb >> 16) as u8, (rgb >> 8) as u8, rgb as u8)
    }

    /// `self` mixed with `other`: `t` = 0 gives `self`, 1 gives `other` (clamped).
    pub fn mix(self, other: Rgb, t: f64) -> Rgb {
        let t = if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) };
        let m = |a: u8, b: u8| (f64::from(a) + (f64::from(b) - f64::from(a)) * t).round() as u8;
        Rgb::new(m(self.r, other.r), m(self.g, other.g), m(self.b, other.b))
    }
}

/// An RGB raster, row-major, 3 bytes per pixel, origin at the top-left.
#[derive(Debug, Clone, PartialEq)]
pub struct Canvas {
    width: u32,
    height: u32,
    pixels: Vec<u8>,
}

impl Canvas {
    /// A `width` × `height` canvas filled with `background`. Errors when a side is 0 or
    /// over [`MAX_SIDE`].
    pub fn new(width: u32, height: u32, background: Rgb) -> Result<Self> {
        for (name, side) in [("width", width), ("height", height)] {
            if side == 0 || side > MAX_SIDE {
                return Err(Error::invalid(
                    "canvas",
                    format!("{name} {side} is outside 1..={MAX_SIDE} pixels"),
                ));
            }
        }
        let n = width as usize * height as usize;
        let mut pixels = Vec::with_capacity(n * 3);
        for _ in 0..n {
            pixels.extend_from_slice(&[background.r, background.g, background.b]);
        }
        Ok(Canvas {
            width,
            height,
            pixels,
        })
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// The raw pixels: row-major RGB, 3 bytes each.
    pub fn pixels(&self) -> &[u8] {
        &self.pixels
    }

    fn index(&self, x: i64, y: i64) -> Option<usize> {
        if x < 0 || y < 0 || x >= i64::from(self.width) || y >= i64::from(self.height) {
            None
        } else {
            Some((y as usize * self.width as usize + x as usize) * 3)
        }
    }

    /// The colour at (`x`, `y`), or `None` off the canvas.
    pub fn pixel(&self, x: i64, y: i64) -> Option<Rgb> {
        self.index(x, y)
            .map(|i| Rgb::new(self.pixels[i], self.pixels[i + 1], self.pixels[i + 2]))
    }

    /// Sets the pixel at (`x`, `y`); does nothing off the canvas.
    pub fn set_pixel(&mut self, x: i64, y: i64, color: Rgb) {
        if let Some(i) = self.index(x, y) {
            self.pixels[i..i + 3].copy_from_slice(&[color.r, color.g, color.b]);
        }
    }

    /// Paints `color` over the pixel at (`x`, `y`) with opacity `alpha` (0–1, clamped);
    /// does nothing off the canvas.
    pub fn blend_pixel(&mut self, x: i64, y: i64, color: Rgb, alpha: f64) {
        if alpha.is_nan() || alpha <= 0.0 {
            return;
        }
        if let Some(old) = self.pixel(x, y) {
            self.set_pixel(x, y, old.mix(color, alpha));
        }
    }

    /// A 1-pixel line from (`x0`, `y0`) to (`x1`, `y1`), both ends included
    /// (Bresenham).
    pub fn line(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, color: Rgb) {
        // Clamp far-off endpoints so a wild coordinate cannot make the walk endless.
        let lim = i64::from(MAX_SIDE) * 4;
        let (mut x, mut y) = (x0.clamp(-lim, lim), y0.clamp(-lim, lim));
        let (x1, y1) = (x1.clamp(-lim, lim), y1.clamp(-lim, lim));
        let dx = (x1 - x).abs();
        let dy = -(y1 - y).abs();
        let sx = if x < x1 { 1 } else { -1 };
        let sy = if y < y1 { 1 } else { -1 };
        let mut err = dx + dy;
        loop {
            self.set_pixel(x, y, color);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// Fills the `w` × `h` rectangle whose top-left pixel is (`x`, `y`).
    pub fn fill_rect(&mut self, x: i64, y: i64, w: u32, h: u32, color: Rgb) {
        let x0 = x.max(0);
        let y0 = y.max(0);
        let x1 = (x + i64::from(w)).min(i64::from(self.width));
        let y1 = (y + i64::from(h)).min(i64::from(self.height));
        for yy in y0..y1 {
            for xx in x0..x1 {
                self.set_pixel(xx, yy, color);
            }
        }
    }

    /// Like [`Canvas::fill_rect`] but painted with opacity `alpha` (0–1).
    pub fn blend_rect(&mut self, x: i64, y: i64, w: u32, h: u32, color: Rgb, alpha: f64) {
        let x0 = x.max(0);
        let y0 = y.max(0);
        let x1 = (x + i64::from(w)).min(i64::from(self.width));
        let y1 = (y + i64::from(h)).min(i64::from(self.height));
        for yy in y0..y1 {
            for xx in x0..x1 {
                self.blend_pixel(xx, yy, color, alpha);
            }
        }
    }

    /// The 1-pixel outline of the `w` × `h` rectangle whose top-left pixel is (`x`, `y`).
    pub fn stroke_rect(&mut self, x: i64, y: i64, w: u32, h: u32, color: Rgb) {
        if w == 0 || h == 0 {
            return;
        }
        let (x1, y1) = (x + i64::from(w) - 1, y + i64::from(h) - 1);
        self.line(x, y, x1, y, color);
        self.line(x, y1, x1, y1, color);
        self.line(x, y, x, y1, color);
        self.line(x1, y, x1, y1, color);
    }

    /// Fills the region where `inside(x, y)` holds, within the box `[x0, x1] × [y0, y1]`
    /// (continuous coordinates: pixel (i, j) covers [i, i+1] × [j, j+1]), with
    /// anti-aliased edges from `AA_SAMPLES`² samples per pixel.
    pub fn fill_shape(
        &mut self,
        (x0, y0, x1, y1): (f64, f64, f64, f64),
        color: Rgb,
        inside: impl Fn(f64, f64) -> bool,
    ) {
        if ![x0, y0, x1, y1].iter().all(|v| v.is_finite()) {
            return;
        }
        let px0 = x0.floor().max(0.0) as i64;
        let py0 = y0.floor().max(0.0) as i64;
        let px1 = (x1.ceil() as i64).min(i64::from(self.width));
        let py1 = (y1.ceil() as i64).min(i64::from(self.height));
        let n = AA_SAMPLES;
        for py in py0..py1 {
            for px in px0..px1 {
                let mut hits = 0u32;
                for sy in 0..n {
                    for sx in 0..n {
                        let fx = px as f64 + (f64::from(sx) + 0.5) / f64::from(n);
                        let fy = py as f64 + (f64::from(sy) + 0.5) / f64::from(n);
                        hits += u32::from(inside(fx, fy));
                    }
                }
                if hits > 0 {
                    self.blend_pixel(px, py, color, f64::from(hits) / f64::from(n * n));
                }
            }
        }
    }

    /// An anti-aliased filled circle of radius `r` centred at (`cx`, `cy`) (continuous
    /// coordinates: the centre of pixel (i, j) is (i + 0.5, j + 0.5)).
    pub fn fill_circle(&mut self, cx: f64, cy: f64, r: f64, color: Rgb) {
        let bbox = (cx - r, cy - r, cx + r, cy + r);
        self.fill_shape(bbox, color, |x, y| {
            (x - cx) * (x - cx) + (y - cy) * (y - cy) <= r * r
        });
    }

    /// An anti-aliased line `width` pixels thick from (`x0`, `y0`) to (`x1`, `y1`)
    /// (continuous coordinates), with round caps.
    pub fn thick_line(&mut self, x0: f64, y0: f64, x1: f64, y1: f64, width: f64, color: Rgb) {
        if ![x0, y0, x1, y1, width].iter().all(|v| v.is_finite()) || width <= 0.0 {
            return;
        }
        let h = width / 2.0;
        let (dx, dy) = (x1 - x0, y1 - y0);
        let len2 = dx * dx + dy * dy;
        let bbox = (
            x0.min(x1) - h,
            y0.min(y1) - h,
            x0.max(x1) + h,
            y0.max(y1) + h,
        );
        self.fill_shape(bbox, color, |x, y| {
            let t = if len2 > 0.0 {
                (((x - x0) * dx + (y - y0) * dy) / len2).clamp(0.0, 1.0)
            } else {
                0.0
            };
            let (ex, ey) = (x - (x0 + t * dx), y - (y0 + t * dy));
            ex * ex + ey * ey <= h * h
        });
    }

    /// The canvas as an RGB [`Image8`].
    pub fn to_image(&self) -> Image8 {
        Image8 {
            width: self.width as usize,
            height: self.height as usize,
            channels: 3,
            pixels: self.pixels.clone(),
        }
    }

    /// The canvas encoded as an 8-bit RGB PNG.
    pub fn encode_png(&self) -> Result<Vec<u8>> {
        self.to_image().encode_png()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RED: Rgb = Rgb::hex(0xff0000);

    #[test]
    fn rejects_bad_sizes() {
        assert!(Canvas::new(0, 10, Rgb::WHITE).is_err());
        assert!(Canvas::new(10, MAX_SIDE + 1, Rgb::WHITE).is_err());
        let c = Canvas::new(3, 2, Rgb::hex(0x102030)).unwrap();
        assert_eq!(c.pixels().len(), 18);
        assert_eq!(c.pixel(2, 1), Some(Rgb::new(0x10, 0x20, 0x30)));
        assert_eq!(c.pixel(3, 1), None);
        assert_eq!(c.pixel(-1, 0), None);
    }

    #[test]
    fn bresenham_hits_both_ends_and_clips() {
        let mut c = Canvas::new(10, 10, Rgb::WHITE).unwrap();
        c.line(1, 1, 8, 4, RED);
        assert_eq!(c.pixel(1, 1), Some(RED));
        assert_eq!(c.pixel(8, 4), Some(RED));
        // One pixel per column for a shallow line.
        for x in 1..=8 {
            let n = (0..10).filter(|&y| c.pixel(x, y) == Some(RED)).count();
            assert_eq!(n, 1, "column {x}");
        }
        c.line(-50, 5, 50, 5, RED);
        assert!((0..10).all(|x| c.pixel(x, 5) == Some(RED)));
        c.line(i64::MIN, i64::MIN, i64::MAX, i64::MAX, RED);
    }

    #[test]
    fn rects_and_shapes() {
        let mut c = Canvas::new(20, 20, Rgb::WHITE).unwrap();
        c.fill_rect(-2, -2, 4, 4, RED);
        assert_eq!(c.pixel(1, 1), Some(RED));
        assert_eq!(c.pixel(2, 2), Some(Rgb::WHITE));
        c.stroke_rect(5, 5, 5, 5, Rgb::BLACK);
        assert_eq!(c.pixel(9, 9), Some(Rgb::BLACK));
        assert_eq!(c.pixel(7, 7), Some(Rgb::WHITE));

        let mut d = Canvas::new(20, 20, Rgb::WHITE).unwrap();
        d.fill_circle(10.0, 10.0, 4.0, RED);
        assert_eq!(d.pixel(10, 10), Some(RED));
        assert_eq!(d.pixel(10, 16), Some(Rgb::WHITE));
        // The edge is blended, neither background nor full colour.
        let edge = d.pixel(12, 12).unwrap();
        assert!(edge != RED && edge != Rgb::WHITE, "{edge:?}");

        d.thick_line(0.0, 2.5, 20.0, 2.5, 3.0, Rgb::BLACK);
        assert_eq!(d.pixel(5, 2), Some(Rgb::BLACK));
        assert_eq!(d.pixel(5, 5), Some(Rgb::WHITE));
        d.thick_line(f64::NAN, 0.0, 1.0, 1.0, 2.0, RED);
        d.fill_circle(1e300, 1e300, 1e300, RED);
    }

    #[test]
    fn png_round_trips() {
        let mut c = Canvas::new(7, 5, Rgb::WHITE).unwrap();
        c.set_pixel(6, 4, RED);
        let png = c.encode_png().unwrap();
        let decoder = png::Decoder::new(std::io::Cursor::new(png));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (7, 5));
        assert_eq!(info.color_type, png::ColorType::Rgb);
        assert_eq!(&buf[(4 * 7 + 6) * 3..][..3], &[255, 0, 0]);
        assert_eq!(&buf[..3], &[255, 255, 255]);
    }
}
