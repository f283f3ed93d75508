//! Ensemble roles in one process: one end user, three model holders with their own models,
//! a coordinator that only ever sees encrypted scores.

use blindfold_ckks::presets;
use blindfold_ckks::Preset;
use blindfold_data::{load, partition, Dataset, Partition, Split};
use blindfold_nn::train::{train, TrainConfig};
use blindfold_nn::{ArchSpec, Model};
use blindfold_protocol::{
    Aggregation, Calibration, Client, CompiledModel, Coordinator, Message, ModelHolder, ProtocolError,
};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

fn holder_for(model: &Model, preset: Preset) -> ModelHolder {
    ModelHolder::new(CompiledModel::with_parameters(model, &preset.parameters().unwrap()).unwrap())
}

/// Three holders trained briefly on an IID split of 3,000 Fashion-MNIST images.
fn holders() -> (Vec<Model>, blindfold_data::LabeledImages) {
    let dir = Dataset::FashionMnist.default_dir();
    let data = load(Dataset::FashionMnist, &dir, Split::Train).expect("Fashion-MNIST installed").truncate(3000);
    let test = load(Dataset::FashionMnist, &dir, Split::Test).unwrap().truncate(6);
    let parts = partition(&data.labels, 3, Partition::Iid, 1).unwrap();
    let models = parts
        .iter()
        .enumerate()
        .map(|(h, idx)| {
            let arch = ArchSpec::builtin("tenseal-cnn1").unwrap();
            let mut model = Model::init(arch, &mut ChaCha20Rng::seed_from_u64(h as u64)).unwrap();
            let cfg = TrainConfig { epochs: 1, seed: h as u64, ..Default::default() };
            train(&mut model, &data.subset(idx), None, &cfg, |_, _| {}, |_| {}).unwrap();
            model
        })
        .collect();
    (models, test)
}

#[test]
fn encrypted_mean_matches_its_plaintext_twin_and_dropout_is_reported() {
    let (mut models, test) = holders();
    let mut holders: Vec<ModelHolder> = models.iter().map(|m| holder_for(m, presets::N8192_DEPTH5_128BIT)).collect();
    let info = holders[0].info().clone();
    let (mut user, keys) = Client::new(&info).unwrap();
    for h in &mut holders {
        assert!(h.handle(&keys).unwrap().is_none());
    }
    let mut coordinator = Coordinator::new(&info, holders.len()).unwrap();
    for i in 0..test.len() {
        let image: Vec<f64> = models[0].normalize(test.images.image(i)).into_iter().map(f64::from).collect();
        let request = user.encrypt(&image).unwrap();
        // Holder 2 drops out on odd images.
        let live: Vec<usize> = if i % 2 == 1 { vec![0, 1] } else { vec![0, 1, 2] };
        for &h in &live {
            let reply = holders[h].handle(&request).unwrap().unwrap();
            coordinator.receive(h, &Message::from_bytes(&reply.to_bytes()).unwrap()).unwrap();
        }
        let out = coordinator.aggregate(Aggregation::Mean).unwrap();
        assert_eq!(out.contributors, live);
        assert_eq!(out.missing, if i % 2 == 1 { vec![2] } else { vec![] });
        let got = user.decrypt_ensemble_scores(&out.message).unwrap();
        let plain: Vec<Vec<f64>> = live
            .iter()
            .map(|&h| {
                let l = models[h].logits(&[test.images.image(i)]).unwrap();
                l.iter().map(|&v| f64::from(v)).collect()
            })
            .collect();
        let refs: Vec<&[f64]> = plain.iter().map(Vec::as_slice).collect();
        let want = Aggregation::Mean.apply_plain(&refs, &live, &Calibration::equal(3)).unwrap();
        let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f64, f64::max);
        assert!(err < 1e-2, "image {i}: encrypted mean off by {err}");
    }
}

#[test]
fn the_coordinator_refuses_keys_foreign_scores_and_empty_rounds() {
    let (models, _) = holders();
    let mut holder = holder_for(&models[0], presets::N8192_DEPTH5_128BIT);
    let info = holder.info().clone();
    let (mut user, keys) = Client::new(&info).unwrap();
    let mut coordinator = Coordinator::new(&info, 2).unwrap();
    // Key material and images are not for the coordinator.
    assert!(matches!(coordinator.receive(0, &keys), Err(ProtocolError::Peer(_))));
    let request = user.encrypt(&[0.0; 784]).unwrap();
    assert!(matches!(coordinator.receive(0, &request), Err(ProtocolError::Peer(_))));
    // Nothing received: no prediction, rather than a wrong one.
    assert!(coordinator.aggregate(Aggregation::Mean).is_err());
    // Scores made under other parameters: a parameter-mismatch error naming both.
    let mut other_holder = holder_for(&models[1], presets::N16384_DEPTH7_128BIT);
    let (mut other_user, other_keys) = Client::new(other_holder.info()).unwrap();
    other_holder.handle(&other_keys).unwrap();
    let foreign = other_holder.handle(&other_user.encrypt(&[0.0; 784]).unwrap()).unwrap().unwrap();
    let err = coordinator.receive(1, &foreign).unwrap_err().to_string();
    assert!(err.contains("parameter"), "{err}");
    // Unknown holder, duplicate reply.
    holder.handle(&keys).unwrap();
    let reply = holder.handle(&request).unwrap().unwrap();
    assert!(coordinator.receive(5, &reply).is_err());
    coordinator.receive(0, &reply).unwrap();
    assert!(coordinator.receive(0, &reply).is_err());
    let out = coordinator.aggregate(Aggregation::Mean).unwrap();
    assert_eq!((out.contributors, out.missing), (vec![0], vec![1]));
    // A second holder's scores for another end user's keys, in the same round.
    let (mut stranger, stranger_keys) = Client::new(&info).unwrap();
    let mut second = holder_for(&models[1], presets::N8192_DEPTH5_128BIT);
    second.handle(&stranger_keys).unwrap();
    let strangers = second.handle(&stranger.encrypt(&[0.0; 784]).unwrap()).unwrap().unwrap();
    coordinator.receive(0, &reply).unwrap();
    let err = coordinator.receive(1, &strangers).unwrap_err().to_string();
    assert!(err.contains("computed with evaluation keys"), "{err}");
    // A plan of more classes than the packed windows hold: refused where it aggregates, not a
    // panic.
    let mut wide = info.clone();
    *wide.arch.layers.last_mut().unwrap() = blindfold_nn::LayerSpec::Dense { outputs: 3000 };
    let cal = Calibration {
        weights: vec![1.0; 2],
        score_bounds: vec![10.0; 2],
        softmax_sum_range: (8.0, 18.0),
        softmax_inverse: [0.1, 0.0],
    };
    let mut coordinator = Coordinator::with_calibration(&wide, cal).unwrap();
    for agg in [Aggregation::SoftmaxMean, Aggregation::Vote] {
        assert!(coordinator.rotation_keys(&[agg]).is_err());
        coordinator.receive(0, &reply).unwrap();
        let err = coordinator.aggregate(agg).unwrap_err().to_string();
        assert!(err.contains("windows"), "{err}");
    }
}

