//! Contact sheets: many filter visualizations tiled into one labeled image.

use crate::font::{draw_text, fit_label, GLYPH};
use crate::RgbImage;

/// Sheet background; light so the dark label text reads well.
pub const BACKGROUND: [u8; 3] = [224, 224, 224];
/// Background of the strip under each tile that holds its label.
pub const LABEL_BACKGROUND: [u8; 3] = [255, 255, 255];
/// Label text color.
pub const LABEL_COLOR: [u8; 3] = [20, 20, 20];
/// Space between tiles and around the sheet, in pixels.
pub const MARGIN: u32 = 8;
/// Tile size limit used when there are more than [`SMALL_SHEET`] tiles and
/// the caller gave none: 100 tiles at 512 px would be a ~50 MP sheet.
pub const DEFAULT_MAX_TILE: u32 = 256;
/// Up to this many tiles keep their full size by default.
pub const SMALL_SHEET: usize = 16;

/// Where everything goes on a sheet; computed once, used for drawing and
/// exposed so callers (and tests) can locate tiles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GridLayout {
    pub columns: u32,
    pub rows: u32,
    /// Size of every cell's image area (the largest scaled tile).
    pub cell_width: u32,
    pub cell_height: u32,
    /// Height of the label strip under each cell.
    pub label_height: u32,
    /// Font pixel magnification for labels.
    pub text_scale: u32,
    pub width: u32,
    pub height: u32,
}

impl GridLayout {
    /// Top-left corner of cell `i`'s image area (row-major order).
    pub fn cell_origin(&self, i: usize) -> (u32, u32) {
        let (col, row) = (i as u32 % self.columns, i as u32 / self.columns);
        (
            MARGIN + col * (self.cell_width + MARGIN),
            MARGIN + row * (self.cell_height + self.label_height + MARGIN),
        )
    }

    /// Most label characters that fit under a cell.
    pub fn max_label_chars(&self) -> usize {
        (self.cell_width / (GLYPH * self.text_scale)) as usize
    }
}

/// Size of a `w` x `h` tile after shrinking to fit `limit` (never enlarged,
/// aspect ratio kept, at least 1 px per side).
fn scaled_size(w: u32, h: u32, limit: Option<u32>) -> (u32, u32) {
    match limit {
        Some(max) if w.max(h) > max => {
            let max = max.max(1);
            let s = f64::from(max) / f64::from(w.max(h));
            let sw = ((f64::from(w) * s).round() as u32).clamp(1, max);
            let sh = ((f64::from(h) * s).round() as u32).clamp(1, max);
            (sw, sh)
        }
        _ => (w.max(1), h.max(1)),
    }
}

fn effective_limit(n: usize, tile_size: Option<u32>) -> Option<u32> {
    tile_size.or(if n > SMALL_SHEET {
        Some(DEFAULT_MAX_TILE)
    } else {
        None
    })
}

/// Computes the layout of a sheet for tiles of the given sizes.
///
/// `columns` defaults to `ceil(sqrt(n))` (near-square) and is clamped to
/// `1..=n`. `tile_size` caps the larger side of each tile; when `None` and
/// there are more than [`SMALL_SHEET`] tiles, [`DEFAULT_MAX_TILE`] applies.
pub fn grid_layout(
    sizes: &[(u32, u32)],
    columns: Option<usize>,
    tile_size: Option<u32>,
) -> GridLayout {
    let n = sizes.len();
    let limit = effective_limit(n, tile_size);
    let (mut cell_width, mut cell_height) = (1, 1);
    for &(w, h) in sizes {
        let (sw, sh) = scaled_size(w, h, limit);
        cell_width = cell_width.max(sw);
        cell_height = cell_height.max(sh);
    }
    let default_cols = (n as f64).sqrt().ceil() as usize;
    let columns = columns.unwrap_or(default_cols).clamp(1, n.max(1)) as u32;
    let rows = (n as u32).div_ceil(columns);
    // Double-size text once tiles are large enough that 8 px text would look
    // tiny next to them.
    let text_scale = if cell_width >= 192 { 2 } else { 1 };
    let label_height = GLYPH * text_scale + 6;
    GridLayout {
        columns,
        rows,
        cell_width,
        cell_height,
        label_height,
        text_scale,
        width: MARGIN + columns * (cell_width + MARGIN),
        height: MARGIN + rows * (cell_height + label_height + MARGIN),
    }
}

