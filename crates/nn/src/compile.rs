//! Compiling a model into an encrypted circuit ([`blindfold_tensor::Circuit`]), and choosing
//! the CKKS parameters its depth needs.
//!
//! The layers map to stages one by one: convolutions and dense layers to linear stages (one
//! level each), average pooling to a sum of rotations (no level: its division by the window
//! size goes into the linear layer before it, or after it when an activation lies between),
//! polynomial activations to monic polynomials (their leading coefficient split between the
//! linear layers before and after them, which keeps both layers' weights well above their
//! encoding error). The first convolution reads the client's packing, chosen among three by
//! the cost of that first stage: im2col with one copy per output channel (no rotation before
//! the fold; TenSEAL's packing), im2col without copies (output channels reached by giant
//! steps), or the image itself (kernel taps as baby steps). Later convolutions run on the
//! previous layer's packed output ([`blindfold_tensor::conv::placed`]).
//!
//! The structure — packing, layouts, diagonals present, rotation keys, levels — depends on
//! the architecture alone, so a client builds the same circuit without the weights
//! ([`circuit`] with `None`) to know its keys and packing.

use crate::arch::{ArchSpec, LayerSpec};
use crate::error::{Error, Result};
use crate::model::Model;
use blindfold_ckks::bfv::BfvContext;
use blindfold_ckks::{max_log_qp_128bit, Context, Parameters, ParametersLiteral};
use blindfold_tensor::conv::{grid_tap, im2col_in_place, placed};
use blindfold_tensor::matvec::dense;
use blindfold_tensor::{
    BatchCircuit, BatchStage, Circuit, CircuitError, ConvGeom, IntegerBatchCircuit, Layout, LinearMap, Packing,
    PolynomialActivation, PoolGeom, Quantization, RotationSum, Stage,
};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Factor by which the last linear layer lowers the logits' scale: room below `q_0/2` for
/// large logits, at a cost of 4 of the scale's bits of precision.
pub const OUTPUT_HEADROOM: f64 = 16.0;
/// Bits of the base prime `q_0` above the scale: with [`OUTPUT_HEADROOM`], logits up to
/// about 2^10 decrypt correctly.
pub const BASE_EXTRA_BITS: u32 = 7;
/// Bits of each special prime above the scale: one more than `q_0`, so the special primes'
/// product exceeds every key-switching digit and key switching adds noise well below a
/// rescale's.
pub const SPECIAL_EXTRA_BITS: u32 = BASE_EXTRA_BITS + 1;
/// Largest scale the compiler picks by itself (more bits add little precision).
pub const MAX_AUTO_SCALE_BITS: u32 = 40;

/// How the compiler chooses the CKKS parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainOptions {
    /// Ring degree `log2 N`; `None`: the smallest of 13, 14, 15 that holds the depth.
    pub log_n: Option<u32>,
    /// Scale bits (every prime consumed by a rescale has this size); `None`: the largest the
    /// ring allows, up to [`MAX_AUTO_SCALE_BITS`].
    pub scale_bits: Option<u32>,
    /// The fewest scale bits the compiler accepts when it chooses them.
    pub min_scale_bits: u32,
    /// Circuit privacy at this statistical security λ (bits): the circuit ends with one more
    /// level, a mask that keeps one copy of each score ([`Circuit::with_output_mask`]), and
    /// unless `scale_bits` is given the chain takes the largest scale its ring allows (the
    /// model holder floods what it returns in proportion to the computation's error:
    /// `blindfold_protocol::CompiledModel`). `None`: the result as the network leaves it.
    #[serde(default)]
    pub circuit_privacy: Option<u32>,
}

impl ChainOptions {
    /// Levels beyond the network's own: the output mask of circuit privacy.
    fn extra_levels(&self) -> usize {
        usize::from(self.circuit_privacy.is_some())
    }
}

impl Default for ChainOptions {
    fn default() -> Self {
        Self { log_n: None, scale_bits: None, min_scale_bits: 24, circuit_privacy: None }
    }
}

/// Scale bits the compiler keeps when it trades scale for special primes: more special primes
/// mean fewer key-switching digits and faster rotations, each costing `scale + 8` bits of the
/// 128-bit budget.
pub const PREFERRED_SCALE_BITS: u32 = 30;

/// Nominal bits of a chain of `depth` rescales of `s` bits with `alpha` special primes.
fn chain_bits(depth: usize, s: u32, alpha: usize) -> usize {
    (s + BASE_EXTRA_BITS) as usize + depth * s as usize + alpha * (s + SPECIAL_EXTRA_BITS) as usize
}

/// Estimated cost, in NTTs of one residue, of a key switch on `primes` chain primes with
/// `alpha` special primes: the input's inverse transform, every digit's extension to the
/// special primes and to the other chain primes, and the ModDown of both outputs.
fn key_switch_cost(primes: usize, alpha: usize) -> f64 {
    let digits = primes.div_ceil(alpha);
    (primes + alpha * digits + primes * (digits - 1) + 2 * alpha + 2 * primes) as f64
}

/// Estimated cost of a hoisted rotation (the decomposition shared): the ModDown of both
/// outputs and the permuted digits' key products, half an NTT per digit residue (measured on
/// this machine class: more special primes make hoisted rotations cheaper, plain ones at low
/// levels dearer).
fn hoisted_cost(primes: usize, alpha: usize) -> f64 {
    let digits = primes.div_ceil(alpha);
    (2 * alpha + 2 * primes) as f64 + 0.5 * (digits * (primes + alpha)) as f64
}

/// The largest scale (bits) a 128-bit chain of `depth` at `2^log_n` with `alpha` special
/// primes can have.
fn max_scale_bits(depth: usize, log_n: u32, alpha: usize) -> Option<u32> {
    let bound = max_log_qp_128bit(1 << log_n)? as usize;
    let fixed = BASE_EXTRA_BITS as usize + SPECIAL_EXTRA_BITS as usize * alpha;
    let s = bound.checked_sub(fixed)? / (depth + 1 + alpha);
    Some(s.min(60 - BASE_EXTRA_BITS as usize) as u32)
}

