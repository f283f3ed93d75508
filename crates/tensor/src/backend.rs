//! Where a circuit runs: on CKKS ciphertexts, or on the plaintext twin.
//!
//! Every stage is written once, against [`Backend`]; [`CkksBackend`] evaluates it on
//! ciphertexts with public evaluation keys, [`PlainBackend`] on `f64` slot vectors with the
//! same slot layout (the twin that encrypted results are checked against). Scales and levels
//! exist only on the CKKS side: the twin computes the exact values the encrypted slots
//! approximate.

use crate::bootstrap::BootstrapStage;
use crate::error::{CircuitError, Result};
use crate::requirements::RotationKey;
use blindfold_ckks::{
    BootstrapKeys, Ciphertext, EncapsulationKeys, Encoder, Evaluator, GaloisElement, GaloisKeyRequest, GaloisKeys,
    Level, Plaintext, RelinearizationKey,
};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// A plaintext operand of a stage (a diagonal, a mask, a bias): its slot values, and once the
/// circuit is encoded for a context, the CKKS plaintext at the level and scale the stage uses.
#[derive(Clone, Debug)]
pub struct Operand {
    /// Slot values (`slots` of them).
    pub values: Vec<f64>,
    /// The encoded plaintext, if encoded.
    pub encoded: Option<Plaintext>,
}

impl Operand {
    /// An operand that is not encoded yet.
    pub fn new(values: Vec<f64>) -> Self {
        Self { values, encoded: None }
    }

    /// Encodes the values at `level` and `scale`.
    ///
    /// # Errors
    /// CKKS encoding errors.
    pub fn encode(&mut self, encoder: &Encoder, level: usize, scale: f64) -> Result<()> {
        self.encoded = Some(encoder.encode_real(&self.values, level, scale)?);
        Ok(())
    }

    fn plaintext(&self) -> Result<&Plaintext> {
        self.encoded.as_ref().ok_or(CircuitError::NotEncoded)
    }
}

/// The operations circuit stages are written against. Rotations are to the left: slot `j` of
/// `rotate(x, k)` is slot `j + k` of `x` (cyclically).
pub trait Backend {
    /// A (possibly encrypted) slot vector.
    type Value: Clone;

    /// Rotations of `x` by each of `steps` (sharing work where the backend can: hoisting).
    fn rotate_hoisted(&self, x: &Self::Value, steps: &[i64]) -> Result<Vec<Self::Value>>;
    /// `x` rotated by `step`.
    fn rotate(&self, x: &Self::Value, step: i64) -> Result<Self::Value>;
    /// `Σ_i rot(xs[i], steps[i])` (one shared ModDown on CKKS).
    fn rotate_sum(&self, xs: &[&Self::Value], steps: &[i64]) -> Result<Self::Value>;
    /// For each group, `Σ_{(k, w)} xs[k] ⊙ w` (no rescale): the inner sums of a baby-step
    /// giant-step map, one group per giant step.
    fn dot_plain_groups(&self, xs: &[&Self::Value], groups: &[Vec<(usize, &Operand)>]) -> Result<Vec<Self::Value>>;
    /// `a + b`.
    fn add(&self, a: &Self::Value, b: &Self::Value) -> Result<Self::Value>;
    /// `a += b`.
    fn add_assign(&self, a: &mut Self::Value, b: &Self::Value) -> Result<()>;
    /// `a += w`.
    fn add_plain_assign(&self, a: &mut Self::Value, w: &Operand) -> Result<()>;
    /// `a + c` in every slot.
    fn add_const(&self, a: &Self::Value, c: f64) -> Result<Self::Value>;
    /// `a − b`.
    fn sub(&self, a: &Self::Value, b: &Self::Value) -> Result<Self::Value>;
    /// `−a`.
    fn negate(&self, a: &Self::Value) -> Result<Self::Value>;
    /// `a / d` for `d > 0`, exactly, through the scale (no level).
    fn divide_exact(&self, a: Self::Value, d: f64) -> Result<Self::Value>;
    /// `a + v` slot-wise for public values `v` (encoded at `a`'s level and scale).
    fn add_values(&self, a: &Self::Value, v: &[f64]) -> Result<Self::Value>;
    /// `a ⊙ v` for public values `v`, one level down, at exactly `target` scale (the values are
    /// encoded at the scale that lands the rescaled product there).
    fn mul_values_to(&self, a: &Self::Value, v: &[f64], target: f64) -> Result<Self::Value>;
    /// `c·a`, one level down, at exactly `target` scale.
    fn mul_const_to(&self, a: &Self::Value, c: f64, target: f64) -> Result<Self::Value>;
    /// The scale of `a` (1 on the twin, which has none).
    fn scale_of(&self, a: &Self::Value) -> f64;
    /// The level of `a` (0 on the twin).
    fn level_of(&self, a: &Self::Value) -> usize;
    /// The prime `q_level` (1 on the twin).
    fn prime(&self, level: usize) -> f64;
    /// The parameters' default scale (1 on the twin).
    fn default_scale(&self) -> f64;
    /// `a ⊙ b` relinearized and rescaled, at one level below the lower of the two.
    fn mul_rescale(&self, a: &Self::Value, b: &Self::Value) -> Result<Self::Value>;
    /// `a ⊙ a` relinearized and rescaled.
    fn square_rescale(&self, a: &Self::Value) -> Result<Self::Value>;
    /// `a` rescaled (one level down, scale divided by the dropped prime).
    fn rescale(&self, a: Self::Value) -> Result<Self::Value>;
    /// `a` brought down to the level of `like` without rescaling.
    fn drop_to(&self, a: &Self::Value, like: &Self::Value) -> Result<Self::Value>;
    /// `a` bootstrapped by `stage`: the same slots (to its precision) at its output level and
    /// the same scale.
    fn bootstrap(&self, a: &Self::Value, stage: &BootstrapStage) -> Result<Self::Value>;
}

