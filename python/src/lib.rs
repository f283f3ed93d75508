//! `blindfold._blindfold`: the Rust core of the `blindfold` Python package (see
//! `pysrc/blindfold/__init__.py` for the documented API). An ONNX model is imported and
//! compiled into blindfold's encrypted circuit (CKKS, 128-bit security); `Model` predicts
//! in the clear, on the circuit's plaintext twin or under encryption, and hands out
//! `Client` and `Server` objects that exchange bytes, so the two can live in separate
//! processes. Long operations release the GIL.

use blindfold_ckks::serialize::WireObject;
use blindfold_nn::compile::ChainOptions;
use blindfold_nn::{Model as NnModel, Normalization};
use blindfold_onnx::{import, import_file, ImportOptions};
use blindfold_protocol::{Client as ProtocolClient, CompiledModel, Message, ModelHolder, PlanInfo};
use ndarray::{Array1, Array2};
use numpy::{AllowTypeChange, IntoPyArray, PyArray1, PyArray2, PyArrayLikeDyn, PyUntypedArrayMethods};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

mod tensor;

fn value_error(e: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(e.to_string())
}

fn lock<T>(m: &Mutex<T>) -> PyResult<MutexGuard<'_, T>> {
    m.lock().map_err(|_| PyRuntimeError::new_err("an earlier call failed while holding this object"))
}

/// The shape of one sample of a model whose input is `s`: `[C, H, W]`, or `[F]` for a flat
/// input.
fn sample_dims(s: blindfold_nn::Shape) -> Vec<usize> {
    if s.h == 1 && s.w == 1 {
        vec![s.c]
    } else {
        vec![s.c, s.h, s.w]
    }
}

/// The samples of `x` as rows of `features` values: `x` is one sample (the input's shape)
/// or a batch (one more leading dimension).
fn rows(x: &PyArrayLikeDyn<'_, f32, AllowTypeChange>, input: &[usize]) -> PyResult<Array2<f32>> {
    let shape = x.shape().to_vec();
    let features: usize = input.iter().product();
    let batch = if shape == input {
        1
    } else if shape.len() == input.len() + 1 && shape[1..] == *input {
        shape[0]
    } else {
        return Err(PyValueError::new_err(format!(
            "input of shape {shape:?}: the model takes {input:?} (one sample) or [N, {}] (a batch)",
            input.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
        )));
    };
    let view = x.as_array();
    let flat: Vec<f32> = view.iter().copied().collect();
    if flat.iter().any(|v| !v.is_finite()) {
        return Err(PyValueError::new_err("the input holds a value that is not finite"));
    }
    Array2::from_shape_vec((batch, features), flat).map_err(value_error)
}

/// An ONNX model compiled for encrypted inference.
#[pyclass(module = "blindfold._blindfold", frozen)]
struct Model {
    plain: Mutex<NnModel>,
    compiled: Arc<CompiledModel>,
    notes: Vec<String>,
    /// Keys and a model holder for `predict_encrypted`, made on first use.
    session: Mutex<Option<(ProtocolClient, ModelHolder)>>,
}

/// Imports and compiles an ONNX model (a path or the file's bytes).
#[pyfunction]
#[pyo3(signature = (model, calibration=None, normalize=None, replace_relu=None, scale_bits=None, log_n=None))]
fn compile(
    py: Python<'_>,
    model: &Bound<'_, PyAny>,
    calibration: Option<PyArrayLikeDyn<'_, f32, AllowTypeChange>>,
    normalize: Option<(f64, f64)>,
    replace_relu: Option<usize>,
    scale_bits: Option<u32>,
    log_n: Option<u32>,
) -> PyResult<Model> {
    let normalization = match normalize {
        Some((mean, std)) if mean.is_finite() && std.is_finite() && std > 0.0 => Normalization { mean, std },
        Some((mean, std)) => return Err(PyValueError::new_err(format!("normalize=({mean}, {std}): need std > 0"))),
        None => Normalization { mean: 0.0, std: 1.0 },
    };
    let options = ImportOptions { normalization, replace_relu, name: String::new() };
    let imported = match model.cast::<PyBytes>() {
        Ok(bytes) => {
            let bytes = bytes.as_bytes().to_vec();
            py.detach(|| import(&bytes, &options))
        }
        Err(_) => {
            let path: PathBuf = model
                .extract()
                .map_err(|_| PyValueError::new_err("model: give the path of an .onnx file or its bytes"))?;
            py.detach(|| import_file(&path, &options))
        }
    }
    .map_err(value_error)?;
    let mut plain = imported.model;
    if imported.needs_calibration {
        let x = calibration.ok_or_else(|| {
            PyValueError::new_err(
                "the model's ReLU fits need calibration data: pass calibration=x (a batch of typical inputs)",
            )
        })?;
        let input = plain.spec().input;
        let x = rows(&x, &[input.c, input.h, input.w]).or_else(|_| rows(&x, &[input.len()]))?;
        plain.calibrate_activations(&x).map_err(value_error)?;
    }
    let opts = ChainOptions { log_n, scale_bits, ..ChainOptions::default() };
    let compiled = py.detach(|| CompiledModel::new(&plain, &opts)).map_err(value_error)?;
    Ok(Model { plain: Mutex::new(plain), compiled, notes: imported.notes, session: Mutex::new(None) })
}

