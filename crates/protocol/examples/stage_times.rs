//! Time per circuit stage of a trained model under encryption (mean over repetitions, with
//! the default rayon pool: all cores).
//!
//! `cargo run --release -p blindfold-protocol --example stage_times -- MODEL.safetensors [REPS]`

use blindfold_ckks::{Ciphertext, Encoder, Evaluator, KeyGenerator, SymmetricEncryptor};
use blindfold_nn::compile::ChainOptions;
use blindfold_nn::Model;
use blindfold_protocol::CompiledModel;
use blindfold_tensor::{CkksBackend, Stage};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or("usage: stage_times MODEL.safetensors [REPS]")?;
    let reps: usize = args.next().map_or(Ok(20), |r| r.parse())?;
    let (model, _) = Model::load(std::path::Path::new(&path))?;
    let compiled = CompiledModel::new(&model, &ChainOptions::default())?;
    let (ctx, c) = (compiled.context().clone(), compiled.circuit());
    println!("{}: {}, depth {}", model.spec().name, compiled.info().parameters_name(), c.depth());
    let mut keygen = KeyGenerator::new(&ctx)?;
    let rlk = keygen.relinearization_key();
    let requests = c.key_requests(&ctx)?;
    let gk = keygen.galois_keys(&requests)?;
    let (eval, encoder) = (Evaluator::new(&ctx), Encoder::new(&ctx));
    let mut encryptor = SymmetricEncryptor::new(keygen.secret_key())?;
    let inputs: Vec<Ciphertext> = c
        .packing()
        .pack(&vec![0.3; c.packing().input_len()])?
        .iter()
        .map(|v| {
            let pt = encoder.encode_real(v, ctx.max_level(), compiled.info().input_scale)?;
            Ok(encryptor.encrypt(&pt)?.expand(&ctx))
        })
        .collect::<Result<_, blindfold_ckks::Error>>()?;
    let be = CkksBackend::new(&eval, &rlk, &gk, &requests);
    let mut ms = vec![0f64; c.stages().len()];
    for _ in 0..reps {
        let mut value: Option<Ciphertext> = None;
        for (i, stage) in c.stages().iter().enumerate() {
            let x = value.as_ref().map_or(&inputs[..], std::slice::from_ref);
            let t = Instant::now();
            let out = match stage {
                Stage::Linear(l) => l.evaluate(&be, x)?,
                Stage::RotationSum(r) => r.evaluate(&be, &x[0])?,
                Stage::Polynomial(p) => p.evaluate(&be, &x[0])?,
                _ => return Err("unknown stage".into()),
            };
            ms[i] += t.elapsed().as_secs_f64() * 1e3;
            value = Some(out);
        }
    }
    for (stage, t) in c.stages().iter().zip(&ms) {
        println!("{:9.2} ms  level {:>2}  {}", t / reps as f64, stage.level(), stage.cost().name);
    }
    println!("{:9.2} ms  total", ms.iter().sum::<f64>() / reps as f64);
    Ok(())
}
