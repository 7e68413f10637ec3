//! The optimization loop: parametrization → transforms → network → objective, and back.

use crate::objective::{BatchObjective, Objective};
use crate::optim::{Optimizer, OptimizerKind};
use crate::param::{Param, ParamKind, Pixel};
use crate::transform::{lucid_standard_for, resize, PadMode, Pipeline, Regularizer, Transform};
use crate::{denormalize_grad, model_normalization, normalized, RenderError};
use deepvis_models::Model;
use deepvis_models::Normalization;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::sync::atomic::{AtomicBool, Ordering};

/// One resolution of a multi-scale schedule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Octave {
    /// Image height in pixels.
    pub height: usize,
    /// Image width in pixels.
    pub width: usize,
    pub steps: usize,
}

impl Octave {
    /// A `size`×`size` octave.
    pub fn square(size: usize, steps: usize) -> Octave {
        Octave::new((size, size), steps)
    }

    /// An `h`×`w` octave.
    pub fn new((height, width): (usize, usize), steps: usize) -> Octave {
        Octave {
            height,
            width,
            steps,
        }
    }

    /// (height, width).
    pub fn hw(&self) -> (usize, usize) {
        (self.height, self.width)
    }

    /// `224px` for a square octave, `48x192px` (H×W) otherwise.
    fn describe(&self) -> String {
        format!(
            "{}px×{}",
            deepvis_models::size_text(self.height, self.width),
            self.steps
        )
    }
}

/// Everything that decides a render besides the model and the objective.
#[derive(Clone, Debug, PartialEq)]
pub struct RenderSettings {
    /// Resolutions from first to last; the parametrization is upsampled between them. The last
    /// one is the output size.
    pub octaves: Vec<Octave>,
    pub param: ParamKind,
    /// Transforms, as written for [`RenderSettings::transform_reference`]-pixel images.
    pub transforms: Vec<Transform>,
    /// If set, pads, jitters and crops are rescaled by `octave size / this` at each octave (so
    /// Lucid's 128 px numbers fit any size). None: used as written.
    pub transform_reference: Option<usize>,
    pub optimizer: OptimizerKind,
    pub regularizers: Vec<Regularizer>,
    pub seed: u64,
    /// Steps that adapt to the robust score (None: exactly the octaves' steps).
    pub adaptive: Option<Adaptive>,
    /// Intermediate images to keep ([`RenderOutput::frames`]); 0: none.
    pub frames: usize,
}

/// Adaptive steps: the last octave runs at least `min_steps`, then every `check_every` steps
/// the robust score ([`crate::score`], `views` views, at the image's size) of each image is
/// taken; the render stops when no image gained more than `min_gain` (relative) since its best,
/// after `max_steps`, or when `budget` seconds per image are spent. Each image ends as its
/// best-scoring check.
#[derive(Clone, Debug, PartialEq)]
pub struct Adaptive {
    pub min_steps: usize,
    pub max_steps: usize,
    pub check_every: usize,
    pub views: usize,
    pub min_gain: f32,
    /// Wall-clock seconds per image (a batch of n gets n times this).
    pub budget: Option<f64>,
}

impl Adaptive {
    /// The default preset's steps: they adapt to the score alone, so that a seed reproduces
    /// an image on any machine under any load; at most [`DEFAULT_MAX_STEPS`] in the last
    /// octave. Measured for the default preset (BENCHMARKS.md, issue 15): a shallow
    /// EfficientNet-Lite0 layer still climbs at 300 steps where deep ones level off by ~100.
    pub fn reproducible() -> Adaptive {
        Adaptive {
            min_steps: 64,
            max_steps: DEFAULT_MAX_STEPS,
            check_every: 32,
            views: 8,
            min_gain: 0.01,
            budget: None,
        }
    }

    /// Adaptive steps that also stop when `budget` seconds of wall time per image are spent
    /// (then up to 1024 steps): a run bounded in time, whose step counts, and so its images,
    /// depend on the machine and its load.
    pub fn with_budget(budget: f64) -> Adaptive {
        Adaptive {
            max_steps: 1024,
            budget: Some(budget),
            ..Adaptive::reproducible()
        }
    }
}

/// The most steps the default preset's last octave takes without a time budget. Measured on
/// 40 channels of four trained models (BENCHMARKS.md, issue 15): capped at 256, deepvis beat
/// Lucent's defaults on 38 at 27 % of Lucent's time; at 128, on the same 38 at 17 %.
pub const DEFAULT_MAX_STEPS: usize = 128;

