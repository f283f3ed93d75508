//! Models exported by PyTorch (both exporters) and hand-made hostile files, with
//! onnxruntime's outputs, made by `scripts/onnx/make_test_models.py` into `tests/data`:
//! every model that should import gives onnxruntime's logits, every other is refused with
//! the message its manifest entry expects, and no mutation of the files panics the importer.

use blindfold_onnx::{import, import_file, ImportOptions};
use ndarray::Array2;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

fn manifest() -> Vec<Value> {
    let text = std::fs::read_to_string(data().join("manifest.json")).unwrap();
    serde_json::from_str::<Value>(&text).unwrap().as_array().unwrap().clone()
}

fn floats(path: &Path) -> Vec<f32> {
    std::fs::read(path).unwrap().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

fn options(entry: &Value) -> ImportOptions {
    let degree = entry.pointer("/options/replace_relu").and_then(Value::as_u64);
    ImportOptions { replace_relu: degree.map(|d| d as usize), ..ImportOptions::default() }
}

#[test]
fn pytorch_exports_give_onnxruntime_logits_and_the_rest_is_refused() {
    let entries = manifest();
    assert!(entries.len() >= 30, "the zoo has {} entries", entries.len());
    let (mut compared, mut refused) = (0, 0);
    for e in &entries {
        let name = e["name"].as_str().unwrap();
        let result = import_file(&data().join(format!("{name}.onnx")), &options(e));
        match e["expect"].as_str().unwrap() {
            "ok" => {
                let mut imported = result.unwrap_or_else(|err| panic!("{name}: {err}"));
                let classes = e["classes"].as_u64().unwrap() as usize;
                assert_eq!(imported.model.spec().classes().unwrap(), classes, "{name}");
                if e["compare"] != Value::Bool(true) {
                    continue;
                }
                let width = imported.model.spec().input.len();
                let x = Array2::from_shape_vec((4, width), floats(&data().join(format!("{name}.in.f32")))).unwrap();
                let want = floats(&data().join(format!("{name}.out.f32")));
                let got = imported.model.forward(&x).unwrap();
                let range = want.iter().fold(f32::MIN, |m, &v| m.max(v)) - want.iter().fold(f32::MAX, |m, &v| m.min(v));
                let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(
                    worst <= 1e-4 * range.max(1e-3),
                    "{name}: error {worst} against onnxruntime, logit range {range}"
                );
                compared += 1;
            }
            _ => {
                let err = result.err().unwrap_or_else(|| panic!("{name} was imported")).to_string();
                let want = e["error_contains"].as_str().unwrap();
                assert!(err.contains(want), "{name}: {err:?} does not say {want:?}");
                refused += 1;
            }
        }
    }
    assert!(compared >= 20 && refused >= 12, "{compared} compared, {refused} refused");
}

/// Byte flips, insertions and truncations of every importable file: each is imported or
/// refused, never a panic.
#[test]
fn mutated_files_never_panic() {
    let mut state = 0x9e3779b97f4a7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let cases: usize = std::env::var("BLINDFOLD_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    for e in manifest().iter().filter(|e| e["expect"] == "ok") {
        let bytes = std::fs::read(data().join(format!("{}.onnx", e["name"].as_str().unwrap()))).unwrap();
        for _ in 0..cases {
            let mut b = bytes.clone();
            for _ in 0..1 + next() % 8 {
                let i = next() as usize % b.len();
                match next() % 3 {
                    0 => b[i] ^= 1 << (next() % 8),
                    1 => b[i] = next() as u8,
                    _ => b.insert(i, next() as u8),
                }
            }
            if next() % 4 == 0 {
                b.truncate(next() as usize % b.len());
            }
            let _ = import(&b, &options(e));
        }
    }
}
