//! Architectures: layer specifications, shape inference and the built-in networks.

use crate::error::{Error, Result};
pub use blindfold_tensor::Shape;
use blindfold_tensor::{ConvGeom, PoolGeom};
use serde::{Deserialize, Serialize};

/// One layer of an architecture.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LayerSpec {
    /// 2-D convolution with square kernels, `out_channels` filters of `in_channels × kernel ×
    /// kernel` weights plus a bias each, zero padding on every side.
    Conv2d {
        /// Output channels.
        out_channels: usize,
        /// Kernel side.
        kernel: usize,
        /// Stride.
        stride: usize,
        /// Zero padding per side.
        padding: usize,
    },
    /// Average over `kernel × kernel` windows with the given stride (no padding).
    AvgPool2d {
        /// Window side.
        kernel: usize,
        /// Stride.
        stride: usize,
    },
    /// Reinterprets `c × h × w` as `c·h·w × 1 × 1` (no data movement).
    Flatten,
    /// Fully connected layer `y = W x + b`.
    Dense {
        /// Output features.
        outputs: usize,
    },
    /// `x²` element-wise (CryptoNets' activation).
    Square,
    /// `Σ_i coeffs[i]·x^i` element-wise, e.g. a low-degree approximation of ReLU.
    Poly {
        /// Coefficients, constant term first.
        coeffs: Vec<f64>,
    },
    /// The least-squares fit of ReLU of `degree` (1 to 4) on `[lo, hi]`
    /// ([`crate::activation::relu_fit`]): `relu-poly2..4`. Training sets the interval to the
    /// pre-activation range it observes and refits it every epoch.
    ReluPoly {
        /// Degree.
        degree: usize,
        /// Lower end of the fitted range.
        lo: f64,
        /// Upper end of the fitted range.
        hi: f64,
    },
    /// `max(x, 0)` element-wise. Plaintext only (CryptoNN trains everything after the first
    /// layer in the clear); encrypted evaluation plans refuse it.
    Relu,
}

impl std::fmt::Display for LayerSpec {
    /// A short description for people: `conv 4×5×5, stride 2, padding 1`, `x²`, ….
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LayerSpec::Conv2d { out_channels, kernel, stride, padding } => {
                write!(f, "conv {out_channels}×{kernel}×{kernel}, stride {stride}, padding {padding}")
            }
            LayerSpec::AvgPool2d { kernel, stride } => write!(f, "average pool {kernel}×{kernel}, stride {stride}"),
            LayerSpec::Flatten => write!(f, "flatten"),
            LayerSpec::Dense { outputs } => write!(f, "dense → {outputs}"),
            LayerSpec::Square => write!(f, "x²"),
            LayerSpec::Poly { coeffs } => {
                let terms: Vec<String> = coeffs
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| **c != 0.0)
                    .map(|(k, c)| match k {
                        0 => format!("{c:.4}"),
                        1 => format!("{c:.4}·x"),
                        _ => format!("{c:.4}·x^{k}"),
                    })
                    .collect();
                write!(f, "polynomial {}", terms.join(" + "))
            }
            LayerSpec::ReluPoly { degree, lo, hi } => write!(f, "ReLU fit of degree {degree} on [{lo:.2}, {hi:.2}]"),
            LayerSpec::Relu => write!(f, "ReLU (no encrypted form)"),
        }
    }
}

impl LayerSpec {
    /// Output shape for an input shape.
    ///
    /// # Errors
    /// [`Error::Architecture`] if the layer does not fit the input.
    pub fn output_shape(&self, s: Shape) -> Result<Shape> {
        let bad = |m: String| Err(Error::Architecture(m));
        match *self {
            LayerSpec::Conv2d { out_channels, kernel, stride, padding } => {
                ConvGeom::new(s, out_channels, kernel, stride, padding).map(|g| g.output).or_else(bad)
            }
            LayerSpec::AvgPool2d { kernel, stride } => PoolGeom::new(s, kernel, stride).map(|g| g.output).or_else(bad),
            LayerSpec::Flatten => Ok(Shape { c: s.len(), h: 1, w: 1 }),
            LayerSpec::Dense { outputs } => {
                if s.h != 1 || s.w != 1 {
                    return bad(format!("dense layer after a spatial {s} activation: add a flatten layer"));
                }
                if outputs == 0 {
                    return bad("dense layer with zero outputs".into());
                }
                Ok(Shape { c: outputs, h: 1, w: 1 })
            }
            LayerSpec::Square | LayerSpec::Relu => Ok(s),
            LayerSpec::Poly { ref coeffs } => {
                if coeffs.is_empty() || coeffs.iter().any(|c| !c.is_finite()) {
                    return bad("poly activation needs finite coefficients".into());
                }
                Ok(s)
            }
            LayerSpec::ReluPoly { degree, lo, hi } => {
                crate::activation::relu_fit(degree, lo, hi).map_err(|e| Error::Architecture(e.to_string()))?;
                Ok(s)
            }
        }
    }

