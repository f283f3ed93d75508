//! `blindfold bench`: measurements of the scheme layer on this machine.

use anyhow::{bail, Context as _, Result};
use blindfold_ckks::bootstrap::BootstrapPreset;
use blindfold_ckks::{
    BootstrapConfig, BootstrapKeys, Bootstrapper, Complex64, Context, Decryptor, Encoder, Encryptor, Evaluator,
    KeyGenerator, PublicKey, BOOTSTRAP_PRESETS,
};
use clap::{Args, Subcommand};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Subcommand)]
pub(crate) enum BenchCommand {
    /// CKKS bootstrapping: key generation, wall and CPU time per bootstrap (median of the
    /// runs), precision on slots uniform in [-1, 1], levels left, key bytes and peak memory.
    Bootstrap(BootstrapArgs),
}

#[derive(Args)]
pub(crate) struct BootstrapArgs {
    /// Bootstrappable parameter preset (see the list in --help of this option's error).
    #[arg(long, default_value = "N65536_BOOT_LEFT8_SPARSE_SECRET_128BIT")]
    preset: String,
    /// Worker threads (default: every core).
    #[arg(long)]
    threads: Option<usize>,
    /// Bootstraps to time; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Sparse slots: bootstrap ciphertexts holding this many values (a power of two up to
    /// N/4), repeated over the slots (default: all N/2 slots).
    #[arg(long)]
    slots: Option<usize>,
    /// Also run a deep circuit, u ← 1.8·u·(1 − u²) (two levels a step), until this many
    /// levels have been consumed, bootstrapping whenever fewer than two are left, and report
    /// its worst step against the plaintext twin (0: skip).
    #[arg(long, default_value_t = 0)]
    deep_levels: usize,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Serialize)]
struct BootstrapReport {
    tool: &'static str,
    preset: &'static str,
    log_n: u32,
    slots: usize,
    log_qp: f64,
    secure_128bit: bool,
    levels_left: usize,
    threads: usize,
    keygen_s: f64,
    plan_s: f64,
    bootstrap_s: f64,
    bootstrap_runs_s: Vec<f64>,
    bootstrap_cpu_s: f64,
    precision_bits_worst: f64,
    precision_bits_mean: f64,
    galois_keys: usize,
    key_bytes: usize,
    key_bytes_wire: usize,
    peak_rss_bytes: u64,
    deep: Option<DeepReport>,
}

/// The deep circuit of `--deep-levels`.
#[derive(Serialize)]
struct DeepReport {
    levels: usize,
    bootstraps: usize,
    wall_s: f64,
    /// Worst slot of the worst step, in bits, against the plaintext twin.
    precision_bits_worst: f64,
}

pub(crate) fn bench_cmd(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Bootstrap(a) => bootstrap_cmd(a),
    }
}

fn preset(name: &str) -> Result<BootstrapPreset> {
    BOOTSTRAP_PRESETS.iter().copied().find(|p| p.name.eq_ignore_ascii_case(name)).with_context(|| {
        let names: Vec<&str> = BOOTSTRAP_PRESETS.iter().map(|p| p.name).collect();
        format!("no bootstrapping preset {name:?}; choose one of {}", names.join(", "))
    })
}

/// The process's peak resident memory (`VmHWM`), in bytes.
fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()))
        .map_or(0, |kb| kb * 1024)
}

/// CPU time of this process (user + system), in seconds.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    // Fields after the parenthesized command name: utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

fn bootstrap_cmd(a: BootstrapArgs) -> Result<()> {
    let p = preset(&a.preset)?;
    if a.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let threads = a.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if threads == 0 {
        bail!("--threads must be at least 1");
    }
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
    pool.install(|| run_bootstrap(p, threads, &a))
}

