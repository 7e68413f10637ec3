//! Minimal bitmap text rendering for grid labels, using the public-domain
//! 8x8 VGA-derived glyphs from `font8x8` so no font files are needed.

use font8x8::legacy::BASIC_LEGACY;

use crate::RgbImage;

/// Glyph cell size in font pixels.
pub(crate) const GLYPH: u32 = 8;

/// Returns `text` shortened to at most `max_chars` characters, ending in
/// ".." when something was cut so the reader knows it is not the full label.
/// Characters outside printable ASCII become '?' because the font has no
/// glyphs for them.
pub(crate) fn fit_label(text: &str, max_chars: usize) -> String {
    let chars: Vec<char> = text
        .chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .collect();
    if chars.len() <= max_chars {
        return chars.into_iter().collect();
    }
    if max_chars >= 3 {
        let mut s: String = chars[..max_chars - 2].iter().collect();
        s.push_str("..");
        s
    } else {
        chars[..max_chars].iter().collect()
    }
}

/// Draws `text` with its top-left corner at (x, y), each font pixel scaled to
/// `scale` x `scale` image pixels. Pixels falling outside the image are
/// skipped, so callers need not pre-clip.
pub(crate) fn draw_text(
    img: &mut RgbImage,
    x: u32,
    y: u32,
    text: &str,
    scale: u32,
    color: [u8; 3],
) {
    for (i, ch) in text.chars().enumerate() {
        let code = ch as usize;
        let glyph = if code < 128 {
            BASIC_LEGACY[code]
        } else {
            BASIC_LEGACY[b'?' as usize]
        };
        let gx = x + i as u32 * GLYPH * scale;
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..GLYPH {
                // font8x8 stores the leftmost pixel in the least significant bit.
                if bits & (1 << col) == 0 {
                    continue;
                }
                for dy in 0..scale {
                    for dx in 0..scale {
                        let px = gx + col * scale + dx;
                        let py = y + row as u32 * scale + dy;
                        if px < img.width && py < img.height {
                            img.put_pixel(px, py, color);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_label_truncates_with_marker() {
        assert_eq!(fit_label("filter 12", 20), "filter 12");
        assert_eq!(fit_label("filter 12", 9), "filter 12");
        assert_eq!(fit_label("filter 123", 9), "filter ..");
        assert_eq!(fit_label("abc", 2), "ab");
        assert_eq!(fit_label("héllo", 10), "h?llo");
    }

    #[test]
    fn draws_glyph_pixels_inside_box() {
        let mut img = RgbImage::new(20, 10, [255, 255, 255]);
        draw_text(&mut img, 1, 1, "A", 1, [0, 0, 0]);
        let mut dark = 0;
        for y in 0..10 {
            for x in 0..20 {
                if img.pixel(x, y) == [0, 0, 0] {
                    dark += 1;
                    assert!(
                        (1..9).contains(&x) && (1..9).contains(&y),
                        "pixel at {x},{y}"
                    );
                }
            }
        }
        assert!(
            dark > 10,
            "glyph 'A' should set a fair number of pixels, got {dark}"
        );
    }

    #[test]
    fn clips_at_image_edge() {
        let mut img = RgbImage::new(4, 4, [255, 255, 255]);
        // Must not panic although the text runs far past the edge.
        draw_text(&mut img, 2, 2, "WWWW", 2, [0, 0, 0]);
    }
}
