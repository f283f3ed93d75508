//! Slot layouts: where each feature of a tensor lives in the slots of the ciphertexts, and how
//! the client packs its input.

use crate::error::{CircuitError, Result};
use crate::geometry::{ConvGeom, Shape};
use serde::{Deserialize, Serialize};

/// A feature map laid out on a grid of slots: feature `(c, y, x)` at slot
/// `base[c] + y·row + x·col` (of ciphertext 0), for every channel `c`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grid {
    /// The feature map's shape.
    pub shape: Shape,
    /// Slot of `(c, 0, 0)` for each channel.
    pub base: Vec<usize>,
    /// Slot distance between rows.
    pub row: usize,
    /// Slot distance between columns.
    pub col: usize,
}

impl Grid {
    /// Slot of `(c, y, x)`.
    pub fn slot(&self, c: usize, y: usize, x: usize) -> usize {
        self.base[c] + y * self.row + x * self.col
    }
}

/// Where each feature of a tensor lives: feature `f` is held by ciphertext `features[f].0` at
/// slot `features[f].1 + k·period` for every `k < slots/period` (a layout that does not repeat
/// has `period = slots`). Slots that hold no feature hold values no later stage reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Number of ciphertexts.
    pub cts: usize,
    /// Slots per ciphertext (`N/2`).
    pub slots: usize,
    /// Period of the replication, a power of two dividing `slots`.
    pub period: usize,
    /// `(ciphertext, slot in 0..period)` of each feature.
    pub features: Vec<(u32, u32)>,
    /// The grid the features form, for feature maps in one ciphertext.
    pub grid: Option<Grid>,
}

impl Layout {
    /// A one-ciphertext layout of the feature map `grid`, repeating with `period`.
    ///
    /// # Errors
    /// [`CircuitError::Layout`] if a slot falls outside the period or two features share one.
    pub fn from_grid(grid: Grid, slots: usize, period: usize) -> Result<Self> {
        let s = grid.shape;
        let mut features = Vec::with_capacity(s.len());
        let mut taken = vec![false; period];
        for c in 0..s.c {
            for y in 0..s.h {
                for x in 0..s.w {
                    let slot = grid.slot(c, y, x);
                    if slot >= period || std::mem::replace(&mut taken[slot], true) {
                        return Err(CircuitError::Layout(format!(
                            "feature ({c}, {y}, {x}) of {s} at slot {slot}: outside {period} slots or taken"
                        )));
                    }
                    features.push((0, slot as u32));
                }
            }
        }
        Ok(Self { cts: 1, slots, period, features, grid: Some(grid) })
    }

    /// Number of features.
    pub fn len(&self) -> usize {
        self.features.len()
    }

    /// Whether the layout holds no feature.
    pub fn is_empty(&self) -> bool {
        self.features.is_empty()
    }

    /// The slot vectors of a tensor with values `x` (one per feature) in this layout, zero in
    /// every other slot.
    ///
    /// # Errors
    /// [`CircuitError::Input`] for a wrong number of values.
    pub fn pack(&self, x: &[f64]) -> Result<Vec<Vec<f64>>> {
        if x.len() != self.len() {
            return Err(CircuitError::Input {
                expected: format!("{} values", self.len()),
                actual: x.len().to_string(),
            });
        }
        let mut cts = vec![vec![0f64; self.slots]; self.cts];
        for (&(t, s), &v) in self.features.iter().zip(x) {
            for k in (s as usize..self.slots).step_by(self.period) {
                cts[t as usize][k] = v;
            }
        }
        Ok(cts)
    }

    /// The values of the features, read from slot vectors in this layout.
    ///
    /// # Panics
    /// If `cts` has fewer than [`Layout::cts`] vectors or fewer than [`Layout::period`] slots
    /// each.
    pub fn unpack(&self, cts: &[Vec<f64>]) -> Vec<f64> {
        self.features.iter().map(|&(t, s)| cts[t as usize][s as usize]).collect()
    }

    /// The largest difference between two copies of one feature in slot vectors of this
    /// layout (every feature is held at `slot + k·period`): zero up to the noise for values
    /// computed in the layout, of the size of the values themselves for anything else (a
    /// ciphertext decrypted with another key is uniform noise in every slot). `0` for a
    /// layout without copies, `NaN` if a copy is not finite.
    ///
    /// # Panics
    /// As [`Layout::unpack`], and for vectors of fewer than [`Layout::slots`] slots.
    pub fn replica_spread(&self, cts: &[Vec<f64>]) -> f64 {
        let copies = self.slots / self.period.max(1);
        let mut spread = 0f64;
        for &(t, s) in &self.features {
            let v = &cts[t as usize];
            let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
            for k in 0..copies {
                let x = v[s as usize + k * self.period];
                if !x.is_finite() {
                    return f64::NAN;
                }
                (lo, hi) = (lo.min(x), hi.max(x));
            }
            spread = spread.max(hi - lo);
        }
        spread
    }

    /// The largest magnitude among the slots that hold no feature (nor a copy of one):
    /// zero up to the noise for a result masked to its features, of the size of the values
    /// or far beyond for a ciphertext decrypted with another key. `NaN` if a slot is not
    /// finite.
    ///
    /// # Panics
    /// As [`Layout::replica_spread`].
    pub fn stray(&self, cts: &[Vec<f64>]) -> f64 {
        let mut held = vec![vec![false; self.period.max(1)]; self.cts];
        for &(t, s) in &self.features {
            held[t as usize][s as usize] = true;
        }
        let mut stray = 0f64;
        for (v, held) in cts.iter().take(self.cts).zip(&held) {
            for (j, x) in v[..self.slots].iter().enumerate() {
                if !x.is_finite() {
                    return f64::NAN;
                }
                if !held[j % held.len()] {
                    stray = stray.max(x.abs());
                }
            }
        }
        stray
    }
}

