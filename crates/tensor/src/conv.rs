//! Convolutions on slot layouts.
//!
//! Two placements:
//!
//! * [`im2col_in_place`]: the client's im2col packing with one copy of every entry per output
//!   channel ([`crate::Packing::Im2col`] with `per_channel`). Each term stays in the slot of
//!   the feature it reads (no rotation before the products); the blocks are then summed by a
//!   fold of `log2(slots/block)` rotations, and output `(c, p)` sits at `c·P + p` of every block
//!   (the output repeats with the block size).
//! * [`placed`]: any other input — the im2col packing without per-channel copies, or a feature
//!   map on a grid of slots (the output of an earlier layer, after its activation and
//!   pooling). Output `(o, y, x)` goes to `base_o + y·s·row + x·s·col` for stride `s` and the
//!   input grid's `row`/`col` strides: the output keeps the input's spacing, multiplied by the
//!   stride (the "multiplexed" or gapped packing of Lee et al., ICML 2022), so the offset from
//!   an output to the input it reads depends only on the kernel tap and the two channels.
//!   Kernel taps become baby steps (hoisted rotations of the input), channel pairs giant steps.
//!   Channel bases `base_o` are chosen greedily, each where it adds the fewest new giant steps
//!   without overlapping another channel, inside the smallest period (a multiple of the input's)
//!   that holds every channel: an output that repeats makes the next layers cheaper.

use crate::error::{CircuitError, Result};
use crate::geometry::{ConvGeom, Shape};
use crate::layout::{Grid, Layout};
use crate::linear::{LinearBuilder, LinearMap, LinearTransform};
use crate::matvec::fold_steps;
use std::collections::BTreeSet;

/// The first convolution on the per-channel im2col packing (`input` is its layout, `map`
/// from [`LinearMap::im2col_conv`]).
///
/// # Errors
/// [`CircuitError::Input`] if the map does not fit the layout.
pub fn im2col_in_place(
    input: &Layout,
    geom: &ConvGeom,
    block: usize,
    map: &LinearMap,
    level: usize,
) -> Result<(LinearTransform, Layout)> {
    check(input, map)?;
    let (slots, positions) = (input.slots, geom.positions());
    let mut b = LinearBuilder::new(input);
    for (r, row) in map.rows.iter().enumerate() {
        for &(f, w) in row {
            b.add(b.slot_of(f as usize), f as usize, 0, w);
        }
        let (o, p) = (r / positions, r % positions);
        for j in (o * positions + p..slots).step_by(block) {
            b.add_bias(j, map.bias[r]);
        }
    }
    let name = format!("conv {}→{} (im2col, {} input ciphertexts)", geom.input, geom.output, input.cts);
    let stage = b.finish(name, level, fold_steps(block, slots), 1.0);
    let grid = Grid {
        shape: geom.output,
        base: (0..geom.output.c).map(|c| c * positions).collect(),
        row: geom.output.w,
        col: 1,
    };
    Ok((stage, Layout::from_grid(grid, slots, block)?))
}

fn check(input: &Layout, map: &LinearMap) -> Result<()> {
    if map.inputs != input.len() {
        return Err(CircuitError::Input {
            expected: format!("a map of {} inputs", input.len()),
            actual: map.inputs.to_string(),
        });
    }
    Ok(())
}

