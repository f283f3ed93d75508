//! IDX reading on files the test writes itself (raw and gzip, valid and broken), and on the
//! real Fashion-MNIST test set from Debian's `dataset-fashion-mnist` package.

use blindfold_data::*;
use flate2::write::GzEncoder;
use std::io::Write;
use std::path::{Path, PathBuf};

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("blindfold-data-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

fn write(path: &Path, bytes: &[u8], gz: bool) {
    if gz {
        let mut e = GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(bytes).unwrap();
        std::fs::write(path, e.finish().unwrap()).unwrap();
    } else {
        std::fs::write(path, bytes).unwrap();
    }
}

fn write_set(dir: &Path, prefix: &str, n: u32, gz: bool) -> (Vec<u8>, Vec<u8>) {
    let pixels: Vec<u8> = (0..n * 4 * 3).map(|i| (i * 7 % 256) as u8).collect();
    let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    let ext = if gz { ".gz" } else { "" };
    write(&dir.join(format!("{prefix}-images-idx3-ubyte{ext}")), &idx(&[n, 4, 3], &pixels), gz);
    write(&dir.join(format!("{prefix}-labels-idx1-ubyte{ext}")), &idx(&[n], &labels), gz);
    (pixels, labels)
}

#[test]
fn reads_raw_and_gzip_files() {
    for gz in [false, true] {
        let dir = temp_dir(if gz { "gz" } else { "raw" });
        let (pixels, labels) = write_set(&dir, "t10k", 5, gz);
        let set = load_dir(&dir, Split::Test).unwrap();
        assert_eq!((set.images.count, set.images.rows, set.images.cols), (5, 4, 3));
        assert_eq!(set.images.pixels, pixels);
        assert_eq!(set.labels, labels);
        assert_eq!(set.images.image(1), &pixels[12..24]);
        assert_eq!(set.truncate(2).len(), 2);
    }
}

fn expect_err(dir: &Path, needle: &str) {
    let err = load_dir(dir, Split::Train).unwrap_err().to_string();
    assert!(err.contains(needle), "error {err:?} lacks {needle:?}");
}

#[test]
fn broken_files_give_clear_errors() {
    // Missing files name the file looked for.
    let dir = temp_dir("missing");
    expect_err(&dir, "train-images-idx3-ubyte.gz: file not found");
    let err = load(Dataset::FashionMnist, &dir, Split::Train).unwrap_err().to_string();
    assert!(err.contains("apt-get install dataset-fashion-mnist"), "{err}");

    // Truncated data.
    let dir = temp_dir("truncated");
    write_set(&dir, "train", 3, false);
    let p = dir.join("train-images-idx3-ubyte");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 5]).unwrap();
    expect_err(&dir, "truncated: header announces 36 data bytes, 31 present");
    std::fs::write(&p, &bytes[..10]).unwrap();
    expect_err(&dir, "too short for an IDX header");

    // Wrong magic, wrong element type, wrong dimension count.
    for (i, v, needle) in
        [(0usize, 1u8, "not an IDX file"), (2, 0x0d, "element type 0x0d"), (3, 2, "2 dimensions, expected 3")]
    {
        let mut b = bytes.clone();
        b[i] = v;
        std::fs::write(&p, &b).unwrap();
        expect_err(&dir, needle);
    }

    // Corrupt gzip.
    let dir = temp_dir("corrupt");
    write_set(&dir, "train", 3, true);
    let p = dir.join("train-images-idx3-ubyte.gz");
    let mut b = std::fs::read(&p).unwrap();
    let mid = b.len() / 2;
    b.truncate(mid);
    std::fs::write(&p, &b).unwrap();
    expect_err(&dir, "corrupt or truncated gzip data");

    // Counts that disagree, and labels out of range.
    let dir = temp_dir("mismatch");
    write_set(&dir, "train", 3, false);
    write(&dir.join("train-labels-idx1-ubyte"), &idx(&[2], &[1, 2]), false);
    expect_err(&dir, "has 3 images but");
    write(&dir.join("train-labels-idx1-ubyte"), &idx(&[3], &[1, 12, 2]), false);
    expect_err(&dir, "label 12 at index 1");
}

#[test]
fn dataset_names_parse() {
    assert_eq!("fashion-mnist".parse::<Dataset>().unwrap(), Dataset::FashionMnist);
    assert_eq!("MNIST".parse::<Dataset>().unwrap(), Dataset::Mnist);
    assert!("cifar".parse::<Dataset>().unwrap_err().to_string().contains("expected mnist"));
}

#[test]
fn reads_the_real_fashion_mnist_test_set() {
    let dir = Dataset::FashionMnist.default_dir();
    let set = load(Dataset::FashionMnist, &dir, Split::Test)
        .unwrap_or_else(|e| panic!("{e} (the test command installs it: see README)"));
    assert_eq!(set.len(), 10_000);
    assert_eq!((set.images.rows, set.images.cols), (28, 28));
    let mut hist = [0usize; 10];
    for &l in &set.labels {
        hist[l as usize] += 1;
    }
    assert!(hist.iter().all(|&c| c == 1000), "{hist:?}");
}