/// How the client packs one input image into ciphertexts: the first stage of a circuit reads
/// what this produces. Public, derived from the architecture and the ring alone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Packing {
    /// The image itself in one ciphertext, `(c, y, x)` at slot `c·h·w + y·w + x`, repeated
    /// with period `period` (a power of two at least `c·h·w`).
    Image {
        /// Image shape.
        shape: Shape,
        /// Replication period.
        period: usize,
        /// Slots per ciphertext.
        slots: usize,
    },
    /// The im2col matrix of the first convolution (client-side im2col, as TenSEAL does):
    /// kernel entry `i` read at output position `p` goes to block `i mod m` of ciphertext
    /// `i / m` (`m = slots/block`), at slot `p` of the block; with `per_channel`, the block
    /// holds it once per output channel `c`, at `c·P + p` (`P` positions).
    Im2col {
        /// The convolution.
        geom: ConvGeom,
        /// Replicate every entry for each output channel.
        per_channel: bool,
        /// Block size in slots, a power of two.
        block: usize,
        /// Slots per ciphertext.
        slots: usize,
    },
}

impl Packing {
    /// The im2col packing of `geom` for `slots` slots.
    ///
    /// # Errors
    /// [`CircuitError::Layout`] if one block does not fit in the slots.
    pub fn im2col(geom: ConvGeom, per_channel: bool, slots: usize) -> Result<Self> {
        let positions = geom.positions();
        let used = if per_channel { positions * geom.output.c } else { positions };
        if used > slots {
            return Err(CircuitError::Layout(format!(
                "{used} slots per im2col block, ciphertexts have {slots}{}",
                if per_channel { " (one copy per output channel)" } else { "" }
            )));
        }
        Ok(Packing::Im2col { geom, per_channel, block: used.next_power_of_two(), slots })
    }

    /// The image packing of `shape` for `slots` slots, repeated as often as it fits.
    ///
    /// # Errors
    /// [`CircuitError::Layout`] if the image does not fit.
    pub fn image(shape: Shape, slots: usize) -> Result<Self> {
        let len = shape
            .checked_len()
            .filter(|&l| l <= slots)
            .ok_or_else(|| CircuitError::Layout(format!("an image of {shape} does not fit in {slots} slots")))?;
        Ok(Packing::Image { shape, period: len.next_power_of_two(), slots })
    }

    /// Number of ciphertexts the client sends.
    pub fn ciphertexts(&self) -> usize {
        match self {
            Packing::Image { .. } => 1,
            Packing::Im2col { geom, block, slots, .. } => geom.cols().div_ceil(slots / block),
        }
    }

    /// Values of the input image (`c·h·w`, channel-major) this packing expects.
    pub fn input_len(&self) -> usize {
        match self {
            Packing::Image { shape, .. } => shape.len(),
            Packing::Im2col { geom, .. } => geom.input.len(),
        }
    }

    /// The layout of the packed features. Features: the pixels (image); `i·P + p` for entry
    /// `i` at position `p` (im2col); `(i·C + c)·P + p` (im2col per channel).
    pub fn layout(&self) -> Layout {
        match self {
            Packing::Image { shape, period, slots } => {
                let grid = Grid {
                    shape: *shape,
                    base: (0..shape.c).map(|c| c * shape.h * shape.w).collect(),
                    row: shape.w,
                    col: 1,
                };
                Layout::from_grid(grid, *slots, *period).expect("an image fits its own period")
            }
            Packing::Im2col { geom, per_channel, block, slots } => {
                let (p_count, channels) = (geom.positions(), if *per_channel { geom.output.c } else { 1 });
                let m = slots / block;
                let mut features = Vec::with_capacity(geom.cols() * channels * p_count);
                for i in 0..geom.cols() {
                    let (t, b) = (i / m, i % m);
                    for c in 0..channels {
                        for p in 0..p_count {
                            features.push((t as u32, (b * block + c * p_count + p) as u32));
                        }
                    }
                }
                Layout { cts: self.ciphertexts(), slots: *slots, period: *slots, features, grid: None }
            }
        }
    }

    /// The slot vectors of the input ciphertexts for one image (`c·h·w` values,
    /// channel-major).
    ///
    /// # Errors
    /// [`CircuitError::Input`] for an image of the wrong size.
    pub fn pack(&self, image: &[f64]) -> Result<Vec<Vec<f64>>> {
        if image.len() != self.input_len() {
            return Err(CircuitError::Input {
                expected: format!("{} input values", self.input_len()),
                actual: image.len().to_string(),
            });
        }
        let layout = self.layout();
        let values: Vec<f64> = match self {
            Packing::Image { .. } => image.to_vec(),
            Packing::Im2col { geom, per_channel, .. } => {
                let channels = if *per_channel { geom.output.c } else { 1 };
                let mut v = Vec::with_capacity(layout.len());
                for i in 0..geom.cols() {
                    for _ in 0..channels {
                        v.extend((0..geom.positions()).map(|p| geom.source(p, i).map_or(0.0, |s| image[s])));
                    }
                }
                v
            }
        };
        layout.pack(&values)
    }
}
