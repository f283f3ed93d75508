//! Parameters: unchecked literal → checked, immutable [`Parameters`].

use crate::error::{Error, Result};
use blindfold_math::primes::ntt_primes;
use sha2::{Digest, Sha256};

/// Largest log2(QP) for 128-bit classical security with a uniform ternary secret and error
/// standard deviation 3.2, from the HomomorphicEncryption.org Security Standard
/// (Albrecht et al., 2018, Table 1, "classical", uniform ternary distribution {-1,0,1}) for
/// N ≤ 2^15, and for N = 2^16 from the standard's successor, Bossuat et al., "Security
/// Guidelines for Implementing Homomorphic Encryption" (IACR ePrint 2024/463; the value
/// OpenFHE's `HEStd_128_classic` also uses).
pub const HE_STANDARD_128BIT: [(usize, u32); 7] =
    [(1024, 27), (2048, 54), (4096, 109), (8192, 218), (16384, 438), (32768, 881), (65536, 1747)];

/// The 128-bit bound on log2(QP) for ring degree `n`, if the standard tabulates `n`.
pub fn max_log_qp_128bit(n: usize) -> Option<u32> {
    HE_STANDARD_128BIT.iter().find(|(d, _)| *d == n).map(|(_, b)| *b)
}

/// Whether an RLWE instance of ring degree `n` and modulus `log_q` bits whose secret is
/// ternary with exactly `h` nonzero coefficients passes our drop-and-solve check at 128 bits
/// against [`HE_STANDARD_128BIT`] — a heuristic, not a lower bound: an attacker who keeps `k`
/// of the `n` secret coordinates and assumes the others are zero succeeds with probability
/// `C(k, h)/C(n, h)` per guess, and is left with an instance of dimension `k`. The instance is
/// accepted if, for every `k`, either the guessing alone costs `2^128` or more, or `log_q`
/// is within the standard's ternary bound for the largest tabulated dimension `≤ k` (security
/// only grows with the dimension).
///
/// This is a check of our own, not a lattice-estimator run. It does not model the
/// meet-in-the-middle hybrid attacks on sparse secrets (Howgrave-Graham, CRYPTO 2007;
/// Son–Cheon, ePrint 2019/1019), and the instance left after dropping still has a sparse,
/// short secret, which the standard's uniform-ternary entries do not describe (primal attacks
/// that rescale a short secret do better); SECURITY.md discusses the margin the presets keep.
/// Used for the ephemeral secret of bootstrapping's sparse-secret encapsulation (Bossuat et
/// al., ACNS 2022).
pub fn sparse_secret_passes_drop_and_solve(n: usize, log_q: f64, h: usize) -> bool {
    if h == 0 || h > n {
        return false;
    }
    // log2 C(n, h) - log2 C(k, h), from k = n down; it only grows as k falls.
    let guess_bits = |k: usize| -> f64 {
        if k < h {
            return f64::INFINITY;
        }
        (0..h).map(|i| ((n - i) as f64 / (k - i) as f64).log2()).sum()
    };
    (1..=n).rev().take_while(|&k| guess_bits(k) < 128.0).all(|k| {
        HE_STANDARD_128BIT.iter().rev().find(|(d, _)| *d <= k).is_some_and(|&(_, bound)| log_q <= f64::from(bound))
    })
}

/// Refuses a sparse secret of `h` nonzero coefficients for `params`: `h` outside `1..=N`, or,
/// for checked parameters, failing [`sparse_secret_passes_drop_and_solve`] at `log2(q_0·P)`
/// (the modulus of the key to the sparse secret).
pub(crate) fn check_sparse_secret(params: &Parameters, h: usize) -> Result<()> {
    let n = params.n();
    if h == 0 || h > n {
        return Err(Error::InvalidParameters(format!(
            "a sparse secret needs 1 to N = {n} nonzero coefficients, not {h}"
        )));
    }
    let log_q0p: f64 =
        std::iter::once(params.q()[0]).chain(params.p().iter().copied()).map(|q| (q as f64).log2()).sum();
    if params.security() == SecurityLevel::Bits128 && !sparse_secret_passes_drop_and_solve(n, log_q0p, h) {
        return Err(Error::InvalidParameters(format!(
            "a sparse secret of {h} nonzero coefficients at log2(q_0·P) = {log_q0p:.1}, N = {n}, fails the \
             drop-and-solve check at 128 bits against the HomomorphicEncryption.org table (use more nonzero \
             coefficients or fewer special-prime bits)"
        )));
    }
    Ok(())
}

