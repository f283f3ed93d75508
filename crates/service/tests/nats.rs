//! Scale-out on NATS JetStream: a real `nats-server` (started here on a free loopback port,
//! stopped at the end), two model-holder replicas sharing its key store and work queue, and a
//! client that talks only to NATS. A replica that stops mid-run loses no request and none is
//! answered twice; the keys outlive a restart of the NATS server. And the same over mutual
//! TLS.

use blindfold_nn::{ArchSpec, Model};
use blindfold_protocol::{Client, CompiledModel, Message};
use blindfold_service::{serve, NatsModelHolder, NatsOptions, NatsTls, ServeOptions};
use rand_core::SeedableRng;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// A `nats-server` with JetStream on `port`, its store in `dir`.
struct NatsServer {
    child: Child,
}

impl NatsServer {
    fn start(port: u16, dir: &std::path::Path) -> Self {
        Self::start_with(port, dir, "")
    }

    /// A server with `extra` in its configuration (e.g. a `tls { … }` block).
    fn start_with(port: u16, dir: &std::path::Path, extra: &str) -> Self {
        let conf = dir.join("nats.conf");
        let store = dir.join("jetstream");
        std::fs::write(
            &conf,
            format!("listen: 127.0.0.1:{port}\nmax_payload: 8MB\njetstream {{ store_dir: {store:?} }}\n{extra}\n"),
        )
        .unwrap();
        let server = Self {
            child: Command::new("nats-server")
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("nats-server is not installed: run scripts/setup.sh (Debian package nats-server)"),
        };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("nats-server did not start on port {port}");
    }

