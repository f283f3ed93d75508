//! The ensemble over the network: three model-holder services and a coordinator service on
//! loopback; the client's decrypted scores are the mean of the holders' plaintext twins, and
//! a holder that stops is left out and named.

use blindfold_nn::{ArchSpec, Model};
use blindfold_protocol::{Client, CompiledModel, Message};
use blindfold_service::{serve, serve_coordinator, CoordinatorService, RemoteModelHolder, ServeOptions};
use rand_core::SeedableRng;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_averages_its_holders_and_names_the_missing() {
    let arch = ArchSpec::builtin("tenseal-cnn1").unwrap();
    let (mut urls, mut models, mut servers) = (Vec::new(), Vec::new(), Vec::new());
    for seed in 1..=3 {
        let model = Model::init(arch.clone(), &mut rand_chacha::ChaCha20Rng::seed_from_u64(seed)).unwrap();
        let compiled = CompiledModel::new(&model, &Default::default()).unwrap();
        // Each holder on a runtime of its own, so that stopping it closes its connections.
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        urls.push(format!("http://{}", listener.local_addr().unwrap()));
        let model = compiled.clone();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            serve(model, listener, ServeOptions::default()).await
        });
        servers.push(runtime);
        models.push(compiled);
    }
    let coordinator = CoordinatorService::connect(&urls, None, Duration::from_secs(20)).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(serve_coordinator(coordinator, listener, None));

    let mut remote = RemoteModelHolder::connect(url, None).await.unwrap();
    let (plan, _) = remote.info().await.unwrap();
    assert_eq!(&plan, models[0].info());
    let (mut client, keys) = tokio::task::block_in_place(|| Client::new(&plan)).unwrap();
    remote.upload_keys(&keys.to_bytes()).await.unwrap();
    let twin = |m: &CompiledModel, x: &[f64]| {
        let c = m.circuit();
        c.output().unpack(&[c.evaluate_plain(&c.packing().pack(x).unwrap()).unwrap()])
    };
    let mean = |which: &[usize], x: &[f64]| -> Vec<f64> {
        let outs: Vec<Vec<f64>> = which.iter().map(|&h| twin(&models[h], x)).collect();
        (0..outs[0].len()).map(|j| outs.iter().map(|o| o[j]).sum::<f64>() / which.len() as f64).collect()
    };
    for (k, expect) in [(0, vec![0, 1, 2]), (1, vec![0, 1])] {
        if k == 1 {
            // Holder 2 stops: the coordinator leaves it out and says so.
            servers.pop().unwrap().shutdown_background();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let image: Vec<f64> = (0..784).map(|i| ((i * 7 + k) % 13) as f64 / 13.0).collect();
        let request = client.encrypt(&image).unwrap().to_bytes();
        let (reply, missing) = remote.evaluate_reporting(request).await.unwrap();
        assert_eq!(missing, if k == 0 { vec![] } else { vec![2] });
        let got = client.decrypt_scores(&Message::from_bytes(&reply).unwrap()).unwrap();
        let want = mean(&expect, &image);
        let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f64, f64::max);
        assert!(err < 1e-2, "holders {expect:?}: scores off by {err}");
    }
    servers.into_iter().for_each(tokio::runtime::Runtime::shutdown_background);
}
