//! `blindfold cryptonn train` end to end on Fashion-MNIST (Debian's `dataset-fashion-mnist`),
//! with small settings: the JSON report's shape, the FE run equal to its plaintext twin, and
//! clear errors.

use std::process::Command;

fn blindfold(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_blindfold")).args(args).output().expect("runs")
}

/// Runs `cryptonn train` with `args` and a JSON report (a temporary file named after `name`),
/// and returns the report.
fn train_report(name: &str, args: &[&str]) -> serde_json::Value {
    let json = std::env::temp_dir().join(format!("blindfold-cli-{name}-{}.json", std::process::id()));
    let json_s = json.display().to_string();
    let all: Vec<&str> =
        ["cryptonn", "train"].iter().chain(args).chain(&["--json", json_s.as_str()]).copied().collect();
    let out = blindfold(&all);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    report
}

#[test]
fn cryptonn_train_reports_each_epoch_next_to_its_twin() {
    let report = train_report(
        "cryptonn",
        &["--mode", "faithful", "--epochs", "2", "--limit", "64", "--batch-size", "32", "--dlog-bound", "1000000"],
    );
    assert_eq!(report["model"], "mlp");
    assert_eq!(report["mode"], "faithful");
    assert_eq!(report["n_train"], 64);
    let epochs = report["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 2);
    for e in epochs {
        // Decryption is exact: the FE run takes the twin's steps.
        assert_eq!(e["encrypted_accuracy"], e["plain_accuracy"], "{e}");
        assert!(e["encrypted_accuracy"].as_f64().unwrap() > 0.0);
        let b = &e["breakdown_seconds"];
        for part in ["encrypt", "key_derivation", "decrypt", "dlog"] {
            assert!(b[part].as_f64().unwrap() > 0.0, "{part}: {b}");
        }
        assert!(e["seconds"].as_f64().unwrap() >= b["decrypt"].as_f64().unwrap());
    }
}

/// LeNet-5: the first convolution through FE, the report names it, the twin's accuracy.
#[test]
fn cryptonn_trains_lenet5() {
    let report = train_report(
        "lenet5",
        &[
            "--model",
            "lenet5",
            "--mode",
            "plain-labels",
            "--epochs",
            "1",
            "--limit",
            "32",
            "--batch-size",
            "16",
            "--dlog-bound",
            "1000000",
        ],
    );
    assert_eq!(report["model"], "lenet5");
    let e = &report["epochs"][0];
    assert_eq!(e["encrypted_accuracy"], e["plain_accuracy"], "{e}");
}

/// `--owners 3 --split dirichlet:0.3`: the owners, the authority and the server as parties
/// exchanging messages — as separate processes over mutual TLS, and in one process — with
/// the twin's accuracy, the bytes per party in the report, and an audit log that verifies.
#[test]
fn cryptonn_trains_with_several_owners() {
    for (name, extra) in [("owners-processes", None), ("owners-in-process", Some("--in-process"))] {
        let log = std::env::temp_dir().join(format!("blindfold-cli-{name}-{}.audit", std::process::id()));
        let log_s = log.display().to_string();
        let mut args = vec![
            "--epochs",
            "1",
            "--limit",
            "96",
            "--batch-size",
            "16",
            "--dlog-bound",
            "1000000",
            "--owners",
            "3",
            "--split",
            "dirichlet:0.3",
            "--audit-log",
            &log_s,
        ];
        args.extend(extra);
        let report = train_report(name, &args);
        let e = &report["epochs"][0];
        assert_eq!(e["encrypted_accuracy"], e["plain_accuracy"], "{name}: {e}");
        assert_eq!(e["skipped_batches"], 0, "{name}");
        let bytes = e["bytes"].as_object().unwrap();
        assert_eq!(bytes.len(), 4, "{name}: {bytes:?}");
        for (party, [sent, received]) in
            bytes.iter().map(|(k, v)| (k, [v[0].as_u64().unwrap(), v[1].as_u64().unwrap()]))
        {
            assert!(
                received > 0 && (sent > 0 || party.starts_with("data owner")),
                "{name}: {party}: {sent} {received}"
            );
        }
        let out = blindfold(&["cryptonn", "audit", &log_s]);
        let _ = std::fs::remove_file(&log);
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("LabelDelta"), "{name}");
    }
}