/// What the key switches of a circuit cost with `alpha` special primes: `profile[l]` holds
/// the plain and the hoisted key switches at level `l` (empty: one plain key switch at the
/// top level).
fn circuit_cost(depth: usize, profile: &[(usize, usize)], alpha: usize) -> f64 {
    if profile.is_empty() {
        return key_switch_cost(depth + 1, alpha);
    }
    profile
        .iter()
        .enumerate()
        .map(|(l, &(plain, hoisted))| {
            plain as f64 * key_switch_cost(l + 1, alpha) + hoisted as f64 * hoisted_cost(l + 1, alpha)
        })
        .sum()
}

/// Key switches of `arch`'s circuit per level at `2^log_n` (index `l`: level `l`, the top
/// being the depth): plain ones (rotations, relinearizations) and hoisted rotations. The same
/// for every chain of that ring, so it chooses the chain's special primes.
///
/// # Errors
/// As [`circuit`].
pub fn key_switch_profile(arch: &ArchSpec, log_n: u32) -> Result<Vec<(usize, usize)>> {
    let depth = circuit_depth(arch)?;
    let c = circuit(arch, None, 1 << (log_n - 1), depth)?;
    let mut profile = vec![(0, 0); depth + 1];
    for stage in c.stages() {
        let cost = stage.cost();
        let p = &mut profile[stage.level()];
        p.0 += cost.rotations + cost.products;
        p.1 += cost.hoisted_rotations;
    }
    Ok(profile)
}

/// The modulus chain for `depth` rescales of `scale_bits` each at ring degree `2^log_n`:
/// `q_0` of `scale_bits + 7` bits, `depth` primes of `scale_bits`, and as many special primes
/// of `scale_bits + 8` bits as make the circuit's key switches cheapest (`profile` from
/// [`key_switch_profile`] and an NTT-count cost model) within the 128-bit bound (one if none fits:
/// [`Parameters::new`] then says why). At depth 5 and N = 8192 this is
/// `N8192_DEPTH5_128BIT`. Not checked: see [`Parameters::new`].
pub fn chain(depth: usize, log_n: u32, scale_bits: u32, profile: &[(usize, usize)]) -> ParametersLiteral {
    let bound = max_log_qp_128bit(1 << log_n).unwrap_or(0) as usize;
    let cost = |a: usize| circuit_cost(depth, profile, a);
    let alpha = (1..=depth + 1)
        .filter(|&a| chain_bits(depth, scale_bits, a) <= bound)
        .min_by(|&a, &b| cost(a).total_cmp(&cost(b)))
        .unwrap_or(1);
    let mut log_q = vec![scale_bits + BASE_EXTRA_BITS];
    log_q.extend(std::iter::repeat_n(scale_bits, depth));
    ParametersLiteral {
        log_n,
        log_q,
        log_p: vec![scale_bits + SPECIAL_EXTRA_BITS; alpha],
        log_default_scale: scale_bits,
        dnum: None,
    }
}

/// The scale the compiler picks for `depth` at `2^log_n`, given the least it accepts: the
/// largest scale (up to [`MAX_AUTO_SCALE_BITS`]) of the special-prime count whose key
/// switching is cheapest among those keeping [`PREFERRED_SCALE_BITS`] (or `min`, if higher);
/// when none does, the largest scale of all. `None` if even that is below `min`.
fn auto_scale_bits(depth: usize, log_n: u32, min: u32, profile: &[(usize, usize)]) -> Option<u32> {
    let floor = min.max(PREFERRED_SCALE_BITS);
    let alphas = 1..=depth + 1;
    let best = alphas
        .clone()
        .filter_map(|a| max_scale_bits(depth, log_n, a).filter(|&s| s >= floor).map(|s| (a, s)))
        .min_by(|x, y| circuit_cost(depth, profile, x.0).total_cmp(&circuit_cost(depth, profile, y.0)))
        .map(|(_, s)| s);
    let s = best.or_else(|| alphas.filter_map(|a| max_scale_bits(depth, log_n, a)).max())?;
    (s >= min).then_some(s.min(MAX_AUTO_SCALE_BITS))
}

/// The parameters for `arch`'s circuit under `opts`: the smallest ring (unless given) whose
/// 128-bit chain has at least `min_scale_bits` (or exactly `scale_bits`); unless given, the
/// largest scale (up to [`MAX_AUTO_SCALE_BITS`]) of the special-prime count whose key switching
/// is cheapest among those keeping [`PREFERRED_SCALE_BITS`]; the special primes of [`chain`]
/// for the circuit's key switches. Every candidate goes through [`Parameters::new`], which checks the
/// HomomorphicEncryption.org bound on the actual primes.
///
/// # Errors
/// [`Error::Circuit`] with [`CircuitError::TooDeep`] when no 128-bit chain holds the depth
/// at the scale asked for, naming the deepest one that exists; CKKS parameter errors; as
/// [`circuit`].
pub fn parameters(arch: &ArchSpec, opts: &ChainOptions) -> Result<Parameters> {
    let depth = circuit_depth(arch)?;
    parameters_for_depth(depth + opts.extra_levels(), |log_n| key_switch_profile(arch, log_n).unwrap_or_default(), opts)
}

/// Largest prime of a batch chain: the constant-product kernel runs on AVX-512 IFMA below 2^50.
const BATCH_MAX_PRIME_BITS: u32 = 50;

/// The largest scale whose primes keep the kernels on AVX-512 IFMA (below 2^50): a
/// circuit-private plan tries it before the largest scale of its ring, which has more
/// precision but is about a quarter slower (BENCHMARKS.md, "Circuit privacy on CKKS").
pub const FAST_SCALE_BITS: u32 = BATCH_MAX_PRIME_BITS;

