//! The optimization loop: parametrization → transforms → network → objective, and back.

use crate::objective::{BatchObjective, Objective};
use crate::optim::{Optimizer, OptimizerKind};
use crate::param::{Param, ParamKind, Pixel};
use crate::transform::{lucid_standard_for, resize, PadMode, Pipeline, Regularizer, Transform};
use crate::{denormalize_grad, normalized, RenderError};
use deepvis_models::Model;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// One resolution of a multi-scale schedule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Octave {
    /// Image side in pixels.
    pub size: usize,
    pub steps: usize,
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
}

impl RenderSettings {
    pub fn size(&self) -> usize {
        self.octaves.last().map_or(0, |o| o.size)
    }

    pub fn total_steps(&self) -> usize {
        self.octaves.iter().map(|o| o.steps).sum()
    }

    /// A one-line description for logs.
    pub fn describe(&self) -> String {
        let oct: Vec<String> = self
            .octaves
            .iter()
            .map(|o| format!("{}px×{}", o.size, o.steps))
            .collect();
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

    /// The settings for `size`-pixel output and `steps` steps in all (None: the preset's).
    /// For the seed preset, `step_size` of the original tool (0–255 units) is 9 here; pass a
    /// different one through [`seed_settings`].
    pub fn settings(self, size: usize, steps: Option<usize>, seed: u64) -> RenderSettings {
        let steps = steps.unwrap_or(self.default_steps());
        match self {
            Preset::Seed => seed_settings(size, steps, 9.0, seed),
            Preset::Default => RenderSettings {
                octaves: vec![Octave { size, steps }],
                param: ParamKind::FOURIER,
                transforms: crate::transform::lucid_standard(),
                transform_reference: Some(128),
                optimizer: OptimizerKind::adam(0.1),
                regularizers: Vec::new(),
                seed,
            },
            Preset::Lucid => RenderSettings {
                octaves: vec![Octave { size, steps }],
                param: ParamKind::FOURIER,
                transforms: crate::transform::lucid_standard(),
                transform_reference: None,
                optimizer: OptimizerKind::adam(0.05),
                regularizers: Vec::new(),
                seed,
            },
            Preset::Maco => RenderSettings {
                octaves: vec![Octave { size, steps }],
                param: ParamKind::Maco,
                transforms: crate::transform::lucid_standard(),
                transform_reference: Some(128),
                optimizer: OptimizerKind::adam(0.3),
                regularizers: Vec::new(),
                seed,
            },
        }
    }
}

/// The default preset's schedule: half the steps at half the size, a quarter at three
/// quarters, the rest at full size (one octave for fewer than 8 steps or tiny images). Low
/// resolution steps are cheap and grow large, coherent structures; the later octaves add
/// detail.
pub fn default_octaves(size: usize, steps: usize) -> Vec<Octave> {
    let even = |v: usize| (v / 2) * 2;
    let (half, three_q) = (even(size / 2), even(size * 3 / 4));
    if steps < 8 || half < 32 {
        return vec![Octave { size, steps }];
    }
    let (a, b) = (steps / 2, steps / 4);
    vec![
        Octave {
            size: half,
            steps: a,
        },
        Octave {
            size: three_q,
            steps: b,
        },
        Octave {
            size,
            steps: steps - a - b,
        },
    ]
}

/// The seed method as settings: pixel parametrization, no transforms, normalized ascent with
/// `step_size` in 0–255 units. Start it from [`seed_init`] to reproduce `ascend_channels`.
pub fn seed_settings(size: usize, steps: usize, step_size: f32, seed: u64) -> RenderSettings {
    RenderSettings {
        octaves: vec![Octave { size, steps }],
        param: ParamKind::Pixel,
        transforms: Vec::new(),
        transform_reference: None,
        optimizer: OptimizerKind::Normalized {
            lr: step_size / 255.0,
        },
        regularizers: Vec::new(),
        seed,
    }
}

/// The seed method's start images for `ids` (one per image; the channel numbers in
/// `ascend_channels`): grey with noise seeded by (seed, id).
pub fn seed_init(size: usize, seed: u64, ids: &[usize]) -> Vec<f32> {
    ids.iter()
        .flat_map(|&id| crate::initial_image(size, seed, id))
        .collect()
}

/// Where the parameters start.
#[derive(Clone, Debug, PartialEq)]
pub enum Init {
    /// The parametrization's seeded random start.
    Random,
    /// Fitted to these images (`[N, 3, s, s]` at the first octave's size, RGB in [0, 1]).
    Images(Vec<f32>),
}

/// What one step reports.
#[derive(Clone, Debug)]
pub struct Progress<'a> {
    /// Steps done so far (1-based), over all octaves.
    pub step: usize,
    pub total: usize,
    pub octave: usize,
    pub size: usize,
    /// Objective values of this step's (transformed) images.
    pub values: &'a [f32],
}

/// The result of [`render`].
#[derive(Clone, Debug)]
pub struct RenderOutput {
    /// `[N, 3, size, size]`, RGB in [0, 1].
    pub images: Vec<f32>,
    pub size: usize,
    /// Objective per image on the untransformed start images (first octave's size).
    pub initial: Vec<f32>,
    /// Objective per image on the untransformed final images.
    pub final_values: Vec<f32>,
}

