//! Secret, public and evaluation keys, and the key generator.

use crate::context::Context;
use crate::error::{Error, Result};
use crate::types::{GaloisElement, GaloisKeyRequest, Level};
use blindfold_math::sampler::{self, SecretRng};
use rand_core::Rng;
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::sync::Arc;
use subtle::{Choice, ConstantTimeEq};
use zeroize::Zeroizing;

/// Expands a 32-byte seed into a polynomial uniform modulo each of the moduli `indices`
/// (full-basis indices), directly in NTT form. The same seed and indices always give the
/// same polynomial: this is how seeded ("compact") keys and ciphertexts are stored.
pub(crate) fn expand_uniform(ctx: &Context, seed: &[u8; 32], indices: impl Iterator<Item = usize>) -> Vec<u64> {
    let n = ctx.n();
    let mut rng = sampler::seeded_rng(*seed);
    let mut out = Vec::new();
    for i in indices {
        let start = out.len();
        out.resize(start + n, 0);
        sampler::uniform_mod(&mut rng, &ctx.moduli[i], &mut out[start..]);
    }
    out
}

/// Residues (NTT form) modulo the moduli `indices` of a polynomial with small signed
/// coefficients.
pub(crate) fn small_to_ntt(ctx: &Context, coeffs: &[i64], indices: impl Iterator<Item = usize>) -> Zeroizing<Vec<u64>> {
    let n = ctx.n();
    let indices: Vec<usize> = indices.collect();
    let mut out = Zeroizing::new(vec![0u64; indices.len() * n]);
    out.par_chunks_exact_mut(n).zip(indices).for_each(|(r, i)| {
        sampler::small_to_residues(coeffs, &ctx.moduli[i], r);
        ctx.ntt[i].forward(r);
    });
    out
}

pub(crate) fn fresh_seed(rng: &mut SecretRng) -> [u8; 32] {
    let mut seed = [0u8; 32];
    rng.fill_bytes(&mut seed);
    seed
}

/// The CKKS secret key `s`, uniform ternary (coefficients in {-1, 0, 1}).
///
/// Held by the client only. It is zeroized when dropped, does not implement `Debug`, and
/// compares in constant time. No server-side type of this crate stores one.
pub struct SecretKey {
    pub(crate) ctx: Arc<Context>,
    /// Coefficients in {-1, 0, 1}.
    pub(crate) coeffs: Zeroizing<Vec<i64>>,
    /// NTT form modulo every prime of `Q·P`.
    pub(crate) ntt: Zeroizing<Vec<u64>>,
}

impl SecretKey {
    pub(crate) fn from_coefficients(ctx: &Arc<Context>, coeffs: Zeroizing<Vec<i64>>) -> Self {
        let ntt = small_to_ntt(ctx, &coeffs, 0..ctx.moduli.len());
        Self { ctx: ctx.clone(), coeffs, ntt }
    }

    /// The parameters' context this key belongs to.
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }
}

impl ConstantTimeEq for SecretKey {
    fn ct_eq(&self, other: &Self) -> Choice {
        if self.coeffs.len() != other.coeffs.len() {
            return Choice::from(0);
        }
        let a: Zeroizing<Vec<u8>> = Zeroizing::new(self.coeffs.iter().map(|&c| c as u8).collect());
        let b: Zeroizing<Vec<u8>> = Zeroizing::new(other.coeffs.iter().map(|&c| c as u8).collect());
        a.ct_eq(&b) & self.ctx.params().fingerprint().ct_eq(other.ctx.params().fingerprint())
    }
}

impl PartialEq for SecretKey {
    /// Constant-time comparison.
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other).into()
    }
}

/// Public encryption key `(b, a) = (-a·s + e, a) mod Q`, with `a` expanded from a seed.
#[derive(Clone, Debug, PartialEq)]
pub struct PublicKey {
    pub(crate) b: Vec<u64>,
    pub(crate) a: Vec<u64>,
    pub(crate) seed: [u8; 32],
}

