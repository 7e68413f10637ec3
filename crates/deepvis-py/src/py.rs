//! Conversions between Python and [`crate::ops`]: arrays travel as float32 bytes plus a
//! shape (the Python side wraps them in numpy without another copy), failures become the
//! exceptions of `deepvis._errors`.

use crate::job::{Failure, Job, Kind, Output};
use crate::ops;
use deepvis_models::source::Source;
use deepvis_models::Model;
use deepvis_render::options::{
    parse_preset, preset_name, OptimizerChoice, RenderOptions, TransformsChoice,
};
use deepvis_render::render::DreamSettings;
use deepvis_render::ParamKind;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The exception of `deepvis._errors` for a failure, carrying its one-line message.
fn to_py(f: Failure) -> PyErr {
    Python::attach(|py| {
        let name = match f.kind {
            Kind::Value => "InvalidArgument",
            Kind::NotFound => "NotFound",
            Kind::Other => "Error",
            Kind::Cancelled => "Interrupted",
        };
        match py
            .import("deepvis._errors")
            .and_then(|m| m.getattr(name))
            .and_then(|c| c.call1((f.message.clone(),)))
        {
            Ok(e) => PyErr::from_value(e),
            Err(e) => e,
        }
    })
}

fn f32s(b: &[u8]) -> Result<Vec<f32>, Failure> {
    if b.len() % 4 != 0 {
        return Err(ops::value("float32 data must be a multiple of 4 bytes"));
    }
    Ok(b.chunks_exact(4)
        .map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

fn bytes_of(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_ne_bytes()).collect()
}

fn array<'py>(py: Python<'py>, shape: &[usize], data: &[f32]) -> PyResult<Bound<'py, PyAny>> {
    let b = PyBytes::new(py, &bytes_of(data));
    Ok((shape.to_vec(), b).into_pyobject(py)?.into_any())
}

fn output<'py>(py: Python<'py>, out: &Output) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (name, a) in &out.arrays {
        d.set_item(name, array(py, &a.shape, &a.data)?)?;
    }
    Ok(d)
}

/// An ONNX model lowered at an input size.
type SizedModel = ((usize, usize), Arc<Model>);

/// A loaded model. ONNX models with a free input size are lowered again for other sizes.
#[pyclass(frozen, name = "Model", module = "deepvis._native")]
pub struct PyModel {
    source: Source,
    model: Arc<Model>,
    loaded_at: Option<(usize, usize)>,
    other_sizes: Mutex<Vec<SizedModel>>,
    #[pyo3(get)]
    weights: String,
    #[pyo3(get)]
    notes: Vec<String>,
}

impl PyModel {
    /// The model for input `size`: itself, or (ONNX) the same file lowered at that size.
    fn at(&self, py: Python<'_>, size: Option<(usize, usize)>) -> PyResult<Arc<Model>> {
        let Some(size) = size else {
            return Ok(self.model.clone());
        };
        let onnx = deepvis_models::source::is_onnx_path(&self.source.model);
        if !onnx || size == self.model.info.native_size || Some(size) == self.loaded_at {
            return Ok(self.model.clone());
        }
        let mut cache = self.other_sizes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, m)) = cache.iter().find(|(s, _)| *s == size) {
            return Ok(m.clone());
        }
        let source = self.source.clone();
        let loaded = py
            .detach(move || ops::load(&source, Some(size), &mut Vec::new()))
            .map_err(to_py)?;
        let m = Arc::new(loaded.model);
        cache.push((size, m.clone()));
        Ok(m)
    }
}

#[pymethods]
impl PyModel {
    /// The model's name (zoo name, or the ONNX file's).
    #[getter]
    fn name(&self) -> String {
        self.model.info.name.to_string()
    }

    /// What was asked for: a zoo name or the ONNX file's path.
    #[getter]
    fn source(&self) -> String {
        self.source.model.clone()
    }

