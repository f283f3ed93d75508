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
//! A convolutional first layer (LeNet-5) is the same with im2col (`../shared/CRYPTONN.md`),
//! on the same per-example ciphertexts: step 1's keys are one per filter and output position,
//! each holding the filter's `[bias | weights]` at the pixels its window reads (26 non-zero
//! entries of `1 + inputs`); step 5 sums, per filter and kernel entry, each example's deltas
//! placed at the pixels that entry reads ([`FirstLayerProducts::summed_products`]), and the
//! bias gradient `Σ δ1` needs no data.
//!
//! Only the products (and, with encrypted labels, the output deltas) see the data: the loop
//! never reads pixels or labels.

use crate::arch::LayerSpec;
use crate::error::{Error, Result};
use crate::layers::{ConvGeom, Params};
use crate::model::Model;
use crate::train::Adam;
use blindfold_fe::FixedPoint;
use ndarray::{Array2, Array3, Axis};
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

    /// `Σ_e ⟨x̂_e, K[o, e, ·]⟩` per output `o`: one key per output and example, only the sum
    /// over the batch returned (a convolutional first layer's gradient, whose keys are the
    /// example's deltas placed where each kernel entry reads). `keys` is `(outputs, examples,
    /// 1 + inputs)`; returns `outputs` values.
    ///
    /// # Errors
    /// As [`FirstLayerProducts::forward`].
    fn summed_products(&mut self, batch: usize, keys: &Array3<i64>) -> Result<Vec<i64>>;

    /// Hardened mode: `Ŷᵀ·Kᵀ` for the batch's one-hot labels `Ŷ` (0/1, `(examples,
    /// classes)`) and `keys` `(rows, examples)`; returns `(classes, rows)`. The labels'
    /// sums over the batch, never one example's label. All-zero key rows give zero columns.
    ///
    /// # Errors
    /// As [`FirstLayerProducts::forward`].
    fn label_sums(&mut self, batch: usize, keys: &Array2<i64>) -> Result<Array2<i64>>;

    /// Hardened mode: `K·Û` for `keys` `(outputs, (1 + classes)·B)` and the batch's
    /// [`augmented_columns`] `Û` (`B` the largest batch size); returns `(outputs, 1 + inputs)`.
    /// All-zero key rows give zero rows.
    ///
    /// # Errors
    /// As [`FirstLayerProducts::forward`].
    fn gradient_with_labels(&mut self, batch: usize, keys: &Array2<i64>) -> Result<Array2<i64>>;
}

/// The hardened mode's encrypted matrix `Û` (`((1 + classes)·B, 1 + inputs)`) from a batch's
/// encoded inputs `X̂` (`(examples, 1 + inputs)`) and labels: block 0 holds `X̂` (rows beyond
/// the examples zero), block `1 + c` holds `X̂` with the rows of examples not of class `c`
/// zeroed. With it, the first layer's gradient `δ1ᵀ·X̂` for `δ1 = (A − Y)·W2 ∘ M` is one
/// product whose keys hold `(A·W2 ∘ M)ᵀ` (block 0) and `−W2[c, k]·M[·, k]` (block `1 + c`):
/// the label term is summed over the batch inside the product.
///
/// # Errors
/// [`Error::Shape`] for more examples than `batch_size` or one label count off;
/// [`Error::Products`] for a label beyond the classes.
pub fn augmented_columns(x: &Array2<i64>, labels: &[u8], classes: usize, batch_size: usize) -> Result<Array2<i64>> {
    let (examples, width) = x.dim();
    check_dim("labels", (labels.len(), width), (examples, width))?;
    if examples > batch_size {
        return Err(Error::Shape {
            op: "batch",
            expected: format!("≤ {batch_size} examples"),
            actual: examples.to_string(),
        });
    }
    let mut u = Array2::zeros(((1 + classes) * batch_size, width));
    for (e, &l) in labels.iter().enumerate() {
        if l as usize >= classes {
            return Err(Error::Products(format!("label {l} for {classes} classes").into()));
        }
        u.row_mut(e).assign(&x.row(e));
        u.row_mut((1 + l as usize) * batch_size + e).assign(&x.row(e));
    }
    Ok(u)
}

