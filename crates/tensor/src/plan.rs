//! The compiled evaluation plan of a CNN and the client's input layout.

use blindfold_ckks::{
    Ciphertext, Context, Encoder, Error as CkksError, Evaluator, GaloisKeys, Plaintext, RelinearizationKey,
};
use blindfold_nn::{ArchSpec, ConvGeom, LayerSpec, Model};
use std::sync::Arc;

/// Errors of plan compilation and evaluation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// The architecture does not have the supported form.
    #[error("unsupported architecture for single-image encrypted evaluation: {0}")]
    Unsupported(String),
    /// The parameters have fewer levels than the network needs.
    #[error("the network needs multiplicative depth {needed}, the parameters provide {available}")]
    TooDeep {
        /// Depth needed.
        needed: usize,
        /// Depth available.
        available: usize,
    },
    /// The input scale is far from the primes the network's levels consume: every rescale
    /// would then move the scale further off, and the result would be noise.
    #[error(
        "input scale 2^{scale_bits:.1} does not fit these parameters, whose top prime has {prime_bits} bits: \
         encrypt at scale 2^{prime_bits}"
    )]
    Scale {
        /// log2 of the input scale.
        scale_bits: f64,
        /// Bits of the top prime.
        prime_bits: u32,
    },
    /// A layout does not fit in the slots.
    #[error("layout does not fit: {0}")]
    Layout(String),
    /// Wrong number of input ciphertexts or input values.
    #[error("input: expected {expected}, got {actual}")]
    Input {
        /// What was expected.
        expected: String,
        /// What was given.
        actual: String,
    },
    /// A CKKS error.
    #[error(transparent)]
    Ckks(#[from] CkksError),
}

type Result<T> = std::result::Result<T, PlanError>;

/// Factor by which the logits' scale is lowered in the last layer (headroom for large logits).
const OUTPUT_HEADROOM: f64 = 16.0;

/// How the client packs one image: public, derived from the architecture alone (no weights).
///
/// A block of `B` slots (`C·P` rounded up to a power of two) holds, at `c·P + p`, the input
/// value read by one kernel entry at output position `p`, repeated for every channel `c`.
/// Ciphertext `t` holds the blocks of kernel entries `t·m … t·m + m - 1` one after the other
/// (`m = slots / B`), zero elsewhere. The blocks tile the slots, so the folded convolution
/// output repeats with period `B` and the next layer folds over `B` slots, not all of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputLayout {
    /// Geometry of the first (convolution) layer.
    pub geom: ConvGeom,
    /// Kernel entries `K = in_channels·kernel²`.
    pub entries: usize,
    /// Output positions `P`.
    pub positions: usize,
    /// Output channels `C`.
    pub channels: usize,
    /// Block size `B` in slots: `C·P` rounded up to a power of two.
    pub block: usize,
    /// Kernel entries per ciphertext, `m`.
    pub per_ct: usize,
    /// Number of input ciphertexts, `ceil(K / m)`.
    pub num_cts: usize,
    /// Slots per ciphertext.
    pub slots: usize,
}

impl InputLayout {
    /// The layout of `arch`'s first convolution for ciphertexts of `slots` slots.
    ///
    /// # Errors
    /// [`PlanError::Unsupported`] if the first layer is not a convolution,
    /// [`PlanError::Layout`] if one block does not fit in the slots.
    pub fn from_arch(arch: &ArchSpec, slots: usize) -> Result<Self> {
        let geom = arch
            .conv_geom(0)
            .map_err(|e| PlanError::Unsupported(e.to_string()))?
            .ok_or_else(|| PlanError::Unsupported("the first layer must be a convolution".into()))?;
        let entries = geom.input.c * geom.kernel * geom.kernel;
        let positions = geom.output.h * geom.output.w;
        let channels = geom.output.c;
        let used = positions * channels;
        if used > slots {
            return Err(PlanError::Layout(format!(
                "{channels} channels × {positions} positions need {used} slots, ciphertexts have {slots}"
            )));
        }
        // Powers of two: the blocks fold with log2(m) rotations and tile the slots (never fewer
        // blocks per ciphertext than unpadded blocks would give).
        let block = used.next_power_of_two();
        let per_ct = slots / block;
        Ok(Self { geom, entries, positions, channels, block, per_ct, num_cts: entries.div_ceil(per_ct), slots })
    }

