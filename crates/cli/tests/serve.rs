//! `blindfold serve` and `blindfold client` as separate processes over loopback. Uses
//! Fashion-MNIST from Debian's `dataset-fashion-mnist` package.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn blindfold() -> Command {
    Command::new(env!("CARGO_BIN_EXE_blindfold"))
}

/// Kills the server when the test ends, however it ends.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A plaintext-gRPC server of `model` on a free loopback port (with `args`), and its address.
fn serve(model: &std::path::Path, args: &[&str]) -> (Server, String) {
    let mut child = blindfold()
        .args(["serve", "--insecure-plaintext", "--listen", "127.0.0.1:0"])
        .args(args)
        .arg("--model")
        .arg(model)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let server = Server(child);
    let addr = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    (server, addr.to_string())
}

#[test]
fn a_client_process_classifies_on_a_server_process() {
    let dir = std::env::temp_dir().join(format!("blindfold-cli-serve-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("m.safetensors");
    let out = blindfold()
        .args(["train", "--arch", "tenseal-cnn1", "--epochs", "1", "--limit", "2000", "--out"])
        .arg(&model)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (_server, addr) = serve(&model, &[]);
    let report = dir.join("remote.json");
    let out = blindfold()
        .args(["client", "--server", &format!("http://{addr}"), "infer", "--n-test", "5", "--json"])
        .arg(&report)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["n"], 5);
    assert!(r["encrypted_accuracy"].as_f64().unwrap() >= 0.4, "{r}");
    assert!(r["bytes"]["request"].as_u64().unwrap() > 100_000);
    assert_eq!(r["parameters"], "N8192_DEPTH5_128BIT");
    // The same images on one stream.
    let out = blindfold()
        .args(["client", "--server", &format!("http://{addr}"), "infer", "--n-test", "5", "--stream", "--json"])
        .arg(&report)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(s["streamed"], true);
    assert_eq!(s["encrypted_accuracy"], r["encrypted_accuracy"], "the same images, the same classes");
    // Three concurrent clients, each with its own keys: every reply decrypts, and to the
    // same class each time its request comes again.
    let out = blindfold()
        .args(["client", "--server", &format!("http://{addr}"), "load", "--clients", "3", "--images", "6", "--json"])
        .arg(&report)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let l: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(
        (l["requests"].as_u64(), l["errors"].as_u64(), l["inconsistent"].as_u64()),
        (Some(18), Some(0), Some(0))
    );
    // Every kind of malformed request refused with its status; the server still classifies.
    let out = blindfold()
        .args(["client", "--server", &format!("http://{addr}"), "abuse", "--requests", "24", "--clients", "2"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(text.matches("3 refused with the right status, 0 not").count(), 8, "{text}");
    // Without TLS or the flag that asks for plaintext, the server does not start.
    let out = blindfold().args(["serve", "--listen", "127.0.0.1:0", "--model"]).arg(&model).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--insecure-plaintext"));
    // Nothing listening: a clear error, not a hang.
    let out =
        blindfold().args(["client", "--server", "http://127.0.0.1:1", "infer", "--n-test", "1"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect to http://127.0.0.1:1"));
    circuit_private_server_and_in_process_run(&model, &dir);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Circuit privacy on CKKS: a server that masks, re-randomizes and floods its responses (the
/// client's keys then carry its public key), and the same in one process.
fn circuit_private_server_and_in_process_run(model: &std::path::Path, dir: &std::path::Path) {
    let (_server, addr) = serve(model, &["--circuit-privacy", "12"]);
    let report = dir.join("private.json");
    let out = blindfold()
        .args(["client", "--server", &format!("http://{addr}"), "infer", "--n-test", "3", "--json"])
        .arg(&report)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["n"], 3);
    // One more level (the mask) and the largest scale of a larger ring.
    assert_eq!(r["depth"], 6, "{r}");
    assert!(r["parameters"].as_str().unwrap().starts_with("N16384_DEPTH6"), "{r}");
    let out = blindfold()
        .args(["infer", "--n-test", "3", "--circuit-privacy", "12", "--json"])
        .arg(&report)
        .arg("--model")
        .arg(model)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("12-bit statistical (responses masked to the scores"), "{stdout}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["circuit_privacy_bits"], 12, "{r}");
    let width = r["flooding_width"].as_f64().unwrap();
    assert!(width > 0.0 && width <= 1.0 / 128.0, "{r}");
    assert_eq!(r["agreement"], 1.0, "{r}");
    // A λ beyond what the network's precision holds: refused, naming what it allows.
    let out =
        blindfold().args(["infer", "--n-test", "1", "--circuit-privacy", "60", "--model"]).arg(model).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("allows λ up to"));
}