/// The parameters for `arch`'s batch circuit ([`batch_circuit`]) under `opts`: a chain shaped
/// by the circuit, at the largest scale `s` (up to [`PREFERRED_SCALE_BITS`], or
/// `opts.scale_bits`) the smallest ring allows at 128-bit security. Each level a linear map
/// fed by a lazy square consumes gets a prime of `min(2s, 50)` bits (scale × constant scale:
/// the square's rescale merged into the map's, constants at `2^(bits − s)`); every other level
/// a prime of `s` bits; `q_0` has `s + 7` bits, the special prime as many as the largest.
///
/// # Errors
/// As [`batch_circuit`]; [`Error::Circuit`] with [`CircuitError::TooDeep`] when no ring holds
/// the chain at `opts.min_scale_bits`.
pub fn batch_parameters(arch: &ArchSpec, opts: &ChainOptions) -> Result<Parameters> {
    let wide = batch_circuit(arch, None, MAX_DEPTH)?.wide_levels();
    let rings: Vec<u32> = opts.log_n.map_or(vec![13, 14, 15], |l| vec![l]);
    let scales: Vec<u32> = match opts.scale_bits {
        Some(s) => vec![s],
        None => (opts.min_scale_bits..=PREFERRED_SCALE_BITS).rev().collect(),
    };
    for &log_n in &rings {
        let Some(bound) = max_log_qp_128bit(1 << log_n) else { continue };
        for &s in &scales {
            let double = (2 * s).min(BATCH_MAX_PRIME_BITS);
            let mut log_q = vec![s + BASE_EXTRA_BITS];
            log_q.extend(wide.iter().rev().map(|&w| if w { double } else { s }));
            let special = log_q.iter().copied().max().unwrap_or(s).max(s + SPECIAL_EXTRA_BITS);
            if log_q.iter().sum::<u32>() + special > bound {
                continue;
            }
            let literal = ParametersLiteral { log_n, log_q, log_p: vec![special], log_default_scale: s, dnum: None };
            if let Ok(p) = Parameters::new(literal) {
                return Ok(p);
            }
        }
    }
    Err(Error::Circuit(CircuitError::TooDeep {
        needed: wide.len(),
        available: 0,
        hint: Some(format!(
            "no 128-bit chain at N = 2^{} holds this batch circuit's {} levels at {}-bit scale; use fewer or \
             lower-degree activations",
            rings.last().copied().unwrap_or(15),
            wide.len(),
            scales.last().copied().unwrap_or(opts.min_scale_bits)
        )),
    }))
}

/// Deeper than any 128-bit chain goes: the top level a circuit's structure is built at to
/// learn its depth.
const MAX_DEPTH: usize = 64;

fn parameters_for_depth(
    depth: usize,
    profile_of: impl Fn(u32) -> Vec<(usize, usize)>,
    opts: &ChainOptions,
) -> Result<Parameters> {
    let rings: Vec<u32> = opts.log_n.map_or(vec![13, 14, 15], |l| vec![l]);
    let min = opts.scale_bits.unwrap_or(opts.min_scale_bits);
    for &log_n in &rings {
        let Some(best) = max_scale_bits(depth, log_n, 1).filter(|&m| m >= min) else { continue };
        let profile = profile_of(log_n);
        let scales: Vec<u32> = match opts.scale_bits {
            Some(s) if s <= best => vec![s],
            Some(_) => continue,
            // Circuit privacy floods the scores in proportion to the computation's error:
            // the largest scale that has primes keeps most of them.
            None if opts.circuit_privacy.is_some() => (min..=best).rev().collect(),
            None => match auto_scale_bits(depth, log_n, min, &profile) {
                Some(s) => vec![s],
                None => continue,
            },
        };
        // Actual primes lie below 2^bits, so the nominal fit is conservative; check anyway.
        if let Some(p) = scales.into_iter().find_map(|s| Parameters::new(chain(depth, log_n, s, &profile)).ok()) {
            return Ok(p);
        }
    }
    let log_n = *rings.last().expect("non-empty");
    let deepest =
        (1..=MAX_DEPTH).take_while(|&d| max_scale_bits(d, log_n, 1).is_some_and(|m| m >= min)).last().unwrap_or(0);
    Err(Error::Circuit(CircuitError::TooDeep {
        needed: depth,
        available: deepest,
        hint: Some(format!(
            "the largest 128-bit chain at N = 2^{log_n} with {min}-bit scale holds depth {deepest} \
             (HomomorphicEncryption.org bound {} bits); use fewer or lower-degree activations",
            max_log_qp_128bit(1 << log_n).unwrap_or(0)
        )),
    }))
}

/// A model compiled for its parameters: the circuit with every plaintext encoded.
#[derive(Debug)]
pub struct Compiled {
    /// The architecture compiled.
    pub arch: ArchSpec,
    /// The circuit.
    pub circuit: Circuit,
    /// The CKKS context of its parameters.
    pub ctx: Arc<Context>,
}

impl Compiled {
    /// Compiles `model`: parameters from its depth and `opts`, inputs encrypted at the scale
    /// of the top prime (so each rescale restores it exactly).
    ///
    /// # Errors
    /// As [`parameters`] and [`circuit`].
    pub fn new(model: &Model, opts: &ChainOptions) -> Result<Self> {
        let params = parameters(model.spec(), opts)?;
        Self::with_parameters_masked(model, &params, opts.circuit_privacy.is_some())
    }

    /// Compiles `model` for given parameters.
    ///
    /// # Errors
    /// As [`circuit`]; [`Error::Circuit`] for too few levels.
    pub fn with_parameters(model: &Model, params: &Parameters) -> Result<Self> {
        Self::with_parameters_masked(model, params, false)
    }

    /// Compiles `model` for given parameters, with the output masked to one copy of each
    /// score if `mask` ([`Circuit::with_output_mask`], one more level).
    ///
    /// # Errors
    /// As [`Compiled::with_parameters`].
    pub fn with_parameters_masked(model: &Model, params: &Parameters, mask: bool) -> Result<Self> {
        let ctx = Context::new(params).map_err(|e| Error::Circuit(e.into()))?;
        let mut circuit = circuit(model.spec(), Some(model), params.slots(), ctx.max_level())?;
        if mask {
            circuit = circuit.with_output_mask()?;
        }
        let scale = input_scale(&ctx);
        circuit.encode(&ctx, scale)?;
        Ok(Self { arch: model.spec().clone(), circuit, ctx })
    }
}