    /// Multiplicative depth of this layer in blindfold's circuits (levels consumed): one per
    /// linear layer (convolution, dense), none for pooling (a sum of rotations, its division
    /// folded into a linear layer) and flattening, `ceil(log2(degree))` for polynomial
    /// activations (the leading coefficient folded into the next linear layer).
    /// [`LayerSpec::Relu`] counts 0: it has no polynomial form, and circuits refuse it.
    pub fn depth(&self) -> usize {
        match self {
            LayerSpec::Conv2d { .. } | LayerSpec::Dense { .. } => 1,
            LayerSpec::AvgPool2d { .. } | LayerSpec::Flatten | LayerSpec::Relu => 0,
            LayerSpec::Square => 1,
            LayerSpec::Poly { .. } | LayerSpec::ReluPoly { .. } => {
                let degree = self.degree().unwrap_or(0);
                (usize::BITS - degree.saturating_sub(1).leading_zeros()) as usize
            }
        }
    }

    /// Power-basis coefficients (constant first) of a polynomial activation: `[0, 0, 1]` for
    /// [`LayerSpec::Square`], the fit for [`LayerSpec::ReluPoly`]; `None` for other layers (or
    /// a fit whose range is invalid).
    ///
    /// A fit's terms of highest degree that stay below 10^-6 of its largest term over
    /// `[lo, hi]` are dropped (a cubic fit on a symmetric range is a quadratic): the plaintext
    /// model and the encrypted circuit evaluate the same polynomial.
    pub fn polynomial(&self) -> Option<Vec<f64>> {
        match self {
            LayerSpec::Square => Some(vec![0.0, 0.0, 1.0]),
            LayerSpec::Poly { coeffs } => Some(coeffs.clone()),
            LayerSpec::ReluPoly { degree, lo, hi } => {
                let mut c = crate::activation::relu_fit(*degree, *lo, *hi).ok()?;
                let reach = lo.abs().max(hi.abs());
                let size = |k: usize, v: f64| v.abs() * reach.powi(k as i32);
                let largest = c.iter().enumerate().fold(0f64, |m, (k, &v)| m.max(size(k, v)));
                while c.len() > 1 && size(c.len() - 1, c[c.len() - 1]) < 1e-6 * largest {
                    c.pop();
                }
                Some(c)
            }
            _ => None,
        }
    }

    /// Degree of a polynomial activation (its highest nonzero coefficient in
    /// [`LayerSpec::polynomial`]); `None` for other layers.
    pub fn degree(&self) -> Option<usize> {
        Some(self.polynomial()?.iter().rposition(|&v| v != 0.0).unwrap_or(0))
    }

    /// For a layer with parameters, how many inputs each output reads (its weight matrix is
    /// `outputs × fan_in`) for an input of shape `s`; `None` for layers without parameters.
    /// Unchecked arithmetic: for shapes [`ArchSpec::shapes`] accepted.
    pub(crate) fn fan_in(&self, s: Shape) -> Option<usize> {
        match *self {
            LayerSpec::Conv2d { kernel, .. } => Some(s.c * kernel * kernel),
            LayerSpec::Dense { .. } => Some(s.len()),
            _ => None,
        }
    }

    /// Number of weights and biases for an input of shape `s` and an output of shape `out`
    /// (saturating: callers have checked [`LayerSpec::weights`]).
    fn parameters(&self, s: Shape, out: Shape) -> usize {
        match self {
            LayerSpec::Conv2d { .. } | LayerSpec::Dense { .. } => {
                self.weights(s).unwrap_or(usize::MAX).saturating_add(out.c)
            }
            _ => 0,
        }
    }

    /// Number of trainable weights (without biases) for an input of shape `s`, if the layer
    /// has parameters.
    fn weights(&self, s: Shape) -> Option<usize> {
        match *self {
            LayerSpec::Conv2d { out_channels, kernel, .. } => {
                s.c.checked_mul(kernel)?.checked_mul(kernel)?.checked_mul(out_channels)
            }
            LayerSpec::Dense { outputs } => s.len().checked_mul(outputs),
            _ => Some(0),
        }
    }
}

