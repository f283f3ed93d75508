//! Integer batch circuits for BFV: a [`BatchCircuit`] quantized so that every value is an
//! exact integer, evaluated modulo one or several plaintext primes and recombined by the
//! Chinese remainder theorem (as CryptoNets did, Gilad-Bachrach et al., ICML 2016, §4).
//!
//! The client sends raw 8-bit pixels `X` (no input quantization: the model's normalization
//! `x = a·X + b` folds into the first linear map). Each linear map's weights become integers
//! `round(w·2^k)` with `k` chosen per layer so the largest has `weight_bits` bits; biases are
//! rounded at the layer's output scale; a polynomial activation of degree `d` on values at
//! scale `S` becomes `S^d·p(x) = X^d + Σ round(c_k·S^{d−k})·X^k`. The output scale is the
//! product of them all. The compiler bounds every value from the integer weights and the
//! input range ([`IntegerBatchCircuit::output_bound`]); the plaintext moduli's product must
//! exceed twice the output bound, and a circuit whose bound leaves `i128` is refused.

use crate::batch::{BatchCircuit, BatchStage};
use crate::error::{CircuitError, Result};
use crate::requirements::StageCost;
use blindfold_ckks::bfv::BfvContext;
use blindfold_ckks::{Ciphertext, Evaluator, RelinearizationKey};
use rayon::prelude::*;

/// One stage of an integer circuit.
#[derive(Clone, Debug, PartialEq)]
pub enum IntegerStage {
    /// `y_o = Σ w·x_j + bias_o` with integer weights (row `o` lists `(j, w)`).
    Linear {
        /// Number of inputs.
        inputs: usize,
        /// One row per output.
        rows: Vec<Vec<(u32, i64)>>,
        /// One bias per output (at the output's scale: up to 2^125).
        bias: Vec<i128>,
    },
    /// `Σ_k c_k·x^k` on every feature (`c_0` first, leading coefficient 1).
    Polynomial {
        /// The coefficients.
        coeffs: Vec<i128>,
    },
}

/// How a [`BatchCircuit`] is quantized.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quantization {
    /// The model's input is `x = input_scale·X + input_offset` for the integer input `X`.
    pub input_scale: f64,
    /// See `input_scale`.
    pub input_offset: f64,
    /// Largest integer input (`X ∈ [0, input_max]`: 255 for 8-bit pixels).
    pub input_max: u32,
    /// Bits of the largest weight of each linear map, sign included (2 to 24).
    pub weight_bits: u32,
}

/// A batch circuit on exact integers.
#[derive(Clone, Debug)]
pub struct IntegerBatchCircuit {
    inputs: usize,
    input_max: u32,
    stages: Vec<IntegerStage>,
    /// Outputs are the model's values times this.
    output_scale: f64,
    /// Per stage, the largest magnitude of its outputs.
    bounds: Vec<f64>,
}

/// Largest output bound the integer twin and the CRT recombination handle.
pub const MAX_LOG2_BOUND: f64 = 125.0;

