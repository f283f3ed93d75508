//! CKKS bootstrapping: refreshes a ciphertext at level 0 to a ciphertext of the same slots at a
//! higher level.
//!
//! The pipeline of Cheon–Han–Kim–Kim–Song (Eurocrypt 2018) in the full-RNS form of
//! Chen–Chillotti–Song (Eurocrypt 2019) and Bossuat–Mouchet–Troncoso-Pastoriza–Hubaux
//! (Eurocrypt 2021):
//!
//! 1. **ModRaise**: the level-0 ciphertext `(c_0, c_1) mod q_0` is read modulo the whole chain
//!    `Q_L`; it decrypts to `m + q_0·I` with `I` a polynomial of small integer coefficients
//!    (`|I| ≤ K`, `K` set from the secret's distribution, [`BootstrapConfig::k`]). With the
//!    sparse-secret encapsulation (Bossuat–Troncoso-Pastoriza–Hubaux, ACNS 2022;
//!    [`BootstrapConfig::sparse_secret`]) the level-0 ciphertext is first switched to an
//!    ephemeral secret of few nonzero coefficients and switched back after ModRaise, so `K`
//!    is small (21 instead of 516 at N = 2^16).
//! 2. **CoeffsToSlots**: the homomorphic inverse special FFT, factored into
//!    [`BootstrapConfig::cts_levels`] sparse linear maps (one level each, baby-step giant-step),
//!    puts the coefficients `t = (m + q_0·I)/q_0` into the slots (in bit-reversed order, as
//!    real and imaginary parts: a conjugation splits them into two ciphertexts — or, with
//!    sparse slots ([`BootstrapConfig::slots`]), lays them side by side in one).
//! 3. **EvalMod**: `sin(2πt)/(2π) ≈ m/q_0` on each, by a Chebyshev interpolant of
//!    `cos(2π(t - 1/4)/2^r)` followed by `r` double-angle steps `y ← 2y² - 1`, and optionally
//!    the arcsine correction `y + y³/6` ([`BootstrapConfig::arcsine`]).
//! 4. **SlotsToCoeffs**: the homomorphic special FFT ([`BootstrapConfig::stc_levels`] levels)
//!    takes the coefficients back to the slots, times `q_0/(2πΔ)`.
//!
//! The chain of a bootstrappable parameter set is, from the bottom: `q_0`, the levels left
//! for computation, the SlotsToCoeffs primes, the EvalMod primes, the CoeffsToSlots primes.

use crate::context::Context;
use crate::encoder::Encoder;
use crate::error::{Error, Result};
use crate::evaluator::Evaluator;
use crate::keys::{EncapsulationKeys, GaloisKeys, KeySwitchingKey, RelinearizationKey};
use crate::linear::{EncodedLinearTransform, LinearTransform};
use crate::params::{check_sparse_secret, Parameters, ParametersLiteral};
use crate::polynomial::ChebyshevPolynomial;
use crate::types::{Ciphertext, GaloisKeyRequest, Level};
use blindfold_math::slice;
use num_complex::Complex64;
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::f64::consts::PI;
use std::sync::Arc;

/// Twiddle `exp(2πi·(5^i mod 4·len)/(4·len))` of the butterflies of length `len` in the
/// encoder's special FFT.
fn twiddle(len: usize, i: usize) -> Complex64 {
    let m = 4 * len;
    let g = (0..i).fold(1usize, |g, _| g * 5 % m);
    Complex64::from_polar(1.0, 2.0 * PI * g as f64 / m as f64)
}

/// One butterfly stage of length `len` on `n` slots as a linear map with diagonals `0`, `±len/2`:
/// the forward stage of the special FFT `(u, v) → (u + w·v, u - w·v)`, or the inverse stage
/// `(u, v) → (u + v, (u - v)·w̄)` (without the final division by two).
fn butterfly(n: usize, len: usize, inverse: bool) -> LinearTransform {
    let h = len / 2;
    let zero = Complex64::new(0.0, 0.0);
    let one = Complex64::new(1.0, 0.0);
    let (mut d0, mut plus, mut minus) = (vec![zero; n], vec![zero; n], vec![zero; n]);
    for p in 0..n {
        let r = p % len;
        if r < h {
            d0[p] = one;
            plus[p] = if inverse { one } else { twiddle(len, r) };
        } else {
            let w = twiddle(len, r - h);
            if inverse {
                minus[p] = w.conj();
                d0[p] = -w.conj();
            } else {
                minus[p] = one;
                d0[p] = -w;
            }
        }
    }
    let mut diagonals = BTreeMap::from([(0, d0), (h % n, plus)]);
    let entry = diagonals.entry((n - h) % n).or_insert_with(|| vec![zero; n]);
    entry.iter_mut().zip(&minus).for_each(|(e, m)| *e += m);
    LinearTransform::new(n, diagonals).expect("valid butterfly")
}

/// The special FFT on `n` slots (`n` a power of two) as `levels` sparse factors, in the order
/// they are applied.
///
/// - `inverse = false` (SlotsToCoeffs direction): maps the coefficient vector in bit-reversed
///   order, `w[rev(j)]`, to the slots `U·w`, where `U[j][k] = ζ^{5^j·k}` is the encoder's
///   canonical embedding (`w_k = m_k + i·m_{k+n}`).
/// - `inverse = true` (CoeffsToSlots direction): maps slots `z` to `n·w[rev(j)]` where
///   `z = U·w` (the unnormalized inverse).
///
/// Each factor merges consecutive butterfly stages (`log2 n / levels` of them, rounded, the
/// larger groups first): a factor of `k` stages has at most `2^{k+1} - 1` diagonals.
///
/// # Errors
/// [`Error::InvalidArgument`] unless `1 ≤ levels ≤ log2 n`.
pub fn special_fft_factors(n: usize, levels: usize, inverse: bool) -> Result<Vec<LinearTransform>> {
    let log_n = n.trailing_zeros() as usize;
    if !n.is_power_of_two() || n < 2 || levels == 0 || levels > log_n {
        return Err(Error::InvalidArgument(format!(
            "the special FFT on {n} slots splits into 1..={log_n} levels, not {levels}"
        )));
    }
    let mut lens: Vec<usize> = (1..=log_n).map(|k| 1 << k).collect();
    if inverse {
        lens.reverse();
    }
    let mut out = Vec::with_capacity(levels);
    let mut it = lens.into_iter();
    for g in 0..levels {
        let size = log_n / levels + usize::from(g < log_n % levels);
        let mut m = butterfly(n, it.next().expect("stage"), inverse);
        for _ in 1..size {
            m = butterfly(n, it.next().expect("stage"), inverse).compose(&m)?;
        }
        out.push(m);
    }
    Ok(out)
}

