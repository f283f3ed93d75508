//! Linear maps on slot layouts: sparse matrices between feature vectors, and their encrypted
//! evaluation as one baby-step giant-step sum of plaintext diagonals.
//!
//! A linear stage computes, for one output ciphertext,
//!
//! ```text
//! y = fold( Σ_g rot( Σ_{t,b} d_{g,t,b} ⊙ rot(x_t, b), g ) ) + bias
//! ```
//!
//! over input ciphertexts `x_t`: baby steps `b` (rotations of each input, hoisted: one
//! decomposition per input), giant steps `g` (summed with one shared ModDown), plaintext
//! diagonals `d` (Halevi–Shoup, CRYPTO 2014 and 2018; the giant-step rotation of the
//! diagonals is applied when they are built, so no plaintext is rotated at run time), one
//! rescale, then `fold`: `y += rot(y, s)` for each fold step (summing partial sums that lie
//! in different slots, the "hybrid" diagonal method of GAZELLE, Juvekar et al., USENIX
//! Security 2018, §5.2). Every linear layer — im2col convolution, convolution on packed
//! channels, dense layer — is one such stage; they differ only in where the terms go
//! ([`crate::conv`], [`crate::matvec`]).

use crate::backend::{Backend, Operand};
use crate::error::{CircuitError, Result};
use crate::geometry::{ConvGeom, PoolGeom};
use crate::layout::Layout;
use crate::requirements::{RotationKey, StageCost};
use blindfold_ckks::Encoder;
use std::collections::BTreeMap;

/// A sparse affine map `y = A x + bias` between feature vectors: row `o` lists the
/// `(input feature, weight)` pairs of output `o`.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearMap {
    /// Number of input features.
    pub inputs: usize,
    /// One row per output feature.
    pub rows: Vec<Vec<(u32, f64)>>,
    /// One bias per output feature.
    pub bias: Vec<f64>,
}

impl LinearMap {
    /// A dense layer: `weight` is `outputs × inputs`, row-major.
    ///
    /// # Errors
    /// [`CircuitError::Input`] if the sizes do not agree.
    pub fn dense(inputs: usize, weight: &[f64], bias: &[f64]) -> Result<Self> {
        if inputs == 0 || weight.len() != inputs * bias.len() {
            return Err(CircuitError::Input {
                expected: format!("{} weights for {inputs} inputs and {} outputs", inputs * bias.len(), bias.len()),
                actual: weight.len().to_string(),
            });
        }
        let rows =
            weight.chunks_exact(inputs).map(|r| r.iter().enumerate().map(|(i, &w)| (i as u32, w)).collect()).collect();
        Ok(Self { inputs, rows, bias: bias.to_vec() })
    }

    /// A convolution: `weight` is `out_channels × (in_channels·k²)`, row-major (columns
    /// `c·k² + ky·k + kx`); output `(o, p)` is feature `o·P + p`.
    ///
    /// # Errors
    /// [`CircuitError::Input`] if the sizes do not agree.
    pub fn conv(geom: &ConvGeom, weight: &[f64], bias: &[f64]) -> Result<Self> {
        let (cols, oc) = (geom.cols(), geom.output.c);
        if weight.len() != cols * oc || bias.len() != oc {
            return Err(CircuitError::Input {
                expected: format!("{} weights and {oc} biases", cols * oc),
                actual: format!("{} and {}", weight.len(), bias.len()),
            });
        }
        let positions = geom.positions();
        let mut rows = Vec::with_capacity(oc * positions);
        let mut b = Vec::with_capacity(oc * positions);
        for o in 0..oc {
            for p in 0..positions {
                rows.push(
                    (0..cols).filter_map(|j| geom.source(p, j).map(|s| (s as u32, weight[o * cols + j]))).collect(),
                );
                b.push(bias[o]);
            }
        }
        Ok(Self { inputs: geom.input.len(), rows, bias: b })
    }