/// The plaintext twin: slot vectors of `f64`.
#[derive(Clone, Copy, Debug, Default)]
pub struct PlainBackend;

fn rotated(v: &[f64], k: i64) -> Vec<f64> {
    let n = v.len();
    let k = k.rem_euclid(n as i64) as usize;
    v[k..].iter().chain(&v[..k]).copied().collect()
}

fn zip(a: &[f64], b: &[f64], f: impl Fn(f64, f64) -> f64) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| f(*x, *y)).collect()
}

impl Backend for PlainBackend {
    type Value = Vec<f64>;

    fn rotate_hoisted(&self, x: &Vec<f64>, steps: &[i64]) -> Result<Vec<Vec<f64>>> {
        Ok(steps.iter().map(|&s| rotated(x, s)).collect())
    }
    fn rotate(&self, x: &Vec<f64>, step: i64) -> Result<Vec<f64>> {
        Ok(rotated(x, step))
    }
    fn rotate_sum(&self, xs: &[&Vec<f64>], steps: &[i64]) -> Result<Vec<f64>> {
        let mut acc = vec![0.0; xs.first().map_or(0, |x| x.len())];
        for (x, &s) in xs.iter().zip(steps) {
            acc = zip(&acc, &rotated(x, s), |a, b| a + b);
        }
        Ok(acc)
    }
    fn dot_plain_groups(&self, xs: &[&Vec<f64>], groups: &[Vec<(usize, &Operand)>]) -> Result<Vec<Vec<f64>>> {
        let n = xs.first().map_or(0, |x| x.len());
        Ok(groups
            .iter()
            .map(|g| {
                let mut acc = vec![0.0; n];
                for &(k, w) in g {
                    for ((a, xv), wv) in acc.iter_mut().zip(xs[k].iter()).zip(&w.values) {
                        *a += xv * wv;
                    }
                }
                acc
            })
            .collect())
    }
    fn add(&self, a: &Vec<f64>, b: &Vec<f64>) -> Result<Vec<f64>> {
        Ok(zip(a, b, |x, y| x + y))
    }
    fn add_assign(&self, a: &mut Vec<f64>, b: &Vec<f64>) -> Result<()> {
        a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
        Ok(())
    }
    fn add_plain_assign(&self, a: &mut Vec<f64>, w: &Operand) -> Result<()> {
        self.add_assign(a, &w.values)
    }
    fn add_const(&self, a: &Vec<f64>, c: f64) -> Result<Vec<f64>> {
        Ok(a.iter().map(|x| x + c).collect())
    }
    fn sub(&self, a: &Vec<f64>, b: &Vec<f64>) -> Result<Vec<f64>> {
        Ok(zip(a, b, |x, y| x - y))
    }
    fn negate(&self, a: &Vec<f64>) -> Result<Vec<f64>> {
        Ok(a.iter().map(|x| -x).collect())
    }
    fn divide_exact(&self, a: Vec<f64>, d: f64) -> Result<Vec<f64>> {
        Ok(a.into_iter().map(|x| x / d).collect())
    }
    fn add_values(&self, a: &Vec<f64>, v: &[f64]) -> Result<Vec<f64>> {
        Ok(zip(a, v, |x, y| x + y))
    }
    fn mul_values_to(&self, a: &Vec<f64>, v: &[f64], _target: f64) -> Result<Vec<f64>> {
        Ok(zip(a, v, |x, y| x * y))
    }
    fn mul_const_to(&self, a: &Vec<f64>, c: f64, _target: f64) -> Result<Vec<f64>> {
        Ok(a.iter().map(|x| x * c).collect())
    }
    fn scale_of(&self, _a: &Vec<f64>) -> f64 {
        1.0
    }
    fn level_of(&self, _a: &Vec<f64>) -> usize {
        0
    }
    fn prime(&self, _level: usize) -> f64 {
        1.0
    }
    fn default_scale(&self) -> f64 {
        1.0
    }
    fn mul_rescale(&self, a: &Vec<f64>, b: &Vec<f64>) -> Result<Vec<f64>> {
        Ok(zip(a, b, |x, y| x * y))
    }
    fn square_rescale(&self, a: &Vec<f64>) -> Result<Vec<f64>> {
        Ok(a.iter().map(|x| x * x).collect())
    }
    fn rescale(&self, a: Vec<f64>) -> Result<Vec<f64>> {
        Ok(a)
    }
    fn drop_to(&self, a: &Vec<f64>, _like: &Vec<f64>) -> Result<Vec<f64>> {
        Ok(a.clone())
    }
    fn bootstrap(&self, a: &Vec<f64>, stage: &BootstrapStage) -> Result<Vec<f64>> {
        stage.apply_twin(a)
    }
}