/// Most layers an architecture may have.
pub const MAX_LAYERS: usize = 256;
/// Most weights one layer may have (2^26, 256 MB of `f32`): a bound checked before any
/// weight is allocated, so a model file cannot make a reader allocate without bound.
pub const MAX_WEIGHTS: usize = 1 << 26;
/// Most parameters (weights and biases) a whole architecture may have (2^26, 256 MB of
/// `f32`).
pub const MAX_PARAMETERS: usize = 1 << 26;

/// Input normalization applied by the client before encoding: `x = (pixel/255 - mean) / std`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    /// Mean of the pixel values scaled to [0, 1].
    pub mean: f64,
    /// Standard deviation of the pixel values scaled to [0, 1].
    pub std: f64,
}

impl Normalization {
    /// The model's input for 8-bit pixels: `(pixel/255 - mean) / std`, rounded to `f32`. The
    /// one normalization: the trainer, the plaintext model and the encrypting client all use it.
    pub fn apply(&self, pixels: &[u8]) -> Vec<f32> {
        pixels.iter().map(|&p| ((p as f64 / 255.0 - self.mean) / self.std) as f32).collect()
    }
}

/// A network architecture: input shape, layers, classes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArchSpec {
    /// Name (a built-in name or a user's).
    pub name: String,
    /// Input shape (28×28 grayscale: `1×28×28`).
    pub input: Shape,
    /// Layers in order.
    pub layers: Vec<LayerSpec>,
    /// Input normalization.
    pub normalization: Normalization,
}

impl ArchSpec {
    /// Shapes after each layer (`shapes()[0]` is the input).
    ///
    /// # Errors
    /// [`Error::Architecture`] if a layer does not fit.
    pub fn shapes(&self) -> Result<Vec<Shape>> {
        if self.layers.len() > MAX_LAYERS {
            return Err(Error::Architecture(format!("{} layers, at most {MAX_LAYERS}", self.layers.len())));
        }
        let n = self.normalization;
        if !(n.mean.is_finite() && n.std.is_finite() && n.std > 0.0) {
            return Err(Error::Architecture(format!(
                "normalization mean {} std {}: need finite values, std > 0",
                n.mean, n.std
            )));
        }
        if self.input.checked_len().is_none_or(|n| n == 0) {
            return Err(Error::Architecture(format!("input shape {} is empty or too large", self.input)));
        }
        let mut shapes = vec![self.input];
        let mut parameters = 0usize;
        for (i, l) in self.layers.iter().enumerate() {
            let input = *shapes.last().expect("non-empty");
            let err = |e: String| Error::Architecture(format!("layer {i} ({l:?}): {e}"));
            let s = l.output_shape(input).map_err(|e| err(e.to_string()))?;
            if s.checked_len().is_none() {
                return Err(err(format!("output shape {s} is too large")));
            }
            if l.weights(input).is_none_or(|w| w > MAX_WEIGHTS) {
                return Err(err(format!("more than {MAX_WEIGHTS} weights")));
            }
            parameters = parameters.saturating_add(l.parameters(input, s));
            if parameters > MAX_PARAMETERS {
                return Err(err(format!("the architecture passes {MAX_PARAMETERS} parameters here")));
            }
            if matches!(l, LayerSpec::Poly { coeffs } if coeffs.len() > 16) {
                return Err(err("a polynomial activation of more than 16 coefficients".into()));
            }
            shapes.push(s);
        }
        Ok(shapes)
    }

    /// Number of classes (the last layer's outputs).
    ///
    /// # Errors
    /// [`Error::Architecture`] if the shapes do not infer.
    pub fn classes(&self) -> Result<usize> {
        Ok(self.shapes()?.last().expect("non-empty").len())
    }

    /// Total multiplicative depth.
    pub fn depth(&self) -> usize {
        self.layers.iter().map(LayerSpec::depth).sum()
    }

