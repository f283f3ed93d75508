//! Training with Adam (Kingma–Ba, ICLR 2015) on softmax cross-entropy, cosine learning-rate
//! decay and gradient-norm clipping (square activations can otherwise blow up early on).

use crate::error::{Error, Result};
use crate::layers::softmax_cross_entropy;
use crate::model::Model;
use blindfold_data::LabeledImages;
use ndarray::{Array1, Array2};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use std::time::Instant;

/// Batches between refits of the ReLU fits' ranges.
const REFIT_EVERY: usize = 50;

/// Training settings.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    /// Passes over the training set.
    pub epochs: usize,
    /// Examples per step.
    pub batch_size: usize,
    /// Peak learning rate (cosine-decayed to 1% of it over the run).
    pub learning_rate: f32,
    /// Largest global gradient norm; larger gradients are scaled down.
    pub clip_norm: f32,
    /// Seed of initialization and shuffling.
    pub seed: u64,
    /// Random translation of each training image by up to this many pixels in each
    /// direction (data augmentation; 0 disables it).
    pub max_shift: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self { epochs: 15, batch_size: 64, learning_rate: 2e-3, clip_norm: 5.0, seed: 1, max_shift: 2 }
    }
}

/// What one epoch achieved.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochReport {
    /// Epoch number, from 1.
    pub epoch: usize,
    /// Mean training loss.
    pub loss: f32,
    /// Accuracy on the evaluation set, if one was given.
    pub eval_accuracy: Option<f64>,
    /// Wall-clock seconds.
    pub seconds: f64,
}

struct AdamState {
    m_w: Array2<f32>,
    v_w: Array2<f32>,
    m_b: Array1<f32>,
    v_b: Array1<f32>,
}

/// Adam with global gradient-norm clipping and cosine learning-rate decay over `total_steps`,
/// applied to the gradients the layers have accumulated.
pub(crate) struct Adam {
    states: Vec<Option<AdamState>>,
    step: usize,
    total_steps: usize,
}

impl Adam {
    pub(crate) fn new(model: &Model, total_steps: usize) -> Self {
        let states = model
            .layers
            .iter()
            .map(|l| {
                l.params.as_ref().map(|p| AdamState {
                    m_w: Array2::zeros(p.weight.raw_dim()),
                    v_w: Array2::zeros(p.weight.raw_dim()),
                    m_b: Array1::zeros(p.bias.raw_dim()),
                    v_b: Array1::zeros(p.bias.raw_dim()),
                })
            })
            .collect();
        Self { states, step: 0, total_steps }
    }

    /// One update of every parameter from its accumulated gradient.
    pub(crate) fn step(&mut self, model: &mut Model, learning_rate: f32, clip_norm: f32) {
        let (beta1, beta2, eps) = (0.9f32, 0.999f32, 1e-8f32);
        let norm: f32 = model
            .layers
            .iter()
            .filter_map(|l| l.grads.as_ref())
            .map(|g| g.weight.iter().chain(g.bias.iter()).map(|v| v * v).sum::<f32>())
            .sum::<f32>()
            .sqrt();
        let clip = if norm > clip_norm { clip_norm / norm } else { 1.0 };
        self.step += 1;
        let step = self.step;
        let progress_frac = step as f32 / self.total_steps.max(1) as f32;
        let lr = learning_rate * (0.01 + 0.99 * 0.5 * (1.0 + (std::f32::consts::PI * progress_frac).cos()));
        let (c1, c2) = (1.0 - beta1.powi(step as i32), 1.0 - beta2.powi(step as i32));
        for (l, st) in model.layers.iter_mut().zip(self.states.iter_mut()) {
            let (Some(p), Some(g), Some(s)) = (l.params.as_mut(), l.grads.as_ref(), st.as_mut()) else {
                continue;
            };
            let update = |param: &mut f32, grad: f32, m: &mut f32, v: &mut f32| {
                let grad = grad * clip;
                *m = beta1 * *m + (1.0 - beta1) * grad;
                *v = beta2 * *v + (1.0 - beta2) * grad * grad;
                *param -= lr * (*m / c1) / ((*v / c2).sqrt() + eps);
            };
            ndarray::Zip::from(&mut p.weight)
                .and(&g.weight)
                .and(&mut s.m_w)
                .and(&mut s.v_w)
                .for_each(|p, &g, m, v| update(p, g, m, v));
            ndarray::Zip::from(&mut p.bias)
                .and(&g.bias)
                .and(&mut s.m_b)
                .and(&mut s.v_b)
                .for_each(|p, &g, m, v| update(p, g, m, v));
        }
    }
}