    /// Slot vectors of the input ciphertexts for one normalized image (`c·H·W` values in
    /// channel-major order).
    ///
    /// # Errors
    /// [`PlanError::Input`] if the image has the wrong number of values.
    pub fn pack(&self, image: &[f64]) -> Result<Vec<Vec<f64>>> {
        if image.len() != self.geom.input.len() {
            return Err(PlanError::Input {
                expected: format!("{} input values", self.geom.input.len()),
                actual: image.len().to_string(),
            });
        }
        let mut cts = vec![vec![0f64; self.slots]; self.num_cts];
        for i in 0..self.entries {
            let (t, i_sub) = (i / self.per_ct, i % self.per_ct);
            for p in 0..self.positions {
                let v = self.geom.source(p, i).map_or(0.0, |s| image[s]);
                for c in 0..self.channels {
                    cts[t][i_sub * self.block + c * self.positions + p] = v;
                }
            }
        }
        Ok(cts)
    }

    /// Rotation steps that add the `m` blocks into block 0: `B, 2B, 4B, …`.
    fn fold_steps(&self) -> Vec<i64> {
        (0..self.per_ct.ilog2()).map(|t| (self.block << t) as i64).collect()
    }
}

/// Levels, rotations and products of one stage, for reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageCost {
    /// Stage name.
    pub name: String,
    /// Levels consumed.
    pub levels: usize,
    /// Ordinary rotations.
    pub rotations: usize,
    /// Hoisted rotations (sharing one decomposition).
    pub hoisted_rotations: usize,
    /// Plaintext-ciphertext products.
    pub plain_products: usize,
    /// Ciphertext-ciphertext products (each relinearized).
    pub products: usize,
}

/// A plaintext operand kept both as slot values (for the plaintext twin) and encoded.
#[derive(Clone, Debug)]
struct Operand {
    values: Vec<f64>,
    encoded: Plaintext,
}

#[derive(Clone, Debug)]
enum Stage {
    Conv { weights: Vec<Operand>, bias: Operand, fold: Vec<i64> },
    Square,
    Dense { n1: usize, n2: usize, diags: Vec<Option<Operand>>, bias: Operand, fold: Vec<i64>, name: String },
}

/// A compiled encrypted-inference plan for one model and one parameter set.
///
/// Built by the model holder from its plaintext model ([`CnnPlan::compile`]); evaluates
/// with public evaluation keys only ([`CnnPlan::evaluate`]).
pub struct CnnPlan {
    ctx: Arc<Context>,
    arch: ArchSpec,
    layout: InputLayout,
    stages: Vec<Stage>,
    classes: usize,
    input_scale: f64,
}

impl std::fmt::Debug for CnnPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CnnPlan")
            .field("layout", &self.layout)
            .field("stages", &self.costs())
            .field("classes", &self.classes)
            .finish()
    }
}

/// The end of a linear stage: rescale, add the rotations by `fold` (summing blocks), add the
/// bias.
fn fold_and_bias(
    eval: &Evaluator,
    mut acc: Ciphertext,
    fold: &[i64],
    bias: &Plaintext,
    gk: &GaloisKeys,
) -> Result<Ciphertext> {
    eval.rescale_assign(&mut acc)?;
    for &step in fold {
        let r = eval.rotate(&acc, step, gk)?;
        eval.add_assign(&mut acc, &r)?;
    }
    eval.add_plain_assign(&mut acc, bias)?;
    Ok(acc)
}