/// CKKS evaluation with the client's public evaluation keys.
///
/// Every rotation is checked against the Galois keys the circuit declared ([`CkksBackend::new`]'s
/// `declared`): a request outside them, or at a higher level than declared, is refused with
/// [`CircuitError::UndeclaredKey`] even if the key set happens to hold the key. The elements
/// and levels actually used are recorded ([`CkksBackend::used`]).
pub struct CkksBackend<'a> {
    eval: &'a Evaluator,
    rlk: Option<&'a RelinearizationKey>,
    gk: Option<&'a GaloisKeys>,
    encapsulation: Option<&'a EncapsulationKeys>,
    declared: BTreeMap<GaloisElement, usize>,
    used: Mutex<BTreeMap<GaloisElement, usize>>,
}

impl<'a> CkksBackend<'a> {
    /// A backend over `eval` with the evaluation keys `rlk` and `gk`, allowing the rotations
    /// in `declared` (each up to its level).
    pub fn new(
        eval: &'a Evaluator,
        rlk: &'a RelinearizationKey,
        gk: &'a GaloisKeys,
        declared: &[GaloisKeyRequest],
    ) -> Self {
        Self::with_keys(eval, Some(rlk), Some(gk), declared)
    }

    /// A backend whose evaluation keys may be missing (a computation that needs none, such as
    /// a mean); an operation that needs a missing key fails with
    /// [`CircuitError::MissingKeys`].
    pub fn with_keys(
        eval: &'a Evaluator,
        rlk: Option<&'a RelinearizationKey>,
        gk: Option<&'a GaloisKeys>,
        declared: &[GaloisKeyRequest],
    ) -> Self {
        let mut map = BTreeMap::new();
        for r in declared {
            let e = map.entry(r.element).or_insert(r.level.0);
            *e = (*e).max(r.level.0);
        }
        Self { eval, rlk, gk, encapsulation: None, declared: map, used: Mutex::new(BTreeMap::new()) }
    }

    /// The same backend with the sparse-secret encapsulation keys bootstraps need
    /// ([`BootstrapStage::sparse_secret`]).
    pub fn with_encapsulation(mut self, keys: Option<&'a EncapsulationKeys>) -> Self {
        self.encapsulation = keys;
        self
    }

    /// The Galois keys the evaluations so far used, each with the highest level it served.
    pub fn used(&self) -> Vec<GaloisKeyRequest> {
        let used = self.used.lock().expect("not poisoned");
        used.iter().map(|(&element, &level)| GaloisKeyRequest { element, level: Level(level) }).collect()
    }

