//! `blindfold sweep`: encrypted accuracy, agreement and latency across scale bits and ring
//! degrees, as a CSV and two SVG charts (the two figures of the TenSEAL/CKKS study: accuracy
//! against scale bits per ring degree, latency against ring degree).

use crate::import::{load_model, ImportArgs};
use crate::infer::{encrypted_inference, Plan};
use crate::progress::{bar, say};
use crate::report::Report;
use crate::train::{cached_model, train_model, TrainOpts};
use crate::DataArgs;
use anyhow::{bail, Context as _, Result};
use blindfold_ckks::{max_log_qp_128bit, Parameters};
use blindfold_data::Split;
use blindfold_nn::compile::{chain, circuit_depth, key_switch_profile};
use clap::Args;
use plotters::prelude::*;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub(crate) struct SweepArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Architecture: tenseal-cnn1, cryptonets, cnn2 or lenet5.
    #[arg(long, default_value = "tenseal-cnn1")]
    arch: String,
    /// A trained model to sweep instead of the built-in architecture (trained if not cached).
    #[arg(long)]
    model: Option<PathBuf>,
    #[command(flatten)]
    import: ImportArgs,
    /// Scale bits to try: every prime a rescale consumes has this many bits.
    #[arg(long, value_delimiter = ',', default_value = "20,22,24,26,28,30,32,34,36,38,40")]
    scale_bits: Vec<u32>,
    /// Ring degrees to try, as log2 N.
    #[arg(long, value_delimiter = ',', default_value = "13,14,15")]
    log_n: Vec<u32>,
    /// Test images classified under encryption at every point.
    #[arg(long, default_value_t = 200)]
    n_test: usize,
    /// Directory for sweep.csv, accuracy.svg and latency.svg.
    #[arg(long)]
    out: PathBuf,
    /// Threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    #[command(flatten)]
    opts: TrainOpts,
    /// Where trained models are cached.
    #[arg(long, default_value = "models")]
    model_dir: PathBuf,
}

/// One point of the sweep: measured, or skipped with the reason.
struct Point {
    log_n: u32,
    scale_bits: u32,
    log_qp: Option<f64>,
    result: std::result::Result<Report, String>,
}