fn rotate_vec(v: &[f64], k: i64) -> Vec<f64> {
    let n = v.len() as i64;
    (0..n).map(|j| v[(j + k).rem_euclid(n) as usize]).collect()
}

/// `(n1, n2)` with `n1·n2 = n`, `n1 >= n2`, both powers of two.
fn bsgs_split(n: usize) -> (usize, usize) {
    let log = n.trailing_zeros();
    let n1 = 1usize << log.div_ceil(2);
    (n1, n / n1)
}

/// Layout of one dense layer (hybrid diagonal method, Juvekar–Vaikuntanathan–Chandrakasan
/// 2018, §5) on an input vector replicated with period `period` across `slots` slots.
///
/// With `r = slots/period` replicas, the `n_o` outputs (rounded up to a power of two) are
/// split into `groups = min(r, n_o)` groups of `n_g = n_o/groups` rows, replica `g` computing
/// group `g`: `n_g` diagonals instead of `n_o`. The rows of a group are then summed inside
/// their replica by folding (`n_g, 2n_g, …, period/2`); output `o = g·n_g + i` lands at slot
/// `g·period + i`. The last layer keeps one group, so the logits sit in slots `0..classes`.
struct DenseGeom {
    n_o: usize,
    groups: usize,
    n_g: usize,
    fold: Vec<i64>,
    /// Period of the output vector: `n_o` with one group (it repeats), else `slots`.
    next_period: usize,
}

impl DenseGeom {
    fn new(outputs: usize, period: usize, slots: usize, last: bool) -> Result<Self> {
        let n_o = outputs.next_power_of_two();
        let groups = if last { 1 } else { (slots / period).min(n_o) };
        let n_g = n_o / groups;
        if n_g > period {
            return Err(PlanError::Layout(format!("{outputs} outputs exceed the input period {period}")));
        }
        let next_period = if groups > 1 { slots } else { n_o };
        Ok(Self { n_o, groups, n_g, fold: fold_steps(n_g, period), next_period })
    }

    /// Slot of output `o` (within the output period).
    fn output_slot(&self, o: usize, period: usize) -> usize {
        (o / self.n_g) * period + o % self.n_g
    }

    /// Output row computed at slot `j`, if any (`j` in `0..slots`).
    fn row(&self, j: usize, period: usize) -> Option<usize> {
        let g = if self.groups == 1 { 0 } else { j / period };
        (g < self.groups).then_some(g * self.n_g + j % self.n_g)
    }

    /// Output held at slot `j` after the fold, if any: every slot with one group (the output
    /// repeats with period `n_o`), the first `n_g` slots of each replica otherwise.
    fn output_at(&self, j: usize, period: usize) -> Option<usize> {
        if self.groups == 1 {
            Some(j % self.n_o)
        } else {
            self.row(j, period).filter(|_| j % period < self.n_g)
        }
    }
}

/// Checks the supported form `Conv2d, Square, Flatten, (Dense, Square)*, Dense`.
fn check_form(spec: &ArchSpec) -> Result<()> {
    let layers = &spec.layers;
    let ok = layers.len() >= 4
        && matches!(layers[0], LayerSpec::Conv2d { .. })
        && matches!(layers[1], LayerSpec::Square)
        && matches!(layers[2], LayerSpec::Flatten)
        && layers[3..].iter().enumerate().all(|(i, l)| {
            if i % 2 == 0 {
                matches!(l, LayerSpec::Dense { .. })
            } else {
                matches!(l, LayerSpec::Square)
            }
        })
        && matches!(layers.last(), Some(LayerSpec::Dense { .. }));
    if ok {
        Ok(())
    } else {
        Err(PlanError::Unsupported(format!(
            "{}: expected conv2d, square, flatten, then dense layers with square activations",
            spec.name
        )))
    }
}

fn fold_steps(from: usize, to: usize) -> Vec<i64> {
    // Adds the `to/from` blocks of period `from` inside a period `to`: steps from, 2from, …
    let mut steps = Vec::new();
    let mut s = from;
    while s < to {
        steps.push(s as i64);
        s *= 2;
    }
    steps
}