/// Trains `model` in place. `progress(done, total)` is called after every batch.
///
/// # Errors
/// [`Error::Diverged`] if the loss stops being finite; [`Error::Shape`] if the data does not
/// match the architecture.
pub fn train(
    model: &mut Model,
    data: &LabeledImages,
    eval: Option<&LabeledImages>,
    cfg: &TrainConfig,
    mut progress: impl FnMut(usize, usize),
    mut on_epoch: impl FnMut(&EpochReport),
) -> Result<Vec<EpochReport>> {
    let mut rng = ChaCha20Rng::seed_from_u64(cfg.seed);
    let n = data.len();
    let width = model.spec().input.len();
    if data.images.rows * data.images.cols != width {
        return Err(Error::Shape {
            op: "train",
            expected: format!("{width} pixels per image"),
            actual: format!("{}", data.images.rows * data.images.cols),
        });
    }
    let x_all: Vec<f32> = model.normalize(&data.images.pixels);
    let shape = model.spec().input;
    let background = model.normalize(&[0])[0];
    let batches = n.div_ceil(cfg.batch_size);
    let mut adam = Adam::new(model, cfg.epochs * batches);
    let mut order: Vec<usize> = (0..n).collect();
    let mut reports = Vec::new();
    // ReLU fits start on the range of a first batch's pre-activations (layer after layer).
    let first = n.min(512);
    model.calibrate_activations(
        &Array2::from_shape_vec((first, width), x_all[..first * width].to_vec()).expect("sizes"),
    )?;
    for epoch in 1..=cfg.epochs {
        let start = Instant::now();

        // Fisher–Yates shuffle.
        for i in (1..n).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
        let mut loss_sum = 0.0f64;
        for b in 0..batches {
            let idx = &order[b * cfg.batch_size..((b + 1) * cfg.batch_size).min(n)];
            let mut x = Array2::<f32>::zeros((idx.len(), width));
            let mut labels = Vec::with_capacity(idx.len());
            for (r, &i) in idx.iter().enumerate() {
                let src = &x_all[i * width..(i + 1) * width];
                let row = x.row_mut(r).into_slice().expect("row-major");
                if cfg.max_shift == 0 {
                    row.copy_from_slice(src);
                } else {
                    let span = 2 * cfg.max_shift as u64 + 1;
                    let dy = (rng.next_u64() % span) as isize - cfg.max_shift as isize;
                    let dx = (rng.next_u64() % span) as isize - cfg.max_shift as isize;
                    shift_image(src, row, shape, dy, dx, background);
                }
                labels.push(data.labels[i]);
            }
            for l in model.layers.iter_mut() {
                l.zero_grads();
            }
            let logits = model.forward_inner(&x, true)?;
            let (loss, mut g) = softmax_cross_entropy(&logits, &labels);
            if !loss.is_finite() {
                return Err(Error::Diverged { epoch, batch: b, loss });
            }
            loss_sum += loss as f64;
            for l in model.layers.iter_mut().rev() {
                g = l.backward(&g);
            }
            adam.step(model, cfg.learning_rate, cfg.clip_norm);
            // The polynomial in the loop: every REFIT_EVERY batches, ReLU fits move to the
            // range of the pre-activations seen since the last refit (never after the last
            // batch: the weights are trained for the polynomial they end with).
            if (b + 1) % REFIT_EVERY == 0 && !(epoch == cfg.epochs && b + 1 == batches) {
                model.refit_activations();
            }
            progress(b + 1, batches);
        }
        let eval_accuracy = eval.map(|e| model.accuracy(e)).transpose()?;
        let report = EpochReport {
            epoch,
            loss: (loss_sum / batches as f64) as f32,
            eval_accuracy,
            seconds: start.elapsed().as_secs_f64(),
        };
        on_epoch(&report);
        reports.push(report);
    }
    Ok(reports)
}

/// Writes `src` (a `c×h×w` image) translated by `(dy, dx)` into `dst`, filling uncovered
/// pixels with `background`.
fn shift_image(src: &[f32], dst: &mut [f32], s: crate::arch::Shape, dy: isize, dx: isize, background: f32) {
    for c in 0..s.c {
        for y in 0..s.h {
            for x in 0..s.w {
                let (sy, sx) = (y as isize - dy, x as isize - dx);
                let inside = sy >= 0 && sx >= 0 && (sy as usize) < s.h && (sx as usize) < s.w;
                dst[c * s.h * s.w + y * s.w + x] =
                    if inside { src[c * s.h * s.w + sy as usize * s.w + sx as usize] } else { background };
            }
        }
    }
}

/// The random generator used for initialization and shuffling, from a seed.
pub fn seeded_rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}
