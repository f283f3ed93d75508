//! A small CKKS tensor layer in TenSEAL's shape for power users: a context with keys, and
//! encrypted vectors that add, multiply, sum, take dot products, multiply by a plaintext
//! matrix, rotate and serialize. Every vector keeps zeros in the slots past its length, so
//! sums and products over slots mean what they say.

use crate::{lock, value_error};
use blindfold_ckks::presets::PRESETS;
use blindfold_ckks::serialize::{deserialize, serialize};
use blindfold_ckks::{
    Ciphertext, Context, Decryptor, Encoder, Encryptor, Evaluator, GaloisKeys, KeyGenerator, Plaintext, PublicKey,
    RelinearizationKey, SecretKey,
};
use numpy::{AllowTypeChange, IntoPyArray, PyArray1, PyArrayLike1, PyArrayLike2};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::sync::{Arc, Mutex};

/// Magic and version of a serialized context.
const CONTEXT_MAGIC: &[u8; 4] = b"BFCX";
const CONTEXT_VERSION: u8 = 1;

/// CKKS parameters (a 128-bit preset) with keys: public, relinearization, Galois keys for the
/// rotations by ±2^j, and the secret key on the side that made them.
#[pyclass(module = "blindfold._blindfold", frozen)]
pub(crate) struct CkksContext {
    preset: &'static str,
    ctx: Arc<Context>,
    encoder: Encoder,
    evaluator: Evaluator,
    encryptor: Mutex<Encryptor>,
    secret: Option<SecretKey>,
    pk: PublicKey,
    rlk: RelinearizationKey,
    gk: GaloisKeys,
}

fn power_of_two_steps(slots: usize) -> Vec<i64> {
    (0..slots.trailing_zeros()).flat_map(|j| [1i64 << j, -(1i64 << j)]).collect()
}

fn preset_named(name: &str) -> PyResult<&'static blindfold_ckks::Preset> {
    PRESETS.iter().find(|p| p.name == name).ok_or_else(|| {
        let names: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
        PyValueError::new_err(format!("unknown preset {name:?}: one of {}", names.join(", ")))
    })
}

/// Reads `u64`-length-prefixed fields from a serialized context, refusing lengths past the end.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn next(&mut self) -> PyResult<&'a [u8]> {
        let bad = || PyValueError::new_err("not a serialized blindfold context (truncated)");
        if self.0.len() < 8 {
            return Err(bad());
        }
        let len = u64::from_le_bytes(self.0[..8].try_into().expect("8 bytes"));
        let len = usize::try_from(len).ok().filter(|&l| l <= self.0.len() - 8).ok_or_else(bad)?;
        let (field, rest) = self.0[8..].split_at(len);
        self.0 = rest;
        Ok(field)
    }
}

impl CkksContext {
    fn scale(&self) -> f64 {
        self.ctx.params().default_scale()
    }

    fn slots(&self) -> usize {
        self.ctx.params().slots()
    }

    /// Encodes `values` (zero-padded) at `level` and `scale`.
    fn encode(&self, values: &[f64], level: usize, scale: f64) -> PyResult<Plaintext> {
        if values.len() > self.slots() {
            return Err(PyValueError::new_err(format!("{} values, at most {} slots", values.len(), self.slots())));
        }
        self.encoder.encode_real(values, level, scale).map_err(value_error)
    }

    /// `ct ⊙ values`, rescaled, at the same scale (the plaintext is encoded at the prime the
    /// rescale divides by).
    fn multiply_values(&self, ct: &Ciphertext, values: &[f64]) -> PyResult<Ciphertext> {
        let level = ct.level();
        if level == 0 {
            return Err(PyValueError::new_err("no levels left for a product: use a preset of more depth"));
        }
        let pt = self.encode(values, level, self.ctx.params().q()[level] as f64)?;
        let e = &self.evaluator;
        e.rescale(&e.multiply_plain(ct, &pt).map_err(value_error)?).map_err(value_error)
    }

    /// Rotation of all slots left by `k` (right for negative `k`), composed of the ±2^j keys.
    fn rotate_slots(&self, ct: &Ciphertext, k: i64) -> PyResult<Ciphertext> {
        let slots = self.slots() as i64;
        let k = k.rem_euclid(slots);
        // The shorter way round: left by k or right by slots − k.
        let (mut rest, sign) = if k <= slots / 2 { (k, 1) } else { (slots - k, -1) };
        let mut out = ct.clone();
        let mut bit = 1i64;
        while rest > 0 {
            if rest & bit != 0 {
                out = self.evaluator.rotate(&out, sign * bit, &self.gk).map_err(value_error)?;
                rest &= !bit;
            }
            bit <<= 1;
        }
        Ok(out)
    }