impl CnnPlan {
    /// Compiles `model` for the parameters of `ctx`, with fresh ciphertexts encrypted at scale
    /// `input_scale` at the top level.
    ///
    /// Supported form: `Conv2d, Square, Flatten, (Dense, Square)*, Dense`.
    ///
    /// # Errors
    /// [`PlanError::Unsupported`] for another form, [`PlanError::TooDeep`] if the parameters
    /// have too few levels, [`PlanError::Scale`] for an input scale more than a factor 2 from
    /// the top prime, [`PlanError::Layout`] if a layer does not fit in the slots.
    pub fn compile(model: &Model, ctx: &Arc<Context>, input_scale: f64) -> Result<Self> {
        let spec = model.spec();
        let layers = &spec.layers;
        check_form(spec)?;
        let depth = spec.depth();
        if depth > ctx.max_level() {
            return Err(PlanError::TooDeep { needed: depth, available: ctx.max_level() });
        }
        let top = ctx.params().q()[ctx.max_level()];
        let prime_bits = 64 - top.leading_zeros();
        if (input_scale.log2() - (top as f64).log2()).abs() > 1.0 {
            return Err(PlanError::Scale { scale_bits: input_scale.log2(), prime_bits });
        }
        let slots = ctx.params().slots();
        let layout = InputLayout::from_arch(spec, slots)?;
        let encoder = Encoder::new(ctx);
        let q = |l: usize| ctx.params().q()[l] as f64;
        let mut level = ctx.max_level();
        let mut scale = input_scale;
        let mut stages = Vec::new();

        // Convolution: weights at scale q_level so the rescale restores `scale`.
        let conv = model.params(0).expect("conv params");
        let weights = (0..layout.num_cts)
            .map(|t| {
                let mut v = vec![0f64; slots];
                for i_sub in 0..layout.per_ct {
                    let i = t * layout.per_ct + i_sub;
                    if i >= layout.entries {
                        break;
                    }
                    for c in 0..layout.channels {
                        let w = conv.weight[[c, i]] as f64;
                        for p in 0..layout.positions {
                            v[i_sub * layout.block + c * layout.positions + p] = w;
                        }
                    }
                }
                let encoded = encoder.encode_real(&v, level, q(level))?;
                Ok(Operand { values: v, encoded })
            })
            .collect::<Result<Vec<_>>>()?;
        scale = scale * q(level) / q(level);
        level -= 1;
        let mut bias_v = vec![0f64; slots];
        for blk in 0..layout.per_ct {
            for c in 0..layout.channels {
                for p in 0..layout.positions {
                    bias_v[blk * layout.block + c * layout.positions + p] = conv.bias[c] as f64;
                }
            }
        }
        let bias = Operand { encoded: encoder.encode_real(&bias_v, level, scale)?, values: bias_v };
        stages.push(Stage::Conv { weights, bias, fold: layout.fold_steps() });

        // Square.
        stages.push(Stage::Square);
        scale = scale * scale / q(level);
        level -= 1;

        // Dense layers (with squares between them).
        // The folded convolution output repeats with period B (every block holds the full sum).
        let mut period = layout.block;
        let mut in_features = layout.channels * layout.positions;
        // Slot (within the period) of each input feature: the flattened conv output in order.
        let mut feature_slot: Vec<usize> = (0..in_features).collect();
        for (li, l) in layers.iter().enumerate().skip(3) {
            match l {
                LayerSpec::Square => {
                    stages.push(Stage::Square);
                    scale = scale * scale / q(level);
                    level -= 1;
                }
                LayerSpec::Dense { outputs } => {
                    let p = model.params(li).expect("dense params");
                    let last = li == layers.len() - 1;
                    let geom = DenseGeom::new(*outputs, period, slots, last)?;
                    let mut slot_feature = vec![usize::MAX; period];
                    for (f, &s) in feature_slot.iter().enumerate() {
                        slot_feature[s] = f;
                    }
                    // Weight at slot j of diagonal d: row of the slot's group, column of the
                    // feature at slot j + d.
                    let m = |j: usize, d: usize| -> f64 {
                        match (geom.row(j, period), slot_feature[(j + d) % period]) {
                            (Some(o), f) if o < *outputs && f != usize::MAX => p.weight[[o, f]] as f64,
                            _ => 0.0,
                        }
                    };
                    let (n1, n2) = bsgs_split(geom.n_g);
                    // The last layer's weights are encoded 2^4 below the dropped prime, so the
                    // logits come out at scale ≈ Δ/16: 16 times more headroom below q_0/2 for
                    // large logits, at a cost of 4 of the ~20 bits of precision.
                    let w_scale = if last { q(level) / OUTPUT_HEADROOM } else { q(level) };
                    let diags = (0..geom.n_g)
                        .map(|d| {
                            let diag: Vec<f64> = (0..slots).map(|j| m(j, d)).collect();
                            if diag.iter().all(|&x| x == 0.0) {
                                return Ok(None);
                            }
                            let g = d / n1;
                            let values = rotate_vec(&diag, -((g * n1) as i64));
                            let encoded = encoder.encode_real(&values, level, w_scale)?;
                            Ok(Some(Operand { values, encoded }))
                        })
                        .collect::<Result<Vec<_>>>()?;
                    scale = scale * w_scale / q(level);
                    level -= 1;
                    // The bias at every output slot (every replica of it when the output repeats).
                    let bias_v: Vec<f64> = (0..slots)
                        .map(|j| match geom.output_at(j, period) {
                            Some(o) if o < *outputs => p.bias[o] as f64,
                            _ => 0.0,
                        })
                        .collect();
                    let bias = Operand { encoded: encoder.encode_real(&bias_v, level, scale)?, values: bias_v };
                    stages.push(Stage::Dense {
                        n1,
                        n2,
                        diags,
                        bias,
                        fold: geom.fold.clone(),
                        name: format!("dense {in_features}→{outputs}, {} group(s)", geom.groups),
                    });
                    feature_slot = (0..*outputs).map(|o| geom.output_slot(o, period)).collect();
                    period = geom.next_period;
                    in_features = *outputs;
                }
                _ => unreachable!("form checked above"),
            }
        }
        Ok(Self { ctx: ctx.clone(), arch: spec.clone(), layout, stages, classes: in_features, input_scale })
    }