/// Seed of the views the adaptive checks score with: other views than a final score's
/// (seed 0), so that stopping does not select on the views the result is judged by.
const CHECK_SEED: u64 = 0xC0FF_EE15;

impl RenderSettings {
    /// The output's larger side (its side, for square images).
    pub fn size(&self) -> usize {
        let (h, w) = self.size_hw();
        h.max(w)
    }

    /// The output's (height, width): the last octave's.
    pub fn size_hw(&self) -> (usize, usize) {
        self.octaves.last().map_or((0, 0), Octave::hw)
    }

    pub fn total_steps(&self) -> usize {
        self.octaves.iter().map(|o| o.steps).sum()
    }

    /// The most steps a render can take (what a progress bar counts): with adaptive steps, the
    /// last octave's at their most.
    pub fn most_steps(&self) -> usize {
        match &self.adaptive {
            Some(a) => {
                let last = self.octaves.last().map_or(0, |o| o.steps);
                self.total_steps() - last + a.max_steps.max(a.min_steps)
            }
            None => self.total_steps(),
        }
    }

    /// A one-line description for logs.
    pub fn describe(&self) -> String {
        let mut oct: Vec<String> = self.octaves.iter().map(Octave::describe).collect();
        if let (Some(a), Some(last)) = (&self.adaptive, self.octaves.last()) {
            let budget = a
                .budget
                .map_or(String::new(), |b| format!(", budget {b}s/image"));
            *oct.last_mut().expect("an octave") = format!(
                "{}px×adaptive({}..{} by the robust score{budget})",
                deepvis_models::size_text(last.height, last.width),
                a.min_steps,
                a.max_steps
            );
        }
        let tr: Vec<String> = self.transforms.iter().map(|t| t.to_string()).collect();
        let reg: Vec<String> = self.regularizers.iter().map(|r| r.to_string()).collect();
        format!(
            "param {}, optimizer {}, steps {}, transforms [{}], regularizers [{}]",
            self.param,
            self.optimizer,
            oct.join(" → "),
            tr.join(", "),
            reg.join(", ")
        )
    }
}

/// Named settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// The original tool's method: pixel parametrization, grey + uniform noise start, gradient
    /// ascent with the gradient normalized to unit RMS, no transforms, one resolution.
    Seed,
    /// The best quality per second found: Lucid's decorrelated Fourier parametrization, Lucid's
    /// standard transforms scaled to the image size, Adam lr 0.1, 96 steps at full size.
    /// Measured against Lucent's defaults by `scripts/quality_vs_lucent.py` (BENCHMARKS.md):
    /// a higher robust activation on 10 of 10 EfficientNet-Lite0 channels in under a fifth of
    /// the time. Three octaves (½, ¾, full) are faster per step but lost on early layers,
    /// whose small receptive fields are tuned to the scale of the final image.
    Default,
    /// Lucent's `render_vis` defaults: Fourier + decorrelation, standard transforms, Adam 0.05,
    /// 512 steps, one resolution.
    Lucid,
    /// MACO: phase-only Fourier parametrization with a fixed 1/f magnitude, standard transforms
    /// scaled to the size, Adam lr 0.3, 192 steps, one resolution.
    Maco,
}

impl Preset {
    pub const ALL: [Preset; 4] = [Preset::Seed, Preset::Default, Preset::Lucid, Preset::Maco];

    pub fn name(self) -> &'static str {
        match self {
            Preset::Seed => "seed",
            Preset::Default => "default",
            Preset::Lucid => "lucid",
            Preset::Maco => "maco",
        }
    }

    pub fn from_name(name: &str) -> Option<Preset> {
        Preset::ALL.into_iter().find(|p| p.name() == name)
    }

    /// Steps used when the user gives none.
    pub fn default_steps(self) -> usize {
        match self {
            Preset::Seed => 50,
            Preset::Default => 96,
            Preset::Lucid => 512,
            Preset::Maco => 192,
        }
    }

    /// The settings for `size`×`size` output and `steps` steps in all (None: the preset's).
    /// For the seed preset, `step_size` of the original tool (0–255 units) is 9 here; pass a
    /// different one through [`seed_settings`].
    pub fn settings(self, size: usize, steps: Option<usize>, seed: u64) -> RenderSettings {
        self.settings_hw((size, size), steps, seed)
    }

    /// [`Preset::settings`] for an output of (height, width).
    pub fn settings_hw(
        self,
        size: (usize, usize),
        steps: Option<usize>,
        seed: u64,
    ) -> RenderSettings {
        let steps = steps.unwrap_or(self.default_steps());
        match self {
            Preset::Seed => seed_settings_hw(size, steps, 9.0, seed),
            Preset::Default => RenderSettings {
                octaves: vec![Octave::new(size, steps)],
                param: ParamKind::FOURIER,
                transforms: crate::transform::lucid_standard(),
                transform_reference: Some(128),
                optimizer: OptimizerKind::adam(0.1),
                regularizers: Vec::new(),
                seed,
                adaptive: None,
                frames: 0,
            },
            Preset::Lucid => RenderSettings {
                octaves: vec![Octave::new(size, steps)],
                param: ParamKind::FOURIER,
                transforms: crate::transform::lucid_standard(),
                transform_reference: None,
                optimizer: OptimizerKind::adam(0.05),
                regularizers: Vec::new(),
                seed,
                adaptive: None,
                frames: 0,
            },
            Preset::Maco => RenderSettings {
                octaves: vec![Octave::new(size, steps)],
                param: ParamKind::Maco,
                transforms: crate::transform::lucid_standard(),
                transform_reference: Some(128),
                optimizer: OptimizerKind::adam(0.3),
                regularizers: Vec::new(),
                seed,
                adaptive: None,
                frames: 0,
            },
        }
    }
}

