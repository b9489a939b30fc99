//! Tiled decoding exactly as diffusers' `AutoencoderKL.tiled_decode` (what
//! `vae.enable_tiling()` turns on): the latent is cut into overlapping square tiles
//! (SD's VAE: 64 latent pixels, a new tile every 48), each decoded on its own, and
//! neighbouring tiles are cross-faded over their overlap (128 image pixels) before
//! each is cropped to 384 pixels and the crops are laid side by side. A decode then
//! needs the memory of one 512×512 tile whatever the image size; the result differs
//! from plain decoding near tile seams (the decoder's group norms and mid-block
//! attention see one tile), exactly as it does in diffusers.
//!
//! The blending is diffusers' in-place one and in its order: each tile is first
//! blended with the tile above it, then with the tile to its left, and a blended
//! tile is what its right and lower neighbours later blend with. Weights are
//! `1 − y/extent` and `y/extent`, computed in double and applied in f32 (PyTorch's
//! tensor × Python float).

use super::config::VaeConfig;

/// Tile geometry, in diffusers' terms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TileSettings {
    /// `tile_sample_min_size`: a tile's size in image pixels.
    pub sample_size: usize,
    /// `tile_latent_min_size`: a tile's size in latent pixels.
    pub latent_size: usize,
    /// `tile_overlap_factor`.
    pub overlap_factor: f64,
}

impl TileSettings {
    /// diffusers' defaults for a VAE: tiles of `sample_size` pixels (its config's;
    /// diffusers' default 32 when absent), overlap 0.25.
    pub fn for_config(c: &VaeConfig) -> Self {
        let sample_size = c.sample_size.unwrap_or(32);
        TileSettings {
            sample_size,
            latent_size: sample_size / c.scale_factor(),
            overlap_factor: 0.25,
        }
    }

    /// Latent pixels between tile starts (`overlap_size` in diffusers).
    pub fn stride(&self) -> usize {
        (self.latent_size as f64 * (1.0 - self.overlap_factor)) as usize
    }

    /// Image pixels over which neighbours are cross-faded (`blend_extent`).
    pub fn blend_extent(&self) -> usize {
        (self.sample_size as f64 * self.overlap_factor) as usize
    }

    /// Image pixels kept of each tile (`row_limit`).
    pub fn row_limit(&self) -> usize {
        self.sample_size.saturating_sub(self.blend_extent())
    }

    /// Whether diffusers tiles a latent of `h × w` (it does when either side is
    /// larger than a tile).
    pub fn applies(&self, h: usize, w: usize) -> bool {
        h > self.latent_size || w > self.latent_size
    }
}

/// One decoded tile on the host, NHWC without the batch: `[h, w, c]`.
#[derive(Debug, Clone)]
pub struct Tile {
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub data: Vec<f32>,
}

/// The start offsets of the tiles along a side of `len` latent pixels.
pub fn tile_starts(len: usize, stride: usize) -> Vec<usize> {
    (0..len).step_by(stride.max(1)).collect()
}

/// `b`'s first rows ← a cross-fade from `a`'s last rows (diffusers' `blend_v`).
fn blend_v(a: &Tile, b: &mut Tile, extent: usize) {
    let extent = extent.min(a.h).min(b.h);
    let row = b.w * b.c;
    for y in 0..extent {
        let (wa, wb) = (
            (1.0 - y as f64 / extent as f64) as f32,
            (y as f64 / extent as f64) as f32,
        );
        let src = &a.data[(a.h - extent + y) * a.w * a.c..][..row.min(a.w * a.c)];
        for (d, s) in b.data[y * row..(y + 1) * row].iter_mut().zip(src) {
            *d = s * wa + *d * wb;
        }
    }
}

/// `b`'s first columns ← a cross-fade from `a`'s last columns (diffusers' `blend_h`).
fn blend_h(a: &Tile, b: &mut Tile, extent: usize) {
    let extent = extent.min(a.w).min(b.w);
    let rows = a.h.min(b.h);
    for x in 0..extent {
        let (wa, wb) = (
            (1.0 - x as f64 / extent as f64) as f32,
            (x as f64 / extent as f64) as f32,
        );
        for y in 0..rows {
            let src = &a.data[(y * a.w + a.w - extent + x) * a.c..][..a.c];
            let dst = &mut b.data[(y * b.w + x) * b.c..][..b.c];
            for (d, s) in dst.iter_mut().zip(src) {
                *d = s * wa + *d * wb;
            }
        }
    }
}

/// Blends a grid of decoded tiles in diffusers' order and lays out their crops:
/// the image `[height, width, c]` as (height, width, values).
pub fn assemble(mut grid: Vec<Vec<Tile>>, s: &TileSettings) -> (usize, usize, Vec<f32>) {
    let (extent, limit) = (s.blend_extent(), s.row_limit());
    for i in 0..grid.len() {
        for j in 0..grid[i].len() {
            if i > 0 {
                let (above, rest) = grid.split_at_mut(i);
                blend_v(&above[i - 1][j], &mut rest[0][j], extent);
            }
            if j > 0 {
                let (left, rest) = grid[i].split_at_mut(j);
                blend_h(&left[j - 1], &mut rest[0], extent);
            }
        }
    }
    let c = grid.first().and_then(|r| r.first()).map_or(0, |t| t.c);
    let width: usize = grid
        .first()
        .map_or(0, |r| r.iter().map(|t| t.w.min(limit)).sum());
    let height: usize = grid
        .iter()
        .map(|r| r.first().map_or(0, |t| t.h.min(limit)))
        .sum();
    let mut out = Vec::with_capacity(height * width * c);
    for row in &grid {
        let rows = row.first().map_or(0, |t| t.h.min(limit));
        for y in 0..rows {
            for t in row {
                let w = t.w.min(limit);
                out.extend_from_slice(&t.data[y * t.w * t.c..][..w * t.c]);
            }
        }
    }
    (height, width, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tile(h: usize, w: usize, value: f32) -> Tile {
        Tile {
            h,
            w,
            c: 1,
            data: vec![value; h * w],
        }
    }

    #[test]
    fn sd_vae_geometry_is_diffusers() {
        let s = TileSettings {
            sample_size: 512,
            latent_size: 64,
            overlap_factor: 0.25,
        };
        assert_eq!(
            (s.stride(), s.blend_extent(), s.row_limit()),
            (48, 128, 384)
        );
        assert_eq!(tile_starts(100, 48), vec![0, 48, 96]);
        assert!(!s.applies(64, 64) && s.applies(64, 65));
    }

    #[test]
    fn crossfades_then_crops_into_place() {
        // Two tiles side by side, 2 rows, 6 wide, blended over 2 columns, cropped to 4.
        let s = TileSettings {
            sample_size: 6,
            latent_size: 3,
            overlap_factor: 1.0 / 3.0,
        };
        assert_eq!((s.blend_extent(), s.row_limit()), (2, 4));
        let (h, w, out) = assemble(vec![vec![tile(2, 6, 1.0), tile(2, 6, 3.0)]], &s);
        assert_eq!((h, w), (2, 8));
        // The right tile's first two columns fade from the left tile's last two
        // (weights 1, 0 then 1/2, 1/2): 1·1 + 3·0 = 1, 1·0.5 + 3·0.5 = 2.
        assert_eq!(&out[..8], &[1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 3.0, 3.0]);
    }
}