/// Tiles labeled images into one sheet, row-major, in the given order.
///
/// Each tile is shrunk with area averaging if it exceeds the tile size limit
/// (see [`grid_layout`]), centered in its cell, and has its label drawn in a
/// light strip underneath, truncated with ".." if too long. An empty `tiles`
/// slice yields a small blank sheet.
pub fn grid_sheet(
    tiles: &[(String, &RgbImage)],
    columns: Option<usize>,
    tile_size: Option<u32>,
) -> RgbImage {
    let sizes: Vec<(u32, u32)> = tiles.iter().map(|(_, t)| (t.width, t.height)).collect();
    let layout = grid_layout(&sizes, columns, tile_size);
    let limit = effective_limit(tiles.len(), tile_size);
    let mut sheet = RgbImage::new(layout.width, layout.height, BACKGROUND);

    for (i, (label, tile)) in tiles.iter().enumerate() {
        let (cx, cy) = layout.cell_origin(i);
        let (sw, sh) = scaled_size(tile.width, tile.height, limit);
        let scaled;
        let tile: &RgbImage = if (sw, sh) == (tile.width, tile.height) {
            tile
        } else {
            scaled = tile.resize_area(sw, sh);
            &scaled
        };
        let ox = cx + (layout.cell_width - tile.width) / 2;
        let oy = cy + (layout.cell_height - tile.height) / 2;
        blit(&mut sheet, tile, ox, oy);

        let strip_y = cy + layout.cell_height;
        fill_rect(
            &mut sheet,
            cx,
            strip_y,
            layout.cell_width,
            layout.label_height,
            LABEL_BACKGROUND,
        );
        let text = fit_label(label, layout.max_label_chars());
        let text_w = text.chars().count() as u32 * GLYPH * layout.text_scale;
        let tx = cx + layout.cell_width.saturating_sub(text_w) / 2;
        let ty = strip_y + (layout.label_height - GLYPH * layout.text_scale) / 2;
        draw_text(&mut sheet, tx, ty, &text, layout.text_scale, LABEL_COLOR);
    }
    sheet
}

fn blit(dst: &mut RgbImage, src: &RgbImage, x: u32, y: u32) {
    let row_bytes = src.width as usize * 3;
    for row in 0..src.height {
        let s = row as usize * row_bytes;
        let d = ((y + row) as usize * dst.width as usize + x as usize) * 3;
        dst.data[d..d + row_bytes].copy_from_slice(&src.data[s..s + row_bytes]);
    }
}

