//! Models: an architecture with its parameters, inference, and safetensors model files.

use crate::arch::{ArchSpec, LayerSpec};
use crate::error::{Error, Result};
use crate::layers::{Layer, Params};
use ndarray::{Array1, Array2};
use rand_core::{Rng, SeedableRng};
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::path::Path;

/// Version of the model file format (stored in the safetensors metadata).
pub const FORMAT_VERSION: &str = "1";

/// A network: its architecture and the parameters of each linear layer.
#[derive(Clone, Debug)]
pub struct Model {
    spec: ArchSpec,
    pub(crate) layers: Vec<Layer>,
}

/// What a model file holds besides the weights.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelFile {
    /// Format version.
    pub format_version: String,
    /// The architecture.
    pub arch: ArchSpec,
    /// Free-form training provenance (dataset, epochs, accuracy).
    pub provenance: HashMap<String, String>,
}

impl Model {
    /// A model with parameters drawn uniformly from `±1/sqrt(fan_in)` (PyTorch's default),
    /// biases zero.
    ///
    /// # Errors
    /// [`Error::Architecture`] if the layers do not fit together.
    pub fn init<R: Rng + ?Sized>(spec: ArchSpec, rng: &mut R) -> Result<Self> {
        let shapes = spec.shapes()?;
        let layers = spec
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let (inp, out) = (shapes[i], shapes[i + 1]);
                let fan_in = l.fan_in(inp).unwrap_or(0);
                let params = (fan_in > 0).then(|| {
                    let bound = 1.0 / (fan_in as f32).sqrt();
                    let mut uniform = || ((rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0) * bound;
                    Params {
                        weight: Array2::from_shape_simple_fn((out.c, fan_in), &mut uniform),
                        bias: Array1::zeros(out.c),
                    }
                });
                Layer::new(l.clone(), inp, out, params)
            })
            .collect();
        Ok(Self { spec, layers })
    }

    /// A model from an architecture and the parameters of each of its layers (`params[i]` for
    /// layer `i`: `Some` exactly for convolutions and dense layers, with the shapes
    /// [`Params`] documents), e.g. weights imported from another framework.
    ///
    /// # Errors
    /// [`Error::Architecture`] if the layers do not fit together, a layer's parameters are
    /// missing, unexpected or of the wrong shape, or a value is not finite.
    pub fn from_parameters(spec: ArchSpec, params: Vec<Option<Params>>) -> Result<Self> {
        let shapes = spec.shapes()?;
        if params.len() != spec.layers.len() {
            return Err(Error::Architecture(format!(
                "{} parameter entries for {} layers",
                params.len(),
                spec.layers.len()
            )));
        }
        let layers = spec
            .layers
            .iter()
            .zip(params)
            .enumerate()
            .map(|(i, (l, p))| {
                let (inp, out) = (shapes[i], shapes[i + 1]);
                let err = |m: String| Error::Architecture(format!("layer {i} ({l:?}): {m}"));
                match (l.fan_in(inp), &p) {
                    (None, None) => {}
                    (Some(fan_in), Some(p)) => {
                        if p.weight.dim() != (out.c, fan_in) || p.bias.len() != out.c {
                            return Err(err(format!(
                                "weight {:?} and bias {}, the layer needs ({}, {fan_in}) and {}",
                                p.weight.dim(),
                                p.bias.len(),
                                out.c,
                                out.c
                            )));
                        }
                        if p.weight.iter().chain(p.bias.iter()).any(|v| !v.is_finite()) {
                            return Err(err("a parameter is not finite".into()));
                        }
                    }
                    (Some(_), None) => return Err(err("parameters missing".into())),
                    (None, Some(_)) => return Err(err("the layer has no parameters".into())),
                }
                Ok(Layer::new(l.clone(), inp, out, p))
            })
            .collect::<Result<_>>()?;
        Ok(Self { spec, layers })
    }

    /// The architecture.
    pub fn spec(&self) -> &ArchSpec {
        &self.spec
    }

    /// Parameters of layer `i` (`None` for layers without parameters).
    pub fn params(&self, i: usize) -> Option<&Params> {
        self.layers.get(i).and_then(|l| l.params.as_ref())
    }

    /// Subtracts, from the last layer's weights and bias, their mean over the output classes,
    /// so that the logits of every input sum to zero. Softmax and argmax are unchanged (the
    /// logits move by the same amount in every class); the logits' range becomes what an
    /// encrypted softmax or vote needs to bound (see `blindfold_protocol::Calibration`).
    ///
    /// Does nothing to a model whose last layer has no parameters.
    pub fn center_logits(&mut self) {
        let Some(p) = self.layers.last_mut().and_then(|l| l.params.as_mut()) else { return };
        let classes = p.weight.nrows() as f32;
        let column_mean = p.weight.sum_axis(ndarray::Axis(0)) / classes;
        p.weight -= &column_mean;
        let bias_mean = p.bias.sum() / classes;
        p.bias -= bias_mean;
    }

    /// Sets every ReLU fit's range to the one observed in training since the last refit (the
    /// smallest and largest pre-activation, widened by 10% of the width on each side) and
    /// forgets the observations. Returns whether any range changed.
    pub fn refit_activations(&mut self) -> bool {
        let mut changed = false;
        for (i, l) in self.layers.iter_mut().enumerate() {
            let Some((lo, hi)) = l.observed.take() else { continue };
            if let LayerSpec::ReluPoly { degree, .. } = l.spec {
                let (lo, hi) = widened(lo, hi);
                l.spec = LayerSpec::ReluPoly { degree, lo, hi };
                self.spec.layers[i] = l.spec.clone();
                changed = true;
            }
        }
        changed
    }

    /// Fits every ReLU fit to the pre-activations of the examples `x` (`(batch, features)`),
    /// layer after layer, so the first epoch trains with polynomials fitted where values fall.
    ///
    /// # Errors
    /// As [`Model::forward`].
    pub fn calibrate_activations(&mut self, x: &Array2<f32>) -> Result<()> {
        if x.ncols() != self.spec.input.len() {
            return Err(Error::Shape {
                op: "calibrate_activations",
                expected: format!("{} input features", self.spec.input.len()),
                actual: x.ncols().to_string(),
            });
        }
        let mut h = x.clone();
        for (i, l) in self.layers.iter_mut().enumerate() {
            if let LayerSpec::ReluPoly { degree, .. } = l.spec {
                let (lo, hi) = h.iter().fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
                let (lo, hi) = widened(lo as f64, hi as f64);
                l.spec = LayerSpec::ReluPoly { degree, lo, hi };
                self.spec.layers[i] = l.spec.clone();
            }
            h = l.forward(&h, false);
        }
        Ok(())
    }

    /// For each polynomial activation, the inputs it sees on `set` against the range it was
    /// fitted on: what a plan reports before anything is encrypted.
    ///
    /// # Errors
    /// As [`Model::forward`].
    pub fn activation_ranges(&mut self, set: &blindfold_data::LabeledImages) -> Result<Vec<ActivationRange>> {
        let mut out: Vec<ActivationRange> = Vec::new();
        for start in (0..set.len()).step_by(500) {
            let end = (start + 500).min(set.len());
            let mut h = Array2::<f32>::zeros((end - start, self.spec.input.len()));
            for (r, i) in (start..end).enumerate() {
                for (j, v) in self.normalize(set.images.image(i)).into_iter().enumerate() {
                    h[[r, j]] = v;
                }
            }
            let mut k = 0;
            for (i, l) in self.layers.iter_mut().enumerate() {
                if let LayerSpec::ReluPoly { lo, hi, .. } = l.spec {
                    if out.len() <= k {
                        out.push(ActivationRange { layer: i, lo, hi, min: f64::MAX, max: f64::MIN, outside: 0.0 });
                    }
                    let r = &mut out[k];
                    for &v in h.iter() {
                        let v = v as f64;
                        (r.min, r.max) = (r.min.min(v), r.max.max(v));
                        if v < lo || v > hi {
                            r.outside += 1.0;
                        }
                    }
                    k += 1;
                }
                h = l.forward(&h, false);
            }
        }
        let per_layer: Vec<usize> = {
            let shapes = self.spec.shapes()?;
            out.iter().map(|r| shapes[r.layer].len() * set.len()).collect()
        };
        for (r, n) in out.iter_mut().zip(per_layer) {
            r.outside /= n.max(1) as f64;
        }
        Ok(out)
    }

    /// Normalizes 8-bit pixels into the model's input: `(pixel/255 - mean) / std`.
    pub fn normalize(&self, pixels: &[u8]) -> Vec<f32> {
        self.spec.normalization.apply(pixels)
    }

    /// Logits for a batch `(batch, input features)` → `(batch, classes)`.
    ///
    /// # Errors
    /// [`Error::Shape`] if the input width is not the architecture's input size.
    pub fn forward(&mut self, x: &Array2<f32>) -> Result<Array2<f32>> {
        self.forward_inner(x, false)
    }

    pub(crate) fn forward_inner(&mut self, x: &Array2<f32>, train: bool) -> Result<Array2<f32>> {
        if x.ncols() != self.spec.input.len() {
            return Err(Error::Shape {
                op: "forward",
                expected: format!("{} input features", self.spec.input.len()),
                actual: format!("{}", x.ncols()),
            });
        }
        let mut h = x.clone();
        for l in self.layers.iter_mut() {
            h = l.forward(&h, train);
        }
        Ok(h)
    }

    /// Logits of single examples given as 8-bit images, in batches.
    ///
    /// # Errors
    /// As [`Model::forward`].
    pub fn logits(&mut self, images: &[&[u8]]) -> Result<Array2<f32>> {
        let width = self.spec.input.len();
        let mut x = Array2::<f32>::zeros((images.len(), width));
        for (i, img) in images.iter().enumerate() {
            if img.len() != width {
                return Err(Error::Shape {
                    op: "logits",
                    expected: format!("{width} pixels"),
                    actual: img.len().to_string(),
                });
            }
            for (j, v) in self.normalize(img).into_iter().enumerate() {
                x[[i, j]] = v;
            }
        }
        self.forward(&x)
    }

    /// Accuracy on a labeled set, evaluated in batches of 500.
    ///
    /// # Errors
    /// As [`Model::forward`].
    pub fn accuracy(&mut self, set: &blindfold_data::LabeledImages) -> Result<f64> {
        let mut correct = 0usize;
        for start in (0..set.len()).step_by(500) {
            let end = (start + 500).min(set.len());
            let imgs: Vec<&[u8]> = (start..end).map(|i| set.images.image(i)).collect();
            let logits = self.logits(&imgs)?;
            for (r, i) in (start..end).enumerate() {
                if argmax(logits.row(r).as_slice().expect("row-major")) == set.labels[i] as usize {
                    correct += 1;
                }
            }
        }
        Ok(correct as f64 / set.len().max(1) as f64)
    }

    /// Writes the model as one safetensors file: tensors `layers.{i}.weight` (shape
    /// `(outputs, inputs)`) and `layers.{i}.bias` in f32, and in the metadata
    /// `format_version`, `arch` (JSON) and `provenance` (JSON).
    ///
    /// # Errors
    /// [`Error::ModelFile`] if the file cannot be written.
    pub fn save(&self, path: &Path, provenance: &HashMap<String, String>) -> Result<()> {
        let err = |reason: String| Error::ModelFile { path: path.display().to_string(), reason };
        let mut buffers: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            if let Some(p) = &l.params {
                let w: Vec<u8> = p.weight.iter().flat_map(|v| v.to_le_bytes()).collect();
                let b: Vec<u8> = p.bias.iter().flat_map(|v| v.to_le_bytes()).collect();
                buffers.push((format!("layers.{i}.weight"), p.weight.shape().to_vec(), w));
                buffers.push((format!("layers.{i}.bias"), p.bias.shape().to_vec(), b));
            }
        }
        let views: Vec<(String, TensorView<'_>)> = buffers
            .iter()
            .map(|(n, s, d)| {
                Ok((n.clone(), TensorView::new(Dtype::F32, s.clone(), d).map_err(|e| err(e.to_string()))?))
            })
            .collect::<Result<_>>()?;
        let mut meta = HashMap::new();
        meta.insert("format_version".to_string(), FORMAT_VERSION.to_string());
        meta.insert("arch".to_string(), serde_json::to_string(&self.spec).map_err(|e| err(e.to_string()))?);
        meta.insert("provenance".to_string(), serde_json::to_string(provenance).map_err(|e| err(e.to_string()))?);
        let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| err(e.to_string()))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        }
        std::fs::write(path, bytes).map_err(|e| err(e.to_string()))
    }

    /// Reads a model file written by [`Model::save`], checking the format version, the
    /// architecture and every tensor's name, type, shape and finiteness.
    ///
    /// Untrusted files are safe to read: the file's size is checked against
    /// [`MAX_MODEL_FILE`] before it is read, the architecture is validated with checked
    /// arithmetic and caps ([`ArchSpec::shapes`]), and every tensor's shape is compared with
    /// the architecture before any weight is allocated.
    ///
    /// # Errors
    /// [`Error::ModelFile`] naming the file and what was wrong.
    pub fn load(path: &Path) -> Result<(Self, ModelFile)> {
        let err = |reason: String| Error::ModelFile { path: path.display().to_string(), reason };
        let bytes = read_bounded(path, MAX_MODEL_FILE).map_err(err)?;
        let (_, metadata) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| err(format!("not a safetensors file: {e}")))?;
        let meta = metadata.metadata().clone().ok_or_else(|| err("no metadata (not a blindfold model)".into()))?;
        let version = meta.get("format_version").ok_or_else(|| err("no format_version in the metadata".into()))?;
        if version != FORMAT_VERSION {
            return Err(err(format!("format version {version}, this build reads {FORMAT_VERSION}")));
        }
        let arch: ArchSpec =
            serde_json::from_str(meta.get("arch").ok_or_else(|| err("no arch in the metadata".into()))?)
                .map_err(|e| err(format!("architecture does not parse: {e}")))?;
        let provenance: HashMap<String, String> = meta
            .get("provenance")
            .map(|p| serde_json::from_str(p))
            .transpose()
            .map_err(|e| err(format!("provenance does not parse: {e}")))?
            .unwrap_or_default();
        let tensors = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| err(e.to_string()))?;
        // Shapes first: nothing is allocated for an architecture the tensors do not match.
        let shapes = arch.shapes().map_err(|e| err(e.to_string()))?;
        let mut expected = 0;
        for (i, l) in arch.layers.iter().enumerate() {
            let Some(fan_in) = l.fan_in(shapes[i]) else { continue };
            let outputs = shapes[i + 1].c;
            let (weights, biases) = (vec![outputs, fan_in], vec![outputs]);
            expected += 2;
            for (name, want) in [("weight", weights), ("bias", biases)] {
                let key = format!("layers.{i}.{name}");
                let t = tensors.tensor(&key).map_err(|_| err(format!("missing tensor {key}")))?;
                if t.dtype() != Dtype::F32 {
                    return Err(err(format!("{key} has type {:?}, expected F32", t.dtype())));
                }
                if t.shape() != want.as_slice() {
                    return Err(err(format!("{key} has shape {:?}, the architecture needs {want:?}", t.shape())));
                }
            }
        }
        if tensors.len() != expected {
            return Err(err(format!("{} tensors, the architecture has {expected}", tensors.len())));
        }
        let mut model = Model::init(arch.clone(), &mut rand_chacha::ChaCha20Rng::from_seed([0; 32]))
            .map_err(|e| err(e.to_string()))?;
        for (i, l) in model.layers.iter_mut().enumerate() {
            let Some(p) = l.params.as_mut() else { continue };
            for (name, dst) in [("weight", p.weight.as_slice_mut()), ("bias", p.bias.as_slice_mut())] {
                let dst = dst.expect("contiguous");
                let key = format!("layers.{i}.{name}");
                let t = tensors.tensor(&key).map_err(|_| err(format!("missing tensor {key}")))?;
                for (d, c) in dst.iter_mut().zip(t.data().chunks_exact(4)) {
                    *d = f32::from_le_bytes(c.try_into().expect("4 bytes"));
                    if !d.is_finite() {
                        return Err(err(format!("{key} holds a non-finite value")));
                    }
                }
            }
        }
        let file = ModelFile { format_version: version.clone(), arch, provenance };
        Ok((model, file))
    }
}