/// Unchecked description of a parameter set. Turn it into [`Parameters`] with
/// [`Parameters::new`], which checks it.
///
/// The modulus chain is `Q = q_0·q_1···q_L`: `q_0` (the first entry of `log_q`) is the base
/// prime, which holds the message at level 0, and `q_1…q_L` are the primes consumed one per
/// rescale, so the multiplicative depth is `L = log_q.len() - 1`. `P = p_0···p_{α-1}` are the
/// special primes of hybrid key switching (Han–Ki, CT-RSA 2020): the `L+1` primes of `Q` are
/// grouped into `dnum` digits of `α = ceil((L+1)/dnum)` primes each.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ParametersLiteral {
    /// log2 of the ring degree `N`.
    pub log_n: u32,
    /// Bit sizes of `q_0, …, q_L` (each prime is the largest unused one below `2^bits`
    /// congruent to 1 mod 2N).
    pub log_q: Vec<u32>,
    /// Bit sizes of the special primes `p_0, …`.
    pub log_p: Vec<u32>,
    /// log2 of the default encoding scale Δ, in bits.
    pub log_default_scale: u32,
    /// Number of key-switching digits; `None` means `ceil((L+1) / log_p.len())`, the
    /// smallest number that keeps every digit no larger than `P`.
    pub dnum: Option<usize>,
}

/// Whether the parameters passed the 128-bit check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecurityLevel {
    /// log2(QP) is within the HomomorphicEncryption.org 128-bit bound.
    Bits128,
    /// Built with [`Parameters::new_insecure`]: for tests and experiments only.
    Insecure,
}

/// Checked, immutable CKKS parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct Parameters {
    literal: ParametersLiteral,
    q: Vec<u64>,
    p: Vec<u64>,
    dnum: usize,
    alpha: usize,
    log_qp: f64,
    security: SecurityLevel,
    fingerprint: [u8; 32],
}

impl Parameters {
    /// Checks `literal` and generates its primes, refusing anything that is not 128-bit
    /// secure.
    ///
    /// # Errors
    /// [`Error::InvalidParameters`] if `N` is not 2^13 … 2^16, a prime size is outside
    /// `[log2(2N)+2, 61]` (or `q_0`/special primes above 60 bits), too few primes of a size
    /// exist, the scale does not fit, or `dnum` is out of range;
    /// [`Error::Insecure`] if log2(QP) exceeds the bound in [`HE_STANDARD_128BIT`].
    pub fn new(literal: ParametersLiteral) -> Result<Self> {
        if !(13..=16).contains(&literal.log_n) {
            return Err(Error::InvalidParameters(format!(
                "log_n = {} unsupported: secure parameters use N = 2^13, 2^14, 2^15 or 2^16",
                literal.log_n
            )));
        }
        let params = Self::build(literal, SecurityLevel::Bits128)?;
        let n = params.n();
        let bound = max_log_qp_128bit(n).expect("tabulated degree");
        if params.log_qp > bound as f64 {
            return Err(Error::Insecure { n, log_qp: params.log_qp, bound });
        }
        Ok(params)
    }

    /// Builds parameters **without** the security check, for tests and experiments (small
    /// rings run fast). Any `log_n` in `4..=17` is accepted. Objects made with them carry
    /// [`SecurityLevel::Insecure`].
    ///
    /// # Errors
    /// As [`Parameters::new`], except that [`Error::Insecure`] is never returned.
    pub fn new_insecure(literal: ParametersLiteral) -> Result<Self> {
        if !(4..=17).contains(&literal.log_n) {
            return Err(Error::InvalidParameters(format!("log_n = {} outside 4..=17", literal.log_n)));
        }
        Self::build(literal, SecurityLevel::Insecure)
    }

