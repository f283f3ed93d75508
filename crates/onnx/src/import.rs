//! The graph walk: ONNX nodes to blindfold layers.

use crate::proto::{self, type_proto, AttributeProto, NodeProto};
use crate::tensor::{type_name, Const, External, Values};
use blindfold_nn::{ArchSpec, LayerSpec, Model, Normalization, Params, Shape};
use ndarray::{Array1, Array2};
use prost::Message as _;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

/// Most nodes a graph may have.
pub const MAX_NODES: usize = 1 << 16;
/// Most values an import may hold besides the file's own tensors (each node's output:
/// folded constants, per-channel scales; each linear layer's weights), 2^27: a file cannot
/// make the importer allocate without bound.
pub const MAX_IMPORT_VALUES: usize = 1 << 27;
/// Highest degree of a traced polynomial activation (the model's limit of 16 coefficients).
const MAX_DEGREE: usize = 15;

/// The operators the importer reads (elementwise ones only where they form polynomials or
/// scale by constants; see the crate documentation).
pub const SUPPORTED_OPS: [&str; 29] = [
    "Conv",
    "Gemm",
    "MatMul",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Neg",
    "Pow",
    "Flatten",
    "Reshape",
    "AveragePool",
    "GlobalAveragePool",
    "ReduceMean",
    "BatchNormalization",
    "Identity",
    "Dropout",
    "Softmax",
    "LogSoftmax",
    "Constant",
    "Shape",
    "Gather",
    "Unsqueeze",
    "Squeeze",
    "Concat",
    "Cast",
    "Transpose",
    "Sqrt",
    "Reciprocal",
];

/// How to import a model.
#[derive(Clone, Debug, PartialEq)]
pub struct ImportOptions {
    /// The model's input from 8-bit pixels: `(pixel/255 - mean) / std`. Default mean 0, std
    /// 1 (`pixel / 255`, torchvision's `ToTensor`).
    pub normalization: Normalization,
    /// Replace each `Relu` by the least-squares polynomial fit of this degree (2 to 4),
    /// calibrated afterwards on data; `None`: refuse `Relu`.
    pub replace_relu: Option<usize>,
    /// The model's name (the graph's name when empty).
    pub name: String,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self { normalization: Normalization { mean: 0.0, std: 1.0 }, replace_relu: None, name: String::new() }
    }
}

/// An imported model.
#[derive(Clone, Debug)]
pub struct Imported {
    /// The model: the layers the graph's nodes became, with their weights.
    pub model: Model,
    /// For each layer of the model, the ONNX nodes (names) it came from, the first being the
    /// node that made the layer and the rest those folded into it.
    pub sources: Vec<Vec<String>>,
    /// Whether the model has ReLU fits whose ranges must be calibrated on data before use
    /// (`Model::calibrate_activations`).
    pub needs_calibration: bool,
    /// What the import changed that a user should know (removed softmax, replaced ReLU).
    pub notes: Vec<String>,
    /// The `ai.onnx` operator set version the file declares.
    pub opset: i64,
    /// The producer named in the file (e.g. `pytorch 2.5`).
    pub producer: String,
}

