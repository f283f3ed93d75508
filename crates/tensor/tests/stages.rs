//! Every stage's CKKS evaluation against its plaintext twin, and the circuit's key
//! requirements against what its evaluation uses.
//!
//! Budget: on `N8192_DEPTH5_128BIT` (scale 2^29), with inputs and weights in [-1, 1], the
//! decrypted slots that hold features equal the twin's within 2^-12 of the largest value
//! (measured errors are printed; they are about 2^-17 for one linear stage).

use blindfold_ckks::{
    presets, Context, Decryptor, Encoder, Evaluator, GaloisKeys, KeyGenerator, RelinearizationKey, SymmetricEncryptor,
};
use blindfold_tensor::conv::{grid_tap, placed};
use blindfold_tensor::matvec::dense;
use blindfold_tensor::requirements::key_requests;
use blindfold_tensor::{
    Circuit, CircuitError, CkksBackend, ConvGeom, Grid, Layout, LinearMap, Packing, PolynomialActivation, PoolGeom,
    RotationSum, Shape, Stage,
};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use std::sync::Arc;

struct Setup {
    ctx: Arc<Context>,
    keygen: KeyGenerator,
    encoder: Encoder,
    eval: Evaluator,
    rng: ChaCha20Rng,
}

fn setup() -> Setup {
    let ctx = Context::new(&presets::N8192_DEPTH5_128BIT.parameters().unwrap()).unwrap();
    Setup {
        keygen: KeyGenerator::from_seed(&ctx, [9; 32]),
        encoder: Encoder::new(&ctx),
        eval: Evaluator::new(&ctx),
        ctx,
        rng: ChaCha20Rng::seed_from_u64(4),
    }
}

fn uniform(rng: &mut ChaCha20Rng, n: usize) -> Vec<f64> {
    (0..n).map(|_| (rng.next_u32() % 2001) as f64 / 1000.0 - 1.0).collect()
}

impl Setup {
    fn keys(&mut self, c: &Circuit) -> (RelinearizationKey, GaloisKeys) {
        let gk = self.keygen.galois_keys(&c.key_requests(&self.ctx).unwrap()).unwrap();
        (self.keygen.relinearization_key(), gk)
    }

    /// Encrypts `x` in the circuit's packing, evaluates, and returns (decrypted, twin) values.
    fn run(&mut self, c: &mut Circuit, x: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let scale = self.ctx.params().q()[self.ctx.max_level()] as f64;
        c.encode(&self.ctx, scale).unwrap();
        let (rlk, gk) = self.keys(c);
        let packed = c.packing().pack(x).unwrap();
        let mut enc = SymmetricEncryptor::new(self.keygen.secret_key()).unwrap();
        let cts: Vec<_> = packed
            .iter()
            .map(|v| {
                let pt = self.encoder.encode_real(v, self.ctx.max_level(), scale).unwrap();
                enc.encrypt(&pt).unwrap().expand(&self.ctx)
            })
            .collect();
        let out = c.evaluate(&self.eval, &cts, &rlk, &gk).unwrap();
        let dec = self.encoder.decode_real(&Decryptor::new(self.keygen.secret_key()).decrypt(&out).unwrap()).unwrap();
        (c.read_output(&dec), c.evaluate_plain(&packed).unwrap())
    }
}

fn check(name: &str, got: &[f64], twin: &[f64]) {
    assert_eq!(got.len(), twin.len());
    let max = twin.iter().fold(1e-9f64, |m, v| m.max(v.abs()));
    let err = got.iter().zip(twin).map(|(g, t)| (g - t).abs()).fold(0f64, f64::max);
    println!("{name}: max |encrypted − twin| = {err:.2e} (2^{:.1} of the largest value {max:.3})", (err / max).log2());
    assert!(err <= max / 4096.0, "{name}: error {err} vs largest value {max}");
}

fn image_packing(shape: Shape, slots: usize) -> (Packing, Layout) {
    let p = Packing::image(shape, slots).unwrap();
    let l = p.layout();
    (p, l)
}

#[test]
fn dense_stage_matches_its_twin_and_the_map() {
    let mut s = setup();
    let slots = s.ctx.params().slots();
    let (packing, input) = image_packing(Shape { c: 1, h: 1, w: 300 }, slots);
    let w = uniform(&mut s.rng, 40 * 300);
    let b = uniform(&mut s.rng, 40);
    let map = LinearMap::dense(300, &w, &b).unwrap().scaled(0.1, 1.0);
    let top = s.ctx.max_level();
    let (stage, out) = dense(&input, &map, true, top, 1.0).unwrap();
    let mut c = Circuit::new(packing, top, vec![Stage::Linear(stage)], out).unwrap();
    let x = uniform(&mut s.rng, 300);
    let (got, twin) = s.run(&mut c, &x);
    for (t, m) in twin.iter().zip(map.apply(&x)) {
        assert!((t - m).abs() < 1e-9, "twin {t} vs map {m}");
    }
    check("dense 300→40", &got, &twin);
}