/// The default preset's schedule: half the steps at half the size, a quarter at three
/// quarters, the rest at full size (one octave for fewer than 8 steps or tiny images). Low
/// resolution steps are cheap and grow large, coherent structures; the later octaves add
/// detail.
pub fn default_octaves(size: usize, steps: usize) -> Vec<Octave> {
    default_octaves_hw((size, size), steps)
}

/// [`default_octaves`] for an output of (height, width): both sides scale alike, and the
/// shorter one decides whether the image is too small for octaves.
pub fn default_octaves_hw((h, w): (usize, usize), steps: usize) -> Vec<Octave> {
    let even = |v: usize| (v / 2) * 2;
    let half = (even(h / 2), even(w / 2));
    let three_q = (even(h * 3 / 4), even(w * 3 / 4));
    if steps < 8 || half.0.min(half.1) < 32 {
        return vec![Octave::new((h, w), steps)];
    }
    let (a, b) = (steps / 2, steps / 4);
    vec![
        Octave::new(half, a),
        Octave::new(three_q, b),
        Octave::new((h, w), steps - a - b),
    ]
}

/// The seed method as settings: pixel parametrization, no transforms, normalized ascent with
/// `step_size` in 0–255 units. Start it from [`seed_init`] to reproduce `ascend_channels`.
pub fn seed_settings(size: usize, steps: usize, step_size: f32, seed: u64) -> RenderSettings {
    seed_settings_hw((size, size), steps, step_size, seed)
}

/// [`seed_settings`] for an output of (height, width).
pub fn seed_settings_hw(
    size: (usize, usize),
    steps: usize,
    step_size: f32,
    seed: u64,
) -> RenderSettings {
    RenderSettings {
        octaves: vec![Octave::new(size, steps)],
        param: ParamKind::Pixel,
        transforms: Vec::new(),
        transform_reference: None,
        optimizer: OptimizerKind::Normalized {
            lr: step_size / 255.0,
        },
        regularizers: Vec::new(),
        seed,
        adaptive: None,
        frames: 0,
    }
}

/// The seed method's start images for `ids` (one per image; the channel numbers in
/// `ascend_channels`): grey with noise seeded by (seed, id). RGB, `size`×`size`.
pub fn seed_init(size: usize, seed: u64, ids: &[usize]) -> Vec<f32> {
    seed_init_shaped([3, size, size], seed, ids)
}

/// [`seed_init`] of `[c, h, w]` images.
pub fn seed_init_shaped(shape: [usize; 3], seed: u64, ids: &[usize]) -> Vec<f32> {
    ids.iter()
        .flat_map(|&id| crate::initial_image_shaped(shape, seed, id))
        .collect()
}

/// Where the parameters start.
#[derive(Clone, Debug, PartialEq)]
pub enum Init {
    /// The parametrization's seeded random start.
    Random,
    /// Fitted to these images (`[N, C, h, w]` at the first octave's size, in [0, 1]).
    Images(Vec<f32>),
}

/// What one step reports.
#[derive(Clone, Debug)]
pub struct Progress<'a> {
    /// Steps done so far (1-based), over all octaves.
    pub step: usize,
    pub total: usize,
    pub octave: usize,
    /// The octave's larger side.
    pub size: usize,
    /// Objective values of this step's (transformed) images.
    pub values: &'a [f32],
}

/// Set from a signal handler (Ctrl-C) to stop renders between steps; checked once per step,
/// outside the passes, so it costs nothing where it matters.
static STOP: AtomicBool = AtomicBool::new(false);