    /// Input channels (3 for RGB).
    #[getter]
    fn channels(&self) -> usize {
        self.model.info.channels
    }

    /// (height, width) the model was made for.
    #[getter]
    fn native_size(&self) -> (usize, usize) {
        self.model.info.native_size
    }

    /// Per-channel (mean, std) applied to images in [0, 1].
    #[getter]
    fn normalization(&self) -> PyResult<(Vec<f32>, Vec<f32>)> {
        let n = deepvis_render::model_normalization(&self.model)
            .map_err(|e| to_py(ops::render_failure(e)))?;
        Ok((n.mean.to_vec(), n.std.to_vec()))
    }

    /// Every addressable layer at input `size`: (name, aliases, op, shape, receptive field).
    #[pyo3(signature = (size=None))]
    #[allow(clippy::type_complexity)]
    fn layers(
        &self,
        py: Python<'_>,
        size: Option<(usize, usize)>,
    ) -> PyResult<Vec<(String, Vec<String>, String, Vec<usize>, Option<usize>)>> {
        let model = self.at(py, size)?;
        let hw = size.unwrap_or(model.info.native_size);
        let layers = model
            .layers_at(hw)
            .map_err(|e| to_py(ops::model_failure(e)))?;
        Ok(layers
            .into_iter()
            .map(|l| (l.name, l.aliases, l.op, l.shape, l.receptive_field))
            .collect())
    }

    /// (canonical name, channels) of a layer at input `size`.
    #[pyo3(signature = (layer, size=None))]
    fn resolve(
        &self,
        py: Python<'_>,
        layer: &str,
        size: Option<(usize, usize)>,
    ) -> PyResult<(String, usize)> {
        let model = self.at(py, size)?;
        let hw = size.unwrap_or(model.info.native_size);
        ops::resolve_layer(&model, layer, hw).map_err(to_py)
    }
}

/// Loads a zoo model (bundled, a weight file, or downloaded) or an ONNX file.
#[pyfunction]
#[pyo3(signature = (model, weights=None, offline=false, cache_dir=None, mean=None, std=None,
                    range=None, size=None, random_weights=false))]
#[allow(clippy::too_many_arguments)]
fn load(
    py: Python<'_>,
    model: String,
    weights: Option<PathBuf>,
    offline: bool,
    cache_dir: Option<PathBuf>,
    mean: Option<Vec<f32>>,
    std: Option<Vec<f32>>,
    range: Option<String>,
    size: Option<(usize, usize)>,
    random_weights: bool,
) -> PyResult<PyModel> {
    if let Some(s) = size {
        deepvis_render::options::check_size(s, &format!("{}x{}", s.0, s.1))
            .map_err(|m| to_py(ops::value(m)))?;
    }
    let source = Source {
        model,
        weights,
        offline,
        cache_dir,
        random_weights,
        mean,
        std,
        range,
    };
    let src = source.clone();
    let (loaded, notes) = py
        .detach(move || {
            let mut notes = Vec::new();
            ops::load(&src, size, &mut notes).map(|l| (l, notes))
        })
        .map_err(to_py)?;
    Ok(PyModel {
        source,
        model: Arc::new(loaded.model),
        loaded_at: size,
        other_sizes: Mutex::new(Vec::new()),
        weights: loaded.weights_label,
        notes,
    })
}

/// A preset and its overridden parts (the CLI's render flags).
#[pyclass(frozen, name = "Options", module = "deepvis._native")]
pub struct PyOptions {
    inner: RenderOptions,
}

