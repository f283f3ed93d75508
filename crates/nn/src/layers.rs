//! Forward and backward passes of each layer on `(batch, features)` matrices.

use crate::arch::{LayerSpec, Shape};
pub use blindfold_tensor::ConvGeom;
use ndarray::{Array1, Array2, ArrayView2, Axis};

/// Trainable parameters of a linear layer: `weight` is `(outputs, inputs)` (for a
/// convolution `inputs = in_channels·kernel²`, ordered `c·k² + ky·k + kx`), `bias` has one
/// entry per output.
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    /// Weight matrix.
    pub weight: Array2<f32>,
    /// Bias vector.
    pub bias: Array1<f32>,
}

/// Gradients of [`Params`], same shapes.
#[derive(Clone, Debug)]
pub(crate) struct Grads {
    pub weight: Array2<f32>,
    pub bias: Array1<f32>,
}

/// The im2col matrix of a batch: `(batch·positions, cols)`.
pub(crate) fn im2col(g: &ConvGeom, x: ArrayView2<f32>) -> Array2<f32> {
    let (b, p, c) = (x.nrows(), g.positions(), g.cols());
    let mut out = Array2::<f32>::zeros((b * p, c));
    for e in 0..b {
        let row = x.row(e);
        for pos in 0..p {
            let mut o = out.row_mut(e * p + pos);
            for j in 0..c {
                if let Some(src) = g.source(pos, j) {
                    o[j] = row[src];
                }
            }
        }
    }
    out
}

/// A layer with its parameters, gradients and the cache of its last forward pass.
#[derive(Clone, Debug)]
pub(crate) struct Layer {
    pub spec: LayerSpec,
    pub input: Shape,
    pub output: Shape,
    pub params: Option<Params>,
    pub grads: Option<Grads>,
    cache: Option<Array2<f32>>,
    /// For a ReLU fit in training: the smallest and largest inputs since the last refit (the
    /// range the fit is refitted to).
    pub observed: Option<(f64, f64)>,
}

impl Layer {
    pub fn new(spec: LayerSpec, input: Shape, output: Shape, params: Option<Params>) -> Self {
        let grads = params
            .as_ref()
            .map(|p| Grads { weight: Array2::zeros(p.weight.raw_dim()), bias: Array1::zeros(p.bias.raw_dim()) });
        Self { spec, input, output, params, grads, cache: None, observed: None }
    }

    pub fn conv_geom(&self) -> Option<ConvGeom> {
        match self.spec {
            LayerSpec::Conv2d { kernel, stride, padding, .. } => {
                Some(ConvGeom { input: self.input, output: self.output, kernel, stride, padding })
            }
            _ => None,
        }
    }

    /// Forward pass; keeps what backward needs when `train`.
    pub fn forward(&mut self, x: &Array2<f32>, train: bool) -> Array2<f32> {
        let b = x.nrows();
        let y = match &self.spec {
            LayerSpec::Conv2d { .. } => {
                let g = self.conv_geom().expect("conv");
                let p = self.params.as_ref().expect("conv params");
                let cols = im2col(&g, x.view());
                // (b·P, cols)·(cols, oc) → (b·P, oc) → (b, oc·P)
                let out = cols.dot(&p.weight.t());
                let positions = g.positions();
                let oc = g.output.c;
                let mut y = Array2::<f32>::zeros((b, oc * positions));
                for e in 0..b {
                    for pos in 0..positions {
                        let r = out.row(e * positions + pos);
                        for o in 0..oc {
                            y[[e, o * positions + pos]] = r[o] + p.bias[o];
                        }
                    }
                }
                if train {
                    self.cache = Some(cols);
                }
                y
            }
            LayerSpec::AvgPool2d { kernel, stride } => {
                let (i, o) = (self.input, self.output);
                let inv = 1.0 / (kernel * kernel) as f32;
                let mut y = Array2::<f32>::zeros((b, o.len()));
                for e in 0..b {
                    for c in 0..o.c {
                        for oy in 0..o.h {
                            for ox in 0..o.w {
                                let mut acc = 0.0;
                                for ky in 0..*kernel {
                                    for kx in 0..*kernel {
                                        acc += x[[e, c * i.h * i.w + (oy * stride + ky) * i.w + ox * stride + kx]];
                                    }
                                }
                                y[[e, c * o.h * o.w + oy * o.w + ox]] = acc * inv;
                            }
                        }
                    }
                }
                y
            }
            LayerSpec::Flatten => x.clone(),
            LayerSpec::Dense { .. } => {
                let p = self.params.as_ref().expect("dense params");
                if train {
                    self.cache = Some(x.clone());
                }
                x.dot(&p.weight.t()) + &p.bias
            }
            LayerSpec::Square => {
                if train {
                    self.cache = Some(x.clone());
                }
                x.mapv(|v| v * v)
            }
            LayerSpec::Relu => {
                if train {
                    self.cache = Some(x.clone());
                }
                x.mapv(|v| v.max(0.0))
            }
            LayerSpec::Poly { .. } | LayerSpec::ReluPoly { .. } => {
                if train {
                    self.cache = Some(x.clone());
                    if matches!(self.spec, LayerSpec::ReluPoly { .. }) && !x.is_empty() {
                        let (lo, hi) = x.iter().fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
                        let r = self.observed.get_or_insert((f64::MAX, f64::MIN));
                        *r = (r.0.min(lo as f64), r.1.max(hi as f64));
                    }
                }
                let c: Vec<f32> = self.spec.polynomial().unwrap_or_default().iter().map(|&c| c as f32).collect();
                x.mapv(|v| c.iter().rev().fold(0.0, |acc, &a| acc * v + a))
            }
        };
        y
    }