    /// The first convolution on im2col features (see [`crate::Packing::Im2col`]): output
    /// `(o, p)` reads entry `i` at position `p`, feature `i·P + p`, or `(i·C + o)·P + p` with
    /// `per_channel`.
    ///
    /// # Errors
    /// As [`LinearMap::conv`].
    pub fn im2col_conv(geom: &ConvGeom, per_channel: bool, weight: &[f64], bias: &[f64]) -> Result<Self> {
        let conv = Self::conv(geom, weight, bias)?;
        let (cols, oc, positions) = (geom.cols(), geom.output.c, geom.positions());
        let channels = if per_channel { oc } else { 1 };
        let rows = (0..oc * positions)
            .map(|r| {
                let (o, p) = (r / positions, r % positions);
                let c = if per_channel { o } else { 0 };
                (0..cols).map(|i| (((i * channels + c) * positions + p) as u32, weight[o * cols + i])).collect()
            })
            .collect();
        Ok(Self { inputs: cols * channels * positions, rows, bias: conv.bias })
    }

    /// Average pooling as a map (every window's mean).
    pub fn avgpool(geom: &PoolGeom) -> Self {
        let (i, o, k) = (geom.input, geom.output, geom.kernel);
        let w = 1.0 / (k * k) as f64;
        let mut rows = Vec::with_capacity(o.len());
        for c in 0..o.c {
            for y in 0..o.h {
                for x in 0..o.w {
                    rows.push(
                        (0..k * k)
                            .map(|r| (i.index(c, y * geom.stride + r / k, x * geom.stride + r % k) as u32, w))
                            .collect(),
                    );
                }
            }
        }
        Self { inputs: i.len(), rows, bias: vec![0.0; o.len()] }
    }

    /// Number of outputs.
    pub fn outputs(&self) -> usize {
        self.rows.len()
    }

    /// `next ∘ self`: `y = N (A x + a) + n`.
    ///
    /// # Errors
    /// [`CircuitError::Input`] if `next` does not take `self`'s outputs.
    pub fn then(&self, next: &LinearMap) -> Result<Self> {
        if next.inputs != self.outputs() {
            return Err(CircuitError::Input {
                expected: format!("a map of {} inputs", self.outputs()),
                actual: next.inputs.to_string(),
            });
        }
        let mut rows = Vec::with_capacity(next.outputs());
        let mut bias = Vec::with_capacity(next.outputs());
        for (row, &nb) in next.rows.iter().zip(&next.bias) {
            let mut acc: BTreeMap<u32, f64> = BTreeMap::new();
            let mut b = nb;
            for &(m, w) in row {
                b += w * self.bias[m as usize];
                for &(f, v) in &self.rows[m as usize] {
                    *acc.entry(f).or_default() += w * v;
                }
            }
            rows.push(acc.into_iter().collect());
            bias.push(b);
        }
        Ok(Self { inputs: self.inputs, rows, bias })
    }

    /// The map with every weight multiplied by `weights` and every bias by `bias`.
    pub fn scaled(mut self, weights: f64, bias: f64) -> Self {
        self.rows.iter_mut().flatten().for_each(|(_, w)| *w *= weights);
        self.bias.iter_mut().for_each(|b| *b *= bias);
        self
    }

    /// The map applied to plain feature values.
    pub fn apply(&self, x: &[f64]) -> Vec<f64> {
        self.rows
            .iter()
            .zip(&self.bias)
            .map(|(r, b)| b + r.iter().map(|&(f, w)| w * x[f as usize]).sum::<f64>())
            .collect()
    }
}

/// Collects the terms of a linear stage on an input layout.
///
/// A term `w·x_f` is added to the partial sum at slot `p` through baby step `b`; the giant
/// step follows from where feature `f` lives (`g ≡ slot(f) − p − b` modulo the input's
/// period), so every term reads the feature it names by construction.
#[derive(Debug)]
pub struct LinearBuilder {
    slots: usize,
    period: usize,
    cts: usize,
    features: Vec<(u32, u32)>,
    diags: BTreeMap<(i64, u32, i64), Vec<f64>>,
    bias: Vec<f64>,
}

