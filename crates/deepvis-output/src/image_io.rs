//! 8-bit RGB images: conversion from the optimizer's planar float tensors,
//! PNG encoding, and loading of PNG/JPEG input images; images of any channel
//! count saved as grey or RGB PNGs plus, where a PNG cannot hold them, their
//! raw values as `.npy`.

use std::io::Cursor;
use std::path::{Path, PathBuf};

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

    /// A grey image (R = G = B) from one plane of `height * width` values in
    /// [0, 1], quantized as [`Self::from_planar_f32`] does.
    ///
    /// # Panics
    /// If `plane.len() != height * width`.
    pub fn from_gray_f32(plane: &[f32], height: usize, width: usize) -> Self {
        assert_eq!(
            plane.len(),
            height * width,
            "from_gray_f32: expected {height}x{width} values, got {}",
            plane.len()
        );
        let data = plane.iter().flat_map(|&v| [to_u8(v); 3]).collect();
        RgbImage {
            width: u32::try_from(width).expect("image width exceeds u32"),
            height: u32::try_from(height).expect("image height exceeds u32"),
            data,
        }
    }

    /// Each pixel repeated `k`×`k` times: small images enlarged for viewing
    /// without blurring them.
    pub fn scale_nearest(&self, k: u32) -> RgbImage {
        let k = k.max(1);
        let (w, h) = (self.width * k, self.height * k);
        let mut data = Vec::with_capacity(w as usize * h as usize * 3);
        for y in 0..h {
            for x in 0..w {
                data.extend_from_slice(&self.pixel(x / k, y / k));
            }
        }
        RgbImage {
            width: w,
            height: h,
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

/// Encodes one plane of `height * width` values in [0, 1] as an 8-bit
/// greyscale PNG. `path` is only used for the error message.
pub fn encode_gray_png(
    plane: &[f32],
    height: usize,
    width: usize,
    path: &Path,
) -> Result<Vec<u8>, OutputError> {
    assert_eq!(plane.len(), height * width, "encode_gray_png: wrong length");
    let data: Vec<u8> = plane.iter().map(|&v| to_u8(v)).collect();
    let mut buf = Cursor::new(Vec::new());
    image::write_buffer_with_format(
        &mut buf,
        &data,
        u32::try_from(width).expect("image width exceeds u32"),
        u32::try_from(height).expect("image height exceeds u32"),
        image::ExtendedColorType::L8,
        ImageFormat::Png,
    )
    .map_err(|source| OutputError::Encode {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(buf.into_inner())
}

/// Saves a planar `[channels, height, width]` image in [0, 1] for viewing at
/// `png`: 1 channel as a greyscale PNG, 3 as RGB, more than 3 as an RGB PNG
/// of the first three, 2 as a greyscale PNG of channel 0. Where the PNG
/// cannot hold every channel (2, or 4 and more), the raw values go beside it
/// as float32 `.npy` (`[channels, height, width]`, the same name with `.npy`),
/// whose path is returned. Both are written atomically.
///
/// # Panics
/// If `chw.len() != channels * height * width` or `channels == 0`.
pub fn save_planar_image(
    png: &Path,
    chw: &[f32],
    channels: usize,
    height: usize,
    width: usize,
) -> Result<Option<PathBuf>, OutputError> {
    let plane = height * width;
    assert!(channels > 0, "save_planar_image: no channels");
    assert_eq!(
        chw.len(),
        channels * plane,
        "save_planar_image: wrong length"
    );
    let bytes = if channels >= 3 {
        RgbImage::from_planar_f32(&chw[..3 * plane], height, width).encode_png(png)?
    } else {
        encode_gray_png(&chw[..plane], height, width, png)?
    };
    let npy = (channels == 2 || channels > 3).then(|| png.with_extension("npy"));
    // The raw values first: a PNG on disk is what marks a filter as done when resuming.
    if let Some(npy) = &npy {
        crate::write_npy_f32(npy, chw, &[channels, height, width])?;
    }
    write_atomic(png, &bytes)?;
    Ok(npy)
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
    let bytes = read_regular_file(path)?;
    decode_rgb(&bytes, path)
}

/// Reads a whole regular file; devices and pipes (`/dev/zero`) would be read until memory
/// runs out, so they are refused.
fn read_regular_file(path: &Path) -> Result<Vec<u8>, OutputError> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| OutputError::io("open", path, e))?;
    let meta = file
        .metadata()
        .map_err(|e| OutputError::io("read", path, e))?;
    if !meta.is_file() {
        let e = std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "it is not a regular file (a directory, device or pipe); give a PNG or JPEG file",
        );
        return Err(OutputError::io("read", path, e));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.read_to_end(&mut bytes)
        .map_err(|e| OutputError::io("read", path, e))?;
    Ok(bytes)
}

/// [`load_rgb`] of an image already in memory; `path` names it in errors.
///
/// Decoding is bounded by the `image` crate's default limits (512 MiB per decoded buffer), so
/// a small file declaring a gigapixel image is refused instead of exhausting memory.
pub fn decode_rgb(bytes: &[u8], path: &Path) -> Result<(Vec<f32>, usize, usize), OutputError> {
    let decode_err = |source| OutputError::Decode {
        path: path.to_path_buf(),
        source,
    };
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| OutputError::io("read", path, e))?;
    let img = reader.decode().map_err(decode_err)?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let plane = w * h;
    let mut out = vec![0.0f32; 3 * plane];
    // 8-bit images go through an 8-bit RGB copy rather than a float one: a quarter of the
    // memory for the intermediate (the fuzzer's largest images peaked at 773 MiB that way), and
    // the same values, since both divide the byte by 255.
    if img.color().bytes_per_pixel() == img.color().channel_count() {
        let rgb = img.to_rgb8();
        drop(img);
        for (i, px) in rgb.as_raw().chunks_exact(3).enumerate() {
            for c in 0..3 {
                out[c * plane + i] = f32::from(px[c]) / 255.0;
            }
        }
    } else {
        let rgb = img.to_rgb32f();
        drop(img);
        for (i, px) in rgb.as_raw().chunks_exact(3).enumerate() {
            for c in 0..3 {
                out[c * plane + i] = px[c].clamp(0.0, 1.0);
            }
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
    fn one_channel_is_a_greyscale_png_and_two_or_four_add_npy() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (h, w) = (3, 5);
        let plane: Vec<f32> = (0..h * w).map(|i| i as f32 / 14.0).collect();
        let png = tmp.path().join("g/filter_0000.png");
        assert_eq!(
            save_planar_image(&png, &plane, 1, h, w).expect("save"),
            None
        );
        let decoded = image::open(&png).expect("decode");
        assert_eq!(decoded.color(), image::ColorType::L8);
        assert_eq!((decoded.width(), decoded.height()), (5, 3));
        let want: Vec<u8> = plane.iter().map(|&v| to_u8(v)).collect();
        assert_eq!(decoded.to_luma8().as_raw(), &want);
        assert!(!png.with_extension("npy").exists());
        // Read back for a grid, grey becomes R = G = B.
        let (chw, lh, lw) = load_rgb(&png).expect("load");
        assert_eq!((lh, lw), (3, 5));
        assert_eq!(
            RgbImage::from_planar_f32(&chw, lh, lw),
            RgbImage::from_gray_f32(&plane, h, w)
        );

        let four: Vec<f32> = (0..4 * h * w).map(|i| (i % 17) as f32 / 16.0).collect();
        let png4 = tmp.path().join("filter_0001.png");
        let npy = save_planar_image(&png4, &four, 4, h, w)
            .expect("save")
            .expect("npy");
        assert_eq!(npy, tmp.path().join("filter_0001.npy"));
        let decoded = image::open(&png4).expect("decode");
        assert_eq!(decoded.color(), image::ColorType::Rgb8);
        assert_eq!(
            decoded.to_rgb8().as_raw(),
            &RgbImage::from_planar_f32(&four[..3 * h * w], h, w).data
        );
        let (shape, values) = crate::parse_npy_f32(&std::fs::read(&npy).unwrap()).unwrap();
        assert_eq!(shape, vec![4, 3, 5]);
        assert_eq!(values, four);

        let png2 = tmp.path().join("filter_0002.png");
        let npy = save_planar_image(&png2, &four[..2 * h * w], 2, h, w)
            .expect("save")
            .expect("npy");
        assert_eq!(image::open(&png2).unwrap().color(), image::ColorType::L8);
        let (shape, _) = crate::parse_npy_f32(&std::fs::read(&npy).unwrap()).unwrap();
        assert_eq!(shape, vec![2, 3, 5]);
    }

    #[test]
    fn nearest_enlargement_repeats_pixels() {
        let mut img = RgbImage::new(2, 1, [0, 0, 0]);
        img.put_pixel(1, 0, [9, 8, 7]);
        let big = img.scale_nearest(3);
        assert_eq!((big.width, big.height), (6, 3));
        assert_eq!(big.pixel(2, 2), [0, 0, 0]);
        assert_eq!(big.pixel(3, 0), [9, 8, 7]);
        assert_eq!(big.pixel(5, 2), [9, 8, 7]);
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

/// Encodes `frames` (all the same size) as a looping animated GIF, `delay_ms` per frame and the
/// last one held for a second, and writes it with [`write_atomic`]. Each frame gets its own
/// palette (NeuQuant at speed 10): optimized images are smooth colour fields that one global
/// palette would band.
pub fn save_gif(path: &Path, frames: &[RgbImage], delay_ms: u32) -> Result<(), OutputError> {
    use image::codecs::gif::{GifEncoder, Repeat};
    use image::{Delay, Frame, RgbaImage};
    let mut buf = Vec::new();
    {
        let mut enc = GifEncoder::new_with_speed(&mut buf, 10);
        let encode = |source| OutputError::Encode {
            path: path.to_path_buf(),
            source,
        };
        enc.set_repeat(Repeat::Infinite).map_err(encode)?;
        for (i, f) in frames.iter().enumerate() {
            let rgba: Vec<u8> = f
                .data
                .chunks(3)
                .flat_map(|p| [p[0], p[1], p[2], 255])
                .collect();
            let img = RgbaImage::from_raw(f.width, f.height, rgba).expect("3 bytes per pixel");
            let ms = if i + 1 == frames.len() {
                1000
            } else {
                delay_ms
            };
            enc.encode_frame(Frame::from_parts(
                img,
                0,
                0,
                Delay::from_numer_denom_ms(ms, 1),
            ))
            .map_err(encode)?;
        }
    }
    write_atomic(path, &buf)
}
