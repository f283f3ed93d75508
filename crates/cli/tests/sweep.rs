//! `blindfold sweep` end to end on Fashion-MNIST (Debian's `dataset-fashion-mnist`), small:
//! one measured point, one that no 128-bit chain allows (skipped with the reason), the CSV and
//! both charts; and `train --activation relu-poly2` feeding an encrypted `infer`.

use std::process::Command;

fn blindfold(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_blindfold")).args(args).output().expect("runs")
}

fn ok(args: &[&str]) -> String {
    let out = blindfold(args);
    assert!(out.status.success(), "blindfold {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn temp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("blindfold-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn sweep_writes_its_csv_and_charts_and_skips_insecure_points() {
    let d = temp("sweep");
    let (models, out) = (d.join("models"), d.join("out"));
    let (models_s, out_s) = (models.display().to_string(), out.display().to_string());
    let args = [
        "sweep",
        "--arch",
        "tenseal-cnn1",
        "--epochs",
        "1",
        "--limit",
        "600",
        "--model-dir",
        &models_s,
        "--scale-bits",
        "26,31",
        "--log-n",
        "13",
        "--n-test",
        "3",
        "--out",
        &out_s,
    ];
    ok(&args);
    let csv = std::fs::read_to_string(out.join("sweep.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows.len(), 3, "{csv}");
    assert!(rows[1].starts_with("13,8192,26,5,") && rows[1].contains(",ok,"), "{csv}");
    // 36 + 5×31 + 39 bits exceed the 218-bit bound at N = 8192.
    assert!(rows[2].contains(",skipped,") && rows[2].contains("128-bit bound"), "{csv}");
    for chart in ["accuracy.svg", "latency.svg"] {
        let svg = std::fs::read_to_string(out.join(chart)).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("8192"), "{chart}");
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_relu_fit_trains_and_runs_encrypted() {
    let d = temp("relu-poly");
    let model = d.join("m.safetensors").display().to_string();
    let train = ok(&[
        "train",
        "--arch",
        "tenseal-cnn1",
        "--activation",
        "relu-poly2",
        "--epochs",
        "1",
        "--limit",
        "600",
        "--out",
        &model,
    ]);
    assert!(train.contains("ReLU fit on ["), "{train}");
    let report = d.join("r.json").display().to_string();
    ok(&["infer", "--model", &model, "--n-test", "3", "--json", &report]);
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(r["activation_ranges"].as_array().unwrap().len(), 2, "{r}");
    assert_eq!(r["depth"], 5);
    let bad = blindfold(&["train", "--arch", "cnn2", "--activation", "relu", "--out", &model]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("relu-poly2"));
    let _ = std::fs::remove_dir_all(&d);
}