/// What a bootstrap does: how many levels each step takes and how `t mod 1` is approximated.
#[derive(Clone, Debug, PartialEq)]
pub struct BootstrapConfig {
    /// Levels (linear maps) of CoeffsToSlots.
    pub cts_levels: usize,
    /// Levels (linear maps) of SlotsToCoeffs.
    pub stc_levels: usize,
    /// Bound `K` on the coefficients of `I` after ModRaise: `t = m/q_0 + I ∈ [-K, K]`.
    pub k: f64,
    /// Sparse-secret encapsulation (Bossuat et al., ACNS 2022): before ModRaise the level-0
    /// ciphertext is switched to an ephemeral secret with this many nonzero coefficients
    /// (and back to the secret key after), so `K` depends on this weight instead of on `N`.
    /// `None`: ModRaise under the secret key itself.
    pub sparse_secret: Option<usize>,
    /// Sparse slots: `Some(n)` bootstraps ciphertexts whose `N/2` slots repeat a period of
    /// `n` (a power of two, `2 ≤ n ≤ N/4`: `n` values encoded repeated, i.e. a plaintext in
    /// the subring `Z[X^{N/2n}]`). The raised ciphertext is first projected onto that subring
    /// (SubSum: `log2(N/2n)` rotations), the DFTs have `log2 n` butterfly stages instead of
    /// `log2(N/2)`, and the real and imaginary parts of the coefficients share one ciphertext,
    /// so EvalMod runs once instead of twice (Cheon et al., Eurocrypt 2018, §4.2; Chen et al.,
    /// Eurocrypt 2019, §4). `None` (or `N/2`): full slots.
    pub slots: Option<usize>,
    /// The arcsine correction after EvalMod (two more levels): `y + y³/6 ≈ arcsin(y) = 2π(t - I)`
    /// instead of `y = sin(2πt) ≈ 2π(t - I)`, so the sine's cubic error (relative
    /// `(2π(t - I))²/6`, which
    /// costs inputs with large coefficients — a constant slot vector, a large mean — most of
    /// their precision) becomes a quintic one (Cheon et al., Eurocrypt 2018, §5; Bossuat et al.
    /// 2021, §4.3, degree 3).
    pub arcsine: bool,
    /// Double-angle steps `r` after the cosine.
    pub double_angles: u32,
    /// Degree of the Chebyshev interpolant of `cos(2π(K·x - 1/4)/2^r)` on `[-1, 1]`.
    pub degree: usize,
    /// Baby steps of the polynomial evaluation ([`Evaluator::evaluate_chebyshev`]).
    pub baby: usize,
    /// log2 of `q_0 / (Δ·R)`: before ModRaise the message is multiplied by the integer
    /// `R = 2^k` (no level, no noise) so that it sits this many bits below `q_0`. Small values
    /// make the message large against the EvalMod noise (amplified by `2πK` and `√N`), large
    /// values make `sin(2πt)/(2π) ≈ t` exact; the 2^16 presets use 6.
    pub log_message_ratio: u32,
}

impl BootstrapConfig {
    /// `K` for a uniform ternary secret of `n` coefficients, such that a coefficient of `I`
    /// leaves `[-K, K]` with probability below `2^-40` per bootstrap (union bound over the `n`
    /// coefficients, Gaussian tail of the sum `Σ c_1[j]·s[i-j]/q_0`, whose variance is
    /// `(2n/3)/12` for a secret with `2n/3` nonzero coefficients, plus `1/2` for `c_0/q_0`).
    pub fn k_for_uniform_ternary(n: usize) -> f64 {
        let sigma = ((2.0 * n as f64 / 3.0) / 12.0).sqrt();
        let target = (-40.0 - (n as f64).log2() - 1.0) * std::f64::consts::LN_2;
        // Mills' bound: P(Z > t) ≤ exp(-t²/2) / (t·sqrt(2π)).
        let mut t = 1.0f64;
        while -t * t / 2.0 - (t * (2.0 * PI).sqrt()).ln() > target {
            t += 0.01;
        }
        (t * sigma + 0.5).ceil()
    }

    /// `K` for an ephemeral secret with `h` nonzero ternary coefficients: `t = (c_0 + c_1·s')/q_0`
    /// differs from `c_1·s'/q_0` by at most `1/2` (`c_0` is reduced modulo `q_0`), and
    /// `c_1·s'/q_0` is a sum of `h` terms uniform on `[-1/2, 1/2]` (taking the coefficients of a
    /// key-switched `c_1` as uniform), strictly sub-Gaussian with variance `1/12` each; so a
    /// coefficient leaves `[-K, K]` with probability at most `2·exp(-(K - 1/2)²/(2h/12))`,
    /// below `2^-40` per bootstrap with the union bound over the `n` coefficients.
    pub fn k_for_sparse_ternary(n: usize, h: usize) -> f64 {
        let variance = h as f64 / 12.0;
        ((2.0 * variance * ((2 * n) as f64 * 2f64.powi(40)).ln()).sqrt() + 0.5).ceil()
    }

    /// Refuses a `K` below what the secret needs ([`BootstrapConfig::k_for_sparse_ternary`] or
    /// [`BootstrapConfig::k_for_uniform_ternary`]): EvalMod would be wrong in most bootstraps.
    fn check_k(&self, ctx: &Context) -> Result<()> {
        let (needed, secret) = match self.sparse_secret {
            Some(h) => (Self::k_for_sparse_ternary(ctx.n(), h), format!("a sparse secret of {h} nonzero coefficients")),
            None => (Self::k_for_uniform_ternary(ctx.n()), "a uniform ternary secret".to_string()),
        };
        if self.k < needed {
            return Err(Error::InvalidParameters(format!(
                "K = {} is below the {needed} that {secret} needs at N = {}",
                self.k,
                ctx.n()
            )));
        }
        Ok(())
    }