impl Model {
    fn input_dims(&self) -> Vec<usize> {
        sample_dims(self.compiled.info().arch.input)
    }

    fn classes(&self) -> usize {
        self.compiled.circuit().outputs()
    }
}

#[pymethods]
impl Model {
    /// The input shape of one sample, e.g. `(1, 28, 28)`.
    #[getter]
    fn input_shape(&self) -> Vec<usize> {
        self.input_dims()
    }

    /// Number of scores per sample.
    #[getter(classes)]
    fn classes_py(&self) -> usize {
        self.classes()
    }

    /// Multiplicative depth of the encrypted circuit.
    #[getter]
    fn depth(&self) -> usize {
        self.compiled.info().depth
    }

    /// Name of the CKKS parameters (ring degree, depth, scale bits; 128-bit secure).
    #[getter]
    fn parameters(&self) -> String {
        self.compiled.info().parameters_name()
    }

    /// The layers the ONNX graph became, described.
    #[getter]
    fn layers(&self) -> Vec<String> {
        self.compiled.info().arch.layers.iter().map(ToString::to_string).collect()
    }

    /// What the import changed (e.g. a final softmax removed).
    #[getter]
    fn notes(&self) -> Vec<String> {
        self.notes.clone()
    }

    /// The plan a client needs (JSON): architecture, parameters, keys. No weights.
    #[getter]
    fn plan(&self) -> PyResult<String> {
        serde_json::to_string(self.compiled.info()).map_err(value_error)
    }

    /// Logits of the plaintext model, `[N, classes]` float32.
    fn predict_plain<'py>(
        &self,
        py: Python<'py>,
        x: PyArrayLikeDyn<'py, f32, AllowTypeChange>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let x = rows(&x, &self.input_dims())?;
        let y = py.detach(|| lock(&self.plain)?.forward(&x).map_err(value_error))?;
        Ok(y.into_pyarray(py))
    }

    /// Logits of the encrypted circuit's plaintext twin (the same packing, rotations and
    /// polynomials on unencrypted slots; no CKKS noise), `[N, classes]` float64.
    fn predict_simulate<'py>(
        &self,
        py: Python<'py>,
        x: PyArrayLikeDyn<'py, f32, AllowTypeChange>,
    ) -> PyResult<Bound<'py, PyArray2<f64>>> {
        let x = rows(&x, &self.input_dims())?;
        let circuit = self.compiled.circuit();
        let out = py.detach(|| -> PyResult<Vec<Vec<f64>>> {
            x.rows()
                .into_iter()
                .map(|r| {
                    let v: Vec<f64> = r.iter().map(|&a| a as f64).collect();
                    let packed = circuit.packing().pack(&v).map_err(value_error)?;
                    circuit.evaluate_plain(&packed).map_err(value_error)
                })
                .collect()
        })?;
        to_array(py, out, self.classes())
    }

    /// Logits computed under encryption, `[N, classes]` float64: keys made once (kept for
    /// later calls), then each sample encrypted, evaluated and decrypted.
    fn predict_encrypted<'py>(
        &self,
        py: Python<'py>,
        x: PyArrayLikeDyn<'py, f32, AllowTypeChange>,
    ) -> PyResult<Bound<'py, PyArray2<f64>>> {
        let x = rows(&x, &self.input_dims())?;
        let out = py.detach(|| -> PyResult<Vec<Vec<f64>>> {
            let mut session = lock(&self.session)?;
            if session.is_none() {
                let (client, keys) = ProtocolClient::new(self.compiled.info()).map_err(value_error)?;
                let mut holder = ModelHolder::new(self.compiled.clone());
                holder.handle(&keys).map_err(value_error)?;
                *session = Some((client, holder));
            }
            let (client, holder) = session.as_mut().expect("made above");
            x.rows()
                .into_iter()
                .map(|r| {
                    let v: Vec<f64> = r.iter().map(|&a| a as f64).collect();
                    let request = client.encrypt(&v).map_err(value_error)?;
                    let reply = holder.handle(&request).map_err(value_error)?;
                    let reply = reply.ok_or_else(|| PyRuntimeError::new_err("the model holder sent no reply"))?;
                    client.decrypt_scores(&reply).map_err(value_error)
                })
                .collect()
        })?;
        to_array(py, out, self.classes())
    }

    /// A client for this model: a fresh secret key and its evaluation keys.
    fn client(&self, py: Python<'_>) -> PyResult<Client> {
        let info = self.compiled.info().clone();
        py.detach(|| Client::new(&info))
    }

    /// A server (model holder) for this model.
    fn server(&self) -> Server {
        Server { compiled: self.compiled.clone(), session: Mutex::new(None) }
    }
}