#[pymethods]
impl PyOptions {
    #[new]
    #[pyo3(signature = (preset="default", size=None, steps=None, step_size=None, param=None,
                        transforms=None, optimizer=None, lr=None, octaves=None, l2=None,
                        tv=None, blur=None, clip_norm=None, clip_contribution=None,
                        budget=None, frames=0))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        preset: &str,
        size: Option<(usize, usize)>,
        steps: Option<usize>,
        step_size: Option<f32>,
        param: Option<&str>,
        transforms: Option<&str>,
        optimizer: Option<&str>,
        lr: Option<f32>,
        octaves: Option<usize>,
        l2: Option<f32>,
        tv: Option<f32>,
        blur: Option<String>,
        clip_norm: Option<String>,
        clip_contribution: Option<String>,
        budget: Option<f64>,
        frames: usize,
    ) -> PyResult<Self> {
        let bad = |what: &str, v: &str, choices: &str| {
            to_py(ops::value(format!(
                "unknown {what} '{v}'; choose {choices}"
            )))
        };
        let inner = RenderOptions {
            preset: parse_preset(preset).map_err(|m| to_py(ops::value(m)))?,
            size,
            steps,
            step_size,
            param: param
                .map(|p| match p {
                    "pixel" => Ok(ParamKind::Pixel),
                    "fourier" => Ok(ParamKind::FOURIER),
                    "maco" => Ok(ParamKind::Maco),
                    o => Err(bad("param", o, "pixel, fourier or maco")),
                })
                .transpose()?,
            transforms: transforms
                .map(|t| match t {
                    "none" => Ok(TransformsChoice::None),
                    "lucid" => Ok(TransformsChoice::Lucid),
                    o => Err(bad("transforms", o, "none or lucid")),
                })
                .transpose()?,
            optimizer: optimizer
                .map(|t| match t {
                    "adam" => Ok(OptimizerChoice::Adam),
                    "ascent" => Ok(OptimizerChoice::Ascent),
                    o => Err(bad("optimizer", o, "adam or ascent")),
                })
                .transpose()?,
            lr,
            octaves,
            l2,
            tv,
            blur,
            clip_norm,
            clip_contribution,
            budget,
            frames,
        };
        if let Some(s) = size {
            deepvis_render::options::check_size(s, &format!("{}x{}", s.0, s.1))
                .map_err(|m| to_py(ops::value(m)))?;
        }
        inner.validate().map_err(|m| to_py(ops::value(m)))?;
        Ok(PyOptions { inner })
    }

    #[getter]
    fn preset(&self) -> &'static str {
        preset_name(self.inner.preset)
    }

    /// Total optimization steps of one render at `size` (all octaves).
    fn total_steps(&self, size: (usize, usize)) -> PyResult<usize> {
        Ok(self
            .inner
            .settings(0, size)
            .map_err(|m| to_py(ops::value(m)))?
            .total_steps())
    }

    /// The method in words (the manifest's `method`).
    fn describe(&self, size: (usize, usize)) -> PyResult<String> {
        Ok(self
            .inner
            .settings(0, size)
            .map_err(|m| to_py(ops::value(m)))?
            .describe())
    }
}

/// A render running on its own thread.
#[pyclass(frozen, name = "Job", module = "deepvis._native")]
pub struct PyJob {
    job: Job,
    /// What the caller needs besides the arrays (the layer's canonical name for filters).
    #[pyo3(get)]
    label: String,
}

#[pymethods]
impl PyJob {
    /// Waits up to `timeout` seconds with the GIL released; True once finished.
    fn wait(&self, py: Python<'_>, timeout: f64) -> bool {
        let t = Duration::from_secs_f64(timeout.clamp(0.0, 3600.0));
        py.detach(|| self.job.wait(t))
    }

    /// (steps done, steps in all).
    fn progress(&self) -> (usize, usize) {
        self.job.progress()
    }

    /// Asks the render to stop after its current step.
    fn cancel(&self) {
        self.job.cancel()
    }

    /// The arrays by name, as (shape, float32 bytes); raises the job's error.
    fn result<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        match self.job.take() {
            Some(Ok(out)) => output(py, &out),
            Some(Err(f)) => Err(to_py(f)),
            None => Err(to_py(Failure::new(
                Kind::Other,
                "the job has not finished, or its result was already taken",
            ))),
        }
    }
}