    /// Backward pass: accumulates parameter gradients, returns the input gradient.
    pub fn backward(&mut self, gy: &Array2<f32>) -> Array2<f32> {
        let b = gy.nrows();
        match &self.spec {
            LayerSpec::Conv2d { .. } => {
                let g = self.conv_geom().expect("conv");
                let cols = self.cache.as_ref().expect("forward before backward");
                let p = self.params.as_ref().expect("conv params");
                let positions = g.positions();
                let oc = g.output.c;
                // gY: (b·P, oc)
                let mut g_y = Array2::<f32>::zeros((b * positions, oc));
                for e in 0..b {
                    for pos in 0..positions {
                        for o in 0..oc {
                            g_y[[e * positions + pos, o]] = gy[[e, o * positions + pos]];
                        }
                    }
                }
                let grads = self.grads.as_mut().expect("conv grads");
                grads.weight += &g_y.t().dot(cols);
                grads.bias += &g_y.sum_axis(Axis(0));
                let g_cols = g_y.dot(&p.weight); // (b·P, cols)
                let mut gx = Array2::<f32>::zeros((b, g.input.len()));
                for e in 0..b {
                    for pos in 0..positions {
                        let r = g_cols.row(e * positions + pos);
                        for j in 0..g.cols() {
                            if let Some(src) = g.source(pos, j) {
                                gx[[e, src]] += r[j];
                            }
                        }
                    }
                }
                gx
            }
            LayerSpec::AvgPool2d { kernel, stride } => {
                let (i, o) = (self.input, self.output);
                let inv = 1.0 / (kernel * kernel) as f32;
                let mut gx = Array2::<f32>::zeros((b, i.len()));
                for e in 0..b {
                    for c in 0..o.c {
                        for oy in 0..o.h {
                            for ox in 0..o.w {
                                let gv = gy[[e, c * o.h * o.w + oy * o.w + ox]] * inv;
                                for ky in 0..*kernel {
                                    for kx in 0..*kernel {
                                        gx[[e, c * i.h * i.w + (oy * stride + ky) * i.w + ox * stride + kx]] += gv;
                                    }
                                }
                            }
                        }
                    }
                }
                gx
            }
            LayerSpec::Flatten => gy.clone(),
            LayerSpec::Dense { .. } => {
                let x = self.cache.as_ref().expect("forward before backward");
                let p = self.params.as_ref().expect("dense params");
                let grads = self.grads.as_mut().expect("dense grads");
                grads.weight += &gy.t().dot(x);
                grads.bias += &gy.sum_axis(Axis(0));
                gy.dot(&p.weight)
            }
            LayerSpec::Square => {
                let x = self.cache.as_ref().expect("forward before backward");
                gy * &x.mapv(|v| 2.0 * v)
            }
            LayerSpec::Relu => {
                let x = self.cache.as_ref().expect("forward before backward");
                ndarray::Zip::from(gy).and(x).map_collect(|&g, &v| if v > 0.0 { g } else { 0.0 })
            }
            LayerSpec::Poly { .. } | LayerSpec::ReluPoly { .. } => {
                let x = self.cache.as_ref().expect("forward before backward");
                let coeffs = self.spec.polynomial().unwrap_or_default();
                let d: Vec<f32> = coeffs.iter().enumerate().skip(1).map(|(i, &c)| (i as f64 * c) as f32).collect();
                gy * &x.mapv(|v| d.iter().rev().fold(0.0, |acc, &a| acc * v + a))
            }
        }
    }

    pub fn zero_grads(&mut self) {
        if let Some(g) = self.grads.as_mut() {
            g.weight.fill(0.0);
            g.bias.fill(0.0);
        }
    }
}

/// Row-wise softmax cross-entropy: mean loss and the gradient with respect to the logits.
pub(crate) fn softmax_cross_entropy(logits: &Array2<f32>, labels: &[u8]) -> (f32, Array2<f32>) {
    let b = logits.nrows();
    let mut grad = Array2::<f32>::zeros(logits.raw_dim());
    let mut loss = 0.0f64;
    for e in 0..b {
        let row = logits.row(e);
        let max = row.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let sum: f64 = row.iter().map(|&v| ((v - max) as f64).exp()).sum();
        let label = labels[e] as usize;
        loss += sum.ln() - (row[label] - max) as f64;
        for (j, &v) in row.iter().enumerate() {
            let p = (((v - max) as f64).exp() / sum) as f32;
            grad[[e, j]] = (p - if j == label { 1.0 } else { 0.0 }) / b as f32;
        }
    }
    ((loss / b as f64) as f32, grad)
}