/// A model compiled for batch packing: the batch circuit and its CKKS context.
#[derive(Debug)]
pub struct CompiledBatch {
    /// The architecture compiled.
    pub arch: ArchSpec,
    /// The circuit.
    pub circuit: BatchCircuit,
    /// The CKKS context of its parameters.
    pub ctx: Arc<Context>,
}

impl CompiledBatch {
    /// Compiles `model` for batch packing on `params` (inputs encrypted at [`input_scale`]).
    ///
    /// # Errors
    /// As [`batch_circuit`]; [`Error::Circuit`] for too few levels.
    pub fn with_parameters(model: &Model, params: &Parameters) -> Result<Self> {
        let ctx = Context::new(params).map_err(|e| Error::Circuit(e.into()))?;
        let circuit = batch_circuit(model.spec(), Some(model), ctx.max_level())?;
        Ok(Self { arch: model.spec().clone(), circuit, ctx })
    }
}

/// Options of the BFV compilation ([`CompiledBfv`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BfvOptions {
    /// Bits of each linear map's largest integer weight, sign included.
    pub weight_bits: u32,
    /// Ring degree `log2 N`; `None`: the cheapest of 13, 14, 15 that holds the noise.
    pub log_n: Option<u32>,
    /// Circuit privacy at this statistical security `λ` (bits): the chain is sized so that the
    /// party returning the scores can re-randomize them and flood them with noise that hides
    /// the circuit's own ([`CompiledBfv::flooding_log_bound`]); `None`: no room for flooding
    /// (benchmarks only — the user's decryption then shows noise that depends on the weights).
    pub circuit_privacy: Option<u32>,
}

impl Default for BfvOptions {
    fn default() -> Self {
        Self { weight_bits: 6, log_n: None, circuit_privacy: Some(DEFAULT_CIRCUIT_PRIVACY_BITS) }
    }
}

/// The statistical security parameter of circuit privacy by default: the user's view of a
/// response is within statistical distance `2^-40` of one computed from its scores alone.
pub const DEFAULT_CIRCUIT_PRIVACY_BITS: u32 = 40;

/// Bits of the chain primes of a BFV plan: below 2^50, where the constant-product kernel runs on
/// AVX-512 IFMA.
const BFV_PRIME_BITS: u32 = 50;
/// Bits of noise budget a BFV plan keeps beyond the noise estimate.
const BFV_MARGIN_BITS: f64 = 10.0;

/// A model compiled for BFV in batch packing: the integer circuit, the ring and chain, and one
/// BFV context per plaintext prime (the primes' product exceeds twice the output bound; each
/// is a separate evaluation, recombined by the CRT).
#[derive(Debug)]
pub struct CompiledBfv {
    /// The architecture compiled.
    pub arch: ArchSpec,
    /// The integer circuit.
    pub circuit: IntegerBatchCircuit,
    /// The ring and chain (the relinearization key is made for it).
    pub ctx: Arc<Context>,
    /// One BFV context per plaintext prime.
    pub moduli: Vec<Arc<BfvContext>>,
    /// The power of two the circuit's outputs were multiplied by to reach an ensemble's
    /// common output scale ([`CompiledBfv::ensemble`]; 1 otherwise).
    pub output_factor: i64,
    /// `b` of the flooding `[-2^b, 2^b)` the party that returns the scores (the model holder,
    /// or an ensemble's coordinator after summing) adds to every output ciphertext, with a
    /// fresh public-key encryption of zero ([`blindfold_ckks::Encryptor::rerandomize_uniform`]);
    /// `None` without circuit privacy. From [`BfvOptions::circuit_privacy`]'s `λ`:
    /// `2^b ≥ 2^(λ-1)·N·k·B` for `k` output ciphertexts (every plaintext prime's) whose noise is
    /// below `B` (the plan's noise estimate), so that the response is within statistical
    /// distance `k·N·B/2^(b+1) ≤ 2^-λ` of one made from the scores alone (Gentry 2009, §21:
    /// noise flooding); the chain holds `2^b` beyond the noise: about `λ + log2(N·k)` bits
    /// more than without.
    pub flooding_log_bound: Option<u32>,
}

impl CompiledBfv {
    /// Compiles `model` for BFV: its batch circuit quantized with `opts.weight_bits` (8-bit
    /// pixels in, the normalization folded into the first layer), then the cheapest plan —
    /// ring degree, plaintext prime size and count, chain — whose plaintext primes' product
    /// exceeds twice the proven output bound and whose chain holds the estimated noise with
    /// 10 bits to spare, at 128-bit security.
    ///
    /// # Errors
    /// As [`batch_circuit`] and [`BatchCircuit::quantize`] (a bound beyond 2^125 is refused);
    /// [`Error::Circuit`] with [`CircuitError::TooDeep`] when no 128-bit plan holds the
    /// noise (fewer weight bits or a shallower network help).
    pub fn new(model: &Model, opts: &BfvOptions) -> Result<Self> {
        let circuit = bfv_circuit(model, opts)?;
        let plan = BfvPlan::choose(&[&circuit], &[1], opts)?;
        let (ctx, moduli) = plan.contexts()?;
        Ok(Self {
            arch: model.spec().clone(),
            circuit,
            ctx,
            moduli,
            output_factor: 1,
            flooding_log_bound: plan.flooding_log_bound,
        })
    }

