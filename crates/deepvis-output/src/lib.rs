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
mod manifest;
mod resize;

pub use atomic::write_atomic;
pub use error::OutputError;
pub use gallery::{esc as html_escape, render_gallery, write_gallery, GALLERY_FILE};
pub use grid::{grid_layout, grid_sheet, GridLayout, DEFAULT_MAX_TILE, SMALL_SHEET};
pub use image_io::{load_rgb, RgbImage};
pub use manifest::{FilterRecord, LayerRun, Manifest, MANIFEST_FILE};
pub use resize::{resize_area_planar, resize_bilinear_planar};