impl BatchCircuit {
    /// This circuit on exact integers (see the [module documentation](crate::integer)).
    ///
    /// # Errors
    /// [`CircuitError::Unsupported`] for weight bits outside 2 to 24, a non-finite weight or
    /// input transform, a coefficient beyond 2^53, or values that could reach
    /// 2^[`MAX_LOG2_BOUND`] (fewer weight bits make them smaller).
    pub fn quantize(&self, q: &Quantization) -> Result<IntegerBatchCircuit> {
        if !((2..=24).contains(&q.weight_bits) && q.input_scale.is_finite() && q.input_offset.is_finite()) {
            return Err(CircuitError::Unsupported(format!(
                "quantization with {} weight bits and input transform {}·X + {} (2 to 24 bits, finite)",
                q.weight_bits, q.input_scale, q.input_offset
            )));
        }
        let mut stages = Vec::with_capacity(self.stages().len());
        let mut bounds = Vec::with_capacity(self.stages().len());
        // Scale of the current integer values over the model's, and their bound.
        let mut scale = 1.0;
        let mut bound = f64::from(q.input_max);
        let mut first = true;
        for (i, s) in self.stages().iter().enumerate() {
            let stage = match s {
                BatchStage::Linear { map, .. } => {
                    // The first map reads X: x = a·X + b folds into it.
                    let (a, b) = if first { (q.input_scale, q.input_offset) } else { (1.0, 0.0) };
                    first = false;
                    let rows_f: Vec<Vec<(u32, f64)>> =
                        map.rows.iter().map(|r| r.iter().map(|&(j, w)| (j, w * a)).collect()).collect();
                    let bias_f: Vec<f64> = map
                        .rows
                        .iter()
                        .zip(&map.bias)
                        .map(|(r, &c)| c + b * r.iter().map(|&(_, w)| w).sum::<f64>())
                        .collect();
                    let max_w = rows_f.iter().flatten().fold(0.0f64, |m, &(_, w)| m.max(w.abs()));
                    let k = if max_w > 0.0 { f64::from(q.weight_bits - 1) - max_w.log2().ceil() } else { 0.0 };
                    let s_w = 2f64.powf(k);
                    let rows: Vec<Vec<(u32, i64)>> = rows_f
                        .iter()
                        .map(|r| r.iter().map(|&(j, w)| (j, (w * s_w).round() as i64)).collect())
                        .collect();
                    scale *= s_w;
                    let bias: Vec<i128> = bias_f
                        .iter()
                        .map(|&c| (c * scale).round())
                        .map(|c| checked_int(c, i))
                        .collect::<Result<_>>()?;
                    bound = rows
                        .iter()
                        .zip(&bias)
                        .map(|(r, &c)| {
                            r.iter().map(|&(_, w)| w.unsigned_abs() as f64).sum::<f64>() * bound
                                + c.unsigned_abs() as f64
                        })
                        .fold(0.0, f64::max);
                    IntegerStage::Linear { inputs: map.inputs, rows, bias }
                }
                BatchStage::Polynomial(p) => {
                    let d = p.degree();
                    let lower = p.lower();
                    let mut coeffs: Vec<i128> = lower
                        .iter()
                        .enumerate()
                        .map(|(k, &c)| checked_int((c * scale.powi((d - k) as i32)).round(), i))
                        .collect::<Result<_>>()?;
                    coeffs.push(1);
                    scale = scale.powi(d as i32);
                    bound =
                        coeffs.iter().enumerate().map(|(k, &c)| c.unsigned_abs() as f64 * bound.powi(k as i32)).sum();
                    IntegerStage::Polynomial { coeffs }
                }
            };
            if !(bound.is_finite() && bound.log2() < MAX_LOG2_BOUND) {
                return Err(CircuitError::Unsupported(format!(
                    "stage {i}: integer values could reach 2^{:.0}, beyond 2^{MAX_LOG2_BOUND}: use fewer weight bits",
                    bound.log2()
                )));
            }
            stages.push(stage);
            bounds.push(bound);
        }
        Ok(IntegerBatchCircuit {
            inputs: self.inputs(),
            input_max: q.input_max,
            stages,
            output_scale: scale / self.headroom(),
            bounds,
        })
    }
}

fn checked_int(c: f64, stage: usize) -> Result<i128> {
    if c.is_finite() && c.abs() < 2f64.powf(MAX_LOG2_BOUND) {
        Ok(c as i128)
    } else {
        Err(CircuitError::Unsupported(format!(
            "stage {stage}: an integer coefficient of {c:e} is beyond 2^{MAX_LOG2_BOUND}: use fewer weight bits"
        )))
    }
}

/// `c` modulo `t`, centered, as an exact `f64` (|c mod t| ≤ t/2 < 2^53).
fn centered_mod(c: i128, t: u64) -> f64 {
    let r = c.rem_euclid(i128::from(t));
    (if r > i128::from(t / 2) { r - i128::from(t) } else { r }) as f64
}