/// Asks every render in the process to stop before its next step (async-signal-safe: one
/// atomic store). The renders return [`RenderError::Interrupted`].
pub fn request_stop() {
    STOP.store(true, Ordering::Relaxed);
}

pub fn stop_requested() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// Lets renders run again after [`request_stop`].
pub fn clear_stop() {
    STOP.store(false, Ordering::Relaxed);
}

/// The result of [`render`].
#[derive(Clone, Debug)]
pub struct RenderOutput {
    /// `[N, channels, height, width]` in [0, 1].
    pub images: Vec<f32>,
    /// The larger side (the side of square images).
    pub size: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// Objective per image on the untransformed start images (first octave's size).
    pub initial: Vec<f32>,
    /// Objective per image on the untransformed final images.
    pub final_values: Vec<f32>,
    /// Per image, the step (1-based) at which its objective or gradient stopped being finite
    /// (NaN or infinite); such an image stopped changing there while the others went on.
    pub diverged: Vec<Option<usize>>,
    /// Steps that led to each image (with adaptive steps, to its best check).
    pub steps: Vec<usize>,
    /// Intermediate images (with `frames` > 0): (steps done, `[N, C, height, width]`), upsampled
    /// to the output size, evenly spaced, the last one the result.
    pub frames: Vec<(usize, Vec<f32>)>,
}

/// Evaluates the objective on untransformed images `[n, C, h, w]` (C: the model's input
/// channels).
pub fn evaluate(
    model: &Model,
    objective: &BatchObjective,
    images: &[f32],
    n: usize,
    h: usize,
    w: usize,
) -> Result<Vec<f32>, RenderError> {
    let norm = model_normalization(model)?;
    let x = normalized(images, [n, model.info.channels, h, w], &norm)?;
    deepvis_engine::on_pool(|| {
        let trace = objective.trace_values(&model.graph, x)?;
        Ok(objective.evaluate(&trace, n, false)?.0)
    })
}

/// Reusable state of the inner loop.
struct Stepper<'a> {
    model: &'a Model,
    objective: &'a BatchObjective,
    norm: Normalization,
    n: usize,
    image: Vec<f32>,
    image_grad: Vec<f32>,
    param_grad: Vec<f32>,
    penalty_values: Vec<f32>,
    penalty_grad: Vec<f32>,
}

impl<'a> Stepper<'a> {
    /// One forward/backward pass: objective values on the transformed images, the ascent
    /// gradient with respect to the untransformed images in `image_grad` (penalties subtracted)
    /// and with respect to the parameters in `param_grad`. The whole pass runs on a pool worker:
    /// one hand-off per step instead of one per op (see `on_pool`).
    fn pass(
        &mut self,
        param: &mut dyn Param,
        pipeline: &mut Pipeline,
        regularizers: &[Regularizer],
        rng: &mut ChaCha8Rng,
    ) -> Result<Vec<f32>, RenderError> {
        deepvis_engine::on_pool(|| self.pass_here(param, pipeline, regularizers, rng))
    }

    fn pass_here(
        &mut self,
        param: &mut dyn Param,
        pipeline: &mut Pipeline,
        regularizers: &[Regularizer],
        rng: &mut ChaCha8Rng,
    ) -> Result<Vec<f32>, RenderError> {
        let n = self.n;
        let c = param.channels();
        let (h, w) = param.size();
        self.image.resize(n * c * h * w, 0.0);
        param.forward(&mut self.image);
        let (th, tw) = pipeline.forward(&self.image, n, h, w, rng);
        let x = normalized(pipeline.output(), [n, c, th, tw], &self.norm)?;
        let trace = self.objective.trace(&self.model.graph, x)?;
        let (values, grads) = self.objective.evaluate(&trace, n, true)?;
        let seeds = grads.expect("asked for gradients").into_seeds();
        let mut g = self.model.graph.backward_multi(&trace, seeds)?;
        drop(trace);
        denormalize_grad(&mut g, &self.norm);
        self.image_grad.resize(n * c * h * w, 0.0);
        pipeline.backward(g.data(), &mut self.image_grad);
        if regularizers.iter().any(Regularizer::is_penalty) {
            let pg = &mut self.penalty_grad;
            pg.clear();
            pg.resize(self.image.len(), 0.0);
            self.penalty_values.clear();
            self.penalty_values.resize(n, 0.0);
            for r in regularizers {
                r.penalty(&self.image, n, h, w, &mut self.penalty_values, pg);
            }
            for (a, b) in self.image_grad.iter_mut().zip(pg.iter()) {
                *a -= b;
            }
        }
        self.param_grad.resize(param.params().len(), 0.0);
        param.backward(&self.image_grad, &mut self.param_grad);
        Ok(values)
    }
}

