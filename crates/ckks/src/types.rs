//! Plaintexts and ciphertexts, and the units that name levels and automorphisms.

use serde::{Deserialize, Serialize};

/// A level of the modulus chain: a value at level `l` has residues modulo `q_0…q_l` and can
/// be rescaled `l` more times.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Level(pub usize);

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "level {}", self.0)
    }
}

/// A Galois element `g` of `(Z/2NZ)*`, naming the automorphism `X -> X^g` of the ring. A
/// rotation of the slots by `k` is `g = 5^k mod 2N`, complex conjugation `g = 2N - 1`, the
/// identity `g = 1` ([`crate::Context::galois_element_for_rotation`]). Built only by the
/// context (always odd and below `2N` for its ring) or read back from the wire format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GaloisElement(pub(crate) u64);

impl GaloisElement {
    /// The identity automorphism (rotation by 0), which needs no key.
    pub const IDENTITY: GaloisElement = GaloisElement(1);

    /// The integer `g`.
    pub fn value(self) -> u64 {
        self.0
    }
}

impl std::fmt::Display for GaloisElement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Galois element {}", self.0)
    }
}

/// One Galois key to generate: its element and the highest level it must serve (a key for
/// level `m` holds `m + 1` chain primes, so keys used low in the chain are smaller).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GaloisKeyRequest {
    /// The automorphism.
    pub element: GaloisElement,
    /// Highest ciphertext level the key must serve.
    pub level: Level,
}

/// A CKKS plaintext: a polynomial with residues modulo `q_0…q_level` in NTT form, together
/// with the scale Δ its slots were multiplied by.
///
/// Layout: `data[i·N + j]` is the `j`-th NTT slot modulo `q_i`.
///
/// A plaintext is secret material on either side: the output of
/// [`crate::Decryptor::decrypt`] at level 0 is as good as the secret key modulo `q_0` to
/// anyone who also has the ciphertext, and a model holder's encoded weights are its model. So
/// it is zeroized when dropped, its `Debug` shows only level and scale, and it has no wire
/// form ([`crate::serialize`] takes public objects only).
#[derive(Clone)]
pub struct Plaintext {
    pub(crate) data: Vec<u64>,
    pub(crate) level: usize,
    pub(crate) scale: f64,
}

impl Drop for Plaintext {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.data);
    }
}

impl std::fmt::Debug for Plaintext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plaintext").field("level", &self.level).field("scale", &self.scale).finish_non_exhaustive()
    }
}

impl Plaintext {
    /// Level: the plaintext has residues modulo `q_0…q_level`.
    pub fn level(&self) -> usize {
        self.level
    }
    /// Scale Δ (a real number, not necessarily a power of two).
    pub fn scale(&self) -> f64 {
        self.scale
    }
}

/// A CKKS ciphertext `(c_0, c_1[, c_2])` decrypting to `c_0 + c_1·s (+ c_2·s²)`.
///
/// Each polynomial has residues modulo `q_0…q_level` in NTT form (`parts[k][i·N + j]`).
/// A ciphertext of size 3 is the unrelinearized output of [`crate::Evaluator::multiply`].
/// The scale is tracked exactly as a real number: after rescaling by a prime `q` it is
/// `Δ/q`, never rounded to a power of two.
#[derive(Debug, PartialEq)]
pub struct Ciphertext {
    pub(crate) parts: Vec<Vec<u64>>,
    pub(crate) level: usize,
    pub(crate) scale: f64,
}

impl Ciphertext {
    /// Level: the ciphertext has residues modulo `q_0…q_level`; it can be rescaled `level`
    /// more times.
    pub fn level(&self) -> usize {
        self.level
    }
    /// Scale Δ of the encrypted slots.
    pub fn scale(&self) -> f64 {
        self.scale
    }
    /// Number of polynomials (2, or 3 before relinearization).
    pub fn size(&self) -> usize {
        self.parts.len()
    }
    /// Replaces the recorded scale without touching the polynomials: the encrypted values
    /// are reinterpreted as multiplied by `scale / old_scale`. For callers that track the
    /// scale themselves (e.g. after a multiplication by an integer constant).
    pub fn set_scale(&mut self, scale: f64) {
        self.scale = scale;
    }
}

impl Clone for Ciphertext {
    fn clone(&self) -> Self {
        let parts = self
            .parts
            .iter()
            .map(|p| {
                let mut v = crate::scratch::vec_overwritten(p.len());
                v.copy_from_slice(p);
                v
            })
            .collect();
        Self { parts, level: self.level, scale: self.scale }
    }
}

impl Drop for Ciphertext {
    /// Ciphertext buffers go back to the thread's pool for the next operation's output.
    fn drop(&mut self) {
        for p in self.parts.drain(..) {
            crate::scratch::recycle(p);
        }
    }
}