    /// The two operands at the lower of their levels and the same scale. Scales differ after
    /// a ciphertext product (`Δ²/q` against `Δ`); the second operand's is then relabelled,
    /// a relative error of `|1 − Δ₁/Δ₂|` (below 10⁻⁷ on the 40-bit presets), as TenSEAL does.
    fn align(&self, a: &Ciphertext, b: &Ciphertext) -> PyResult<(Ciphertext, Ciphertext)> {
        let level = a.level().min(b.level());
        let e = &self.evaluator;
        let a = e.drop_to_level(a, level).map_err(value_error)?;
        let mut b = e.drop_to_level(b, level).map_err(value_error)?;
        if (a.scale() / b.scale() - 1.0).abs() > 1e-2 {
            return Err(PyValueError::new_err(format!("scales {} and {} are too far apart", a.scale(), b.scale())));
        }
        b.set_scale(a.scale());
        Ok((a, b))
    }

    fn vector(self_: &Bound<'_, Self>, ct: Ciphertext, size: usize) -> CkksVector {
        CkksVector { ctx: self_.clone().unbind(), ct, size }
    }
}

#[pymethods]
impl CkksContext {
    /// A context on a 128-bit preset (`blindfold params` lists them), with fresh keys.
    #[new]
    #[pyo3(signature = (preset="N8192_DEPTH3_128BIT"))]
    fn py_new(py: Python<'_>, preset: &str) -> PyResult<Self> {
        let preset = preset_named(preset)?;
        py.detach(|| {
            let ctx = Context::new(&preset.parameters().map_err(value_error)?).map_err(value_error)?;
            let mut keygen = KeyGenerator::new(&ctx).map_err(value_error)?;
            let pk = keygen.public_key();
            let rlk = keygen.relinearization_key();
            let steps = power_of_two_steps(ctx.params().slots());
            let gk = keygen.galois_keys(&keygen.top_level_requests(&steps, false)).map_err(value_error)?;
            let secret = SecretKey::from_bytes(&keygen.secret_key().to_bytes().map_err(value_error)?, &ctx)
                .map_err(value_error)?;
            Self::assemble(preset.name, ctx, Some(secret), pk, rlk, gk)
        })
    }