/// Why a model cannot be imported.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// The file is not a valid ONNX model (the producer's fault, or a damaged file).
    #[error("not a valid ONNX model: {0}")]
    Malformed(String),
    /// A valid model outside what blindfold can evaluate under encryption.
    #[error("the model cannot be imported: {0}")]
    Refused(String),
    /// A node blindfold cannot evaluate, or not in the place it stands.
    #[error("node {index} {name:?} ({op}): {reason}")]
    Node {
        /// Position in the file's node list, from 0.
        index: usize,
        /// The node's name (its first output's when it has none).
        name: String,
        /// Its operator.
        op: String,
        /// What is wrong.
        reason: String,
    },
    /// The layers the graph became do not form a valid model.
    #[error("the imported layers: {0}")]
    Model(#[from] blindfold_nn::Error),
    /// The file cannot be read.
    #[error("reading {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

/// Reads and imports the ONNX file at `path` (at most [`blindfold_nn::MAX_MODEL_FILE`] bytes,
/// checked before reading), with tensors stored outside it (ONNX external data, as
/// `torch.onnx.export` writes to `model.onnx.data`) read from files in its directory (as
/// many bytes again at most).
///
/// # Errors
/// As [`import`], and [`ImportError::File`].
pub fn import_file(path: &Path, options: &ImportOptions) -> Result<Imported, ImportError> {
    let bytes = blindfold_nn::read_bounded(path, blindfold_nn::MAX_MODEL_FILE)
        .map_err(|reason| ImportError::File { path: path.display().to_string(), reason })?;
    let mut options = options.clone();
    if options.name.is_empty() {
        options.name = path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    }
    let dir = path.parent().map_or_else(|| Path::new(".").to_path_buf(), Path::to_path_buf);
    import_with(&bytes, &options, Some(&External::new(dir, blindfold_nn::MAX_MODEL_FILE)))
}

/// Imports an ONNX model (the bytes of a `.onnx` file).
///
/// # Errors
/// [`ImportError::Malformed`] for bytes that are not a valid model (undecodable, cycles,
/// missing inputs, tensors whose data does not match their shape); [`ImportError::Refused`]
/// or [`ImportError::Node`] for a valid model outside what blindfold evaluates, naming what
/// and where; [`ImportError::Model`] if the layers do not fit together. A model whose
/// tensors are stored outside the file is refused: use [`import_file`].
pub fn import(bytes: &[u8], options: &ImportOptions) -> Result<Imported, ImportError> {
    import_with(bytes, options, None)
}

fn import_with(bytes: &[u8], options: &ImportOptions, external: Option<&External>) -> Result<Imported, ImportError> {
    let model = proto::ModelProto::decode(bytes).map_err(|e| ImportError::Malformed(e.to_string()))?;
    let producer = format!("{} {}", model.producer_name(), model.producer_version());
    let graph = model.graph.as_ref().ok_or_else(|| ImportError::Malformed("the model has no graph".into()))?;
    let opset = model
        .opset_import
        .iter()
        .filter(|o| matches!(o.domain(), "" | "ai.onnx"))
        .map(|o| o.version())
        .max()
        .ok_or_else(|| ImportError::Malformed("no ai.onnx operator set is imported".into()))?;
    if opset < 7 {
        return Err(ImportError::Refused(format!("operator set {opset}: blindfold reads operator sets 7 and later")));
    }
    if graph.node.len() > MAX_NODES {
        return Err(ImportError::Refused(format!("{} nodes, at most {MAX_NODES}", graph.node.len())));
    }
    if !graph.sparse_initializer.is_empty() {
        return Err(ImportError::Refused("sparse initializers are not supported".into()));
    }
    let mut values: HashMap<String, Value> = HashMap::new();
    for t in &graph.initializer {
        let name = t.name().to_string();
        let c =
            Const::from_proto(t, external).map_err(|e| ImportError::Malformed(format!("initializer {name:?}: {e}")))?;
        if values.insert(name.clone(), Value::Const(c)).is_some() {
            return Err(ImportError::Malformed(format!("two initializers are named {name:?}")));
        }
    }
    let (input_name, batch, dims) = graph_input(graph, &values)?;
    let name = if options.name.is_empty() { graph.name().to_string() } else { options.name.clone() };
    let shape = shape_of(&dims);
    let mut b = Builder {
        layers: Vec::new(),
        params: Vec::new(),
        shapes: vec![shape],
        sources: Vec::new(),
        generation: 0,
        normalization: options.normalization,
        notes: Vec::new(),
        needs_calibration: false,
        allocated: 0,
        batch,
    };
    values.insert(input_name.clone(), Value::Stream(Stream::identity(0, dims)));
    let outputs: Vec<&str> = graph.output.iter().map(|o| o.name()).collect();
    if outputs.len() != 1 {
        return Err(ImportError::Refused(format!(
            "{} graph outputs ({outputs:?}); blindfold models have one (the scores)",
            outputs.len()
        )));
    }
    for index in topological_order(&graph.node, &values)? {
        let node = &graph.node[index];
        let at = At { index, node };
        if !matches!(node.domain(), "" | "ai.onnx") {
            return Err(at.err(format!(
                "operator domain {:?}: only the standard ai.onnx operators are supported",
                node.domain()
            )));
        }
        let inputs: Vec<Option<&Value>> =
            node.input.iter().map(|n| if n.is_empty() { None } else { values.get(n) }).collect();
        for (i, v) in inputs.iter().enumerate() {
            if v.is_none() && !node.input[i].is_empty() {
                return Err(at.err(format!("input {:?} is an output this importer does not produce", node.input[i])));
            }
        }
        let is_final = node.output.first().is_some_and(|o| o == outputs[0]);
        let out = b.node(&at, &inputs, opset, options, is_final)?;
        b.charge(out.size(), &at)?;
        let first =
            node.output.first().filter(|o| !o.is_empty()).ok_or_else(|| at.err("the node has no output".into()))?;
        values.insert(first.clone(), out);
    }
    let out = values
        .remove(outputs[0])
        .ok_or_else(|| ImportError::Malformed(format!("the graph output {:?} is produced by no node", outputs[0])))?;
    let Value::Stream(s) = out else {
        return Err(ImportError::Refused("the graph output does not depend on the input".into()));
    };
    let final_node = graph.node.iter().position(|n| n.output.first().is_some_and(|o| o == outputs[0]));
    let at_end = At { index: final_node.unwrap_or(0), node: final_node.map_or(&EMPTY_NODE, |i| &graph.node[i]) };
    if b.materialize(s, &at_end)?.is_some() {
        return Err(at_end.err(
            "the model ends in a per-channel scale or shift after an activation, which no layer follows to \
             absorb it"
                .into(),
        ));
    }
    if b.layers.is_empty() {
        return Err(ImportError::Refused("the graph has no layers".into()));
    }
    let spec = ArchSpec { name, input: shape, layers: b.layers, normalization: b.normalization };
    let params = b
        .params
        .into_iter()
        .map(|p| {
            p.map(|p| Params {
                weight: Array2::from_shape_vec((p.rows, p.weight.len() / p.rows.max(1)), to_f32(&p.weight))
                    .expect("rows × columns"),
                bias: Array1::from(to_f32(&p.bias)),
            })
        })
        .collect();
    let model = Model::from_parameters(spec, params)?;
    Ok(Imported {
        model,
        sources: b.sources,
        needs_calibration: b.needs_calibration,
        notes: b.notes,
        opset,
        producer: producer.trim().to_string(),
    })
}

fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

static EMPTY_NODE: NodeProto = NodeProto {
    input: Vec::new(),
    output: Vec::new(),
    name: None,
    op_type: None,
    domain: None,
    overload: None,
    attribute: Vec::new(),
    doc_string: None,
    metadata_props: Vec::new(),
    device_configurations: Vec::new(),
};

/// The one graph input that is not an initializer, and its dimensions without the batch
/// dimension (`[C, H, W]` or `[F]`).
fn graph_input(
    graph: &proto::GraphProto,
    values: &HashMap<String, Value>,
) -> Result<(String, usize, Vec<usize>), ImportError> {
    let inputs: Vec<&proto::ValueInfoProto> = graph.input.iter().filter(|i| !values.contains_key(i.name())).collect();
    let [input] = inputs.as_slice() else {
        let names: Vec<&str> = inputs.iter().map(|i| i.name()).collect();
        return Err(ImportError::Refused(format!(
            "{} graph inputs besides the initializers ({names:?}); blindfold models take one image tensor",
            names.len()
        )));
    };
    let name = input.name().to_string();
    let refuse = |what: String| {
        ImportError::Refused(format!(
            "input {name:?} {what}; blindfold models take float32 [N, C, H, W] or [N, F] with fixed C, H, W (F)"
        ))
    };
    let Some(type_proto::Value::TensorType(t)) = input.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
        return Err(refuse("is not a tensor".into()));
    };
    if t.elem_type() != 1 {
        return Err(refuse(format!("has element type {}", type_name(t.elem_type()))));
    }
    let shape = t.shape.as_ref().ok_or_else(|| refuse("has no declared shape".into()))?;
    use proto::tensor_shape_proto::dimension::Value as Dim;
    let dims: Vec<Option<i64>> = shape
        .dim
        .iter()
        .map(|d| match d.value {
            Some(Dim::DimValue(v)) => Some(v),
            _ => None,
        })
        .collect();
    let text = dims.iter().map(|d| d.map_or("?".to_string(), |v| v.to_string())).collect::<Vec<_>>().join(", ");
    if dims.len() != 4 && dims.len() != 2 {
        return Err(refuse(format!("has rank {} ([{text}])", dims.len())));
    }
    let fixed: Option<Vec<usize>> =
        dims[1..].iter().map(|d| d.and_then(|v| usize::try_from(v).ok()).filter(|&v| v > 0 && v <= 1 << 16)).collect();
    let fixed = fixed.ok_or_else(|| refuse(format!("has shape [{text}], with a dimension that is not fixed")))?;
    if shape_of(&fixed).checked_len().is_none_or(|n| n > crate::MAX_ELEMENTS) {
        return Err(refuse(format!("has shape [{text}], too large")));
    }
    // A fixed batch dimension (an export with a static batch) is what reshapes name.
    let batch = dims[0].and_then(|b| usize::try_from(b).ok()).filter(|&b| b > 0 && b <= 1 << 16).unwrap_or(1);
    Ok((name, batch, fixed))
}

/// The node order in which every input is computed before it is read (Kahn's algorithm,
/// file order among ready nodes).
fn topological_order(nodes: &[NodeProto], values: &HashMap<String, Value>) -> Result<Vec<usize>, ImportError> {
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (i, n) in nodes.iter().enumerate() {
        for o in n.output.iter().filter(|o| !o.is_empty()) {
            if values.contains_key(o.as_str()) || producer.insert(o.as_str(), i).is_some() {
                return Err(ImportError::Malformed(format!("the value {o:?} is defined twice (node {i})")));
            }
        }
    }
    let mut pending = vec![0usize; nodes.len()];
    let mut readers: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for (i, n) in nodes.iter().enumerate() {
        for inp in n.input.iter().filter(|s| !s.is_empty()) {
            match producer.get(inp.as_str()) {
                Some(&p) => {
                    pending[i] += 1;
                    readers[p].push(i);
                }
                None if values.contains_key(inp.as_str()) => {}
                None => {
                    return Err(ImportError::Malformed(format!(
                        "node {i} {:?} ({}) reads {inp:?}, which is neither an initializer, the graph input nor \
                         any node's output",
                        node_name(n),
                        n.op_type()
                    )))
                }
            }
        }
    }
    let mut ready: BTreeSet<usize> = (0..nodes.len()).filter(|&i| pending[i] == 0).collect();
    let mut order = Vec::with_capacity(nodes.len());
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &r in &readers[i] {
            pending[r] -= 1;
            if pending[r] == 0 {
                ready.insert(r);
            }
        }
    }
    if let Some(i) = (0..nodes.len()).find(|&i| pending[i] > 0) {
        return Err(ImportError::Malformed(format!(
            "the graph has a cycle: node {i} {:?} ({}) depends on its own output",
            node_name(&nodes[i]),
            nodes[i].op_type()
        )));
    }
    Ok(order)
}

fn node_name(n: &NodeProto) -> String {
    match n.name() {
        "" => n.output.first().cloned().unwrap_or_default(),
        name => name.to_string(),
    }
}

/// `[C, H, W]` or `[F]` as a blindfold shape.
fn shape_of(dims: &[usize]) -> Shape {
    match *dims {
        [c, h, w] => Shape { c, h, w },
        [f] => Shape { c: f, h: 1, w: 1 },
        _ => unreachable!("streams have rank 1 or 3"),
    }
}

/// A node being imported, for messages.
struct At<'a> {
    index: usize,
    node: &'a NodeProto,
}

