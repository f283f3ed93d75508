//! Runs one evaluator operation in a loop, for profilers (`perf record`, callgrind).
//!
//! `cargo run --release -p blindfold-ckks --example profile_op -- relinearize 200 [depth2]`
use blindfold_ckks::*;
use std::time::Instant;

fn main() -> Result<()> {
    // On a pool worker, so the evaluator's parallel loops start on this thread
    // (`RAYON_NUM_THREADS` sets the pool size).
    rayon::ThreadPoolBuilder::new().build().expect("thread pool").install(run)
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let op = args.get(1).map(String::as_str).unwrap_or("relinearize");
    let iters: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(100);
    let preset = match args.get(3).map(String::as_str) {
        Some("depth2") => presets::N8192_DEPTH2_128BIT,
        Some("depth5") => presets::N8192_DEPTH5_128BIT,
        _ => presets::N8192_DEPTH3_128BIT,
    };
    let params = preset.parameters()?;
    let ctx = Context::new(&params)?;
    let mut keygen = KeyGenerator::from_seed(&ctx, [1; 32]);
    let pk = keygen.public_key();
    let rlk = keygen.relinearization_key();
    let gk = keygen.galois_keys(&keygen.top_level_requests(&[1], false)).unwrap();
    let gk8 = keygen.galois_keys(&keygen.top_level_requests(&[1, 2, 3, 4, 5, 6, 7, 8], false)).unwrap();
    let encoder = Encoder::new(&ctx);
    let pt = encoder.encode_real(&[0.5; 16], ctx.max_level(), params.default_scale())?;
    let mut enc = Encryptor::with_public_key(&ctx, &pk)?;
    let sk = keygen.secret_key();
    let mut enc_sk = SymmetricEncryptor::new(sk)?;
    let ct = enc.encrypt(&pt)?;
    let eval = Evaluator::new(&ctx);
    let prod = eval.multiply(&ct, &ct)?;
    let t = Instant::now();
    for _ in 0..iters {
        match op {
            "relinearize" => drop(eval.relinearize(&prod, &rlk)?),
            "rotate" => drop(eval.rotate(&ct, 1, &gk)?),
            "hoisted1" => drop(eval.rotate_hoisted(&ct, &[1], &gk)?),
            "hoisted" => drop(eval.rotate_hoisted(&ct, &[1, 2, 3, 4, 5, 6, 7, 8], &gk8)?),
            "rescale" => drop(eval.rescale(&ct)?),
            "encrypt" => drop(enc.encrypt(&pt)?),
            "encrypt_sk" => drop(enc_sk.encrypt(&pt)?),
            "serialize_sk" => drop(blindfold_ckks::serialize::serialize(&enc_sk.encrypt(&pt)?, &ctx)?),
            "encode" => drop(encoder.encode_real(&[0.5; 4096], ctx.max_level(), params.default_scale())?),
            "decode" => drop(encoder.decode(&pt)),
            other => panic!("unknown op {other}"),
        }
    }
    println!("{op}: {:.1} us per call", t.elapsed().as_secs_f64() * 1e6 / iters as f64);
    Ok(())
}