/// The transforms for an octave whose shorter side is `size`: Lucid's pixel numbers are for a
/// square image, and pads and jitters must stay in proportion to the side they eat into.
fn scaled_transforms(settings: &RenderSettings, size: usize) -> Vec<Transform> {
    let Some(reference) = settings.transform_reference else {
        return settings.transforms.clone();
    };
    let k = size as f32 / reference as f32;
    let px = |v: usize| ((v as f32 * k).round() as usize).max(1);
    settings
        .transforms
        .iter()
        .map(|t| match t {
            Transform::Pad { amount, mode } => Transform::Pad {
                amount: px(*amount),
                mode: *mode,
            },
            Transform::Jitter(d) => Transform::Jitter(px(*d)),
            Transform::Crop { height, width } => Transform::Crop {
                height: px(*height),
                width: px(*width),
            },
            other => other.clone(),
        })
        .collect()
}

/// Optimizes `n` images for `objective` (one for all images, or one per image).
///
/// Channels and neurons of capped activations are optimized through their input with the
/// gradient redirected at the cap ([`crate::saturate`]); every value reported is the
/// objective's own.
pub fn render(
    model: &Model,
    objective: &BatchObjective,
    n: usize,
    settings: &RenderSettings,
    init: Init,
    mut on_step: impl FnMut(&Progress),
) -> Result<RenderOutput, RenderError> {
    render_until(model, objective, n, settings, init, |p| {
        on_step(p);
        true
    })
}