impl IntegerBatchCircuit {
    /// Number of input features.
    pub fn inputs(&self) -> usize {
        self.inputs
    }

    /// Number of outputs (ciphertexts of a response): the last linear map's rows, or the
    /// input count for a circuit without one.
    pub fn outputs(&self) -> usize {
        self.stages
            .iter()
            .rev()
            .find_map(|s| match s {
                IntegerStage::Linear { rows, .. } => Some(rows.len()),
                IntegerStage::Polynomial { .. } => None,
            })
            .unwrap_or(self.inputs)
    }

    /// The stages.
    pub fn stages(&self) -> &[IntegerStage] {
        &self.stages
    }

    /// The model's outputs are the integer outputs divided by this.
    pub fn output_scale(&self) -> f64 {
        self.output_scale
    }

    /// The largest magnitude an output can have, from the integer weights and the input
    /// range: the plaintext moduli's product must exceed twice this.
    pub fn output_bound(&self) -> f64 {
        self.bounds.last().copied().unwrap_or(0.0)
    }

    /// Per stage, the largest magnitude of its values.
    pub fn bounds(&self) -> &[f64] {
        &self.bounds
    }

    /// This circuit with its outputs multiplied by `2^shift` (the last linear map's weights
    /// and biases times `2^shift`): brings circuits of different output scales — powers of
    /// two — to a common one, so that their scores can be summed exactly (an ensemble's
    /// coordinator on BFV). The factor is a power of two so that every weight stays exact in
    /// the `f64` constants of [`Evaluator::linear_combinations`].
    ///
    /// # Errors
    /// [`CircuitError::Unsupported`] when the circuit does not end with a linear map, `shift`
    /// exceeds 62, a weight leaves `i64`, or the outputs could reach 2^[`MAX_LOG2_BOUND`].
    pub fn scaled_output(&self, shift: u32) -> Result<Self> {
        if shift > 62 {
            return Err(CircuitError::Unsupported(format!("scaling outputs by 2^{shift} (at most 2^62)")));
        }
        let factor = 1i64 << shift;
        let too_large = || {
            CircuitError::Unsupported(format!(
                "outputs times 2^{shift} could reach 2^{:.0}, beyond 2^{MAX_LOG2_BOUND}: use fewer weight bits",
                self.output_bound().log2() + f64::from(shift)
            ))
        };
        let mut out = self.clone();
        let Some(IntegerStage::Linear { rows, bias, .. }) = out.stages.last_mut() else {
            return Err(CircuitError::Unsupported(
                "scaling the outputs of a circuit that does not end with a linear map".into(),
            ));
        };
        for (_, w) in rows.iter_mut().flatten() {
            *w = w.checked_mul(factor).ok_or_else(too_large)?;
        }
        for b in bias.iter_mut() {
            *b = b.checked_mul(i128::from(factor)).ok_or_else(too_large)?;
        }
        let bound = self.output_bound() * factor as f64;
        if bound.log2() >= MAX_LOG2_BOUND {
            return Err(too_large());
        }
        *out.bounds.last_mut().expect("a last stage") = bound;
        out.output_scale *= factor as f64;
        Ok(out)
    }

    /// The most ciphertext polynomials (each `N` coefficients per chain prime: times the chain's
    /// length for residues) alive at once while a batch is expanded and
    /// [`IntegerBatchCircuit::evaluate_bfv`] runs: the seeded request beside its expansion,
    /// then the inputs, the stage's inputs and its outputs (size 3 for squares and the sums of
    /// squares before relinearization). A lower bound: per-thread scratch and the products'
    /// extended basis come on top.
    pub fn peak_polynomials(&self) -> usize {
        let inputs = 2 * self.inputs;
        let (mut x, mut features, mut squares, mut peak) = (0, self.inputs, false, 3 * self.inputs);
        for s in &self.stages {
            let out = match s {
                IntegerStage::Linear { rows, .. } => {
                    features = rows.len();
                    features * if squares { 3 } else { 2 }
                }
                IntegerStage::Polynomial { coeffs } if coeffs[..] == [0, 0, 1] => 3 * features,
                IntegerStage::Polynomial { .. } => 2 * features,
            };
            peak = peak.max(inputs + x + out);
            squares = matches!(s, IntegerStage::Polynomial { coeffs } if coeffs[..] == [0, 0, 1]);
            x = if squares { out } else { 2 * features };
        }
        peak
    }

