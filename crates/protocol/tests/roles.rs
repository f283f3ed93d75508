//! All roles in one process: client and model holder exchanging bytes.

use blindfold_ckks::presets;
use blindfold_data::{load, Dataset, Split};
use blindfold_nn::train::{train, TrainConfig};
use blindfold_nn::{argmax, ArchSpec, Model};
use blindfold_protocol::{Client, CompiledModel, Fault, KeyId, Message, ModelHolder, PlanInfo, ProtocolError, Wire};
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
    assert!(matches!(holder.handle(&request), Err(ProtocolError::Peer(_))));
    // Messages meant for the other party.
    // Scores whose ciphertext is 3 bytes of garbage (the variant, the key id, the bytes).
    let mut garbage = vec![2u8];
    garbage.extend_from_slice(&client.key_id().unwrap().0);
    garbage.extend_from_slice(&[3, 1, 2, 3]);
    let scores = Message::from_bytes(&garbage).unwrap();
    assert!(matches!(holder.handle(&scores), Err(ProtocolError::Peer(_))));
    assert!(matches!(client.decrypt_scores(&request), Err(ProtocolError::Peer(_))));
    // Garbage bytes.
    let garbage = Message::from_bytes(&[200, 1, 2]).unwrap_err();
    assert!(matches!(garbage, ProtocolError::Malformed(_)));
    // Whose fault: the other party's for what it sent, the caller's for misuse.
    assert_eq!(garbage.fault(), Fault::Peer);
    assert_eq!(holder.handle(&scores).unwrap_err().fault(), Fault::Peer);
    let other_params = presets::N16384_DEPTH7_128BIT.parameters().unwrap();
    let foreign_sk =
        blindfold_ckks::KeyGenerator::from_seed(&blindfold_ckks::Context::new(&other_params).unwrap(), [1; 32]);
    let misuse = Client::with_secret_key(&info, foreign_sk.secret_key()).err().unwrap();
    assert_eq!(misuse.fault(), Fault::Caller, "{misuse}");
    assert!(matches!(client.decrypt_scores(&scores), Err(ProtocolError::Ckks(_))));
    // Keys made for other parameters: a clear parameter-mismatch error.
    let other = CompiledModel::with_parameters(&model, &other_params).unwrap();
    let (_, other_keys) = Client::new(other.info()).unwrap();
    // A plan whose published keys are not its architecture's: refused by the client.
    let mut greedy: PlanInfo = info.clone();
    greedy.rotation_keys.push(blindfold_tensor::RotationKey { step: 3, level: 2 });
    assert!(matches!(Client::new(&greedy), Err(ProtocolError::Peer(_))));
    let err = holder.handle(&other_keys).unwrap_err().to_string();
    assert!(err.contains("parameter mismatch"), "{err}");
    // Then the right keys work.
    holder.handle(&keys).unwrap();
    let _ = test;
    assert!(holder.handle(&request).unwrap().is_some());
}

#[test]
fn responses_for_other_keys_and_oversized_or_padded_messages_are_refused() {
    let (model, _) = small_model();
    let compiled = CompiledModel::new(&model, &Default::default()).unwrap();
    let mut holder = ModelHolder::new(compiled.clone());
    let info = holder.info().clone();
    let (mut alice, alice_keys) = Client::new(&info).unwrap();
    let (mut bob, _bob_keys) = Client::new(&info).unwrap();
    assert_ne!(alice.key_id(), bob.key_id());
    assert!(holder.handle_bytes(&alice_keys.to_bytes()).unwrap().is_none());
    let image = vec![0.25; 784];
    let reply = Message::from_bytes(&holder.handle_bytes(&alice.encrypt(&image).unwrap().to_bytes()).unwrap().unwrap())
        .unwrap();
    assert!(alice.decrypt_scores(&reply).is_ok());
    // Bob's image names Bob's keys, which this session does not hold.
    let err = holder.handle(&bob.encrypt(&image).unwrap()).unwrap_err().to_string();
    assert!(err.contains("upload the keys first"), "{err}");
    // Alice's scores given to Bob: refused by the key id.
    let err = bob.decrypt_scores(&reply).unwrap_err().to_string();
    assert!(err.contains("another client"), "{err}");
    // And if Bob is told Alice's key id, the decryption itself gives him away: the copies of
    // each score disagree (uniform noise under the wrong key).
    bob.set_key_id(alice.key_id().unwrap());
    let err = bob.decrypt_scores(&reply).unwrap_err();
    assert!(matches!(err, ProtocolError::Undecryptable(_)), "{err}");
    // Scores at a denormal scale decode to infinities: refused, never a class.
    let Message::EncryptedScores { key_id, ciphertext } = &reply else { unreachable!() };
    let mut ct = ciphertext.decode(compiled.context()).unwrap();
    for scale in [5e-324, 1e-300] {
        ct.set_scale(scale);
        let tampered =
            Message::EncryptedScores { key_id: *key_id, ciphertext: Wire::new(&ct, compiled.context()).unwrap() };
        let err = alice.decrypt_scores(&tampered).unwrap_err();
        assert!(matches!(err, ProtocolError::Undecryptable(_)), "scale {scale}: {err}");
    }
    // Trailing bytes after a valid message.
    let mut padded = alice.encrypt(&image).unwrap().to_bytes();
    padded.push(0);
    let err = holder.handle_bytes(&padded).unwrap_err().to_string();
    assert!(err.contains("1 trailing bytes"), "{err}");
    // A request of many more ciphertexts than the plan takes is refused by its size before
    // it is decoded; one of the right size but the wrong count by its count.
    let Message::EncryptedImage { key_id, ciphertexts } = alice.encrypt(&image).unwrap() else { unreachable!() };
    let many = Message::EncryptedImage { key_id, ciphertexts: vec![ciphertexts[0].clone(); 8000] }.to_bytes();
    assert!(many.len() > holder.model().max_message_len());
    let err = holder.handle_bytes(&many).unwrap_err().to_string();
    assert!(err.contains("more than the"), "{err}");
    let few = Message::EncryptedImage { key_id, ciphertexts: ciphertexts[..1].to_vec() };
    if ciphertexts.len() > 1 {
        assert!(holder.handle(&few).unwrap_err().to_string().contains("ciphertexts, the plan takes"));
    }
    // Key ids print and parse.
    let id = alice.key_id().unwrap();
    assert_eq!(KeyId::from_hex(&id.to_hex()).unwrap(), id);
    assert!(KeyId::from_hex("zz").is_err());
}