fn init_arg(
    init: Option<(Bound<'_, PyBytes>, [usize; 4])>,
) -> PyResult<Option<(Vec<f32>, [usize; 4])>> {
    init.map(|(b, shape)| Ok((f32s(b.as_bytes()).map_err(to_py)?, shape)))
        .transpose()
}

/// Starts rendering `objective` for `batch` images.
#[pyfunction]
#[pyo3(signature = (model, objective, options, seed=0, batch=1, init=None))]
fn start_render(
    py: Python<'_>,
    model: &PyModel,
    objective: &str,
    options: &PyOptions,
    seed: u64,
    batch: usize,
    init: Option<(Bound<'_, PyBytes>, [usize; 4])>,
) -> PyResult<PyJob> {
    let m = model.at(py, options.inner.size)?;
    let init = init_arg(init)?;
    let job = ops::start_render(m, objective, batch, &options.inner, seed, init).map_err(to_py)?;
    Ok(PyJob {
        job,
        label: String::new(),
    })
}

/// Starts rendering `filters` of `layer`, one image each.
#[pyfunction]
#[pyo3(signature = (model, layer, filters, options, seed=0))]
fn start_filters(
    py: Python<'_>,
    model: &PyModel,
    layer: &str,
    filters: Vec<usize>,
    options: &PyOptions,
    seed: u64,
) -> PyResult<PyJob> {
    let m = model.at(py, options.inner.size)?;
    let (job, label) =
        ops::start_filters(m, &model.source.model, layer, filters, &options.inner, seed)
            .map_err(to_py)?;
    Ok(PyJob { job, label })
}

/// Starts DeepDream on a photo given as ([c, h, w] float32 bytes, shape).
#[pyfunction]
#[pyo3(signature = (model, objective, photo, octaves=4, octave_scale=1.4, steps_per_octave=10,
                    lr=0.02, seed=0))]
#[allow(clippy::too_many_arguments)]
fn start_dream(
    py: Python<'_>,
    model: &PyModel,
    objective: &str,
    photo: (Bound<'_, PyBytes>, [usize; 3]),
    octaves: usize,
    octave_scale: f32,
    steps_per_octave: usize,
    lr: f32,
    seed: u64,
) -> PyResult<PyJob> {
    let (b, [c, h, w]) = photo;
    let m = model.at(py, Some((h, w)))?;
    let data = f32s(b.as_bytes()).map_err(to_py)?;
    if data.len() != c * h * w {
        return Err(to_py(ops::value(
            "the photo's data does not match its shape",
        )));
    }
    let settings = DreamSettings {
        octaves,
        octave_scale,
        steps_per_octave,
        lr,
        seed,
        ..DreamSettings::default()
    };
    let job = ops::start_dream(m, objective, (data, [c, h, w]), settings).map_err(to_py)?;
    Ok(PyJob {
        job,
        label: String::new(),
    })
}

/// A layer's activation (and with `channel` the input gradient of its mean) for a normalized
/// input tensor ([n, c, h, w] float32 bytes, shape), or for an image file resized to `size`.
#[pyfunction]
#[pyo3(signature = (model, layer, input=None, image=None, size=None, channel=None))]
fn probe<'py>(
    py: Python<'py>,
    model: &PyModel,
    layer: &str,
    input: Option<(Bound<'py, PyBytes>, [usize; 4])>,
    image: Option<PathBuf>,
    size: Option<(usize, usize)>,
    channel: Option<usize>,
) -> PyResult<Bound<'py, PyDict>> {
    let out = match (input, image) {
        (Some((b, shape)), None) => {
            let m = model.at(py, Some((shape[2], shape[3])))?;
            let data = f32s(b.as_bytes()).map_err(to_py)?;
            if data.len() != shape.iter().product::<usize>() {
                return Err(to_py(ops::value(
                    "the input's data does not match its shape",
                )));
            }
            let layer = layer.to_string();
            py.detach(move || ops::probe_tensor(&m, &layer, (data, shape), channel))
        }
        (None, Some(path)) => {
            let m = model.at(py, size)?;
            let layer = layer.to_string();
            py.detach(move || ops::probe_image(&m, &layer, &path, size, channel))
        }
        _ => Err(ops::value("pass image=FILE or input=ARRAY")),
    }
    .map_err(to_py)?;
    output(py, &out)
}