pub(crate) fn sweep_cmd(a: SweepArgs) -> Result<()> {
    if a.scale_bits.is_empty() || a.log_n.is_empty() {
        bail!("--scale-bits and --log-n need at least one value each");
    }
    let mut model = match &a.model {
        Some(path) => load_model(path, &a.import, Some(&a.data))?.model,
        None => {
            let path = a.model_dir.join(a.opts.model_file(a.data.dataset, &a.arch));
            match cached_model(&path, &a.opts.arch_spec(&a.arch)?) {
                Some(m) => m,
                None => train_model(&a.arch, &a.data, &a.opts, &path)?,
            }
        }
    };
    let test = a.data.load(Split::Test)?.truncate(a.n_test);
    let depth = circuit_depth(model.spec())?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let total = a.log_n.len() * a.scale_bits.len();
    let pb = bar(total as u64, "sweep");
    let mut points = Vec::with_capacity(total);
    for &log_n in &a.log_n {
        for &s in &a.scale_bits {
            let literal = chain(depth, log_n, s, &key_switch_profile(model.spec(), log_n).unwrap_or_default());
            let params = Parameters::new(literal).map_err(|e| e.to_string());
            let log_qp = params.as_ref().ok().map(Parameters::log_qp);
            let result = params.and_then(|p| {
                encrypted_inference(&mut model, Plan::Parameters(p), &test, a.data.dataset, a.threads, 1)
                    .map_err(|e| format!("{e:#}"))
            });
            let line = match &result {
                Ok(r) => format!(
                    "N = 2^{log_n}, {s}-bit scale: encrypted accuracy {:.2}%, agreement {:.2}%, server p50 {:.1} ms",
                    100.0 * r.encrypted_accuracy,
                    100.0 * r.agreement,
                    r.server_ms.p50
                ),
                Err(e) => format!("N = 2^{log_n}, {s}-bit scale: skipped ({e})"),
            };
            say(&pb, line);
            points.push(Point { log_n, scale_bits: s, log_qp, result });
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    let csv = a.out.join("sweep.csv");
    std::fs::write(&csv, to_csv(&points, depth)).with_context(|| format!("writing {}", csv.display()))?;
    let name = format!("{} on {}, {} images", model.spec().name, a.data.dataset, test.len());
    accuracy_chart(&points, &name, &a.out.join("accuracy.svg"))?;
    latency_chart(&points, &name, &a.out.join("latency.svg"))?;
    eprintln!("wrote sweep.csv, accuracy.svg and latency.svg to {}", a.out.display());
    Ok(())
}

fn to_csv(points: &[Point], depth: usize) -> String {
    let mut s = String::from(
        "log_n,n,scale_bits,depth,log_qp,bound_128bit,status,reason,plain_accuracy,encrypted_accuracy,agreement,\
         server_p50_ms,server_p95_ms,client_encrypt_p50_ms,eval_key_bytes,upload_bytes\n",
    );
    for p in points {
        let bound = max_log_qp_128bit(1 << p.log_n).map_or(String::new(), |b| b.to_string());
        let qp = p.log_qp.map_or(String::new(), |q| format!("{q:.2}"));
        let _ = write!(s, "{},{},{},{depth},{qp},{bound},", p.log_n, 1u64 << p.log_n, p.scale_bits);
        let _ = match &p.result {
            Ok(r) => writeln!(
                s,
                "ok,,{:.4},{:.4},{:.4},{:.2},{:.2},{:.2},{},{}",
                r.plain_accuracy,
                r.encrypted_accuracy,
                r.agreement,
                r.server_ms.p50,
                r.server_ms.p95,
                r.client_ms.encrypt_p50,
                r.bytes.eval_keys,
                r.bytes.ciphertext_in
            ),
            Err(e) => writeln!(s, "skipped,\"{}\",,,,,,,,", e.replace('"', "'")),
        };
    }
    s
}

const COLORS: [RGBColor; 3] = [RGBColor(31, 119, 180), RGBColor(214, 39, 40), RGBColor(44, 160, 44)];

fn chart_error(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("drawing a chart: {e}")
}

/// Encrypted accuracy against scale bits, one line per ring degree, the plaintext accuracy
/// dashed.
fn accuracy_chart(points: &[Point], name: &str, path: &Path) -> Result<()> {
    let ok: Vec<(&Point, &Report)> = points.iter().filter_map(|p| p.result.as_ref().ok().map(|r| (p, r))).collect();
    let (x0, x1) = points.iter().fold((u32::MAX, 0), |(a, b), p| (a.min(p.scale_bits), b.max(p.scale_bits)));
    let lowest = ok.iter().map(|(_, r)| 100.0 * r.encrypted_accuracy).fold(100f64, f64::min);
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(chart_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("Encrypted accuracy against scale bits: {name}"), ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(x0 as f64 - 0.5..x1 as f64 + 0.5, (lowest - 2.0).max(0.0)..100.5)
        .map_err(chart_error)?;
    chart
        .configure_mesh()
        .x_desc("scale bits (bits of every rescaled prime)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_desc("encrypted accuracy (%)")
        .draw()
        .map_err(chart_error)?;
    if let Some((_, r)) = ok.first() {
        let plain = 100.0 * r.plain_accuracy;
        chart
            .draw_series(DashedLineSeries::new(vec![(x0 as f64, plain), (x1 as f64, plain)], 6, 4, BLACK.into()))
            .map_err(chart_error)?
            .label(format!("plaintext {plain:.2}%"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    }
    let mut rings: Vec<u32> = points.iter().map(|p| p.log_n).collect();
    rings.dedup();
    for (k, &log_n) in rings.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        let series: Vec<(f64, f64)> = ok
            .iter()
            .filter(|(p, _)| p.log_n == log_n)
            .map(|(p, r)| (p.scale_bits as f64, 100.0 * r.encrypted_accuracy))
            .collect();
        if series.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(series.clone(), color.stroke_width(2)))
            .map_err(chart_error)?
            .label(format!("N = {}", 1u64 << log_n))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(series.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(chart_error)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(chart_error)?;
    root.present().map_err(chart_error)
}

/// Server latency (p50) against ring degree, one line per scale that every ring could hold
/// (or, failing that, per scale measured on at least one ring).
fn latency_chart(points: &[Point], name: &str, path: &Path) -> Result<()> {
    let ok: Vec<(&Point, &Report)> = points.iter().filter_map(|p| p.result.as_ref().ok().map(|r| (p, r))).collect();
    let mut scales: Vec<u32> = ok.iter().map(|(p, _)| p.scale_bits).collect();
    scales.sort_unstable();
    scales.dedup();
    let (n0, n1) = points.iter().fold((u32::MAX, 0), |(a, b), p| (a.min(p.log_n), b.max(p.log_n)));
    let top = ok.iter().map(|(_, r)| r.server_ms.p50).fold(1f64, f64::max);
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(chart_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("Server latency against ring degree: {name}"), ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(n0 as f64 - 0.5..n1 as f64 + 0.5, 0.0..top * 1.15)
        .map_err(chart_error)?;
    chart
        .configure_mesh()
        .x_desc("ring degree N")
        .y_desc("server per image, p50 (ms)")
        .x_labels(20)
        .x_label_formatter(&|x| {
            if (x - x.round()).abs() < 1e-6 {
                format!("{}", 1u64 << x.round() as u32)
            } else {
                String::new()
            }
        })
        .draw()
        .map_err(chart_error)?;
    for (k, &s) in scales.iter().enumerate() {
        let color = Palette99::pick(k).to_rgba();
        let series: Vec<(f64, f64)> =
            ok.iter().filter(|(p, _)| p.scale_bits == s).map(|(p, r)| (p.log_n as f64, r.server_ms.p50)).collect();
        chart
            .draw_series(LineSeries::new(series.clone(), color.stroke_width(2)))
            .map_err(chart_error)?
            .label(format!("{s}-bit scale"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(series.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(chart_error)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(chart_error)?;
    root.present().map_err(chart_error)
}