#[test]
fn circuit_private_responses_show_only_the_scores() {
    use blindfold_ckks::{Decryptor, Encoder};
    use blindfold_nn::compile::ChainOptions;
    let (mut model, test) = small_model();
    let opts = ChainOptions { circuit_privacy: Some(12), ..Default::default() };
    let compiled = CompiledModel::new(&model, &opts).unwrap();
    let flooding = *compiled.flooding().expect("a circuit-private plan floods");
    assert_eq!(flooding.lambda, 12);
    assert!(flooding.width > 0.0 && flooding.width <= blindfold_protocol::MAX_FLOODING_WIDTH);
    let mut holder = ModelHolder::new(compiled.clone());
    let info = holder.info().clone();
    // One more level than the network: the mask.
    assert_eq!(info.circuit_privacy, Some(12));
    assert_eq!(info.depth, model.spec().depth() + 1);
    let (mut client, keys) = Client::new(&info).unwrap();
    // Keys without the public key are refused: the holder could not re-randomize.
    let Message::EvaluationKeys { relinearization, galois, public } = &keys else { unreachable!() };
    assert!(public.is_some());
    let bare =
        Message::EvaluationKeys { relinearization: relinearization.clone(), galois: galois.clone(), public: None };
    let err = holder.handle(&bare).unwrap_err();
    assert!(err.to_string().contains("public key") && err.fault() == Fault::Peer, "{err}");
    holder.handle_bytes(&keys.to_bytes()).unwrap();

    let ctx = compiled.context();
    let (encoder, decryptor) = (Encoder::new(ctx), Decryptor::new(client.secret_key()));
    let output = compiled.circuit().output();
    let result_slots: Vec<usize> = output.features.iter().map(|&(_, s)| s as usize).collect();
    let mut others: Vec<f64> = Vec::new();
    for i in 0..3 {
        let pixels = test.images.image(i);
        let request = client.encrypt_pixels(pixels).unwrap();
        let first = holder.handle(&request).unwrap().unwrap();
        let second = holder.handle(&request).unwrap().unwrap();
        // The same request twice: differently randomized responses.
        assert_ne!(first.to_bytes(), second.to_bytes(), "image {i}");
        let scores = client.decrypt_scores(&first).unwrap();
        let plain = model.logits(&[pixels]).unwrap();
        let s32: Vec<f32> = scores.iter().map(|&v| v as f32).collect();
        assert_eq!(argmax(&s32), argmax(plain.as_slice().unwrap()), "image {i}");
        for (s, p) in scores.iter().zip(plain.iter()) {
            assert!((s - f64::from(*p)).abs() < 0.05, "image {i}: score {s}, plaintext {p}");
        }
        // The raw decryption: the scores in the result slots, flooding noise everywhere else.
        for reply in [&first, &second] {
            let Message::EncryptedScores { ciphertext, .. } = reply else { unreachable!() };
            let slots = encoder.decode_real(&decryptor.decrypt(&ciphertext.decode(ctx).unwrap()).unwrap()).unwrap();
            for (j, &r) in result_slots.iter().enumerate() {
                assert!((slots[r] - scores[j]).abs() < 10.0 * flooding.width + 1e-3, "image {i}, score {j}");
            }
            others.extend(slots.iter().enumerate().filter(|(j, _)| !result_slots.contains(j)).map(|(_, &v)| v));
        }
    }
    let mean = others.iter().sum::<f64>() / others.len() as f64;
    let std = (others.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / others.len() as f64).sqrt();
    assert!(mean.abs() < 0.05 * flooding.width, "mean {mean:e} of the other slots, flooding {:e}", flooding.width);
    assert!(
        (0.9..1.1).contains(&(std / flooding.width)),
        "the other slots have standard deviation {std:e}, the flooding {:e}",
        flooding.width
    );
    // Another client's key still gives itself away (the masked slots are not near zero).
    let (mut bob, _) = Client::new(&info).unwrap();
    bob.set_key_id(client.key_id().unwrap());
    let reply = holder.handle(&client.encrypt_pixels(test.images.image(0)).unwrap()).unwrap().unwrap();
    assert!(matches!(bob.decrypt_scores(&reply), Err(ProtocolError::Undecryptable(_))));
    // A λ the network's precision cannot hold is refused with the λ it can.
    let err = CompiledModel::new(&model, &ChainOptions { circuit_privacy: Some(60), ..Default::default() })
        .unwrap_err()
        .to_string();
    assert!(err.contains("allows λ up to"), "{err}");
}