/// Zeroes the rows of `keys` with fewer than `min_nonzero` non-zero entries (hardened mode:
/// such keys would single out a few examples; the authority refuses them); returns which
/// rows were kept.
fn drop_sparse_rows(keys: &mut Array2<i64>, min_nonzero: usize) -> Vec<bool> {
    keys.rows_mut()
        .into_iter()
        .map(|mut row| {
            let keep = row.iter().filter(|&&v| v != 0).count() >= min_nonzero;
            if !keep {
                row.fill(0);
            }
            keep
        })
        .collect()
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

    /// Batches within shards, for several data owners: shard `k`'s examples `0..sizes[k]`
    /// shuffled by `seed` and `k`, in batches of `batch_size`, then one batch of each shard in
    /// turn (shards with batches left) — so every batch holds one shard's examples, as
    /// indices into that shard. Returns the batches and each batch's shard.
    ///
    /// # Panics
    /// If `batch_size` is 0.
    pub fn sharded(sizes: &[usize], batch_size: usize, seed: u64) -> (Self, Vec<usize>) {
        let per_shard: Vec<Vec<Vec<usize>>> = sizes
            .iter()
            .enumerate()
            .map(|(k, &n)| Self::new(n, batch_size, seed ^ (k as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)).batches)
            .collect();
        let (mut batches, mut shards) = (Vec::new(), Vec::new());
        for round in 0..per_shard.iter().map(Vec::len).max().unwrap_or(0) {
            for (k, shard) in per_shard.iter().enumerate() {
                if let Some(b) = shard.get(round) {
                    batches.push(b.clone());
                    shards.push(k);
                }
            }
        }
        (Self { batches, batch_size }, shards)
    }

    /// The same batches with each index mapped through its batch's shard: `shards[b]` is
    /// batch `b`'s shard and `members[k][i]` the example that index `i` of shard `k` is (the
    /// view of whoever holds all the data, such as the plaintext twin).
    ///
    /// # Panics
    /// If a shard or an index is out of range.
    pub fn mapped(&self, shards: &[usize], members: &[Vec<usize>]) -> Self {
        let batches =
            self.batches.iter().zip(shards).map(|(b, &k)| b.iter().map(|&i| members[k][i]).collect()).collect();
        Self { batches, batch_size: self.batch_size }
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
    /// Hardened mode, for a model dense → ReLU → dense: the labels reach the products only
    /// summed over the batch ([`FirstLayerProducts::label_sums`],
    /// [`FirstLayerProducts::gradient_with_labels`]), never as `A − Y`. `Some(k)`: the fewest
    /// non-zero entries of a gradient or label key; a hidden unit whose key is sparser gets no
    /// gradient from that batch.
    pub hardened: Option<usize>,
}

/// The training loop of this module, one epoch at a time.
pub struct Trainer {
    model: Model,
    first: usize,
    adam: Adam,
    cfg: CryptonnConfig,
    rng: ChaCha20Rng,
    epoch: usize,
    batch_size: usize,
    /// Batches skipped as unavailable: (epoch, batch, why).
    skipped: Vec<(usize, usize, String)>,
}

impl Trainer {
    /// A trainer for `model`, whose first layer with parameters must be dense and come after
    /// flatten layers only (CryptoNN's MLP), or be a convolution on the input (LeNet-5).
    ///
    /// # Errors
    /// [`Error::Architecture`] for any other model, and for a convolution in hardened mode.
    pub fn new(model: Model, batches: &FixedBatches, cfg: CryptonnConfig) -> Result<Self> {
        let first = model.layers.iter().position(|l| l.params.is_some());
        let Some(first) = first.filter(|&f| match model.layers[f].spec {
            LayerSpec::Dense { .. } => model.layers[..f].iter().all(|l| matches!(l.spec, LayerSpec::Flatten)),
            LayerSpec::Conv2d { .. } => f == 0,
            _ => false,
        }) else {
            return Err(Error::Architecture(format!(
                "{}: CryptoNN training needs a dense first layer (after flatten only) or a convolution on the input",
                model.spec().name
            )));
        };
        if cfg.hardened.is_some() {
            let rest: Vec<&LayerSpec> = model.layers[first + 1..].iter().map(|l| &l.spec).collect();
            if !matches!(rest.as_slice(), [LayerSpec::Relu, LayerSpec::Dense { .. }]) {
                return Err(Error::Architecture(format!(
                    "{}: hardened CryptoNN training needs dense → ReLU → dense (the label term of deeper \
                     networks cannot be summed over the batch inside one product)",
                    model.spec().name
                )));
            }
        }
        let adam = Adam::new(&model, cfg.epochs * batches.len());
        let rng = ChaCha20Rng::seed_from_u64(cfg.seed);
        Ok(Self { model, first, adam, cfg, rng, epoch: 0, batch_size: batches.batch_size(), skipped: Vec::new() })
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
            match self.step(b, batches.get(b).len(), products) {
                Ok(()) => {}
                Err(Error::Unavailable(why)) => self.skipped.push((self.epoch, b, why)),
                Err(Error::Diverged { loss, .. }) => {
                    return Err(Error::Diverged { epoch: self.epoch, batch: done, loss })
                }
                Err(e) => return Err(e),
            }
            progress(done + 1, order.len());
        }
        Ok(())
    }

    /// The batches skipped so far because their products were unavailable
    /// ([`Error::Unavailable`], e.g. a data owner that went away): (epoch from 1, batch, why).
    pub fn skipped(&self) -> &[(usize, usize, String)] {
        &self.skipped
    }

    /// `m` at the configured fixed-point scale.
    fn encode(&self, m: &Array2<f32>) -> Result<Array2<i64>> {
        let enc = self.cfg.encoding;
        let v = m.iter().map(|&x| enc.encode(f64::from(x))).collect::<std::result::Result<Vec<_>, _>>();
        let v = v.map_err(|e| Error::Encoding(e.to_string()))?;
        Ok(Array2::from_shape_vec(m.raw_dim(), v).expect("same shape"))
    }

    fn step(&mut self, batch: usize, examples: usize, products: &mut impl FirstLayerProducts) -> Result<()> {
        let scale = self.cfg.encoding.scale() as f64;
        for l in self.model.layers.iter_mut() {
            l.zero_grads();
        }
        let layer = &self.model.layers[self.first];
        let (conv, p) = (layer.conv_geom(), layer.params.as_ref().expect("first layer has parameters"));
        let (outputs, inputs) = p.weight.dim();
        let bias_and_weight = ndarray::concatenate(Axis(1), &[p.bias.view().insert_axis(Axis(1)), p.weight.view()])
            .expect("one bias per row");
        let bias_and_weight = self.encode(&bias_and_weight)?;
        let (z, width) = match &conv {
            Some(g) => (products.forward(batch, &conv_forward_keys(g, &bias_and_weight))?, outputs * g.positions()),
            None => (products.forward(batch, &bias_and_weight)?, outputs),
        };
        check_dim("forward product", z.dim(), (examples, width))?;
        let z = z.mapv(|v| (v as f64 / (scale * scale)) as f32);
        let grad = match (self.cfg.hardened, conv) {
            (Some(min_nonzero), _) => self.backward_hardened(batch, z, products, min_nonzero)?,
            (None, None) => {
                let d = self.deltas(batch, z, products)?;
                products.gradient(batch, &self.encode(&d.reversed_axes())?)?
            }
            (None, Some(g)) => {
                let d = self.deltas(batch, z, products)?;
                let d = self.encode(&d)?;
                conv_gradient(&g, batch, &d, self.cfg.encoding.scale() as i64, products)?
            }
        };
        check_dim("gradient product", grad.dim(), (outputs, inputs + 1))?;
        let unscale = |v: i64| (v as f64 / (scale * scale) / examples as f64) as f32;
        let grads = self.model.layers[self.first].grads.as_mut().expect("first layer has gradients");
        grads.bias = grad.column(0).mapv(unscale);
        grads.weight = Array2::from_shape_fn((outputs, inputs), |(o, i)| unscale(grad[[o, i + 1]]));
        self.adam.step(&mut self.model, self.cfg.learning_rate, self.cfg.clip_norm);
        Ok(())
    }

    /// The rest of the network forward from the first layer's outputs `z`, softmax.
    fn probabilities(&mut self, batch: usize, z: Array2<f32>) -> Result<(Array2<f32>, Array2<f32>)> {
        let mut h = z;
        let mut hidden = None;
        for (i, l) in self.model.layers[self.first + 1..].iter_mut().enumerate() {
            h = l.forward(&h, true);
            if i == 0 {
                hidden = Some(h.clone());
            }
        }
        let probabilities = softmax(&h);
        if probabilities.iter().any(|v| !v.is_finite()) {
            return Err(Error::Diverged { epoch: self.epoch, batch, loss: f32::NAN });
        }
        Ok((probabilities, hidden.unwrap_or(h)))
    }

    /// CryptoNN's backward pass to the first layer: `Â − Ŷ` from the products, backward
    /// through the rest in floating point; returns `δ1` per example `(examples, outputs)`
    /// (the mean's `1/examples` is applied after the gradient product, where it is exact).
    fn deltas(&mut self, batch: usize, z: Array2<f32>, products: &mut impl FirstLayerProducts) -> Result<Array2<f32>> {
        let scale = self.cfg.encoding.scale() as f64;
        let examples = z.nrows();
        let (probabilities, _) = self.probabilities(batch, z)?;
        let a = self.encode(&probabilities)?;
        let d = products.output_delta(batch, &a)?;
        check_dim("output delta", d.dim(), a.dim())?;
        // Mean loss over the batch: each example's delta / examples.
        let mut g = d.mapv(|v| (v as f64 / scale / examples as f64) as f32);
        for l in self.model.layers[self.first + 1..].iter_mut().rev() {
            g = l.backward(&g);
        }
        Ok(g.mapv(|v| v * examples as f32))
    }

    /// The hardened backward pass for dense → ReLU → dense, linear in the labels: with
    /// `H` the hidden activations, `M` their ReLU mask and `W2` the last layer,
    /// `∂W2 = AᵀH − YᵀH`, `∂b2 = Σ A − Σ Y` (the label parts from
    /// [`FirstLayerProducts::label_sums`] with keys `[1 | Ĥ]ᵀ`) and `δ1 = A·W2 ∘ M − Y·W2 ∘ M`,
    /// whose gradient `δ1ᵀ·X̂` is one [`FirstLayerProducts::gradient_with_labels`] product.
    /// Keys with fewer than `min_nonzero` non-zero entries are dropped in both products (that
    /// hidden unit's gradients are zero for the batch).
    fn backward_hardened(
        &mut self,
        batch: usize,
        z: Array2<f32>,
        products: &mut impl FirstLayerProducts,
        min_nonzero: usize,
    ) -> Result<Array2<i64>> {
        let scale = self.cfg.encoding.scale() as f64;
        let examples = z.nrows();
        let mask = z.mapv(|v| if v > 0.0 { 1i64 } else { 0 });
        let (a, h) = self.probabilities(batch, z)?;
        let last = self.first + 2;
        let w2 = self.model.layers[last].params.as_ref().expect("dense layer").weight.clone();
        // Label sums over the batch: [1 | Ĥ]ᵀ as keys, (1 + hidden) × examples.
        let h_hat = self.encode(&h)?;
        let ones = Array2::from_elem((examples, 1), self.cfg.encoding.scale() as i64);
        let mut sum_keys = ndarray::concatenate(Axis(1), &[ones.view(), h_hat.view()]).expect("rows").reversed_axes();
        let kept = drop_sparse_rows(&mut sum_keys, min_nonzero);
        let y_sums = products.label_sums(batch, &sum_keys)?;
        check_dim("label sums", y_sums.dim(), (a.ncols(), sum_keys.nrows()))?;
        // AᵀH with the same quantised H; both at scale, then over the examples.
        let a_sums = a.t().dot(&sum_keys.t().mapv(|v| v as f32));
        let grads = self.model.layers[last].grads.as_mut().expect("dense layer has gradients");
        let g = Array2::from_shape_fn(y_sums.dim(), |(c, r)| {
            if kept[r] {
                ((f64::from(a_sums[[c, r]]) - y_sums[[c, r]] as f64) / scale / examples as f64) as f32
            } else {
                0.0
            }
        });
        grads.bias = g.column(0).to_owned();
        grads.weight = Array2::from_shape_fn((g.nrows(), g.ncols() - 1), |(c, k)| g[[c, k + 1]]);
        // δ1's keys: (A·W2 ∘ M)ᵀ in block 0, −Ŵ2[c, k]·M[·, k] in block 1 + c.
        let batch_size = self.batch_size;
        let known = self.encode(&(a.dot(&w2) * mask.mapv(|m| m as f32)).reversed_axes())?;
        let w2_hat = self.encode(&w2)?;
        let (classes, hidden) = w2_hat.dim();
        let mut keys = Array2::zeros((hidden, (1 + classes) * batch_size));
        for k in 0..hidden {
            for e in 0..examples {
                keys[[k, e]] = known[[k, e]];
                for c in 0..classes {
                    keys[[k, (1 + c) * batch_size + e]] = -w2_hat[[c, k]] * mask[[e, k]];
                }
            }
        }
        drop_sparse_rows(&mut keys, min_nonzero);
        products.gradient_with_labels(batch, &keys)
    }
}