impl At<'_> {
    fn err(&self, reason: String) -> ImportError {
        ImportError::Node { index: self.index, name: node_name(self.node), op: self.node.op_type().to_string(), reason }
    }

    fn attr(&self, name: &str) -> Option<&AttributeProto> {
        self.node.attribute.iter().find(|a| a.name() == name)
    }

    fn int(&self, name: &str, default: i64) -> i64 {
        self.attr(name).map_or(default, |a| a.i())
    }

    fn float(&self, name: &str, default: f32) -> f32 {
        self.attr(name).map_or(default, |a| a.f())
    }

    fn ints(&self, name: &str) -> Option<&[i64]> {
        self.attr(name).map(|a| a.ints.as_slice())
    }

    fn string(&self, name: &str) -> String {
        self.attr(name).map(|a| String::from_utf8_lossy(a.s()).into_owned()).unwrap_or_default()
    }

    /// Refuses every attribute other than `known` that is set to a value other than its
    /// default (an attribute this importer would otherwise silently ignore).
    fn only(&self, known: &[&str]) -> Result<(), ImportError> {
        match self.node.attribute.iter().find(|a| !known.contains(&a.name())) {
            Some(a) => Err(self.err(format!("attribute {:?} is not supported", a.name()))),
            None => Ok(()),
        }
    }

    /// Input `i`, which must be present.
    fn input<'v>(&self, inputs: &[Option<&'v Value>], i: usize) -> Result<&'v Value, ImportError> {
        inputs.get(i).copied().flatten().ok_or_else(|| self.err(format!("input {i} is missing")))
    }

    /// Input `i` as a constant.
    fn constant<'v>(&self, inputs: &[Option<&'v Value>], i: usize, what: &str) -> Result<&'v Const, ImportError> {
        match self.input(inputs, i)? {
            Value::Const(c) => Ok(c),
            Value::Stream(_) => {
                Err(self.err(format!("the {what} (input {i}) must be a constant, not computed from the input")))
            }
        }
    }

    /// Input `i` as the data stream.
    fn stream(&self, inputs: &[Option<&Value>], i: usize) -> Result<Stream, ImportError> {
        match self.input(inputs, i)? {
            Value::Stream(s) => Ok(s.clone()),
            Value::Const(_) => {
                Err(self.err(format!("input {i} is a constant; this operator is only supported on the model's data")))
            }
        }
    }
}

/// What a value of the graph is at import.
#[derive(Clone, Debug)]
enum Value {
    /// Known at import.
    Const(Const),
    /// Computed from the model's input.
    Stream(Stream),
}

impl Value {
    /// Numbers held.
    fn size(&self) -> usize {
        match self {
            Value::Const(c) => c.len(),
            Value::Stream(s) => s.poly.len() + s.affine.as_ref().map_or(0, |a| 2 * a.scale.len()),
        }
    }
}

/// A value computed from the model's input: `affine(poly(y))` elementwise, where `y` is the
/// output of the layers emitted so far.
#[derive(Clone, Debug)]
struct Stream {
    /// The builder's generation when this value was made: any later layer or fold changes
    /// `y`, and a value of an older generation is a branch of the graph.
    generation: usize,
    /// Power-basis coefficients, constant first.
    poly: Vec<f64>,
    /// One scale and shift per channel (per feature for rank 1), applied after `poly`.
    affine: Option<Affine>,
    /// Dimensions without the batch: `[C, H, W]` or `[F]`.
    dims: Vec<usize>,
    /// The nodes that made `poly` (the activation's sources).
    poly_nodes: Vec<String>,
}

impl Stream {
    fn identity(generation: usize, dims: Vec<usize>) -> Self {
        Self { generation, poly: vec![0.0, 1.0], affine: None, dims, poly_nodes: Vec::new() }
    }

    fn channels(&self) -> usize {
        self.dims[0]
    }

    /// Moves a uniform affine into the polynomial.
    fn absorb_uniform(&mut self) {
        if let Some((a, b)) = self.affine.as_ref().and_then(Affine::uniform) {
            self.poly = self.poly.iter().map(|c| a * c).collect();
            self.poly[0] += b;
            self.affine = None;
        }
    }

    /// Applies `x ↦ scale·x + shift`, one pair per channel.
    fn then_affine(mut self, scale: &[f64], shift: &[f64]) -> Self {
        let n = self.channels();
        let aff = self.affine.get_or_insert_with(|| Affine { scale: vec![1.0; n], shift: vec![0.0; n] });
        for c in 0..n {
            aff.scale[c] *= scale[c];
            aff.shift[c] = aff.shift[c] * scale[c] + shift[c];
        }
        self.absorb_uniform();
        self
    }
}

/// Per-channel `x ↦ scale·x + shift`.
#[derive(Clone, Debug, PartialEq)]
struct Affine {
    scale: Vec<f64>,
    shift: Vec<f64>,
}

impl Affine {
    fn uniform(&self) -> Option<(f64, f64)> {
        let (a, b) = (self.scale[0], self.shift[0]);
        (self.scale.iter().all(|&s| s == a) && self.shift.iter().all(|&s| s == b)).then_some((a, b))
    }
}

fn trim(p: &[f64]) -> Vec<f64> {
    let n = p.iter().rposition(|&c| c != 0.0).map_or(1, |i| i + 1);
    p[..n].to_vec()
}

fn poly_mul(a: &[f64], b: &[f64]) -> Vec<f64> {
    let mut out = vec![0.0; a.len() + b.len() - 1];
    for (i, x) in a.iter().enumerate() {
        for (j, y) in b.iter().enumerate() {
            out[i + j] += x * y;
        }
    }
    trim(&out)
}

fn poly_add(a: &[f64], b: &[f64], sign: f64) -> Vec<f64> {
    let mut out = vec![0.0; a.len().max(b.len())];
    for (i, x) in a.iter().enumerate() {
        out[i] += x;
    }
    for (i, y) in b.iter().enumerate() {
        out[i] += sign * y;
    }
    trim(&out)
}

/// A linear layer's parameters while importing: `rows × (weight.len() / rows)` row-major.
#[derive(Clone, Debug)]
struct Linear {
    rows: usize,
    weight: Vec<f64>,
    bias: Vec<f64>,
}

impl Linear {
    fn columns(&self) -> usize {
        self.weight.len() / self.rows
    }

    /// Folds a per-input affine `x ↦ scale·x + shift` (`group` consecutive columns per
    /// entry) in front of this layer: `W·(s∘x + t) + b = (W·diag s)·x + (W·t + b)`.
    fn absorb_input(&mut self, aff: &Affine, group: usize) {
        let cols = self.columns();
        for r in 0..self.rows {
            let row = &mut self.weight[r * cols..(r + 1) * cols];
            for (j, w) in row.iter_mut().enumerate() {
                self.bias[r] += *w * aff.shift[j / group];
                *w *= aff.scale[j / group];
            }
        }
    }
}

struct Builder {
    layers: Vec<LayerSpec>,
    params: Vec<Option<Linear>>,
    /// `shapes[i]` is layer `i`'s input; the last is the current output.
    shapes: Vec<Shape>,
    sources: Vec<Vec<String>>,
    generation: usize,
    normalization: Normalization,
    notes: Vec<String>,
    needs_calibration: bool,
    /// Values held so far, against [`MAX_IMPORT_VALUES`].
    allocated: usize,
    /// The input's batch dimension when the file fixes it (1 otherwise): reshapes and
    /// `Shape` name it.
    batch: usize,
}

impl Builder {
    fn charge(&mut self, values: usize, at: &At) -> Result<(), ImportError> {
        self.allocated = self.allocated.saturating_add(values);
        if self.allocated > MAX_IMPORT_VALUES {
            return Err(at.err(format!(
                "the import would hold more than {MAX_IMPORT_VALUES} values (weights, folded constants, scales): \
                 the model is too large"
            )));
        }
        Ok(())
    }

