//! All roles in one process: client and model holder exchanging bytes.

use blindfold_ckks::presets;
use blindfold_data::{load, Dataset, Split};
use blindfold_nn::train::{train, TrainConfig};
use blindfold_nn::{argmax, ArchSpec, Model};
use blindfold_protocol::{Client, CompiledModel, Message, ModelHolder, PlanInfo, ProtocolError};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

fn small_model() -> (Model, blindfold_data::LabeledImages) {
    let dir = Dataset::FashionMnist.default_dir();
    let data = load(Dataset::FashionMnist, &dir, Split::Train).expect("Fashion-MNIST installed").truncate(2000);
    let test = load(Dataset::FashionMnist, &dir, Split::Test).unwrap().truncate(20);
    let mut model =
        Model::init(ArchSpec::builtin("tenseal-cnn1").unwrap(), &mut ChaCha20Rng::seed_from_u64(2)).unwrap();
    train(&mut model, &data, None, &TrainConfig { epochs: 1, ..Default::default() }, |_, _| {}, |_| {}).unwrap();
    (model, test)
}

#[test]
fn client_and_model_holder_agree_with_plaintext() {
    let (mut model, test) = small_model();
    let mut holder = ModelHolder::new(CompiledModel::new(&model, &Default::default()).unwrap());
    // The client sees the architecture, not the weights.
    let info = PlanInfo::clone(holder.info());
    let (mut client, keys) = Client::new(&info).unwrap();
    assert!(holder.handle(&Message::from_bytes(&keys.to_bytes()).unwrap()).unwrap().is_none());
    for i in 0..4 {
        let image: Vec<f64> = model.normalize(test.images.image(i)).into_iter().map(f64::from).collect();
        let request = client.encrypt(&image).unwrap();
        let reply = holder.handle(&Message::from_bytes(&request.to_bytes()).unwrap()).unwrap().unwrap();
        let scores = client.decrypt_scores(&Message::from_bytes(&reply.to_bytes()).unwrap()).unwrap();
        let plain = model.logits(&[test.images.image(i)]).unwrap();
        let s32: Vec<f32> = scores.iter().map(|&v| v as f32).collect();
        assert_eq!(argmax(&s32), argmax(plain.as_slice().unwrap()), "image {i}");
    }
}

#[test]
fn wrong_messages_and_foreign_keys_are_refused() {
    let (model, test) = small_model();
    let mut holder = ModelHolder::new(CompiledModel::new(&model, &Default::default()).unwrap());
    let info = holder.info().clone();
    let (mut client, keys) = Client::new(&info).unwrap();
    let image: Vec<f64> = vec![0.0; 784];
    let request = client.encrypt(&image).unwrap();
    // An image before the keys.
    assert!(matches!(holder.handle(&request), Err(ProtocolError::Unexpected(_))));
    // Messages meant for the other party.
    let scores = Message::EncryptedScores { ciphertext: vec![1, 2, 3] };
    assert!(matches!(holder.handle(&scores), Err(ProtocolError::Unexpected(_))));
    assert!(matches!(client.decrypt_scores(&request), Err(ProtocolError::Unexpected(_))));
    // Garbage bytes.
    assert!(matches!(Message::from_bytes(&[200, 1, 2]), Err(ProtocolError::Malformed(_))));
    assert!(matches!(client.decrypt_scores(&scores), Err(ProtocolError::Ckks(_))));
    // Keys made for other parameters: a clear parameter-mismatch error.
    let other_params = presets::N16384_DEPTH7_128BIT.parameters().unwrap();
    let other = CompiledModel::with_parameters(&model, &other_params).unwrap();
    let (_, other_keys) = Client::new(other.info()).unwrap();
    // A plan whose published keys are not its architecture's: refused by the client.
    let mut greedy: PlanInfo = info.clone();
    greedy.rotation_keys.push(blindfold_tensor::RotationKey { step: 3, level: 2 });
    assert!(matches!(Client::new(&greedy), Err(ProtocolError::Unexpected(_))));
    let err = holder.handle(&other_keys).unwrap_err().to_string();
    assert!(err.contains("parameter mismatch"), "{err}");
    // Then the right keys work.
    holder.handle(&keys).unwrap();
    let _ = test;
    assert!(holder.handle(&request).unwrap().is_some());
}