    /// What each stage costs (constant products of a linear map; ciphertext products per
    /// feature of a polynomial).
    pub fn costs(&self) -> Vec<StageCost> {
        self.stages
            .iter()
            .map(|s| match s {
                IntegerStage::Linear { inputs, rows, .. } => StageCost {
                    name: format!("integer linear {inputs}→{} (batch)", rows.len()),
                    levels: 0,
                    rotations: 0,
                    hoisted_rotations: 0,
                    plain_products: rows.iter().map(Vec::len).sum(),
                    products: 0,
                },
                IntegerStage::Polynomial { coeffs } => StageCost {
                    name: format!("integer polynomial of degree {} (batch)", coeffs.len() - 1),
                    levels: 0,
                    rotations: 0,
                    hoisted_rotations: 0,
                    plain_products: 0,
                    products: coeffs.len() - 2,
                },
            })
            .collect()
    }

    /// Estimated noise, in bits, that a BFV evaluation with plaintext modulus of `log_t` bits
    /// at ring degree `n` leaves in the result (fresh noise `√N·16`; a linear map multiplies
    /// it by its largest row sum of |weights|; a product of two ciphertexts gives
    /// `t·N·8·max(e_x, e_y)`): decryption needs `log2 Q − log_t − 1` above it. Conservative
    /// by about 10 bits against measured budgets.
    pub fn noise_bits(&self, n: usize, log_t: f64) -> f64 {
        let log_n = (n as f64).log2();
        let mut e = log_n / 2.0 + 4.0;
        for s in &self.stages {
            match s {
                IntegerStage::Linear { rows, bias: _, .. } => {
                    let sum = rows
                        .iter()
                        .map(|r| r.iter().map(|&(_, w)| w.unsigned_abs() as f64).sum::<f64>())
                        .fold(1.0, f64::max);
                    e += sum.log2() + 1.0;
                }
                IntegerStage::Polynomial { coeffs } => {
                    let powers = coeffs.len() - 1;
                    let depth = (powers as f64).log2().ceil();
                    e += depth * (log_t + log_n + 3.0);
                    let c = coeffs[1..].iter().fold(1.0f64, |m, &c| m.max(c.unsigned_abs() as f64));
                    e += c.log2() + 1.0;
                }
            }
        }
        e
    }

    /// The integer twin: `inputs[f]` holds feature `f` of every image (integers in
    /// `[0, input_max]`); returns the exact integer outputs the same way.
    ///
    /// # Errors
    /// [`CircuitError::Input`] for a wrong number of features, features of different lengths
    /// or an input outside `[0, input_max]`.
    pub fn evaluate_integer(&self, inputs: &[Vec<i64>]) -> Result<Vec<Vec<i128>>> {
        if inputs.len() != self.inputs {
            return Err(CircuitError::Input {
                expected: format!("{} features", self.inputs),
                actual: inputs.len().to_string(),
            });
        }
        let images = inputs.first().map_or(0, Vec::len);
        if inputs.iter().flatten().any(|&x| x < 0 || x > i64::from(self.input_max))
            || inputs.iter().any(|f| f.len() != images)
        {
            return Err(CircuitError::Input {
                expected: format!("{images} integers in [0, {}] per feature", self.input_max),
                actual: "features out of range or of different lengths".into(),
            });
        }
        let mut x: Vec<Vec<i128>> = inputs.iter().map(|f| f.iter().map(|&v| i128::from(v)).collect()).collect();
        for s in &self.stages {
            x = match s {
                IntegerStage::Linear { rows, bias, .. } => rows
                    .par_iter()
                    .zip(bias)
                    .map(|(row, &b)| {
                        let mut out = vec![b; images];
                        for &(j, w) in row {
                            out.iter_mut().zip(&x[j as usize]).for_each(|(o, v)| *o += i128::from(w) * v);
                        }
                        out
                    })
                    .collect(),
                IntegerStage::Polynomial { coeffs } => x
                    .into_par_iter()
                    .map(|f| f.iter().map(|&v| coeffs.iter().rev().fold(0i128, |acc, &c| acc * v + c)).collect())
                    .collect(),
            };
        }
        Ok(x)
    }

