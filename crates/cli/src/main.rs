//! `blindfold`: run neural networks on images the server cannot read.

use anyhow::Result;
use blindfold_data::{load, Dataset, LabeledImages, Split};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

mod bench;
mod cryptonn;
mod cryptonn_net;
mod ensemble;
mod files;
mod import;
mod infer;
mod params;
mod progress;
mod remote;
mod report;
mod sweep;
mod train;

/// Encrypted neural-network inference with CKKS homomorphic encryption.
///
/// A client encrypts an image under its own key; a model holder evaluates a convolutional
/// network on the ciphertext with public evaluation keys only; the client decrypts the
/// prediction. Parameters are 128-bit secure (HomomorphicEncryption.org standard).
#[derive(Parser)]
#[command(name = "blindfold", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The main job in one process: train (or load a cached model), then classify test images
    /// under encryption and compare with the plaintext model.
    Demo(infer::DemoArgs),
    /// Train a model in plaintext and write it as a safetensors file.
    Train(train::TrainArgs),
    /// Classify test images under encryption with a trained model.
    Infer(infer::InferArgs),
    /// Encrypted ensemble: several model holders trained on their own shares of the data, a
    /// coordinator combining their encrypted scores; one row per data split.
    Ensemble(ensemble::EnsembleArgs),
    /// Encrypted accuracy, agreement and latency across scale bits and ring degrees: a CSV and
    /// two SVG charts. Points that cannot be 128-bit secure are skipped, with the reason.
    Sweep(sweep::SweepArgs),
    /// CryptoNN: training over data encrypted with functional encryption.
    #[command(subcommand)]
    Cryptonn(cryptonn::CryptonnCommand),
    /// Model holder as a network service (gRPC): clients fetch the plan, upload their
    /// evaluation keys once and send encrypted images; the secret key never leaves them.
    Serve(remote::ServeArgs),
    /// Ensemble coordinator as a network service: clients talk to it as to a model holder;
    /// it forwards their keys and images to every holder and returns the mean of their
    /// encrypted scores, naming holders that missed the deadline.
    Coordinate(remote::CoordinateArgs),
    /// Client of a model holder on the network (`blindfold serve`).
    Client(remote::ClientArgs),
    /// Import an ONNX model (e.g. from `torch.onnx.export`) into a blindfold model file.
    /// Every command that takes --model also reads .onnx files directly; importing once
    /// fixes the calibration of --replace-activation.
    Import(import::ImportCmdArgs),
    /// Show what a model becomes before anything is encrypted: its layers (and the ONNX
    /// nodes they came from), the circuit's depth, parameters, keys and cost per image.
    Inspect(import::InspectArgs),
    /// Measurements of the scheme layer on this machine (e.g. `bench bootstrap`).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// List the CKKS parameter presets and the 128-bit bound each is checked against.
    Params {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Client: make keys for a model's architecture; writes secret.key (keep it), eval.keys
    /// and plan.json (send those to the model holder).
    Keygen {
        /// The model file (blindfold's or ONNX; only its architecture is read) or a built-in
        /// architecture name.
        #[arg(long)]
        model: String,
        #[command(flatten)]
        import: import::ImportArgs,
        /// Directory for the key files.
        #[arg(long)]
        out_dir: PathBuf,
    },
    /// Client: encrypt one test image into a request file.
    Encrypt {
        /// Directory written by `keygen`.
        #[arg(long)]
        keys: PathBuf,
        #[command(flatten)]
        data: DataArgs,
        /// Index of the test image.
        #[arg(long, default_value_t = 0)]
        index: usize,
        /// Output request file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Model holder: evaluate the model on a request with the client's evaluation keys
    /// (public keys only) and write the encrypted scores.
    Evaluate {
        /// The trained model (blindfold's model file or ONNX).
        #[arg(long)]
        model: PathBuf,
        #[command(flatten)]
        import: import::ImportArgs,
        /// The client's eval.keys.
        #[arg(long)]
        eval_keys: PathBuf,
        /// The request written by `encrypt`.
        #[arg(long)]
        input: PathBuf,
        /// Output file of encrypted scores.
        #[arg(long)]
        out: PathBuf,
    },
    /// Client: decrypt encrypted scores and print the predicted class.
    Decrypt {
        /// Directory written by `keygen`.
        #[arg(long)]
        keys: PathBuf,
        /// The scores written by `evaluate`.
        #[arg(long)]
        input: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Clone)]
pub(crate) struct DataArgs {
    /// Dataset: mnist, fashion-mnist or kmnist.
    #[arg(long, default_value = "fashion-mnist")]
    pub(crate) dataset: Dataset,
    /// Directory with the four IDX files (.gz or raw). Default: Fashion-MNIST from Debian's
    /// dataset-fashion-mnist package, `../shared/data/DATASET` otherwise.
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
}

impl DataArgs {
    pub(crate) fn dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| self.dataset.default_dir())
    }
    pub(crate) fn load(&self, split: Split) -> Result<LabeledImages> {
        Ok(load(self.dataset, &self.dir(), split)?)
    }
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(a) => infer::demo(a),
        Command::Train(a) => train::train_cmd(a).map(|_| ()),
        Command::Infer(a) => infer::infer_cmd(a),
        Command::Ensemble(a) => ensemble::ensemble_cmd(a),
        Command::Sweep(a) => sweep::sweep_cmd(a),
        Command::Cryptonn(c) => cryptonn::cryptonn_cmd(c),
        Command::Serve(a) => remote::serve_cmd(a),
        Command::Coordinate(a) => remote::coordinate_cmd(a),
        Command::Client(a) => remote::client_cmd(a),
        Command::Params { json } => params::params_cmd(json),
        Command::Bench(c) => bench::bench_cmd(c),
        Command::Import(a) => import::import_cmd(a),
        Command::Inspect(a) => import::inspect_cmd(a),
        Command::Keygen { model, import, out_dir } => files::keygen_cmd(&model, &import, &out_dir),
        Command::Encrypt { keys, data, index, out } => files::encrypt_cmd(&keys, &data, index, &out),
        Command::Evaluate { model, import, eval_keys, input, out } => {
            files::evaluate_cmd(&model, &import, &eval_keys, &input, &out)
        }
        Command::Decrypt { keys, input, json } => files::decrypt_cmd(&keys, &input, json),
    };
    if let Err(e) = result {
        // A server's refusal: its message, then the gRPC status it came with.
        match e.downcast_ref::<tonic::Status>() {
            Some(s) => eprintln!("error: {} (status {:?})", s.message(), s.code()),
            None => eprintln!("error: {e:#}"),
        }
        std::process::exit(1);
    }
}