/// One digit of a key-switching key, over the full basis `Q·P` in NTT form.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct KeyDigit {
    pub(crate) b: Vec<u64>,
    pub(crate) a: Vec<u64>,
    pub(crate) seed: [u8; 32],
}

/// A hybrid key-switching key from a secret `s'` to `s` (Han–Ki, CT-RSA 2020): for digit
/// `j`, `(b_j, a_j)` with `b_j = -a_j·s + e_j + P·[q_i ∈ digit j]·s' mod q_i` and
/// `b_j = -a_j·s + e_j mod p_k`. A key made for level `m` serves every level up to `m` and
/// holds only the primes and digits of level `m` (smaller keys for rotations that happen
/// low in the chain).
#[derive(Clone, Debug, PartialEq)]
pub struct KeySwitchingKey {
    pub(crate) digits: Vec<KeyDigit>,
    /// Highest ciphertext level the key serves: its polynomials have residues modulo
    /// `q_0…q_{max_level}` and the special primes, and it has the digits of that level.
    pub(crate) max_level: usize,
    /// Fingerprint of the parameters the key was made for.
    pub(crate) fingerprint: [u8; 32],
}

/// Key-switching key from `target` to `secret` (both NTT form over the full basis), serving
/// levels up to `max_level`.
fn key_switching_key(
    ctx: &Context,
    rng: &mut SecretRng,
    secret: &[u64],
    target: &[u64],
    max_level: usize,
) -> KeySwitchingKey {
    let n = ctx.n();
    let indices = key_indices(ctx, max_level);
    let alpha = ctx.params().alpha();
    let digits = (0..(max_level + 1).div_ceil(alpha))
        .map(|j| {
            let seed = fresh_seed(rng);
            let a = expand_uniform(ctx, &seed, indices.iter().copied());
            let e = sampler::gaussian(rng, n);
            // As in `public_key`: noise and a·s are secret until the sum is complete.
            let mut b = small_to_ntt(ctx, &e, indices.iter().copied());
            let mut prod = Zeroizing::new(vec![0u64; n]);
            for (k, &i) in indices.iter().enumerate() {
                let (r, full) = (k * n..(k + 1) * n, i * n..(i + 1) * n);
                ctx.ntt[i].mul(&mut prod, &a[r.clone()], &secret[full.clone()]);
                blindfold_math::slice::sub_assign(&mut b[r.clone()], &prod, &ctx.moduli[i]);
                if i <= max_level && (j * alpha..(j + 1) * alpha).contains(&i) {
                    let q = &ctx.moduli[i];
                    let pm = ctx.p_mod_q[i];
                    let ps = q.shoup(pm);
                    for (bb, &t) in b[r].iter_mut().zip(&target[full]) {
                        *bb = q.add(*bb, q.mul_shoup(t, pm, ps));
                    }
                }
            }
            KeyDigit { b: std::mem::take(&mut *b), a, seed }
        })
        .collect();
    KeySwitchingKey { digits, max_level, fingerprint: *ctx.params().fingerprint() }
}

/// The keys of bootstrapping's sparse-secret encapsulation
/// ([`KeyGenerator::encapsulation_keys`]): public evaluation keys, like Galois keys.
#[derive(Clone, Debug, PartialEq)]
pub struct EncapsulationKeys {
    /// Nonzero coefficients of the ephemeral secret `s'`.
    pub(crate) hamming_weight: usize,
    /// From `s` to `s'`, level 0 only (modulo `q_0·P`).
    pub(crate) to_sparse: KeySwitchingKey,
    /// From `s'` to `s`, every level.
    pub(crate) from_sparse: KeySwitchingKey,
}

impl EncapsulationKeys {
    /// Nonzero coefficients of the ephemeral secret.
    pub fn hamming_weight(&self) -> usize {
        self.hamming_weight
    }

    /// Bytes held in memory (both halves of every digit; half of it goes on the wire).
    pub fn size_bytes(&self) -> usize {
        self.to_sparse.size_bytes() + self.from_sparse.size_bytes()
    }
}

/// Relinearization key: switches `s²` to `s` (evaluation key, public).
#[derive(Clone, Debug, PartialEq)]
pub struct RelinearizationKey(pub(crate) KeySwitchingKey);