impl LinearBuilder {
    /// A builder for a stage reading `input`.
    pub fn new(input: &Layout) -> Self {
        Self {
            slots: input.slots,
            period: input.period,
            cts: input.cts,
            features: input.features.clone(),
            diags: BTreeMap::new(),
            bias: vec![0.0; input.slots],
        }
    }

    /// Adds `w·x_f` to the partial sum at slot `p`, read through baby step `baby`.
    pub fn add(&mut self, p: usize, f: usize, baby: i64, w: f64) {
        let (t, s) = self.features[f];
        let period = self.period as i64;
        let baby = baby.rem_euclid(period);
        let giant = (s as i64 - p as i64 - baby).rem_euclid(period);
        let slots = self.slots;
        let d = self.diags.entry((giant, t, baby)).or_insert_with(|| vec![0.0; slots]);
        d[(p + giant as usize) % slots] += w;
    }

    /// Slot of feature `f` (in `0..period`).
    pub fn slot_of(&self, f: usize) -> usize {
        self.features[f].1 as usize
    }

    /// Adds `v` to the bias at `slot` (added after the fold).
    pub fn add_bias(&mut self, slot: usize, v: f64) {
        self.bias[slot] += v;
    }

    /// The stage: its terms, then `fold` (after the rescale), then the bias, at input level
    /// `level`. `headroom` divides the weights' scale (the output comes out that much below
    /// the input's scale: room for large results at the end of a circuit).
    pub fn finish(self, name: String, level: usize, fold: Vec<i64>, headroom: f64) -> LinearTransform {
        let mut babies = vec![Vec::new(); self.cts];
        let mut giants: Vec<(i64, GiantTerms)> = Vec::new();
        // Structural: a diagonal exists because a term was placed in it, whatever its weights
        // (a client building the circuit from the architecture alone gets the same keys).
        for ((g, t, b), d) in self.diags {
            if !babies[t as usize].contains(&b) {
                babies[t as usize].push(b);
            }
            match giants.last_mut() {
                Some((last, terms)) if *last == g => terms.push((t, b, Operand::new(d))),
                _ => giants.push((g, vec![(t, b, Operand::new(d))])),
            }
        }
        babies.iter_mut().for_each(|b| b.sort_unstable());
        LinearTransform { name, level, babies, giants, fold, bias: Operand::new(self.bias), headroom }
    }
}

/// The terms of one giant step: `(input ciphertext, baby step, diagonal)`.
type GiantTerms = Vec<(u32, i64, Operand)>;

/// One linear stage (see the module documentation): consumes one level.
#[derive(Clone, Debug)]
pub struct LinearTransform {
    name: String,
    level: usize,
    /// Baby steps of each input ciphertext (sorted; 0 needs no rotation).
    babies: Vec<Vec<i64>>,
    /// Giant steps with their terms `(input ciphertext, baby step, diagonal)`.
    giants: Vec<(i64, GiantTerms)>,
    fold: Vec<i64>,
    bias: Operand,
    headroom: f64,
}

impl LinearTransform {
    /// The stage's name (for reports).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Input level.
    pub fn level(&self) -> usize {
        self.level
    }

    /// Number of input ciphertexts.
    pub fn inputs(&self) -> usize {
        self.babies.len()
    }

    /// Rotation keys: baby and giant steps at the input level, fold steps one below.
    pub fn rotation_keys(&self) -> Vec<RotationKey> {
        let at = |steps: &mut dyn Iterator<Item = i64>, level: usize| -> Vec<RotationKey> {
            steps.filter(|&s| s != 0).map(|step| RotationKey { step, level }).collect()
        };
        let mut keys = at(&mut self.babies.iter().flatten().copied(), self.level);
        keys.extend(at(&mut self.giants.iter().map(|(g, _)| *g), self.level));
        keys.extend(at(&mut self.fold.iter().copied(), self.level - 1));
        keys
    }

