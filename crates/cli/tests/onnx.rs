//! ONNX files through the command line: `inspect`, `infer --logits-out`, `import`, `keygen`
//! and the refusals, on PyTorch exports from `crates/onnx/tests/data` and Fashion-MNIST.

use blindfold_data::{load, Dataset, Split};
use blindfold_onnx::{import_file, ImportOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn blindfold(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_blindfold")).args(args).output().expect("runs")
}

fn ok(args: &[&str]) -> String {
    let out = blindfold(args);
    assert!(out.status.success(), "blindfold {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn zoo(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../onnx/tests/data").join(name).display().to_string()
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("blindfold-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn an_onnx_model_is_inspected_and_runs_encrypted_with_its_plaintext_logits() {
    let d = dir("onnx");
    let model = zoo("batchnorm_legacy.onnx");
    let out = ok(&["inspect", &model]);
    assert!(out.contains("ONNX, operator set") && out.contains("x²") && out.contains("128-bit"), "{out}");
    let logits = d.join("logits.npy").display().to_string();
    ok(&["infer", "--model", &model, "--n-test", "4", "--logits-out", &logits]);
    let got: ndarray::Array2<f64> = ndarray_npy::read_npy(&logits).unwrap();
    // The plaintext twin: the imported model on the same images.
    let mut imported = import_file(Path::new(&model), &ImportOptions::default()).unwrap().model;
    let test = load(Dataset::FashionMnist, &Dataset::FashionMnist.default_dir(), Split::Test).unwrap();
    let images: Vec<&[u8]> = (0..4).map(|i| test.images.image(i)).collect();
    let want = imported.logits(&images).unwrap();
    assert_eq!(got.dim(), want.dim());
    let range = want.iter().fold(f32::MIN, |m, &v| m.max(v)) - want.iter().fold(f32::MAX, |m, &v| m.min(v));
    let worst = got.iter().zip(want.iter()).map(|(a, &b)| (a - b as f64).abs()).fold(0.0, f64::max);
    assert!(worst < 0.01 * range as f64, "decrypted scores differ by {worst}, logit range {range}");

    // Imported once into blindfold's own file: the same layers.
    let file = d.join("m.safetensors").display().to_string();
    ok(&["import", &model, "--out", &file]);
    let again = ok(&["inspect", &file]);
    let layers = |s: &str| s.lines().filter(|l| l.starts_with("   ")).map(|l| l[..70].to_string()).collect::<Vec<_>>();
    assert_eq!(layers(&out), layers(&again));
    // A client makes keys from the ONNX file's architecture.
    ok(&["keygen", "--model", &model, "--out-dir", &d.join("keys").display().to_string()]);
    assert!(d.join("keys/eval.keys").is_file());
}

#[test]
fn relu_is_refused_unless_replaced_and_calibrated() {
    let model = zoo("relu_dynamo.onnx");
    let out = blindfold(&["inspect", &model]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("(Relu)") && err.contains("--replace-activation"), "{err}");
    let out = ok(&["inspect", &model, "--replace-activation", "relu-poly2"]);
    assert!(out.contains("ReLU fit of degree 2"), "{out}");
    // Without calibration data at hand (keygen), the user is told to import first.
    let out =
        blindfold(&["keygen", "--model", &model, "--replace-activation", "relu-poly2", "--out-dir", "/nonexistent"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("blindfold import"), "{err}");
    // Import options on a blindfold model file are a mistake, said so.
    let out = blindfold(&["inspect", "/nonexistent.safetensors", "--normalize", "0.5,0.5"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("apply to ONNX models"));
}
