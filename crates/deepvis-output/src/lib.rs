//! Everything deepvis writes to disk: PNG images, labeled grid sheets, the
//! JSON run manifest (also used to resume runs) and a static HTML gallery,
//! plus loading and resizing of input images.
//!
//! All writes go through [`write_atomic`], so an interrupted run never
//! leaves a half-written file behind. This crate deliberately depends on no
//! other deepvis crate.

mod atomic;
mod error;
mod font;
mod gallery;
mod grid;
mod image_io;
mod lock;
mod manifest;
mod npy;
mod resize;
mod site;

pub use atomic::{ensure_writable_dir, write_atomic};
pub use error::OutputError;
pub use gallery::{esc as html_escape, render_gallery, write_gallery, GALLERY_FILE};
pub use grid::{grid_layout, grid_sheet, GridLayout, DEFAULT_MAX_TILE, SMALL_SHEET};
pub use image_io::{decode_rgb, encode_gray_png, load_rgb, save_gif, save_planar_image, RgbImage};
pub use lock::FileLock;
pub use manifest::{
    DiversityRecord, FilterRecord, InputRecord, LayerRun, Manifest, ScoreRecord, LOCK_FILE,
    MANIFEST_FILE, PARTS_DIR,
};
pub use npy::{encode_npy_f32, parse_npy_f32, write_npy_f32};
pub use resize::{resize_area_planar, resize_bilinear_planar};
pub use site::{score_text, write_site, Example, LayerExamples, UnitExamples, EXAMPLES_FILE};

/// One safe path component from a model, layer or objective name: characters other than
/// ASCII letters, digits, `.`, `_` and `-` become `_`, and `.`/`..`/empty become `_`, so a name
/// such as an ONNX value `/layer3/layer3.0/relu_1/Relu_output_0` can never leave the output
/// folder. Names that are already plain (`features.28`, `_blocks.8`) are unchanged.
pub fn path_component(text: &str) -> String {
    let s: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(120)
        .collect();
    if s.is_empty() || s.chars().all(|c| c == '.') {
        "_".repeat(s.len().max(1))
    } else {
        s
    }
}

#[cfg(test)]
mod path_component_tests {
    use super::path_component;

    #[test]
    fn names_stay_inside_the_folder() {
        assert_eq!(path_component("features.28"), "features.28");
        assert_eq!(path_component("_blocks.8"), "_blocks.8");
        assert_eq!(
            path_component("/layer3/layer3.0/relu_1/Relu_output_0"),
            "_layer3_layer3.0_relu_1_Relu_output_0"
        );
        assert_eq!(path_component(".."), "__");
        assert_eq!(path_component("."), "_");
        assert_eq!(path_component(""), "_");
        assert_eq!(path_component("a/../b"), "a_.._b");
        assert_eq!(path_component("C:\\x"), "C__x");
    }
}
