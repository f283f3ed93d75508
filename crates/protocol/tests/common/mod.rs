//! Data and settings shared by the CryptoNN training tests.

use blindfold_data::{Images, LabeledImages};
use blindfold_fe::FixedPoint;
use blindfold_nn::cryptonn::CryptonnConfig;
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

/// `n` images of 28×28 with a class-dependent bright band (labels `i % 10`), so there is
/// something to learn.
pub fn banded(n: usize) -> LabeledImages {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let side = 28;
    let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    let mut pixels = vec![0u8; n * side * side];
    for (i, &l) in labels.iter().enumerate() {
        for p in 0..side * side {
            let band = (p / side) / 3 == l as usize;
            pixels[i * side * side + p] =
                if band { 200 + (rng.next_u32() % 56) as u8 } else { (rng.next_u32() % 30) as u8 };
        }
    }
    LabeledImages { images: Images { count: n, rows: side, cols: side, pixels }, labels }
}

/// Training settings: two digits, Adam at `2·10⁻³`, seed 7.
pub fn config(epochs: usize) -> CryptonnConfig {
    CryptonnConfig {
        epochs,
        learning_rate: 2e-3,
        clip_norm: 5.0,
        encoding: FixedPoint::decimal(2).unwrap(),
        seed: 7,
        hardened: None,
    }
}