    /// Evaluates the circuit on BFV ciphertexts of the integer inputs (one per feature, all
    /// slots one image each) modulo `bfv`'s plaintext modulus, with the relinearization key
    /// alone; `observe(stage, seconds)` after each stage. Squares feed the next linear map
    /// unrelinearized (one relinearization per output).
    ///
    /// # Errors
    /// [`CircuitError::Input`] for a wrong number of ciphertexts; BFV/CKKS errors for
    /// ciphertexts of other parameters.
    pub fn evaluate_bfv(
        &self,
        bfv: &BfvContext,
        eval: &Evaluator,
        inputs: &[Ciphertext],
        rlk: &RelinearizationKey,
        mut observe: impl FnMut(usize, f64),
    ) -> Result<Vec<Ciphertext>> {
        if inputs.len() != self.inputs {
            return Err(CircuitError::Input {
                expected: format!("{} feature ciphertexts", self.inputs),
                actual: inputs.len().to_string(),
            });
        }
        let mut owned: Option<Vec<Ciphertext>> = None;
        for (i, s) in self.stages.iter().enumerate() {
            let t = std::time::Instant::now();
            let x: &[Ciphertext] = owned.as_deref().unwrap_or(inputs);
            let next: Vec<Ciphertext> = match s {
                IntegerStage::Linear { rows, bias, .. } => {
                    let refs: Vec<&Ciphertext> = x.iter().collect();
                    let rows_f: Vec<Vec<(u32, f64)>> =
                        rows.iter().map(|r| r.iter().map(|&(j, w)| (j, w as f64)).collect()).collect();
                    let mut out = eval.linear_combinations(&refs, &rows_f, &vec![0.0; rows.len()], 1.0)?;
                    out.par_iter_mut().zip(bias).try_for_each(|(c, &b)| -> Result<()> {
                        if c.size() == 3 {
                            eval.relinearize_assign(c, rlk)?;
                        }
                        Ok(bfv.add_constant(c, b)?)
                    })?;
                    out
                }
                IntegerStage::Polynomial { coeffs } if coeffs[..] == [0, 0, 1] => {
                    x.par_iter().map(|c| Ok(bfv.square(c)?)).collect::<Result<_>>()?
                }
                IntegerStage::Polynomial { coeffs } => {
                    x.par_iter().map(|c| polynomial_bfv(bfv, eval, rlk, c, coeffs)).collect::<Result<_>>()?
                }
            };
            owned = Some(next);
            observe(i, t.elapsed().as_secs_f64());
        }
        owned.ok_or_else(|| CircuitError::Layout("an integer circuit without stages".into()))
    }
}