    fn check_current(&self, s: &Stream, at: &At) -> Result<(), ImportError> {
        if s.generation == self.generation {
            Ok(())
        } else {
            Err(at.err(
                "the graph branches here (a value is used again after later layers changed it): residual \
                 connections and other branches are not supported"
                    .into(),
            ))
        }
    }

    /// Appends a layer; returns the new stream (identity on its output).
    fn emit(&mut self, layer: LayerSpec, params: Option<Linear>, at: &At) -> Result<Stream, ImportError> {
        let input = *self.shapes.last().expect("non-empty");
        let out = layer.output_shape(input).map_err(|e| at.err(e.to_string()))?;
        if out.checked_len().is_none_or(|n| n > crate::MAX_ELEMENTS) {
            return Err(at.err(format!("output {out} is too large")));
        }
        if self.layers.len() >= blindfold_nn::arch::MAX_LAYERS {
            return Err(at.err(format!("more than {} layers", blindfold_nn::arch::MAX_LAYERS)));
        }
        let dims =
            if out.h == 1 && out.w == 1 && !matches!(layer, LayerSpec::Conv2d { .. } | LayerSpec::AvgPool2d { .. }) {
                vec![out.c]
            } else {
                vec![out.c, out.h, out.w]
            };
        self.layers.push(layer);
        self.params.push(params);
        self.shapes.push(out);
        self.sources.push(vec![node_name(at.node)]);
        self.generation += 1;
        Ok(Stream::identity(self.generation, dims))
    }

    /// Emits the stream's pending polynomial as an activation layer (or folds it into the
    /// layer before when it has degree ≤ 1), and folds its affine into the layer before when
    /// it can. Returns the affine still pending (after an activation): the next linear layer
    /// must absorb it.
    fn materialize(&mut self, mut s: Stream, at: &At) -> Result<Option<Affine>, ImportError> {
        self.check_current(&s, at)?;
        s.absorb_uniform();
        let p = trim(&s.poly);
        let mut pending = s.affine;
        let n = s.dims[0];
        if p != [0.0, 1.0] {
            if p.len() <= 2 {
                let (b, a) = (p[0], p.get(1).copied().unwrap_or(0.0));
                let mut aff = pending.unwrap_or(Affine { scale: vec![1.0; n], shift: vec![0.0; n] });
                for c in 0..n {
                    aff.shift[c] += aff.scale[c] * b;
                    aff.scale[c] *= a;
                }
                pending = Some(aff);
            } else {
                let layer = if p == [0.0, 0.0, 1.0] { LayerSpec::Square } else { LayerSpec::Poly { coeffs: p } };
                self.emit(layer, None, at)?;
                if !s.poly_nodes.is_empty() {
                    *self.sources.last_mut().expect("just emitted") = s.poly_nodes;
                }
            }
        }
        match pending {
            None => Ok(None),
            Some(aff) => self.fold_back(aff, at),
        }
    }

    /// Folds a per-channel affine of the current output into the last linear layer when only
    /// pooling and flattening follow it (both commute with it), or into the input
    /// normalization when it is uniform and nothing but those precedes it. Returns it when
    /// neither is possible.
    fn fold_back(&mut self, aff: Affine, at: &At) -> Result<Option<Affine>, ImportError> {
        let last = self.layers.iter().rposition(|l| !matches!(l, LayerSpec::AvgPool2d { .. } | LayerSpec::Flatten));
        let Some(l) = last else {
            return match aff.uniform() {
                Some((a, b)) if a > 0.0 => {
                    let n = self.normalization;
                    let std = n.std / a;
                    self.normalization = Normalization { mean: n.mean - b * std, std };
                    self.generation += 1;
                    Ok(None)
                }
                _ => Ok(Some(aff)),
            };
        };
        let Some(p) = self.params[l].as_mut() else { return Ok(Some(aff)) };
        let group = aff.scale.len() / p.rows;
        let uniform_groups = aff.scale.len() == group * p.rows
            && (0..aff.scale.len())
                .all(|j| aff.scale[j] == aff.scale[j / group * group] && aff.shift[j] == aff.shift[j / group * group]);
        if !uniform_groups {
            return Ok(Some(aff));
        }
        let cols = p.columns();
        for r in 0..p.rows {
            let (a, b) = (aff.scale[r * group], aff.shift[r * group]);
            p.weight[r * cols..(r + 1) * cols].iter_mut().for_each(|w| *w *= a);
            p.bias[r] = a * p.bias[r] + b;
        }
        self.sources[l].push(node_name(at.node));
        self.generation += 1;
        Ok(None)
    }

    fn node(
        &mut self,
        at: &At,
        inputs: &[Option<&Value>],
        opset: i64,
        options: &ImportOptions,
        is_final: bool,
    ) -> Result<Value, ImportError> {
        let op = at.node.op_type();
        // Constants in, constant out: shape arithmetic and constant subgraphs.
        if op != "Shape" && inputs.iter().flatten().all(|v| matches!(v, Value::Const(_))) && !inputs.is_empty() {
            return fold_constant(at, inputs, opset).map(Value::Const);
        }
        let value = self.op(at, op, inputs, options, is_final)?;
        Ok(match value {
            Value::Stream(mut s)
                if matches!(op, "Add" | "Sub" | "Mul" | "Div" | "Neg" | "Pow") && trim(&s.poly) != [0.0, 1.0] =>
            {
                s.poly_nodes.push(node_name(at.node));
                Value::Stream(s)
            }
            v => v,
        })
    }