    /// The client's input layout.
    pub fn layout(&self) -> &InputLayout {
        &self.layout
    }

    /// Number of classes (decrypted slots `0..classes` are the logits).
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Scale the client must encode its input at.
    pub fn input_scale(&self) -> f64 {
        self.input_scale
    }

    /// Multiplicative depth (levels consumed).
    pub fn depth(&self) -> usize {
        self.costs().iter().map(|c| c.levels).sum()
    }

    /// Rotation steps the plan uses, each with the highest level it is applied at: the
    /// Galois keys to generate (each only as large as its level needs), and only these.
    pub fn rotation_keys(&self) -> Vec<(i64, usize)> {
        Self::rotation_keys_for(&self.arch, self.layout.slots, self.ctx.max_level()).expect("the architecture compiled")
    }

    /// The rotation steps alone (see [`CnnPlan::rotation_keys`]).
    pub fn rotation_steps(&self) -> Vec<i64> {
        self.rotation_keys().into_iter().map(|(s, _)| s).collect()
    }

    /// [`CnnPlan::rotation_keys`] from the architecture alone, for ciphertexts of `slots`
    /// slots entering at level `top_level`: what a client needs to generate its Galois keys
    /// without seeing the weights.
    ///
    /// # Errors
    /// As [`CnnPlan::compile`], for the architecture.
    pub fn rotation_keys_for(arch: &ArchSpec, slots: usize, top_level: usize) -> Result<Vec<(i64, usize)>> {
        check_form(arch)?;
        if arch.depth() > top_level {
            return Err(PlanError::TooDeep { needed: arch.depth(), available: top_level });
        }
        let layout = InputLayout::from_arch(arch, slots)?;
        let mut keys: Vec<(i64, usize)> = Vec::new();
        // The convolution's fold runs after its rescale.
        let mut level = top_level - 1;
        keys.extend(layout.fold_steps().into_iter().map(|s| (s, level)));
        let mut period = layout.block;
        for (li, l) in arch.layers.iter().enumerate().skip(1) {
            match l {
                LayerSpec::Square => level -= 1,
                LayerSpec::Dense { outputs } => {
                    let geom = DenseGeom::new(*outputs, period, slots, li == arch.layers.len() - 1)?;
                    let (n1, n2) = bsgs_split(geom.n_g);
                    keys.extend((1..n1).map(|b| (b as i64, level)));
                    keys.extend((1..n2).map(|g| ((g * n1) as i64, level)));
                    keys.extend(geom.fold.into_iter().map(|s| (s, level - 1)));
                    period = geom.next_period;
                    level -= 1;
                }
                _ => {}
            }
        }
        let mut best: std::collections::BTreeMap<i64, usize> = std::collections::BTreeMap::new();
        for (s, l) in keys {
            let e = best.entry(s).or_insert(l);
            *e = (*e).max(l);
        }
        Ok(best.into_iter().collect())
    }

