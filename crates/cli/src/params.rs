//! `blindfold params`: the parameter presets against the 128-bit bound.

use anyhow::Result;
use blindfold_ckks::{max_log_qp_128bit, presets};
use serde::Serialize;

pub(crate) fn params_cmd(json: bool) -> Result<()> {
    #[derive(Serialize)]
    struct Row {
        preset: &'static str,
        log_n: u32,
        q_bits: Vec<f64>,
        p_bits: Vec<f64>,
        log_qp: f64,
        bound_128bit: u32,
        depth: usize,
        log_default_scale: u32,
        dnum: usize,
    }
    let rows: Vec<Row> = presets::PRESETS
        .iter()
        .map(|p| {
            let params = p.parameters()?;
            let bits = |v: &[u64]| v.iter().map(|&q| ((q as f64).log2() * 100.0).round() / 100.0).collect::<Vec<_>>();
            Ok(Row {
                preset: p.name,
                log_n: p.log_n,
                q_bits: bits(params.q()),
                p_bits: bits(params.p()),
                log_qp: (params.log_qp() * 100.0).round() / 100.0,
                bound_128bit: max_log_qp_128bit(params.n()).unwrap_or(0),
                depth: p.depth(),
                log_default_scale: p.log_default_scale,
                dnum: params.dnum(),
            })
        })
        .collect::<Result<_>>()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<24} {:>6} {:>6} {:>9} {:>6} {:>6}  chain (bits of each prime; special primes after |)",
        "preset", "N", "depth", "log2 QP", "bound", "scale"
    );
    for r in rows {
        let chain: Vec<String> = r.q_bits.iter().map(|b| format!("{b:.1}")).collect();
        let special: Vec<String> = r.p_bits.iter().map(|b| format!("{b:.1}")).collect();
        println!(
            "{:<24} {:>6} {:>6} {:>9.2} {:>6} {:>6}  {} | {}",
            r.preset,
            1u64 << r.log_n,
            r.depth,
            r.log_qp,
            r.bound_128bit,
            format!("2^{}", r.log_default_scale),
            chain.join(" "),
            special.join(" ")
        );
    }
    println!(
        "\nEvery preset is checked at construction against the HomomorphicEncryption.org 128-bit bound\n\
         (uniform ternary secret, sigma = 3.2). Encrypted inference generates its chain from the\n\
         network's depth (the smallest secure ring, the largest scale up to 2^40) and checks it the same way."
    );
    Ok(())
}
