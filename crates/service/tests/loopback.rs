//! The model-holder service on loopback: a real server and a real gRPC client, plan, keys
//! (idempotent upload), evaluation, and refusals with the right status.

use blindfold_nn::{ArchSpec, Model};
use blindfold_protocol::{Client, CompiledModel, Message};
use blindfold_service::{serve, ClientTls, RemoteModelHolder, ServeOptions, ServerTls};
use rand_core::SeedableRng;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_loopback_gets_its_scores_and_bad_requests_their_status() {
    let arch = ArchSpec::builtin("tenseal-cnn1").unwrap();
    let model = Model::init(arch, &mut rand_chacha::ChaCha20Rng::seed_from_u64(3)).unwrap();
    let compiled = CompiledModel::new(&model, &Default::default()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let opts = ServeOptions { max_sessions: 1, ..Default::default() };
    let server = tokio::spawn(serve(compiled.clone(), listener, opts));

    let mut remote = RemoteModelHolder::connect(url.clone(), None).await.unwrap();
    // The standard health service reports the model holder as serving.
    let channel = tonic::transport::Endpoint::from_shared(url.clone()).unwrap().connect().await.unwrap();
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest { service: "blindfold.v1.ModelHolder".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status(), tonic_health::pb::health_check_response::ServingStatus::Serving);
    let (plan, limits) = remote.info().await.unwrap();
    assert_eq!(&plan, compiled.info());
    let (mut client, keys) = tokio::task::block_in_place(|| Client::new(&plan)).unwrap();
    let keys = keys.to_bytes();
    assert!(keys.len() as u64 <= limits.max_keys_bytes);
    assert!(!remote.upload_keys(&keys).await.unwrap());
    assert!(remote.upload_keys(&keys).await.unwrap(), "a second upload of the same keys is a no-op");

    let image = vec![0.3; 784];
    let request = client.encrypt(&image).unwrap().to_bytes();
    let reply = remote.evaluate(request.clone()).await.unwrap();
    let scores = client.decrypt_scores(&Message::from_bytes(&reply).unwrap()).unwrap();
    let want = compiled.circuit().evaluate_plain(&compiled.circuit().packing().pack(&image).unwrap()).unwrap();
    let want = compiled.circuit().output().unpack(&[want]);
    let err = scores.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f64, f64::max);
    assert!(err < 1e-2, "remote scores off by {err}");

    // Three images on one stream: three replies, in order.
    let images: Vec<Vec<f64>> = (0..3).map(|k| vec![0.1 * k as f64; 784]).collect();
    let requests: Vec<Vec<u8>> = images.iter().map(|x| client.encrypt(x).unwrap().to_bytes()).collect();
    let replies = remote.evaluate_stream(requests).await.unwrap();
    assert_eq!(replies.len(), 3);
    for (x, reply) in images.iter().zip(&replies) {
        let got = client.decrypt_scores(&Message::from_bytes(reply).unwrap()).unwrap();
        let twin = compiled.circuit().evaluate_plain(&compiled.circuit().packing().pack(x).unwrap()).unwrap();
        let want = compiled.circuit().output().unpack(&[twin]);
        assert!(got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-2));
    }
    // A bad image ends the stream with its status.
    let status = remote.evaluate_stream(vec![vec![200, 1, 2]]).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
    // Garbage, keys where an image belongs, a request one byte over the plan's limit.
    let status = remote.evaluate(vec![200, 1, 2]).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
    // (keys are far larger than any request: refused by gRPC's own limit before decoding)
    let status = remote.evaluate(keys.clone()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status}");
    let status = remote.evaluate(vec![0; limits.max_request_bytes as usize + 1]).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status}");
    // Another client's keys evict the first (one session kept): its image is NOT_FOUND until
    // it uploads again.
    let (_, other_keys) = tokio::task::block_in_place(|| Client::new(&plan)).unwrap();
    remote.upload_keys(&other_keys.to_bytes()).await.unwrap();
    let status = remote.evaluate(request.clone()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert!(status.message().contains("upload again"), "{status}");
    remote.upload_keys(&keys).await.unwrap();
    assert!(remote.evaluate(request).await.is_ok());
    // The metrics on the same port, over HTTP/1.1: calls by RPC and status, sessions, the
    // evaluation time histogram.
    let addr = url.trim_start_matches("http://").to_string();
    let metrics = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
        let mut text = String::new();
        tcp.read_to_string(&mut text).unwrap();
        text
    })
    .await
    .unwrap();
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    for line in [
        "blindfold_requests_total{rpc=\"Evaluate\",code=\"NotFound\"} 1",
        "blindfold_requests_total{rpc=\"Evaluate\",code=\"ResourceExhausted\"} 1",
        "blindfold_requests_total{rpc=\"UploadKeys\",code=\"Ok\"} 4",
        "blindfold_sessions 1",
        "blindfold_evaluate_seconds_count 5",
        "blindfold_requests_total{rpc=\"EvaluateStream\",code=\"Ok\"} 3",
        "blindfold_in_flight 0",
    ] {
        assert!(metrics.contains(line), "{line:?} not in {metrics}");
    }
    // An address with nothing behind it.
    server.abort();
    assert!(RemoteModelHolder::connect("http://127.0.0.1:1".into(), None).await.is_err());
}