    /// The EvalMod polynomial: the Chebyshev interpolant on `[-1, 1]` of
    /// `cos(2π(K·x - 1/4)/2^r)`.
    pub fn cosine(&self) -> ChebyshevPolynomial {
        let (k, r) = (self.k, self.double_angles);
        ChebyshevPolynomial::interpolate(|x| (2.0 * PI * (k * x - 0.25) / f64::from(1u32 << r)).cos(), self.degree)
    }

    /// Levels EvalMod consumes: the cosine's depth, one per double angle, two for the arcsine.
    pub fn evalmod_depth(&self) -> usize {
        self.cosine().depth() + self.double_angles as usize + 2 * usize::from(self.arcsine)
    }

    /// The Galois keys bootstrapping at the top of `ctx`'s chain uses (rotations of both DFTs
    /// and the conjugation), each at the level it is used — without encoding anything: what a
    /// client needs to generate the keys ([`crate::KeyGenerator::galois_keys`]).
    ///
    /// # Errors
    /// As [`Bootstrapper::new`] for a chain too short or a DFT level budget out of range.
    pub fn key_requests(&self, ctx: &Context) -> Result<Vec<GaloisKeyRequest>> {
        let (cts, stc) = self.dft_factors(ctx)?;
        Ok(self.requests_of(ctx, &self.subsum_steps(ctx)?, &cts, &stc))
    }

    /// The period `n` of sparse slots, or `None` for full slots.
    fn sparse_slots(&self, ctx: &Context) -> Result<Option<usize>> {
        let full = ctx.n() / 2;
        match self.slots {
            None => Ok(None),
            Some(n) if n == full => Ok(None),
            Some(n)
                if n.is_power_of_two()
                    && (2..=full / 2).contains(&n)
                    && n.trailing_zeros() as usize >= self.cts_levels.max(self.stc_levels) =>
            {
                Ok(Some(n))
            }
            Some(n) => Err(Error::InvalidParameters(format!(
                "sparse slots must be a power of two from 2 to N/4 = {} (or N/2 = {full} for full slots) with at least \
                 2^{} of them for DFTs of {} and {} levels, not {n}",
                full / 2,
                self.cts_levels.max(self.stc_levels),
                self.cts_levels,
                self.stc_levels
            ))),
        }
    }

    /// The rotations of SubSum (sparse slots only): by `n`, `2n`, … `N/4`.
    fn subsum_steps(&self, ctx: &Context) -> Result<Vec<i64>> {
        let full = ctx.n() / 2;
        Ok(self
            .sparse_slots(ctx)?
            .map_or(Vec::new(), |n| (0..(full / n).trailing_zeros()).map(|i| (n << i) as i64).collect()))
    }

    /// The CoeffsToSlots and SlotsToCoeffs factors for `ctx`'s ring, on all `N/2` slots.
    ///
    /// For `n` sparse slots each factor is the `n`-point one acting on blocks of `2n` slots
    /// (inputs `n`-periodic), repeated; the last CoeffsToSlots factor also multiplies the
    /// second half of every block by `-i`, so that `v + conj(v)` holds the real parts then
    /// the imaginary parts, and the first SlotsToCoeffs factor starts by recombining them,
    /// `a + i·b`.
    fn dft_factors(&self, ctx: &Context) -> Result<(Vec<LinearTransform>, Vec<LinearTransform>)> {
        self.check_depth(ctx)?;
        let full = ctx.n() / 2;
        let Some(n) = self.sparse_slots(ctx)? else {
            return Ok((
                special_fft_factors(full, self.cts_levels, true)?,
                special_fft_factors(full, self.stc_levels, false)?,
            ));
        };
        let m = 2 * n;
        let (one, i) = (Complex64::new(1.0, 0.0), Complex64::new(0.0, 1.0));
        let halves =
            |lo: Complex64, hi: Complex64| -> Vec<Complex64> { (0..m).map(|p| if p < n { lo } else { hi }).collect() };
        let blocks = |inverse: bool, levels: usize| -> Result<Vec<LinearTransform>> {
            special_fft_factors(n, levels, inverse)?.iter().map(|f| f.tiled(m)).collect()
        };
        let mut cts = blocks(true, self.cts_levels)?;
        let last = cts.pop().expect("at least one CoeffsToSlots level");
        cts.push(last.rows_scaled(&halves(one, -i)));
        let mut stc = blocks(false, self.stc_levels)?;
        let recombine = LinearTransform::new(m, BTreeMap::from([(0, halves(one, i)), (n, halves(i, one))]))?;
        stc[0] = stc[0].compose(&recombine)?;
        let everywhere = |v: Vec<LinearTransform>| v.iter().map(|f| f.tiled(full)).collect::<Result<Vec<_>>>();
        Ok((everywhere(cts)?, everywhere(stc)?))
    }

    /// The keys of SubSum (at the top), of the factors, CoeffsToSlots factor `j` at level
    /// `top - j`, SlotsToCoeffs factor `j` below EvalMod, and of the conjugation between them.
    fn requests_of(
        &self,
        ctx: &Context,
        subsum: &[i64],
        cts: &[LinearTransform],
        stc: &[LinearTransform],
    ) -> Vec<GaloisKeyRequest> {
        let top = ctx.max_level();
        let evalmod_top = top - self.cts_levels;
        let stc_top = self.stc_top(ctx);
        let mut requests: Vec<GaloisKeyRequest> =
            subsum.iter().map(|&step| ctx.rotation_key_request(step, Level(top))).collect();
        for (factors, first) in [(cts, top), (stc, stc_top)] {
            for (j, m) in factors.iter().enumerate() {
                requests.extend(m.key_requests(ctx, Level(first - j)));
            }
        }
        requests.push(GaloisKeyRequest { element: ctx.galois_element_for_conjugation(), level: Level(evalmod_top) });
        requests
    }

    /// Level of SlotsToCoeffs' first factor: below CoeffsToSlots and EvalMod.
    fn stc_top(&self, ctx: &Context) -> usize {
        ctx.max_level() - self.cts_levels - self.evalmod_depth()
    }

