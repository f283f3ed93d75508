//! Splitting a training set among several data holders, as in federated and ensemble
//! studies: identically distributed shares, label skew, Dirichlet class proportions
//! (Hsu–Qi–Brown 2019, "Measuring the effects of non-identical data distribution"), and
//! unequal share sizes. Seeded and reproducible.

use crate::{Error, LabeledImages, Result};
use rand::seq::SliceRandom;

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use rand_distr::{Distribution, Gamma};
use std::fmt;
use std::str::FromStr;

/// How the examples are divided among the holders.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Partition {
    /// Shuffled and dealt out in equal shares.
    Iid,
    /// Each holder sees only `K` classes (holder `h` gets classes `h·K … h·K + K - 1` modulo
    /// the number of classes); each class is shared equally among the holders that have it.
    LabelSkew(usize),
    /// For each class, the holders' shares are drawn from a symmetric Dirichlet
    /// distribution with concentration `α` (small `α`: very unequal class mixes).
    Dirichlet(f64),
    /// Shuffled, then dealt out in shares proportional to `1, 2, …, holders`.
    SizeSkew,
}

impl FromStr for Partition {
    type Err = Error;

    /// `iid`, `label-skew:K`, `dirichlet:ALPHA` or `size-skew`.
    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| Error::Invalid(format!("split {s:?}: {why}"));
        match s.split_once(':') {
            None if s == "iid" => Ok(Self::Iid),
            None if s == "size-skew" => Ok(Self::SizeSkew),
            Some(("label-skew", k)) => match k.parse::<usize>() {
                Ok(k) if k >= 1 => Ok(Self::LabelSkew(k)),
                _ => Err(bad("K must be a whole number of classes, at least 1")),
            },
            Some(("dirichlet", a)) => match a.parse::<f64>() {
                Ok(a) if a.is_finite() && a > 0.0 => Ok(Self::Dirichlet(a)),
                _ => Err(bad("ALPHA must be a positive number")),
            },
            _ => Err(bad("expected iid, label-skew:K, dirichlet:ALPHA or size-skew")),
        }
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Iid => write!(f, "iid"),
            Self::LabelSkew(k) => write!(f, "label-skew:{k}"),
            Self::Dirichlet(a) => write!(f, "dirichlet:{a}"),
            Self::SizeSkew => write!(f, "size-skew"),
        }
    }
}

/// The example indices of each of `holders` holders (disjoint; together all examples, except
/// that label skew leaves out classes no holder is given).
///
/// # Errors
/// [`Error::Invalid`] for no holders, more holders than examples, a label skew `K` above the
/// number of classes, or a split that leaves a holder with no examples.
pub fn partition(labels: &[u8], holders: usize, scheme: Partition, seed: u64) -> Result<Vec<Vec<usize>>> {
    if holders == 0 || holders > labels.len() {
        return Err(Error::Invalid(format!("{holders} holders for {} examples", labels.len())));
    }
    let classes = labels.iter().map(|&l| l as usize + 1).max().unwrap_or(0);
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, &l) in labels.iter().enumerate() {
        by_class[l as usize].push(i);
    }
    for c in &mut by_class {
        c.shuffle(&mut rng);
    }
    let mut out = vec![Vec::new(); holders];
    match scheme {
        Partition::Iid | Partition::SizeSkew => {
            let mut all: Vec<usize> = (0..labels.len()).collect();
            all.shuffle(&mut rng);
            let weights: Vec<f64> = match scheme {
                Partition::Iid => vec![1.0; holders],
                _ => (1..=holders).map(|h| h as f64).collect(),
            };
            for (h, r) in shares(all.len(), &weights).into_iter().enumerate() {
                out[h].extend_from_slice(&all[r]);
            }
        }
        Partition::LabelSkew(k) => {
            if k > classes {
                return Err(Error::Invalid(format!("label-skew:{k} with only {classes} classes")));
            }
            for (c, idx) in by_class.iter().enumerate() {
                let owners: Vec<usize> =
                    (0..holders).filter(|h| (c + classes - h * k % classes) % classes < k).collect();
                if owners.is_empty() {
                    continue;
                }
                for (o, r) in owners.iter().zip(shares(idx.len(), &vec![1.0; owners.len()])) {
                    out[*o].extend_from_slice(&idx[r]);
                }
            }
        }
        Partition::Dirichlet(alpha) => {
            let gamma = Gamma::new(alpha, 1.0).map_err(|e| Error::Invalid(format!("dirichlet:{alpha}: {e}")))?;
            for idx in &by_class {
                let weights: Vec<f64> = (0..holders).map(|_| gamma.sample(&mut rng).max(f64::MIN_POSITIVE)).collect();
                for (h, r) in shares(idx.len(), &weights).into_iter().enumerate() {
                    out[h].extend_from_slice(&idx[r]);
                }
            }
        }
    }
    for (h, idx) in out.iter_mut().enumerate() {
        if idx.is_empty() {
            return Err(Error::Invalid(format!("split {scheme} leaves holder {h} with no examples (seed {seed})")));
        }
        idx.shuffle(&mut rng);
    }
    Ok(out)
}

/// Consecutive ranges of `0..n` with lengths proportional to `weights` (largest remainders).
fn shares(n: usize, weights: &[f64]) -> Vec<std::ops::Range<usize>> {
    let total: f64 = weights.iter().sum();
    let mut counts: Vec<usize> = weights.iter().map(|w| (n as f64 * w / total).floor() as usize).collect();
    let mut rest: Vec<usize> = (0..weights.len()).collect();
    rest.sort_by(|&a, &b| {
        let frac = |i: usize| n as f64 * weights[i] / total - counts[i] as f64;
        frac(b).total_cmp(&frac(a))
    });
    let missing = n - counts.iter().sum::<usize>();
    for &i in rest.iter().take(missing) {
        counts[i] += 1;
    }
    let mut start = 0;
    counts
        .into_iter()
        .map(|c| {
            start += c;
            start - c..start
        })
        .collect()
}

/// Number of examples of each class among `idx` (classes `0..classes`).
pub fn class_histogram(labels: &[u8], idx: &[usize], classes: usize) -> Vec<usize> {
    let mut h = vec![0; classes];
    for &i in idx {
        if let Some(c) = h.get_mut(labels[i] as usize) {
            *c += 1;
        }
    }
    h
}

impl LabeledImages {
    /// The examples at `idx`, in that order.
    ///
    /// # Panics
    /// If an index is out of range.
    pub fn subset(&self, idx: &[usize]) -> Self {
        let size = self.images.rows * self.images.cols;
        let mut pixels = Vec::with_capacity(idx.len() * size);
        for &i in idx {
            pixels.extend_from_slice(self.images.image(i));
        }
        Self {
            images: crate::Images { count: idx.len(), rows: self.images.rows, cols: self.images.cols, pixels },
            labels: idx.iter().map(|&i| self.labels[i]).collect(),
        }
    }
}