/// Galois keys: for each Galois element `g`, switches `s(X^g)` to `s`. Generated only for
/// the elements asked for (public evaluation keys).
///
/// Each key is held with its digits under the inverse automorphism, `π⁻¹(k_j)`: since
/// `Σ_j π(d_j)·k_j = π(Σ_j d_j·π⁻¹(k_j))`, a rotation multiplies the digits of the
/// unpermuted `c_1` and permutes only its two outputs, and hoisted rotations permute no digit
/// at all. The wire format carries the keys themselves (`π` is applied on the way out).
#[derive(Clone, Debug, PartialEq)]
pub struct GaloisKeys {
    pub(crate) keys: BTreeMap<u64, (KeySwitchingKey, Vec<u32>)>,
}

impl KeySwitchingKey {
    /// Highest ciphertext level this key serves.
    pub fn max_level(&self) -> usize {
        self.max_level
    }

    /// Bytes this key takes in memory.
    pub fn size_bytes(&self) -> usize {
        self.digits.iter().map(|d| 8 * (d.b.len() + d.a.len())).sum()
    }
}

impl RelinearizationKey {
    /// Bytes this key takes in memory.
    pub fn size_bytes(&self) -> usize {
        self.0.size_bytes()
    }
}

/// Full-basis indices of a key made for `max_level`: `q_0…q_{max_level}`, then the special
/// primes.
pub(crate) fn key_indices(ctx: &Context, max_level: usize) -> Vec<usize> {
    (0..=max_level).chain((0..ctx.num_special()).map(|k| ctx.special_index(k))).collect()
}

/// `perm`'s inverse: `inverse[perm[j]] = j`.
pub(crate) fn inverse_permutation(perm: &[u32]) -> Vec<u32> {
    let mut inv = vec![0u32; perm.len()];
    for (j, &p) in perm.iter().enumerate() {
        inv[p as usize] = j as u32;
    }
    inv
}

/// `key` with every residue of every digit permuted: `out[j] = in[perm[j]]`.
pub(crate) fn permuted_key(key: &KeySwitchingKey, perm: &[u32]) -> KeySwitchingKey {
    let n = perm.len();
    let permute = |v: &[u64]| -> Vec<u64> {
        let mut out = vec![0u64; v.len()];
        for (o, i) in out.chunks_exact_mut(n).zip(v.chunks_exact(n)) {
            blindfold_math::slice::permute_into(o, i, perm);
        }
        out
    };
    let digits = key.digits.iter().map(|d| KeyDigit { b: permute(&d.b), a: permute(&d.a), seed: d.seed }).collect();
    KeySwitchingKey { digits, max_level: key.max_level, fingerprint: key.fingerprint }
}

impl GaloisKeys {
    /// The Galois elements these keys cover.
    pub fn elements(&self) -> impl Iterator<Item = GaloisElement> + '_ {
        self.keys.keys().map(|&g| GaloisElement(g))
    }

    /// Highest level the key for Galois element `g` serves, if there is one.
    pub fn max_level(&self, g: GaloisElement) -> Option<usize> {
        self.keys.get(&g.0).map(|(k, _)| k.max_level)
    }

    /// Bytes these keys take: `(in memory, on the wire)`. The wire form is seeded (each
    /// digit's uniform half `a` travels as a 32-byte seed), so it is about half the size.
    pub fn size_bytes(&self) -> (usize, usize) {
        self.keys.values().fold((0, 0), |(mem, wire), (k, perm)| {
            let words: usize = k.digits.iter().map(|d| d.b.len() + d.a.len()).sum();
            let b_words: usize = k.digits.iter().map(|d| d.b.len()).sum();
            (mem + 8 * words + 4 * perm.len(), wire + 8 * b_words + 32 * k.digits.len())
        })
    }

    /// The requests that are not served, if any.
    pub fn missing(&self, requests: &[GaloisKeyRequest]) -> Vec<GaloisKeyRequest> {
        requests
            .iter()
            .filter(|r| r.element != GaloisElement::IDENTITY)
            .filter(|r| self.max_level(r.element).is_none_or(|have| have < r.level.0))
            .copied()
            .collect()
    }

    pub(crate) fn get(&self, g: GaloisElement) -> Result<&(KeySwitchingKey, Vec<u32>)> {
        self.keys.get(&g.0).ok_or(Error::MissingGaloisKey { element: g.0 })
    }
}

