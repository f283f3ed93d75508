//! Training with the first layer's products computed elsewhere: on functional-encryption
//! ciphertexts by a CryptoNN training server (Xu–Joshi–Li, ICDCS 2019, §IV;
//! `../shared/CRYPTONN.md`), or in the clear by its plaintext twin. Both run this one loop, so
//! the twin trains on exactly the same fixed-point encoding.
//!
//! Per mini-batch, with every quantity fixed-point at `scale` ([`FixedPoint`]):
//! 1. `Ẑ = X̂·Ŵᵀ` ([`FirstLayerProducts::forward`]): `X̂` holds the batch's inputs as rows
//!    `[scale; round(scale·pixel/255)]` (the constant entry carries the bias), `Ŵ` the first
//!    layer's `[bias | weight]` rows; `z = Ẑ / scale²`.
//! 2. The rest of the network forward in floating point, softmax `A`.
//! 3. `Â − Ŷ` ([`FirstLayerProducts::output_delta`]): the output deltas, from the labels the
//!    server either holds or only has encrypted.
//! 4. Backward through the rest in floating point to `δ1 = ∂loss/∂z` per example.
//! 5. `Δ̂·X̂` ([`FirstLayerProducts::gradient`]) with `Δ̂ = round(scale·δ1)ᵀ`: the first
//!    layer's gradient, `/ scale²`.
//! 6. Adam on every layer (as [`crate::train::train`]).
//!
//! Only the products (and, with encrypted labels, the output deltas) see the data: the loop
//! never reads pixels or labels.

use crate::arch::LayerSpec;
use crate::error::{Error, Result};
use crate::layers::Params;
use crate::model::Model;
use crate::train::Adam;
use blindfold_fe::FixedPoint;
use ndarray::{Array2, Axis};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

/// The products that involve training data, for one fixed batch at a time. Integers are
/// fixed-point: inputs and deltas at `scale`, products at `scale²`.
pub trait FirstLayerProducts {
    /// `X̂·Ŵᵀ`: `weights` is `(outputs, 1 + inputs)` (bias column first); returns
    /// `(examples, outputs)`.
    ///
    /// # Errors
    /// Whatever stops the computation (a refused key, a value out of the discrete-log bound).
    fn forward(&mut self, batch: usize, weights: &Array2<i64>) -> Result<Array2<i64>>;

    /// `Δ̂·X̂`: `deltas` is `(outputs, examples)`; returns `(outputs, 1 + inputs)`.
    ///
    /// # Errors
    /// As [`FirstLayerProducts::forward`].
    fn gradient(&mut self, batch: usize, deltas: &Array2<i64>) -> Result<Array2<i64>>;

    /// `Â − Ŷ` for the batch's one-hot labels `Ŷ` at `scale`: `probabilities` is
    /// `(examples, classes)`.
    ///
    /// # Errors
    /// As [`FirstLayerProducts::forward`].
    fn output_delta(&mut self, batch: usize, probabilities: &Array2<i64>) -> Result<Array2<i64>>;
}

/// The training set cut once into fixed mini-batches (CryptoNN encrypts each batch once;
/// epochs shuffle the order of the batches, not their contents).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FixedBatches {
    batches: Vec<Vec<usize>>,
    batch_size: usize,
}

impl FixedBatches {
    /// `n` examples shuffled by `seed`, in batches of `batch_size` (the last may be shorter).
    ///
    /// # Panics
    /// If `batch_size` is 0.
    pub fn new(n: usize, batch_size: usize, seed: u64) -> Self {
        assert!(batch_size > 0, "batch size 0");
        let mut order: Vec<usize> = (0..n).collect();
        shuffle(&mut order, &mut ChaCha20Rng::seed_from_u64(seed));
        Self { batches: order.chunks(batch_size).map(<[usize]>::to_vec).collect(), batch_size }
    }