    /// The preset's name.
    #[getter]
    fn preset(&self) -> &'static str {
        self.preset
    }

    /// Slots per vector (N/2).
    #[getter(slots)]
    fn slots_py(&self) -> usize {
        self.slots()
    }

    /// Whether this context holds the secret key (it can decrypt).
    #[getter]
    fn has_secret_key(&self) -> bool {
        self.secret.is_some()
    }

    /// The context as bytes: parameters and public keys, and the secret key only with
    /// `secret_key=True` (keep such bytes as secret as the key). A server gets the default.
    #[pyo3(signature = (secret_key=false))]
    fn serialize<'py>(&self, py: Python<'py>, secret_key: bool) -> PyResult<Bound<'py, PyBytes>> {
        let mut out = Vec::new();
        out.extend_from_slice(CONTEXT_MAGIC);
        out.push(CONTEXT_VERSION);
        out.push(self.preset.len() as u8);
        out.extend_from_slice(self.preset.as_bytes());
        let mut field = |bytes: &[u8]| {
            out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            out.extend_from_slice(bytes);
        };
        field(&serialize(&self.pk, &self.ctx).map_err(value_error)?);
        field(&serialize(&self.rlk, &self.ctx).map_err(value_error)?);
        field(&serialize(&self.gk, &self.ctx).map_err(value_error)?);
        match (&self.secret, secret_key) {
            (Some(sk), true) => field(&sk.to_bytes().map_err(value_error)?),
            (None, true) => return Err(PyValueError::new_err("this context has no secret key")),
            _ => field(&[]),
        }
        Ok(PyBytes::new(py, &out))
    }

    /// A context from [`CkksContext.serialize`]'s bytes; every key is checked against the
    /// parameters before use.
    #[staticmethod]
    fn load(py: Python<'_>, data: &[u8]) -> PyResult<Self> {
        let bad = |why: &str| PyValueError::new_err(format!("not a serialized blindfold context: {why}"));
        if data.len() < 6 || &data[..4] != CONTEXT_MAGIC {
            return Err(bad("wrong magic"));
        }
        if data[4] != CONTEXT_VERSION {
            return Err(bad(&format!("version {}, this build reads {CONTEXT_VERSION}", data[4])));
        }
        let name_len = data[5] as usize;
        let name = data.get(6..6 + name_len).ok_or_else(|| bad("truncated"))?;
        let preset = preset_named(std::str::from_utf8(name).map_err(|_| bad("preset name"))?)
            .map_err(|e| bad(&e.to_string()))?;
        let mut fields = Fields(&data[6 + name_len..]);
        let (pk, rlk, gk, sk) = (fields.next()?, fields.next()?, fields.next()?, fields.next()?);
        if !fields.0.is_empty() {
            return Err(bad("trailing bytes"));
        }
        py.detach(|| {
            let ctx = Context::new(&preset.parameters().map_err(value_error)?).map_err(value_error)?;
            let what = |w: &'static str| move |e: blindfold_ckks::Error| PyValueError::new_err(format!("{w}: {e}"));
            let pk = deserialize::<PublicKey>(pk, &ctx).map_err(what("public key"))?;
            let rlk = deserialize::<RelinearizationKey>(rlk, &ctx).map_err(what("relinearization key"))?;
            let gk = deserialize::<GaloisKeys>(gk, &ctx).map_err(what("Galois keys"))?;
            let secret =
                if sk.is_empty() { None } else { Some(SecretKey::from_bytes(sk, &ctx).map_err(what("secret key"))?) };
            Self::assemble(preset.name, ctx, secret, pk, rlk, gk)
        })
    }

    /// Encrypts a vector of at most `slots` values.
    fn encrypt(self_: &Bound<'_, Self>, values: PyArrayLike1<'_, f64, AllowTypeChange>) -> PyResult<CkksVector> {
        let values: Vec<f64> = values.as_array().to_vec();
        if values.is_empty() || values.iter().any(|v| !v.is_finite()) {
            return Err(PyValueError::new_err("encrypt takes a non-empty vector of finite values"));
        }
        let this = self_.get();
        let ct = self_.py().detach(|| {
            let pt = this.encode(&values, this.ctx.max_level(), this.scale())?;
            lock(&this.encryptor)?.encrypt(&pt).map_err(value_error)
        })?;
        Ok(Self::vector(self_, ct, values.len()))
    }

    /// A vector from [`CkksVector.serialize`]'s bytes (checked against the parameters).
    fn vector_from(self_: &Bound<'_, Self>, data: &[u8], size: usize) -> PyResult<CkksVector> {
        let this = self_.get();
        if size == 0 || size > this.slots() {
            return Err(PyValueError::new_err(format!("size {size}: 1 to {}", this.slots())));
        }
        let ct = deserialize::<Ciphertext>(data, &this.ctx).map_err(value_error)?;
        Ok(Self::vector(self_, ct, size))
    }
}

impl CkksContext {
    fn assemble(
        preset: &'static str,
        ctx: Arc<Context>,
        secret: Option<SecretKey>,
        pk: PublicKey,
        rlk: RelinearizationKey,
        gk: GaloisKeys,
    ) -> PyResult<Self> {
        Ok(Self {
            preset,
            encoder: Encoder::new(&ctx),
            evaluator: Evaluator::new(&ctx),
            encryptor: Mutex::new(Encryptor::with_public_key(&ctx, &pk).map_err(value_error)?),
            ctx,
            secret,
            pk,
            rlk,
            gk,
        })
    }
}

/// An encrypted vector of `size` real values (CKKS, one ciphertext).
#[pyclass(module = "blindfold._blindfold", frozen)]
pub(crate) struct CkksVector {
    ctx: Py<CkksContext>,
    ct: Ciphertext,
    size: usize,
}

