//! The report of encrypted inference: what `demo`, `infer` and `sweep` print and write as JSON.

use serde::Serialize;

#[derive(Serialize)]
pub(crate) struct Percentiles {
    pub(crate) p50: f64,
    pub(crate) p95: f64,
}

#[derive(Serialize)]
pub(crate) struct ClientMs {
    pub(crate) encrypt_p50: f64,
    pub(crate) decrypt_p50: f64,
}

#[derive(Serialize)]
pub(crate) struct Bytes {
    pub(crate) ciphertext_in: usize,
    pub(crate) ciphertext_out: usize,
    pub(crate) eval_keys: usize,
    /// The largest evaluation-keys message the model holder accepts for this plan.
    pub(crate) max_eval_keys: usize,
    /// The largest request the model holder accepts for this plan.
    pub(crate) max_request: usize,
}

#[derive(Serialize)]
pub(crate) struct ParamsReport {
    pub(crate) log_n: u32,
    pub(crate) log_qp: f64,
    pub(crate) security_bits: u32,
    pub(crate) preset: String,
}

#[derive(Serialize)]
pub(crate) struct Report {
    pub(crate) dataset: String,
    pub(crate) arch: String,
    pub(crate) n: usize,
    pub(crate) plain_accuracy: f64,
    pub(crate) encrypted_accuracy: f64,
    pub(crate) agreement: f64,
    pub(crate) server_ms: Percentiles,
    pub(crate) client_ms: ClientMs,
    pub(crate) bytes: Bytes,
    pub(crate) params: ParamsReport,
    pub(crate) threads: usize,
    pub(crate) parallel_images: usize,
    pub(crate) depth: usize,
    pub(crate) rotation_keys: usize,
    pub(crate) input_ciphertexts: usize,
    /// The circuit's stages: levels, rotations, products of each.
    pub(crate) stages: Vec<blindfold_tensor::StageCost>,
    /// `ckks` or `bfv`.
    pub(crate) scheme: String,
    /// `single` (one image per evaluation, spread over the slots) or `batch` (slot `s` of
    /// every ciphertext is image `s`).
    pub(crate) packing: String,
    /// Images per evaluation (the slots, in batch packing).
    pub(crate) batch_size: usize,
    /// Server time of one evaluation, median over the evaluations (seconds).
    pub(crate) batch_latency_s: f64,
    /// Test images over the wall time of the whole run (client and server work included).
    pub(crate) images_per_second: f64,
    /// Batch packing: test images over the model holder's evaluation time alone, summed over
    /// the batches (a part-empty last batch included).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) server_images_per_second: Option<f64>,
    /// BFV: the share of images whose decrypted integer scores equal the integer twin's
    /// exactly (every score).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) exact_scores: Option<f64>,
    /// BFV: the plaintext primes (CRT components; one evaluation each).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) plaintext_moduli: Vec<u64>,
    /// The statistical security (bits) of the response's circuit privacy; `null`: none
    /// (switched off, or CKKS batch).
    pub(crate) circuit_privacy_bits: Option<u32>,
    /// CKKS circuit privacy: the standard deviation the flooding adds to each score.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) flooding_width: Option<f64>,
    /// Batch packing: server seconds per stage, summed over the batches.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) stage_seconds: Vec<f64>,
    /// ReLU fits: fitted range against the pre-activations of the first 1,000 test images.
    pub(crate) activation_ranges: Vec<blindfold_nn::ActivationRange>,
    /// The decrypted scores of each image (`infer --logits-out`; not in the JSON report).
    #[serde(skip)]
    pub(crate) scores: Vec<Vec<f64>>,
}

pub(crate) fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

pub(crate) fn print_report(report: &Report) {
    eprintln!(
        "circuit: depth {}, {} rotation keys, {} input ciphertext(s), parameters {}",
        report.depth, report.rotation_keys, report.input_ciphertexts, report.params.preset
    );
    for (i, s) in report.stages.iter().enumerate() {
        if let Some(secs) = report.stage_seconds.get(i) {
            eprintln!("  {:<70} levels {}, constant products {:>7}, {secs:.2} s", s.name, s.levels, s.plain_products);
            continue;
        }
        eprintln!(
            "  {:<70} levels {}, key switches {:>2} ({} hoisted), plaintext products {:>3}",
            s.name,
            s.levels,
            s.key_switches(),
            s.hoisted_rotations,
            s.plain_products
        );
    }
    println!("{:<22} {}", "dataset", report.dataset);
    println!("{:<22} {}", "architecture", report.arch);
    println!("{:<22} {}", "test images", report.n);
    println!("{:<22} {:.2}%", "plaintext accuracy", 100.0 * report.plain_accuracy);
    println!("{:<22} {:.2}%", "encrypted accuracy", 100.0 * report.encrypted_accuracy);
    println!("{:<22} {:.2}%", "agreement", 100.0 * report.agreement);
    println!(
        "{:<22} p50 {:.1} ms, p95 {:.1} ms ({} threads, {} image(s) at a time)",
        "server per image", report.server_ms.p50, report.server_ms.p95, report.threads, report.parallel_images
    );
    if let Some(exact) = report.exact_scores {
        println!(
            "{:<22} {:.2}% of images (BFV scores = the integer network's; plaintext primes {:?})",
            "exact scores",
            100.0 * exact,
            report.plaintext_moduli
        );
    }
    println!(
        "{:<22} {}",
        "circuit privacy",
        match (report.circuit_privacy_bits, report.flooding_width) {
            (Some(l), Some(w)) => format!(
                "{l}-bit statistical (responses masked to the scores, re-randomized and flooded: each score carries \
                 Gaussian noise of standard deviation {w:.1e})"
            ),
            (Some(l), None) => format!("{l}-bit statistical (responses re-randomized and flooded)"),
            (None, _) => "off (the decryption shows noise that depends on the weights)".into(),
        }
    );
    if report.packing == "batch" {
        println!(
            "{:<22} {:.0} images/s over the run, {:.0} images/s of server time; {} images per batch, server {:.2} s per batch (p50)",
            "throughput",
            report.images_per_second,
            report.server_images_per_second.unwrap_or(0.0),
            report.batch_size,
            report.batch_latency_s
        );
    }
    println!(
        "{:<22} encrypt {:.1} ms, decrypt {:.1} ms (p50)",
        "client per image", report.client_ms.encrypt_p50, report.client_ms.decrypt_p50
    );
    println!(
        "{:<22} in {:.2} MB, out {:.2} MB, evaluation keys {:.1} MB",
        "traffic",
        report.bytes.ciphertext_in as f64 / 1e6,
        report.bytes.ciphertext_out as f64 / 1e6,
        report.bytes.eval_keys as f64 / 1e6
    );
    println!(
        "{:<22} requests up to {:.2} MB, evaluation keys up to {:.1} MB (larger ones are refused unread)",
        "model holder limits",
        report.bytes.max_request as f64 / 1e6,
        report.bytes.max_eval_keys as f64 / 1e6
    );
    println!(
        "{:<22} {} (N = 2^{}, log2 QP = {:.1}, 128-bit), depth {}, {} rotation keys",
        "parameters",
        report.params.preset,
        report.params.log_n,
        report.params.log_qp,
        report.depth,
        report.rotation_keys
    );
    for r in &report.activation_ranges {
        println!("{:<22} {r}", "activation range");
    }
}
