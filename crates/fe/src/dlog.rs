//! Bounded discrete logarithms in ristretto255 by baby-step giant-step (Shanks 1971) with a
//! precomputed table.

use crate::{FeError, Result};
use curve25519_dalek::constants::RISTRETTO_BASEPOINT_POINT;
use curve25519_dalek::ristretto::RistrettoPoint;
use curve25519_dalek::scalar::Scalar;
use rayon::prelude::*;
use std::collections::HashMap;

/// Largest number of baby steps [`DlogTable::with_bound`] precomputes (about 40 MB).
pub const MAX_DEFAULT_BABY_STEPS: u64 = 1 << 20;

/// The first 16 bytes of a point's canonical encoding: two different points share one with
/// probability 2^-128 per pair, so a lookup answers wrongly with probability below
/// `baby_steps · giant_steps / 2^128` (about 2^-100 for the largest tables).
fn fingerprint(encoding: &[u8; 32]) -> u128 {
    u128::from_le_bytes(encoding[..16].try_into().expect("16 bytes"))
}

/// Solves `P = v·G ↦ v` for `|v| ≤ bound`, `G` the ristretto255 basepoint.
///
/// Baby steps: the encodings of `2j·G` for `0 ≤ j < m`, built once (in parallel) and shared
/// read-only across threads. A lookup walks giant steps `Q = P + (bound − i·m)·G` until the
/// encoding of `2Q` is in the table: at most `⌈(2·bound + 1)/m⌉` steps (one when
/// `m > 2·bound`). Encoding doubled points is what makes lookups batchable: a ristretto255
/// encoding needs an inverse square root, but the encodings of `2Q_k` for many `Q_k` share one
/// field inversion ([`RistrettoPoint::double_and_compress_batch`]), so
/// [`DlogTable::solve_batch`] pays one inversion per step for the whole batch. A value outside
/// the bound is [`FeError::OutOfBound`], never a wrong number.
pub struct DlogTable {
    bound: u64,
    m: u64,
    baby: HashMap<u128, u32>,
    /// `bound·G`, added first so the walk starts at the bottom of the range.
    offset: RistrettoPoint,
    /// `−m·G`.
    giant: RistrettoPoint,
    /// The lanes' `c·G` (centre), `offset` and `giant`, as they are and doubled, made on
    /// first use.
    #[cfg(target_arch = "x86_64")]
    lanes: std::sync::OnceLock<[[crate::lanes::Niels; 3]; 2]>,
}

impl std::fmt::Debug for DlogTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DlogTable").field("bound", &self.bound).field("baby_steps", &self.m).finish()
    }
}

impl DlogTable {
    /// A table for `|v| ≤ bound` with `min(2·bound + 1, 2^20)` baby steps.
    ///
    /// # Errors
    /// As [`DlogTable::new`].
    pub fn with_bound(bound: u64) -> Result<Self> {
        let m = bound.saturating_mul(2).saturating_add(1).min(MAX_DEFAULT_BABY_STEPS);
        Self::new(bound, m as usize)
    }

    /// A table for `|v| ≤ bound` with `baby_steps` precomputed points (memory about 40 bytes
    /// each; time to build about 2 µs each on one core).
    ///
    /// # Errors
    /// [`FeError::InvalidArgument`] for no baby steps, more than 2^32, or a bound above 2^62.
    pub fn new(bound: u64, baby_steps: usize) -> Result<Self> {
        if baby_steps == 0 || baby_steps as u64 > u32::MAX as u64 + 1 {
            return Err(FeError::InvalidArgument(format!("{baby_steps} baby steps (1 to 2^32)")));
        }
        if bound > 1 << 62 {
            return Err(FeError::InvalidArgument(format!("bound {bound} above 2^62")));
        }
        let m = baby_steps as u64;
        // 2j·G for a run of j, encoded in batches of j·G.
        const CHUNK: u64 = 4096;
        let chunks: Vec<Vec<(u128, u32)>> = (0..m.div_ceil(CHUNK))
            .into_par_iter()
            .map(|c| {
                let start = c * CHUNK;
                let len = CHUNK.min(m - start);
                let step = RISTRETTO_BASEPOINT_POINT;
                let mut p = RistrettoPoint::mul_base(&Scalar::from(start));
                let points: Vec<RistrettoPoint> = (0..len)
                    .map(|_| {
                        let q = p;
                        p += step;
                        q
                    })
                    .collect();
                RistrettoPoint::double_and_compress_batch(&points)
                    .iter()
                    .zip(start..)
                    .map(|(enc, j)| (fingerprint(enc.as_bytes()), j as u32))
                    .collect()
            })
            .collect();
        let mut baby = HashMap::with_capacity(m as usize);
        for (fp, j) in chunks.into_iter().flatten() {
            baby.insert(fp, j);
        }
        Ok(Self {
            bound,
            m,
            baby,
            offset: RistrettoPoint::mul_base(&Scalar::from(bound)),
            giant: -RistrettoPoint::mul_base(&Scalar::from(m)),
            #[cfg(target_arch = "x86_64")]
            lanes: std::sync::OnceLock::new(),
        })
    }

