//! Functional encryption for basic operations (FEBO), as CryptoNN uses it for the labels
//! (Xu–Joshi–Li, ICDCS 2019, §III-B): an ElGamal-like encryption of one integer `x`, and
//! function keys bound to one ciphertext that reveal `x op y` for a public `y` and
//! `op ∈ {+, −, ×}`.
//!
//! * Setup: `s ← Z_ℓ`, master public key `h = s·G`.
//! * Encrypt(x): `r ← Z_ℓ`, commitment `cmt = r·G`, `ct = r·h + x·G`.
//! * KeyDerive(cmt, op, y): `+`: `s·cmt − y·G`; `−`: `s·cmt + y·G`; `×`: `(s·y)·cmt`.
//! * Decrypt: `(x op y)·G = ct − key` for `+`, `−`; `y·ct − key` for `×`; then a bounded
//!   discrete log ([`DlogTable`]).
//!
//! Knowing `y`, the key holder inverts `x op y` (for `y ≠ 0` when multiplying): FEBO hides
//! nothing from whoever holds a key. CryptoNN's `A − Y` on encrypted labels therefore reveals
//! the labels to the server (SECURITY.md). Division is not offered: `y^{-1} mod ℓ` gives an
//! integer only when `y` divides `x`.

use crate::ipfe::scalar_from_i64;
use crate::{DlogTable, FeError, Result};
use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use rayon::prelude::*;
use zeroize::Zeroize;

/// The operation a function key computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// `x + y`.
    Add,
    /// `x − y`.
    Sub,
    /// `x · y`.
    Mul,
}

/// The FEBO master secret key `s`: held by the key authority. Zeroized on drop.
pub struct MasterSecretKey {
    s: Scalar,
}

impl Drop for MasterSecretKey {
    fn drop(&mut self) {
        self.s.zeroize();
    }
}

/// The FEBO master public key `h = s·G`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MasterPublicKey {
    pub(crate) h: RistrettoPoint,
}

/// An encryption of one integer: `(cmt, ct) = (r·G, r·h + x·G)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ciphertext {
    pub(crate) cmt: RistrettoPoint,
    pub(crate) ct: RistrettoPoint,
}

/// A key for `x op y` on the one ciphertext whose commitment it was derived for. Whoever holds
/// it learns `x` (it knows `y`); zeroized on drop.
pub struct FunctionKey {
    pub(crate) op: Operation,
    pub(crate) y: i64,
    /// The commitment the key is bound to (compressed, for the check at decryption).
    pub(crate) cmt: CompressedRistretto,
    pub(crate) key: RistrettoPoint,
}

impl Drop for FunctionKey {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

impl FunctionKey {
    /// The operation and its public operand.
    pub fn operation(&self) -> (Operation, i64) {
        (self.op, self.y)
    }
}

/// A FEBO key pair.
///
/// # Errors
/// [`FeError::Rng`] if the operating system's random source fails.
pub fn setup() -> Result<(MasterSecretKey, MasterPublicKey)> {
    let mut rng = blindfold_math::sampler::os_rng().map_err(|e| FeError::Rng(e.to_string()))?;
    Ok(setup_with_rng(&mut rng))
}

/// [`setup`] with a given generator (reproducible tests).
pub fn setup_with_rng(rng: &mut impl rand_core::CryptoRng) -> (MasterSecretKey, MasterPublicKey) {
    let s = Scalar::random(rng);
    let h = RistrettoPoint::mul_base(&s);
    (MasterSecretKey { s }, MasterPublicKey { h })
}

impl MasterPublicKey {
    /// Encrypts `x`, constant-time in `x` and the randomness.
    ///
    /// # Errors
    /// [`FeError::Rng`].
    pub fn encrypt(&self, x: i64) -> Result<Ciphertext> {
        let mut rng = blindfold_math::sampler::os_rng().map_err(|e| FeError::Rng(e.to_string()))?;
        Ok(self.encrypt_with_rng(x, &mut rng))
    }

    /// [`MasterPublicKey::encrypt`] with a given generator.
    pub fn encrypt_with_rng(&self, x: i64, rng: &mut impl rand_core::CryptoRng) -> Ciphertext {
        let mut r = Scalar::random(rng);
        let out = Ciphertext {
            cmt: RistrettoPoint::mul_base(&r),
            ct: self.h * r + RistrettoPoint::mul_base(&scalar_from_i64(x)),
        };
        r.zeroize();
        out
    }
}

impl MasterSecretKey {
    /// The key for `x op y` on the ciphertext with commitment `cmt` ([`Ciphertext::commitment`]).
    pub fn derive(&self, cmt: &RistrettoPoint, op: Operation, y: i64) -> FunctionKey {
        let y_scalar = scalar_from_i64(y);
        let key = match op {
            Operation::Add => cmt * self.s - RistrettoPoint::mul_base(&y_scalar),
            Operation::Sub => cmt * self.s + RistrettoPoint::mul_base(&y_scalar),
            Operation::Mul => cmt * (self.s * y_scalar),
        };
        FunctionKey { op, y, cmt: cmt.compress(), key }
    }
}

impl Ciphertext {
    /// The commitment `r·G` a key must be derived for.
    pub fn commitment(&self) -> &RistrettoPoint {
        &self.cmt
    }

    /// `x op y`, if it lies within the table's bound.
    ///
    /// # Errors
    /// [`FeError::InvalidArgument`] if the key was derived for another ciphertext;
    /// [`FeError::OutOfBound`] if `|x op y|` exceeds the table's bound.
    pub fn decrypt(&self, key: &FunctionKey, table: &DlogTable) -> Result<i64> {
        table.solve(&self.point(key)?)
    }

    /// `(x op y)·G`, before the discrete logarithm.
    fn point(&self, key: &FunctionKey) -> Result<RistrettoPoint> {
        if self.cmt.compress() != key.cmt {
            return Err(FeError::InvalidArgument("the function key was derived for another ciphertext".into()));
        }
        Ok(match key.op {
            Operation::Add | Operation::Sub => self.ct - key.key,
            Operation::Mul => self.ct * scalar_from_i64(key.y) - key.key,
        })
    }
}

/// [`Ciphertext::decrypt`] of each ciphertext with its key, in parallel, the discrete
/// logarithms sharing field inversions ([`DlogTable::solve_all`]).
///
/// # Errors
/// [`FeError::Length`] for a different number of keys; as [`Ciphertext::decrypt`] for the
/// first ciphertext that fails.
pub fn decrypt_all(cts: &[Ciphertext], keys: &[FunctionKey], table: &DlogTable) -> Result<Vec<i64>> {
    if cts.len() != keys.len() {
        return Err(FeError::Length { expected: cts.len(), actual: keys.len() });
    }
    let points: Vec<RistrettoPoint> = cts.par_iter().zip(keys).map(|(ct, k)| ct.point(k)).collect::<Result<_>>()?;
    table.solve_all(&points)
}
