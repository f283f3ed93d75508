//! Inner-product functional encryption from DDH (Abdalla–Bourse–De Caro–Pointcheval,
//! PKC 2015, §3), in the prime-order ristretto255 group with generator `g` (the standard
//! basepoint).
//!
//! * Setup(n): `s_i ← Z_ℓ`, master secret key `(s_i)`, master public key `h_i = g^{s_i}`.
//! * Encrypt(x): `r ← Z_ℓ`, `ct_0 = g^r`, `ct_i = h_i^r · g^{x_i}`.
//! * KeyDerive(y): `sk_y = ⟨s, y⟩ mod ℓ`.
//! * Decrypt: `g^{⟨x,y⟩} = Π ct_i^{y_i} / ct_0^{sk_y}`, then a bounded discrete log
//!   ([`DlogTable`]).
//!
//! Group operations are written additively below (`r·G` for `g^r`). Entries of `x` and `y`
//! are signed integers (negative values are negative exponents).

use crate::{DlogTable, FeError, Result};
use curve25519_dalek::ristretto::RistrettoPoint;
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::VartimeMultiscalarMul;
use rand_chacha::ChaCha20Rng;
use rayon::prelude::*;
use subtle::{Choice, ConditionallySelectable};
use zeroize::Zeroize;

/// A signed integer as a scalar, without a branch on its sign (encryption is constant-time).
pub(crate) fn scalar_from_i64(v: i64) -> Scalar {
    let magnitude = Scalar::from(v.unsigned_abs());
    Scalar::conditional_select(&magnitude, &-magnitude, Choice::from((v as u64 >> 63) as u8))
}

/// The master secret key `s ∈ Z_ℓ^n`: held by the key authority only. Zeroized on drop; no
/// `Debug`, no serialization.
pub struct MasterSecretKey {
    s: Vec<Scalar>,
}

impl Drop for MasterSecretKey {
    fn drop(&mut self) {
        self.s.zeroize();
    }
}

/// The master public key `h_i = s_i·G`, `n` group elements: anyone can encrypt with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MasterPublicKey {
    h: Vec<RistrettoPoint>,
}

/// An encryption of a vector of length `n`: `ct_0 = r·G`, `ct_i = r·h_i + x_i·G`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ciphertext {
    ct0: RistrettoPoint,
    cts: Vec<RistrettoPoint>,
}

/// A function key for the vector `y`: lets its holder compute `⟨x, y⟩` from an encryption of
/// any `x`, and nothing else about `x`. Holds `y` in the clear (keys are not function-hiding);
/// `sk_y` is zeroized on drop.
pub struct FunctionKey {
    y: Vec<i64>,
    sk: Scalar,
}

impl Drop for FunctionKey {
    fn drop(&mut self) {
        self.sk.zeroize();
    }
}

impl FunctionKey {
    /// The vector `y` the key is for.
    pub fn vector(&self) -> &[i64] {
        &self.y
    }
}

/// Generates a master key pair for vectors of length `n`.
///
/// # Errors
/// [`FeError::InvalidArgument`] for `n = 0`; [`FeError::Rng`] if the operating system's random
/// source fails.
pub fn setup(n: usize) -> Result<(MasterSecretKey, MasterPublicKey)> {
    let mut rng = blindfold_math::sampler::os_rng().map_err(|e| FeError::Rng(e.to_string()))?;
    setup_with_rng(n, &mut rng)
}

/// [`setup`] with a given generator (reproducible tests).
///
/// # Errors
/// [`FeError::InvalidArgument`] for `n = 0`.
pub fn setup_with_rng(n: usize, rng: &mut ChaCha20Rng) -> Result<(MasterSecretKey, MasterPublicKey)> {
    if n == 0 {
        return Err(FeError::InvalidArgument("vectors of length 0".into()));
    }
    let s: Vec<Scalar> = (0..n).map(|_| Scalar::random(rng)).collect();
    let h = s.iter().map(RistrettoPoint::mul_base).collect();
    Ok((MasterSecretKey { s }, MasterPublicKey { h }))
}

fn check_len(expected: usize, actual: usize) -> Result<()> {
    if expected == actual {
        Ok(())
    } else {
        Err(FeError::Length { expected, actual })
    }
}

impl MasterPublicKey {
    /// Length `n` of the vectors.
    pub fn len(&self) -> usize {
        self.h.len()
    }

    /// Whether the key is for vectors of length 0 (never, for a key from [`setup`]).
    pub fn is_empty(&self) -> bool {
        self.h.is_empty()
    }

