//! Dataset readers for blindfold: the IDX format of MNIST, Fashion-MNIST and KMNIST
//! (LeCun et al., "The MNIST database", IDX file format), gzip-compressed or raw.
//!
//! The three datasets share file names (`train-images-idx3-ubyte.gz`, …), so a dataset is a
//! name plus a directory. Every malformed input — a missing, truncated or corrupt file, a
//! wrong magic number, inconsistent counts — is an [`Error`] that names the file and what was
//! wrong; nothing panics on file contents.
#![forbid(unsafe_code)]

mod partition;

pub use partition::{class_histogram, partition, Partition};

use flate2::read::GzDecoder;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Largest decompressed IDX file accepted (the MNIST training images are 47 MB).
pub const MAX_IDX_BYTES: u64 = 512 << 20;

/// What went wrong reading a dataset file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Neither `NAME.gz` nor `NAME` exists in the directory.
    #[error("{path}: file not found (looked for it with and without .gz){hint}")]
    Missing {
        /// The path looked for (with `.gz`).
        path: PathBuf,
        /// How to get the data.
        hint: String,
    },
    /// The file could not be read or decompressed.
    #[error("{path}: {reason}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        reason: String,
    },
    /// The contents are not a valid IDX file of the expected kind.
    #[error("{path}: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// Images and labels disagree.
    #[error("{images} has {n_images} images but {labels} has {n_labels} labels")]
    CountMismatch {
        /// Images file.
        images: PathBuf,
        /// Number of images.
        n_images: usize,
        /// Labels file.
        labels: PathBuf,
        /// Number of labels.
        n_labels: usize,
    },
    /// An unknown dataset name.
    #[error("unknown dataset {0:?}: expected mnist, fashion-mnist or kmnist")]
    UnknownDataset(String),
    /// An invalid argument (a split that cannot be made, a malformed split name).
    #[error("{0}")]
    Invalid(String),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// The datasets blindfold reads. All three are 28×28 grayscale images in 10 classes with
/// the same IDX file names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dataset {
    /// Handwritten digits (LeCun, Cortes, Burges).
    Mnist,
    /// Zalando's article images (Xiao, Rasul, Vollgraf 2017).
    FashionMnist,
    /// Kuzushiji-MNIST, cursive Japanese (Clanuwat et al. 2018).
    Kmnist,
}

impl Dataset {
    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Mnist => "mnist",
            Self::FashionMnist => "fashion-mnist",
            Self::Kmnist => "kmnist",
        }
    }

    /// Where the data is expected when no directory is given: Debian's
    /// `dataset-fashion-mnist` package for Fashion-MNIST, `../shared/data/<name>` otherwise.
    pub fn default_dir(self) -> PathBuf {
        match self {
            Self::FashionMnist => PathBuf::from("/usr/share/datasets/fashion-mnist"),
            other => PathBuf::from("../shared/data").join(other.name()),
        }
    }

    fn install_hint(self) -> String {
        match self {
            Self::FashionMnist => "; install it with `apt-get install dataset-fashion-mnist`".into(),
            Self::Mnist => "; MNIST ships in ../shared/data/mnist (pass --data-dir)".into(),
            Self::Kmnist => "; put the four KMNIST IDX files there (pass --data-dir)".into(),
        }
    }

    /// Class names, for reports.
    pub fn class_names(self) -> [&'static str; 10] {
        match self {
            Self::FashionMnist => [
                "T-shirt/top",
                "Trouser",
                "Pullover",
                "Dress",
                "Coat",
                "Sandal",
                "Shirt",
                "Sneaker",
                "Bag",
                "Ankle boot",
            ],
            Self::Kmnist => ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"],
            Self::Mnist => ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
        }
    }
}

impl FromStr for Dataset {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "mnist" => Ok(Self::Mnist),
            "fashion-mnist" | "fashion_mnist" | "fashionmnist" => Ok(Self::FashionMnist),
            "kmnist" => Ok(Self::Kmnist),
            _ => Err(Error::UnknownDataset(s.to_string())),
        }
    }
}

impl fmt::Display for Dataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Training or test part of a dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// 60,000 images.
    Train,
    /// 10,000 images.
    Test,
}

impl Split {
    fn prefix(self) -> &'static str {
        match self {
            Self::Train => "train",
            Self::Test => "t10k",
        }
    }
}

/// Grayscale images stored row-major, one byte per pixel (0 = background).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Images {
    /// Number of images.
    pub count: usize,
    /// Rows per image.
    pub rows: usize,
    /// Columns per image.
    pub cols: usize,
    /// `count · rows · cols` bytes; image `i` is `pixels[i·rows·cols..(i+1)·rows·cols]`.
    pub pixels: Vec<u8>,
}

impl Images {
    /// The pixels of image `i` (`rows · cols` bytes).
    ///
    /// # Panics
    /// If `i >= count`.
    pub fn image(&self, i: usize) -> &[u8] {
        let s = self.rows * self.cols;
        &self.pixels[i * s..(i + 1) * s]
    }
}

/// Images with their labels (`labels[i]` in `0..10` for image `i`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabeledImages {
    /// The images.
    pub images: Images,
    /// One label per image.
    pub labels: Vec<u8>,
}

impl LabeledImages {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The first `n` examples (all of them if `n` is larger).
    pub fn truncate(mut self, n: usize) -> Self {
        let n = n.min(self.len());
        self.labels.truncate(n);
        self.images.count = n;
        self.images.pixels.truncate(n * self.images.rows * self.images.cols);
        self
    }
}