/// [`render`] that stops with [`RenderError::Interrupted`] after a step where `on_step` returns
/// false (an interrupt from a front end).
pub fn render_until(
    model: &Model,
    objective: &BatchObjective,
    n: usize,
    settings: &RenderSettings,
    init: Init,
    mut on_step: impl FnMut(&Progress) -> bool,
) -> Result<RenderOutput, RenderError> {
    if n == 0
        || settings.octaves.is_empty()
        || settings.octaves.iter().any(|o| o.height.min(o.width) < 8)
    {
        return Err(RenderError::Invalid(
            "a render needs at least one image and octaves of at least 8 pixels".into(),
        ));
    }
    let started = std::time::Instant::now();
    let norm = model_normalization(model)?;
    let c = model.info.channels;
    if let Some(len) = objective.image_count() {
        if len != n {
            return Err(RenderError::Invalid(format!(
                "{len} objectives for a batch of {n} images"
            )));
        }
    }
    let optimized = match objective {
        BatchObjective::Shared(o) => BatchObjective::Shared(o.uncapped(&model.graph)),
        BatchObjective::PerImage(v) => {
            BatchObjective::PerImage(v.iter().map(|o| o.uncapped(&model.graph)).collect())
        }
    };
    let mut rng = ChaCha8Rng::seed_from_u64(settings.seed);
    let (fh, fw) = settings.octaves[0].hw();
    let mut param = settings.param.build_shaped([n, c, fh, fw], &mut rng);
    if let Init::Images(images) = &init {
        if images.len() != n * c * fh * fw {
            return Err(RenderError::Invalid(format!(
                "{} start values for {n} images of {c}×{fh}×{fw}",
                images.len()
            )));
        }
        param.set_images(images, fh, fw);
    }
    let mut stepper = Stepper {
        model,
        objective: &optimized,
        norm,
        n,
        image: vec![0.0; n * c * fh * fw],
        image_grad: Vec::new(),
        param_grad: Vec::new(),
        penalty_values: Vec::new(),
        penalty_grad: Vec::new(),
    };
    param.forward(&mut stepper.image);
    // Without transforms the first step's forward pass is on the start images themselves, so
    // its values are the initial objective (as in `ascend_channels`): one forward pass less.
    // (Not where the optimized objective differs from the reported one.)
    let first_step_is_start = settings.octaves[0].steps > 0
        && scaled_transforms(settings, fh.min(fw)).is_empty()
        && (0..n).all(|b| objective.of(b) == optimized.of(b));
    let mut initial = if first_step_is_start {
        Vec::new()
    } else {
        evaluate(model, objective, &stepper.image, n, fh, fw)?
    };
    let mut optimizer = Optimizer::new(settings.optimizer);
    let last = settings.octaves.len() - 1;
    let adaptive = settings.adaptive.as_ref();
    let total = settings.most_steps();
    let mut frames = Frames::new(settings.frames);
    let mut done = 0;
    let mut diverged = vec![None; n];
    let mut steps_taken = vec![0; n];
    for (oi, octave) in settings.octaves.iter().enumerate() {
        let (oh, ow) = octave.hw();
        if param.size() != (oh, ow) {
            let (h, w) = param.size();
            param.forward(&mut stepper.image);
            let up = resize(&stepper.image, n, h, w, oh, ow);
            param.set_images(&up, oh, ow);
            optimizer.reset();
        }
        let mut pipeline = Pipeline::new(scaled_transforms(settings, oh.min(ow)));
        let adaptive = adaptive.filter(|_| oi == last);
        let steps = adaptive.map_or(octave.steps, |a| a.max_steps.max(a.min_steps));
        let mut best: Option<Best> = None;
        for step in 0..steps {
            if stop_requested() {
                return Err(RenderError::Interrupted);
            }
            let values = stepper.pass(
                param.as_mut(),
                &mut pipeline,
                &settings.regularizers,
                &mut rng,
            )?;
            if done == 0 && first_step_is_start {
                initial.clone_from(&values);
            }
            let per = param.per_image();
            // An image whose objective or gradient is no longer finite stops here: its gradient
            // is zeroed (before the optimizer's moments can take in a NaN), so it keeps its last
            // finite state while the others of the batch go on.
            for (b, (value, grad)) in values
                .iter()
                .zip(stepper.param_grad.chunks_mut(per))
                .enumerate()
            {
                if diverged[b].is_none()
                    && (!value.is_finite() || grad.iter().any(|g| !g.is_finite()))
                {
                    diverged[b] = Some(done + 1);
                }
                if diverged[b].is_some() {
                    grad.fill(0.0);
                }
            }
            optimizer.step(param.params_mut(), &stepper.param_grad, per);
            param.project();
            apply_image_ops(
                &settings.regularizers,
                step,
                param.as_mut(),
                &mut stepper.image,
                &stepper.image_grad,
                n,
            );
            done += 1;
            if !on_step(&Progress {
                step: done,
                total,
                octave: oi,
                size: oh.max(ow),
                values: &values,
            }) {
                return Err(RenderError::Interrupted);
            }
            if frames.due(done) {
                param.forward(&mut stepper.image);
                frames.keep(done, &stepper.image, n, (oh, ow), settings.size_hw());
            }
            if let Some(a) = adaptive {
                let out_of_time = a
                    .budget
                    .is_some_and(|b| started.elapsed().as_secs_f64() >= b * n as f64);
                let check =
                    step + 1 >= a.min_steps && (step + 1 - a.min_steps) % a.check_every.max(1) == 0;
                if check || out_of_time || step + 1 == steps {
                    param.forward(&mut stepper.image);
                    let scores = crate::score::robust_scores(
                        model,
                        objective,
                        &stepper.image,
                        n,
                        (oh, ow),
                        &crate::score::ScoreSettings {
                            views: a.views,
                            seed: CHECK_SEED,
                            size: Some((oh, ow)),
                        },
                    )?;
                    let b = best.get_or_insert_with(|| Best::new(n));
                    let improved =
                        b.update(&scores, param.params(), param.per_image(), done, a.min_gain);
                    if out_of_time || !improved {
                        break;
                    }
                }
            }
        }
        match best {
            Some(b) => {
                let per = param.per_image();
                b.restore(param.params_mut(), per);
                steps_taken.clone_from(&b.step);
            }
            None => steps_taken.iter_mut().for_each(|s| *s = done),
        }
    }
    let (h, w) = param.size();
    stepper.image.resize(n * c * h * w, 0.0);
    param.forward(&mut stepper.image);
    let final_values = evaluate(model, objective, &stepper.image, n, h, w)?;
    if settings.frames > 0 {
        frames.finish(done, &stepper.image);
    }
    Ok(RenderOutput {
        images: std::mem::take(&mut stepper.image),
        size: h.max(w),
        channels: c,
        height: h,
        width: w,
        initial,
        final_values,
        diverged,
        steps: steps_taken,
        frames: frames.into_frames(settings.frames),
    })
}

/// Each image's best-scoring parameters so far (adaptive steps).
struct Best {
    score: Vec<f32>,
    params: Vec<f32>,
    step: Vec<usize>,
}

impl Best {
    fn new(n: usize) -> Best {
        Best {
            score: vec![f32::NEG_INFINITY; n],
            params: Vec::new(),
            step: vec![0; n],
        }
    }

