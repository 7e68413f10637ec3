//! 8-bit RGB images: conversion from the optimizer's planar float tensors,
//! PNG encoding, and loading of PNG/JPEG input images.

use std::io::Cursor;
use std::path::Path;

use image::{ImageFormat, ImageReader};

use crate::{write_atomic, OutputError};

/// An 8-bit RGB image with interleaved pixels (`R G B R G B ...`, row-major).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    /// `width * height * 3` bytes.
    pub data: Vec<u8>,
}

impl RgbImage {
    /// A `width` x `height` image filled with one color.
    pub fn new(width: u32, height: u32, fill: [u8; 3]) -> Self {
        let n = width as usize * height as usize;
        let mut data = Vec::with_capacity(n * 3);
        for _ in 0..n {
            data.extend_from_slice(&fill);
        }
        RgbImage {
            width,
            height,
            data,
        }
    }

    /// Converts a planar CHW tensor (C = 3) with values nominally in [0, 1]
    /// into an interleaved 8-bit image.
    ///
    /// Values are clamped to [0, 1] and rounded to the nearest u8; NaN maps
    /// to 0 so a diverged optimization still produces a viewable (black)
    /// image rather than garbage.
    ///
    /// # Panics
    /// If `chw.len() != 3 * height * width` (a caller bug, not bad data).
    pub fn from_planar_f32(chw: &[f32], height: usize, width: usize) -> Self {
        let plane = height * width;
        assert_eq!(
            chw.len(),
            3 * plane,
            "from_planar_f32: expected 3x{height}x{width} values, got {}",
            chw.len()
        );
        let mut data = Vec::with_capacity(3 * plane);
        for i in 0..plane {
            for c in 0..3 {
                data.push(to_u8(chw[c * plane + i]));
            }
        }
        RgbImage {
            width: u32::try_from(width).expect("image width exceeds u32"),
            height: u32::try_from(height).expect("image height exceeds u32"),
            data,
        }
    }

    /// Planar CHW floats in [0, 1]; the inverse of [`Self::from_planar_f32`]
    /// up to 8-bit quantization.
    pub fn to_planar_f32(&self) -> Vec<f32> {
        let plane = self.width as usize * self.height as usize;
        let mut out = vec![0.0f32; 3 * plane];
        for (i, px) in self.data.chunks_exact(3).enumerate() {
            for c in 0..3 {
                out[c * plane + i] = f32::from(px[c]) / 255.0;
            }
        }
        out
    }

    /// The pixel at (x, y). Panics when out of bounds.
    pub fn pixel(&self, x: u32, y: u32) -> [u8; 3] {
        let i = self.index(x, y);
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }

    /// Sets the pixel at (x, y). Panics when out of bounds.
    pub fn put_pixel(&mut self, x: u32, y: u32, rgb: [u8; 3]) {
        let i = self.index(x, y);
        self.data[i..i + 3].copy_from_slice(&rgb);
    }

    fn index(&self, x: u32, y: u32) -> usize {
        assert!(
            x < self.width && y < self.height,
            "pixel ({x}, {y}) outside {}x{} image",
            self.width,
            self.height
        );
        (y as usize * self.width as usize + x as usize) * 3
    }