    fn build(literal: ParametersLiteral, security: SecurityLevel) -> Result<Self> {
        let n = 1usize << literal.log_n;
        let min_bits = literal.log_n + 3;
        if literal.log_q.is_empty() || literal.log_p.is_empty() {
            return Err(Error::InvalidParameters("log_q and log_p must be non-empty".into()));
        }
        if literal.log_q.len() > 64 || literal.log_p.len() > 16 {
            return Err(Error::InvalidParameters("at most 64 chain primes and 16 special primes".into()));
        }
        for &b in literal.log_q.iter().chain(&literal.log_p) {
            if b < min_bits || b > 60 {
                return Err(Error::InvalidParameters(format!(
                    "prime size {b} bits outside [{min_bits}, 60] for N = {n}"
                )));
            }
        }
        let ql = literal.log_q.len();
        if literal.log_default_scale < 10 || literal.log_default_scale >= literal.log_q[0] + 60 {
            return Err(Error::InvalidParameters(format!(
                "log_default_scale = {} out of range",
                literal.log_default_scale
            )));
        }
        let dnum = literal.dnum.unwrap_or_else(|| ql.div_ceil(literal.log_p.len()));
        if dnum == 0 || dnum > ql {
            return Err(Error::InvalidParameters(format!("dnum = {dnum} must be in 1..={ql}")));
        }
        let alpha = ql.div_ceil(dnum);
        // Generate primes in order: q_0, q_1.., then P, never reusing one.
        let mut used: Vec<u64> = Vec::new();
        let mut gen = |bits: u32| -> Result<u64> {
            let p = ntt_primes(bits, n, 1, &used)
                .and_then(|v| v.first().copied())
                .ok_or_else(|| Error::InvalidParameters(format!("no unused {bits}-bit prime ≡ 1 mod {}", 2 * n)))?;
            used.push(p);
            Ok(p)
        };
        let q: Vec<u64> = literal.log_q.iter().map(|&b| gen(b)).collect::<Result<_>>()?;
        let p: Vec<u64> = literal.log_p.iter().map(|&b| gen(b)).collect::<Result<_>>()?;
        let log_qp = q.iter().chain(&p).map(|&x| (x as f64).log2()).sum();
        let mut h = Sha256::new();
        h.update(b"blindfold/ckks/parameters/v1");
        h.update((literal.log_n as u64).to_le_bytes());
        for x in q.iter().chain(&p) {
            h.update(x.to_le_bytes());
        }
        h.update((q.len() as u64).to_le_bytes());
        h.update((dnum as u64).to_le_bytes());
        h.update(b"ternary;sigma=3.2");
        h.update([matches!(security, SecurityLevel::Bits128) as u8]);
        let fingerprint = h.finalize().into();
        Ok(Self { literal, q, p, dnum, alpha, log_qp, security, fingerprint })
    }

    /// The literal these parameters were built from.
    pub fn literal(&self) -> &ParametersLiteral {
        &self.literal
    }
    /// Ring degree `N`.
    pub fn n(&self) -> usize {
        1 << self.literal.log_n
    }
    /// log2 of `N`.
    pub fn log_n(&self) -> u32 {
        self.literal.log_n
    }
    /// Number of complex slots, `N/2`.
    pub fn slots(&self) -> usize {
        self.n() / 2
    }
    /// Chain primes `q_0, …, q_L`.
    pub fn q(&self) -> &[u64] {
        &self.q
    }
    /// Special primes `p_0, …, p_{α-1}`.
    pub fn p(&self) -> &[u64] {
        &self.p
    }
    /// Top level `L` (fresh ciphertexts), equal to the multiplicative depth.
    pub fn max_level(&self) -> usize {
        self.q.len() - 1
    }
    /// Number of key-switching digits.
    pub fn dnum(&self) -> usize {
        self.dnum
    }
    /// Primes per key-switching digit.
    pub fn alpha(&self) -> usize {
        self.alpha
    }
    /// log2(QP) in bits (from the actual primes).
    pub fn log_qp(&self) -> f64 {
        self.log_qp
    }
    /// Default scale Δ = 2^log_default_scale.
    pub fn default_scale(&self) -> f64 {
        2f64.powi(self.literal.log_default_scale as i32)
    }
    /// Security level the parameters were checked against.
    pub fn security(&self) -> SecurityLevel {
        self.security
    }
    /// SHA-256 of everything that determines compatibility (degree, primes, digits, secret
    /// and error distributions, security flag). Serialized objects carry it.
    pub fn fingerprint(&self) -> &[u8; 32] {
        &self.fingerprint
    }
}

/// A named, released parameter set. Presets are never changed in place: a different set
/// gets a new name.
#[derive(Clone, Copy, Debug)]
pub struct Preset {
    /// Name, stating ring degree, depth and security.
    pub name: &'static str,
    /// log2 N.
    pub log_n: u32,
    /// Chain prime sizes in bits, `q_0` first.
    pub log_q: &'static [u32],
    /// Special prime sizes in bits.
    pub log_p: &'static [u32],
    /// log2 of the default scale.
    pub log_default_scale: u32,
}

impl Preset {
    /// The literal of this preset.
    pub fn literal(&self) -> ParametersLiteral {
        ParametersLiteral {
            log_n: self.log_n,
            log_q: self.log_q.to_vec(),
            log_p: self.log_p.to_vec(),
            log_default_scale: self.log_default_scale,
            dnum: None,
        }
    }
    /// Checked parameters of this preset.
    ///
    /// # Errors
    /// Never for the released presets (each has a test); the signature follows
    /// [`Parameters::new`].
    pub fn parameters(&self) -> Result<Parameters> {
        Parameters::new(self.literal())
    }
    /// Multiplicative depth (number of rescales).
    pub fn depth(&self) -> usize {
        self.log_q.len() - 1
    }
}

