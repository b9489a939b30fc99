//! Reading images in: a PNG file into the model's space (NHWC in [-1, 1], value
//! v/127.5 − 1 of each 8-bit level v), as img2img starts from one. Gray, gray +
//! alpha, RGB and RGBA, 8 or 16 bits (16-bit levels are rounded to 8, alpha is
//! dropped); a gray image on an RGB model is repeated over the channels, and an RGB
//! image on a one-channel model is turned gray with ITU-R 601 luma (0.299 R +
//! 0.587 G + 0.114 B, as PIL's `convert("L")`).

use std::path::Path;

use crate::error::{Error, Result};

/// Largest image side read, in pixels (checked from the header before decoding).
pub const MAX_INPUT_SIDE: u32 = 8192;

/// The PNG at `path` as `height × width × channels` values in [-1, 1]; an error
/// naming the file when it cannot be read or has another size.
pub fn read_png_as_model_space(
    path: &Path,
    height: usize,
    width: usize,
    channels: usize,
) -> Result<Vec<f32>> {
    let file =
        std::fs::File::open(path).map_err(|e| Error::io(path, "cannot open the image", e))?;
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().map_err(|e| {
        Error::invalid(
            "image",
            format!("{}: not a readable PNG: {e}", path.display()),
        )
    })?;
    let info = reader.info();
    let (w, h) = (info.width, info.height);
    if w > MAX_INPUT_SIDE || h > MAX_INPUT_SIDE {
        return Err(Error::invalid(
            "image",
            format!(
                "{}: {w}×{h} pixels; images up to {MAX_INPUT_SIDE} pixels a side are read",
                path.display()
            ),
        ));
    }
    if (h as usize, w as usize) != (height, width) {
        return Err(Error::invalid(
            "image",
            format!(
                "{}: the image is {w}×{h} pixels, the request makes {width}×{height} (give width and height to match it)",
                path.display()
            ),
        ));
    }
    let size = reader.output_buffer_size().ok_or_else(|| {
        Error::invalid(
            "image",
            format!("{}: the image's size overflows", path.display()),
        )
    })?;
    let mut buf = vec![0u8; size];
    let frame = reader
        .next_frame(&mut buf)
        .map_err(|e| Error::invalid("image", format!("{}: cannot decode: {e}", path.display())))?;
    let source_channels = frame.color_type.samples();
    let pixels = &buf[..frame.buffer_size()];
    let mut out = Vec::with_capacity(height * width * channels);
    let level = |v: f32| v / 127.5 - 1.0;
    for px in pixels.chunks_exact(source_channels) {
        // Colour channels only: drop alpha.
        let colour = &px[..if source_channels >= 3 { 3 } else { 1 }];
        match (colour.len(), channels) {
            (1, c) => out.extend(std::iter::repeat_n(level(colour[0] as f32), c)),
            (3, 1) => {
                let luma =
                    0.299 * colour[0] as f32 + 0.587 * colour[1] as f32 + 0.114 * colour[2] as f32;
                out.push(level(luma));
            }
            (3, 3) => out.extend(colour.iter().map(|&v| level(v as f32))),
            (_, c) => {
                return Err(Error::invalid(
                    "image",
                    format!(
                        "{}: a {c}-channel model cannot start from this image",
                        path.display()
                    ),
                ))
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::Image8;

    #[test]
    fn a_written_png_reads_back_in_model_space() {
        let dir = tempfile_dir();
        let path = dir.join("x.png");
        let image = Image8 {
            width: 2,
            height: 1,
            channels: 3,
            pixels: vec![0, 255, 51, 255, 255, 255],
        };
        std::fs::write(&path, image.encode_png().expect("png")).expect("write");
        let rgb = read_png_as_model_space(&path, 1, 2, 3).expect("rgb");
        assert_eq!(rgb, [-1.0, 1.0, 51.0 / 127.5 - 1.0, 1.0, 1.0, 1.0]);
        let gray = read_png_as_model_space(&path, 1, 2, 1).expect("gray");
        let luma = 0.587 * 255.0 + 0.114 * 51.0;
        assert!((gray[0] - (luma / 127.5 - 1.0)).abs() < 1e-6 && (gray[1] - 1.0).abs() < 1e-5);
        assert!(read_png_as_model_space(&path, 2, 2, 3).is_err());
        std::fs::write(&path, b"not a png").expect("write");
        assert!(read_png_as_model_space(&path, 1, 2, 3).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("diffsteer-image-input-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        dir
    }
}