    /// The bound `B`: values in `[-B, B]` are found.
    pub fn bound(&self) -> u64 {
        self.bound
    }

    /// Number of baby steps `m`.
    pub fn baby_steps(&self) -> u64 {
        self.m
    }

    /// `v` with `p = v·G`, `|v| ≤ bound`.
    ///
    /// # Errors
    /// [`FeError::OutOfBound`] if no such `v` exists.
    pub fn solve(&self, p: &RistrettoPoint) -> Result<i64> {
        self.solve_batch(std::slice::from_ref(p)).remove(0)
    }

    /// [`DlogTable::solve`] for many points, sharing one field inversion per giant step.
    pub fn solve_batch(&self, points: &[RistrettoPoint]) -> Vec<Result<i64>> {
        let range = 2 * self.bound + 1;
        let mut out: Vec<Result<i64>> = vec![Err(FeError::OutOfBound { bound: self.bound }); points.len()];
        // (index, (v + bound)·G − base·G) for the points not found yet.
        let mut open: Vec<(usize, RistrettoPoint)> = points.iter().map(|p| p + self.offset).enumerate().collect();
        let mut base = 0u64;
        while base < range && !open.is_empty() {
            let encodings = RistrettoPoint::double_and_compress_batch(open.iter().map(|(_, t)| t));
            let mut still = Vec::new();
            for ((i, t), enc) in open.into_iter().zip(&encodings) {
                match self.baby.get(&fingerprint(enc.as_bytes())) {
                    Some(&j) if base + (j as u64) < range => out[i] = Ok((base + j as u64) as i64 - self.bound as i64),
                    _ => still.push((i, t + self.giant)),
                }
            }
            open = still;
            base += self.m;
        }
        out
    }

    /// [`DlogTable::solve_batch`] in parallel over chunks of `points`, failing on the first
    /// value out of bound.
    ///
    /// # Errors
    /// [`FeError::OutOfBound`] if any point's value is outside the bound.
    pub fn solve_all(&self, points: &[RistrettoPoint]) -> Result<Vec<i64>> {
        const CHUNK: usize = 256;
        let chunks: Vec<Vec<Result<i64>>> = points.par_chunks(CHUNK).map(|c| self.solve_batch(c)).collect();
        chunks.into_iter().flatten().collect()
    }