    /// Compiles an ensemble's models for BFV on one shared plan, so that a coordinator can sum
    /// their encrypted scores: each model quantized as by [`CompiledBfv::new`], then its
    /// outputs multiplied by a power of two that brings every model to the largest output
    /// scale ([`IntegerBatchCircuit::scaled_output`]); the plaintext primes hold
    /// `Σ_h weights[h]·bound_h` and the chain the largest model's noise plus
    /// `log2 Σ weights`. `weights[h]` is the largest integer weight model `h`'s scores get at
    /// the coordinator (1 for a plain sum). Every returned model shares `ctx` and `moduli`.
    ///
    /// # Errors
    /// As [`CompiledBfv::new`]; [`Error::Circuit`] for no models, a weight count other than
    /// the model count, a weight sum of 0 or 2^32 and beyond, or scales more than 2^62 apart.
    pub fn ensemble(models: &[&Model], opts: &BfvOptions, weights: &[u64]) -> Result<Vec<Self>> {
        let total: u128 = weights.iter().map(|&w| u128::from(w)).sum();
        if models.is_empty() || weights.len() != models.len() || total == 0 || total >= 1 << 32 {
            return Err(Error::Circuit(CircuitError::Unsupported(format!(
                "an ensemble of {} models with {} weights summing to {total} (1 to 2^32)",
                models.len(),
                weights.len(),
            ))));
        }
        let circuits = models.iter().map(|m| bfv_circuit(m, opts)).collect::<Result<Vec<_>>>()?;
        let top = circuits.iter().map(|c| c.output_scale().log2()).fold(f64::MIN, f64::max);
        let circuits = circuits
            .iter()
            .map(|c| {
                // Output scales are powers of two: the factor is exact.
                let shift = (top - c.output_scale().log2()).round();
                if shift > 62.0 {
                    return Err(Error::Circuit(CircuitError::Unsupported(format!(
                        "the ensemble's output scales are 2^{shift:.0} apart (at most 2^62)"
                    ))));
                }
                Ok((c.scaled_output(shift as u32)?, 1i64 << shift as u32))
            })
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<&IntegerBatchCircuit> = circuits.iter().map(|(c, _)| c).collect();
        let plan = BfvPlan::choose(&refs, weights, opts)?;
        let (ctx, moduli) = plan.contexts()?;
        Ok(circuits
            .into_iter()
            .zip(models)
            .map(|((circuit, output_factor), m)| Self {
                arch: m.spec().clone(),
                circuit,
                ctx: ctx.clone(),
                moduli: moduli.clone(),
                output_factor,
                flooding_log_bound: plan.flooding_log_bound,
            })
            .collect())
    }

    /// The plaintext primes.
    pub fn plaintext_moduli(&self) -> Vec<u64> {
        self.moduli.iter().map(|m| m.plaintext_modulus()).collect()
    }
}

/// `model`'s batch circuit quantized for BFV: 8-bit pixels in, the normalization folded into
/// the first linear map, `opts.weight_bits` per linear map.
fn bfv_circuit(model: &Model, opts: &BfvOptions) -> Result<IntegerBatchCircuit> {
    let arch = model.spec();
    let float = batch_circuit(arch, Some(model), MAX_DEPTH)?;
    let norm = &arch.normalization;
    let q = Quantization {
        input_scale: 1.0 / (255.0 * norm.std),
        input_offset: -norm.mean / norm.std,
        input_max: 255,
        weight_bits: opts.weight_bits,
    };
    Ok(float.quantize(&q)?)
}

/// A BFV plan: ring degree, plaintext prime size and count, chain length, flooding.
struct BfvPlan {
    log_n: u32,
    t_bits: u32,
    primes: usize,
    chain: usize,
    flooding_log_bound: Option<u32>,
}

impl BfvPlan {
    /// The cheapest 128-bit plan for the weighted sum of `circuits`' outputs (one circuit with
    /// weight 1: the circuit alone): the plaintext primes' product exceeds twice
    /// `Σ weights[h]·bound_h`, and the chain holds the largest circuit's noise estimate plus
    /// `log2 Σ weights`, with 10 bits to spare; with circuit privacy, also the flooding
    /// ([`CompiledBfv::flooding_log_bound`]).
    fn choose(circuits: &[&IntegerBatchCircuit], weights: &[u64], opts: &BfvOptions) -> Result<Self> {
        let bound: f64 = circuits.iter().zip(weights).map(|(c, &w)| w as f64 * c.output_bound()).sum();
        let sum_bits = (weights.iter().sum::<u64>().max(1) as f64).log2();
        let need_t = (2.0 * bound + 1.0).log2();
        if need_t > 120.0 {
            // Primes of t bits hold t − 1 bits each, and their product stays within 126 bits.
            return Err(Error::Circuit(CircuitError::Unsupported(format!(
                "the (summed) output bound 2^{:.0} needs {need_t:.0} bits of plaintext space, beyond the 120 the CRT \
                 recombination holds: use fewer weight bits (or fewer holders)",
                bound.log2()
            ))));
        }
        let rings: Vec<u32> = opts.log_n.map_or(vec![13, 14, 15], |l| vec![l]);
        let mut best: Option<(f64, Self)> = None;
        for &log_n in &rings {
            let n = 1usize << log_n;
            let Some(max_bits) = max_log_qp_128bit(n) else { continue };
            for t_bits in 17..=40u32 {
                let primes = (need_t / f64::from(t_bits - 1)).ceil().max(1.0) as usize;
                // The CRT recombination works in 128-bit integers.
                if primes as u32 * t_bits > 126 {
                    continue;
                }
                let noise = circuits.iter().map(|c| c.noise_bits(n, f64::from(t_bits))).fold(0.0, f64::max) + sum_bits;
                let outputs = (circuits[0].outputs() * primes) as f64;
                let flooding_log_bound = opts
                    .circuit_privacy
                    .map(|lambda| (f64::from(lambda) - 1.0 + (n as f64 * outputs).log2() + noise).ceil() as u32);
                // Below Δ/2 = Q/(2t): the noise with its margin and the flooding.
                let held = match flooding_log_bound {
                    None => noise + BFV_MARGIN_BITS,
                    Some(b) => (noise + BFV_MARGIN_BITS).max(f64::from(b)) + 1.0,
                };
                let log_q = held + f64::from(t_bits) + 1.0;
                let chain = (log_q / f64::from(BFV_PRIME_BITS - 1)).ceil() as usize;
                if (chain + 1) as u32 * BFV_PRIME_BITS > max_bits {
                    continue;
                }
                // Cost per image: evaluations × residues, over the images a batch holds.
                let cost = (primes * chain) as f64 * log_n as f64;
                if best.as_ref().is_none_or(|b| cost < b.0) {
                    best = Some((cost, Self { log_n, t_bits, primes, chain, flooding_log_bound }));
                }
            }
        }
        best.map(|b| b.1).ok_or_else(|| {
            Error::Circuit(CircuitError::TooDeep {
                needed: circuits[0].stages().len(),
                available: 0,
                hint: Some(format!(
                    "no 128-bit BFV plan holds the noise of this network with {}-bit weights (output bound 2^{:.0}){}; \
                     use fewer weight bits or a shallower network",
                    opts.weight_bits,
                    bound.log2(),
                    opts.circuit_privacy.map_or(String::new(), |l| format!(
                        " and room to flood it for {l}-bit circuit privacy (a smaller λ needs less)"
                    ))
                )),
            })
        })
    }