    /// A built-in architecture by name.
    ///
    /// # Errors
    /// [`Error::UnknownArch`].
    pub fn builtin(name: &str) -> Result<Self> {
        let input = Shape { c: 1, h: 28, w: 28 };
        let normalization = Normalization { mean: 0.1307, std: 0.3081 };
        let layers = match name {
            // TenSEAL/CKKS study, network 1: conv 7×7 stride 3, 4 maps → x² → 256→64 → x² → 64→10.
            "tenseal-cnn1" => vec![
                LayerSpec::Conv2d { out_channels: 4, kernel: 7, stride: 3, padding: 0 },
                LayerSpec::Square,
                LayerSpec::Flatten,
                LayerSpec::Dense { outputs: 64 },
                LayerSpec::Square,
                LayerSpec::Dense { outputs: 10 },
            ],
            // CryptoNets (Gilad-Bachrach et al. 2016): conv 5×5 stride 2, 5 maps on the image
            // padded to 29×29 (13×13 outputs) → x² → 845→100 → x² → 100→10.
            "cryptonets" => vec![
                LayerSpec::Conv2d { out_channels: 5, kernel: 5, stride: 2, padding: 1 },
                LayerSpec::Square,
                LayerSpec::Flatten,
                LayerSpec::Dense { outputs: 100 },
                LayerSpec::Square,
                LayerSpec::Dense { outputs: 10 },
            ],
            // Two convolutions with average pooling and two dense layers.
            "cnn2" => vec![
                LayerSpec::Conv2d { out_channels: 5, kernel: 5, stride: 2, padding: 1 },
                LayerSpec::Square,
                LayerSpec::Conv2d { out_channels: 10, kernel: 3, stride: 1, padding: 1 },
                LayerSpec::AvgPool2d { kernel: 2, stride: 2 },
                LayerSpec::Square,
                LayerSpec::Flatten,
                LayerSpec::Dense { outputs: 64 },
                LayerSpec::Square,
                LayerSpec::Dense { outputs: 10 },
            ],
            // CryptoNN's MLP (Xu–Joshi–Li 2019): 784 → 128 → ReLU → 10, on pixels in [0, 1].
            "mlp" => vec![
                LayerSpec::Flatten,
                LayerSpec::Dense { outputs: 128 },
                LayerSpec::Relu,
                LayerSpec::Dense { outputs: 10 },
            ],
            // LeNet-5 (LeCun et al. 1998) as CryptoNN trains it, on pixels in [0, 1]: conv 5×5
            // padding 2, 6 maps → ReLU → 2×2 average pooling → conv 5×5, 16 maps → ReLU →
            // pooling → 400 → 120 → ReLU → 84 → ReLU → 10.
            "lenet5" => vec![
                LayerSpec::Conv2d { out_channels: 6, kernel: 5, stride: 1, padding: 2 },
                LayerSpec::Relu,
                LayerSpec::AvgPool2d { kernel: 2, stride: 2 },
                LayerSpec::Conv2d { out_channels: 16, kernel: 5, stride: 1, padding: 0 },
                LayerSpec::Relu,
                LayerSpec::AvgPool2d { kernel: 2, stride: 2 },
                LayerSpec::Flatten,
                LayerSpec::Dense { outputs: 120 },
                LayerSpec::Relu,
                LayerSpec::Dense { outputs: 84 },
                LayerSpec::Relu,
                LayerSpec::Dense { outputs: 10 },
            ],
            other => return Err(Error::UnknownArch(other.to_string())),
        };
        // CryptoNN's networks take pixels in [0, 1] (the FE encoding's inputs).
        let normalization =
            if matches!(name, "mlp" | "lenet5") { Normalization { mean: 0.0, std: 1.0 } } else { normalization };
        Ok(Self { name: name.to_string(), input, layers, normalization })
    }

    /// The geometry of layer `i` if it is a convolution.
    ///
    /// # Errors
    /// [`Error::Architecture`] if the shapes do not infer.
    pub fn conv_geom(&self, i: usize) -> Result<Option<ConvGeom>> {
        let shapes = self.shapes()?;
        Ok(match self.layers.get(i) {
            Some(LayerSpec::Conv2d { kernel, stride, padding, .. }) => Some(ConvGeom {
                input: shapes[i],
                output: shapes[i + 1],
                kernel: *kernel,
                stride: *stride,
                padding: *padding,
            }),
            _ => None,
        })
    }

    /// The same architecture with every activation (ReLU, square, polynomial) replaced by
    /// `activation`.
    pub fn with_activation(mut self, activation: LayerSpec) -> Self {
        for l in &mut self.layers {
            if matches!(l, LayerSpec::Relu | LayerSpec::Square | LayerSpec::Poly { .. } | LayerSpec::ReluPoly { .. }) {
                *l = activation.clone();
            }
        }
        self
    }

    /// Names of the built-in architectures.
    pub const BUILTIN: [&'static str; 5] = ["tenseal-cnn1", "cryptonets", "cnn2", "mlp", "lenet5"];
}