/// Generates a secret key and the keys derived from it.
///
/// Randomness: ChaCha20 seeded from the operating system ([`KeyGenerator::new`]) or from a
/// caller's 32-byte seed ([`KeyGenerator::from_seed`], for reproducible tests and known-answer
/// vectors: never use a fixed seed for real keys).
pub struct KeyGenerator {
    ctx: Arc<Context>,
    rng: SecretRng,
    sk: SecretKey,
}

impl KeyGenerator {
    /// A generator with a fresh secret key, seeded from the operating system.
    ///
    /// # Errors
    /// [`Error::Rng`] if the operating system's random source fails.
    pub fn new(ctx: &Arc<Context>) -> Result<Self> {
        let rng = sampler::os_rng().map_err(|e| Error::Rng(e.to_string()))?;
        Ok(Self::with_rng(ctx, rng))
    }

    /// A deterministic generator: the same seed gives the same keys.
    pub fn from_seed(ctx: &Arc<Context>, seed: [u8; 32]) -> Self {
        Self::with_rng(ctx, sampler::seeded_rng(seed))
    }

    fn with_rng(ctx: &Arc<Context>, mut rng: SecretRng) -> Self {
        let coeffs = sampler::ternary(&mut rng, ctx.n());
        let sk = SecretKey::from_coefficients(ctx, coeffs);
        Self { ctx: ctx.clone(), rng, sk }
    }

    /// A generator for an existing secret key (e.g. one loaded from a file).
    ///
    /// # Errors
    /// [`Error::Rng`] if the operating system's random source fails.
    pub fn from_secret_key(sk: &SecretKey) -> Result<Self> {
        let rng = sampler::os_rng().map_err(|e| Error::Rng(e.to_string()))?;
        let sk = SecretKey::from_coefficients(&sk.ctx, sk.coeffs.clone());
        Ok(Self { ctx: sk.ctx.clone(), rng, sk })
    }

    /// The secret key.
    pub fn secret_key(&self) -> &SecretKey {
        &self.sk
    }

    /// A public key for encryption at any level.
    pub fn public_key(&mut self) -> PublicKey {
        let ctx = &self.ctx;
        let n = ctx.n();
        let nq = ctx.max_level() + 1;
        let seed = fresh_seed(&mut self.rng);
        let a = expand_uniform(ctx, &seed, 0..nq);
        let e = sampler::gaussian(&mut self.rng, n);
        // b starts as the noise and holds a·s in between: secret until both are in.
        let mut b = small_to_ntt(ctx, &e, 0..nq);
        let mut prod = Zeroizing::new(vec![0u64; n]);
        for i in 0..nq {
            let r = i * n..(i + 1) * n;
            ctx.ntt[i].mul(&mut prod, &a[r.clone()], &self.sk.ntt[r.clone()]);
            blindfold_math::slice::sub_assign(&mut b[r], &prod, &ctx.moduli[i]);
        }
        PublicKey { b: std::mem::take(&mut *b), a, seed }
    }

    /// Key-switching key from `target` (NTT form over the full basis) to `s`, serving
    /// levels up to `max_level`.
    fn key_switching_key(&mut self, target: &[u64], max_level: usize) -> KeySwitchingKey {
        key_switching_key(&self.ctx, &mut self.rng, &self.sk.ntt, target, max_level)
    }