    /// The ring and chain, and one BFV context per plaintext prime.
    fn contexts(&self) -> Result<(Arc<Context>, Vec<Arc<BfvContext>>)> {
        let params = Parameters::new(ParametersLiteral {
            log_n: self.log_n,
            log_q: vec![BFV_PRIME_BITS; self.chain],
            log_p: vec![BFV_PRIME_BITS],
            log_default_scale: 40,
            dnum: None,
        })
        .map_err(|e| Error::Circuit(e.into()))?;
        let ctx = Context::new(&params).map_err(|e| Error::Circuit(e.into()))?;
        let ts = BfvContext::plaintext_primes(&ctx, self.t_bits, self.primes).map_err(|e| Error::Circuit(e.into()))?;
        let moduli = ts
            .iter()
            .map(|&t| BfvContext::new(&ctx, t))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Circuit(e.into()))?;
        Ok((ctx, moduli))
    }
}

/// The batch-packing circuit of `arch` (slot `s` of every ciphertext is image `s`, one
/// ciphertext per feature) with inputs at `top_level`, with `model`'s weights (or zeros: the
/// structure). Linear layers with no activation between them (a convolution and the pooling
/// after it, a pooling and the layer after it) compose into one map of one level;
/// activations fold their leading coefficient into the maps around them as in [`circuit`].
///
/// # Errors
/// As [`circuit`]: a layer without an encrypted form, two activations without a linear
/// layer between them, an activation before the first linear layer, a network deeper than
/// `top_level`.
pub fn batch_circuit(arch: &ArchSpec, model: Option<&Model>, top_level: usize) -> Result<BatchCircuit> {
    check(arch)?;
    if let Some(m) = model {
        if m.spec() != arch {
            return Err(Error::Architecture("the model's architecture differs from the one compiled".into()));
        }
    }
    let shapes = arch.shapes()?;
    let mut stages = Vec::new();
    let mut pending: Option<LinearMap> = None;
    // Factor on the weights of the next map (an activation's leading coefficient).
    let mut factor = 1.0;
    // Stages are laid out from a virtual top; BatchCircuit::new assigns the real levels once
    // it knows which squares are lazy.
    let mut level = MAX_DEPTH;
    let too_deep = || Error::Circuit(CircuitError::TooDeep { needed: arch.depth(), available: top_level, hint: None });
    for (i, l) in arch.layers.iter().enumerate() {
        let (input, output) = (shapes[i], shapes[i + 1]);
        let map = match l {
            LayerSpec::Conv2d { kernel, stride, padding, .. } => {
                let geom = ConvGeom { input, output, kernel: *kernel, stride: *stride, padding: *padding };
                let (w, b) = weights(model, i, output.c, geom.cols());
                LinearMap::conv(&geom, &w, &b)?
            }
            LayerSpec::Dense { outputs } => {
                let (w, b) = weights(model, i, *outputs, input.len());
                LinearMap::dense(input.len(), &w, &b)?
            }
            LayerSpec::AvgPool2d { kernel, stride } => {
                LinearMap::avgpool(&PoolGeom { input, output, kernel: *kernel, stride: *stride })
            }
            LayerSpec::Square | LayerSpec::Poly { .. } | LayerSpec::ReluPoly { .. } => {
                let Some(map) = pending.take() else {
                    return Err(Error::Circuit(CircuitError::Unsupported(format!(
                        "layer {i}: an activation before the first linear layer, or two activations without a linear layer between them"
                    ))));
                };
                let fold = folded(l);
                stages.push(BatchStage::Linear { map: map.scaled(fold.input, fold.input), level });
                level = level.checked_sub(1).ok_or_else(too_deep)?;
                let p = PolynomialActivation::monic(fold.lower, level)?;
                level = level.checked_sub(p.depth()).ok_or_else(too_deep)?;
                stages.push(BatchStage::Polynomial(p));
                factor = fold.output;
                continue;
            }
            LayerSpec::Flatten => continue,
            LayerSpec::Relu => unreachable!("checked"),
        };
        let map = map.scaled(factor, 1.0);
        factor = 1.0;
        pending = Some(match pending.take() {
            Some(p) => p.then(&map)?,
            None => map,
        });
    }
    let map =
        pending.ok_or_else(|| Error::Circuit(CircuitError::Unsupported("the last layer must be linear".into())))?;
    if level == 0 {
        return Err(too_deep());
    }
    stages.push(BatchStage::Linear { map, level });
    Ok(BatchCircuit::new(arch.input.len(), top_level, stages, OUTPUT_HEADROOM)?)
}

/// The scale inputs are encrypted at: the top prime of the chain.
pub fn input_scale(ctx: &Context) -> f64 {
    ctx.params().q()[ctx.max_level()] as f64
}

/// The depth of `arch`'s circuit (checks the architecture can be compiled).
///
/// # Errors
/// As [`circuit`].
pub fn circuit_depth(arch: &ArchSpec) -> Result<usize> {
    check(arch)?;
    Ok(arch.depth())
}