/// The parties' commands refuse settings that cannot work, before any connection.
#[test]
fn cryptonn_parties_refuse_bad_settings() {
    for (args, message) in [
        (&["authority", "--listen", "127.0.0.1:0"][..], "--insecure-plaintext"),
        (&["authority", "--listen", "127.0.0.1:0", "--mode", "hardened", "--insecure-plaintext"][..], "hardened"),
        (
            &["owner", "--server", "http://127.0.0.1:1", "--authority", "http://127.0.0.1:1", "--shard", "3/3"][..],
            "shard 3 of 3",
        ),
        (
            &["owner", "--server", "http://127.0.0.1:1", "--authority", "http://127.0.0.1:1", "--shard", "1-3"][..],
            "expected I/K",
        ),
        (
            &[
                "owner",
                "--server",
                "http://127.0.0.1:1",
                "--authority",
                "http://127.0.0.1:1",
                "--shard",
                "0/2",
                "--insecure-plaintext",
            ][..],
            "cannot connect to http://127.0.0.1:1",
        ),
        (&["server", "--authority", "http://127.0.0.1:1", "--owners", "0", "--insecure-plaintext"][..], "--owners 0"),
        (
            &[
                "owner",
                "--server",
                "http://127.0.0.1:1",
                "--authority",
                "http://127.0.0.1:1",
                "--shard",
                "0/2",
                "--own-data",
                "--split",
                "iid",
            ][..],
            "cannot be used with",
        ),
    ] {
        let all: Vec<&str> = ["cryptonn"].iter().chain(args).copied().collect();
        let out = blindfold(&all);
        assert!(!out.status.success(), "{args:?} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
}

#[test]
fn cryptonn_train_refuses_what_it_cannot_do() {
    for (args, message) in [
        (&["--model", "resnet"][..], "supports mlp"),
        (&["--limit", "0"][..], "--limit 0"),
        (&["--precision", "16"][..], "decimal digits"),
        (&["--mode", "everything"][..], "invalid value"),
        (
            &["--mode", "hardened", "--batch-size", "64", "--limit", "100", "--dlog-bound", "1000"][..],
            "at least 130 examples",
        ),
        (&["--model", "lenet5", "--mode", "hardened"][..], "hardened mode trains the MLP only"),
        (&["--mode", "hardened", "--owners", "2", "--limit", "300"][..], "--owners runs the faithful"),
        (&["--owners", "0"][..], "0 holders"),
        (&["--owners", "2", "--split", "pareto"][..], "expected iid"),
    ] {
        let all: Vec<&str> = ["cryptonn", "train"].iter().chain(args).copied().collect();
        let out = blindfold(&all);
        assert!(!out.status.success(), "{args:?} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
}

/// `--audit-log` persists every key the authority issued, the label keys of faithful mode
/// included; `cryptonn audit` verifies the chain and counts the keys, and names the record
/// where a changed byte breaks it; an existing log is never overwritten.
#[test]
fn the_audit_log_is_persisted_and_verified_offline() {
    let dir = std::env::temp_dir().join(format!("blindfold-cli-audit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("audit.log");
    let log_s = log.display().to_string();
    let args = ["--epochs", "1", "--limit", "64", "--batch-size", "32", "--dlog-bound", "1000000", "--audit-log"];
    train_report("audit", &[&args[..], &[log_s.as_str()]].concat());
    let out = blindfold(&["cryptonn", "audit", &log_s]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    // 64 examples in 2 batches: 128 forward and 128 gradient keys per batch, 10 label keys
    // per example.
    assert!(text.contains("1152 records, hash chain intact"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("LabelDelta") && l.contains(" 640 ")), "{text}");
    let mut bytes = std::fs::read(&log).unwrap();
    bytes[8 + 89 * 700 + 60] ^= 0x10;
    let bad = dir.join("changed.log");
    std::fs::write(&bad, &bytes).unwrap();
    let out = blindfold(&["cryptonn", "audit", &bad.display().to_string()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("record 700: the hash chain breaks"), "{out:?}");
    let out = blindfold(&["cryptonn", "train", "--epochs", "1", "--limit", "32", "--audit-log", &log_s]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("never overwritten"), "{out:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