    fn check(&self, step: i64, level: usize) -> Result<()> {
        let g = self.eval.context().galois_element_for_rotation(step);
        if !self.declares(g, level) {
            return Err(CircuitError::UndeclaredKey { stage: String::new(), step, level });
        }
        Ok(())
    }

    /// Whether element `g` is declared up to `level`; records the use if it is.
    fn declares(&self, g: GaloisElement, level: usize) -> bool {
        if g == GaloisElement::IDENTITY {
            return true;
        }
        if self.declared.get(&g).is_none_or(|&l| l < level) {
            return false;
        }
        let mut used = self.used.lock().expect("not poisoned");
        let e = used.entry(g).or_insert(level);
        *e = (*e).max(level);
        true
    }

    fn relinearize_rescale(&self, p: &mut Ciphertext) -> Result<()> {
        self.eval.relinearize_assign(
            p,
            self.rlk.ok_or_else(|| CircuitError::MissingKeys("a relinearization key".into()))?,
        )?;
        Ok(self.eval.rescale_assign(p)?)
    }

    fn galois_keys(&self) -> Result<&GaloisKeys> {
        self.gk.ok_or_else(|| CircuitError::MissingKeys("Galois keys".into()))
    }
}

impl Backend for CkksBackend<'_> {
    type Value = Ciphertext;

    fn rotate_hoisted(&self, x: &Ciphertext, steps: &[i64]) -> Result<Vec<Ciphertext>> {
        for &s in steps {
            self.check(s, x.level())?;
        }
        Ok(self.eval.rotate_hoisted(x, steps, self.galois_keys()?)?)
    }
    fn rotate(&self, x: &Ciphertext, step: i64) -> Result<Ciphertext> {
        self.check(step, x.level())?;
        Ok(self.eval.rotate(x, step, self.galois_keys()?)?)
    }
    fn rotate_sum(&self, xs: &[&Ciphertext], steps: &[i64]) -> Result<Ciphertext> {
        for (x, &s) in xs.iter().zip(steps) {
            self.check(s, x.level())?;
        }
        Ok(self.eval.rotate_sum(xs, steps, self.galois_keys()?)?)
    }
    fn dot_plain_groups(&self, xs: &[&Ciphertext], groups: &[Vec<(usize, &Operand)>]) -> Result<Vec<Ciphertext>> {
        let groups: Vec<Vec<(usize, &Plaintext)>> = groups
            .iter()
            .map(|g| g.iter().map(|&(k, w)| Ok((k, w.plaintext()?))).collect::<Result<_>>())
            .collect::<Result<_>>()?;
        Ok(self.eval.dot_plain_groups(xs, &groups)?)
    }
    fn add(&self, a: &Ciphertext, b: &Ciphertext) -> Result<Ciphertext> {
        Ok(self.eval.add(a, b)?)
    }
    fn add_assign(&self, a: &mut Ciphertext, b: &Ciphertext) -> Result<()> {
        Ok(self.eval.add_assign(a, b)?)
    }
    fn add_plain_assign(&self, a: &mut Ciphertext, w: &Operand) -> Result<()> {
        Ok(self.eval.add_plain_assign(a, w.plaintext()?)?)
    }
    fn add_const(&self, a: &Ciphertext, c: f64) -> Result<Ciphertext> {
        let mut out = a.clone();
        self.eval.add_const_assign(&mut out, c)?;
        Ok(out)
    }
    fn sub(&self, a: &Ciphertext, b: &Ciphertext) -> Result<Ciphertext> {
        Ok(self.eval.sub(a, b)?)
    }
    fn negate(&self, a: &Ciphertext) -> Result<Ciphertext> {
        Ok(self.eval.negate(a)?)
    }
    fn divide_exact(&self, mut a: Ciphertext, d: f64) -> Result<Ciphertext> {
        self.eval.divide_exact(&mut a, d)?;
        Ok(a)
    }
    fn add_values(&self, a: &Ciphertext, v: &[f64]) -> Result<Ciphertext> {
        let pt = Encoder::new(self.eval.context()).encode_real(v, a.level(), a.scale())?;
        Ok(self.eval.add_plain(a, &pt)?)
    }
    fn mul_values_to(&self, a: &Ciphertext, v: &[f64], target: f64) -> Result<Ciphertext> {
        let scale = target * self.prime(a.level()) / a.scale();
        let pt = Encoder::new(self.eval.context()).encode_real(v, a.level(), scale)?;
        Ok(self.eval.rescale(&self.eval.multiply_plain(a, &pt)?)?)
    }
    fn mul_const_to(&self, a: &Ciphertext, c: f64, target: f64) -> Result<Ciphertext> {
        let const_scale = target * self.prime(a.level()) / a.scale();
        Ok(self.eval.rescale(&self.eval.multiply_const(a, c, const_scale)?)?)
    }
    fn scale_of(&self, a: &Ciphertext) -> f64 {
        a.scale()
    }
    fn level_of(&self, a: &Ciphertext) -> usize {
        a.level()
    }
    fn prime(&self, level: usize) -> f64 {
        self.eval.context().params().q()[level] as f64
    }
    fn default_scale(&self) -> f64 {
        self.eval.context().params().default_scale()
    }
    fn mul_rescale(&self, a: &Ciphertext, b: &Ciphertext) -> Result<Ciphertext> {
        let mut p = match a.level().cmp(&b.level()) {
            std::cmp::Ordering::Equal => self.eval.multiply(a, b)?,
            std::cmp::Ordering::Greater => self.eval.multiply(&self.eval.drop_to_level(a, b.level())?, b)?,
            std::cmp::Ordering::Less => self.eval.multiply(a, &self.eval.drop_to_level(b, a.level())?)?,
        };
        self.relinearize_rescale(&mut p)?;
        Ok(p)
    }
    fn square_rescale(&self, a: &Ciphertext) -> Result<Ciphertext> {
        let mut p = self.eval.square(a)?;
        self.relinearize_rescale(&mut p)?;
        Ok(p)
    }
    fn rescale(&self, mut a: Ciphertext) -> Result<Ciphertext> {
        self.eval.rescale_assign(&mut a)?;
        Ok(a)
    }
    fn drop_to(&self, a: &Ciphertext, like: &Ciphertext) -> Result<Ciphertext> {
        Ok(self.eval.drop_to_level(a, like.level())?)
    }
    fn bootstrap(&self, a: &Ciphertext, stage: &BootstrapStage) -> Result<Ciphertext> {
        let plan = stage.plan()?;
        for r in plan.key_requests() {
            if !self.declares(r.element, r.level.0) {
                return Err(CircuitError::UndeclaredElement {
                    stage: String::new(),
                    element: r.element.value(),
                    level: r.level.0,
                });
            }
        }
        let relinearization = self.rlk.ok_or_else(|| CircuitError::MissingKeys("a relinearization key".into()))?;
        if stage.sparse_secret().is_some() && self.encapsulation.is_none() {
            return Err(CircuitError::MissingKeys("the sparse-secret encapsulation keys".into()));
        }
        let keys = BootstrapKeys { relinearization, galois: self.galois_keys()?, encapsulation: self.encapsulation };
        Ok(self.eval.bootstrap(a, plan, &keys)?)
    }
}