fn run_bootstrap(p: BootstrapPreset, threads: usize, a: &BootstrapArgs) -> Result<()> {
    let (runs, json) = (a.runs, a.json.as_deref());
    if a.deep_levels > 0 && p.levels_left() < 2 {
        bail!("--deep-levels needs a preset that leaves at least 2 levels; {} leaves {}", p.name, p.levels_left());
    }
    let params = p.parameters()?;
    let ctx = Context::new(&params)?;
    eprintln!(
        "{}: N = 2^{}, log2 QP = {:.1}, {} levels left, {} thread(s)",
        p.name,
        p.log_n,
        params.log_qp(),
        p.levels_left(),
        threads
    );
    let t = Instant::now();
    let plan = Bootstrapper::new(&ctx, BootstrapConfig { slots: a.slots, ..p.config() })
        .with_context(|| format!("planning a bootstrap with {} at {:?} slots", p.name, a.slots))?;
    let plan_s = t.elapsed().as_secs_f64();
    eprintln!("plan (DFT diagonals encoded): {plan_s:.1} s");
    let t = Instant::now();
    let mut keygen = KeyGenerator::new(&ctx)?;
    let pk = keygen.public_key();
    let rlk = keygen.relinearization_key();
    let requests = plan.key_requests();
    let gk = keygen.galois_keys(&requests)?;
    let enc = plan.config().sparse_secret.map(|h| keygen.encapsulation_keys(h)).transpose()?;
    let keygen_s = t.elapsed().as_secs_f64();
    let (gk_mem, gk_wire) = gk.size_bytes();
    let other = rlk.size_bytes() + enc.as_ref().map_or(0, |e| e.size_bytes());
    let key_bytes = gk_mem + other;
    let key_bytes_wire = gk_wire + other / 2;
    eprintln!(
        "keys: {} Galois keys, a relinearization key{} in {keygen_s:.1} s, {:.2} GB in memory ({:.2} GB seeded)",
        gk.elements().count(),
        if enc.is_some() { " and the sparse-secret encapsulation keys" } else { "" },
        key_bytes as f64 / 1e9,
        key_bytes_wire as f64 / 1e9
    );
    let encoder = Encoder::new(&ctx);
    let n = a.slots.unwrap_or(encoder.slots());
    // Slots uniform in [-1, 1] (xorshift; the values need not be secret), `n` of them repeated.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let period: Vec<Complex64> = (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            Complex64::new((state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0, 0.0)
        })
        .collect();
    let x: Vec<Complex64> = period.iter().copied().cycle().take(encoder.slots()).collect();
    let pt = encoder.encode(&x, ctx.max_level(), params.default_scale())?;
    let eval = Evaluator::new(&ctx);
    let ct = eval.drop_to_level(&Encryptor::with_public_key(&ctx, &pk)?.encrypt(&pt)?, 0)?;
    let keys = BootstrapKeys { relinearization: &rlk, galois: &gk, encapsulation: enc.as_ref() };
    let mut walls = Vec::with_capacity(runs);
    let mut cpus = Vec::with_capacity(runs);
    let mut out = None;
    for r in 0..runs {
        let (t, c) = (Instant::now(), cpu_seconds());
        out = Some(eval.bootstrap(&ct, &plan, &keys)?);
        walls.push(t.elapsed().as_secs_f64());
        cpus.push(cpu_seconds() - c);
        eprintln!("bootstrap {}/{runs}: {:.2} s wall, {:.2} s CPU", r + 1, walls[r], cpus[r]);
    }
    let out = out.expect("at least one run");
    let got = encoder.decode(&Decryptor::new(keygen.secret_key()).decrypt(&out)?)?;
    let bits: Vec<f64> = got.iter().zip(&x).map(|(g, w)| -((g - w).norm().max(1e-300)).log2()).collect();
    let deep = (a.deep_levels > 0)
        .then(|| {
            deep_circuit(&eval, &encoder, &pk, &Decryptor::new(keygen.secret_key()), &plan, &keys, a.deep_levels, n)
        })
        .transpose()?;
    let report = BootstrapReport {
        tool: "blindfold",
        preset: p.name,
        log_n: p.log_n,
        slots: n,
        log_qp: params.log_qp(),
        secure_128bit: p.secure,
        levels_left: out.level(),
        threads,
        keygen_s,
        plan_s,
        bootstrap_s: median(&walls),
        bootstrap_runs_s: walls,
        bootstrap_cpu_s: median(&cpus),
        precision_bits_worst: bits.iter().copied().fold(f64::INFINITY, f64::min),
        precision_bits_mean: bits.iter().sum::<f64>() / bits.len() as f64,
        galois_keys: gk.elements().count(),
        key_bytes,
        key_bytes_wire,
        peak_rss_bytes: peak_rss(),
        deep,
    };
    println!(
        "{}: bootstrap {:.2} s (median of {}; {:.2} s CPU), precision {:.1} bits worst / {:.1} mean, {} levels left, \
         key generation {:.1} s, keys {:.2} GB, peak memory {:.2} GB",
        report.preset,
        report.bootstrap_s,
        runs,
        report.bootstrap_cpu_s,
        report.precision_bits_worst,
        report.precision_bits_mean,
        report.levels_left,
        report.keygen_s,
        report.key_bytes as f64 / 1e9,
        report.peak_rss_bytes as f64 / 1e9
    );
    if let Some(d) = &report.deep {
        println!(
            "deep circuit: {} levels consumed with {} bootstraps in {:.1} s; worst step {:.1} bits against the plaintext twin",
            d.levels, d.bootstraps, d.wall_s, d.precision_bits_worst
        );
    }
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// u ← 1.8·u·(1 − u²) on every slot (drawn to ±2/3, where the map contracts), from slots
/// ±(0.3 … 0.9) (a period of `period` slots, repeated) at the levels a bootstrap leaves, until
/// `levels` have been consumed, with a bootstrap whenever fewer than two levels are left; each
/// step decrypted against the twin.
#[allow(clippy::too_many_arguments)]
fn deep_circuit(
    eval: &Evaluator,
    encoder: &Encoder,
    pk: &PublicKey,
    dec: &Decryptor,
    plan: &Bootstrapper,
    keys: &BootstrapKeys<'_>,
    levels: usize,
    period: usize,
) -> Result<DeepReport> {
    let ctx = eval.context();
    let (q, delta) = (ctx.params().q(), ctx.params().default_scale());
    let initial = |j: usize| if j.is_multiple_of(2) { 1.0 } else { -1.0 } * (0.3 + 0.6 * j as f64 / period as f64);
    let mut twin: Vec<f64> = (0..encoder.slots()).map(|j| initial(j % period)).collect();
    let pt = encoder.encode_real(&twin, plan.output_level(), delta)?;
    let mut u = Encryptor::with_public_key(ctx, pk)?.encrypt(&pt)?;
    let (start, mut consumed, mut bootstraps, mut worst) = (Instant::now(), 0, 0, f64::INFINITY);
    while consumed < levels {
        if u.level() < 2 {
            u = eval.bootstrap(&u, plan, keys)?;
            bootstraps += 1;
            eprintln!(
                "deep circuit: {consumed}/{levels} levels, bootstrap {bootstraps}, worst step so far {worst:.1} bits"
            );
        }
        let (ql, q_next) = (q[u.level()] as f64, q[u.level() - 1] as f64);
        // v = 1 − u²; z = 1.8·u at the scale that puts z·v at Δ after its rescale; u ← z·v.
        let mut v = eval.negate(&eval.rescale(&eval.multiply_relin(&u, &u, keys.relinearization)?)?)?;
        eval.add_const_assign(&mut v, 1.0)?;
        let z_scale = delta * q_next / v.scale();
        let z = eval.rescale(&eval.multiply_const(&u, 1.8, ql * z_scale / u.scale())?)?;
        u = eval.rescale(&eval.multiply_relin(&z, &v, keys.relinearization)?)?;
        consumed += 2;
        twin.iter_mut().for_each(|x| *x = 1.8 * *x * (1.0 - *x * *x));
        let got = encoder.decode_real(&dec.decrypt(&u)?)?;
        let step =
            got.iter().zip(&twin).map(|(g, t)| -((g - t).abs().max(1e-300)).log2()).fold(f64::INFINITY, f64::min);
        worst = worst.min(step);
    }
    Ok(DeepReport { levels: consumed, bootstraps, wall_s: start.elapsed().as_secs_f64(), precision_bits_worst: worst })
}