/// Plaintext logits of `model` for the normalized images.
fn logits(model: &mut Model, images: &[&[u8]]) -> Vec<Vec<f64>> {
    let l = model.logits(images).unwrap();
    l.rows().into_iter().map(|r| r.iter().map(|&v| f64::from(v)).collect()).collect()
}

#[test]
fn polynomial_aggregations_match_their_plaintext_twins() {
    let (mut models, _) = holders();
    models.iter_mut().for_each(Model::center_logits);
    let dir = Dataset::FashionMnist.default_dir();
    let test = load(Dataset::FashionMnist, &dir, Split::Test).unwrap();
    // Calibrate on images 100..400, score images 0..3 (never used for calibration).
    let val: Vec<&[u8]> = (100..400).map(|i| test.images.image(i)).collect();
    let val_scores: Vec<Vec<Vec<f64>>> = models.iter_mut().map(|m| logits(m, &val)).collect();
    let cal = Calibration::from_validation(&val_scores, &test.labels[100..400]).unwrap();
    assert!(cal.weights.iter().all(|&w| w > 0.0) && cal.score_bounds.len() == 3);

    let preset = presets::N16384_DEPTH9_128BIT;
    let mut holders: Vec<ModelHolder> = models.iter().map(|m| holder_for(m, preset)).collect();
    let info = holders[0].info().clone();
    let (mut user, keys) = Client::new(&info).unwrap();
    for h in &mut holders {
        h.handle(&keys).unwrap();
    }
    let mut coordinator = Coordinator::with_calibration(&info, cal.clone()).unwrap();
    let all = [Aggregation::Mean, Aggregation::Weighted, Aggregation::SoftmaxMean, Aggregation::Vote];
    // Without the coordinator's keys, the polynomial aggregations are refused, not guessed.
    let request = user.encrypt(&vec![0.0; 784]).unwrap();
    for (h, holder) in holders.iter_mut().enumerate() {
        coordinator.receive(h, &holder.handle(&request).unwrap().unwrap()).unwrap();
    }
    let err = coordinator.aggregate(Aggregation::Vote).unwrap_err().to_string();
    assert!(err.contains("evaluation keys"), "{err}");
    coordinator
        .set_evaluation_keys(&user.evaluation_keys_for(&coordinator.rotation_keys(&all).unwrap()).unwrap())
        .unwrap();

    for i in 0..3 {
        let image: Vec<f64> = models[0].normalize(test.images.image(i)).into_iter().map(f64::from).collect();
        let request = user.encrypt(&image).unwrap();
        let replies: Vec<Message> = holders.iter_mut().map(|h| h.handle(&request).unwrap().unwrap()).collect();
        // Holder 1 drops out of the second image.
        let live: Vec<usize> = if i == 1 { vec![0, 2] } else { vec![0, 1, 2] };
        let plain: Vec<Vec<f64>> =
            live.iter().map(|&h| logits(&mut models[h], &[test.images.image(i)]).remove(0)).collect();
        let refs: Vec<&[f64]> = plain.iter().map(Vec::as_slice).collect();
        for agg in all {
            for &h in &live {
                coordinator.receive(h, &replies[h]).unwrap();
            }
            let out = coordinator.aggregate(agg).unwrap();
            assert_eq!(out.contributors, live);
            let got = user.decrypt_ensemble_scores(&out.message).unwrap();
            let want = agg.apply_plain(&refs, &live, &cal).unwrap();
            let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f64, f64::max);
            let size = want.iter().fold(0f64, |m, v| m.max(v.abs()));
            // Linear aggregations carry the network's error (~1e-3 on these logits); the
            // polynomial ones, whose values are below 1, to 1e-4 of their size (about 1e-5
            // measured).
            let budget = if agg.depth() < 4 { 1e-2 } else { 1e-4 * size };
            assert!(err < budget, "image {i}, {agg}: off by {err} (values up to {size}): {got:?} vs {want:?}");
        }
    }
}
