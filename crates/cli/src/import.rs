//! Model files: blindfold's own (safetensors) or ONNX, read the same way by every command
//! that takes `--model`; `blindfold import` (ONNX to a blindfold model file) and
//! `blindfold inspect` (what a model becomes before anything is encrypted).

use crate::infer::ChainArgs;
use crate::DataArgs;
use anyhow::{bail, Context as _, Result};
use blindfold_data::Split;
use blindfold_nn::{Model, Normalization};
use blindfold_onnx::{ImportOptions, Imported};
use blindfold_protocol::CompiledModel;
use clap::{Args, ValueEnum};
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// How an ONNX model is read (ignored for blindfold's own model files, which carry both).
#[derive(Args, Clone, Debug, Default)]
pub(crate) struct ImportArgs {
    /// ONNX models trained on standardized inputs: the model's input is
    /// (pixel/255 − MEAN) / STD. Default: pixel/255, as torchvision's ToTensor.
    #[arg(long, value_name = "MEAN,STD", value_parser = parse_normalization)]
    pub(crate) normalize: Option<Normalization>,
    /// ONNX models with ReLU: replace each ReLU by its least-squares polynomial fit of this
    /// degree on the range its inputs take on calibration images (the first 2,000 training
    /// images of --dataset). ReLU has no encrypted form; accuracy will change.
    #[arg(long, value_enum, value_name = "FIT")]
    pub(crate) replace_activation: Option<Replacement>,
}

/// A polynomial that replaces ReLU.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum Replacement {
    /// Degree 2 (one level).
    ReluPoly2,
    /// Degree 3 (two levels).
    ReluPoly3,
    /// Degree 4 (two levels).
    ReluPoly4,
}

fn parse_normalization(s: &str) -> std::result::Result<Normalization, String> {
    let (mean, std) = s.split_once(',').ok_or("expected MEAN,STD, e.g. 0.1307,0.3081")?;
    let parse = |v: &str| v.trim().parse::<f64>().map_err(|e| format!("{v:?}: {e}"));
    let (mean, std) = (parse(mean)?, parse(std)?);
    if !(mean.is_finite() && std.is_finite() && std > 0.0) {
        return Err(format!("mean {mean}, std {std}: need finite values and std > 0"));
    }
    Ok(Normalization { mean, std })
}

/// Images the ReLU fits of an imported model are calibrated on.
const CALIBRATION_IMAGES: usize = 2000;

/// Whether `path` names an ONNX file (by its extension).
pub(crate) fn is_onnx(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
}

/// A model read from a file, with what the import said about it.
pub(crate) struct Loaded {
    pub(crate) model: Model,
    /// For ONNX files: the import's details.
    pub(crate) onnx: Option<OnnxDetails>,
}

/// What an ONNX import said besides the model ([`Imported`]'s other fields).
pub(crate) struct OnnxDetails {
    sources: Vec<Vec<String>>,
    notes: Vec<String>,
    opset: i64,
    producer: String,
}

/// Reads a model: blindfold's own file, or an ONNX file (imported with `args`; ReLU fits
/// calibrated on the training images of `calibration`, which they then need).
pub(crate) fn load_model(path: &Path, args: &ImportArgs, calibration: Option<&DataArgs>) -> Result<Loaded> {
    if !is_onnx(path) {
        if args.normalize.is_some() || args.replace_activation.is_some() {
            bail!(
                "--normalize and --replace-activation apply to ONNX models; {} is a blindfold model file, which \
                 carries its own",
                path.display()
            );
        }
        return Ok(Loaded { model: Model::load(path)?.0, onnx: None });
    }
    let options = ImportOptions {
        normalization: args.normalize.unwrap_or(Normalization { mean: 0.0, std: 1.0 }),
        replace_relu: args.replace_activation.map(|r| r as usize + 2),
        name: String::new(),
    };
    let Imported { mut model, sources, needs_calibration, notes, opset, producer } =
        blindfold_onnx::import_file(path, &options).with_context(|| format!("importing {}", path.display()))?;
    for note in &notes {
        eprintln!("note: {note}");
    }
    if needs_calibration {
        let Some(data) = calibration else {
            bail!(
                "{} has ReLU fits that need calibration data: convert it once with `blindfold import {} --out \
                 MODEL.safetensors --replace-activation … --dataset …` and use that file",
                path.display(),
                path.display()
            );
        };
        calibrate(&mut model, data)?;
    }
    Ok(Loaded { model, onnx: Some(OnnxDetails { sources, notes, opset, producer }) })
}

/// Fits every ReLU fit of `model` to the pre-activations of the first training images.
fn calibrate(model: &mut Model, data: &DataArgs) -> Result<()> {
    let train = data.load(Split::Train)?.truncate(CALIBRATION_IMAGES);
    let width = model.spec().input.len();
    let pixels = if train.is_empty() { 0 } else { train.images.image(0).len() };
    if pixels != width {
        bail!("calibration: the model takes {width} values per image, {} images have {pixels}", data.dataset);
    }
    let mut x = ndarray::Array2::<f32>::zeros((train.len(), width));
    for (i, mut row) in x.rows_mut().into_iter().enumerate() {
        row.assign(&ndarray::Array1::from(model.normalize(train.images.image(i))));
    }
    model.calibrate_activations(&x)?;
    eprintln!("calibrated the ReLU fits on {} training images of {}", train.len(), data.dataset);
    Ok(())
}

#[derive(Args)]
pub(crate) struct ImportCmdArgs {
    /// The ONNX model.
    model: PathBuf,
    /// The blindfold model file to write (safetensors).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    import: ImportArgs,
    /// Calibration images for --replace-activation.
    #[command(flatten)]
    data: DataArgs,
}

