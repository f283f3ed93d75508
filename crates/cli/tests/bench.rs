//! `blindfold bench bootstrap` on the small insecure preset: it runs, reports what the issue
//! asks for (a deep circuit included), and refuses bad settings.

use std::process::Command;

fn blindfold(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_blindfold")).args(args).output().expect("runs")
}

#[test]
fn bench_bootstrap_reports_time_precision_levels_keys_and_memory() {
    let json = std::env::temp_dir().join(format!("blindfold-bench-{}.json", std::process::id()));
    let out = blindfold(&[
        "bench",
        "bootstrap",
        "--preset",
        "N4096_BOOT_LEFT2_INSECURE",
        "--runs",
        "1",
        "--threads",
        "1",
        "--deep-levels",
        "20",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    std::fs::remove_file(&json).ok();
    assert_eq!(r["preset"], "N4096_BOOT_LEFT2_INSECURE");
    assert_eq!(r["secure_128bit"], false);
    assert_eq!(r["levels_left"], 2);
    assert_eq!(r["threads"], 1);
    assert!(r["precision_bits_worst"].as_f64().unwrap() > 12.0, "{r}");
    assert!(r["precision_bits_mean"].as_f64().unwrap() > r["precision_bits_worst"].as_f64().unwrap());
    assert!(r["key_bytes"].as_u64().unwrap() > r["key_bytes_wire"].as_u64().unwrap());
    assert!(r["peak_rss_bytes"].as_u64().unwrap() > 0 && r["bootstrap_s"].as_f64().unwrap() > 0.0);
    // The deep circuit: 20 levels, two a step, a bootstrap before every step (2 levels left).
    assert_eq!(r["deep"]["levels"], 20);
    assert_eq!(r["deep"]["bootstraps"], 9);
    assert!(r["deep"]["precision_bits_worst"].as_f64().unwrap() > 20.0, "{r}");

    for (args, needle) in [
        (&["bench", "bootstrap", "--preset", "N1_NOPE"][..], "N65536_BOOT_LEFT8_128BIT"),
        (&["bench", "bootstrap", "--preset", "N4096_BOOT_LEFT2_INSECURE", "--runs", "0"][..], "--runs"),
    ] {
        let out = blindfold(args);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}
