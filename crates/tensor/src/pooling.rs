//! Sums of rotations: average pooling on a grid of slots, and any `Σ_k rot(x, k·unit)`.
//!
//! Pooling a `k × k` window sums the window's slots into its top-left slot with two
//! rotation sums (`k` columns, then `k` rows), each by doubling (about `2·log2 k` rotations
//! instead of `k − 1`), consuming no level: the division by `k²` is folded into a
//! neighbouring linear stage by the compiler. The pooled feature map keeps the input's slots
//! at the window anchors, spaced `stride` times wider (Lee et al., ICML 2022).

use crate::backend::Backend;
use crate::error::{CircuitError, Result};
use crate::geometry::PoolGeom;
use crate::layout::{Grid, Layout};
use crate::requirements::{RotationKey, StageCost};

/// How to build `Σ_{k<count} rot(x, k·unit)` by doubling: the doubling steps (block `b+1` =
/// block `b` + its rotation by `2^b·unit`, so block `b` sums `2^b` copies), then, per set bit
/// `b` of `count`, block `b` rotated by the copies already placed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DoublingPlan {
    /// Rotation steps of the doubling.
    pub doubling: Vec<i64>,
    /// `(block, step)` pairs summed into the result.
    pub combine: Vec<(usize, i64)>,
}

impl DoublingPlan {
    /// The plan for `count ≥ 1` copies spaced `unit` apart.
    pub fn new(count: usize, unit: i64) -> Self {
        let mut doubling = Vec::new();
        while 1usize << (doubling.len() + 1) <= count {
            doubling.push(unit * (1i64 << doubling.len()));
        }
        let mut combine = Vec::new();
        let mut placed = 0i64;
        for b in (0..=doubling.len()).rev() {
            if count & (1 << b) != 0 {
                combine.push((b, placed * unit));
                placed += 1 << b;
            }
        }
        Self { doubling, combine }
    }

    /// Every rotation step the plan uses (the identity excluded).
    pub fn steps(&self) -> Vec<i64> {
        self.doubling.iter().copied().chain(self.combine.iter().map(|&(_, s)| s).filter(|&s| s != 0)).collect()
    }

    /// `Σ_{k<count} rot(x, k·unit)`.
    ///
    /// # Errors
    /// Backend errors.
    pub fn apply<B: Backend>(&self, be: &B, x: &B::Value) -> Result<B::Value> {
        let mut blocks = vec![x.clone()];
        for &step in &self.doubling {
            let last = blocks.last().expect("non-empty");
            blocks.push(be.add(last, &be.rotate(last, step)?)?);
        }
        let mut acc: Option<B::Value> = None;
        for &(b, step) in &self.combine {
            let part = if step == 0 { blocks[b].clone() } else { be.rotate(&blocks[b], step)? };
            acc = Some(match acc {
                Some(a) => be.add(&a, &part)?,
                None => part,
            });
        }
        Ok(acc.expect("count >= 1"))
    }
}

/// A stage of rotation sums, one after the other (no level consumed).
#[derive(Clone, Debug)]
pub struct RotationSum {
    name: String,
    level: usize,
    plans: Vec<DoublingPlan>,
}

impl RotationSum {
    /// Sums `Σ_{k<count} rot(x, k·unit)` for each `(count, unit)` in turn, on ciphertexts at
    /// `level`.
    pub fn new(name: String, level: usize, sums: &[(usize, i64)]) -> Self {
        Self { name, level, plans: sums.iter().map(|&(c, u)| DoublingPlan::new(c, u)).collect() }
    }

    /// Average pooling (without the division) on a grid layout: the stage and the pooled
    /// layout.
    ///
    /// # Errors
    /// [`CircuitError::Unsupported`] unless `input` is a grid of `geom.input`'s shape.
    pub fn pool(input: &Layout, geom: &PoolGeom, level: usize) -> Result<(Self, Layout)> {
        let grid = input.grid.as_ref().filter(|g| g.shape == geom.input).ok_or_else(|| {
            CircuitError::Unsupported(format!("pooling needs a {} feature map on a grid of slots", geom.input))
        })?;
        let k = geom.kernel;
        let stage = Self::new(
            format!("avgpool {k}×{k} stride {}", geom.stride),
            level,
            &[(k, grid.col as i64), (k, grid.row as i64)],
        );
        let pooled = Grid {
            shape: geom.output,
            base: grid.base.clone(),
            row: grid.row * geom.stride,
            col: grid.col * geom.stride,
        };
        Ok((stage, Layout::from_grid(pooled, input.slots, input.period)?))
    }

    /// Input (and output) level.
    pub fn level(&self) -> usize {
        self.level
    }

    /// The stage's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Rotation keys, all at the stage's level.
    pub fn rotation_keys(&self) -> Vec<RotationKey> {
        self.plans.iter().flat_map(|p| p.steps()).map(|step| RotationKey { step, level: self.level }).collect()
    }

    /// What the stage costs.
    pub fn cost(&self) -> StageCost {
        StageCost {
            name: self.name.clone(),
            levels: 0,
            rotations: self.plans.iter().map(|p| p.steps().len()).sum(),
            hoisted_rotations: 0,
            plain_products: 0,
            products: 0,
        }
    }

    /// Evaluates the sums.
    ///
    /// # Errors
    /// Backend errors.
    pub fn evaluate<B: Backend>(&self, be: &B, x: &B::Value) -> Result<B::Value> {
        let mut x = x.clone();
        for p in &self.plans {
            x = p.apply(be, &x)?;
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_doubling_plan_places_every_copy_once() {
        assert_eq!(DoublingPlan::new(10, 1).steps(), vec![1, 2, 4, 8]);
        assert_eq!(DoublingPlan::new(16, 1).steps(), vec![1, 2, 4, 8]);
        assert_eq!(DoublingPlan::new(3, 1).steps(), vec![1, 2]);
        assert_eq!(DoublingPlan::new(9, -100).steps(), vec![-100, -200, -400, -800]);
        for count in 1..40 {
            let plan = DoublingPlan::new(count, 1);
            let mut blocks = vec![vec![0i64]];
            for &step in &plan.doubling {
                let last = blocks.last().unwrap().clone();
                blocks.push(last.iter().copied().chain(last.iter().map(|k| k + step)).collect());
            }
            let mut all: Vec<i64> =
                plan.combine.iter().flat_map(|&(b, s)| blocks[b].iter().map(move |k| k + s)).collect();
            all.sort();
            assert_eq!(all, (0..count as i64).collect::<Vec<_>>(), "count {count}");
        }
    }
}
