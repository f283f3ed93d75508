//! Mutated seeds and arbitrary bytes through every target of [`blindfold_fuzz::Corpus`]:
//! errors, never panics. `BLINDFOLD_FUZZ_CASES` sets the number of cases per property
//! (default 48, what CI runs).

use blindfold_fuzz::{mutate, Corpus};
use proptest::prelude::*;
use std::sync::OnceLock;

fn corpus() -> &'static Corpus {
    static CORPUS: OnceLock<Corpus> = OnceLock::new();
    CORPUS.get_or_init(Corpus::new)
}

fn cases() -> u32 {
    std::env::var("BLINDFOLD_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48)
}

#[test]
fn every_seed_is_accepted_where_it_belongs() {
    let c = corpus();
    for (name, seed) in c.seeds() {
        assert!(c.run_all(seed) > 0, "seed {name} is accepted nowhere");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), rng_seed: proptest::test_runner::RngSeed::Fixed(20261206), ..ProptestConfig::default() })]

    #[test]
    fn mutated_seeds_never_panic(which in 0usize..64, edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..6)) {
        let c = corpus();
        let seeds = c.seeds();
        let (_, seed) = seeds[which % seeds.len()];
        c.run_all(&mutate(seed, &edits));
    }

    #[test]
    fn spliced_seeds_never_panic(a in 0usize..64, b in 0usize..64, cut in any::<usize>()) {
        // The start of one object on the body of another: foreign headers and kinds.
        let c = corpus();
        let seeds = c.seeds();
        let (x, y) = (seeds[a % seeds.len()].1, seeds[b % seeds.len()].1);
        let cut = cut % (x.len().min(y.len()) + 1);
        let mut spliced = x[..cut].to_vec();
        spliced.extend_from_slice(&y[cut..]);
        c.run_all(&spliced);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        corpus().run_all(&bytes);
    }
}