    /// What each stage costs.
    pub fn costs(&self) -> Vec<StageCost> {
        self.stages
            .iter()
            .map(|s| match s {
                Stage::Conv { weights, fold, .. } => StageCost {
                    name: format!("conv (im2col, {} input ciphertexts)", weights.len()),
                    levels: 1,
                    rotations: fold.len(),
                    hoisted_rotations: 0,
                    plain_products: weights.len(),
                    products: 0,
                },
                Stage::Square => StageCost {
                    name: "square".into(),
                    levels: 1,
                    rotations: 0,
                    hoisted_rotations: 0,
                    plain_products: 0,
                    products: 1,
                },
                Stage::Dense { n1, n2, diags, fold, name, .. } => StageCost {
                    name: format!("{name} (BSGS {n1}×{n2})"),
                    levels: 1,
                    rotations: n2 - 1 + fold.len(),
                    hoisted_rotations: n1 - 1,
                    plain_products: diags.iter().filter(|d| d.is_some()).count(),
                    products: 0,
                },
            })
            .collect()
    }

    /// Evaluates the network on the client's input ciphertexts (at the top level, scale
    /// [`CnnPlan::input_scale`]), with public keys only. Returns a level-0 ciphertext whose
    /// slots `0..classes` hold the logits.
    ///
    /// # Errors
    /// [`PlanError::Input`] for a wrong number of ciphertexts; CKKS errors (wrong level,
    /// missing Galois key, foreign keys) as [`PlanError::Ckks`].
    pub fn evaluate(
        &self,
        eval: &Evaluator,
        inputs: &[Ciphertext],
        rlk: &RelinearizationKey,
        gk: &GaloisKeys,
    ) -> Result<Ciphertext> {
        if inputs.len() != self.layout.num_cts {
            return Err(PlanError::Input {
                expected: format!("{} input ciphertexts", self.layout.num_cts),
                actual: inputs.len().to_string(),
            });
        }
        let mut x: Option<Ciphertext> = None;
        for stage in &self.stages {
            x = Some(match stage {
                Stage::Conv { weights, bias, fold } => {
                    let mut acc = eval.multiply_plain(&inputs[0], &weights[0].encoded)?;
                    for (ct, w) in inputs.iter().zip(weights).skip(1) {
                        eval.multiply_plain_acc(&mut acc, ct, &w.encoded)?;
                    }
                    fold_and_bias(eval, acc, fold, &bias.encoded, gk)?
                }
                Stage::Square => {
                    let v = x.take().expect("a stage before");
                    let mut sq = eval.square(&v)?;
                    eval.relinearize_assign(&mut sq, rlk)?;
                    eval.rescale_assign(&mut sq)?;
                    sq
                }
                Stage::Dense { n1, n2, diags, bias, fold, .. } => {
                    let v = x.take().expect("a stage before");
                    let baby_steps: Vec<i64> = (0..*n1 as i64).collect();
                    let baby = eval.rotate_hoisted(&v, &baby_steps, gk)?;
                    let mut inners: Vec<Ciphertext> = Vec::with_capacity(*n2);
                    let mut giant_steps: Vec<i64> = Vec::with_capacity(*n2);
                    for g in 0..*n2 {
                        let (mut cts, mut pts) = (Vec::new(), Vec::new());
                        for (b, rotated) in baby.iter().enumerate() {
                            if let Some(d) = &diags[g * n1 + b] {
                                cts.push(rotated);
                                pts.push(&d.encoded);
                            }
                        }
                        if !cts.is_empty() {
                            inners.push(eval.dot_plain(&cts, &pts)?);
                            giant_steps.push((g * n1) as i64);
                        }
                    }
                    let inner_refs: Vec<&Ciphertext> = inners.iter().collect();
                    let out =
                        (!inner_refs.is_empty()).then(|| eval.rotate_sum(&inner_refs, &giant_steps, gk)).transpose()?;
                    let acc = out.ok_or_else(|| PlanError::Layout("a dense layer with all-zero weights".into()))?;
                    fold_and_bias(eval, acc, fold, &bias.encoded, gk)?
                }
            });
        }
        Ok(x.expect("at least one stage"))
    }