/// The forward keys of a convolutional first layer: `bias_and_weight` is `(filters, 1 +
/// in_channels·k²)`; row `f·positions + p` of the result (`(filters·positions, 1 + inputs)`)
/// holds filter `f`'s bias at 0 and its weight `j` at `1 + geom.source(p, j)`, so the
/// products are the layer's outputs in its `(examples, filters·positions)` layout.
fn conv_forward_keys(geom: &ConvGeom, bias_and_weight: &Array2<i64>) -> Array2<i64> {
    let positions = geom.positions();
    let mut keys = Array2::zeros((bias_and_weight.nrows() * positions, 1 + geom.input.len()));
    for (f, w) in bias_and_weight.rows().into_iter().enumerate() {
        for p in 0..positions {
            let mut key = keys.row_mut(f * positions + p);
            key[0] = w[0];
            for j in 0..geom.cols() {
                if let Some(src) = geom.source(p, j) {
                    key[1 + src] = w[1 + j];
                }
            }
        }
    }
    keys
}

/// A convolutional first layer's gradient `(filters, 1 + cols)` from the deltas `δ̂`
/// `(examples, filters·positions)` at `scale`: the weights' column `1 + j` from
/// [`FirstLayerProducts::summed_products`] with keys `K[(f, j), e, 1 + source(p, j)] =
/// δ̂[e, f·positions + p]`, the bias column `Σ_e Σ_p δ̂·scale` in the clear (it reads no data).
fn conv_gradient(
    geom: &ConvGeom,
    batch: usize,
    deltas: &Array2<i64>,
    scale: i64,
    products: &mut impl FirstLayerProducts,
) -> Result<Array2<i64>> {
    let (examples, positions, cols) = (deltas.nrows(), geom.positions(), geom.cols());
    let filters = deltas.ncols() / positions;
    let mut keys = Array3::zeros((filters * cols, examples, 1 + geom.input.len()));
    for f in 0..filters {
        for j in 0..cols {
            for e in 0..examples {
                for p in 0..positions {
                    if let Some(src) = geom.source(p, j) {
                        keys[[f * cols + j, e, 1 + src]] = deltas[[e, f * positions + p]];
                    }
                }
            }
        }
    }
    let sums = products.summed_products(batch, &keys)?;
    check_dim("summed products", (sums.len(), 1), (filters * cols, 1))?;
    Ok(Array2::from_shape_fn((filters, 1 + cols), |(f, c)| match c {
        0 => (0..positions).map(|p| deltas.column(f * positions + p).sum()).sum::<i64>() * scale,
        c => sums[f * cols + c - 1],
    }))
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
            return Err(Error::Products(format!("label {l} for {} classes", d.ncols()).into()));
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
    /// Batches to report unavailable (those the FE run skipped), so the twin skips them too.
    unavailable: std::collections::HashSet<usize>,
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
        Self { data, batches, encoding, bound, classes, unavailable: Default::default() }
    }

    /// Reports `batches` unavailable from now on (the batches an FE run skipped this epoch),
    /// replacing the previous set.
    pub fn set_unavailable(&mut self, batches: impl IntoIterator<Item = usize>) {
        self.unavailable = batches.into_iter().collect();
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

    fn labels(&self, batch: usize) -> Vec<u8> {
        self.batches.get(batch).iter().map(|&i| self.data.labels[i]).collect()
    }

    fn bounded(&self, m: Array2<i64>) -> Result<Array2<i64>> {
        match m.iter().find(|v| v.unsigned_abs() > self.bound) {
            Some(v) => {
                Err(Error::Products(format!("a product is {v}, beyond the discrete-log bound ±{}", self.bound).into()))
            }
            None => Ok(m),
        }
    }
}

