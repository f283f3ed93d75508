//! `blindfold ensemble` end to end on Fashion-MNIST (Debian's `dataset-fashion-mnist`), with
//! small settings: the JSON report's shape, agreement with the plaintext ensemble, and clear
//! errors for what is not available.

use std::process::Command;

fn blindfold(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_blindfold")).args(args).output().expect("runs")
}

#[test]
fn ensemble_report_has_one_row_per_split() {
    let d = std::env::temp_dir().join(format!("blindfold-cli-ensemble-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    let json = d.join("report.json");
    let (models, json_s) = (d.join("models").display().to_string(), json.display().to_string());
    let args = [
        "ensemble",
        "--holders",
        "2",
        "--split",
        "iid,label-skew:5",
        "--limit",
        "1500",
        "--epochs",
        "1",
        "--n-test",
        "8",
        "--model-dir",
        &models,
        "--json",
        &json_s,
    ];
    let out = blindfold(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["holders"], 2);
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["split"], "iid");
    assert_eq!(rows[1]["split"], "label-skew:5");
    for row in rows {
        assert_eq!(row["holder_accuracies"].as_array().unwrap().len(), 2);
        assert_eq!(row["calibration"]["weights"].as_array().unwrap().len(), 2);
        // Every aggregation by default; encrypted and plaintext ensembles pick the same class
        // on these images.
        for (name, depth) in [("mean", 0), ("weighted", 1), ("softmax-mean", 4), ("vote", 4)] {
            let agg = &row["ensemble"][name];
            assert_eq!(agg["agreement"].as_f64().unwrap(), 1.0, "{name}: {row}");
            assert_eq!(agg["depth"], depth, "{name}");
            assert!(agg["max_error"].as_f64().unwrap() < 1e-2, "{name}: {agg}");
            assert!(agg["coordinator_ms"]["p50"].as_f64().unwrap() > 0.0);
        }
    }
    assert_eq!(report["preset"], "N16384_DEPTH9_128BIT");
    // The second run reuses the cached holder models; mean alone runs on the smaller ring.
    let mean_only: Vec<&str> = args.iter().copied().chain(["--aggregation", "mean"]).collect();
    let again = blindfold(&mean_only);
    assert!(again.status.success());
    assert!(!String::from_utf8_lossy(&again.stderr).contains("training"));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn bfv_ensemble_scores_equal_the_integer_ensemble() {
    let d = std::env::temp_dir().join(format!("blindfold-cli-ensemble-bfv-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    let json = d.join("report.json");
    let (models, json_s) = (d.join("models").display().to_string(), json.display().to_string());
    let out = blindfold(&[
        "ensemble",
        "--scheme",
        "bfv",
        "--packing",
        "batch",
        "--activation",
        "relu-poly2",
        "--holders",
        "2",
        "--split",
        "dirichlet:0.5",
        "--limit",
        "1500",
        "--epochs",
        "1",
        "--n-test",
        "300",
        "--weight-bits",
        "4",
        "--model-dir",
        &models,
        "--json",
        &json_s,
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!((report["scheme"].as_str(), report["packing"].as_str()), (Some("bfv"), Some("batch")));
    let row = &report["rows"][0];
    // BFV's default aggregations are the linear ones, and they are exact.
    for name in ["mean", "weighted"] {
        let agg = &row["ensemble"][name];
        assert_eq!(agg["exact_scores"].as_f64(), Some(1.0), "{name}: {agg}");
        assert_eq!(agg["agreement"].as_f64(), Some(1.0), "{name}: {agg}");
        assert_eq!(agg["max_error"].as_f64(), Some(0.0), "{name}: {agg}");
    }
    assert!(row["ensemble"].get("vote").is_none());
    let plan = &row["bfv"];
    assert_eq!(plan["scale_factors"].as_array().unwrap().len(), 2);
    assert!(plan["integer_weights"].as_array().unwrap().iter().all(|w| (1..=15).contains(&w.as_u64().unwrap())));
    assert!(!plan["plaintext_moduli"].as_array().unwrap().is_empty());
    assert_eq!(plan["circuit_privacy_bits"].as_u64(), Some(40), "the coordinator floods by default: {plan}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn unknown_aggregations_and_bad_splits_are_refused() {
    for (args, needle) in [
        (vec!["ensemble", "--aggregation", "median"], "unknown aggregation"),
        (vec!["ensemble", "--split", "dirichlet:-2"], "ALPHA must be a positive number"),
        (vec!["ensemble", "--holders", "0"], "at least 1"),
        (vec!["ensemble", "--n-test", "9500"], "never scored"),
        (vec!["ensemble", "--scheme", "bfv"], "batch packing only"),
        (vec!["ensemble", "--packing", "batch"], "runs on BFV"),
        (
            vec!["ensemble", "--scheme", "bfv", "--packing", "batch", "--aggregation", "vote"],
            "use --aggregation mean,weighted",
        ),
    ] {
        let out = blindfold(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(needle), "{args:?}: {err}");
    }
}