fn to_array(py: Python<'_>, rows: Vec<Vec<f64>>, classes: usize) -> PyResult<Bound<'_, PyArray2<f64>>> {
    let n = rows.len();
    Ok(Array2::from_shape_vec((n, classes), rows.concat()).map_err(value_error)?.into_pyarray(py))
}

/// The client: holds the secret key (never serialized here), makes evaluation keys,
/// encrypts samples and decrypts scores.
#[pyclass(module = "blindfold._blindfold", frozen)]
struct Client {
    inner: Mutex<ProtocolClient>,
    keys: Vec<u8>,
    input: Vec<usize>,
}

impl Client {
    fn new(info: &PlanInfo) -> PyResult<Self> {
        let (client, keys) = ProtocolClient::new(info).map_err(value_error)?;
        Ok(Self { inner: Mutex::new(client), keys: keys.to_bytes(), input: sample_dims(info.arch.input) })
    }
}

#[pymethods]
impl Client {
    /// A client for the plan a server published (`Model.plan`, JSON): the plan is checked
    /// against the circuit the client builds from the architecture itself.
    #[staticmethod]
    fn from_plan(py: Python<'_>, plan: &str) -> PyResult<Self> {
        let info: PlanInfo =
            serde_json::from_str(plan).map_err(|e| PyValueError::new_err(format!("not a blindfold plan: {e}")))?;
        py.detach(|| Client::new(&info))
    }

    /// The evaluation keys to send to the server once (public; tens of MB).
    fn evaluation_keys<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.keys)
    }

    /// Encrypts one sample (the model's input shape) into a request for the server.
    fn encrypt<'py>(
        &self,
        py: Python<'py>,
        x: PyArrayLikeDyn<'py, f32, AllowTypeChange>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let x = rows(&x, &self.input)?;
        if x.nrows() != 1 {
            return Err(PyValueError::new_err("encrypt takes one sample; call it once per sample"));
        }
        let v: Vec<f64> = x.iter().map(|&a| a as f64).collect();
        let msg = py.detach(|| lock(&self.inner)?.encrypt(&v).map_err(value_error))?;
        Ok(PyBytes::new(py, &msg.to_bytes()))
    }

    /// Decrypts the server's reply into the scores (logits), float64.
    fn decrypt<'py>(&self, py: Python<'py>, reply: &[u8]) -> PyResult<Bound<'py, PyArray1<f64>>> {
        let scores = py.detach(|| {
            let client = lock(&self.inner)?;
            let limit = blindfold_ckks::Ciphertext::max_size(client.context()) + 64;
            Message::from_bytes_limited(reply, limit).and_then(|m| client.decrypt_scores(&m)).map_err(value_error)
        })?;
        Ok(Array1::from(scores).into_pyarray(py))
    }
}

/// The server (model holder): evaluates requests with a client's evaluation keys. Holds no
/// secret; every byte it is given is checked before use.
#[pyclass(module = "blindfold._blindfold", frozen)]
struct Server {
    compiled: Arc<CompiledModel>,
    /// The last client's keys (their bytes) and the holder that loaded them.
    session: Mutex<Option<(Vec<u8>, ModelHolder)>>,
}

#[pymethods]
impl Server {
    /// The plan a client needs (JSON).
    #[getter]
    fn plan(&self) -> PyResult<String> {
        serde_json::to_string(self.compiled.info()).map_err(value_error)
    }

    /// Evaluates an encrypted request with the client's evaluation keys; returns the
    /// encrypted scores. The keys are loaded once and kept while the same keys come again.
    fn evaluate<'py>(&self, py: Python<'py>, request: &[u8], keys: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        let reply = py.detach(|| -> PyResult<Vec<u8>> {
            let mut session = lock(&self.session)?;
            if session.as_ref().is_none_or(|(k, _)| k != keys) {
                let mut holder = ModelHolder::new(self.compiled.clone());
                holder.handle_bytes(keys).map_err(|e| value_error(format!("evaluation keys: {e}")))?;
                *session = Some((keys.to_vec(), holder));
            }
            let (_, holder) = session.as_mut().expect("loaded above");
            holder
                .handle_bytes(request)
                .map_err(|e| value_error(format!("request: {e}")))?
                .ok_or_else(|| PyValueError::new_err("the request produced no reply (was it a request?)"))
        })?;
        Ok(PyBytes::new(py, &reply))
    }
}

#[pymodule]
fn _blindfold(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(compile, m)?)?;
    m.add_class::<Model>()?;
    m.add_class::<Client>()?;
    m.add_class::<Server>()?;
    m.add_class::<tensor::CkksContext>()?;
    m.add_class::<tensor::CkksVector>()?;
    Ok(())
}