pub(crate) fn import_cmd(a: ImportCmdArgs) -> Result<()> {
    if !is_onnx(&a.model) {
        bail!("{} is not an .onnx file", a.model.display());
    }
    let loaded = load_model(&a.model, &a.import, Some(&a.data))?;
    let imported = loaded.onnx.as_ref().expect("an ONNX file");
    let mut provenance = HashMap::new();
    provenance.insert("source".to_string(), a.model.display().to_string());
    provenance.insert("producer".to_string(), imported.producer.clone());
    provenance.insert("opset".to_string(), imported.opset.to_string());
    if !imported.notes.is_empty() {
        provenance.insert("notes".to_string(), imported.notes.join("; "));
    }
    loaded.model.save(&a.out, &provenance)?;
    println!("wrote {} ({} layers)", a.out.display(), loaded.model.spec().layers.len());
    Ok(())
}

#[derive(Args)]
pub(crate) struct InspectArgs {
    /// The model: a blindfold model file or an ONNX file.
    model: PathBuf,
    #[command(flatten)]
    import: ImportArgs,
    /// Calibration images for --replace-activation.
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    chain: ChainArgs,
    /// Also write the inspection as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Serialize)]
struct LayerRow {
    layer: String,
    output: String,
    parameters: usize,
    levels: usize,
    /// The ONNX nodes the layer came from.
    from: Vec<String>,
}

#[derive(Serialize)]
struct Inspection {
    model: String,
    format: String,
    input: String,
    normalization: Normalization,
    layers: Vec<LayerRow>,
    classes: usize,
    depth: usize,
    parameters: String,
    log_n: u32,
    log_qp: f64,
    input_ciphertexts: usize,
    rotation_keys: usize,
    relinearization: bool,
    max_eval_keys_bytes: usize,
    max_request_bytes: usize,
    stages: Vec<blindfold_tensor::StageCost>,
    notes: Vec<String>,
}

pub(crate) fn inspect_cmd(a: InspectArgs) -> Result<()> {
    let loaded = load_model(&a.model, &a.import, Some(&a.data))?;
    let model = &loaded.model;
    let spec = model.spec();
    let shapes = spec.shapes()?;
    let compiled = CompiledModel::new(model, &a.chain.options())
        .with_context(|| format!("compiling {} for encrypted inference", a.model.display()))?;
    let info = compiled.info();
    let params = info.parameters()?;
    let layers = spec
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| LayerRow {
            layer: l.to_string(),
            output: shapes[i + 1].to_string(),
            parameters: model.params(i).map_or(0, |p| p.weight.len() + p.bias.len()),
            levels: l.depth(),
            from: loaded.onnx.as_ref().and_then(|o| o.sources.get(i).cloned()).unwrap_or_default(),
        })
        .collect();
    let format = match &loaded.onnx {
        Some(o) => {
            format!("ONNX, operator set {}, from {}", o.opset, if o.producer.is_empty() { "?" } else { &o.producer })
        }
        None => "blindfold model file".into(),
    };
    let n = spec.normalization;
    let r = Inspection {
        model: a.model.display().to_string(),
        format,
        input: spec.input.to_string(),
        normalization: n,
        layers,
        classes: spec.classes()?,
        depth: info.depth,
        parameters: info.parameters_name(),
        log_n: params.log_n(),
        log_qp: params.log_qp(),
        input_ciphertexts: compiled.circuit().packing().ciphertexts(),
        rotation_keys: info.rotation_keys.len(),
        relinearization: info.relinearization,
        max_eval_keys_bytes: compiled.max_keys_len(),
        max_request_bytes: compiled.max_image_len(),
        stages: compiled.circuit().costs(),
        notes: loaded.onnx.as_ref().map(|o| o.notes.clone()).unwrap_or_default(),
    };
    println!("{:<16} {} ({})", "model", r.model, r.format);
    println!("{:<16} {}, as (pixel/255 − {}) / {}", "input", r.input, n.mean, n.std);
    println!("  {:>2}  {:<44} {:>10} {:>9} {:>6}  from", "#", "layer", "output", "params", "levels");
    for (i, l) in r.layers.iter().enumerate() {
        println!(
            "  {i:>2}  {:<44} {:>10} {:>9} {:>6}  {}",
            l.layer,
            l.output,
            l.parameters,
            l.levels,
            l.from.join(", ")
        );
    }
    println!("{:<16} {}", "classes", r.classes);
    println!(
        "{:<16} depth {}, parameters {} (N = 2^{}, log2 QP = {:.1}, 128-bit)",
        "circuit", r.depth, r.parameters, r.log_n, r.log_qp
    );
    println!(
        "{:<16} {} input ciphertext(s), {} rotation keys{}",
        "keys",
        r.input_ciphertexts,
        r.rotation_keys,
        if r.relinearization { " and a relinearization key" } else { "" }
    );
    println!(
        "{:<16} evaluation keys up to {:.1} MB, requests up to {:.2} MB",
        "sizes",
        r.max_eval_keys_bytes as f64 / 1e6,
        r.max_request_bytes as f64 / 1e6
    );
    println!("cost per image:");
    for s in &r.stages {
        println!(
            "  {:<70} levels {}, key switches {:>3} ({} hoisted), plaintext products {:>4}",
            s.name,
            s.levels,
            s.key_switches(),
            s.hoisted_rotations,
            s.plain_products
        );
    }
    for note in &r.notes {
        println!("note: {note}");
    }
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_string_pretty(&r)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