/// An ensemble's coordinator on BFV: `Σ_h weights[h]·replies[h][o]` for every output `o`,
/// exact (small integer weights on relinearized replies at one level). `replies[h]` is holder
/// `h`'s output ciphertexts, all of one plan ([`IntegerBatchCircuit::scaled_output`] brings
/// holders to one output scale first); returns one ciphertext (size 2, the replies' level)
/// per output.
///
/// # Errors
/// [`CircuitError::Input`] for no replies, a weight count other than the reply count, a
/// weight of 2^32 or more, or replies of different lengths; CKKS errors for ciphertexts of different levels or sizes.
pub fn weighted_sum(eval: &Evaluator, replies: &[Vec<Ciphertext>], weights: &[u64]) -> Result<Vec<Ciphertext>> {
    let outputs = replies.first().map_or(0, Vec::len);
    if replies.is_empty()
        || weights.len() != replies.len()
        || weights.iter().any(|&w| w > u64::from(u32::MAX))
        || replies.iter().any(|r| r.len() != outputs)
    {
        return Err(CircuitError::Input {
            expected: format!("one weight below 2^32 per reply ({}), replies of one length", replies.len()),
            actual: format!(
                "{} weights, reply lengths {:?}",
                weights.len(),
                replies.iter().map(Vec::len).collect::<Vec<_>>()
            ),
        });
    }
    let refs: Vec<&Ciphertext> = replies.iter().flatten().collect();
    let rows: Vec<Vec<(u32, f64)>> = (0..outputs)
        .map(|o| weights.iter().enumerate().map(|(h, &w)| ((h * outputs + o) as u32, w as f64)).collect())
        .collect();
    Ok(eval.linear_combinations(&refs, &rows, &vec![0.0; outputs], 1.0)?)
}

/// `Σ_k c_k x^k` on one BFV ciphertext (powers by products, relinearized).
fn polynomial_bfv(
    bfv: &BfvContext,
    eval: &Evaluator,
    rlk: &RelinearizationKey,
    x: &Ciphertext,
    coeffs: &[i128],
) -> Result<Ciphertext> {
    let d = coeffs.len() - 1;
    let mut powers: Vec<Ciphertext> = vec![x.clone()];
    for k in 2..=d {
        // x^k = x^{k/2}·x^{k−k/2}: depth ceil(log2 k).
        let mut p = bfv.multiply(&powers[k / 2 - 1], &powers[k - k / 2 - 1])?;
        eval.relinearize_assign(&mut p, rlk)?;
        powers.push(p);
    }
    let refs: Vec<&Ciphertext> = powers.iter().collect();
    let t = bfv.plaintext_modulus();
    let row: Vec<(u32, f64)> =
        (1..=d).map(|k| ((k - 1) as u32, centered_mod(coeffs[k], t))).filter(|&(_, c)| c != 0.0).collect();
    let mut out = eval.linear_combinations(&refs, &[row], &[0.0], 1.0)?.pop().expect("one row");
    bfv.add_constant(&mut out, coeffs[0])?;
    Ok(out)
}

/// Recombines residues modulo the plaintext moduli `moduli` (distinct primes) into the
/// integer in `(−T/2, T/2]`, `T` their product (Garner's algorithm); `None` if `T` reaches
/// 2^127 or the lengths differ.
pub fn crt_signed(residues: &[u64], moduli: &[u64]) -> Option<i128> {
    if residues.len() != moduli.len() {
        return None;
    }
    let mut x: u128 = 0;
    let mut prod: u128 = 1;
    for (&r, &m) in residues.iter().zip(moduli) {
        // x + prod·k ≡ r (mod m)
        let m128 = u128::from(m);
        let next = prod.checked_mul(m128).filter(|&p| p < 1 << 127)?;
        let diff = (u128::from(r % m) + m128 - x % m128) % m128;
        let k = diff * mod_inverse(prod % m128, m128) % m128;
        x += prod * k; // below `next`
        prod = next;
    }
    Some(if x > prod / 2 { -((prod - x) as i128) } else { x as i128 })
}

fn mod_inverse(a: u128, m: u128) -> u128 {
    // Fermat: m is prime.
    let (mut base, mut e, mut acc) = (a % m, m - 2, 1u128);
    while e > 0 {
        if e & 1 == 1 {
            acc = acc * base % m;
        }
        base = base * base % m;
        e >>= 1;
    }
    acc
}