/// N = 8192, depth 2, scale 2^40: three chain primes (50 + 2×40 bits) and one 50-bit special
/// prime, log2(QP) < 180: the cheapest key switching at the smallest secure ring.
pub const N8192_DEPTH2_128BIT: Preset =
    Preset { name: "N8192_DEPTH2_128BIT", log_n: 13, log_q: &[50, 40, 40], log_p: &[50], log_default_scale: 40 };

/// N = 8192, depth 3, scale 2^40: four chain primes (49 + 3×40 bits) and one 49-bit special
/// prime, log2(QP) < 218.
pub const N8192_DEPTH3_128BIT: Preset =
    Preset { name: "N8192_DEPTH3_128BIT", log_n: 13, log_q: &[49, 40, 40, 40], log_p: &[49], log_default_scale: 40 };

/// N = 8192, depth 5, scale 2^29: 36 + 5×29-bit chain, one 37-bit special prime,
/// log2(QP) < 218. For shallow networks (CryptoNets-style) at the smallest secure ring. The
/// special prime is larger than every key-switching digit, so key switching adds noise well
/// below the rescaling noise; the 36-bit base prime leaves 2^6 of headroom for results at
/// scale 2^29.
pub const N8192_DEPTH5_128BIT: Preset = Preset {
    name: "N8192_DEPTH5_128BIT",
    log_n: 13,
    log_q: &[36, 29, 29, 29, 29, 29],
    log_p: &[37],
    log_default_scale: 29,
};

/// N = 16384, depth 7, scale 2^40: 50 + 7×40-bit chain, two 50-bit special primes
/// (α = 2, dnum = 4), log2(QP) < 438.
pub const N16384_DEPTH7_128BIT: Preset = Preset {
    name: "N16384_DEPTH7_128BIT",
    log_n: 14,
    log_q: &[50, 40, 40, 40, 40, 40, 40, 40],
    log_p: &[50, 50],
    log_default_scale: 40,
};

/// N = 16384, depth 11: a 35-bit base prime, six 29-bit primes, five 31-bit primes on top, two
/// special primes of 37 and 36 bits (α = 2, dnum = 6), log2(QP) < 437. Made for a shallow
/// network followed by a polynomial (the encrypted ensemble): the network runs on the five
/// 31-bit levels with inputs at scale 2^31 (about 3.5× less error in the result than at
/// 2^29), the polynomial on the six 29-bit levels at the default scale 2^29.
pub const N16384_DEPTH11_128BIT: Preset = Preset {
    name: "N16384_DEPTH11_128BIT",
    log_n: 14,
    log_q: &[35, 29, 29, 29, 29, 29, 29, 31, 31, 31, 31, 31],
    log_p: &[37, 36],
    log_default_scale: 29,
};

/// N = 16384, depth 9: a 40-bit base prime, four 35-bit primes, five 34-bit primes on top, two
/// 40-bit special primes (α = 2, dnum = 5), log2(QP) < 431. Made for a shallow network
/// followed by a polynomial (the encrypted ensemble): the network runs on the five 34-bit
/// levels with inputs at scale 2^34, the polynomial on the four 35-bit levels at the default
/// scale 2^35; the 40-bit base prime leaves 2^4 of headroom for results at 2^35 (2^2 after
/// the ensemble's division by up to 5 contributors, which raises the scale). The special primes
/// exceed every key-switching digit (at most 75 bits) by 2^5, so key switching adds noise of
/// the order of a rescale. Against `N16384_DEPTH11_128BIT` (29- and 31-bit primes), two
/// levels fewer buy about 2^6 less error per aggregation step and 2^3 less in the network.
pub const N16384_DEPTH9_128BIT: Preset = Preset {
    name: "N16384_DEPTH9_128BIT",
    log_n: 14,
    log_q: &[40, 35, 35, 35, 35, 34, 34, 34, 34, 34],
    log_p: &[40, 40],
    log_default_scale: 35,
};

/// N = 32768, depth 16, scale 2^40: 50 + 16×40-bit chain, three 50-bit special primes,
/// log2(QP) < 881.
pub const N32768_DEPTH16_128BIT: Preset = Preset {
    name: "N32768_DEPTH16_128BIT",
    log_n: 15,
    log_q: &[50, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40],
    log_p: &[50, 50, 50],
    log_default_scale: 40,
};

/// Every released preset.
pub const PRESETS: [Preset; 7] = [
    N8192_DEPTH2_128BIT,
    N8192_DEPTH3_128BIT,
    N8192_DEPTH5_128BIT,
    N16384_DEPTH7_128BIT,
    N16384_DEPTH11_128BIT,
    N16384_DEPTH9_128BIT,
    N32768_DEPTH16_128BIT,
];