    /// What the stage costs.
    pub fn cost(&self) -> StageCost {
        let hoisted = self.babies.iter().map(|b| b.iter().filter(|&&s| s != 0).count()).sum();
        let giants = self.giants.iter().filter(|(g, _)| *g != 0).count();
        StageCost {
            name: format!("{} (baby steps {}, giant steps {})", self.name, hoisted, giants),
            levels: 1,
            rotations: giants + self.fold.len(),
            hoisted_rotations: hoisted,
            plain_products: self.giants.iter().map(|(_, t)| t.len()).sum(),
            products: 0,
        }
    }

    /// Encodes the diagonals at the input level and the scale that lands the output on
    /// `scale_in / headroom` after the rescale; returns that scale.
    ///
    /// # Errors
    /// CKKS encoding errors.
    pub fn encode(&mut self, encoder: &Encoder, q: &[u64], scale_in: f64) -> Result<f64> {
        let w_scale = q[self.level] as f64 / self.headroom;
        for (_, terms) in &mut self.giants {
            for (_, _, d) in terms {
                d.encode(encoder, self.level, w_scale)?;
            }
        }
        let out = scale_in * w_scale / q[self.level] as f64;
        self.bias.encode(encoder, self.level - 1, out)?;
        Ok(out)
    }

    /// Evaluates the stage on its input ciphertexts (or twin vectors).
    ///
    /// # Errors
    /// [`CircuitError::Input`] for a wrong number of inputs; backend errors.
    pub fn evaluate<B: Backend>(&self, be: &B, inputs: &[B::Value]) -> Result<B::Value> {
        if inputs.len() != self.babies.len() {
            return Err(CircuitError::Input {
                expected: format!("{} input ciphertexts", self.babies.len()),
                actual: inputs.len().to_string(),
            });
        }
        let rotated: Vec<BTreeMap<i64, B::Value>> = inputs
            .iter()
            .zip(&self.babies)
            .map(|(x, steps)| {
                let steps: Vec<i64> = steps.iter().copied().filter(|&s| s != 0).collect();
                if steps.is_empty() {
                    return Ok(BTreeMap::new());
                }
                Ok(steps.iter().copied().zip(be.rotate_hoisted(x, &steps)?).collect())
            })
            .collect::<Result<_>>()?;
        // Every baby-step value once, then each giant step's terms as indices into them.
        let mut index: BTreeMap<(u32, i64), usize> = BTreeMap::new();
        let mut xs: Vec<&B::Value> = Vec::new();
        for (t, steps) in self.babies.iter().enumerate() {
            for &b in steps {
                index.insert((t as u32, b), xs.len());
                xs.push(if b == 0 { &inputs[t] } else { &rotated[t][&b] });
            }
        }
        let groups: Vec<Vec<(usize, &Operand)>> = self
            .giants
            .iter()
            .map(|(_, terms)| terms.iter().map(|(t, b, d)| (index[&(*t, *b)], d)).collect())
            .collect();
        let mut inners = be.dot_plain_groups(&xs, &groups)?;
        drop(xs);
        drop(rotated);
        let steps: Vec<i64> = self.giants.iter().map(|(g, _)| *g).collect();
        let acc = match (inners.len(), steps.first()) {
            (0, _) => return Err(CircuitError::Layout(format!("{}: no terms", self.name))),
            (1, Some(0)) => inners.pop().expect("one"),
            _ => be.rotate_sum(&inners.iter().collect::<Vec<_>>(), &steps)?,
        };
        let mut acc = be.rescale(acc)?;
        for &s in &self.fold {
            let r = be.rotate(&acc, s)?;
            be.add_assign(&mut acc, &r)?;
        }
        be.add_plain_assign(&mut acc, &self.bias)?;
        Ok(acc)
    }
}
