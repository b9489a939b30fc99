//! Turning samples into images: [-1, 1] model space to 8-bit pixels (as diffusers'
//! `(x / 2 + 0.5).clamp(0, 1)`, `·255`, round), PNG encoding, and contact grids.

use crate::error::{Error, Result};

/// The colour between grid tiles: visibly apart from black and white backgrounds.
const GRID_GAP_GRAY: u8 = 96;

/// The largest grid picture [`Image8::grid`] builds: 1 GiB of pixels.
pub const MAX_GRID_BYTES: usize = 1 << 30;

/// An 8-bit image, row-major, `channels` interleaved (1 = gray, 3 = RGB).
#[derive(Debug, Clone, PartialEq)]
pub struct Image8 {
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    pub pixels: Vec<u8>,
}

impl Image8 {
    /// From an NHWC sample in [-1, 1] (values outside are clipped).
    pub fn from_model_space(
        data: &[f32],
        height: usize,
        width: usize,
        channels: usize,
    ) -> Result<Self> {
        if !matches!(channels, 1 | 3) {
            return Err(Error::invalid(
                "image",
                format!("cannot write a {channels}-channel sample as PNG (1 or 3 channels)"),
            ));
        }
        if data.len() != height * width * channels {
            return Err(Error::shape(
                "image",
                format!("{} values for {height}×{width}×{channels}", data.len()),
            ));
        }
        let pixels = data
            .iter()
            .map(|&v| ((v / 2.0 + 0.5).clamp(0.0, 1.0) * 255.0).round() as u8)
            .collect();
        Ok(Image8 {
            width,
            height,
            channels,
            pixels,
        })
    }

    pub fn encode_png(&self) -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        {
            let mut encoder = png::Encoder::new(&mut bytes, self.width as u32, self.height as u32);
            encoder.set_color(if self.channels == 1 {
                png::ColorType::Grayscale
            } else {
                png::ColorType::Rgb
            });
            encoder.set_depth(png::BitDepth::Eight);
            let mut writer = encoder
                .write_header()
                .map_err(|e| Error::invalid("png", format!("cannot encode: {e}")))?;
            writer
                .write_image_data(&self.pixels)
                .map_err(|e| Error::invalid("png", format!("cannot encode: {e}")))?;
        }
        Ok(bytes)
    }

    /// Tiles `images` (all the same size) `columns` wide with `gap` pixels of gray
    /// between them, each magnified `scale` times (nearest neighbour). A picture of
    /// more than [`MAX_GRID_BYTES`] is an error.
    pub fn grid(images: &[Image8], columns: usize, gap: usize, scale: usize) -> Result<Image8> {
        let first = images
            .first()
            .ok_or_else(|| Error::invalid("grid", "no images"))?;
        if images
            .iter()
            .any(|i| (i.width, i.height, i.channels) != (first.width, first.height, first.channels))
        {
            return Err(Error::invalid("grid", "images differ in size"));
        }
        let columns = columns.clamp(1, images.len());
        let rows = images.len().div_ceil(columns);
        let c = first.channels;
        // Tile and picture sizes, None on overflow.
        let side = |tiles: usize, tile: usize| {
            tiles
                .checked_mul(tile.checked_mul(scale)?)?
                .checked_add(tiles.checked_add(1)?.checked_mul(gap)?)
        };
        let size = (|| {
            let (width, height) = (side(columns, first.width)?, side(rows, first.height)?);
            let bytes = width.checked_mul(height)?.checked_mul(c)?;
            Some((width, height, bytes)).filter(|&(_, _, b)| b <= MAX_GRID_BYTES)
        })();
        let Some((width, height, _)) = size else {
            return Err(Error::invalid(
                "grid",
                format!(
                    "{} images of {}×{} at scale {scale} in {columns} columns make a picture of more than {MAX_GRID_BYTES} bytes; use fewer images or a smaller scale",
                    images.len(),
                    first.width,
                    first.height
                ),
            ));
        };
        let (cw, ch) = (first.width * scale, first.height * scale);
        let mut pixels = vec![GRID_GAP_GRAY; width * height * c];
        for (n, image) in images.iter().enumerate() {
            let x0 = gap + (n % columns) * (cw + gap);
            let y0 = gap + (n / columns) * (ch + gap);
            for y in 0..ch {
                for x in 0..cw {
                    let src = ((y / scale) * image.width + x / scale) * c;
                    let dst = ((y0 + y) * width + x0 + x) * c;
                    pixels[dst..dst + c].copy_from_slice(&image.pixels[src..src + c]);
                }
            }
        }
        Ok(Image8 {
            width,
            height,
            channels: c,
            pixels,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_space_maps_like_diffusers() {
        let img = Image8::from_model_space(&[-1.0, 0.0, 1.0, 2.0, -0.999], 1, 5, 1).unwrap();
        // (0/2+0.5)·255 = 127.5 rounds to 128; out-of-range values clip.
        assert_eq!(img.pixels, vec![0, 128, 255, 255, 0]);
    }

    #[test]
    fn grid_places_tiles_with_gaps() {
        let a = Image8 {
            width: 1,
            height: 1,
            channels: 1,
            pixels: vec![10],
        };
        let b = Image8 {
            width: 1,
            height: 1,
            channels: 1,
            pixels: vec![20],
        };
        let g = Image8::grid(&[a, b.clone(), b], 2, 1, 2).unwrap();
        assert_eq!((g.width, g.height), (2 * 2 + 3, 2 * 2 + 3));
        assert_eq!(g.pixels[g.width + 1], 10);
        assert_eq!(g.pixels[g.width + 4], 20);
        assert_eq!(g.pixels[4 * g.width + 1], 20);
        assert_eq!(g.pixels[4 * g.width + 4], GRID_GAP_GRAY);
        assert_eq!(g.pixels[0], GRID_GAP_GRAY);
    }

    #[test]
    fn oversized_grids_are_errors_not_allocations() {
        let tile = Image8 {
            width: 28,
            height: 28,
            channels: 1,
            pixels: vec![0; 28 * 28],
        };
        // 28·10⁹ pixels a side is far past the limit; a scale of usize::MAX
        // overflows the tile size.
        for scale in [1_000_000_000, usize::MAX] {
            let e = Image8::grid(std::slice::from_ref(&tile), 1, 2, scale).expect_err("too large");
            match e {
                Error::InvalidArgument { name, message } => {
                    assert_eq!(name, "grid");
                    assert!(
                        message.contains("28×28") && message.contains("1073741824"),
                        "{message}"
                    );
                }
                other => panic!("{other}"),
            }
        }
        let g = Image8::grid(&[tile], 1, 0, 1).expect("small grid");
        assert_eq!((g.width, g.height), (28, 28));
    }
}
