//! The photo side of `caricature(LAYER, PHOTO)`: what the layer sees in the photo, as one
//! vector (its activation averaged over positions).

use crate::{model_normalization, normalized};
use deepvis_engine::NodeId;
use deepvis_models::Model;

/// The photo at `path` (PNG/JPEG), resized to the model's native size, through the model to
/// `node`: the mean over positions of each channel.
pub fn photo_vector(model: &Model, node: NodeId, path: &str) -> Result<Vec<f32>, String> {
    let img = image::open(path)
        .map_err(|e| format!("cannot read the photo {path}: {e}"))?
        .to_rgb8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w == 0 || h == 0 {
        return Err(format!("the photo {path} is empty"));
    }
    let mut rgb = vec![0.0f32; 3 * h * w];
    for (x, y, p) in img.enumerate_pixels() {
        for c in 0..3 {
            rgb[(c * h + y as usize) * w + x as usize] = p[c] as f32 / 255.0;
        }
    }
    let c = model.info.channels;
    let planes = match c {
        3 => rgb,
        1 => (0..h * w)
            .map(|i| (rgb[i] + rgb[h * w + i] + rgb[2 * h * w + i]) / 3.0)
            .collect(),
        _ => {
            return Err(format!(
                "caricature needs a model with 1 or 3 input channels, not {c}"
            ))
        }
    };
    let (nh, nw) = model.info.native_size;
    let x = crate::score::resize_like_torch(&planes, c, h, w, nh, nw);
    let run = || -> Result<Vec<f32>, crate::RenderError> {
        let norm = model_normalization(model)?;
        let x = normalized(&x, [1, c, nh, nw], &norm)?;
        let trace = deepvis_engine::on_pool(|| model.graph.forward(x, node))?;
        let t = trace.output();
        let s = t.shape();
        let plane: usize = s[2..].iter().product();
        Ok(t.data()
            .chunks(plane.max(1))
            .map(|ch| (ch.iter().map(|&v| v as f64).sum::<f64>() / plane.max(1) as f64) as f32)
            .collect())
    };
    run().map_err(|e| e.to_string())
}