    /// [`DlogTable::solve_batch`] for points of eight lanes each ([`crate::lanes`]), given as
    /// `P` or, with `doubled`, as `2·P`, in parallel. The encoding of `2·(P + c·G)` is looked
    /// up first for a centre `c = min(m/2, bound)` (values in `[−c, m − c)`, most of them, in
    /// one step): for points given as `P`, by [`crate::lanes::Ifma::double_encode_batch`] over
    /// chunks of points (one inversion per chunk); for doubled points, by a full encoding each.
    /// Lanes not found there walk the giant steps of [`DlogTable::solve_batch`] from the
    /// bottom of the range.
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn solve_lanes(
        &self,
        s: crate::lanes::Ifma,
        points: &[crate::lanes::Point],
        doubled: bool,
    ) -> Vec<[Result<i64>; crate::lanes::LANES]> {
        use crate::lanes::{Point, LANES};
        const CHUNK: usize = 32;
        let c = s.constants();
        let centre = (self.m / 2).min(self.bound);
        let steps = &self.lanes.get_or_init(|| {
            let points = [RistrettoPoint::mul_base(&Scalar::from(centre)), self.offset, self.giant];
            s.vectorize(|| {
                [
                    points.map(|p| s.to_niels(&s.decode(&[p.compress().to_bytes(); LANES], c).0, c)),
                    points.map(|p| s.to_niels(&s.load_doubled(&[&[p]], c)[0], c)),
                ]
            })
        })[usize::from(doubled)];
        let [centre_step, offset_step, giant_step] = steps;
        // The fingerprints of 2Q (of Q itself when doubled) per point of `qs`.
        let lookup = |qs: &[Point]| -> Vec<[Option<u32>; LANES]> {
            let encodings =
                if doubled { qs.iter().map(|q| s.encode(q, c)).collect() } else { s.double_encode_batch(qs, c) };
            encodings.iter().map(|e| e.map(|e| self.baby.get(&fingerprint(&e)).copied())).collect()
        };
        let range = 2 * self.bound + 1;
        points
            .par_chunks(CHUNK)
            .flat_map_iter(|chunk| {
                s.vectorize(|| {
                    let centred: Vec<Point> = chunk.iter().map(|p| s.add_niels(p, centre_step, false)).collect();
                    let found = lookup(&centred);
                    let mut solved = Vec::with_capacity(chunk.len());
                    for (p, found) in chunk.iter().zip(found) {
                        let mut out: [Result<i64>; LANES] =
                            std::array::from_fn(|_| Err(FeError::OutOfBound { bound: self.bound }));
                        let mut open = 0u8;
                        for (lane, j) in found.into_iter().enumerate() {
                            match j.map(|j| j as i64 - centre as i64) {
                                Some(v) if v.unsigned_abs() <= self.bound => out[lane] = Ok(v),
                                _ => open |= 1 << lane,
                            }
                        }
                        let (mut q, mut base) = (s.add_niels(p, offset_step, false), 0u64);
                        while open != 0 && base < range {
                            for (lane, j) in lookup(std::slice::from_ref(&q))[0].into_iter().enumerate() {
                                match j {
                                    Some(j) if open >> lane & 1 == 1 && base + (j as u64) < range => {
                                        out[lane] = Ok((base + j as u64) as i64 - self.bound as i64);
                                        open &= !(1 << lane);
                                    }
                                    _ => {}
                                }
                            }
                            q = s.add_niels(&q, giant_step, false);
                            base += self.m;
                        }
                        solved.push(out);
                    }
                    solved
                })
            })
            .collect()
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// The eight-lane solver finds every value in range (from its centre window or the walk)
    /// and refuses the rest, for points given as they are and doubled, for tables with fewer baby steps than the range and with more.
    #[test]
    fn lanes_solve_like_the_serial_walk() {
        let Some(s) = crate::lanes::Ifma::try_new() else { return };
        let c = s.constants();
        for (bound, m) in [(300u64, 64usize), (100, 1000), (0, 1), (1000, 7)] {
            let table = DlogTable::new(bound, m).unwrap();
            let values: Vec<i64> = (-(bound as i64) - 9..=bound as i64 + 9).collect();
            let points: Vec<RistrettoPoint> = values
                .iter()
                .map(|&v| {
                    RistrettoPoint::mul_base(&Scalar::from(v.unsigned_abs()))
                        * if v < 0 { -Scalar::ONE } else { Scalar::ONE }
                })
                .collect();
            for doubled in [false, true] {
                let lanes: Vec<_> = points
                    .chunks(crate::lanes::LANES)
                    .map(|chunk| {
                        s.vectorize(|| {
                            if doubled {
                                let rows: Vec<&[RistrettoPoint]> = chunk.iter().map(std::slice::from_ref).collect();
                                s.load_doubled(&rows, c)[0]
                            } else {
                                let bytes =
                                    std::array::from_fn(|l| chunk.get(l).unwrap_or(&chunk[0]).compress().to_bytes());
                                s.decode(&bytes, c).0
                            }
                        })
                    })
                    .collect();
                let solved = table.solve_lanes(s, &lanes, doubled);
                for (i, &v) in values.iter().enumerate() {
                    let expected = if v.unsigned_abs() <= bound { Ok(v) } else { Err(FeError::OutOfBound { bound }) };
                    assert_eq!(solved[i / 8][i % 8], expected, "bound {bound}, {m} baby steps, v = {v}, {doubled}");
                }
            }
        }
    }
}