/// Evaluates the objective on untransformed images `[n, 3, h, w]`.
pub fn evaluate(
    model: &Model,
    objective: &BatchObjective,
    images: &[f32],
    n: usize,
    h: usize,
    w: usize,
) -> Result<Vec<f32>, RenderError> {
    let x = normalized(images, [n, 3, h, w], &model.info.normalization)?;
    deepvis_engine::on_pool(|| {
        let trace = objective.trace(&model.graph, x)?;
        Ok(objective.evaluate(&trace, n, false)?.0)
    })
}

/// Reusable state of the inner loop.
struct Stepper<'a> {
    model: &'a Model,
    objective: &'a BatchObjective,
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
        let (h, w) = param.size();
        self.image.resize(n * 3 * h * w, 0.0);
        param.forward(&mut self.image);
        let (th, tw) = pipeline.forward(&self.image, n, h, w, rng);
        let x = normalized(
            pipeline.output(),
            [n, 3, th, tw],
            &self.model.info.normalization,
        )?;
        let trace = self.objective.trace(&self.model.graph, x)?;
        let (values, grads) = self.objective.evaluate(&trace, n, true)?;
        let seeds = grads.expect("asked for gradients").into_seeds();
        let mut g = self.model.graph.backward_multi(&trace, seeds)?;
        drop(trace);
        denormalize_grad(&mut g, &self.model.info.normalization);
        self.image_grad.resize(n * 3 * h * w, 0.0);
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
pub fn render(
    model: &Model,
    objective: &BatchObjective,
    n: usize,
    settings: &RenderSettings,
    init: Init,
    mut on_step: impl FnMut(&Progress),
) -> Result<RenderOutput, RenderError> {
    if n == 0 || settings.octaves.is_empty() || settings.octaves.iter().any(|o| o.size < 8) {
        return Err(RenderError::Invalid(
            "a render needs at least one image and octaves of at least 8 pixels".into(),
        ));
    }
    if let Some(len) = objective.image_count() {
        if len != n {
            return Err(RenderError::Invalid(format!(
                "{len} objectives for a batch of {n} images"
            )));
        }
    }
    let mut rng = ChaCha8Rng::seed_from_u64(settings.seed);
    let first = settings.octaves[0].size;
    let mut param = settings.param.build(n, first, first, &mut rng);
    if let Init::Images(images) = &init {
        if images.len() != n * 3 * first * first {
            return Err(RenderError::Invalid(format!(
                "{} start values for {n} images of {first}×{first}",
                images.len()
            )));
        }
        param.set_images(images, first, first);
    }
    let mut stepper = Stepper {
        model,
        objective,
        n,
        image: vec![0.0; n * 3 * first * first],
        image_grad: Vec::new(),
        param_grad: Vec::new(),
        penalty_values: Vec::new(),
        penalty_grad: Vec::new(),
    };
    param.forward(&mut stepper.image);
    // Without transforms the first step's forward pass is on the start images themselves, so
    // its values are the initial objective (as in `ascend_channels`): one forward pass less.
    let first_step_is_start =
        settings.octaves[0].steps > 0 && scaled_transforms(settings, first).is_empty();
    let mut initial = if first_step_is_start {
        Vec::new()
    } else {
        evaluate(model, objective, &stepper.image, n, first, first)?
    };
    let mut optimizer = Optimizer::new(settings.optimizer);
    let total = settings.total_steps();
    let mut done = 0;
    for (oi, octave) in settings.octaves.iter().enumerate() {
        let s = octave.size;
        if param.size() != (s, s) {
            let (h, w) = param.size();
            param.forward(&mut stepper.image);
            let up = resize(&stepper.image, n, h, w, s, s);
            param.set_images(&up, s, s);
            optimizer.reset();
        }
        let mut pipeline = Pipeline::new(scaled_transforms(settings, s));
        for step in 0..octave.steps {
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
            on_step(&Progress {
                step: done,
                total,
                octave: oi,
                size: s,
                values: &values,
            });
        }
    }
    let (h, w) = param.size();
    stepper.image.resize(n * 3 * h * w, 0.0);
    param.forward(&mut stepper.image);
    let final_values = evaluate(model, objective, &stepper.image, n, h, w)?;
    Ok(RenderOutput {
        images: std::mem::take(&mut stepper.image),
        size: h,
        initial,
        final_values,
    })
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

/// DeepDream on a photo (`[3, h, w]` RGB in [0, 1]): starting from the photo at its smallest
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
    if photo.len() != 3 * h * w || h < 8 || w < 8 {
        return Err(RenderError::Invalid(format!(
            "a photo of {h}×{w} needs {} values, got {}",
            3 * h * w,
            photo.len()
        )));
    }
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
        let mut param = Pixel::new(1, oh, ow, start);
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
            n: 1,
            image: Vec::new(),
            image_grad: Vec::new(),
            param_grad: Vec::new(),
            penalty_values: Vec::new(),
            penalty_grad: Vec::new(),
        };
        let mut optimizer = Optimizer::new(OptimizerKind::Normalized { lr: settings.lr });
        for _ in 0..settings.steps_per_octave {
            let values = stepper.pass(&mut param, &mut pipeline, &[], &mut rng)?;
            let per = param.per_image();
            optimizer.step(param.params_mut(), &stepper.param_grad, per);
            param.project();
            done += 1;
            on_step(&Progress {
                step: done,
                total,
                octave: oi,
                size: oh.max(ow),
                values: &values,
            });
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
