//! ONNX graphs written here with the prost types: what each becomes, and what is refused.

use blindfold_nn::{ArchSpec, LayerSpec, Model, Normalization, Params, Shape};
use blindfold_onnx::proto::{
    attribute_proto::AttributeType, tensor_proto::DataLocation, tensor_shape_proto, type_proto, AttributeProto,
    GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto,
    TypeProto, ValueInfoProto,
};
use blindfold_onnx::{import, import_file, ImportError, ImportOptions};
use ndarray::{Array1, Array2};
use prost::Message as _;

fn node(op: &str, inputs: &[&str], output: &str, attrs: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        name: Some(format!("{op}_{output}")),
        op_type: Some(op.to_string()),
        attribute: attrs,
        ..Default::default()
    }
}

fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

fn tensor(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(1),
        raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    }
}

fn input(name: &str, dims: &[Option<i64>]) -> ValueInfoProto {
    use tensor_shape_proto::{dimension::Value, Dimension};
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Some(v) => Value::DimValue(*v),
                None => Value::DimParam("N".into()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(1),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn model(nodes: Vec<NodeProto>, inits: Vec<TensorProto>, inputs: Vec<ValueInfoProto>, output: &str) -> ModelProto {
    ModelProto {
        ir_version: Some(8),
        producer_name: Some("blindfold tests".into()),
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(17) }],
        graph: Some(GraphProto {
            node: nodes,
            name: Some("g".into()),
            initializer: inits,
            input: inputs,
            output: vec![ValueInfoProto { name: Some(output.into()), ..Default::default() }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn image_input() -> Vec<ValueInfoProto> {
    vec![input("x", &[None, Some(1), Some(6), Some(6)])]
}

/// Deterministic values in about [-1, 1).
fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n as u32)
        .map(|i| ((i.wrapping_mul(2654435761).wrapping_add(seed * 40503) >> 8) % 2000) as f32 / 1000.0 - 1.0)
        .collect()
}

fn import_bytes(m: &ModelProto) -> Result<blindfold_onnx::Imported, ImportError> {
    import(&m.encode_to_vec(), &ImportOptions::default())
}

fn err(m: &ModelProto) -> String {
    import_bytes(m).expect_err("refused").to_string()
}

/// conv 2×3×3 → `0.1·x² + 0.5·x + 0.2` (as Mul/Add nodes) → flatten → Gemm(transB) → x·x →
/// MatMul + Add: the same model as blindfold's own layers with the same weights.
#[test]
fn polynomials_are_fused_and_linear_layers_keep_their_weights() {
    let (w, b) = (values(18, 1), values(2, 2));
    let (g, gb) = (values(5 * 18, 3), values(5, 4));
    let (mm, mb) = (values(5 * 3, 5), values(3, 6));
    let nodes = vec![
        node(
            "Conv",
            &["x", "w", "b"],
            "c",
            vec![ints("kernel_shape", &[3, 3]), ints("pads", &[1, 1, 1, 1]), ints("strides", &[2, 2])],
        ),
        node("Mul", &["c", "c"], "c2", vec![]),
        node("Mul", &["c2", "k01"], "t2", vec![]),
        node("Mul", &["c", "k05"], "t1", vec![]),
        node("Add", &["t2", "t1"], "t12", vec![]),
        node("Add", &["t12", "k02"], "p", vec![]),
        node("Flatten", &["p"], "f", vec![int("axis", 1)]),
        node("Gemm", &["f", "g", "gb"], "d", vec![int("transB", 1)]),
        node("Mul", &["d", "d"], "d2", vec![]),
        node("MatMul", &["d2", "mm"], "e", vec![]),
        node("Add", &["e", "mb"], "y", vec![]),
    ];
    let inits = vec![
        tensor("w", &[2, 1, 3, 3], &w),
        tensor("b", &[2], &b),
        tensor("k01", &[], &[0.1]),
        tensor("k05", &[1], &[0.5]),
        tensor("k02", &[], &[0.2]),
        tensor("g", &[5, 18], &g),
        tensor("gb", &[5], &gb),
        tensor("mm", &[5, 3], &mm),
        tensor("mb", &[3], &mb),
    ];
    let imported = import_bytes(&model(nodes, inits, image_input(), "y")).unwrap();
    let layers = &imported.model.spec().layers;
    assert_eq!(layers.len(), 6, "{layers:?}");
    assert_eq!(layers[0], LayerSpec::Conv2d { out_channels: 2, kernel: 3, stride: 2, padding: 1 });
    let LayerSpec::Poly { coeffs } = &layers[1] else { panic!("{layers:?}") };
    for (c, want) in coeffs.iter().zip([0.2, 0.5, 0.1]) {
        assert!((c - want).abs() < 1e-7, "{coeffs:?}");
    }
    assert_eq!(
        layers[2..],
        [LayerSpec::Flatten, LayerSpec::Dense { outputs: 5 }, LayerSpec::Square, LayerSpec::Dense { outputs: 3 }]
    );
    assert_eq!(imported.sources[1], ["Mul_c2", "Mul_t2", "Mul_t1", "Add_t12", "Add_p"]);

    // The same network built from blindfold's layers directly.
    let spec = ArchSpec {
        name: "reference".into(),
        input: Shape { c: 1, h: 6, w: 6 },
        layers: layers.clone(),
        normalization: Normalization { mean: 0.0, std: 1.0 },
    };
    let p = |w: &[f32], rows: usize, b: &[f32]| Params {
        weight: Array2::from_shape_vec((rows, w.len() / rows), w.to_vec()).unwrap(),
        bias: Array1::from(b.to_vec()),
    };
    let mm_t: Vec<f32> = (0..3).flat_map(|o| (0..5).map(move |i| (o, i))).map(|(o, i)| mm[i * 3 + o]).collect();
    let params = vec![Some(p(&w, 2, &b)), None, None, Some(p(&g, 5, &gb)), None, Some(p(&mm_t, 3, &mb))];
    let mut reference = Model::from_parameters(spec, params).unwrap();
    let x = Array2::from_shape_vec((2, 36), values(72, 7)).unwrap();
    let (got, want) = (imported.model.clone().forward(&x).unwrap(), reference.forward(&x).unwrap());
    assert!(got.iter().zip(want.iter()).all(|(a, b)| (a - b).abs() < 1e-5), "{got} vs {want}");
}

/// BatchNormalization after a convolution folds into it: `a·(W x + b) + (β − μ·a)` with
/// `a = γ / sqrt(σ² + ε)`; after an activation it folds into the next dense layer.
#[test]
fn batch_normalization_folds_into_the_linear_layers() {
    let (w, b) = (values(18, 1), values(2, 2));
    let (gamma, beta, mean, var) = ([1.5f32, -0.5], [0.25f32, 0.1], [0.3f32, -0.2], [0.8f32, 2.0]);
    let g = values(5 * 18, 3);
    let bn = |x: &str, out: &str, p: &str| {
        node(
            "BatchNormalization",
            &[x, &format!("{p}g"), &format!("{p}b"), &format!("{p}m"), &format!("{p}v")],
            out,
            vec![AttributeProto { name: Some("epsilon".into()), f: Some(1e-5), ..Default::default() }],
        )
    };
    let nodes = vec![
        node("Conv", &["x", "w", "b"], "c", vec![ints("pads", &[1, 1, 1, 1]), ints("strides", &[2, 2])]),
        bn("c", "n", "bn1"),
        node("Pow", &["n", "two"], "a", vec![]),
        bn("a", "n2", "bn2"),
        node("Flatten", &["n2"], "f", vec![]),
        node("Gemm", &["f", "g"], "y", vec![int("transB", 1)]),
    ];
    let mut inits = vec![
        tensor("w", &[2, 1, 3, 3], &w),
        tensor("b", &[2], &b),
        tensor("two", &[], &[2.0]),
        tensor("g", &[5, 18], &g),
    ];
    for p in ["bn1", "bn2"] {
        for (s, v) in [("g", &gamma), ("b", &beta), ("m", &mean), ("v", &var)] {
            inits.push(tensor(&format!("{p}{s}"), &[2], v));
        }
    }
    let imported = import_bytes(&model(nodes, inits, image_input(), "y")).unwrap();
    let m = &imported.model;
    assert_eq!(
        m.spec().layers,
        [
            LayerSpec::Conv2d { out_channels: 2, kernel: 3, stride: 2, padding: 1 },
            LayerSpec::Square,
            LayerSpec::Flatten,
            LayerSpec::Dense { outputs: 5 }
        ]
    );
    let a: Vec<f64> = (0..2).map(|c| gamma[c] as f64 / (var[c] as f64 + 1e-5).sqrt()).collect();
    let shift: Vec<f64> = (0..2).map(|c| beta[c] as f64 - mean[c] as f64 * a[c]).collect();
    let conv = m.params(0).unwrap();
    for c in 0..2 {
        for k in 0..9 {
            assert!((conv.weight[[c, k]] as f64 - a[c] * w[c * 9 + k] as f64).abs() < 1e-6);
        }
        assert!((conv.bias[c] as f64 - (a[c] * b[c] as f64 + shift[c])).abs() < 1e-6);
    }
    // The second normalization: each flattened feature of channel c (9 of them) scaled by
    // a[c], shifted by shift[c], inside the dense layer.
    let dense = m.params(3).unwrap();
    for o in 0..5 {
        let mut bias = 0.0;
        for j in 0..18 {
            let c = j / 9;
            assert!((dense.weight[[o, j]] as f64 - g[o * 18 + j] as f64 * a[c]).abs() < 1e-6);
            bias += g[o * 18 + j] as f64 * shift[c];
        }
        assert!((dense.bias[o] as f64 - bias).abs() < 1e-5);
    }
    assert_eq!(imported.sources[0], ["Conv_c", "BatchNormalization_n"]);
}

#[test]
fn the_first_normalization_goes_into_the_input_scaling() {
    // (x − 0.5) · 4 on pixel/255 inputs is the normalization mean 0.5, std 0.25.
    let nodes = vec![
        node("Sub", &["x", "half"], "s", vec![]),
        node("Mul", &["s", "four"], "m", vec![]),
        node("Flatten", &["m"], "f", vec![]),
        node("Gemm", &["f", "g"], "y", vec![int("transB", 1)]),
    ];
    let inits = vec![tensor("half", &[], &[0.5]), tensor("four", &[], &[4.0]), tensor("g", &[3, 36], &values(108, 1))];
    let imported = import_bytes(&model(nodes, inits, image_input(), "y")).unwrap();
    let n = imported.model.spec().normalization;
    assert!((n.mean - 0.5).abs() < 1e-12 && (n.std - 0.25).abs() < 1e-12, "{n:?}");
}

fn conv_model(extra: Vec<NodeProto>, last: &str) -> ModelProto {
    let mut nodes = vec![node("Conv", &["x", "w"], "c", vec![])];
    nodes.extend(extra);
    model(nodes, vec![tensor("w", &[2, 1, 3, 3], &values(18, 1))], image_input(), last)
}

#[test]
fn what_has_no_encrypted_form_is_refused_naming_the_node() {
    let relu = conv_model(vec![node("Relu", &["c"], "r", vec![])], "r");
    let e = err(&relu);
    assert!(e.contains("node 1 \"Relu_r\" (Relu)") && e.contains("--replace-activation"), "{e}");
    let options = ImportOptions { replace_relu: Some(2), ..ImportOptions::default() };
    let imported = import(&relu.encode_to_vec(), &options).unwrap();
    assert!(
        imported.needs_calibration && matches!(imported.model.spec().layers[1], LayerSpec::ReluPoly { degree: 2, .. })
    );

    let e = err(&conv_model(vec![node("MaxPool", &["c"], "p", vec![ints("kernel_shape", &[2, 2])])], "p"));
    assert!(e.contains("(MaxPool)") && e.contains("average pooling"), "{e}");
    let e = err(&conv_model(vec![node("Sigmoid", &["c"], "s", vec![])], "s"));
    assert!(e.contains("(Sigmoid)") && e.contains("not polynomial"), "{e}");
    let e = err(&conv_model(vec![node("LRN", &["c"], "s", vec![])], "s"));
    assert!(e.contains("operator LRN is not supported"), "{e}");
    // A residual connection: c + conv(c).
    let residual = model(
        vec![
            node("Conv", &["x", "w"], "c", vec![ints("pads", &[1, 1, 1, 1])]),
            node("Conv", &["c", "w2"], "d", vec![ints("pads", &[1, 1, 1, 1])]),
            node("Add", &["c", "d"], "y", vec![]),
        ],
        vec![tensor("w", &[2, 1, 3, 3], &values(18, 1)), tensor("w2", &[2, 2, 3, 3], &values(36, 2))],
        image_input(),
        "y",
    );
    assert!(err(&residual).contains("branches"), "{}", err(&residual));
    let grouped = model(
        vec![node("Conv", &["x", "w"], "c", vec![]), node("Conv", &["c", "w2"], "y", vec![int("group", 2)])],
        vec![tensor("w", &[2, 1, 3, 3], &values(18, 1)), tensor("w2", &[2, 1, 1, 1], &values(2, 2))],
        image_input(),
        "y",
    );
    assert!(err(&grouped).contains("group 2"), "{}", err(&grouped));
    let e = err(&conv_model(vec![node("Conv", &["c", "w"], "y", vec![int("bogus", 1)])], "y"));
    assert!(e.contains("attribute \"bogus\""), "{e}");
}

#[test]
fn malformed_graphs_are_refused() {
    // A cycle.
    let cycle = model(
        vec![node("Add", &["x", "b"], "a", vec![]), node("Mul", &["a", "a"], "b", vec![])],
        vec![],
        image_input(),
        "b",
    );
    assert!(err(&cycle).contains("cycle"), "{}", err(&cycle));
    // A missing initializer.
    let missing = model(vec![node("Conv", &["x", "nowhere"], "y", vec![])], vec![], image_input(), "y");
    assert!(err(&missing).contains("\"nowhere\", which is neither an initializer"), "{}", err(&missing));
    // A tensor declaring 10^10 elements with 4 bytes of data: refused before allocation.
    let mut huge = tensor("w", &[100000, 100000], &[1.0]);
    huge.dims = vec![100000, 100000];
    let m = model(vec![node("Conv", &["x", "w"], "y", vec![])], vec![huge], image_input(), "y");
    assert!(err(&m).contains("more than"), "{}", err(&m));
    // Data shorter than the shape says.
    let m = model(
        vec![node("Conv", &["x", "w"], "y", vec![])],
        vec![tensor("w", &[2, 1, 3, 3], &[1.0; 17])],
        image_input(),
        "y",
    );
    assert!(err(&m).contains("68 bytes of data for 18 elements"), "{}", err(&m));
    // Two inputs, a rank-3 input, a free channel dimension.
    let two = model(
        vec![node("Add", &["x", "z"], "y", vec![])],
        vec![],
        vec![image_input().remove(0), input("z", &[None, Some(1), Some(6), Some(6)])],
        "y",
    );
    assert!(err(&two).contains("2 graph inputs"), "{}", err(&two));
    let rank3 =
        model(vec![node("Identity", &["x"], "y", vec![])], vec![], vec![input("x", &[None, Some(6), Some(6)])], "y");
    assert!(err(&rank3).contains("rank 3"), "{}", err(&rank3));
    let free = model(
        vec![node("Identity", &["x"], "y", vec![])],
        vec![],
        vec![input("x", &[None, None, Some(6), Some(6)])],
        "y",
    );
    assert!(err(&free).contains("not fixed"), "{}", err(&free));
    // Not a model at all, and every truncation of a valid one.
    assert!(matches!(import(b"\xff\xff\xff\xffnot onnx", &ImportOptions::default()), Err(ImportError::Malformed(_))));
    let bytes = conv_model(vec![node("Mul", &["c", "c"], "y", vec![])], "y").encode_to_vec();
    for cut in 0..bytes.len() {
        let _ = import(&bytes[..cut], &ImportOptions::default());
    }
}

#[test]
fn external_data_is_read_beside_the_file_and_only_there() {
    let dir = std::env::temp_dir().join(format!("blindfold-onnx-ext-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let w = values(18, 1);
    let data: Vec<u8> = [0u8; 16].into_iter().chain(w.iter().flat_map(|v| v.to_le_bytes())).collect();
    std::fs::write(dir.join("m.onnx.data"), &data).unwrap();
    let external = |location: &str| {
        let mut t = tensor("w", &[2, 1, 3, 3], &[]);
        t.raw_data = None;
        t.data_location = Some(DataLocation::External as i32);
        t.external_data = [("location", location), ("offset", "16"), ("length", "72")]
            .iter()
            .map(|(k, v)| StringStringEntryProto { key: Some(k.to_string()), value: Some(v.to_string()) })
            .collect();
        let m = model(
            vec![node("Conv", &["x", "w"], "c", vec![]), node("Mul", &["c", "c"], "y", vec![])],
            vec![t],
            image_input(),
            "y",
        );
        std::fs::write(dir.join("m.onnx"), m.encode_to_vec()).unwrap();
        (m, import_file(&dir.join("m.onnx"), &ImportOptions::default()))
    };
    let (m, imported) = external("m.onnx.data");
    let imported = imported.unwrap();
    assert_eq!(imported.model.params(0).unwrap().weight.as_slice().unwrap(), w.as_slice());
    assert_eq!(imported.model.spec().name, "m.onnx");
    // From bytes alone there is no directory to read it from.
    assert!(err(&m).contains("external data"), "{}", err(&m));
    for bad in ["../m.onnx.data", "/etc/passwd", "missing.data"] {
        let e = external(bad).1.unwrap_err().to_string();
        assert!(e.contains("external data"), "{bad}: {e}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn shape_arithmetic_before_reshape_is_evaluated() {
    // x.view(x.size(0), -1) as the legacy exporter writes it.
    let nodes = vec![
        node("Conv", &["x", "w"], "c", vec![]),
        node("Mul", &["c", "c"], "a", vec![]),
        node("Shape", &["a"], "s", vec![]),
        node("Gather", &["s", "zero"], "n", vec![int("axis", 0)]),
        node("Unsqueeze", &["n", "axes"], "n1", vec![]),
        node("Concat", &["n1", "minus1"], "shape", vec![int("axis", 0)]),
        node("Reshape", &["a", "shape"], "f", vec![]),
        node("Gemm", &["f", "g"], "y", vec![int("transB", 1)]),
    ];
    let int64 = |name: &str, dims: &[i64], v: &[i64]| TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(7),
        int64_data: v.to_vec(),
        ..Default::default()
    };
    let inits = vec![
        tensor("w", &[2, 1, 3, 3], &values(18, 1)),
        int64("zero", &[], &[0]),
        int64("axes", &[1], &[0]),
        int64("minus1", &[1], &[-1]),
        tensor("g", &[4, 32], &values(128, 2)),
    ];
    let imported = import_bytes(&model(nodes, inits, image_input(), "y")).unwrap();
    assert_eq!(
        imported.model.spec().layers,
        [
            LayerSpec::Conv2d { out_channels: 2, kernel: 3, stride: 1, padding: 0 },
            LayerSpec::Square,
            LayerSpec::Flatten,
            LayerSpec::Dense { outputs: 4 }
        ]
    );
}

/// Constant subgraphs other exporters write: a transposed weight matrix, a reshaped bias, a
/// normalization spelled out with `Sqrt` and `Reciprocal`; and a batch dimension fixed at 4
/// that a reshape names.
#[test]
fn constant_subgraphs_and_a_fixed_batch_are_evaluated() {
    let (w, mean, var) = (values(2 * 72, 1), [0.5f32, -0.25], [2.0f32, 0.5]);
    let int64 = |name: &str, v: &[i64]| TensorProto {
        name: Some(name.into()),
        dims: vec![v.len() as i64],
        data_type: Some(7),
        int64_data: v.to_vec(),
        ..Default::default()
    };
    let nodes = vec![
        // (x − mean) / sqrt(var) per channel, constants reshaped to [1, 2, 1, 1].
        node("Conv", &["x", "cw"], "c", vec![ints("pads", &[1, 1, 1, 1])]),
        node("Reshape", &["mean", "bshape"], "mean4", vec![]),
        node("Sqrt", &["var"], "sd", vec![]),
        node("Reciprocal", &["sd"], "inv", vec![]),
        node("Reshape", &["inv", "bshape"], "inv4", vec![]),
        node("Sub", &["c", "mean4"], "centred", vec![]),
        node("Mul", &["centred", "inv4"], "n", vec![]),
        node("Mul", &["n", "n"], "a", vec![]),
        node("Reshape", &["a", "flat"], "f", vec![]),
        node("Transpose", &["w"], "wt", vec![ints("perm", &[1, 0])]),
        node("MatMul", &["f", "wt"], "y", vec![]),
    ];
    let inits = vec![
        tensor("cw", &[2, 1, 3, 3], &values(18, 2)),
        tensor("mean", &[2], &mean),
        tensor("var", &[2], &var),
        int64("bshape", &[1, 2, 1, 1]),
        int64("flat", &[4, -1]),
        tensor("w", &[2, 72], &w),
    ];
    let m = model(nodes, inits, vec![input("x", &[Some(4), Some(1), Some(6), Some(6)])], "y");
    let imported = import_bytes(&m).unwrap();
    assert_eq!(
        imported.model.spec().layers,
        [
            LayerSpec::Conv2d { out_channels: 2, kernel: 3, stride: 1, padding: 1 },
            LayerSpec::Square,
            LayerSpec::Flatten,
            LayerSpec::Dense { outputs: 2 }
        ]
    );
    let dense = imported.model.params(3).unwrap();
    assert_eq!(dense.weight.dim(), (2, 72));
    assert_eq!(dense.weight[[1, 5]], w[72 + 5]);
    let conv = imported.model.params(0).unwrap();
    assert!((conv.bias[1] as f64 - 0.25 / 0.5f64.sqrt()).abs() < 1e-6, "{}", conv.bias);
}