fn fill_rect(img: &mut RgbImage, x: u32, y: u32, w: u32, h: u32, color: [u8; 3]) {
    for yy in y..(y + h).min(img.height) {
        for xx in x..(x + w).min(img.width) {
            img.put_pixel(xx, yy, color);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn solid(size: u32, color: [u8; 3]) -> RgbImage {
        RgbImage::new(size, size, color)
    }

    fn labeled(imgs: &[RgbImage]) -> Vec<(String, &RgbImage)> {
        imgs.iter()
            .enumerate()
            .map(|(i, t)| (format!("filter {i}"), t))
            .collect()
    }

    #[test]
    fn single_tile_dimensions() {
        let imgs = vec![solid(64, [255, 0, 0])];
        let sheet = grid_sheet(&labeled(&imgs), None, None);
        let label_h = GLYPH + 6;
        assert_eq!(sheet.width, MARGIN + 64 + MARGIN);
        assert_eq!(sheet.height, MARGIN + 64 + label_h + MARGIN);
        // Tile starts exactly at the margin.
        assert_eq!(sheet.pixel(MARGIN, MARGIN), [255, 0, 0]);
        assert_eq!(sheet.pixel(MARGIN + 63, MARGIN + 63), [255, 0, 0]);
        assert_eq!(sheet.pixel(MARGIN - 1, MARGIN), BACKGROUND);
        assert_eq!(sheet.pixel(MARGIN + 64, MARGIN), BACKGROUND);
    }

    #[test]
    fn five_tiles_make_3x2_with_tiles_in_place() {
        let colors: Vec<[u8; 3]> = (0..5u8).map(|i| [i * 40, 200, 100]).collect();
        let imgs: Vec<RgbImage> = colors.iter().map(|&c| solid(32, c)).collect();
        let sheet = grid_sheet(&labeled(&imgs), None, None);
        let layout = grid_layout(&[(32, 32); 5], None, None);
        assert_eq!((layout.columns, layout.rows), (3, 2));
        let label_h = GLYPH + 6;
        assert_eq!(sheet.width, MARGIN + 3 * (32 + MARGIN));
        assert_eq!(sheet.height, MARGIN + 2 * (32 + label_h + MARGIN));
        // Tile 4 is the second cell of the second row.
        let (x4, y4) = (MARGIN + (32 + MARGIN), MARGIN + (32 + label_h + MARGIN));
        assert_eq!(layout.cell_origin(4), (x4, y4));
        for (i, &c) in colors.iter().enumerate() {
            let (x, y) = layout.cell_origin(i);
            assert_eq!(sheet.pixel(x, y), c, "tile {i} top-left");
            assert_eq!(sheet.pixel(x + 31, y + 31), c, "tile {i} bottom-right");
        }
        // The sixth cell is empty: background only.
        let (x5, y5) = layout.cell_origin(5);
        assert_eq!(sheet.pixel(x5 + 10, y5 + 10), BACKGROUND);
    }

    #[test]
    fn hundred_large_tiles_are_downscaled() {
        let big = solid(512, [10, 20, 30]);
        let tiles: Vec<(String, &RgbImage)> =
            (0..100).map(|i| (format!("filter {i}"), &big)).collect();
        let sheet = grid_sheet(&tiles, None, None);
        let layout = grid_layout(&[(512, 512); 100], None, None);
        assert_eq!((layout.columns, layout.rows), (10, 10));
        assert_eq!(layout.cell_width, DEFAULT_MAX_TILE);
        assert_eq!(layout.text_scale, 2);
        let label_h = 2 * GLYPH + 6;
        assert_eq!(sheet.width, MARGIN + 10 * (256 + MARGIN));
        assert_eq!(sheet.height, MARGIN + 10 * (256 + label_h + MARGIN));
        let (x, y) = layout.cell_origin(99);
        assert_eq!(sheet.pixel(x + 255, y + 255), [10, 20, 30]);

        // An explicit tile size and column count win over the defaults.
        let layout = grid_layout(&[(512, 512); 100], Some(25), Some(64));
        assert_eq!(
            (layout.columns, layout.rows, layout.cell_width),
            (25, 4, 64)
        );
    }

    #[test]
    fn label_is_drawn_in_strip() {
        let imgs = vec![solid(64, [0, 0, 255])];
        let sheet = grid_sheet(&labeled(&imgs), None, None);
        let layout = grid_layout(&[(64, 64)], None, None);
        let (x, y) = layout.cell_origin(0);
        let strip_y = y + layout.cell_height;
        let mut text_px = 0;
        let mut other = 0;
        for yy in strip_y..strip_y + layout.label_height {
            for xx in x..x + layout.cell_width {
                match sheet.pixel(xx, yy) {
                    LABEL_COLOR => text_px += 1,
                    LABEL_BACKGROUND => {}
                    _ => other += 1,
                }
            }
        }
        assert!(text_px > 30, "expected label pixels, found {text_px}");
        assert_eq!(other, 0, "strip holds only text and its background");
    }

    #[test]
    fn long_label_is_truncated_to_cell() {
        let imgs = [solid(40, [0, 0, 0]), solid(40, [0, 0, 0])];
        let tiles = vec![
            (
                "a label far too long to fit under a 40 px tile".to_string(),
                &imgs[0],
            ),
            ("x".to_string(), &imgs[1]),
        ];
        let sheet = grid_sheet(&tiles, None, None);
        let layout = grid_layout(&[(40, 40); 2], None, None);
        assert_eq!(layout.max_label_chars(), 5);
        // No text may spill into the margin between the two cells.
        let (x0, y0) = layout.cell_origin(0);
        let strip_y = y0 + layout.cell_height;
        for yy in strip_y..strip_y + layout.label_height {
            for xx in x0 + layout.cell_width..x0 + layout.cell_width + MARGIN {
                assert_eq!(sheet.pixel(xx, yy), BACKGROUND, "spill at {xx},{yy}");
            }
        }
    }

    #[test]
    fn mixed_sizes_and_empty_input() {
        let a = RgbImage::new(30, 10, [1, 2, 3]);
        let b = RgbImage::new(10, 20, [4, 5, 6]);
        let layout = grid_layout(&[(30, 10), (10, 20)], None, None);
        assert_eq!((layout.cell_width, layout.cell_height), (30, 20));
        let sheet = grid_sheet(&[("a".into(), &a), ("b".into(), &b)], None, None);
        assert_eq!((sheet.width, sheet.height), (layout.width, layout.height));
        // Narrow tile b is centered horizontally in its 30 px cell.
        let (bx, by) = layout.cell_origin(1);
        assert_eq!(sheet.pixel(bx + 10, by), [4, 5, 6]);
        assert_eq!(sheet.pixel(bx + 9, by), BACKGROUND);

        let empty = grid_sheet(&[], None, None);
        assert!(empty.width > 0 && empty.height > 0);
        assert!(empty.data.iter().all(|&v| v == BACKGROUND[0]));
    }

    #[test]
    fn non_square_tile_limit_keeps_aspect() {
        assert_eq!(scaled_size(512, 256, Some(128)), (128, 64));
        assert_eq!(scaled_size(100, 50, Some(128)), (100, 50));
        assert_eq!(scaled_size(1000, 1, Some(10)), (10, 1));
    }
}
