//! Function keys are derived by the key authority only: across the repository's sources,
//! outside the FE crate that defines the schemes, a master secret key's `derive` is called in
//! exactly two places, both in the authority (`KeyAuthority::issue` for inner-product keys,
//! `derive_label_key` for the FEBO label keys, which `TrainingAuthority::issue_label_keys`
//! logs).

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if !matches!(path.file_name().and_then(|n| n.to_str()), Some("target" | ".git" | "fe")) {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn only_the_authority_derives_function_keys() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files = Vec::new();
    for dir in ["crates", "python", "examples"] {
        if root.join(dir).is_dir() {
            rust_files(&root.join(dir), &mut files);
        }
    }
    assert!(files.len() > 50, "the sources were not found ({} files)", files.len());
    let mut calls = Vec::new();
    // (This file names the patterns it looks for.)
    for path in files.iter().filter(|p| !p.ends_with("protocol/tests/key_derivation.rs")) {
        let text = std::fs::read_to_string(path).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if code.contains(".derive(") || code.contains("::derive(") {
                let name = path.strip_prefix(&root).unwrap().display().to_string();
                calls.push((name, n + 1, line.trim().to_string()));
            }
        }
    }
    let outside: Vec<_> = calls.iter().filter(|(f, _, _)| f != "crates/protocol/src/cryptonn/authority.rs").collect();
    assert!(outside.is_empty(), "function keys derived outside the authority: {outside:?}");
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(calls.iter().any(|(_, _, l)| l.contains("self.msk.derive(v)")), "{calls:?}");
    assert!(calls.iter().any(|(_, _, l)| l.contains("msk.derive(ct.commitment()")), "{calls:?}");
}