/// A CA, a certificate for `localhost` signed by it, and a client certificate signed by it
/// (PEM): (ca, (server cert, server key), (client cert, client key)).
type Pems = (Vec<u8>, (Vec<u8>, Vec<u8>), (Vec<u8>, Vec<u8>));

fn certificates() -> Pems {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_string()]).unwrap().signed_by(&key, &issuer).unwrap();
        (cert.pem().into_bytes(), key.serialize_pem().into_bytes())
    };
    (ca.pem().into_bytes(), leaf("localhost"), leaf("client"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_only_clients_with_a_certificate_of_the_ca() {
    let (ca, server_id, client_id) = certificates();
    let arch = ArchSpec::builtin("tenseal-cnn1").unwrap();
    let model = Model::init(arch, &mut rand_chacha::ChaCha20Rng::seed_from_u64(4)).unwrap();
    let compiled = CompiledModel::new(&model, &Default::default()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let tls = ServerTls { cert_pem: server_id.0, key_pem: server_id.1, client_ca_pem: Some(ca.clone()) };
    let server = tokio::spawn(serve(compiled.clone(), listener, ServeOptions { tls: Some(tls), ..Default::default() }));
    let url = format!("https://localhost:{port}");
    let client_tls = |identity| ClientTls { ca_pem: ca.clone(), identity, domain: None };
    // With the CA and a client certificate: served.
    let mut remote = RemoteModelHolder::connect(url.clone(), Some(client_tls(Some(client_id)))).await.unwrap();
    let (plan, _) = remote.info().await.unwrap();
    assert_eq!(&plan, compiled.info());
    // Without a client certificate, or in plain HTTP/2: refused.
    let refused = match RemoteModelHolder::connect(url.clone(), Some(client_tls(None))).await {
        Ok(mut r) => r.info().await.is_err(),
        Err(_) => true,
    };
    assert!(refused, "a client without a certificate was served");
    let plain = match RemoteModelHolder::connect(format!("http://localhost:{port}"), None).await {
        Ok(mut r) => r.info().await.is_err(),
        Err(_) => true,
    };
    assert!(plain, "a plain-text client was served");
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_in_the_key_store_survive_a_restart() {
    let dir = std::env::temp_dir().join(format!("blindfold-key-store-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let arch = ArchSpec::builtin("tenseal-cnn1").unwrap();
    let model = Model::init(arch, &mut rand_chacha::ChaCha20Rng::seed_from_u64(5)).unwrap();
    let compiled = CompiledModel::new(&model, &Default::default()).unwrap();
    let start = |compiled: std::sync::Arc<CompiledModel>| {
        let dir = dir.clone();
        async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let opts = ServeOptions { key_store: Some(dir), max_stored: 2, ..Default::default() };
            (url, tokio::spawn(serve(compiled, listener, opts)))
        }
    };
    let (url, first) = start(compiled.clone()).await;
    let mut remote = RemoteModelHolder::connect(url, None).await.unwrap();
    let (plan, _) = remote.info().await.unwrap();
    let (mut client, keys) = tokio::task::block_in_place(|| Client::new(&plan)).unwrap();
    remote.upload_keys(&keys.to_bytes()).await.unwrap();
    let request = client.encrypt(&vec![0.1; 784]).unwrap().to_bytes();
    remote.evaluate(request.clone()).await.unwrap();
    first.abort();
    // A new server process on the same store: the image evaluates without a new upload.
    let (url, second) = start(compiled.clone()).await;
    let mut remote = RemoteModelHolder::connect(url, None).await.unwrap();
    let reply = remote.evaluate(request).await.unwrap();
    assert!(client.decrypt_scores(&Message::from_bytes(&reply).unwrap()).is_ok());
    // The store keeps at most two key sets.
    for _ in 0..2 {
        let (_, other) = tokio::task::block_in_place(|| Client::new(&plan)).unwrap();
        remote.upload_keys(&other.to_bytes()).await.unwrap();
    }
    let stored = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "keys"))
        .count();
    assert_eq!(stored, 2);
    second.abort();
    let _ = std::fs::remove_dir_all(&dir);
}