    /// Number of batches.
    pub fn len(&self) -> usize {
        self.batches.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// The largest batch's size.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Example indices of batch `i`.
    ///
    /// # Panics
    /// If `i` is out of range.
    pub fn get(&self, i: usize) -> &[usize] {
        &self.batches[i]
    }
}

/// Fisher–Yates.
fn shuffle(v: &mut [usize], rng: &mut ChaCha20Rng) {
    for i in (1..v.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

/// An image as the first layer's encoded input `[scale; round(scale·pixel/255)]`.
///
/// # Errors
/// Never for 8-bit pixels at scales up to `10^15`; [`Error::Encoding`] otherwise.
pub fn encode_input(pixels: &[u8], encoding: FixedPoint) -> Result<Vec<i64>> {
    let mut x = Vec::with_capacity(pixels.len() + 1);
    x.push(encoding.scale() as i64);
    for &p in pixels {
        x.push(encoding.encode(f64::from(p) / 255.0).map_err(|e| Error::Encoding(e.to_string()))?);
    }
    Ok(x)
}

/// Settings of [`Trainer`].
#[derive(Clone, Debug, PartialEq)]
pub struct CryptonnConfig {
    /// Passes over the training set (for the learning-rate schedule).
    pub epochs: usize,
    /// Peak Adam learning rate, cosine-decayed to 1% of it over the run.
    pub learning_rate: f32,
    /// Largest global gradient norm.
    pub clip_norm: f32,
    /// Fixed-point encoding of inputs, weights and deltas.
    pub encoding: FixedPoint,
    /// Seed of the batch order.
    pub seed: u64,
}

/// The training loop of this module, one epoch at a time.
pub struct Trainer {
    model: Model,
    first: usize,
    adam: Adam,
    cfg: CryptonnConfig,
    rng: ChaCha20Rng,
    epoch: usize,
}

impl Trainer {
    /// A trainer for `model`, whose first layer with parameters must be dense and come after
    /// flatten layers only (CryptoNN's MLP).
    ///
    /// # Errors
    /// [`Error::Architecture`] for any other model.
    pub fn new(model: Model, batches: &FixedBatches, cfg: CryptonnConfig) -> Result<Self> {
        let first = model.layers.iter().position(|l| l.params.is_some());
        let Some(first) = first.filter(|&f| {
            matches!(model.layers[f].spec, LayerSpec::Dense { .. })
                && model.layers[..f].iter().all(|l| matches!(l.spec, LayerSpec::Flatten))
        }) else {
            return Err(Error::Architecture(format!(
                "{}: CryptoNN training needs a dense first layer (after flatten only)",
                model.spec().name
            )));
        };
        let adam = Adam::new(&model, cfg.epochs * batches.len());
        let rng = ChaCha20Rng::seed_from_u64(cfg.seed);
        Ok(Self { model, first, adam, cfg, rng, epoch: 0 })
    }

    /// The model as trained so far.
    pub fn model(&mut self) -> &mut Model {
        &mut self.model
    }

    /// The first layer's parameters.
    pub fn first_layer(&self) -> &Params {
        self.model.layers[self.first].params.as_ref().expect("first layer has parameters")
    }

    /// One epoch over `batches` in a fresh random order, with the products from `products`.
    /// `progress(done, total)` is called after every batch.
    ///
    /// # Errors
    /// What `products` returns; [`Error::Diverged`] on a non-finite value.
    pub fn epoch(
        &mut self,
        batches: &FixedBatches,
        products: &mut impl FirstLayerProducts,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<()> {
        self.epoch += 1;
        let mut order: Vec<usize> = (0..batches.len()).collect();
        shuffle(&mut order, &mut self.rng);
        for (done, &b) in order.iter().enumerate() {
            self.step(b, batches.get(b).len(), products).map_err(|e| match e {
                Error::Diverged { loss, .. } => Error::Diverged { epoch: self.epoch, batch: done, loss },
                e => e,
            })?;
            progress(done + 1, order.len());
        }
        Ok(())
    }

    fn step(&mut self, batch: usize, examples: usize, products: &mut impl FirstLayerProducts) -> Result<()> {
        let enc = self.cfg.encoding;
        let scale = enc.scale() as f64;
        let encode = |m: &Array2<f32>| -> Result<Array2<i64>> {
            let v = m.iter().map(|&x| enc.encode(f64::from(x))).collect::<std::result::Result<Vec<_>, _>>();
            let v = v.map_err(|e| Error::Encoding(e.to_string()))?;
            Ok(Array2::from_shape_vec(m.raw_dim(), v).expect("same shape"))
        };
        for l in self.model.layers.iter_mut() {
            l.zero_grads();
        }
        let p = self.model.layers[self.first].params.as_ref().expect("first layer has parameters");
        let (outputs, inputs) = p.weight.dim();
        let bias_and_weight = ndarray::concatenate(Axis(1), &[p.bias.view().insert_axis(Axis(1)), p.weight.view()])
            .expect("one bias per row");
        let z = products.forward(batch, &encode(&bias_and_weight)?)?;
        check_dim("forward product", z.dim(), (examples, outputs))?;
        let mut h = z.mapv(|v| (v as f64 / (scale * scale)) as f32);
        for l in self.model.layers[self.first + 1..].iter_mut() {
            h = l.forward(&h, true);
        }
        let probabilities = softmax(&h);
        if probabilities.iter().any(|v| !v.is_finite()) {
            return Err(Error::Diverged { epoch: self.epoch, batch, loss: f32::NAN });
        }
        let a = encode(&probabilities)?;
        let d = products.output_delta(batch, &a)?;
        check_dim("output delta", d.dim(), a.dim())?;
        // Mean loss over the batch: each example's delta / examples.
        let mut g = d.mapv(|v| (v as f64 / scale / examples as f64) as f32);
        for l in self.model.layers[self.first + 1..].iter_mut().rev() {
            g = l.backward(&g);
        }
        // δ1 per example (the 1/examples is applied after the product, where it is exact).
        let grad = products.gradient(batch, &encode(&g.t().mapv(|v| v * examples as f32))?)?;
        check_dim("gradient product", grad.dim(), (outputs, inputs + 1))?;
        let unscale = |v: i64| (v as f64 / (scale * scale) / examples as f64) as f32;
        let grads = self.model.layers[self.first].grads.as_mut().expect("first layer has gradients");
        grads.bias = grad.column(0).mapv(unscale);
        grads.weight = Array2::from_shape_fn((outputs, inputs), |(o, i)| unscale(grad[[o, i + 1]]));
        self.adam.step(&mut self.model, self.cfg.learning_rate, self.cfg.clip_norm);
        Ok(())
    }
}

fn check_dim(what: &'static str, actual: (usize, usize), expected: (usize, usize)) -> Result<()> {
    if actual == expected {
        Ok(())
    } else {
        Err(Error::Shape { op: what, expected: format!("{expected:?}"), actual: format!("{actual:?}") })
    }
}

/// `Â − Ŷ` from labels in the clear: `probabilities` is `(examples, classes)` at `encoding`'s
/// scale, with one label per example.
///
/// # Errors
/// [`Error::Shape`] for a label count other than the examples; [`Error::Products`] for a
/// label beyond the classes.
pub fn subtract_labels(probabilities: &Array2<i64>, labels: &[u8], encoding: FixedPoint) -> Result<Array2<i64>> {
    check_dim("labels", (labels.len(), probabilities.ncols()), probabilities.dim())?;
    let mut d = probabilities.clone();
    for (r, &l) in labels.iter().enumerate() {
        if l as usize >= d.ncols() {
            return Err(Error::Products(format!("label {l} for {} classes", d.ncols())));
        }
        d[[r, l as usize]] -= encoding.scale() as i64;
    }
    Ok(d)
}

/// Row-wise softmax.
fn softmax(logits: &Array2<f32>) -> Array2<f32> {
    let mut out = logits.clone();
    for mut row in out.axis_iter_mut(Axis(0)) {
        let max = row.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        row.mapv_inplace(|v| (v - max).exp());
        let sum: f32 = row.sum();
        row.mapv_inplace(|v| v / sum);
    }
    out
}

/// The plaintext twin's products: the same integers from the clear data, with the same
/// bound on every product that the discrete logarithm has (a value beyond it is an error in
/// both).
pub struct PlainProducts<'a> {
    data: &'a blindfold_data::LabeledImages,
    batches: &'a FixedBatches,
    encoding: FixedPoint,
    bound: u64,
    classes: usize,
}

impl<'a> PlainProducts<'a> {
    /// Products of `data` cut into `batches`, refusing values beyond `±bound`.
    pub fn new(
        data: &'a blindfold_data::LabeledImages,
        batches: &'a FixedBatches,
        encoding: FixedPoint,
        bound: u64,
        classes: usize,
    ) -> Self {
        Self { data, batches, encoding, bound, classes }
    }

    fn inputs(&self, batch: usize) -> Result<Array2<i64>> {
        let idx = self.batches.get(batch);
        let width = self.data.images.rows * self.data.images.cols + 1;
        let mut x = Vec::with_capacity(idx.len() * width);
        for &i in idx {
            x.extend(encode_input(self.data.images.image(i), self.encoding)?);
        }
        Ok(Array2::from_shape_vec((idx.len(), width), x).expect("rows of equal width"))
    }

    fn bounded(&self, m: Array2<i64>) -> Result<Array2<i64>> {
        match m.iter().find(|v| v.unsigned_abs() > self.bound) {
            Some(v) => Err(Error::Products(format!("a product is {v}, beyond the discrete-log bound ±{}", self.bound))),
            None => Ok(m),
        }
    }
}

impl FirstLayerProducts for PlainProducts<'_> {
    fn forward(&mut self, batch: usize, weights: &Array2<i64>) -> Result<Array2<i64>> {
        let x = self.inputs(batch)?;
        self.bounded(x.dot(&weights.t()))
    }

    fn gradient(&mut self, batch: usize, deltas: &Array2<i64>) -> Result<Array2<i64>> {
        let x = self.inputs(batch)?;
        self.bounded(deltas.dot(&x))
    }

    fn output_delta(&mut self, batch: usize, probabilities: &Array2<i64>) -> Result<Array2<i64>> {
        check_dim("probabilities", probabilities.dim(), (probabilities.nrows(), self.classes))?;
        let labels: Vec<u8> = self.batches.get(batch).iter().map(|&i| self.data.labels[i]).collect();
        subtract_labels(probabilities, &labels, self.encoding)
    }
}