    fn check_depth(&self, ctx: &Context) -> Result<()> {
        let (depth, top) = (self.depth(), ctx.max_level());
        if depth > top {
            return Err(Error::InvalidParameters(format!(
                "bootstrapping consumes {depth} levels ({} CoeffsToSlots, {} EvalMod, {} SlotsToCoeffs) but the chain has {top}",
                self.cts_levels,
                self.evalmod_depth(),
                self.stc_levels
            )));
        }
        Ok(())
    }

    /// Levels one bootstrap consumes from the top of the chain.
    pub fn depth(&self) -> usize {
        self.cts_levels + self.evalmod_depth() + self.stc_levels
    }
}

/// A released bootstrappable parameter set: a CKKS chain laid out for bootstrapping (from the
/// bottom: `q_0`, the levels left for computation, SlotsToCoeffs, EvalMod, CoeffsToSlots) and the
/// configuration that consumes its top. Named for what it guarantees; never changed in place.
#[derive(Clone, Copy, Debug)]
pub struct BootstrapPreset {
    /// Name: ring degree, levels left after a bootstrap, security.
    pub name: &'static str,
    /// log2 N.
    pub log_n: u32,
    /// Chain prime sizes in bits, `q_0` first.
    pub log_q: &'static [u32],
    /// Special prime sizes in bits.
    pub log_p: &'static [u32],
    /// log2 of the default scale Δ (the scale bootstrapping expects and returns).
    pub log_default_scale: u32,
    /// CoeffsToSlots levels.
    pub cts_levels: usize,
    /// SlotsToCoeffs levels.
    pub stc_levels: usize,
    /// Double-angle steps.
    pub double_angles: u32,
    /// Degree of the cosine interpolant.
    pub degree: usize,
    /// Baby steps of the cosine's evaluation.
    pub baby: usize,
    /// See [`BootstrapConfig::log_message_ratio`].
    pub log_message_ratio: u32,
    /// See [`BootstrapConfig::sparse_secret`].
    pub sparse_secret: Option<usize>,
    /// See [`BootstrapConfig::arcsine`].
    pub arcsine: bool,
    /// Precision delivered, in bits, in the worst slot of inputs uniform in `[-1, 1]` at the
    /// default scale (measured by `blindfold bench bootstrap`, rounded down; BENCHMARKS.md).
    pub precision_bits: u32,
    /// Whether [`BootstrapPreset::parameters`] checks the 128-bit bound (false only for the
    /// small test presets, whose names say `INSECURE`).
    pub secure: bool,
}

impl BootstrapPreset {
    /// The chain's parameters (checked against the 128-bit bound unless the preset is a test
    /// preset).
    ///
    /// # Errors
    /// As [`Parameters::new`]; never for the released presets (each has a test).
    pub fn parameters(&self) -> Result<Parameters> {
        let literal = ParametersLiteral {
            log_n: self.log_n,
            log_q: self.log_q.to_vec(),
            log_p: self.log_p.to_vec(),
            log_default_scale: self.log_default_scale,
            dnum: None,
        };
        if self.secure {
            Parameters::new(literal)
        } else {
            Parameters::new_insecure(literal)
        }
    }

    /// The bootstrapping configuration (`K` for the ephemeral sparse secret, or for the
    /// uniform ternary secret of this ring without one).
    pub fn config(&self) -> BootstrapConfig {
        let n = 1 << self.log_n;
        BootstrapConfig {
            cts_levels: self.cts_levels,
            stc_levels: self.stc_levels,
            k: match self.sparse_secret {
                Some(h) => BootstrapConfig::k_for_sparse_ternary(n, h),
                None => BootstrapConfig::k_for_uniform_ternary(n),
            },
            sparse_secret: self.sparse_secret,
            slots: None,
            arcsine: self.arcsine,
            double_angles: self.double_angles,
            degree: self.degree,
            baby: self.baby,
            log_message_ratio: self.log_message_ratio,
        }
    }

    /// Levels left for computation after a bootstrap.
    pub fn levels_left(&self) -> usize {
        self.log_q.len() - 1 - self.config().depth()
    }
}

/// N = 2^16, 128-bit (log2 QP = 1737 ≤ 1747, uniform ternary secret) with the sparse-secret
/// encapsulation: an ephemeral secret of 128 nonzero coefficients, whose key lives modulo
/// `q_0·P` = 2^360 ([`crate::sparse_secret_passes_drop_and_solve`]: betting on the positions
/// costs 2^128 for every kept dimension up to N/2, beyond which the standard admits 881 bits;
/// SECURITY.md). 8 levels of 45 bits left after a bootstrap, scale 2^45. Chain: `q_0` 60 bits;
/// 8 + 3 (SlotsToCoeffs) primes of 45 bits; 12 EvalMod primes of 59 bits (cosine of degree 31
/// on `[-K, K]`, `K` = 30, in 5 levels, 5 double angles, the arcsine in 2); 3 CoeffsToSlots
/// primes of 58 bits; 5 special primes of 60 bits.
///
/// Measured on 2 cores (BENCHMARKS.md): 19.8 bits worst / 21.9 mean, 9–10 s per bootstrap;
/// keys 7.52 GB in memory, 3.76 GB seeded on the wire (39 Galois keys, the relinearization
/// key, the two encapsulation keys); peak memory 10.4 GB with key generation.
pub const N65536_BOOT_LEFT8_SPARSE_SECRET_128BIT: BootstrapPreset = BootstrapPreset {
    name: "N65536_BOOT_LEFT8_SPARSE_SECRET_128BIT",
    log_n: 16,
    log_q: &[
        60, 45, 45, 45, 45, 45, 45, 45, 45, 45, 45, 45, 59, 59, 59, 59, 59, 59, 59, 59, 59, 59, 59, 59, 58, 58, 58,
    ],
    log_p: &[60, 60, 60, 60, 60],
    log_default_scale: 45,
    cts_levels: 3,
    stc_levels: 3,
    double_angles: 5,
    degree: 31,
    baby: 8,
    log_message_ratio: 6,
    sparse_secret: Some(128),
    arcsine: true,
    precision_bits: 19,
    secure: true,
};