fn check(arch: &ArchSpec) -> Result<()> {
    arch.shapes()?;
    let unsupported =
        |i: usize, what: String| Err(Error::Circuit(CircuitError::Unsupported(format!("layer {i}: {what}"))));
    for (i, l) in arch.layers.iter().enumerate() {
        match l {
            LayerSpec::Relu => return unsupported(
                i,
                "ReLU has no encrypted form: train with a polynomial activation (--activation square or relu-poly2..4)"
                    .into(),
            ),
            LayerSpec::Poly { .. } | LayerSpec::Square | LayerSpec::ReluPoly { .. }
                if l.degree().is_none_or(|d| d == 0 || d > 4) =>
            {
                return unsupported(i, format!("polynomial activations of degree 1 to 4 (got {:?})", l.degree()))
            }
            _ => {}
        }
    }
    if !matches!(
        arch.layers.iter().rev().find(|l| !matches!(l, LayerSpec::Flatten)),
        Some(LayerSpec::Dense { .. } | LayerSpec::Conv2d { .. })
    ) {
        return unsupported(
            arch.layers.len().saturating_sub(1),
            "the last layer must be linear (dense or convolution)".into(),
        );
    }
    Ok(())
}

/// How a polynomial activation `p(x) = Σ_k c_k x^k` of degree `d` is evaluated: on
/// `x' = s·x` (the factor `s` goes into the linear layer before it) as `f·m(x')`, with `m`
/// monic (the stage) and `f` going into the linear layer after it.
///
/// Both folds cost nothing, but each scales plaintext weights, whose encoding error is
/// absolute: weights scaled by a small factor lose relative precision. Folding the whole
/// leading coefficient `a = c_d` into the next layer (`s = 1`, `f = a`) makes its weights
/// `|a|` times smaller; for ReLU fits on wide ranges `a` is tiny (about `10^-4` at degree 2,
/// `10^-9` at degree 4), and the logits drown in encoding noise. Splitting it evenly,
/// `s = |a|^{1/(d+1)}` and `f = a/s^d` (so `|f| = s`), keeps both layers' weights within a
/// factor `|a|^{-1/(d+1)}` of their size, which balances the error of the layer before
/// (amplified by `p'/s`) against the layer after (by `1/|f|`).
struct Folded {
    /// Factor on the linear layer before the activation.
    input: f64,
    /// Factor on the linear layer after it.
    output: f64,
    /// Lower coefficients of the monic polynomial `m` (`c_0` first).
    lower: Vec<f64>,
}

fn folded(l: &LayerSpec) -> Folded {
    let coeffs = l.polynomial().expect("an activation");
    let d = l.degree().expect("an activation");
    let a = coeffs[d];
    let s = a.abs().powf(1.0 / (d + 1) as f64);
    let f = a / s.powi(d as i32);
    // p(x) = Σ c_k s^{-k} x'^k = f·(x'^d + Σ_{k<d} c_k s^{-k}/f x'^k).
    let lower = coeffs[..d].iter().enumerate().map(|(k, c)| c / s.powi(k as i32) / f).collect();
    Folded { input: s, output: f, lower }
}

/// Per linear layer, the factor on its weights (from activations and pooling before it) and
/// on its whole output (from pooling right after it).
fn factors(arch: &ArchSpec) -> Result<(Vec<f64>, Vec<f64>)> {
    let n = arch.layers.len();
    let (mut weight, mut output) = (vec![1.0; n], vec![1.0; n]);
    let mut pending = 1.0;
    let mut last_linear: Option<usize> = None;
    let mut clean = false; // no activation since the last linear layer
    for (i, l) in arch.layers.iter().enumerate() {
        match l {
            LayerSpec::Conv2d { .. } | LayerSpec::Dense { .. } => {
                weight[i] = pending;
                pending = 1.0;
                last_linear = Some(i);
                clean = true;
            }
            LayerSpec::AvgPool2d { kernel, .. } => {
                let f = 1.0 / (kernel * kernel) as f64;
                match last_linear {
                    Some(j) if clean => output[j] *= f,
                    _ => pending *= f,
                }
            }
            LayerSpec::Square | LayerSpec::Poly { .. } | LayerSpec::ReluPoly { .. } => {
                if pending != 1.0 {
                    return Err(Error::Circuit(CircuitError::Unsupported(format!(
                        "layer {i}: two non-linear layers (or a pooling between activations) without a linear layer between them"
                    ))));
                }
                let fold = folded(l);
                if let Some(j) = last_linear {
                    output[j] *= fold.input;
                }
                pending = fold.output;
                clean = false;
            }
            LayerSpec::Flatten | LayerSpec::Relu => {}
        }
    }
    Ok((weight, output))
}

/// Weights (row-major, `outputs × inputs`) and biases of linear layer `i`, zero without a model.
fn weights(model: Option<&Model>, i: usize, outputs: usize, inputs: usize) -> (Vec<f64>, Vec<f64>) {
    match model.and_then(|m| m.params(i)) {
        Some(p) => (p.weight.iter().map(|&w| w as f64).collect(), p.bias.iter().map(|&b| b as f64).collect()),
        None => (vec![0.0; outputs * inputs], vec![0.0; outputs]),
    }
}

/// Estimated cost of a first stage, in key switches: plaintext products at 1/60 of one
/// (measured at N = 8192 and 16384), each input ciphertext at 1/2 (the client encrypts and
/// uploads it, the server expands it).
fn first_stage_cost(stage: &Stage, cts: usize) -> f64 {
    let c = stage.cost();
    c.key_switches() as f64 + c.plain_products as f64 / 60.0 + cts as f64 / 2.0
}

