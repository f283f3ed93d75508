//! Dense layers: the hybrid diagonal method with row groups across replicas.
//!
//! On an input layout that repeats with period `P` (`R = slots/P` replicas), the `n_o`
//! outputs (rounded up to a power of two) are split into `groups = min(R, n_o)` groups of
//! `n_g = n_o/groups` rows, replica `g` computing group `g`: `n_g` diagonals instead of
//! `n_o`, then `log2(P/n_g)` fold rotations sum each row's partial products inside its
//! replica; output `o = g·n_g + i` lands at slot `g·P + i` (Juvekar–Vaikuntanathan–
//! Chandrakasan, GAZELLE, 2018, §5). With one group (`compact`, or an input that does not
//! repeat) every replica computes the same rows and the output repeats with period `n_g`,
//! with output `o` at slot `o`. The diagonals are split baby-step giant-step, `n1·n2 = n_g`.

use crate::error::{CircuitError, Result};
use crate::layout::Layout;
use crate::linear::{LinearBuilder, LinearMap, LinearTransform};

/// `n1`, the baby-step count for `m` diagonals (a power of two): `n1 ≥ m/n1`.
pub(crate) fn baby_steps(m: usize) -> usize {
    1usize << m.trailing_zeros().div_ceil(2)
}

/// The doubling fold `from, 2·from, …` below `to` (sums `to/from` partial sums spaced `from`
/// apart).
pub(crate) fn fold_steps(from: usize, to: usize) -> Vec<i64> {
    let mut steps = Vec::new();
    let mut s = from;
    while s < to {
        steps.push(s as i64);
        s *= 2;
    }
    steps
}

/// The dense stage of `map` on `input` at input level `level`, and the layout of its output.
/// `compact` keeps one group, so outputs sit at slots `0..n_o` (the logits of a network).
///
/// # Errors
/// [`CircuitError::Input`] if the map does not take `input`'s features.
pub fn dense(
    input: &Layout,
    map: &LinearMap,
    compact: bool,
    level: usize,
    headroom: f64,
) -> Result<(LinearTransform, Layout)> {
    if map.inputs != input.len() {
        return Err(CircuitError::Input {
            expected: format!("a dense layer of {} inputs", input.len()),
            actual: map.inputs.to_string(),
        });
    }
    let slots = input.slots;
    let n_o = map.outputs().next_power_of_two();
    if n_o > slots {
        return Err(CircuitError::Layout(format!("{} outputs exceed {slots} slots", map.outputs())));
    }
    let replicas = slots / input.period;
    let groups = if compact { 1 } else { replicas.min(n_o) };
    let n_g = n_o / groups;
    // A layout repeating with period P also repeats with any multiple of it.
    let period = input.period.max(n_g);
    let m = input.period.min(n_g);
    let n1 = baby_steps(m) as i64;
    let mut b = LinearBuilder::new(input);
    let copies = if groups == 1 { slots / period } else { 1 };
    for (o, row) in map.rows.iter().enumerate() {
        let (g, i) = (o / n_g, o % n_g);
        for &(f, w) in row {
            let s = b.slot_of(f as usize) as i64;
            let d = (s - i as i64).rem_euclid(m as i64);
            let p = g * period + i + (s - i as i64 - d).rem_euclid(input.period as i64) as usize;
            for r in 0..copies {
                b.add(p + r * period, f as usize, d % n1, w);
            }
        }
    }
    let mut features = Vec::with_capacity(map.outputs());
    for (o, &bias) in map.bias.iter().enumerate() {
        let (g, i) = (o / n_g, o % n_g);
        if groups == 1 {
            for j in (i..slots).step_by(n_g) {
                b.add_bias(j, bias);
            }
        } else {
            b.add_bias(g * period + i, bias);
        }
        features.push((0, (g * period + i) as u32));
    }
    let name = format!("dense {}→{}, {groups} group(s)", map.inputs, map.outputs());
    let stage = b.finish(name, level, fold_steps(n_g, period), headroom);
    let out_period = if groups == 1 { n_g } else { slots };
    Ok((stage, Layout { cts: 1, slots, period: out_period, features, grid: None }))
}