    fn op(
        &mut self,
        at: &At,
        op: &str,
        inputs: &[Option<&Value>],
        options: &ImportOptions,
        is_final: bool,
    ) -> Result<Value, ImportError> {
        Ok(match op {
            "Constant" => Value::Const(constant_node(at)?),
            "Identity" | "Dropout" => Value::Stream(at.stream(inputs, 0)?),
            "Conv" => Value::Stream(self.conv(at, inputs)?),
            "Gemm" => Value::Stream(self.gemm(at, inputs)?),
            "MatMul" => {
                let s = at.stream(inputs, 0)?;
                let b = at.constant(inputs, 1, "weight matrix")?;
                let [f, m] = b.dims[..] else {
                    return Err(at.err(format!("weight matrix of shape {:?}: need 2-D", b.dims)));
                };
                let w = b.floats();
                let weight = (0..m).flat_map(|o| (0..f).map(move |i| (o, i))).map(|(o, i)| w[i * m + o]).collect();
                Value::Stream(self.dense(s, Linear { rows: m, weight, bias: vec![0.0; m] }, at)?)
            }
            "Add" | "Sub" | "Mul" | "Div" => self.elementwise(at, inputs)?,
            "Neg" => {
                let s = at.stream(inputs, 0)?;
                let n = s.channels();
                Value::Stream(s.then_affine(&vec![-1.0; n], &vec![0.0; n]))
            }
            "Pow" => {
                let mut s = at.stream(inputs, 0)?;
                let e = at.constant(inputs, 1, "exponent")?.scalar().unwrap_or(f64::NAN);
                if !(e.fract() == 0.0 && (1.0..=MAX_DEGREE as f64).contains(&e)) {
                    return Err(
                        at.err(format!("exponent {e}: only integer exponents from 1 to {MAX_DEGREE} are polynomial"))
                    );
                }
                s.absorb_uniform();
                self.no_affine(&s, at)?;
                let mut p = vec![1.0];
                for _ in 0..e as usize {
                    p = poly_mul(&p, &s.poly);
                }
                s.poly = p;
                Value::Stream(self.bounded(s, at)?)
            }
            "BatchNormalization" => Value::Stream(self.batch_norm(at, inputs)?),
            "Flatten" => {
                let s = at.stream(inputs, 0)?;
                let axis = at.int("axis", 1);
                if axis != 1 && axis != 1 - (s.dims.len() as i64 + 1) {
                    return Err(at.err(format!("axis {axis}: only flattening to [N, features] (axis 1) is supported")));
                }
                Value::Stream(self.flatten(s, at)?)
            }
            "Reshape" => Value::Stream(self.reshape(at, inputs)?),
            "AveragePool" => Value::Stream(self.average_pool(at, inputs)?),
            "GlobalAveragePool" => {
                let s = at.stream(inputs, 0)?;
                let [_, h, w] = s.dims[..] else {
                    return Err(at.err("needs a [N, C, H, W] input".into()));
                };
                if h != w {
                    return Err(at.err(format!("a global pool over {h}×{w}: only square maps are supported")));
                }
                self.pool(s, h, h, at)?
            }
            "ReduceMean" => {
                at.only(&["axes", "keepdims", "noop_with_empty_axes"])?;
                let s = at.stream(inputs, 0)?;
                let axes: Vec<i64> = match inputs.get(1).copied().flatten() {
                    Some(_) => at
                        .constant(inputs, 1, "axes")?
                        .ints()
                        .ok_or_else(|| at.err("axes are not integers".into()))?
                        .to_vec(),
                    None => at.ints("axes").unwrap_or_default().to_vec(),
                };
                let axes = normalized_axes(&axes, s.dims.len() + 1);
                let [c, h, w] = s.dims[..] else {
                    return Err(at.err("needs a [N, C, H, W] input".into()));
                };
                if axes.as_deref() != Some(&[2, 3]) {
                    return Err(at.err(format!(
                        "a mean over axes {axes:?}: only the mean over H and W (a global average pool) is supported"
                    )));
                }
                if h != w {
                    return Err(at.err(format!("a global pool over {h}×{w}: only square maps are supported")));
                }
                match self.pool(s, h, h, at)? {
                    Value::Stream(mut s) if at.int("keepdims", 1) == 0 => {
                        s.dims = vec![c];
                        Value::Stream(s)
                    }
                    v => v,
                }
            }
            "Relu" => {
                let Some(degree) = options.replace_relu else {
                    return Err(at.err(
                        "ReLU is not polynomial and has no encrypted form: replace it by a polynomial fitted on \
                         calibration data (--replace-activation relu-poly2|relu-poly3|relu-poly4 on the command line, \
                         replace_activation=\"relu-poly2\" in Python; accuracy will change), or retrain with x² or \
                         polynomial activations"
                            .into(),
                    ));
                };
                let s = at.stream(inputs, 0)?;
                if self.materialize(s, at)?.is_some() {
                    return Err(at.err("a per-channel scale or shift between two activations cannot be folded".into()));
                }
                self.needs_calibration = true;
                if self.notes.iter().all(|n| !n.starts_with("ReLU")) {
                    self.notes.push(format!(
                        "ReLU replaced by its degree-{degree} polynomial fit: accuracy will differ from the original model"
                    ));
                }
                Value::Stream(self.emit(LayerSpec::ReluPoly { degree, lo: -1.0, hi: 1.0 }, None, at)?)
            }
            "Softmax" | "LogSoftmax" if is_final => {
                self.notes
                    .push(format!("the final {op} was removed: the scores are the logits before it (the same argmax)"));
                Value::Stream(at.stream(inputs, 0)?)
            }
            "Softmax" | "LogSoftmax" => {
                return Err(at.err(format!("{op} is not polynomial; blindfold removes it only at the end of the model")))
            }
            "Shape" => Value::Const(shape_node(at, inputs, self.batch)?),
            "Cast" if at.int("to", 1) == 1 => Value::Stream(at.stream(inputs, 0)?),
            "Sigmoid" | "Tanh" | "LeakyRelu" | "Elu" | "Selu" | "Gelu" | "Softplus" | "HardSigmoid" | "HardSwish"
            | "Mish" | "PRelu" | "Exp" | "Log" | "Sqrt" | "Abs" | "Sign" | "MaxPool" | "GlobalMaxPool" | "Max"
            | "Min" | "Clip" | "Erf" => {
                return Err(at.err(format!(
                    "{op} is not polynomial and has no encrypted form; retrain with x² or polynomial activations and \
                     average pooling{}",
                    if op.contains("Max") { "" } else { " (only Relu can be replaced by a fitted polynomial)" }
                )))
            }
            other => {
                return Err(at.err(format!(
                    "operator {other} is not supported on the model's data (supported: {})",
                    SUPPORTED_OPS.join(", ")
                )))
            }
        })
    }

    fn no_affine(&self, s: &Stream, at: &At) -> Result<(), ImportError> {
        match s.affine {
            None => Ok(()),
            Some(_) => Err(at.err(
                "a per-channel scale or shift (e.g. BatchNormalization) inside an activation cannot be folded into a \
                 linear layer"
                    .into(),
            )),
        }
    }

    fn bounded(&self, s: Stream, at: &At) -> Result<Stream, ImportError> {
        if s.poly.len() > MAX_DEGREE + 1 {
            return Err(
                at.err(format!("the activation polynomial has degree {}, at most {MAX_DEGREE}", s.poly.len() - 1))
            );
        }
        Ok(s)
    }

    /// `Add`, `Sub`, `Mul`, `Div` with the data on at least one side.
    fn elementwise(&mut self, at: &At, inputs: &[Option<&Value>]) -> Result<Value, ImportError> {
        let op = at.node.op_type();
        let (x, y) = (at.input(inputs, 0)?, at.input(inputs, 1)?);
        match (x, y) {
            (Value::Stream(a), Value::Stream(b)) => {
                let (mut a, mut b) = (a.clone(), b.clone());
                self.check_current(&a, at)?;
                self.check_current(&b, at)?;
                if a.dims != b.dims {
                    return Err(at.err(format!("operands of shapes {:?} and {:?}", a.dims, b.dims)));
                }
                a.absorb_uniform();
                b.absorb_uniform();
                self.no_affine(&a, at)?;
                self.no_affine(&b, at)?;
                a.poly_nodes.extend(b.poly_nodes);
                a.poly = match op {
                    "Add" => poly_add(&a.poly, &b.poly, 1.0),
                    "Sub" => poly_add(&a.poly, &b.poly, -1.0),
                    "Mul" => poly_mul(&a.poly, &b.poly),
                    _ => return Err(at.err("dividing by a value computed from the input is not polynomial".into())),
                };
                Ok(Value::Stream(self.bounded(a, at)?))
            }
            (Value::Stream(s), Value::Const(c)) | (Value::Const(c), Value::Stream(s)) => {
                let data_first = matches!(x, Value::Stream(_));
                let v = self.per_channel(s, c, at)?;
                let n = s.channels();
                let (scale, shift) = match (op, data_first) {
                    ("Add", _) => (vec![1.0; n], v),
                    ("Sub", true) => (vec![1.0; n], v.iter().map(|x| -x).collect()),
                    ("Sub", false) => (vec![-1.0; n], v),
                    ("Mul", _) => (v, vec![0.0; n]),
                    ("Div", true) => {
                        if v.contains(&0.0) {
                            return Err(at.err("division by zero".into()));
                        }
                        (v.iter().map(|x| 1.0 / x).collect(), vec![0.0; n])
                    }
                    _ => return Err(at.err("dividing by a value computed from the input is not polynomial".into())),
                };
                self.then_affine(s.clone(), &scale, &shift, at).map(Value::Stream)
            }
            (Value::Const(_), Value::Const(_)) => unreachable!("constant nodes are folded"),
        }
    }

    /// A constant operand as one value per channel of `s` (scalars and `[C, 1, 1]`-like
    /// tensors that broadcast over `[N, C, H, W]`; `[F]` over `[N, F]`).
    fn per_channel(&self, s: &Stream, c: &Const, at: &At) -> Result<Vec<f64>, ImportError> {
        let n = s.channels();
        if c.len() == 1 {
            return Ok(vec![c.floats()[0]; n]);
        }
        // Right-align the constant's dimensions with [N, ...dims].
        let full: Vec<usize> = std::iter::once(1).chain(s.dims.iter().copied()).collect();
        let ok = c.dims.len() <= full.len()
            && c.dims.iter().rev().zip(full.iter().rev()).enumerate().all(|(k, (&d, &f))| {
                let axis = full.len() - 1 - k;
                d == 1 || (axis == 1 && d == f)
            });
        if !ok || c.len() != n {
            return Err(at.err(format!(
                "a constant of shape {:?} on data of shape [N, {}]: only scalars and one value per channel are supported",
                c.dims,
                s.dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
            )));
        }
        Ok(c.floats())
    }