/// N = 2^16, 128-bit (log2 QP ≤ 1747, uniform ternary secret, **no sparse secret**: nothing
/// outside the standard's tables; slower and less precise than
/// [`N65536_BOOT_LEFT8_SPARSE_SECRET_128BIT`]): 8 levels of
/// 45 bits left after a bootstrap, scale 2^45. Chain: `q_0` 60 bits; 8 + 3 (SlotsToCoeffs) primes
/// of 45 bits; 13 EvalMod primes of 59 bits (cosine of degree 63 on `[-K, K]`, `K` = 516, in 6
/// levels, then 7 double angles); 3 CoeffsToSlots primes of 58 bits; 4 special primes of 60 bits
/// (no key-switching digit above `P`).
///
/// Measured on 2 cores (BENCHMARKS.md): 13.8 bits worst / 15.9 mean, 11.7 s per bootstrap;
/// keys 9.08 GB in memory, 4.53 GB seeded (39 Galois keys and the relinearization key); peak
/// memory 12.0 GB with key generation.
pub const N65536_BOOT_LEFT8_128BIT: BootstrapPreset = BootstrapPreset {
    name: "N65536_BOOT_LEFT8_128BIT",
    log_n: 16,
    log_q: &[
        60, 45, 45, 45, 45, 45, 45, 45, 45, 45, 45, 45, 59, 59, 59, 59, 59, 59, 59, 59, 59, 59, 59, 59, 59, 58, 58, 58,
    ],
    log_p: &[60, 60, 60, 60],
    log_default_scale: 45,
    cts_levels: 3,
    stc_levels: 3,
    double_angles: 7,
    degree: 63,
    baby: 8,
    log_message_ratio: 6,
    sparse_secret: None,
    arcsine: false,
    precision_bits: 13,
    secure: true,
};

/// A small insecure stand-in of [`N65536_BOOT_LEFT8_SPARSE_SECRET_128BIT`] at N = 2^12 for tests and smoke
/// runs: same layout, 2 levels left. **Not secure.**
pub const N4096_BOOT_LEFT2_INSECURE: BootstrapPreset = BootstrapPreset {
    name: "N4096_BOOT_LEFT2_INSECURE",
    log_n: 12,
    log_q: &[60, 45, 45, 45, 45, 60, 60, 60, 60, 60, 60, 60, 60, 60, 60, 60, 60, 58, 58],
    log_p: &[60, 60, 60],
    log_default_scale: 45,
    cts_levels: 2,
    stc_levels: 2,
    double_angles: 5,
    degree: 31,
    baby: 8,
    log_message_ratio: 6,
    sparse_secret: Some(128),
    arcsine: true,
    precision_bits: 26,
    secure: false,
};

/// Every bootstrapping preset.
pub const BOOTSTRAP_PRESETS: [BootstrapPreset; 3] =
    [N65536_BOOT_LEFT8_SPARSE_SECRET_128BIT, N65536_BOOT_LEFT8_128BIT, N4096_BOOT_LEFT2_INSECURE];

/// A bootstrapping plan for one parameter set: the encoded DFT factors, the EvalMod
/// polynomial, the levels and the keys it needs. Public data only (shared by every client
/// session of a server, like a compiled model).
pub struct Bootstrapper {
    ctx: Arc<Context>,
    config: BootstrapConfig,
    cosine: ChebyshevPolynomial,
    /// SubSum's rotation steps (sparse slots only).
    subsum: Vec<i64>,
    cts: Vec<EncodedLinearTransform>,
    stc: Vec<EncodedLinearTransform>,
    requests: Vec<GaloisKeyRequest>,
    /// Scale of the cosine's output.
    cosine_scale: f64,
    /// Level of the result.
    output_level: usize,
    /// The integer `R` the message is multiplied by before ModRaise.
    message_boost: u64,
}