    /// Encodes as PNG in memory.
    ///
    /// `path` is only used for the error message.
    pub fn encode_png(&self, path: &Path) -> Result<Vec<u8>, OutputError> {
        let mut buf = Cursor::new(Vec::new());
        image::write_buffer_with_format(
            &mut buf,
            &self.data,
            self.width,
            self.height,
            image::ExtendedColorType::Rgb8,
            ImageFormat::Png,
        )
        .map_err(|source| OutputError::Encode {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(buf.into_inner())
    }

    /// Saves as PNG. Encoding happens fully in memory first, then the bytes
    /// are written with [`write_atomic`].
    pub fn save_png(&self, path: &Path) -> Result<(), OutputError> {
        let bytes = self.encode_png(path)?;
        write_atomic(path, &bytes)
    }
}

fn to_u8(v: f32) -> u8 {
    // `clamp` passes NaN through and `as u8` maps NaN to 0; spelled out here
    // so the behavior is intentional rather than incidental.
    if v.is_nan() {
        return 0;
    }
    (v.clamp(0.0, 1.0) * 255.0).round() as u8
}

/// Loads a PNG or JPEG (detected from content, not extension) as planar CHW
/// RGB floats in [0, 1]. Returns `(data, height, width)`.
///
/// Grayscale and alpha images are converted to RGB (alpha is dropped, not
/// composited). 16-bit PNGs keep their full precision.
pub fn load_rgb(path: &Path) -> Result<(Vec<f32>, usize, usize), OutputError> {
    let decode_err = |source| OutputError::Decode {
        path: path.to_path_buf(),
        source,
    };
    let reader = ImageReader::open(path)
        .map_err(|e| OutputError::io("open", path, e))?
        .with_guessed_format()
        .map_err(|e| OutputError::io("read", path, e))?;
    let img = reader.decode().map_err(decode_err)?.to_rgb32f();
    let (w, h) = (img.width() as usize, img.height() as usize);
    let plane = w * h;
    let mut out = vec![0.0f32; 3 * plane];
    for (i, px) in img.as_raw().chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * plane + i] = px[c].clamp(0.0, 1.0);
        }
    }
    Ok((out, h, w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planar_to_interleaved_with_clamping() {
        // 1x2 image: R plane, G plane, B plane.
        let chw = [
            0.0,
            1.0, // R
            0.5,
            2.0, // G (2.0 clamps to 255)
            -1.0,
            f32::NAN, // B (negative and NaN clamp to 0)
        ];
        let img = RgbImage::from_planar_f32(&chw, 1, 2);
        assert_eq!((img.width, img.height), (2, 1));
        assert_eq!(img.data, vec![0, 128, 0, 255, 255, 0]);
    }

    #[test]
    fn planar_layout_rows_and_columns() {
        // 2x2, red channel encodes position so a transposition would show.
        let (h, w) = (2, 2);
        let mut chw = vec![0.0f32; 12];
        for (i, v) in chw[..4].iter_mut().enumerate() {
            *v = i as f32 / 255.0;
        }
        let img = RgbImage::from_planar_f32(&chw, h, w);
        assert_eq!(img.pixel(0, 0)[0], 0);
        assert_eq!(img.pixel(1, 0)[0], 1);
        assert_eq!(img.pixel(0, 1)[0], 2);
        assert_eq!(img.pixel(1, 1)[0], 3);
        let back = img.to_planar_f32();
        for (a, b) in back.iter().zip(&chw) {
            assert!((a - b).abs() < 1e-6);
        }
    }

    #[test]
    #[should_panic(expected = "expected 3x2x2")]
    fn wrong_length_panics() {
        RgbImage::from_planar_f32(&[0.0; 11], 2, 2);
    }

    #[test]
    fn png_round_trip() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("sub/img.png");
        let mut img = RgbImage::new(5, 3, [10, 20, 30]);
        img.put_pixel(4, 2, [255, 0, 7]);
        img.put_pixel(0, 1, [1, 2, 3]);
        img.save_png(&path).expect("save");

        let decoded = image::open(&path).expect("decode").to_rgb8();
        assert_eq!((decoded.width(), decoded.height()), (5, 3));
        assert_eq!(decoded.as_raw(), &img.data);

        let (chw, h, w) = load_rgb(&path).expect("load");
        assert_eq!((h, w), (3, 5));
        assert_eq!(RgbImage::from_planar_f32(&chw, h, w), img);
    }

    #[test]
    fn load_jpeg() {
        let tmp = tempfile::tempdir().expect("tempdir");
        // Deliberately wrong extension: format comes from the content.
        let path = tmp.path().join("photo.png");
        let src = image::RgbImage::from_pixel(16, 8, image::Rgb([200, 100, 50]));
        src.save_with_format(&path, ImageFormat::Jpeg)
            .expect("write jpeg");
        let (chw, h, w) = load_rgb(&path).expect("load");
        assert_eq!((h, w), (8, 16));
        let img = RgbImage::from_planar_f32(&chw, h, w);
        let [r, g, b] = img.pixel(7, 3);
        // JPEG is lossy; a solid color survives within a few levels.
        assert!((i32::from(r) - 200).abs() <= 4, "r={r}");
        assert!((i32::from(g) - 100).abs() <= 4, "g={g}");
        assert!((i32::from(b) - 50).abs() <= 4, "b={b}");
    }

    #[test]
    fn load_errors_name_the_file() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let missing = tmp.path().join("missing.png");
        let err = load_rgb(&missing).expect_err("missing file");
        assert!(err.to_string().contains("missing.png"), "{err}");

        let garbage = tmp.path().join("garbage.png");
        std::fs::write(&garbage, b"not an image at all").expect("write");
        let err = load_rgb(&garbage).expect_err("garbage");
        assert!(matches!(err, OutputError::Decode { .. }), "{err}");
        assert!(err.to_string().contains("garbage.png"), "{err}");
    }
}