    /// Keeps the images that scored better; true if any gained more than `min_gain` of its
    /// best (all do at the first check).
    fn update(
        &mut self,
        scores: &[f32],
        params: &[f32],
        per: usize,
        step: usize,
        min_gain: f32,
    ) -> bool {
        if self.params.is_empty() {
            self.params = params.to_vec();
        }
        let mut gained = false;
        for (b, &s) in scores.iter().enumerate() {
            let old = self.score[b];
            if !s.is_finite() || s <= old {
                continue;
            }
            gained |= !old.is_finite() || s - old > min_gain * old.abs().max(1e-6);
            self.score[b] = s;
            self.step[b] = step;
            self.params[b * per..(b + 1) * per].copy_from_slice(&params[b * per..(b + 1) * per]);
        }
        gained
    }

    fn restore(&self, params: &mut [f32], per: usize) {
        for b in 0..self.score.len() {
            if self.score[b].is_finite() {
                params[b * per..(b + 1) * per]
                    .copy_from_slice(&self.params[b * per..(b + 1) * per]);
            }
        }
    }
}

/// Intermediate images at evenly spaced steps: one every `every` steps, and when twice the
/// asked number have gathered, every other one is dropped and the spacing doubles, so any
/// number of steps (adaptive ones are not known ahead) ends with between N and 2N frames.
struct Frames {
    want: usize,
    every: usize,
    kept: Vec<(usize, Vec<f32>)>,
}

impl Frames {
    fn new(want: usize) -> Frames {
        Frames {
            want,
            every: 1,
            kept: Vec::new(),
        }
    }

    fn due(&self, step: usize) -> bool {
        self.want > 0 && step % self.every == 0
    }

    fn keep(
        &mut self,
        step: usize,
        image: &[f32],
        n: usize,
        (h, w): (usize, usize),
        (oh, ow): (usize, usize),
    ) {
        self.kept.push((step, resize(image, n, h, w, oh, ow)));
        if self.kept.len() >= 2 * self.want.max(1) {
            let mut i = 0;
            self.kept.retain(|_| {
                i += 1;
                i % 2 == 0
            });
            self.every *= 2;
        }
    }

    /// The final images are the last frame.
    fn finish(&mut self, step: usize, image: &[f32]) {
        if self.kept.last().is_some_and(|(s, _)| *s == step) {
            self.kept.pop();
        }
        self.kept.push((step, image.to_vec()));
    }

    /// `want` frames evenly spread over those kept, ending with the result.
    fn into_frames(self, want: usize) -> Vec<(usize, Vec<f32>)> {
        let k = self.kept.len();
        if want == 0 || k <= want {
            return self.kept;
        }
        let picks: Vec<usize> = (1..=want).map(|i| (i * k).div_ceil(want) - 1).collect();
        let mut out = Vec::with_capacity(want);
        for (j, frame) in self.kept.into_iter().enumerate() {
            if picks.contains(&j) {
                out.push(frame);
            }
        }
        out
    }
}

fn apply_image_ops(
    regularizers: &[Regularizer],
    step: usize,
    param: &mut dyn Param,
    image: &mut [f32],
    image_grad: &[f32],
    n: usize,
) {
    if regularizers.iter().all(Regularizer::is_penalty) {
        return;
    }
    let (h, w) = param.size();
    param.forward(image);
    let mut changed = false;
    for r in regularizers {
        changed |= r.apply(step, image, image_grad, n, h, w);
    }
    if changed {
        param.set_images(image, h, w);
    }
}

/// DeepDream settings (Mordvintsev et al.'s octave scheme).
#[derive(Clone, Debug, PartialEq)]
pub struct DreamSettings {
    /// Number of scales, the photo's own included.
    pub octaves: usize,
    /// Ratio between successive scales.
    pub octave_scale: f32,
    pub steps_per_octave: usize,
    /// Normalized-ascent step in [0, 1] image units (RMS change per step).
    pub lr: f32,
    /// Random shift of up to this many pixels each step (reflect-padded), against grid artefacts.
    pub jitter: usize,
    /// Smallest side an octave may have.
    pub min_size: usize,
    pub seed: u64,
}

impl DreamSettings {
    /// Refuses settings that cannot run, in the front ends' words.
    pub fn validate(&self) -> Result<(), String> {
        if self.octaves == 0 || self.steps_per_octave == 0 {
            return Err("--octaves and --steps-per-octave must be at least 1".into());
        }
        if !(self.octave_scale.is_finite() && self.octave_scale >= 1.0)
            || !(self.lr.is_finite() && self.lr > 0.0)
        {
            return Err("--octave-scale must be at least 1 and --lr positive".into());
        }
        Ok(())
    }
}

