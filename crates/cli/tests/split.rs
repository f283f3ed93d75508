//! The file-based client/server split across separate processes, and clear errors for bad
//! files. Uses Fashion-MNIST from Debian's `dataset-fashion-mnist` package.

use blindfold_data::{load, Dataset, Split};
use blindfold_nn::{argmax, Model};
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

fn fails_with(args: &[&str], needle: &str) {
    let out = blindfold(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "blindfold {args:?} should fail");
    assert!(err.contains(needle), "blindfold {args:?}: {err:?} lacks {needle:?}");
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("blindfold-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn p(d: &Path, name: &str) -> String {
    d.join(name).display().to_string()
}

#[test]
fn client_and_model_holder_in_separate_processes() {
    let d = dir("split");
    let model = p(&d, "m.safetensors");
    let keys = p(&d, "keys");
    ok(&["train", "--arch", "tenseal-cnn1", "--epochs", "1", "--limit", "3000", "--out", &model]);
    ok(&["keygen", "--model", &model, "--out-dir", &keys]);
    assert!(Path::new(&keys).join("secret.key").is_file());
    let test = load(Dataset::FashionMnist, &Dataset::FashionMnist.default_dir(), Split::Test).unwrap();
    let (mut m, _) = Model::load(Path::new(&model)).unwrap();
    for index in [0usize, 7] {
        let (req, resp) = (p(&d, &format!("req{index}")), p(&d, &format!("resp{index}")));
        ok(&["encrypt", "--keys", &keys, "--index", &index.to_string(), "--out", &req]);
        ok(&["evaluate", "--model", &model, "--eval-keys", &p(&d, "keys/eval.keys"), "--input", &req, "--out", &resp]);
        let json: serde_json::Value =
            serde_json::from_str(&ok(&["decrypt", "--keys", &keys, "--input", &resp, "--json"])).unwrap();
        let logits = m.logits(&[test.images.image(index)]).unwrap();
        assert_eq!(json["class"].as_u64().unwrap() as usize, argmax(logits.as_slice().unwrap()), "image {index}");
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn bad_files_give_clear_errors() {
    let d = dir("bad");
    let model = p(&d, "m.safetensors");
    let keys = p(&d, "keys");
    ok(&["train", "--arch", "tenseal-cnn1", "--epochs", "1", "--limit", "500", "--out", &model]);
    ok(&["keygen", "--model", "tenseal-cnn1", "--out-dir", &keys]);
    let req = p(&d, "req");
    ok(&["encrypt", "--keys", &keys, "--index", "1", "--out", &req]);
    let eval_keys = p(&d, "keys/eval.keys");
    // Truncated request.
    let bytes = std::fs::read(&req).unwrap();
    std::fs::write(&req, &bytes[..bytes.len() / 2]).unwrap();
    fails_with(
        &["evaluate", "--model", &model, "--eval-keys", &eval_keys, "--input", &req, "--out", &p(&d, "r")],
        "req",
    );
    // A request passed where evaluation keys are expected.
    std::fs::write(&req, &bytes).unwrap();
    fails_with(
        &["evaluate", "--model", &model, "--eval-keys", &req, "--input", &req, "--out", &p(&d, "r")],
        "unexpected message",
    );
    // Garbage scores.
    std::fs::write(p(&d, "garbage"), b"not a ciphertext").unwrap();
    fails_with(&["decrypt", "--keys", &keys, "--input", &p(&d, "garbage")], "garbage");
    // A damaged model file names the file.
    std::fs::write(&model, b"junk").unwrap();
    fails_with(
        &["evaluate", "--model", &model, "--eval-keys", &eval_keys, "--input", &req, "--out", &p(&d, "r")],
        "m.safetensors",
    );
    // Missing data directory.
    fails_with(&["encrypt", "--keys", &keys, "--data-dir", "/nonexistent", "--out", &p(&d, "x")], "file not found");
    // A damaged secret key.
    std::fs::write(Path::new(&keys).join("secret.key"), b"BFCK").unwrap();
    fails_with(&["encrypt", "--keys", &keys, "--index", "1", "--out", &p(&d, "x")], "secret.key");
    let _ = std::fs::remove_dir_all(&d);
}