#[test]
fn convolution_pooling_and_polynomials_match_their_twins() {
    let mut s = setup();
    let slots = s.ctx.params().slots();
    let shape = Shape { c: 2, h: 12, w: 12 };
    let (packing, input) = image_packing(shape, slots);
    let geom = ConvGeom::new(shape, 3, 3, 1, 1).unwrap();
    let w = uniform(&mut s.rng, 3 * geom.cols());
    let b = uniform(&mut s.rng, 3);
    let map = LinearMap::conv(&geom, &w, &b).unwrap().scaled(0.3, 1.0);
    let grid = input.grid.clone().unwrap();
    let top = s.ctx.max_level();
    let (conv, lay) = placed(
        &input,
        &map,
        geom.output,
        (grid.row, grid.col),
        |_, y, x, f| grid_tap(&grid, &geom, y, x, f),
        "conv".into(),
        top,
    )
    .unwrap();
    let pool = PoolGeom::new(geom.output, 2, 2).unwrap();
    let (sum, lay) = RotationSum::pool(&lay, &pool, top - 1).unwrap();
    for lower in [vec![0.5], vec![0.2, -0.3], vec![0.0, 0.0], vec![0.1, 0.0, 0.4], vec![-0.1, 0.2, 0.3, -0.2]] {
        let p = PolynomialActivation::monic(lower, top - 1).unwrap();
        let degree = p.degree();
        let stages = vec![Stage::Linear(conv.clone()), Stage::RotationSum(sum.clone()), Stage::Polynomial(p.clone())];
        let mut c = Circuit::new(packing.clone(), top, stages, lay.clone()).unwrap();
        let x = uniform(&mut s.rng, shape.len());
        let (got, twin) = s.run(&mut c, &x);
        // The twin against the maps: conv, pool (its sum is 4× the mean), polynomial.
        let want: Vec<f64> = LinearMap::avgpool(&pool).apply(&map.apply(&x)).iter().map(|v| p.apply(4.0 * v)).collect();
        for (t, m) in twin.iter().zip(&want) {
            assert!((t - m).abs() < 1e-9 * m.abs().max(1.0), "twin {t} vs maps {m}");
        }
        check(&format!("conv, pool, monic polynomial of degree {degree}"), &got, &twin);
    }
}

#[test]
fn the_evaluation_uses_exactly_the_declared_keys() {
    let mut s = setup();
    let slots = s.ctx.params().slots();
    let (packing, input) = image_packing(Shape { c: 1, h: 1, w: 100 }, slots);
    let top = s.ctx.max_level();
    let map = LinearMap::dense(100, &uniform(&mut s.rng, 3000), &uniform(&mut s.rng, 30)).unwrap().scaled(0.1, 1.0);
    let (d1, l1) = dense(&input, &map, false, top, 1.0).unwrap();
    let sq = PolynomialActivation::monic(vec![0.0, 0.0], top - 1).unwrap();
    let map2 = LinearMap::dense(30, &uniform(&mut s.rng, 300), &uniform(&mut s.rng, 10)).unwrap();
    let (d2, l2) = dense(&l1, &map2, true, top - 2, 16.0).unwrap();
    let mut c =
        Circuit::new(packing, top, vec![Stage::Linear(d1), Stage::Polynomial(sq), Stage::Linear(d2)], l2).unwrap();
    let scale = s.ctx.params().q()[top] as f64;
    c.encode(&s.ctx, scale).unwrap();
    let declared = c.key_requests(&s.ctx).unwrap();
    assert!(declared.len() >= 4, "{declared:?}");
    let (rlk, gk) = s.keys(&c);
    let x = uniform(&mut s.rng, 100);
    let pt = s.encoder.encode_real(&c.packing().pack(&x).unwrap()[0], top, scale).unwrap();
    let ct = SymmetricEncryptor::new(s.keygen.secret_key()).unwrap().encrypt(&pt).unwrap().expand(&s.ctx);
    // Keys generated from the requirements, each at its level: the evaluation uses every one
    // of them, at exactly that level, and nothing else.
    let be = CkksBackend::new(&s.eval, &rlk, &gk, &declared);
    c.evaluate_on(&be, std::slice::from_ref(&ct)).unwrap();
    let mut used = be.used();
    let mut want = declared.clone();
    used.sort();
    want.sort();
    assert_eq!(used, want);
    // A stage that asks for a key the circuit did not declare fails, naming the stage, even
    // though the key set holds it.
    let fewer = &declared[1..];
    let be = CkksBackend::new(&s.eval, &rlk, &gk, fewer);
    let err = c.evaluate_on(&be, std::slice::from_ref(&ct)).unwrap_err();
    assert!(matches!(err, CircuitError::UndeclaredKey { .. }), "{err}");
    assert!(err.to_string().contains("dense"), "{err}");
    // A key one level lower than declared does not serve.
    let mut low = declared.clone();
    low[0].level.0 -= 1;
    let gk_low = s.keygen.galois_keys(&low).unwrap();
    assert!(c.evaluate(&s.eval, std::slice::from_ref(&ct), &rlk, &gk_low).is_err());
    // Without one key: refused.
    let gk_less = s.keygen.galois_keys(fewer).unwrap();
    assert!(c.evaluate(&s.eval, std::slice::from_ref(&ct), &rlk, &gk_less).is_err());
    // The requirements as rotation keys give the same requests.
    assert_eq!(key_requests(&c.rotation_keys(), &s.ctx), declared);
}

#[test]
fn layouts_refuse_what_does_not_fit() {
    let slots = 4096;
    assert!(Packing::image(Shape { c: 3, h: 64, w: 64 }, slots).is_err());
    let grid = Grid { shape: Shape { c: 2, h: 2, w: 2 }, base: vec![0, 1], row: 2, col: 1 };
    assert!(Layout::from_grid(grid, slots, slots).is_err(), "overlapping channels");
    assert!(PolynomialActivation::monic(vec![0.0; 5], 3).is_err());
    assert!(PolynomialActivation::monic(vec![], 3).is_err());
    assert!(PolynomialActivation::monic(vec![f64::NAN], 3).is_err());
}