/// The range a ReLU fit is fitted on, against the pre-activations seen on a calibration set.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ActivationRange {
    /// Layer index.
    pub layer: usize,
    /// Fitted range, lower end.
    pub lo: f64,
    /// Fitted range, upper end.
    pub hi: f64,
    /// Smallest pre-activation seen.
    pub min: f64,
    /// Largest pre-activation seen.
    pub max: f64,
    /// Fraction of pre-activations outside the fitted range.
    pub outside: f64,
}

impl std::fmt::Display for ActivationRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "layer {}: ReLU fit on [{:.2}, {:.2}], inputs in [{:.2}, {:.2}], {:.3}% outside",
            self.layer,
            self.lo,
            self.hi,
            self.min,
            self.max,
            100.0 * self.outside
        )
    }
}

/// `[lo, hi]` widened by 10% of its width on each side, and made to contain 0 strictly.
fn widened(lo: f64, hi: f64) -> (f64, f64) {
    let w = (hi - lo).max(1e-3);
    ((lo - 0.1 * w).min(-1e-3), (hi + 0.1 * w).max(1e-3))
}

/// Largest model file [`Model::load`] reads: [`crate::arch::MAX_PARAMETERS`] `f32` values and
/// 1 MiB of header.
pub const MAX_MODEL_FILE: u64 = 4 * crate::arch::MAX_PARAMETERS as u64 + (1 << 20);

/// Reads the file at `path` if it holds at most `limit` bytes, checking the size before
/// reading (and reading at most `limit + 1` bytes, should the file grow meanwhile).
///
/// # Errors
/// A message saying what was wrong: the file cannot be read, or it is larger than `limit`.
pub fn read_bounded(path: &Path, limit: u64) -> std::result::Result<Vec<u8>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    if len > limit {
        return Err(format!("{len} bytes, more than the {limit} bytes such a file may have"));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(limit + 1).read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    if bytes.len() as u64 > limit {
        return Err(format!("more than the {limit} bytes such a file may have"));
    }
    Ok(bytes)
}

/// Index of the largest value (first on ties).
pub fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().fold(0, |best, (i, &x)| if x > v[best] { i } else { best })
}