    /// Stops the server as an operator would (SIGTERM: it shuts down cleanly, its JetStream
    /// store written out). A SIGKILL can lose the newest writes of the file store, and a
    /// restarted server then hands new messages sequence numbers its consumers have passed.
    fn stop(mut self) {
        let status = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status().unwrap();
        assert!(status.success());
        self.child.wait().unwrap();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A replica on a runtime of its own (shutting the runtime down stops it mid-work).
fn replica(model: Arc<CompiledModel>, opts: NatsOptions) -> tokio::runtime::Runtime {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    runtime.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let opts = ServeOptions { nats: Some(opts), ..Default::default() };
        serve(model, listener, opts).await.unwrap();
    });
    runtime
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_nats_share_keys_and_work_and_lose_nothing_when_one_stops() {
    // The replicas' warnings (reconnects, rebinding the work queue) in the test's output.
    let _ = tracing_subscriber::fmt().with_max_level(tracing::Level::WARN).with_test_writer().try_init();
    let dir = std::env::temp_dir().join(format!("blindfold-nats-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let nats = NatsServer::start(port, &dir);
    let url = format!("nats://127.0.0.1:{port}");

    let arch = ArchSpec::builtin("tenseal-cnn1").unwrap();
    let model = Model::init(arch, &mut rand_chacha::ChaCha20Rng::seed_from_u64(5)).unwrap();
    let compiled = CompiledModel::new(&model, &Default::default()).unwrap();
    let opts = NatsOptions { ack_wait: Duration::from_secs(2), ..NatsOptions::new(&url) };
    let first = replica(compiled.clone(), opts.clone());
    // Let the first replica create the streams and bucket before the second looks for them.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = replica(compiled.clone(), opts);

    let mut remote = connect(&url).await;
    let (plan, limits) = remote.info().await.unwrap();
    assert_eq!(&plan, compiled.info());
    let (mut client, keys) = tokio::task::block_in_place(|| Client::new(&plan)).unwrap();
    let keys = keys.to_bytes();
    assert!(!remote.upload_keys(&keys).await.unwrap());
    assert!(remote.upload_keys(&keys).await.unwrap(), "a second upload of the same keys is a no-op");

    let twin = |x: &[f64]| {
        let c = compiled.circuit();
        c.output().unpack(&[c.evaluate_plain(&c.packing().pack(x).unwrap()).unwrap()])
    };
    let images: Vec<Vec<f64>> =
        (0..24).map(|k| (0..784).map(|i| ((i * 7 + 3 * k) % 17) as f64 / 17.0).collect()).collect();
    let requests: Vec<Vec<u8>> = images.iter().map(|x| client.encrypt(x).unwrap().to_bytes()).collect();
    let check = |batch: Vec<blindfold_service::NatsReply>, client: &Client| {
        for (x, (reply, _)) in images.iter().zip(batch) {
            let reply = reply.unwrap();
            let scores = client.decrypt_scores(&Message::from_bytes(&reply).unwrap()).unwrap();
            let err = scores.iter().zip(twin(x)).map(|(a, b)| (a - b).abs()).fold(0f64, f64::max);
            assert!(err < 1e-2, "scores off by {err}");
        }
    };
    // Both replicas take work from the queue.
    check(remote.evaluate_many(requests.clone(), 4).await.unwrap(), &client);

    // The first replica stops with work in hand: its requests go to the second after the
    // acknowledgement wait, and every request is answered once.
    let run = {
        let requests = requests.clone();
        let url = url.clone();
        tokio::spawn(async move {
            let mut r = connect(&url).await;
            let batch = r.evaluate_many(requests, 6).await;
            // Wait past the acknowledgement wait for a second reply to any request.
            r.drain(Duration::from_secs(3)).await;
            (batch, r.duplicates())
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    first.shutdown_background();
    let (batch, duplicates) = run.await.unwrap();
    check(batch.unwrap(), &client);
    assert_eq!(duplicates, 0, "a request answered twice");

    // Refusals come back as the request's reply, with the gRPC status.
    let (mut stranger, _) = tokio::task::block_in_place(|| Client::new(&plan)).unwrap();
    let unknown = stranger.encrypt(&images[0]).unwrap().to_bytes();
    let oversized = vec![0; limits.max_request_bytes as usize + 1];
    let batch = remote.evaluate_many(vec![vec![200, 1, 2], unknown, oversized], 3).await.unwrap();
    let codes: Vec<tonic::Code> = batch.iter().map(|(r, _)| r.as_ref().unwrap_err().code()).collect();
    assert_eq!(codes, [tonic::Code::InvalidArgument, tonic::Code::NotFound, tonic::Code::ResourceExhausted]);
    // A request given as keys is refused, and leaves nothing in the store.
    let status = remote.upload_keys(&requests[0]).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");

    // A restart of the NATS server: the replica reconnects, the keys are still there.
    nats.stop();
    let nats = NatsServer::start(port, &dir);
    let mut remote = connect(&url).await;
    assert!(remote.upload_keys(&keys).await.unwrap(), "the keys outlived the restart");
    check(remote.evaluate_many(requests[..4].to_vec(), 2).await.unwrap(), &client);

    second.shutdown_background();
    nats.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// With TLS: a NATS server that requires TLS and client certificates (its own CA, made here);
/// a replica and a client with certificates work as without; a client without its
/// certificate, or one that does not trust the server's CA, is refused at the handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_and_clients_reach_nats_over_mutual_tls() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let dir = std::env::temp_dir().join(format!("blindfold-nats-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let file = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let ca_file = file("ca.pem", ca.pem());
    let leaf = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_string()]).unwrap().signed_by(&key, &issuer).unwrap();
        (file(&format!("{name}.pem"), cert.pem()), file(&format!("{name}.key"), key.serialize_pem()))
    };
    let (server_cert, server_key) = leaf("localhost");
    let identity = leaf("client");
    let tls =
        format!("tls {{ cert_file: {server_cert:?}, key_file: {server_key:?}, ca_file: {ca_file:?}, verify: true }}");
    let port = free_port();
    let nats = NatsServer::start_with(port, &dir, &tls);
    let url = format!("nats://localhost:{port}");
    let tls = NatsTls { ca: ca_file.clone(), identity: Some(identity) };

    let arch = ArchSpec::builtin("tenseal-cnn1").unwrap();
    let model = Model::init(arch, &mut rand_chacha::ChaCha20Rng::seed_from_u64(6)).unwrap();
    let compiled = CompiledModel::new(&model, &Default::default()).unwrap();
    let replica = replica(compiled.clone(), NatsOptions { tls: Some(tls.clone()), ..NatsOptions::new(&url) });
    let mut remote = None;
    for _ in 0..100 {
        if let Ok(r) = NatsModelHolder::connect(&url, "blindfold", Some(&tls)).await {
            remote = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut remote = remote.expect("a client over TLS");
    let (plan, _) = remote.info().await.unwrap();
    let (mut client, keys) = tokio::task::block_in_place(|| Client::new(&plan)).unwrap();
    remote.upload_keys(&keys.to_bytes()).await.unwrap();
    let image = vec![0.25; 784];
    let reply = remote.evaluate(client.encrypt(&image).unwrap().to_bytes()).await.unwrap();
    let got = client.decrypt_scores(&Message::from_bytes(&reply).unwrap()).unwrap();
    let c = compiled.circuit();
    let want = c.output().unpack(&[c.evaluate_plain(&c.packing().pack(&image).unwrap()).unwrap()]);
    assert!(got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-2));

    // No client certificate: the server refuses the handshake. No TLS at all: refused too.
    let anonymous = NatsTls { ca: ca_file, identity: None };
    assert!(NatsModelHolder::connect(&url, "blindfold", Some(&anonymous)).await.is_err());
    let status = NatsModelHolder::connect(&url, "blindfold", None).await.err().expect("refused without TLS");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
    replica.shutdown_background();
    nats.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A client, retrying while the NATS server (re)starts.
async fn connect(url: &str) -> NatsModelHolder {
    for _ in 0..100 {
        if let Ok(mut r) = NatsModelHolder::connect(url, "blindfold", None).await {
            r.set_timeout(Duration::from_secs(60));
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no connection to {url}");
}
