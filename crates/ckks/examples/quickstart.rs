//! Encrypt a vector, compute on it without the secret key, decrypt, and report precision.
//!
//! `cargo run --release -p blindfold-ckks --example quickstart`
use blindfold_ckks::*;
use std::time::Instant;

fn main() -> Result<()> {
    let preset = presets::N8192_DEPTH3_128BIT;
    let params = preset.parameters()?;
    println!(
        "{}: N = {}, log2(QP) = {:.1} (128-bit bound {}), depth {}, scale 2^{}",
        preset.name,
        params.n(),
        params.log_qp(),
        max_log_qp_128bit(params.n()).unwrap_or(0),
        preset.depth(),
        params.literal().log_default_scale
    );
    let ctx = Context::new(&params)?;

    // Client: keys and encryption. Only the client ever holds the secret key.
    let mut keygen = KeyGenerator::new(&ctx)?;
    let pk = keygen.public_key();
    let rlk = keygen.relinearization_key();
    let gk = keygen.galois_keys(&keygen.top_level_requests(&[1], false)).unwrap();
    let encoder = Encoder::new(&ctx);
    let x: Vec<f64> = (0..encoder.slots()).map(|i| (i as f64 / 100.0).sin()).collect();
    let pt = encoder.encode_real(&x, ctx.max_level(), params.default_scale())?;
    let ct = Encryptor::with_public_key(&ctx, &pk)?.encrypt(&pt)?;

    // Server: y = x² + rotate(x, 1) · 0.5, with public keys only.
    let eval = Evaluator::new(&ctx);
    let t = Instant::now();
    let sq = eval.rescale(&eval.multiply_relin(&ct, &ct, &rlk)?)?;
    // Encoding the constant at the ciphertext's scale Δ makes both terms Δ²/q_L after the
    // rescale, so they add without a scale mismatch.
    let half_rot = eval.rescale(&eval.multiply_const(&eval.rotate(&ct, 1, &gk)?, 0.5, ct.scale())?)?;
    let y = eval.add(&sq, &half_rot)?;
    let server = t.elapsed();

    // Client: decrypt and compare with the plaintext computation.
    let out = encoder.decode_real(&Decryptor::new(keygen.secret_key()).decrypt(&y)?)?;
    let slots = x.len();
    let max_err = (0..slots).map(|i| (out[i] - (x[i] * x[i] + 0.5 * x[(i + 1) % slots])).abs()).fold(0.0, f64::max);
    println!(
        "server time {:.2} ms, max error {:.2e} ({:.1} bits)",
        server.as_secs_f64() * 1e3,
        max_err,
        -max_err.log2()
    );
    Ok(())
}