    fn conv(&mut self, at: &At, inputs: &[Option<&Value>]) -> Result<Stream, ImportError> {
        at.only(&["kernel_shape", "strides", "pads", "dilations", "group", "auto_pad"])?;
        let s = at.stream(inputs, 0)?;
        let w = at.constant(inputs, 1, "weight")?;
        let [m, c, kh, kw] = w.dims[..] else {
            return Err(at.err(format!("weight of shape {:?}: only 2-D convolutions are supported", w.dims)));
        };
        let [channels, _, _] = s.dims[..] else {
            return Err(at.err(format!("input of shape [N, {}]: a convolution needs [N, C, H, W]", s.dims[0])));
        };
        if at.int("group", 1) != 1 {
            return Err(at.err(format!("group {}: only group 1 is supported", at.int("group", 1))));
        }
        if c != channels {
            return Err(at.err(format!("weight for {c} input channels, the input has {channels}")));
        }
        if kh != kw {
            return Err(at.err(format!("kernel {kh}×{kw}: only square kernels are supported")));
        }
        if at.ints("kernel_shape").is_some_and(|k| k != [kh as i64, kw as i64]) {
            return Err(at.err("kernel_shape differs from the weight's shape".into()));
        }
        if at.ints("dilations").is_some_and(|d| d.iter().any(|&d| d != 1)) {
            return Err(at.err("dilated convolutions are not supported".into()));
        }
        let stride = square(at, "strides", 1)?;
        let padding = self.padding(at)?;
        let bias = match inputs.get(2).copied().flatten() {
            Some(_) => {
                let b = at.constant(inputs, 2, "bias")?;
                if b.len() != m {
                    return Err(at.err(format!("bias of {} values for {m} output channels", b.len())));
                }
                b.floats()
            }
            None => vec![0.0; m],
        };
        if m == 0 {
            return Err(at.err("a convolution with no output channels".into()));
        }
        self.charge(w.len(), at)?;
        let mut lin = Linear { rows: m, weight: w.floats(), bias };
        if let Some(aff) = self.materialize(s, at)? {
            if padding > 0 && aff.shift.iter().any(|&t| t != 0.0) {
                return Err(at.err(
                    "a per-channel shift after an activation (e.g. BatchNormalization) cannot be folded into a padded \
                     convolution: zero padding would be shifted too; place the normalization before the activation"
                        .into(),
                ));
            }
            lin.absorb_input(&aff, kh * kw);
        }
        self.emit(LayerSpec::Conv2d { out_channels: m, kernel: kh, stride, padding }, Some(lin), at)
    }

    /// Symmetric padding from `pads` (or `auto_pad` `NOTSET`/`VALID`).
    fn padding(&self, at: &At) -> Result<usize, ImportError> {
        match at.string("auto_pad").as_str() {
            "" | "NOTSET" => {}
            "VALID" => return Ok(0),
            other => return Err(at.err(format!("auto_pad {other}: give explicit pads"))),
        }
        let pads = at.ints("pads").unwrap_or(&[0, 0, 0, 0]);
        match pads {
            [p, q, r, t] if p == q && q == r && r == t && *p >= 0 => Ok(*p as usize),
            _ => Err(at.err(format!("pads {pads:?}: only the same padding on every side is supported"))),
        }
    }

    fn gemm(&mut self, at: &At, inputs: &[Option<&Value>]) -> Result<Stream, ImportError> {
        at.only(&["alpha", "beta", "transA", "transB"])?;
        let s = at.stream(inputs, 0)?;
        if at.int("transA", 0) != 0 {
            return Err(at.err("transA = 1 is not supported".into()));
        }
        let b = at.constant(inputs, 1, "weight matrix")?;
        let [r, k] = b.dims[..] else {
            return Err(at.err(format!("weight matrix of shape {:?}: need 2-D", b.dims)));
        };
        let (alpha, beta) = (at.float("alpha", 1.0) as f64, at.float("beta", 1.0) as f64);
        let w = b.floats();
        let (m, weight): (usize, Vec<f64>) = if at.int("transB", 0) != 0 {
            (r, w.iter().map(|x| alpha * x).collect())
        } else {
            (k, (0..k).flat_map(|o| (0..r).map(move |i| (o, i))).map(|(o, i)| alpha * w[i * k + o]).collect())
        };
        let bias = match inputs.get(2).copied().flatten() {
            None => vec![0.0; m],
            Some(_) => {
                let c = at.constant(inputs, 2, "bias")?;
                match c.len() {
                    1 => vec![beta * c.floats()[0]; m],
                    n if n == m && c.dims.iter().rev().skip(1).all(|&d| d == 1) => {
                        c.floats().iter().map(|x| beta * x).collect()
                    }
                    _ => return Err(at.err(format!("bias of shape {:?} for {m} outputs", c.dims))),
                }
            }
        };
        self.dense(s, Linear { rows: m, weight, bias }, at)
    }

    fn dense(&mut self, s: Stream, mut lin: Linear, at: &At) -> Result<Stream, ImportError> {
        if lin.rows == 0 {
            return Err(at.err("a dense layer with no outputs".into()));
        }
        self.charge(lin.weight.len(), at)?;
        let [f] = s.dims[..] else {
            return Err(at.err(format!(
                "input of shape [N, {}]: a dense layer needs [N, features]; flatten first",
                s.dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
            )));
        };
        if lin.columns() != f || lin.weight.len() != lin.rows * f {
            return Err(at.err(format!("weight matrix for {} inputs, the input has {f} features", lin.columns())));
        }
        if let Some(aff) = self.materialize(s, at)? {
            lin.absorb_input(&aff, 1);
        }
        self.emit(LayerSpec::Dense { outputs: lin.rows }, Some(lin), at)
    }

    fn batch_norm(&mut self, at: &At, inputs: &[Option<&Value>]) -> Result<Stream, ImportError> {
        at.only(&["epsilon", "momentum", "training_mode", "spatial"])?;
        if at.int("training_mode", 0) != 0 {
            return Err(at.err("training_mode = 1: export the model in eval mode".into()));
        }
        let s = at.stream(inputs, 0)?;
        let n = s.channels();
        let eps = at.float("epsilon", 1e-5) as f64;
        let mut p = Vec::with_capacity(4);
        for (i, what) in [(1, "scale"), (2, "bias"), (3, "mean"), (4, "variance")] {
            let c = at.constant(inputs, i, what)?;
            if c.len() != n {
                return Err(at.err(format!("{what} of {} values for {n} channels", c.len())));
            }
            p.push(c.floats());
        }
        let scale: Vec<f64> = (0..n).map(|c| p[0][c] / (p[3][c] + eps).sqrt()).collect();
        if scale.iter().any(|v| !v.is_finite()) {
            return Err(at.err("a variance plus epsilon is not positive".into()));
        }
        let shift: Vec<f64> = (0..n).map(|c| p[1][c] - p[2][c] * scale[c]).collect();
        self.then_affine(s, &scale, &shift, at)
    }

    /// `s` followed by a per-channel scale and shift. Straight after a linear layer they
    /// belong to it (a bias, a folded normalization): folded now, while that layer is the last.
    fn then_affine(&mut self, s: Stream, scale: &[f64], shift: &[f64], at: &At) -> Result<Stream, ImportError> {
        let s = s.then_affine(scale, shift);
        let Some(aff) = s.affine.clone().filter(|_| trim(&s.poly) == [0.0, 1.0]) else { return Ok(s) };
        self.check_current(&s, at)?;
        Ok(match self.fold_back(aff, at)? {
            Some(aff) => Stream { affine: Some(aff), ..s },
            None => Stream::identity(self.generation, s.dims),
        })
    }