impl FirstLayerProducts for PlainProducts<'_> {
    fn forward(&mut self, batch: usize, weights: &Array2<i64>) -> Result<Array2<i64>> {
        if self.unavailable.contains(&batch) {
            return Err(Error::Unavailable(format!("batch {batch} was skipped by the run this twin follows")));
        }
        let x = self.inputs(batch)?;
        // Over each key's non-zero entries (a convolution's keys have 26 of 785).
        let mut z = Array2::zeros((x.nrows(), weights.nrows()));
        for (k, w) in weights.rows().into_iter().enumerate() {
            let nonzero: Vec<(usize, i64)> = w.iter().copied().enumerate().filter(|&(_, v)| v != 0).collect();
            for (e, row) in x.rows().into_iter().enumerate() {
                z[[e, k]] = nonzero.iter().map(|&(i, v)| row[i] * v).sum();
            }
        }
        self.bounded(z)
    }

    fn summed_products(&mut self, batch: usize, keys: &Array3<i64>) -> Result<Vec<i64>> {
        let x = self.inputs(batch)?;
        let (outputs, examples, width) = keys.dim();
        check_dim("summed-product keys", (examples, width), x.dim())?;
        let sums = Array2::from_shape_fn((outputs, 1), |(o, _)| {
            let k = keys.index_axis(Axis(0), o);
            (0..examples).map(|e| k.row(e).dot(&x.row(e))).sum()
        });
        Ok(self.bounded(sums)?.column(0).to_vec())
    }

    fn gradient(&mut self, batch: usize, deltas: &Array2<i64>) -> Result<Array2<i64>> {
        let x = self.inputs(batch)?;
        self.bounded(deltas.dot(&x))
    }

    fn output_delta(&mut self, batch: usize, probabilities: &Array2<i64>) -> Result<Array2<i64>> {
        check_dim("probabilities", probabilities.dim(), (probabilities.nrows(), self.classes))?;
        subtract_labels(probabilities, &self.labels(batch), self.encoding)
    }

    fn label_sums(&mut self, batch: usize, keys: &Array2<i64>) -> Result<Array2<i64>> {
        let labels = self.labels(batch);
        check_dim("label-sum keys", (keys.nrows(), labels.len()), keys.dim())?;
        let onehot = Array2::from_shape_fn((labels.len(), self.classes), |(e, c)| i64::from(labels[e] as usize == c));
        self.bounded(keys.dot(&onehot).reversed_axes())
    }

    fn gradient_with_labels(&mut self, batch: usize, keys: &Array2<i64>) -> Result<Array2<i64>> {
        let u = augmented_columns(&self.inputs(batch)?, &self.labels(batch), self.classes, self.batches.batch_size())?;
        check_dim("gradient keys", (keys.nrows(), u.nrows()), keys.dim())?;
        self.bounded(keys.dot(&u))
    }
}