/// What a traced value knows: its level and scale.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Trace {
    /// Level.
    pub level: usize,
    /// Scale.
    pub scale: f64,
}

/// A backend that computes nothing but levels and scales, and records every rotation with
/// the level it is made at: run a computation written against [`Backend`] on it to learn the
/// keys it needs — from the same code that evaluates it.
#[derive(Debug)]
pub struct TraceBackend {
    q: Vec<f64>,
    default_scale: f64,
    rotations: Mutex<Vec<RotationKey>>,
    relinearizes: Mutex<bool>,
}

impl TraceBackend {
    /// A tracer for a chain of primes `q` (`q_0` first) with `default_scale`.
    pub fn new(q: &[u64], default_scale: f64) -> Self {
        Self {
            q: q.iter().map(|&p| p as f64).collect(),
            default_scale,
            rotations: Mutex::new(Vec::new()),
            relinearizes: Mutex::new(false),
        }
    }

    /// The rotations made so far, each with the level it was made at.
    pub fn rotations(&self) -> Vec<RotationKey> {
        self.rotations.lock().expect("not poisoned").clone()
    }

    /// Whether a ciphertext product (a relinearization) was made.
    pub fn relinearizes(&self) -> bool {
        *self.relinearizes.lock().expect("not poisoned")
    }

