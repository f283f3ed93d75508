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
    let mut child = blindfold()
        .args(["serve", "--insecure-plaintext", "--listen", "127.0.0.1:0", "--model"])
        .arg(&model)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let _server = Server(child);
    let addr = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("unexpected first line {line:?}"));
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
    let _ = std::fs::remove_dir_all(&dir);
}