    /// Encrypts `x` (length `n`). Constant-time in `x` and the randomness: fixed-base and
    /// variable-base scalar multiplications of curve25519-dalek, no branch on a value.
    /// Cost: `n + 1` fixed-base and `n` variable-base multiplications.
    ///
    /// # Errors
    /// [`FeError::Length`] if `x` has the wrong length; [`FeError::Rng`].
    pub fn encrypt(&self, x: &[i64]) -> Result<Ciphertext> {
        let mut rng = blindfold_math::sampler::os_rng().map_err(|e| FeError::Rng(e.to_string()))?;
        self.encrypt_with_rng(x, &mut rng)
    }

    /// [`MasterPublicKey::encrypt`] with a given generator.
    ///
    /// # Errors
    /// [`FeError::Length`].
    pub fn encrypt_with_rng(&self, x: &[i64], rng: &mut ChaCha20Rng) -> Result<Ciphertext> {
        check_len(self.h.len(), x.len())?;
        let mut r = Scalar::random(rng);
        let ct0 = RistrettoPoint::mul_base(&r);
        let cts =
            self.h.par_iter().zip(x).map(|(h, &xi)| h * r + RistrettoPoint::mul_base(&scalar_from_i64(xi))).collect();
        r.zeroize();
        Ok(Ciphertext { ct0, cts })
    }
}

impl MasterSecretKey {
    /// Length `n` of the vectors.
    pub fn len(&self) -> usize {
        self.s.len()
    }

    /// Whether the key is for vectors of length 0.
    pub fn is_empty(&self) -> bool {
        self.s.is_empty()
    }

    /// The function key for `y`: `sk_y = ⟨s, y⟩ mod ℓ`.
    ///
    /// # Errors
    /// [`FeError::Length`] if `y` has the wrong length.
    pub fn derive(&self, y: &[i64]) -> Result<FunctionKey> {
        check_len(self.s.len(), y.len())?;
        let sk = self.s.iter().zip(y).map(|(s, &yi)| s * scalar_from_i64(yi)).sum();
        Ok(FunctionKey { y: y.to_vec(), sk })
    }
}

impl Ciphertext {
    /// Length `n` of the encrypted vector.
    pub fn len(&self) -> usize {
        self.cts.len()
    }

    /// Whether the ciphertext encrypts a vector of length 0.
    pub fn is_empty(&self) -> bool {
        self.cts.is_empty()
    }

    /// `⟨x, y⟩·G = Σ y_i·ct_i − sk_y·ct_0`: one multi-scalar multiplication of `n + 1`
    /// points (variable time: the ciphertext and `y` are known to the decryptor).
    ///
    /// # Errors
    /// [`FeError::Length`] if the key is for another length.
    pub fn decrypt_point(&self, key: &FunctionKey) -> Result<RistrettoPoint> {
        check_len(self.cts.len(), key.y.len())?;
        let scalars = key.y.iter().map(|&y| scalar_from_i64(y)).chain(std::iter::once(-key.sk));
        Ok(RistrettoPoint::vartime_multiscalar_mul(scalars, self.cts.iter().chain(std::iter::once(&self.ct0))))
    }

    /// `⟨x, y⟩` as an integer, if it lies within the table's bound.
    ///
    /// # Errors
    /// [`FeError::Length`]; [`FeError::OutOfBound`] if `|⟨x, y⟩|` exceeds the table's bound
    /// (a wrong key, or inputs larger than the table was built for).
    pub fn decrypt(&self, key: &FunctionKey, table: &DlogTable) -> Result<i64> {
        table.solve(&self.decrypt_point(key)?)
    }
}

/// Secure matrix product (CryptoNN §IV-B): row `i` of `X` encrypted as `rows[i]`, one function
/// key per column `j` of `Y`; returns `X·Y` (`rows.len() × keys.len()`, row-major), each entry
/// decrypted and its discrete log taken, in parallel over the rows.
///
/// # Errors
/// As [`Ciphertext::decrypt`], for the first entry that fails.
pub fn matrix_product(rows: &[Ciphertext], keys: &[FunctionKey], table: &DlogTable) -> Result<Vec<i64>> {
    let per_row: Vec<Result<Vec<i64>>> =
        rows.par_iter().map(|ct| keys.iter().map(|k| ct.decrypt(k, table)).collect()).collect();
    let mut out = Vec::with_capacity(rows.len() * keys.len());
    for r in per_row {
        out.extend(r?);
    }
    Ok(out)
}