    fn record(&self, step: i64, level: usize) {
        if step != 0 {
            self.rotations.lock().expect("not poisoned").push(RotationKey { step, level });
        }
    }

    fn down(&self, level: usize) -> Result<usize> {
        level.checked_sub(1).ok_or(CircuitError::TooDeep { needed: 1, available: 0, hint: None })
    }

    fn product(&self, a: &Trace, b: &Trace) -> Result<Trace> {
        *self.relinearizes.lock().expect("not poisoned") = true;
        let level = a.level.min(b.level);
        Ok(Trace { level: self.down(level)?, scale: a.scale * b.scale / self.q[level] })
    }
}

impl Backend for TraceBackend {
    type Value = Trace;

    fn rotate_hoisted(&self, x: &Trace, steps: &[i64]) -> Result<Vec<Trace>> {
        steps.iter().for_each(|&s| self.record(s, x.level));
        Ok(vec![*x; steps.len()])
    }
    fn rotate(&self, x: &Trace, step: i64) -> Result<Trace> {
        self.record(step, x.level);
        Ok(*x)
    }
    fn rotate_sum(&self, xs: &[&Trace], steps: &[i64]) -> Result<Trace> {
        xs.iter().zip(steps).for_each(|(x, &s)| self.record(s, x.level));
        xs.first().map(|x| **x).ok_or_else(|| CircuitError::Input { expected: "terms".into(), actual: "none".into() })
    }
    fn dot_plain_groups(&self, xs: &[&Trace], groups: &[Vec<(usize, &Operand)>]) -> Result<Vec<Trace>> {
        let x = xs
            .first()
            .map(|x| **x)
            .ok_or_else(|| CircuitError::Input { expected: "terms".into(), actual: "none".into() })?;
        Ok(vec![x; groups.len()])
    }
    fn add(&self, a: &Trace, _b: &Trace) -> Result<Trace> {
        Ok(*a)
    }
    fn add_assign(&self, _a: &mut Trace, _b: &Trace) -> Result<()> {
        Ok(())
    }
    fn add_plain_assign(&self, _a: &mut Trace, _w: &Operand) -> Result<()> {
        Ok(())
    }
    fn add_const(&self, a: &Trace, _c: f64) -> Result<Trace> {
        Ok(*a)
    }
    fn sub(&self, a: &Trace, _b: &Trace) -> Result<Trace> {
        Ok(*a)
    }
    fn negate(&self, a: &Trace) -> Result<Trace> {
        Ok(*a)
    }
    fn divide_exact(&self, a: Trace, d: f64) -> Result<Trace> {
        Ok(Trace { scale: a.scale * d, ..a })
    }
    fn add_values(&self, a: &Trace, _v: &[f64]) -> Result<Trace> {
        Ok(*a)
    }
    fn mul_values_to(&self, a: &Trace, _v: &[f64], target: f64) -> Result<Trace> {
        Ok(Trace { level: self.down(a.level)?, scale: target })
    }
    fn mul_const_to(&self, a: &Trace, _c: f64, target: f64) -> Result<Trace> {
        Ok(Trace { level: self.down(a.level)?, scale: target })
    }
    fn mul_rescale(&self, a: &Trace, b: &Trace) -> Result<Trace> {
        self.product(a, b)
    }
    fn square_rescale(&self, a: &Trace) -> Result<Trace> {
        self.product(a, a)
    }
    fn rescale(&self, a: Trace) -> Result<Trace> {
        Ok(Trace { level: self.down(a.level)?, scale: a.scale / self.q[a.level] })
    }
    fn drop_to(&self, a: &Trace, like: &Trace) -> Result<Trace> {
        Ok(Trace { level: like.level, ..*a })
    }
    fn bootstrap(&self, _a: &Trace, stage: &BootstrapStage) -> Result<Trace> {
        // Its keys need a context the tracer does not have: refuse rather than under-report.
        Err(CircuitError::Unsupported(format!(
            "tracing through a bootstrap ({}): declare its keys with BootstrapStage::key_requests",
            stage.preset().name
        )))
    }
    fn scale_of(&self, a: &Trace) -> f64 {
        a.scale
    }
    fn level_of(&self, a: &Trace) -> usize {
        a.level
    }
    fn prime(&self, level: usize) -> f64 {
        self.q[level]
    }
    fn default_scale(&self) -> f64 {
        self.default_scale
    }
}