impl Bootstrapper {
    /// Plans bootstrapping at the top of `ctx`'s chain.
    ///
    /// # Errors
    /// [`Error::InvalidParameters`] if the chain has fewer levels than the bootstrap consumes,
    /// a DFT level budget is out of range, `q_0` leaves no room for the message ratio, `K` is
    /// below what the secret needs, sparse slots do not fit, or — for checked parameters — the
    /// sparse secret fails [`crate::sparse_secret_passes_drop_and_solve`] at `log2(q_0·P)`.
    pub fn new(ctx: &Arc<Context>, config: BootstrapConfig) -> Result<Self> {
        let top = ctx.max_level();
        let (cts_factors, stc_factors) = config.dft_factors(ctx)?;
        if let Some(h) = config.sparse_secret {
            check_sparse_secret(ctx.params(), h)?;
        }
        config.check_k(ctx)?;
        let n = ctx.n() / 2;
        let encoder = Encoder::new(ctx);
        let q = |l: usize| ctx.moduli[l].value() as f64;
        let q0 = q(0);
        let delta = ctx.params().default_scale();
        let message_boost = (q0 / delta).log2().floor() as i32 - config.log_message_ratio as i32;
        if message_boost < 0 || config.log_message_ratio < 5 {
            return Err(Error::InvalidParameters(format!(
                "q_0 = 2^{:.1} leaves no room for a message ratio of 2^{} above the scale 2^{:.1} (at least 2^5)",
                q0.log2(),
                config.log_message_ratio,
                delta.log2()
            )));
        }
        let message_boost = 1u64 << message_boost;
        let subsum = config.subsum_steps(ctx)?;
        let requests = config.requests_of(ctx, &subsum, &cts_factors, &stc_factors);
        // The factors of one DFT direction, factor `j` at level `first - j` with its diagonals
        // times `factor` and encoded at `scale(j, level)`.
        let encode_dft =
            |factors: Vec<LinearTransform>, first: usize, factor: f64, scale: &dyn Fn(usize, usize) -> f64| {
                factors
                    .into_iter()
                    .enumerate()
                    .map(|(j, m)| m.scaled(factor).encode(&encoder, first - j, scale(j, first - j)))
                    .collect::<Result<Vec<_>>>()
            };
        // CoeffsToSlots: slots z' = U·t (scale q_0 after ModRaise) → t[rev]/(2K) at the scale of
        // the first EvalMod prime (so the powers of the cosine keep their scale).
        let evalmod_top = top - config.cts_levels;
        let cts_factor = (1.0 / (n as f64 * 2.0 * config.k)).powf(1.0 / config.cts_levels as f64);
        let cts = encode_dft(cts_factors, top, cts_factor, &|j, level| {
            if j + 1 == config.cts_levels {
                q(level) * q(evalmod_top) / q0
            } else {
                q(level)
            }
        })?;
        let cosine = config.cosine();
        let cosine_level = evalmod_top - cosine.depth();
        let cosine_scale = q(cosine_level);
        let mut scale = cosine_scale;
        for l in (cosine_level - config.double_angles as usize + 1..=cosine_level).rev() {
            scale = scale * scale / q(l);
        }
        let stc_top = config.stc_top(ctx);
        // SlotsToCoeffs: sin(2πt) ≈ 2π·R·m/q_0 (scale `scale`) → U·m/Δ (scale Δ).
        let stc_factor = (q0 / (2.0 * PI * delta * message_boost as f64)).powf(1.0 / config.stc_levels as f64);
        let stc_ratio = (delta / scale).powf(1.0 / config.stc_levels as f64);
        let stc = encode_dft(stc_factors, stc_top, stc_factor, &|_, level| q(level) * stc_ratio)?;
        let output_level = stc_top - config.stc_levels;
        Ok(Self {
            ctx: ctx.clone(),
            config,
            cosine,
            subsum,
            cts,
            stc,
            requests,
            cosine_scale,
            output_level,
            message_boost,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &BootstrapConfig {
        &self.config
    }

    /// Level of a bootstrapped ciphertext: the levels left for computation.
    pub fn output_level(&self) -> usize {
        self.output_level
    }

    /// The Galois keys bootstrapping uses (rotations of both DFTs and the conjugation), each at
    /// the level it is used: pass them to [`crate::KeyGenerator::galois_keys`].
    pub fn key_requests(&self) -> Vec<GaloisKeyRequest> {
        self.requests.clone()
    }
}

/// The evaluation keys bootstrapping needs: a relinearization key and the Galois keys of
/// [`Bootstrapper::key_requests`].
pub struct BootstrapKeys<'a> {
    /// Relinearization key (serves every level).
    pub relinearization: &'a RelinearizationKey,
    /// Galois keys covering [`Bootstrapper::key_requests`].
    pub galois: &'a GaloisKeys,
    /// The sparse-secret encapsulation keys, for a plan with
    /// [`BootstrapConfig::sparse_secret`] ([`crate::KeyGenerator::encapsulation_keys`] with that
    /// weight).
    pub encapsulation: Option<&'a EncapsulationKeys>,
}

impl Evaluator {
    /// Reads a level-0 ciphertext modulo the whole chain: residues modulo `q_1 … q_level` from
    /// the centered residues modulo `q_0`. Decrypts to `m + q_0·I` for a small integer
    /// polynomial `I`.
    fn mod_raise(&self, ct: &Ciphertext, level: usize) -> Ciphertext {
        let ctx = self.context();
        let n = ctx.n();
        let parts = ct
            .parts
            .iter()
            .map(|p| {
                let mut coeff = p[..n].to_vec();
                ctx.ntt[0].backward(&mut coeff);
                let mut out = vec![0u64; (level + 1) * n];
                out.par_chunks_exact_mut(n).enumerate().for_each(|(i, r)| {
                    slice::reduce_centered_into(r, &coeff, &ctx.moduli[0], &ctx.moduli[i]);
                    ctx.ntt[i].forward(r);
                });
                out
            })
            .collect();
        Ciphertext { parts, level, scale: ct.scale }
    }

    /// `(c_0, c_1)` under the key's source secret → the same plaintext under its target.
    fn switch_key(&self, a: &Ciphertext, key: &KeySwitchingKey) -> Result<Ciphertext> {
        self.check_key(key, "encapsulation key", a.level)?;
        let len = (a.level + 1) * self.context().n();
        let mut out = Ciphertext { parts: vec![a.parts[0].clone(), vec![0; len]], level: a.level, scale: a.scale };
        self.key_switch_add(&a.parts[1], a.level, key, &mut out);
        Ok(out)
    }

    /// `±i·a` slot-wise: a multiplication by the monomial `±X^{N/2}` (no level, no noise).
    fn multiply_by_i(&self, a: &Ciphertext, negate: bool) -> Ciphertext {
        let ctx = self.context();
        let n = ctx.n();
        let mut out = a.clone();
        for i in 0..=a.level {
            let mut mono = vec![0u64; n];
            mono[n / 2] = if negate { ctx.moduli[i].value() - 1 } else { 1 };
            ctx.ntt[i].forward(&mut mono);
            for p in out.parts.iter_mut() {
                slice::mul_assign(&mut p[i * n..(i + 1) * n], &mono, &ctx.moduli[i]);
            }
        }
        out
    }

    /// `sin(2πt)` slot-wise for real slots `x = t/K` (EvalMod), or `arcsin(sin(2πt))` to
    /// degree 3 with [`BootstrapConfig::arcsine`].
    fn eval_mod(&self, x: &Ciphertext, plan: &Bootstrapper, rlk: &RelinearizationKey) -> Result<Ciphertext> {
        let mut y = self.evaluate_chebyshev(x, &plan.cosine, plan.cosine_scale, plan.config.baby, rlk)?;
        for _ in 0..plan.config.double_angles {
            let mut sq = self.square(&y)?;
            self.relinearize_assign(&mut sq, rlk)?;
            sq = self.multiply_integer(&sq, 2)?;
            self.add_const_assign(&mut sq, -1.0)?;
            self.rescale_assign(&mut sq)?;
            y = sq;
        }
        if !plan.config.arcsine {
            return Ok(y);
        }
        // y + (y/6)·y², at y's scale two levels down.
        let ctx = self.context();
        let q = |l: usize| ctx.moduli[l].value() as f64;
        let l = y.level;
        let y2 = self.rescale(&self.relinearize(&self.square(&y)?, rlk)?)?;
        let sixth_scale = y.scale * q(l - 1) / y2.scale;
        let sixth = self.rescale(&self.multiply_const(&y, 1.0 / 6.0, sixth_scale * q(l) / y.scale)?)?;
        let mut cubic = self.rescale(&self.relinearize(&self.multiply(&sixth, &y2)?, rlk)?)?;
        cubic.scale = y.scale;
        self.add_assign(&mut cubic, &self.drop_to_level(&y, l - 2)?)?;
        Ok(cubic)
    }

    /// Bootstraps `ct`: the same slots (to the precision the plan delivers) at level
    /// [`Bootstrapper::output_level`], with the same scale.
    ///
    /// Contract: `ct` may be at any level (it is brought to level 0 first); its scale `Δ` must
    /// leave room below `q_0` (`q_0/Δ ≥ 2^5`; the precision stated for a plan assumes
    /// `Δ` = the parameters' default scale and slots in `[-1, 1]`); `|slot|·Δ` must stay well
    /// below `q_0/(2π)` or the result is wrong. With sparse slots ([`BootstrapConfig::slots`]
    /// `= Some(n)`) the slots must repeat with period `n`; other slots come back as the mean of
    /// their residue class modulo `n`.
    ///
    /// # Errors
    /// [`Error::ForeignObject`] for a ciphertext or plan of other parameters;
    /// [`Error::InvalidArgument`] for a scale too close to `q_0`, or for a plan with a sparse
    /// secret and no encapsulation keys (or keys made for another weight);
    /// [`Error::MissingGaloisKey`] or [`Error::KeyLevel`] if the keys do not cover
    /// [`Bootstrapper::key_requests`]; [`Error::CiphertextSize`] unless `ct` has two
    /// polynomials.
    pub fn bootstrap(&self, ct: &Ciphertext, plan: &Bootstrapper, keys: &BootstrapKeys<'_>) -> Result<Ciphertext> {
        let ctx = self.context();
        if !Arc::ptr_eq(ctx, &plan.ctx) && ctx.params().fingerprint() != plan.ctx.params().fingerprint() {
            return Err(Error::ForeignObject {
                what: "bootstrapping plan",
                reason: "parameter fingerprint differs".into(),
            });
        }
        ctx.check_ciphertext(ct)?;
        if ct.size() != 2 {
            return Err(Error::CiphertextSize { op: "bootstrap", expected: 2, actual: ct.size() });
        }
        let q0 = ctx.moduli[0].value() as f64;
        let boost = plan.message_boost as f64;
        if !(ct.scale.is_finite() && ct.scale >= 1.0 && ct.scale * boost * 32.0 <= q0) {
            return Err(Error::InvalidArgument(format!(
                "bootstrap: scale 2^{:.1} is too large for this plan (at most 2^{:.1}; it expects the parameters' default scale 2^{:.1})",
                ct.scale.log2(),
                (q0 / boost / 32.0).log2(),
                ctx.params().default_scale().log2()
            )));
        }
        let encapsulation = match (plan.config.sparse_secret, keys.encapsulation) {
            (None, _) => None,
            (Some(h), Some(e)) if e.hamming_weight == h => Some(e),
            (Some(h), e) => {
                return Err(Error::InvalidArgument(format!(
                    "bootstrap: the plan encapsulates in a sparse secret of {h} nonzero coefficients; {}",
                    e.map_or("no encapsulation keys were given".into(), |e| format!(
                        "the encapsulation keys were made for {} nonzero coefficients",
                        e.hamming_weight
                    ))
                )))
            }
        };
        let gk = keys.galois;
        let input_scale = ct.scale;
        let mut low = self.multiply_integer(&self.drop_to_level(ct, 0)?, plan.message_boost as i64)?;
        if let Some(e) = encapsulation {
            low = self.switch_key(&low, &e.to_sparse)?;
        }
        let mut x = self.mod_raise(&low, ctx.max_level());
        if let Some(e) = encapsulation {
            x = self.switch_key(&x, &e.from_sparse)?;
        }
        x.scale = q0;
        // SubSum: the trace onto the subring of the sparse slots (N/2n times its input).
        for &step in &plan.subsum {
            let rotated = self.rotate(&x, step, gk)?;
            self.add_assign(&mut x, &rotated)?;
        }
        for m in &plan.cts {
            x = self.linear_transform(&x, m, gk)?;
        }
        let mut y = if plan.subsum.is_empty() {
            // x holds (t_re + i·t_im)/(2K) in bit-reversed order; split the real and imaginary
            // parts.
            let conj = self.conjugate(&x, gk)?;
            let re = self.add(&x, &conj)?;
            let im = self.multiply_by_i(&self.sub(&x, &conj)?, true);
            drop((x, conj));
            let (re, im) = rayon::join(
                || self.eval_mod(&re, plan, keys.relinearization),
                || self.eval_mod(&im, plan, keys.relinearization),
            );
            let mut y = re?;
            self.add_assign(&mut y, &self.multiply_by_i(&im?, false))?;
            y
        } else {
            // Sparse slots: x + conj(x) holds the real parts, then the imaginary parts, of each
            // block of 2n slots; SlotsToCoeffs recombines them.
            let w = self.add(&x, &self.conjugate(&x, gk)?)?;
            drop(x);
            self.eval_mod(&w, plan, keys.relinearization)?
        };
        for m in &plan.stc {
            y = self.linear_transform(&y, m, gk)?;
        }
        // y holds the slots times Δ_in/Δ at scale Δ (the boost R cancels): the same polynomial
        // declared at Δ_in.
        // (Δ here equals the default scale up to floating-point rounding, far below the precision.)
        y.scale = input_scale;
        Ok(y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Decryptor, Encryptor, KeyGenerator};

    /// Where precision goes, stage by stage, at insecure ring sizes with the 2^16 preset's chain
    /// (run by hand: `LOGN=14 cargo test --release -p blindfold-ckks --lib stages -- --ignored
    /// --nocapture`; `R`, `DEG`, `BABY`, `RATIO` change EvalMod, `H` the sparse secret's weight, 0
    /// for none). Errors are in the units of each stage's
    /// values: `x = t/K` after CoeffsToSlots, `sin(2πt)` (with the arcsine: `2π(t - I)`) after
    /// EvalMod (also by `|I|`), slots at the end; "SlotsToCoeffs alone" starts from a fresh
    /// encryption of EvalMod's exact results.
    #[test]
    #[ignore = "diagnostic"]
    fn stages() {
        let env = |k: &str, d: usize| std::env::var(k).map_or(d, |v| v.parse().unwrap());
        let base = N65536_BOOT_LEFT8_SPARSE_SECRET_128BIT;
        let preset = BootstrapPreset {
            log_n: env("LOGN", 12) as u32,
            secure: false,
            double_angles: env("R", base.double_angles as usize) as u32,
            degree: env("DEG", base.degree),
            baby: env("BABY", base.baby),
            log_message_ratio: env("RATIO", base.log_message_ratio as usize) as u32,
            sparse_secret: Some(env("H", 128)).filter(|&h| h > 0),
            arcsine: env("ARCSINE", 1) == 1,
            ..base
        };
        let ctx = Context::new(&preset.parameters().unwrap()).unwrap();
        let plan = Bootstrapper::new(&ctx, preset.config()).unwrap();
        let mut kg = KeyGenerator::from_seed(&ctx, [1; 32]);
        let pk = kg.public_key();
        let rlk = kg.relinearization_key();
        let gk = kg.galois_keys(&plan.key_requests()).unwrap();
        let dec = Decryptor::new(kg.secret_key());
        let (encoder, eval) = (Encoder::new(&ctx), Evaluator::new(&ctx));
        let mut encryptor = Encryptor::with_public_key(&ctx, &pk).unwrap();
        let n = encoder.slots();
        let delta = ctx.params().default_scale();
        let xs: Vec<Complex64> =
            (0..n).map(|j| Complex64::new(((j * 7919) % 1000) as f64 / 500.0 - 1.0, 0.0)).collect();
        let ct = eval.drop_to_level(&encryptor.encrypt(&encoder.encode(&xs, 0, delta).unwrap()).unwrap(), 0).unwrap();
        let enc = plan.config.sparse_secret.map(|h| kg.encapsulation_keys(h).unwrap());
        let mut low = eval.multiply_integer(&ct, plan.message_boost as i64).unwrap();
        if let Some(e) = &enc {
            low = eval.switch_key(&low, &e.to_sparse).unwrap();
        }
        let mut x = eval.mod_raise(&low, ctx.max_level());
        if let Some(e) = &enc {
            x = eval.switch_key(&x, &e.from_sparse).unwrap();
        }
        let (k, r) = (plan.config.k, plan.config.double_angles);
        let interpolation = (0..=20_000).map(|i| -1.0 + i as f64 / 10_000.0).fold(0f64, |m, x| {
            m.max((plan.cosine.evaluate(x) - (2.0 * PI * (k * x - 0.25) / f64::from(1u32 << r)).cos()).abs())
        });
        println!("K = {k}, cosine depth {}, interpolation error 2^{:.1}", plan.cosine.depth(), interpolation.log2());
        let q0 = ctx.moduli[0].value() as f64;
        x.scale = q0;
        // The exact t = (m + q_0·I)/q_0 of every coefficient.
        let mut raw = dec.decrypt(&x).unwrap();
        ctx.backward(&mut raw.data);
        let t: Vec<f64> = (0..ctx.n())
            .map(|c| {
                let res: Vec<u64> = (0..=x.level).map(|i| raw.data[i * ctx.n() + c]).collect();
                ctx.crt_to_f64(&res) / q0
            })
            .collect();
        let rev = |j: usize| j.reverse_bits() >> (usize::BITS - n.trailing_zeros());
        let errors = |c: &Ciphertext, want: &dyn Fn(usize) -> f64| -> Vec<f64> {
            let got = encoder.decode(&dec.decrypt(c).unwrap()).unwrap();
            (0..n).map(|j| (got[j].re - want(j)).abs()).collect()
        };
        let report = |name: &str, e: &[f64]| {
            let max = e.iter().fold(0f64, |m, &v| m.max(v));
            let mean = e.iter().sum::<f64>() / e.len() as f64;
            println!("{name:>20}: error max 2^{:.1}, mean 2^{:.1}", max.log2(), mean.log2());
        };
        for m in &plan.cts {
            x = eval.linear_transform(&x, m, &gk).unwrap();
        }
        let conj = eval.conjugate(&x, &gk).unwrap();
        let re = eval.add(&x, &conj).unwrap();
        report("CoeffsToSlots", &errors(&re, &|j| t[rev(j)] / plan.config.k));
        // What EvalMod computes exactly: sin(2πt), or 2π(t - I) with the arcsine.
        let exact = |t: f64| if plan.config.arcsine { 2.0 * PI * (t - t.round()) } else { (2.0 * PI * t).sin() };
        let y = eval.eval_mod(&re, &plan, &rlk).unwrap();
        let e = errors(&y, &|j| exact(t[rev(j)]));
        report("EvalMod", &e);
        for i in 0..4 {
            let by_i: Vec<f64> = (0..n).filter(|&j| t[rev(j)].round().abs() as usize == i).map(|j| e[j]).collect();
            report(&format!("EvalMod at |I| = {i}"), &by_i);
        }
        let im = eval.eval_mod(&eval.multiply_by_i(&eval.sub(&x, &conj).unwrap(), true), &plan, &rlk).unwrap();
        let mut out = y.clone();
        eval.add_assign(&mut out, &eval.multiply_by_i(&im, false)).unwrap();
        let exact: Vec<Complex64> = (0..n).map(|j| Complex64::new(exact(t[rev(j)]), exact(t[rev(j) + n]))).collect();
        let mut alone = encryptor.encrypt(&encoder.encode(&exact, out.level, out.scale).unwrap()).unwrap();
        for m in &plan.stc {
            out = eval.linear_transform(&out, m, &gk).unwrap();
            alone = eval.linear_transform(&alone, m, &gk).unwrap();
        }
        out.scale = delta;
        alone.scale = delta;
        report("SlotsToCoeffs alone", &errors(&alone, &|j| xs[j].re));
        report("bootstrap", &errors(&out, &|j| xs[j].re));
    }
}