impl Default for DreamSettings {
    fn default() -> Self {
        DreamSettings {
            octaves: 4,
            octave_scale: 1.4,
            steps_per_octave: 10,
            lr: 0.02,
            jitter: 16,
            min_size: 48,
            seed: 0,
        }
    }
}

/// DeepDream on a photo (`[C, h, w]` in [0, 1], C the model's input channels): starting from
/// the photo at its smallest
/// octave, ascend `objective` (usually `dream(LAYER)`) with normalized steps on the pixels, add
/// the detail found to the next larger version of the photo, and so on; returns the result at
/// the photo's size.
pub fn dream(
    model: &Model,
    objective: &Objective,
    photo: &[f32],
    h: usize,
    w: usize,
    settings: &DreamSettings,
    mut on_step: impl FnMut(&Progress),
) -> Result<Vec<f32>, RenderError> {
    dream_until(model, objective, photo, h, w, settings, |p| {
        on_step(p);
        true
    })
}

/// [`dream`] that stops with [`RenderError::Interrupted`] after a step where `on_step` returns
/// false.
pub fn dream_until(
    model: &Model,
    objective: &Objective,
    photo: &[f32],
    h: usize,
    w: usize,
    settings: &DreamSettings,
    mut on_step: impl FnMut(&Progress) -> bool,
) -> Result<Vec<f32>, RenderError> {
    let c = model.info.channels;
    if photo.len() != c * h * w || h < 8 || w < 8 {
        return Err(RenderError::Invalid(format!(
            "a photo of {c}×{h}×{w} needs {} values, got {}",
            c * h * w,
            photo.len()
        )));
    }
    let norm = model_normalization(model)?;
    let objective = BatchObjective::Shared(objective.clone());
    let mut sizes = vec![(h, w)];
    for _ in 1..settings.octaves.max(1) {
        let (ph, pw) = *sizes.last().expect("non-empty");
        let (nh, nw) = (
            (ph as f32 / settings.octave_scale).round() as usize,
            (pw as f32 / settings.octave_scale).round() as usize,
        );
        if nh.min(nw) < settings.min_size {
            break;
        }
        sizes.push((nh, nw));
    }
    sizes.reverse();
    let mut rng = ChaCha8Rng::seed_from_u64(settings.seed);
    let mut detail: Option<(Vec<f32>, usize, usize)> = None;
    let total = sizes.len() * settings.steps_per_octave;
    let mut done = 0;
    let mut result = photo.to_vec();
    for (oi, &(oh, ow)) in sizes.iter().enumerate() {
        let base = resize(photo, 1, h, w, oh, ow);
        let mut start = base.clone();
        if let Some((d, dh, dw)) = &detail {
            let up = resize(d, 1, *dh, *dw, oh, ow);
            for (s, u) in start.iter_mut().zip(&up) {
                *s = (*s + u).clamp(0.0, 1.0);
            }
        }
        let mut param = Pixel::with_channels(1, c, oh, ow, start);
        let j = settings.jitter.min(oh.min(ow) / 4);
        let transforms = if j > 0 {
            vec![
                Transform::Pad {
                    amount: j / 2,
                    mode: PadMode::Reflect,
                },
                Transform::Jitter(2 * (j / 2)),
            ]
        } else {
            Vec::new()
        };
        let mut pipeline = Pipeline::new(transforms);
        let mut stepper = Stepper {
            model,
            objective: &objective,
            norm: norm.clone(),
            n: 1,
            image: Vec::new(),
            image_grad: Vec::new(),
            param_grad: Vec::new(),
            penalty_values: Vec::new(),
            penalty_grad: Vec::new(),
        };
        let mut optimizer = Optimizer::new(OptimizerKind::Normalized { lr: settings.lr });
        for _ in 0..settings.steps_per_octave {
            if stop_requested() {
                return Err(RenderError::Interrupted);
            }
            let values = stepper.pass(&mut param, &mut pipeline, &[], &mut rng)?;
            let per = param.per_image();
            optimizer.step(param.params_mut(), &stepper.param_grad, per);
            param.project();
            done += 1;
            if !on_step(&Progress {
                step: done,
                total,
                octave: oi,
                size: oh.max(ow),
                values: &values,
            }) {
                return Err(RenderError::Interrupted);
            }
        }
        let img = param.params().to_vec();
        let d: Vec<f32> = img.iter().zip(&base).map(|(a, b)| a - b).collect();
        detail = Some((d, oh, ow));
        result = img;
    }
    Ok(result)
}

/// Lucid's standard transforms for a given image size (pads and jitters in proportion to
/// Lucid's 128 px).
pub fn standard_transforms(size: usize) -> Vec<Transform> {
    lucid_standard_for(size)
}