/// A convolution (or any map whose output is a feature map `out`, computed at `stride`
/// from its input) with the outputs placed on a grid (see the module documentation).
/// `taps(o, y, x, f)` gives the baby step through which output `(o, y, x)` reads input
/// feature `f`: the slot offset of `f` from the output's anchor in the input.
///
/// # Errors
/// [`CircuitError::Layout`] if the channels cannot be placed in the slots.
pub fn placed(
    input: &Layout,
    map: &LinearMap,
    out: Shape,
    (row, col): (usize, usize),
    taps: impl Fn(usize, usize, usize, usize) -> i64,
    name: String,
    level: usize,
) -> Result<(LinearTransform, Layout)> {
    check(input, map)?;
    if map.outputs() != out.len() {
        return Err(CircuitError::Input {
            expected: format!("{} outputs", out.len()),
            actual: map.outputs().to_string(),
        });
    }
    let (slots, period_in) = (input.slots, input.period);
    let rel = |y: usize, x: usize| y * row + x * col;
    let extent = rel(out.h - 1, out.w - 1) + 1;
    if extent > slots {
        return Err(CircuitError::Layout(format!(
            "a {}×{} channel at row {row}, column {col} spans {extent} slots",
            out.h, out.w
        )));
    }
    let footprint: Vec<usize> = (0..out.h).flat_map(|y| (0..out.w).map(move |x| rel(y, x))).collect();
    // Giant steps of a channel at base B are (k − B) mod P for k in `offsets`: the offsets of
    // the features a central output reads, less their taps.
    let (cy, cx) = (out.h / 2, out.w / 2);
    let centre = |o: usize| o * out.h * out.w + cy * out.w + cx;
    let offsets: Vec<BTreeSet<i64>> = (0..out.c)
        .map(|o| {
            map.rows[centre(o)]
                .iter()
                .map(|&(f, _)| {
                    let s = input.features[f as usize].1 as i64;
                    s - taps(o, cy, cx, f as usize) - rel(cy, cx) as i64
                })
                .collect()
        })
        .collect();
    let mut period = period_in;
    let bases = loop {
        if let Some(b) = place(&footprint, extent, &offsets, period_in, period) {
            break b;
        }
        if period >= slots {
            return Err(CircuitError::Layout(format!(
                "{} channels of {}×{} at row {row}, column {col} do not fit in {slots} slots",
                out.c, out.h, out.w
            )));
        }
        period *= 2;
    };
    let mut b = LinearBuilder::new(input);
    for o in 0..out.c {
        for y in 0..out.h {
            for x in 0..out.w {
                let r = o * out.h * out.w + y * out.w + x;
                let p = bases[o] + rel(y, x);
                for copy in (p..slots).step_by(period) {
                    for &(f, w) in &map.rows[r] {
                        b.add(copy, f as usize, taps(o, y, x, f as usize), w);
                    }
                    b.add_bias(copy, map.bias[r]);
                }
            }
        }
    }
    let stage = b.finish(name, level, Vec::new(), 1.0);
    let grid = Grid { shape: out, base: bases, row, col };
    Ok((stage, Layout::from_grid(grid, slots, period)?))
}

/// Greedy channel bases inside `0..period` (see the module documentation), or `None` if the
/// channels do not fit.
fn place(
    footprint: &[usize],
    extent: usize,
    offsets: &[BTreeSet<i64>],
    period_in: usize,
    period: usize,
) -> Option<Vec<usize>> {
    if extent > period {
        return None;
    }
    let mut taken = vec![false; period];
    let mut giants: BTreeSet<i64> = BTreeSet::new();
    let mut bases = Vec::with_capacity(offsets.len());
    for ks in offsets {
        let mut best: Option<(usize, usize)> = None;
        for base in 0..=period - extent {
            if footprint.iter().any(|&f| taken[base + f]) {
                continue;
            }
            let new = ks.iter().filter(|&&k| !giants.contains(&(k - base as i64).rem_euclid(period_in as i64))).count();
            if best.is_none_or(|(n, _)| new < n) {
                best = Some((new, base));
                if new == 0 {
                    break;
                }
            }
        }
        let (_, base) = best?;
        footprint.iter().for_each(|&f| taken[base + f] = true);
        giants.extend(ks.iter().map(|&k| (k - base as i64).rem_euclid(period_in as i64)));
        bases.push(base);
    }
    Some(bases)
}

/// The baby step of a convolution's tap: the slot offset, on the input grid `grid`, from
/// output `(y, x)`'s anchor `(y·stride − pad, x·stride − pad)` to input feature `f`.
pub fn grid_tap(grid: &Grid, geom: &ConvGeom, y: usize, x: usize, f: usize) -> i64 {
    let s = grid.shape;
    let (fy, fx) = ((f / s.w) % s.h, f % s.w);
    let dy = fy as i64 - (y * geom.stride) as i64 + geom.padding as i64;
    let dx = fx as i64 - (x * geom.stride) as i64 + geom.padding as i64;
    dy * grid.row as i64 + dx * grid.col as i64
}