    /// The plaintext twin of [`CnnPlan::evaluate`]: the same packed computation on slot
    /// vectors in `f64`, without encryption (tests the layout against the model).
    ///
    /// # Errors
    /// [`PlanError::Input`] for a wrong number of input vectors.
    pub fn evaluate_plain(&self, inputs: &[Vec<f64>]) -> Result<Vec<f64>> {
        if inputs.len() != self.layout.num_cts {
            return Err(PlanError::Input {
                expected: format!("{} input vectors", self.layout.num_cts),
                actual: inputs.len().to_string(),
            });
        }
        let slots = self.layout.slots;
        let add = |a: &mut Vec<f64>, b: &[f64]| a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
        let mul = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).collect::<Vec<f64>>();
        let mut x = vec![0f64; slots];
        for stage in &self.stages {
            x = match stage {
                Stage::Conv { weights, bias, fold } => {
                    let mut acc = vec![0f64; slots];
                    for (ct, w) in inputs.iter().zip(weights) {
                        add(&mut acc, &mul(ct, &w.values));
                    }
                    for &step in fold {
                        let r = rotate_vec(&acc, step);
                        add(&mut acc, &r);
                    }
                    add(&mut acc, &bias.values);
                    acc
                }
                Stage::Square => x.iter().map(|v| v * v).collect(),
                Stage::Dense { n1, n2, diags, bias, fold, .. } => {
                    let mut acc = vec![0f64; slots];
                    for g in 0..*n2 {
                        let mut inner = vec![0f64; slots];
                        for b in 0..*n1 {
                            if let Some(d) = &diags[g * n1 + b] {
                                add(&mut inner, &mul(&rotate_vec(&x, b as i64), &d.values));
                            }
                        }
                        add(&mut acc, &rotate_vec(&inner, (g * n1) as i64));
                    }
                    for &step in fold {
                        let r = rotate_vec(&acc, step);
                        add(&mut acc, &r);
                    }
                    add(&mut acc, &bias.values);
                    acc
                }
            };
        }
        Ok(x[..self.classes].to_vec())
    }

    /// The context the plan was compiled for.
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }
}