    /// `[C, H, W]` to `[C·H·W]`: the activation is emitted first (as in blindfold's own
    /// networks); a pending per-channel affine becomes per-feature.
    fn flatten(&mut self, s: Stream, at: &At) -> Result<Stream, ImportError> {
        let [c, h, w] = s.dims[..] else {
            self.check_current(&s, at)?;
            return Ok(s);
        };
        let pending = self.materialize(s, at)?;
        let mut out = if h * w == 1 {
            self.generation += 1;
            Stream::identity(self.generation, vec![c])
        } else {
            self.emit(LayerSpec::Flatten, None, at)?
        };
        let expand = |v: &[f64]| v.iter().flat_map(|&x| std::iter::repeat_n(x, h * w)).collect();
        out.affine = pending.map(|aff| Affine { scale: expand(&aff.scale), shift: expand(&aff.shift) });
        Ok(out)
    }

    fn reshape(&mut self, at: &At, inputs: &[Option<&Value>]) -> Result<Stream, ImportError> {
        let s = at.stream(inputs, 0)?;
        let target = at.constant(inputs, 1, "shape")?;
        let target = target.ints().ok_or_else(|| at.err("the shape is not integers".into()))?;
        let full: Vec<usize> = std::iter::once(self.batch).chain(s.dims.iter().copied()).collect();
        let total: usize = full.iter().product();
        let allow_zero = at.int("allowzero", 0) != 0;
        let mut resolved: Vec<Option<usize>> = Vec::with_capacity(target.len());
        for (i, &d) in target.iter().enumerate() {
            resolved.push(match d {
                0 if !allow_zero => Some(
                    *full
                        .get(i)
                        .ok_or_else(|| at.err(format!("shape {target:?} copies a dimension the input lacks")))?,
                ),
                -1 => None,
                d if d > 0 => Some(d as usize),
                _ => return Err(at.err(format!("shape {target:?} is not valid"))),
            });
        }
        let known = resolved.iter().flatten().try_fold(1usize, |a, &d| a.checked_mul(d));
        let inferred = resolved.iter().filter(|d| d.is_none()).count();
        let dims: Vec<usize> = match (known, inferred) {
            (Some(k), 0) if k == total => resolved.iter().flatten().copied().collect(),
            (Some(k), 1) if k > 0 && total.is_multiple_of(k) => {
                resolved.iter().map(|d| d.unwrap_or(total / k)).collect()
            }
            _ => return Err(at.err(format!("shape {target:?} does not hold the input's {total} values"))),
        };
        if dims == full {
            return Ok(s);
        }
        if dims == [self.batch, total / self.batch] {
            return self.flatten(s, at);
        }
        Err(at.err(format!(
            "reshaping [N, {}] to {target:?}: only flattening to [N, features] is supported",
            s.dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
        )))
    }

    fn average_pool(&mut self, at: &At, inputs: &[Option<&Value>]) -> Result<Stream, ImportError> {
        at.only(&["kernel_shape", "strides", "pads", "auto_pad", "ceil_mode", "count_include_pad", "dilations"])?;
        let s = at.stream(inputs, 0)?;
        let [_, h, w] = s.dims[..] else {
            return Err(at.err("needs a [N, C, H, W] input".into()));
        };
        let kernel = square(at, "kernel_shape", 0)?;
        let stride = square(at, "strides", 1)?;
        if self.padding(at)? != 0 {
            return Err(at.err("padded average pooling is not supported".into()));
        }
        if at.ints("dilations").is_some_and(|d| d.iter().any(|&d| d != 1)) {
            return Err(at.err("dilated pooling is not supported".into()));
        }
        if kernel == 0 || kernel > h.min(w) {
            return Err(at.err(format!("kernel {kernel} on a {h}×{w} map")));
        }
        if at.int("ceil_mode", 0) != 0 && ((h - kernel) % stride != 0 || (w - kernel) % stride != 0) {
            return Err(at.err("ceil_mode = 1 with windows that overhang the map is not supported".into()));
        }
        Ok(match self.pool(s, kernel, stride, at)? {
            Value::Stream(s) => s,
            Value::Const(_) => unreachable!("pools give streams"),
        })
    }

    /// Average pooling: the polynomial is emitted first (it does not commute with averaging),
    /// a pending per-channel affine passes through.
    fn pool(&mut self, s: Stream, kernel: usize, stride: usize, at: &At) -> Result<Value, ImportError> {
        let pending = self.materialize(s, at)?;
        let mut out = self.emit(LayerSpec::AvgPool2d { kernel, stride }, None, at)?;
        out.affine = pending;
        Ok(Value::Stream(out))
    }
}

/// A 2-D attribute with the same value on both axes (`default` when absent).
fn square(at: &At, name: &str, default: usize) -> Result<usize, ImportError> {
    match at.ints(name) {
        None => Ok(default),
        Some([a, b]) if a == b && *a > 0 && *a <= 1 << 12 => Ok(*a as usize),
        Some(v) => Err(at.err(format!("{name} {v:?}: only the same positive value on both axes is supported"))),
    }
}

/// `Shape` of the data (the batch dimension `batch`) or of a constant, with opset-15 `start`/`end`.
fn shape_node(at: &At, inputs: &[Option<&Value>], batch: usize) -> Result<Const, ImportError> {
    let dims: Vec<i64> = match at.input(inputs, 0)? {
        Value::Stream(s) => std::iter::once(batch).chain(s.dims.iter().copied()).map(|d| d as i64).collect(),
        Value::Const(c) => c.dims.iter().map(|&d| d as i64).collect(),
    };
    let r = dims.len() as i64;
    let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
    let (start, end) = (clamp(at.int("start", 0)), clamp(at.int("end", r)));
    Ok(Const::int_vector(dims[start..end.max(start)].to_vec()))
}

fn constant_node(at: &At) -> Result<Const, ImportError> {
    let a = at.node.attribute.first().ok_or_else(|| at.err("no value".into()))?;
    let bad = |e: String| at.err(format!("value: {e}"));
    Ok(match a.name() {
        "value" => Const::from_proto(a.t.as_ref().ok_or_else(|| bad("no tensor".into()))?, None).map_err(bad)?,
        "value_float" => Const { dims: vec![], values: Values::Float(vec![a.f()]) },
        "value_floats" => Const { dims: vec![a.floats.len()], values: Values::Float(a.floats.clone()) },
        "value_int" => Const { dims: vec![], values: Values::Int(vec![a.i()]) },
        "value_ints" => Const::int_vector(a.ints.clone()),
        other => return Err(at.err(format!("a constant given as {other} is not supported"))),
    })
}

/// `axes` (negative from the end) of a tensor of `rank` as sorted indices, if every one is
/// in range and none repeats.
fn normalized_axes(axes: &[i64], rank: usize) -> Option<Vec<usize>> {
    let rank = rank as i64;
    let mut norm: Vec<usize> = axes
        .iter()
        .map(|&a| if a < 0 { a + rank } else { a })
        .map(|a| (0..rank).contains(&a).then_some(a as usize))
        .collect::<Option<_>>()?;
    norm.sort_unstable();
    norm.dedup();
    (norm.len() == axes.len()).then_some(norm)
}

