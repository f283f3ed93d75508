//! Precomputed, immutable data shared by every CKKS object of one parameter set.

use crate::error::{Error, Result};
use crate::params::Parameters;
use crate::types::{Ciphertext, GaloisElement, GaloisKeyRequest, Level, Plaintext};
use blindfold_math::{BasisConverter, Modulus, NttOperator};
use rayon::prelude::*;
use std::sync::Arc;

/// Everything derived from [`Parameters`] that the encoder, key generator, encryptor,
/// decryptor and evaluator need: NTT tables for every prime, rescaling and key-switching
/// constants. `Send + Sync` and immutable: share one `Arc<Context>` among threads.
///
/// Residues are indexed as "moduli" `0..=L` for `q_0…q_L` followed by `L+1…L+α` for the
/// special primes.
#[derive(Debug)]
pub struct Context {
    params: Parameters,
    pub(crate) moduli: Vec<Modulus>,
    pub(crate) ntt: Vec<NttOperator>,
    /// `rescale_inv[l][i] = (q_l^{-1} mod q_i, shoup)` for `i < l`.
    pub(crate) rescale_inv: Vec<Vec<(u64, u64)>>,
    /// `P^{-1} mod q_i`.
    pub(crate) p_inv_mod_q: Vec<u64>,
    /// `P mod q_i`.
    pub(crate) p_mod_q: Vec<u64>,
    /// `decompose[l][j]`: converter from digit `j`'s primes at level `l` to the other primes
    /// of `Q_l` and to `P`, with the extended-basis positions of its outputs.
    pub(crate) decompose: Vec<Vec<(BasisConverter, Vec<usize>)>>,
    /// `mod_down[l]`: converter from `P` to `Q_l`.
    pub(crate) mod_down: Vec<BasisConverter>,
    /// Garner constants `garner[k][i] = q_i^{-1} mod q_k` for `i < k`.
    pub(crate) garner: Vec<Vec<u64>>,
}

impl Context {
    /// Refuses a ciphertext whose shape does not fit these parameters (made under another
    /// context), before any indexing: [`Error::ForeignObject`].
    pub(crate) fn check_ciphertext(&self, c: &Ciphertext) -> Result<()> {
        let n = self.n();
        let reason = if c.level > self.max_level() {
            format!("level {} above the top level {}", c.level, self.max_level())
        } else if !(2..=3).contains(&c.parts.len()) {
            format!("{} polynomials", c.parts.len())
        } else if c.parts.iter().any(|p| p.len() != (c.level + 1) * n) {
            format!("polynomials are not {} residues of degree {n}", c.level + 1)
        } else {
            return Ok(());
        };
        Err(Error::ForeignObject { what: "ciphertext", reason })
    }

    /// Refuses a plaintext whose shape does not fit these parameters: [`Error::ForeignObject`].
    pub(crate) fn check_plaintext(&self, pt: &Plaintext) -> Result<()> {
        if pt.level > self.max_level() || pt.data.len() != (pt.level + 1) * self.n() {
            return Err(Error::ForeignObject {
                what: "plaintext",
                reason: format!("{} words at level {}", pt.data.len(), pt.level),
            });
        }
        Ok(())
    }

    /// Precomputes the tables for `params`.
    ///
    /// # Errors
    /// [`Error::InvalidParameters`] if `tfhe-ntt` cannot transform one of the primes (cannot
    /// happen for primes made by [`Parameters`]).
    pub fn new(params: &Parameters) -> Result<Arc<Self>> {
        let n = params.n();
        let all: Vec<u64> = params.q().iter().chain(params.p()).copied().collect();
        let moduli: Vec<Modulus> = all
            .iter()
            .map(|&q| Modulus::new(q).ok_or_else(|| Error::InvalidParameters(format!("bad modulus {q}"))))
            .collect::<Result<_>>()?;
        let ntt: Vec<NttOperator> = all
            .iter()
            .map(|&q| {
                NttOperator::new(n, q)
                    .ok_or_else(|| Error::InvalidParameters(format!("no negacyclic NTT of size {n} mod {q}")))
            })
            .collect::<Result<_>>()?;
        if ntt.iter().any(|op| op.slot_exponents() != ntt[0].slot_exponents()) {
            return Err(Error::InvalidParameters("NTT slot orders differ between primes".into()));
        }
        let nq = params.q().len();
        let alpha = params.p().len();
        let qm = &moduli[..nq];
        let pm = &moduli[nq..];
        let rescale_inv = (0..nq)
            .map(|l| {
                (0..l)
                    .map(|i| {
                        let inv = qm[i].inv(qm[i].reduce(qm[l].value())).expect("distinct primes");
                        (inv, qm[i].shoup(inv))
                    })
                    .collect()
            })
            .collect();
        let p_mod_q: Vec<u64> =
            qm.iter().map(|qi| pm.iter().fold(1, |acc, pk| qi.mul(acc, qi.reduce(pk.value())))).collect();
        let p_inv_mod_q = qm.iter().zip(&p_mod_q).map(|(qi, &p)| qi.inv(p).expect("distinct primes")).collect();
        let digit_alpha = params.alpha();
        let decompose = (0..nq)
            .map(|l| {
                let digits = (l + 1).div_ceil(digit_alpha);
                (0..digits)
                    .map(|j| {
                        let lo = j * digit_alpha;
                        let hi = ((j + 1) * digit_alpha).min(l + 1);
                        let mut targets: Vec<usize> = (0..=l).filter(|i| !(lo..hi).contains(i)).collect();
                        targets.extend((0..alpha).map(|k| l + 1 + k));
                        let target_moduli: Vec<Modulus> =
                            targets.iter().map(|&t| if t <= l { qm[t] } else { pm[t - l - 1] }).collect();
                        (BasisConverter::new(&qm[lo..hi], &target_moduli), targets)
                    })
                    .collect()
            })
            .collect();
        let mod_down = (0..nq).map(|l| BasisConverter::new(pm, &qm[..=l])).collect();
        let garner = (0..nq)
            .map(|k| (0..k).map(|i| qm[k].inv(qm[k].reduce(qm[i].value())).expect("distinct")).collect())
            .collect();
        Ok(Arc::new(Self {
            params: params.clone(),
            moduli,
            ntt,
            rescale_inv,
            p_inv_mod_q,
            p_mod_q,
            decompose,
            mod_down,
            garner,
        }))
    }