/// The other operand of an arithmetic operation.
#[derive(FromPyObject)]
enum Operand<'py> {
    Vector(PyRef<'py, CkksVector>),
    Scalar(f64),
    Values(PyArrayLike1<'py, f64, AllowTypeChange>),
}

impl CkksVector {
    fn with(&self, py: Python<'_>, ct: Ciphertext, size: usize) -> Self {
        Self { ctx: self.ctx.clone_ref(py), ct, size }
    }

    /// The plain operand as values over this vector's length (a scalar repeated).
    fn values(&self, other: &Operand<'_>) -> PyResult<Vec<f64>> {
        let v = match other {
            Operand::Scalar(s) => vec![*s; self.size],
            Operand::Values(a) => a.as_array().to_vec(),
            Operand::Vector(_) => unreachable!("vectors are handled apart"),
        };
        if v.len() != self.size || v.iter().any(|x| !x.is_finite()) {
            return Err(PyValueError::new_err(format!(
                "a plain operand of {} values for a vector of {} (finite values)",
                v.len(),
                self.size
            )));
        }
        Ok(v)
    }

    fn check_same(&self, other: &CkksVector) -> PyResult<()> {
        if !self.ctx.is(&other.ctx) {
            return Err(PyValueError::new_err("the vectors belong to different contexts"));
        }
        if self.size != other.size {
            return Err(PyValueError::new_err(format!("vectors of {} and {} values", self.size, other.size)));
        }
        Ok(())
    }

    /// Sum of the first `n` slots into slot 0, the others zeroed (one level).
    fn sum_into_first(c: &CkksContext, ct: &Ciphertext, n: usize) -> PyResult<Ciphertext> {
        let mut acc = ct.clone();
        let mut step = 1usize;
        while step < n {
            let r = c.rotate_slots(&acc, step as i64)?;
            c.evaluator.add_assign(&mut acc, &r).map_err(value_error)?;
            step <<= 1;
        }
        c.multiply_values(&acc, &[1.0])
    }

    fn arith(&self, py: Python<'_>, other: Operand<'_>, op: &str) -> PyResult<CkksVector> {
        let c = self.ctx.get();
        let e = &c.evaluator;
        let ct = match &other {
            Operand::Vector(o) => {
                self.check_same(o)?;
                let other_ct: &Ciphertext = &o.ct;
                py.detach(|| -> PyResult<Ciphertext> {
                    let (a, b) = c.align(&self.ct, other_ct)?;
                    match op {
                        "add" => e.add(&a, &b).map_err(value_error),
                        "sub" => e.sub(&a, &b).map_err(value_error),
                        _ => {
                            if a.level() == 0 {
                                return Err(PyValueError::new_err("no levels left for a product"));
                            }
                            e.rescale(&e.multiply_relin(&a, &b, &c.rlk).map_err(value_error)?).map_err(value_error)
                        }
                    }
                })?
            }
            _ => {
                let v = self.values(&other)?;
                py.detach(|| -> PyResult<Ciphertext> {
                    match op {
                        "mul" => c.multiply_values(&self.ct, &v),
                        _ => {
                            let v: Vec<f64> = if op == "sub" { v.iter().map(|x| -x).collect() } else { v };
                            let pt = c.encode(&v, self.ct.level(), self.ct.scale())?;
                            e.add_plain(&self.ct, &pt).map_err(value_error)
                        }
                    }
                })?
            }
        };
        Ok(self.with(py, ct, self.size))
    }
}

#[pymethods]
impl CkksVector {
    /// Number of values.
    fn __len__(&self) -> usize {
        self.size
    }

    /// Levels left for products.
    #[getter]
    fn level(&self) -> usize {
        self.ct.level()
    }

    fn __add__(&self, py: Python<'_>, other: Operand<'_>) -> PyResult<CkksVector> {
        self.arith(py, other, "add")
    }

    fn __radd__(&self, py: Python<'_>, other: Operand<'_>) -> PyResult<CkksVector> {
        self.arith(py, other, "add")
    }

    fn __sub__(&self, py: Python<'_>, other: Operand<'_>) -> PyResult<CkksVector> {
        self.arith(py, other, "sub")
    }

    fn __mul__(&self, py: Python<'_>, other: Operand<'_>) -> PyResult<CkksVector> {
        self.arith(py, other, "mul")
    }

    fn __rmul__(&self, py: Python<'_>, other: Operand<'_>) -> PyResult<CkksVector> {
        self.arith(py, other, "mul")
    }

    fn __neg__(&self, py: Python<'_>) -> PyResult<CkksVector> {
        let ct = self.ctx.get().evaluator.negate(&self.ct).map_err(value_error)?;
        Ok(self.with(py, ct, self.size))
    }

    /// The sum of the values, as a vector of one value (one level).
    fn sum(&self, py: Python<'_>) -> PyResult<CkksVector> {
        let c = self.ctx.get();
        let ct = py.detach(|| Self::sum_into_first(c, &self.ct, self.size))?;
        Ok(self.with(py, ct, 1))
    }

    /// The dot product with another vector or plain values, as a vector of one value (two
    /// levels).
    fn dot(&self, py: Python<'_>, other: Operand<'_>) -> PyResult<CkksVector> {
        self.arith(py, other, "mul")?.sum(py)
    }

    /// The values rotated left by `k` within the vector (numpy's `roll(x, -k)`), one level.
    fn rotate(&self, py: Python<'_>, k: i64) -> PyResult<CkksVector> {
        let c = self.ctx.get();
        let n = self.size as i64;
        let k = k.rem_euclid(n) as usize;
        let ct = py.detach(|| -> PyResult<Ciphertext> {
            // Left by k for the first n − k values, right by n − k for the last k.
            let head: Vec<f64> = (0..self.size).map(|i| if i < self.size - k { 1.0 } else { 0.0 }).collect();
            let tail: Vec<f64> = head.iter().map(|v| 1.0 - v).collect();
            let a = c.multiply_values(&c.rotate_slots(&self.ct, k as i64)?, &head)?;
            if k == 0 {
                return Ok(a);
            }
            let b = c.multiply_values(&c.rotate_slots(&self.ct, k as i64 - n)?, &tail)?;
            c.evaluator.add(&a, &b).map_err(value_error)
        })?;
        Ok(self.with(py, ct, self.size))
    }

    /// `x · M` for a plaintext matrix `M` of `len(x)` rows: a vector of `M`'s column count
    /// (the diagonal method, Halevi–Shoup 2014: `L` rotations and products for
    /// `L = 2^⌈log2 max(rows, columns)⌉`, one level).
    fn matmul(&self, py: Python<'_>, matrix: PyArrayLike2<'_, f64, AllowTypeChange>) -> PyResult<CkksVector> {
        let c = self.ctx.get();
        let m = matrix.as_array().to_owned();
        let (rows, cols) = m.dim();
        if rows != self.size || cols == 0 || m.iter().any(|v| !v.is_finite()) {
            return Err(PyValueError::new_err(format!(
                "a matrix of shape ({rows}, {cols}) for a vector of {}: need ({}, k) with finite values",
                self.size, self.size
            )));
        }
        let l = rows.max(cols).next_power_of_two();
        if 2 * l > c.slots() {
            return Err(PyValueError::new_err(format!(
                "a {rows}×{cols} matrix needs {} slots, there are {}",
                2 * l,
                c.slots()
            )));
        }
        let ct = py.detach(|| -> PyResult<Ciphertext> {
            let e = &c.evaluator;
            // w holds x twice, so rotating by k < L reads x cyclically.
            let w = e.add(&self.ct, &c.rotate_slots(&self.ct, -(l as i64))?).map_err(value_error)?;
            let level = w.level();
            if level == 0 {
                return Err(PyValueError::new_err("no levels left for a product"));
            }
            let q = c.ctx.params().q()[level] as f64;
            let mut acc: Option<Ciphertext> = None;
            let mut rotated = w.clone();
            for k in 0..l {
                if k > 0 {
                    rotated = e.rotate(&rotated, 1, &c.gk).map_err(value_error)?;
                }
                let diagonal: Vec<f64> =
                    (0..cols).map(|j| if (j + k) % l < rows { m[[(j + k) % l, j]] } else { 0.0 }).collect();
                if diagonal.iter().all(|&v| v == 0.0) {
                    continue;
                }
                let pt = c.encode(&diagonal, level, q)?;
                match acc.as_mut() {
                    None => acc = Some(e.multiply_plain(&rotated, &pt).map_err(value_error)?),
                    Some(a) => e.multiply_plain_acc(a, &rotated, &pt).map_err(value_error)?,
                }
            }
            let acc = acc.ok_or_else(|| PyValueError::new_err("the matrix is zero"))?;
            e.rescale(&acc).map_err(value_error)
        })?;
        Ok(self.with(py, ct, cols))
    }

    /// The ciphertext as bytes (read back with `CkksContext.vector_from(data, len)`).
    fn serialize<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let c = self.ctx.get();
        Ok(PyBytes::new(py, &serialize(&self.ct, &c.ctx).map_err(value_error)?))
    }

    /// The values (needs the context's secret key), float64.
    fn decrypt<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray1<f64>>> {
        let c = self.ctx.get();
        let sk = c.secret.as_ref().ok_or_else(|| PyValueError::new_err("this context has no secret key"))?;
        let values = py.detach(|| {
            let slots = c.encoder.decode_real(&Decryptor::new(sk).decrypt(&self.ct).map_err(value_error)?);
            slots.map_err(value_error)
        })?;
        Ok(values[..self.size].to_vec().into_pyarray(py))
    }
}