/// Evaluates a node whose inputs are all constants (shape arithmetic, constant subgraphs).
fn fold_constant(at: &At, inputs: &[Option<&Value>], opset: i64) -> Result<Const, ImportError> {
    let c = |i: usize| at.constant(inputs, i, "operand");
    let op = at.node.op_type();
    let axes = |i: usize| -> Result<Option<Vec<i64>>, ImportError> {
        if opset >= 13 {
            Ok(match inputs.get(i).copied().flatten() {
                Some(_) => Some(c(i)?.ints().ok_or_else(|| at.err("axes are not integers".into()))?.to_vec()),
                None => None,
            })
        } else {
            Ok(at.ints("axes").map(|a| a.to_vec()))
        }
    };
    match op {
        "Identity" | "Dropout" => Ok(c(0)?.clone()),
        "Cast" => {
            let x = c(0)?;
            Ok(match at.int("to", 1) {
                1 | 11 => Const {
                    dims: x.dims.clone(),
                    values: Values::Float(x.floats().iter().map(|&v| v as f32).collect()),
                },
                6 | 7 => {
                    Const { dims: x.dims.clone(), values: Values::Int(x.floats().iter().map(|&v| v as i64).collect()) }
                }
                t => return Err(at.err(format!("cast to {} is not supported", type_name(t as i32)))),
            })
        }
        "Unsqueeze" | "Squeeze" => {
            let x = c(0)?;
            let mut dims = x.dims.clone();
            let axes = axes(1)?;
            if op == "Unsqueeze" {
                let axes = axes.ok_or_else(|| at.err("no axes".into()))?;
                let norm = normalized_axes(&axes, dims.len() + axes.len())
                    .ok_or_else(|| at.err(format!("axes {axes:?} out of range")))?;
                for a in norm {
                    dims.insert(a, 1);
                }
            } else {
                match axes {
                    None => dims.retain(|&d| d != 1),
                    Some(axes) => {
                        let norm = normalized_axes(&axes, dims.len()).filter(|n| n.iter().all(|&a| dims[a] == 1));
                        let Some(norm) = norm else {
                            return Err(at.err(format!("axes {axes:?} do not name dimensions of size 1 in {dims:?}")));
                        };
                        for a in norm.into_iter().rev() {
                            dims.remove(a);
                        }
                    }
                }
            }
            Ok(Const { dims, values: x.values.clone() })
        }
        "Concat" => {
            let parts: Vec<&Const> = (0..inputs.len()).map(c).collect::<Result<_, _>>()?;
            if parts.iter().any(|p| p.dims.len() != 1) {
                return Err(at.err("only concatenating vectors of constants is supported".into()));
            }
            if parts.iter().map(|p| p.len()).sum::<usize>() > crate::MAX_ELEMENTS {
                return Err(at.err(format!("a concatenation of more than {} values", crate::MAX_ELEMENTS)));
            }
            Ok(match parts.iter().all(|p| p.ints().is_some()) {
                true => Const::int_vector(parts.iter().flat_map(|p| p.ints().expect("ints").iter().copied()).collect()),
                false => {
                    let v: Vec<f32> = parts.iter().flat_map(|p| p.floats()).map(|x| x as f32).collect();
                    Const { dims: vec![v.len()], values: Values::Float(v) }
                }
            })
        }
        "Gather" => {
            let (x, idx) = (c(0)?, c(1)?);
            let indices = idx.ints().ok_or_else(|| at.err("indices are not integers".into()))?;
            if x.dims.len() != 1 || at.int("axis", 0) != 0 {
                return Err(at.err("only gathering from a vector of constants is supported".into()));
            }
            let n = x.len() as i64;
            let pick: Vec<usize> = indices
                .iter()
                .map(|&i| if i < 0 { i + n } else { i })
                .map(|i| (0..n).contains(&i).then_some(i as usize))
                .collect::<Option<_>>()
                .ok_or_else(|| at.err(format!("indices {indices:?} out of range for {n} values")))?;
            let values = match &x.values {
                Values::Int(v) => Values::Int(pick.iter().map(|&i| v[i]).collect()),
                Values::Float(v) => Values::Float(pick.iter().map(|&i| v[i]).collect()),
            };
            Ok(Const { dims: idx.dims.clone(), values })
        }
        "Add" | "Sub" | "Mul" | "Div" | "Neg" | "Pow" | "Sqrt" | "Reciprocal" => {
            let x = c(0)?;
            let unary = matches!(op, "Neg" | "Sqrt" | "Reciprocal");
            let y = if unary { None } else { Some(c(1)?) };
            let f = |a: f64, b: f64| match op {
                "Add" => a + b,
                "Sub" => a - b,
                "Mul" => a * b,
                "Div" => a / b,
                "Pow" => a.powf(b),
                "Sqrt" => a.sqrt(),
                "Reciprocal" => 1.0 / a,
                _ => -a,
            };
            let (dims, pairs): (Vec<usize>, Vec<(f64, f64)>) = match y {
                None => (x.dims.clone(), x.floats().into_iter().map(|a| (a, 0.0)).collect()),
                Some(y) if y.len() == 1 => {
                    (x.dims.clone(), x.floats().into_iter().map(|a| (a, y.floats()[0])).collect())
                }
                Some(y) if x.len() == 1 => {
                    (y.dims.clone(), y.floats().into_iter().map(|b| (x.floats()[0], b)).collect())
                }
                Some(y) if x.dims == y.dims => (x.dims.clone(), x.floats().into_iter().zip(y.floats()).collect()),
                Some(y) => return Err(at.err(format!("constant operands of shapes {:?} and {:?}", x.dims, y.dims))),
            };
            let ints = x.ints().is_some() && y.is_none_or(|y| y.ints().is_some());
            if pairs.iter().any(|&(a, b)| !f(a, b).is_finite()) {
                return Err(at.err("a constant computes to a value that is not finite".into()));
            }
            Ok(if ints && !matches!(op, "Sqrt" | "Reciprocal") {
                let v = pairs
                    .iter()
                    .map(|&(a, b)| if op == "Div" && b != 0.0 { (a / b).trunc() as i64 } else { f(a, b) as i64 })
                    .collect();
                Const { dims, values: Values::Int(v) }
            } else {
                Const { dims, values: Values::Float(pairs.iter().map(|&(a, b)| f(a, b) as f32).collect()) }
            })
        }
        "Transpose" => {
            let x = c(0)?;
            let rank = x.dims.len();
            let perm: Vec<usize> = match at.ints("perm") {
                None => (0..rank).rev().collect(),
                Some(p) => p.iter().map(|&a| usize::try_from(a).unwrap_or(usize::MAX)).collect(),
            };
            let mut seen = perm.clone();
            seen.sort_unstable();
            if seen != (0..rank).collect::<Vec<_>>() {
                return Err(at.err(format!("perm {perm:?} is not a permutation of {rank} axes")));
            }
            let dims: Vec<usize> = perm.iter().map(|&a| x.dims[a]).collect();
            let mut strides = vec![1usize; rank];
            for a in (0..rank.saturating_sub(1)).rev() {
                strides[a] = strides[a + 1] * x.dims[a + 1];
            }
            // For each output index (row-major over `dims`), the input offset.
            let source: Vec<usize> = (0..x.len())
                .map(|mut o| {
                    let mut offset = 0;
                    for k in (0..rank).rev() {
                        offset += (o % dims[k]) * strides[perm[k]];
                        o /= dims[k];
                    }
                    offset
                })
                .collect();
            let values = match &x.values {
                Values::Int(v) => Values::Int(source.iter().map(|&i| v[i]).collect()),
                Values::Float(v) => Values::Float(source.iter().map(|&i| v[i]).collect()),
            };
            Ok(Const { dims, values })
        }
        "Reshape" => {
            let x = c(0)?;
            let target = c(1)?.ints().ok_or_else(|| at.err("the shape is not integers".into()))?.to_vec();
            let mut dims = Vec::with_capacity(target.len());
            let mut inferred = None;
            for (i, &d) in target.iter().enumerate() {
                dims.push(match d {
                    0 if at.int("allowzero", 0) == 0 => {
                        *x.dims.get(i).ok_or_else(|| at.err(format!("shape {target:?} copies a missing dimension")))?
                    }
                    -1 if inferred.is_none() => {
                        inferred = Some(i);
                        1
                    }
                    d if d >= 0 => usize::try_from(d).unwrap_or(usize::MAX),
                    _ => return Err(at.err(format!("shape {target:?} is not valid"))),
                });
            }
            let known = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            match (known, inferred) {
                (Some(k), Some(i)) if k > 0 && x.len().is_multiple_of(k) => dims[i] = x.len() / k,
                (Some(k), None) if k == x.len() => {}
                _ => return Err(at.err(format!("shape {target:?} does not hold {} values", x.len()))),
            }
            Ok(Const { dims, values: x.values.clone() })
        }
        "Constant" => constant_node(at),
        other => Err(at.err(format!("operator {other} on constants is not supported"))),
    }
}