/// The circuit of `arch` for `slots` slots with inputs at `top_level`, with `model`'s
/// weights (or zeros: the structure, which is the same, for a client).
///
/// # Errors
/// [`Error::Circuit`]: ReLU or another layer without an encrypted form, a network deeper
/// than `top_level`, a layout that does not fit; [`Error::Architecture`] for an invalid
/// architecture.
pub fn circuit(arch: &ArchSpec, model: Option<&Model>, slots: usize, top_level: usize) -> Result<Circuit> {
    check(arch)?;
    if let Some(m) = model {
        if m.spec() != arch {
            return Err(Error::Architecture("the model's architecture differs from the one compiled".into()));
        }
    }
    let depth = arch.depth();
    if depth > top_level {
        return Err(Error::Circuit(CircuitError::TooDeep { needed: depth, available: top_level, hint: None }));
    }
    let shapes = arch.shapes()?;
    let (weight_factor, output_factor) = factors(arch)?;
    let last_linear = arch.layers.iter().rposition(|l| matches!(l, LayerSpec::Conv2d { .. } | LayerSpec::Dense { .. }));
    let mut level = top_level;
    let mut stages: Vec<Stage> = Vec::new();
    let mut packing: Option<Packing> = None;
    let mut layout: Option<Layout> = None;
    // The layout the next layer reads: the previous layer's output, or the client's image.
    let input_layout = |layout: &mut Option<Layout>, packing: &mut Option<Packing>| -> Result<Layout> {
        if let Some(lay) = layout.take() {
            return Ok(lay);
        }
        let p = Packing::image(arch.input, slots)?;
        let lay = p.layout();
        *packing = Some(p);
        Ok(lay)
    };
    for (i, l) in arch.layers.iter().enumerate() {
        let (input, output) = (shapes[i], shapes[i + 1]);
        let scaled = |m: LinearMap| m.scaled(weight_factor[i] * output_factor[i], output_factor[i]);
        match l {
            LayerSpec::Conv2d { kernel, stride, padding, .. } => {
                let geom = ConvGeom { input, output, kernel: *kernel, stride: *stride, padding: *padding };
                let (w, b) = weights(model, i, output.c, geom.cols());
                let (stage, out) = match &layout {
                    None => {
                        let (p, stage, out) = first_conv(&geom, &w, &b, slots, level, scaled)?;
                        packing = Some(p);
                        (stage, out)
                    }
                    Some(lay) => {
                        let (s, out) = later_conv(lay, &geom, scaled(LinearMap::conv(&geom, &w, &b)?), level)?;
                        (Stage::Linear(s), out)
                    }
                };
                stages.push(stage);
                layout = Some(out);
                level -= 1;
            }
            LayerSpec::Dense { outputs } => {
                let lay = input_layout(&mut layout, &mut packing)?;
                let (w, b) = weights(model, i, *outputs, input.len());
                let last = Some(i) == last_linear;
                let headroom = if last { OUTPUT_HEADROOM } else { 1.0 };
                let (stage, out) = dense(&lay, &scaled(LinearMap::dense(input.len(), &w, &b)?), last, level, headroom)?;
                stages.push(Stage::Linear(stage));
                layout = Some(out);
                level -= 1;
            }
            LayerSpec::AvgPool2d { kernel, stride } => {
                let lay = input_layout(&mut layout, &mut packing)?;
                let geom = PoolGeom { input, output, kernel: *kernel, stride: *stride };
                let (stage, out) = RotationSum::pool(&lay, &geom, level)?;
                stages.push(Stage::RotationSum(stage));
                layout = Some(out);
            }
            LayerSpec::Flatten => {
                if let Some(lay) = layout.as_mut() {
                    lay.grid = None;
                }
            }
            LayerSpec::Square | LayerSpec::Poly { .. } | LayerSpec::ReluPoly { .. } => {
                if layout.is_none() {
                    return Err(Error::Circuit(CircuitError::Unsupported(format!(
                        "layer {i}: an activation before the first linear layer"
                    ))));
                }
                let stage = PolynomialActivation::monic(folded(l).lower, level)?;
                level -= stage.depth();
                stages.push(Stage::Polynomial(stage));
            }
            LayerSpec::Relu => unreachable!("checked"),
        }
    }
    let (packing, layout) = (packing.expect("a linear layer"), layout.expect("a linear layer"));
    Ok(Circuit::new(packing, top_level, stages, layout)?)
}

/// A convolution on the packed output of an earlier layer.
fn later_conv(
    lay: &Layout,
    geom: &ConvGeom,
    map: LinearMap,
    level: usize,
) -> Result<(blindfold_tensor::LinearTransform, Layout)> {
    let grid = lay.grid.as_ref().filter(|g| g.shape == geom.input).ok_or_else(|| {
        Error::Circuit(CircuitError::Unsupported(format!("a convolution needs a {} feature map on a grid", geom.input)))
    })?;
    let name = format!("conv {}→{} (on ciphertexts)", geom.input, geom.output);
    Ok(placed(
        lay,
        &map,
        geom.output,
        (grid.row * geom.stride, grid.col * geom.stride),
        |_, y, x, f| grid_tap(grid, geom, y, x, f),
        name,
        level,
    )?)
}

/// The first convolution: the cheapest of the three packings.
fn first_conv(
    geom: &ConvGeom,
    w: &[f64],
    b: &[f64],
    slots: usize,
    level: usize,
    scaled: impl Fn(LinearMap) -> LinearMap,
) -> Result<(Packing, Stage, Layout)> {
    let mut candidates: Vec<(Packing, Stage, Layout)> = Vec::new();
    if let Ok(p @ Packing::Im2col { block, .. }) = Packing::im2col(*geom, true, slots) {
        let map = scaled(LinearMap::im2col_conv(geom, true, w, b)?);
        let (s, out) = im2col_in_place(&p.layout(), geom, block, &map, level)?;
        candidates.push((p, Stage::Linear(s), out));
    }
    if let Ok(p) = Packing::im2col(*geom, false, slots) {
        let map = scaled(LinearMap::im2col_conv(geom, false, w, b)?);
        let name = format!("conv {}→{} (im2col, giant steps over channels)", geom.input, geom.output);
        if let Ok((s, out)) = placed(&p.layout(), &map, geom.output, (geom.output.w, 1), |_, _, _, _| 0, name, level) {
            candidates.push((p, Stage::Linear(s), out));
        }
    }
    if let Ok(p) = Packing::image(geom.input, slots) {
        let lay = p.layout();
        if let Ok((s, out)) = later_conv(&lay, geom, scaled(LinearMap::conv(geom, w, b)?), level) {
            candidates.push((p, Stage::Linear(s), out));
        }
    }
    candidates
        .into_iter()
        .min_by(|a, b| first_stage_cost(&a.1, a.0.ciphertexts()).total_cmp(&first_stage_cost(&b.1, b.0.ciphertexts())))
        .ok_or_else(|| {
            Error::Circuit(CircuitError::Layout(format!(
                "the first convolution {} → {} fits no packing in {slots} slots",
                geom.input, geom.output
            )))
        })
}
