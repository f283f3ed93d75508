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
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(Path::new(&keys).join("secret.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "secret.key is readable by others: {mode:o}");
    }
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
        "refused from the other party",
    );
    // Garbage scores.
    std::fs::write(p(&d, "garbage"), b"not a ciphertext").unwrap();
    fails_with(&["decrypt", "--keys", &keys, "--input", &p(&d, "garbage")], "garbage");
    // A damaged model file names the file.
    let good_model = p(&d, "good.safetensors");
    std::fs::copy(&model, &good_model).unwrap();
    std::fs::write(&model, b"junk").unwrap();
    fails_with(
        &["evaluate", "--model", &model, "--eval-keys", &eval_keys, "--input", &req, "--out", &p(&d, "r")],
        "m.safetensors",
    );
    // Missing data directory.
    fails_with(&["encrypt", "--keys", &keys, "--data-dir", "/nonexistent", "--out", &p(&d, "x")], "file not found");
    // Trailing bytes after a valid request.
    let mut padded = bytes.clone();
    padded.extend_from_slice(b"extra");
    std::fs::write(&req, &padded).unwrap();
    fails_with(
        &["evaluate", "--model", &good_model, "--eval-keys", &eval_keys, "--input", &req, "--out", &p(&d, "r")],
        "5 trailing bytes",
    );
    // Files far larger than the plan allows are refused by their size, before they are read
    // (sparse files: no disk is used).
    std::fs::write(&req, &bytes).unwrap();
    let huge = p(&d, "huge");
    std::fs::File::create(&huge).unwrap().set_len(1 << 30).unwrap();
    for args in [
        vec!["evaluate", "--model", &good_model, "--eval-keys", &huge, "--input", &req, "--out", &p(&d, "r")],
        vec!["evaluate", "--model", &good_model, "--eval-keys", &eval_keys, "--input", &huge, "--out", &p(&d, "r")],
        vec!["evaluate", "--model", &huge, "--eval-keys", &eval_keys, "--input", &req, "--out", &p(&d, "r")],
        vec!["decrypt", "--keys", &keys, "--input", &huge],
    ] {
        fails_with(&args, "huge");
        fails_with(&args, "more than the");
    }
    // Scores computed for another client's keys.
    let resp = p(&d, "resp");
    ok(&["evaluate", "--model", &good_model, "--eval-keys", &eval_keys, "--input", &req, "--out", &resp]);
    let other = p(&d, "other");
    ok(&["keygen", "--model", "tenseal-cnn1", "--out-dir", &other]);
    fails_with(&["decrypt", "--keys", &other, "--input", &resp], "another client");
    // The same, with the other client told this client's key id: the decryption is noise and
    // is refused as such, never printed as a class.
    std::fs::copy(Path::new(&keys).join("key.id"), Path::new(&other).join("key.id")).unwrap();
    fails_with(&["decrypt", "--keys", &other, "--input", &resp], "cannot be decrypted with this key");
    // An all-zero secret key.
    let sk_path = Path::new(&keys).join("secret.key");
    let mut sk = std::fs::read(&sk_path).unwrap();
    let n = sk.len();
    sk[n - 2048..].fill(0);
    std::fs::write(&sk_path, &sk).unwrap();
    fails_with(&["decrypt", "--keys", &keys, "--input", &resp], "non-zero coefficients");
    // A damaged secret key.
    std::fs::write(&sk_path, b"BFCK").unwrap();
    fails_with(&["encrypt", "--keys", &keys, "--index", "1", "--out", &p(&d, "x")], "secret.key");
    let _ = std::fs::remove_dir_all(&d);
}