    /// The parameters.
    pub fn params(&self) -> &Parameters {
        &self.params
    }

    /// Ring degree `N`.
    pub fn n(&self) -> usize {
        self.params.n()
    }

    /// Top level `L`.
    pub fn max_level(&self) -> usize {
        self.params.max_level()
    }

    /// Number of special primes α.
    pub(crate) fn num_special(&self) -> usize {
        self.params.p().len()
    }

    /// Modulus index of the `k`-th special prime in the full basis.
    pub(crate) fn special_index(&self, k: usize) -> usize {
        self.params.q().len() + k
    }

    /// The NTT operator of extended-basis position `pos` at level `level` (positions
    /// `0..=level` are `q_i`, then the special primes).
    pub(crate) fn extended_ntt(&self, level: usize, pos: usize) -> &NttOperator {
        if pos <= level {
            &self.ntt[pos]
        } else {
            &self.ntt[self.special_index(pos - level - 1)]
        }
    }

    /// Index into a full-basis key polynomial of extended position `pos` at `level`.
    pub(crate) fn extended_to_full(&self, level: usize, pos: usize) -> usize {
        if pos <= level {
            pos
        } else {
            self.special_index(pos - level - 1)
        }
    }

    /// Inverse NTT of every residue of a polynomial with residues `0..=level`.
    pub(crate) fn backward(&self, poly: &mut [u64]) {
        poly.par_chunks_exact_mut(self.n()).enumerate().for_each(|(i, r)| self.ntt[i].backward(r));
    }

    /// Galois element of a rotation of the slots to the left by `step` (negative: right).
    pub fn galois_element_for_rotation(&self, step: i64) -> GaloisElement {
        let two_n = 2 * self.n() as u64;
        let slots = self.params.slots() as i64;
        let k = step.rem_euclid(slots) as u64;
        let mut g = 1u64;
        let mut base = 5u64;
        let mut e = k;
        while e > 0 {
            if e & 1 == 1 {
                g = g * base % two_n;
            }
            base = base * base % two_n;
            e >>= 1;
        }
        GaloisElement(g)
    }

    /// Galois element of complex conjugation of the slots, `2N - 1`.
    pub fn galois_element_for_conjugation(&self) -> GaloisElement {
        GaloisElement(2 * self.n() as u64 - 1)
    }

    /// A request for the Galois key of a rotation by `step` slots, serving levels up to
    /// `level`.
    pub fn rotation_key_request(&self, step: i64, level: Level) -> GaloisKeyRequest {
        GaloisKeyRequest { element: self.galois_element_for_rotation(step), level }
    }

    /// A Galois element read from outside (a wire message): checked to be odd and below `2N`.
    ///
    /// # Errors
    /// [`crate::Error::InvalidArgument`] otherwise.
    pub fn galois_element(&self, g: u64) -> Result<GaloisElement> {
        if g.is_multiple_of(2) || g >= 2 * self.n() as u64 {
            return Err(Error::InvalidArgument(format!(
                "Galois element {g} must be odd and below 2N = {}",
                2 * self.n()
            )));
        }
        Ok(GaloisElement(g))
    }

    /// Permutation of NTT slots that applies `X -> X^g` (same for every prime).
    pub(crate) fn galois_permutation(&self, g: GaloisElement) -> Vec<u32> {
        self.ntt[0].galois_permutation(g.0)
    }

    /// Centered CRT reconstruction of one coefficient given its residues modulo
    /// `q_0…q_level`, as an `f64` (Garner's mixed-radix algorithm).
    pub(crate) fn crt_to_f64(&self, residues: &[u64]) -> f64 {
        let level = residues.len() - 1;
        let mut digits = [0u64; 64];
        for k in 0..=level {
            let qk = &self.moduli[k];
            let mut t = residues[k];
            for i in 0..k {
                t = qk.mul(qk.sub(t, qk.reduce(digits[i])), self.garner[k][i]);
            }
            digits[k] = t;
        }
        let top = &self.moduli[level];
        let negative = digits[level] > top.value() / 2;
        let mut v = 0f64;
        for i in (0..=level).rev() {
            let d = if negative { self.moduli[i].value() - 1 - digits[i] } else { digits[i] };
            v = v * self.moduli[i].value() as f64 + d as f64;
        }
        if negative {
            -(v + 1.0)
        } else {
            v
        }
    }
}