    /// The keys of bootstrapping's sparse-secret encapsulation (Bossuat et al., ACNS 2022,
    /// §4): a fresh ephemeral secret `s'` with exactly `h` nonzero ternary coefficients, a key
    /// from `s` to `s'` for level 0 and a key from `s'` back to `s` for every level. `s'` is
    /// zeroized when this returns; only the two keys remain.
    ///
    /// The key to `s'` is an RLWE sample under the sparse secret modulo `q_0·P` whose message
    /// is `P·s`: whoever solves it learns the secret key. For checked parameters `h` must pass
    /// [`crate::sparse_secret_passes_drop_and_solve`] at `log2(q_0·P)`.
    ///
    /// # Errors
    /// [`Error::InvalidParameters`] if `h` is zero, above `N`, or fails that check.
    pub fn encapsulation_keys(&mut self, h: usize) -> Result<EncapsulationKeys> {
        let ctx = self.ctx.clone();
        crate::params::check_sparse_secret(ctx.params(), h)?;
        let sparse = sampler::ternary_sparse(&mut self.rng, ctx.n(), h);
        let sparse = small_to_ntt(&ctx, &sparse, 0..ctx.moduli.len());
        let to_sparse = key_switching_key(&ctx, &mut self.rng, &sparse, &self.sk.ntt, 0);
        let from_sparse = self.key_switching_key(&sparse, ctx.max_level());
        Ok(EncapsulationKeys { hamming_weight: h, to_sparse, from_sparse })
    }

    /// The relinearization key (switches `s²` to `s`).
    pub fn relinearization_key(&mut self) -> RelinearizationKey {
        let n = self.ctx.n();
        let mut s2 = Zeroizing::new(vec![0u64; self.sk.ntt.len()]);
        for (i, r) in s2.chunks_exact_mut(n).enumerate() {
            let s = &self.sk.ntt[i * n..(i + 1) * n];
            self.ctx.ntt[i].mul(r, s, s);
        }
        let top = self.ctx.max_level();
        RelinearizationKey(self.key_switching_key(&s2, top))
    }

    /// Galois keys for the requested elements, each serving ciphertexts up to its level and
    /// correspondingly smaller (a key for level `m` holds `m+1` chain primes). An element
    /// requested twice gets one key, at the higher level; the identity needs no key and is
    /// skipped. The one entry point for Galois keys: circuits declare what they need as
    /// [`GaloisKeyRequest`]s.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an element that is not odd and below `2N`, or a level
    /// above the top level.
    pub fn galois_keys(&mut self, requests: &[GaloisKeyRequest]) -> Result<GaloisKeys> {
        let n = self.ctx.n();
        let mut wanted: BTreeMap<u64, usize> = BTreeMap::new();
        for r in requests {
            let level = r.level.0;
            if level > self.ctx.max_level() {
                return Err(Error::InvalidArgument(format!(
                    "key level {level} above the top level {}",
                    self.ctx.max_level()
                )));
            }
            let g = self.ctx.galois_element(r.element.value())?;
            if g == GaloisElement::IDENTITY {
                continue;
            }
            let e = wanted.entry(g.value()).or_insert(level);
            *e = (*e).max(level);
        }
        let mut keys = BTreeMap::new();
        for (g, level) in wanted {
            let perm = self.ctx.galois_permutation(GaloisElement(g));
            let mut target = Zeroizing::new(vec![0u64; self.sk.ntt.len()]);
            for (i, r) in target.chunks_exact_mut(n).enumerate() {
                let s = &self.sk.ntt[i * n..(i + 1) * n];
                for (t, &p) in r.iter_mut().zip(&perm) {
                    *t = s[p as usize];
                }
            }
            let ksk = self.key_switching_key(&target, level);
            keys.insert(g, (permuted_key(&ksk, &inverse_permutation(&perm)), perm));
        }
        Ok(GaloisKeys { keys })
    }

    /// Requests for rotations by each of `steps` at the top level, and for conjugation if
    /// `conjugation` (a convenience for [`KeyGenerator::galois_keys`]).
    pub fn top_level_requests(&self, steps: &[i64], conjugation: bool) -> Vec<GaloisKeyRequest> {
        let top = Level(self.ctx.max_level());
        let mut r: Vec<GaloisKeyRequest> = steps.iter().map(|&s| self.ctx.rotation_key_request(s, top)).collect();
        if conjugation {
            r.push(GaloisKeyRequest { element: self.ctx.galois_element_for_conjugation(), level: top });
        }
        r
    }
}