/// Finds `name.gz` or `name` in `dir`.
fn locate(dir: &Path, name: &str, dataset: Option<Dataset>) -> Result<PathBuf> {
    let gz = dir.join(format!("{name}.gz"));
    if gz.is_file() {
        return Ok(gz);
    }
    let raw = dir.join(name);
    if raw.is_file() {
        return Ok(raw);
    }
    Err(Error::Missing { path: gz, hint: dataset.map(Dataset::install_hint).unwrap_or_default() })
}

/// Reads a whole file, gunzipping it if its name ends in `.gz`, with a size limit.
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let io = |e: std::io::Error| Error::Io { path: path.to_path_buf(), reason: e.to_string() };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut out = Vec::new();
    let gz = path.extension().is_some_and(|e| e == "gz");
    let read = if gz {
        GzDecoder::new(file).take(MAX_IDX_BYTES + 1).read_to_end(&mut out)
    } else {
        file.take(MAX_IDX_BYTES + 1).read_to_end(&mut out)
    };
    read.map_err(|e| Error::Io {
        path: path.to_path_buf(),
        reason: if gz { format!("corrupt or truncated gzip data: {e}") } else { e.to_string() },
    })?;
    if out.len() as u64 > MAX_IDX_BYTES {
        return Err(Error::Malformed {
            path: path.to_path_buf(),
            reason: format!("larger than the {MAX_IDX_BYTES}-byte limit"),
        });
    }
    Ok(out)
}

/// Parses an IDX header of unsigned bytes with `dims` dimensions; returns the dimensions and
/// the data that follows, checked to be exactly their product.
fn parse_idx<'a>(path: &Path, bytes: &'a [u8], dims: usize) -> Result<(Vec<usize>, &'a [u8])> {
    let bad = |reason: String| Error::Malformed { path: path.to_path_buf(), reason };
    let header = 4 + 4 * dims;
    if bytes.len() < header {
        return Err(bad(format!("{} bytes, too short for an IDX header of {dims} dimensions", bytes.len())));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad("not an IDX file (the magic number must start with two zero bytes)".into()));
    }
    if bytes[2] != 0x08 {
        return Err(bad(format!("element type 0x{:02x}, expected unsigned bytes (0x08)", bytes[2])));
    }
    if bytes[3] as usize != dims {
        return Err(bad(format!("{} dimensions, expected {dims}", bytes[3])));
    }
    let shape: Vec<usize> = (0..dims)
        .map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as usize)
        .collect();
    let expected = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    let data = &bytes[header..];
    match expected {
        Some(e) if e == data.len() => Ok((shape, data)),
        Some(e) if e > data.len() => {
            Err(bad(format!("truncated: header announces {e} data bytes, {} present", data.len())))
        }
        Some(e) => Err(bad(format!("{} bytes after the {e} the header announces", data.len() - e))),
        None => Err(bad("dimensions overflow".into())),
    }
}

/// Reads an IDX3 image file (`.gz` or raw).
///
/// # Errors
/// [`Error::Io`] if the file cannot be read or decompressed, [`Error::Malformed`] if it is
/// not a well-formed IDX3 file of unsigned bytes.
pub fn read_images(path: &Path) -> Result<Images> {
    let bytes = read_maybe_gz(path)?;
    let (shape, data) = parse_idx(path, &bytes, 3)?;
    if shape[1] == 0 || shape[2] == 0 {
        return Err(Error::Malformed { path: path.to_path_buf(), reason: "images of zero size".into() });
    }
    Ok(Images { count: shape[0], rows: shape[1], cols: shape[2], pixels: data.to_vec() })
}

/// Reads an IDX1 label file (`.gz` or raw); labels must be below 10.
///
/// # Errors
/// As [`read_images`]; [`Error::Malformed`] for a label of 10 or more.
pub fn read_labels(path: &Path) -> Result<Vec<u8>> {
    let bytes = read_maybe_gz(path)?;
    let (_, data) = parse_idx(path, &bytes, 1)?;
    if let Some(i) = data.iter().position(|&l| l >= 10) {
        return Err(Error::Malformed {
            path: path.to_path_buf(),
            reason: format!("label {} at index {i} is not a class 0..9", data[i]),
        });
    }
    Ok(data.to_vec())
}

/// Loads one split of a dataset from `dir` (files `train-…`/`t10k-…`, `.gz` or raw).
///
/// # Errors
/// [`Error::Missing`] naming the file and how to get it; the errors of [`read_images`] and
/// [`read_labels`]; [`Error::CountMismatch`] if the counts differ.
pub fn load(dataset: Dataset, dir: &Path, split: Split) -> Result<LabeledImages> {
    load_files(dir, split, Some(dataset))
}

/// [`load`] for a directory of IDX files of any dataset.
///
/// # Errors
/// As [`load`].
pub fn load_dir(dir: &Path, split: Split) -> Result<LabeledImages> {
    load_files(dir, split, None)
}

fn load_files(dir: &Path, split: Split, dataset: Option<Dataset>) -> Result<LabeledImages> {
    let images_path = locate(dir, &format!("{}-images-idx3-ubyte", split.prefix()), dataset)?;
    let labels_path = locate(dir, &format!("{}-labels-idx1-ubyte", split.prefix()), dataset)?;
    let images = read_images(&images_path)?;
    let labels = read_labels(&labels_path)?;
    if images.count != labels.len() {
        return Err(Error::CountMismatch {
            images: images_path,
            n_images: images.count,
            labels: labels_path,
            n_labels: labels.len(),
        });
    }
    Ok(LabeledImages { images, labels })
}
