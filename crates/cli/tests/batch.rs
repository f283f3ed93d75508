//! `blindfold infer --packing batch` end to end on Fashion-MNIST (Debian's
//! `dataset-fashion-mnist`): more test images than one batch holds, the report's batch fields,
//! encrypted classes against the plaintext model's; on BFV, scores equal to the integer
//! network's; the refusals of bad combinations.

use std::process::Command;

fn blindfold(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_blindfold")).args(args).output().expect("runs")
}

fn ok(args: &[&str]) -> String {
    let out = blindfold(args);
    assert!(out.status.success(), "blindfold {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn batch_packing_classifies_several_batches_like_the_plaintext_model() {
    let d = std::env::temp_dir().join(format!("blindfold-cli-batch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let model = d.join("m.safetensors").display().to_string();
    ok(&["train", "--arch", "cryptonets", "--epochs", "1", "--limit", "2000", "--out", &model]);
    let report = d.join("r.json").display().to_string();
    // 5,000 images: one full batch of 4,096 and one of 904.
    let out = ok(&["infer", "--model", &model, "--packing", "batch", "--n-test", "5000", "--json", &report]);
    assert!(out.contains("images/s"), "{out}");
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!((r["packing"].as_str(), r["scheme"].as_str()), (Some("batch"), Some("ckks")), "{r}");
    assert_eq!((r["batch_size"].as_u64(), r["n"].as_u64()), (Some(4096), Some(5000)), "{r}");
    assert_eq!(r["rotation_keys"], 0, "{r}");
    assert_eq!(r["stage_seconds"].as_array().unwrap().len(), r["stages"].as_array().unwrap().len(), "{r}");
    assert!(r["agreement"].as_f64().unwrap() >= 0.999, "{r}");
    assert!(r["images_per_second"].as_f64().unwrap() > 0.0 && r["batch_latency_s"].as_f64().unwrap() > 0.0, "{r}");
    // BFV: one batch of 16,384 slots for 50 images; scores equal the integer network's (the
    // smaller tenseal-cnn1: CryptoNets' 845 squares make a BFV batch too slow for this test).
    let small = d.join("cnn1.safetensors").display().to_string();
    ok(&["train", "--arch", "tenseal-cnn1", "--epochs", "1", "--limit", "2000", "--out", &small]);
    let out =
        ok(&["infer", "--model", &small, "--packing", "batch", "--scheme", "bfv", "--n-test", "50", "--json", &report]);
    assert!(out.contains("BFV plan"), "{out}");
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!((r["scheme"].as_str(), r["exact_scores"].as_f64()), (Some("bfv"), Some(1.0)), "{r}");
    assert!(r["plaintext_moduli"].as_array().unwrap().len() >= 2, "{r}");
    // Circuit privacy is on by default (a BFV batch is too slow here to run twice: the plan
    // without it is checked in crates/nn/tests/batch.rs).
    assert_eq!(r["circuit_privacy_bits"].as_u64(), Some(40), "{r}");
    for (args, says) in [
        (vec!["--packing", "batch", "--parallel-images", "2"], "single packing"),
        (vec!["--scheme", "bfv"], "batch packing only"),
        (vec!["--packing", "batch", "--circuit-privacy", "40"], "applies to --scheme bfv"),
        (vec!["--packing", "batch", "--scheme", "bfv", "--weight-bits", "24"], "fewer weight bits"),
    ] {
        let bad = blindfold(&[&["infer", "--model", &model, "--n-test", "5"], &args[..]].concat());
        let err = String::from_utf8_lossy(&bad.stderr);
        assert!(!bad.status.success() && err.contains(says), "{args:?}: {err}");
    }
    let _ = std::fs::remove_dir_all(&d);
}