/// An image file as ([3, h, w] float32 bytes in [0, 1], (3, h, w)).
#[pyfunction]
fn read_image<'py>(py: Python<'py>, path: PathBuf) -> PyResult<Bound<'py, PyAny>> {
    let (data, h, w) = py.detach(move || ops::read_image(&path)).map_err(to_py)?;
    array(py, &[3, h, w], &data)
}

/// PNG bytes of a [c, h, w] image.
#[pyfunction]
fn encode_png<'py>(
    py: Python<'py>,
    data: Bound<'py, PyBytes>,
    shape: [usize; 3],
) -> PyResult<Bound<'py, PyBytes>> {
    let v = f32s(data.as_bytes()).map_err(to_py)?;
    let png = ops::encode_png(&v, shape[0], shape[1], shape[2]).map_err(to_py)?;
    Ok(PyBytes::new(py, &png))
}

/// Saves a [c, h, w] image as PNG (atomically); returns the .npy written beside it, if any.
#[pyfunction]
fn save_image(
    path: PathBuf,
    data: Bound<'_, PyBytes>,
    shape: [usize; 3],
) -> PyResult<Option<PathBuf>> {
    let v = f32s(data.as_bytes()).map_err(to_py)?;
    ops::save_image(&path, &v, shape[0], shape[1], shape[2]).map_err(to_py)
}

/// A labeled grid sheet of [n, c, h, w] images: ([3, H, W] float32 bytes, (3, H, W)).
#[pyfunction]
fn grid<'py>(
    py: Python<'py>,
    data: Bound<'py, PyBytes>,
    shape: [usize; 4],
    labels: Vec<String>,
) -> PyResult<Bound<'py, PyAny>> {
    let v = f32s(data.as_bytes()).map_err(to_py)?;
    let (sheet, h, w) = ops::grid(&v, shape, &labels).map_err(to_py)?;
    array(py, &[3, h, w], &sheet)
}

/// Sets the convolutions' arithmetic for `model` ("auto", "f32" or "bf16"); returns a note
/// where it falls back to float32.
#[pyfunction]
fn set_precision(py: Python<'_>, precision: &str, model: &PyModel) -> PyResult<Option<String>> {
    let m = model.at(py, None)?;
    py.detach(|| ops::set_precision(precision, &m))
        .map_err(to_py)
}

/// The zoo: (name, description, bundled).
#[pyfunction]
fn models() -> Vec<(String, String, bool)> {
    deepvis_models::ZOO
        .iter()
        .map(|m| (m.name.to_string(), m.description.to_string(), m.bundled))
        .collect()
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyModel>()?;
    m.add_class::<PyOptions>()?;
    m.add_class::<PyJob>()?;
    m.add_function(wrap_pyfunction!(load, m)?)?;
    m.add_function(wrap_pyfunction!(start_render, m)?)?;
    m.add_function(wrap_pyfunction!(start_filters, m)?)?;
    m.add_function(wrap_pyfunction!(start_dream, m)?)?;
    m.add_function(wrap_pyfunction!(probe, m)?)?;
    m.add_function(wrap_pyfunction!(read_image, m)?)?;
    m.add_function(wrap_pyfunction!(encode_png, m)?)?;
    m.add_function(wrap_pyfunction!(save_image, m)?)?;
    m.add_function(wrap_pyfunction!(grid, m)?)?;
    m.add_function(wrap_pyfunction!(set_precision, m)?)?;
    m.add_function(wrap_pyfunction!(models, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
