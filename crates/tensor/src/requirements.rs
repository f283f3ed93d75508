//! What a circuit needs: the rotations it makes (each at the highest level it is made at),
//! the levels it consumes, and what it costs.

use blindfold_ckks::{Context, GaloisKeyRequest, Level};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A rotation by `step` slots (left) applied to a ciphertext at `level`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RotationKey {
    /// Rotation step (left; negative: right).
    pub step: i64,
    /// Level of the rotated ciphertext.
    pub level: usize,
}

/// Merges rotation keys by Galois element (steps equal modulo `slots` are one key), keeping
/// the highest level of each; the identity is dropped. Sorted by step in `0..slots`.
pub fn merge_keys(keys: impl IntoIterator<Item = RotationKey>, slots: usize) -> Vec<RotationKey> {
    let mut best: BTreeMap<i64, usize> = BTreeMap::new();
    for k in keys {
        let step = k.step.rem_euclid(slots as i64);
        if step == 0 {
            continue;
        }
        let e = best.entry(step).or_insert(k.level);
        *e = (*e).max(k.level);
    }
    best.into_iter().map(|(step, level)| RotationKey { step, level }).collect()
}

/// The Galois-key requests of `keys` for `ctx` (what the client's key generator takes).
pub fn key_requests(keys: &[RotationKey], ctx: &Context) -> Vec<GaloisKeyRequest> {
    keys.iter().map(|k| ctx.rotation_key_request(k.step, Level(k.level))).collect()
}

/// Levels, rotations and products of one stage, for reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageCost {
    /// Stage name.
    pub name: String,
    /// Levels consumed.
    pub levels: usize,
    /// Rotations that each pay a full key switch (giant steps share one ModDown).
    pub rotations: usize,
    /// Hoisted rotations (sharing one decomposition of their input).
    pub hoisted_rotations: usize,
    /// Plaintext-ciphertext products.
    pub plain_products: usize,
    /// Ciphertext-ciphertext products (each relinearized).
    pub products: usize,
}

impl StageCost {
    /// Key switches: rotations, hoisted rotations and relinearizations.
    pub fn key_switches(&self) -> usize {
        self.rotations + self.hoisted_rotations + self.products
    }
}
