//! CryptoNN's parties over gRPC with mutual TLS, on loopback: the key authority refuses a
//! data owner's request for function keys (the owner's fault); the training server refuses a
//! second owner for a shard and an owner of another fixed-point encoding; an owner that goes
//! away mid-epoch is reported, its batches skipped, and training goes on equal to the
//! plaintext twin told which batches were skipped.

use blindfold_data::{Images, LabeledImages};
use blindfold_fe::{DlogTable, FixedPoint};
use blindfold_nn::cryptonn::{CryptonnConfig, FixedBatches, PlainProducts, Trainer};
use blindfold_nn::{ArchSpec, Model};
use blindfold_protocol::cryptonn::messages::{Message, Party, Shard, SparseVector, MAX_MESSAGE_LEN};
use blindfold_protocol::cryptonn::parties::{AuthorityParty, OwnerParty};
use blindfold_protocol::cryptonn::server::ServerProducts;
use blindfold_protocol::cryptonn::{Mode, Purpose, TrainingAuthority};
use blindfold_service::cryptonn::{run_owner, serve_authority, AuthorityClient, ServerIdentity, TrainingServerNet};
use blindfold_service::proto::training_server_client::TrainingServerClient;
use blindfold_service::proto::Envelope;
use blindfold_service::{ClientTls, ServerTls};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use std::time::Duration;

const BATCH: usize = 8;

/// `n` images with a class-dependent bright band (labels `i % 10`).
fn banded(n: usize) -> LabeledImages {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    let mut pixels = vec![0u8; n * 784];
    for (i, &l) in labels.iter().enumerate() {
        for p in 0..784 {
            let band = (p / 28) / 3 == l as usize;
            pixels[i * 784 + p] = if band { 200 + (rng.next_u32() % 56) as u8 } else { (rng.next_u32() % 30) as u8 };
        }
    }
    LabeledImages { images: Images { count: n, rows: 28, cols: 28, pixels }, labels }
}

/// A certificate and its private key, PEM.
type Identity = (Vec<u8>, Vec<u8>);

/// A CA (PEM) and certificates for `localhost` signed by it: authority, server, owner.
fn certificates() -> (Vec<u8>, [Identity; 3]) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = || {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_string()]).unwrap().signed_by(&key, &issuer).unwrap();
        (cert.pem().into_bytes(), key.serialize_pem().into_bytes())
    };
    (ca.pem().into_bytes(), [leaf(), leaf(), leaf()])
}

fn decode(bytes: &[u8]) -> Message {
    Message::from_bytes(bytes, MAX_MESSAGE_LEN).unwrap()
}

#[test]
fn parties_over_grpc_refuse_impostors_and_survive_a_lost_owner() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (ca, [authority_id, server_id, owner_id]) = certificates();
    let server_tls = |(cert, key): &Identity| ServerTls {
        cert_pem: cert.clone(),
        key_pem: key.clone(),
        client_ca_pem: Some(ca.clone()),
    };
    let client_tls = |id: &Identity| Some(ClientTls { ca_pem: ca.clone(), identity: Some(id.clone()), domain: None });
    let bind = || rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();

    // The key authority, giving function keys to the server's certificate only.
    let authority = AuthorityParty::new(TrainingAuthority::unrestricted(784, BATCH, Mode::Faithful).unwrap());
    let listener = bind();
    let authority_url = format!("https://localhost:{}", listener.local_addr().unwrap().port());
    let identity = ServerIdentity::from_pem(&server_id.0).unwrap();
    rt.spawn(serve_authority(authority, None, identity, listener, Some(server_tls(&authority_id))));

    // A data owner (a certificate of the CA, not the server's) asking for function keys.
    let mut impostor = rt.block_on(AuthorityClient::connect(&authority_url, client_tls(&owner_id))).unwrap();
    let request = Message::KeyRequests {
        epoch: 0,
        batch: 1,
        purpose: Purpose::Forward,
        vectors: vec![SparseVector { len: 785, entries: vec![(0, 3), (9, -2), (400, 5)] }],
    };
    match decode(&rt.block_on(impostor.exchange(request.to_bytes())).unwrap()) {
        Message::Refused { fault: Party::DataOwner, reason } => assert!(reason.contains("only the training server")),
        other => panic!("a data owner was answered {other:?}"),
    }
    // A large message from a data owner is refused before it is decoded.
    match decode(&rt.block_on(impostor.exchange(vec![0; 1 << 20])).unwrap()) {
        Message::Refused { fault: Party::DataOwner, reason } => {
            assert!(reason.contains("may only ask for public keys"))
        }
        other => panic!("a data owner was answered {other:?}"),
    }
    // Without a client certificate: no connection at all.
    let no_identity = Some(ClientTls { ca_pem: ca.clone(), identity: None, domain: None });
    let refused = match rt.block_on(AuthorityClient::connect(&authority_url, no_identity)) {
        Ok(mut c) => rt.block_on(c.exchange(Message::PublicKeysRequest.to_bytes())).is_err(),
        Err(_) => true,
    };
    assert!(refused, "a client without a certificate was served");

    // The training server, for two owners.
    let listener = bind();
    let server_url = format!("https://localhost:{}", listener.local_addr().unwrap().port());
    let mut net = TrainingServerNet::start(
        rt.handle().clone(),
        listener,
        Some(server_tls(&server_id)),
        2,
        100,
        &authority_url,
        client_tls(&server_id),
    )
    .unwrap();
    net.owner_timeout = Duration::from_secs(30);

    let data = banded(48);
    let members: Vec<Vec<usize>> = (0..2).map(|k| (0..data.len()).filter(|i| i % 2 == k).collect()).collect();
    let shards: Vec<LabeledImages> = members.iter().map(|m| data.subset(m)).collect();
    let encoding = FixedPoint::decimal(2).unwrap();
    let owner =
        |k: u32| OwnerParty::new(k, Shard { index: k, count: 2 }, &shards[k as usize], encoding, 10, BATCH, false);
    let join =
        |k: u32, scale| Message::Join { owner: k, shard: Shard { index: k, count: 2 }, examples: 24, scale }.to_bytes();
    let connect = || {
        rt.block_on(async {
            let channel = tonic::transport::Endpoint::from_shared(server_url.clone())
                .unwrap()
                .tls_config(
                    tonic::transport::ClientTlsConfig::new()
                        .ca_certificate(tonic::transport::Certificate::from_pem(&ca))
                        .identity(tonic::transport::Identity::from_pem(&owner_id.0, &owner_id.1)),
                )
                .unwrap()
                .connect()
                .await
                .unwrap();
            TrainingServerClient::new(channel)
        })
    };

    // Owner 1 joins by hand: it will answer one batch request, then go away.
    let (tx1, rx1) = tokio::sync::mpsc::channel(2);
    rt.block_on(tx1.send(Envelope { message: join(1, 100) })).unwrap();
    let mut client1 = connect();
    let mut inbound1 =
        rt.block_on(client1.contribute(tokio_stream::wrappers::ReceiverStream::new(rx1))).unwrap().into_inner();
    // Another owner naming shard 1 is refused, as the data owner's fault.
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    rt.block_on(tx.send(Envelope { message: join(1, 100) })).unwrap();
    let second = rt.block_on(connect().contribute(tokio_stream::wrappers::ReceiverStream::new(rx))).map(|_| ());
    let status = second.expect_err("a second owner of shard 1 was admitted");
    assert!(status.message().contains("held by a data owner already connected"), "{status:?}");
    assert!(status.message().contains("fault of the data owner"), "{status:?}");
    // An owner of shard 0 encoding with three digits where the run uses two: refused.
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    rt.block_on(tx.send(Envelope { message: join(0, 1000) })).unwrap();
    let other = rt.block_on(connect().contribute(tokio_stream::wrappers::ReceiverStream::new(rx))).map(|_| ());
    let status = other.expect_err("an owner of another encoding was admitted");
    assert!(status.message().contains("encodes at scale 1000, this run at 100"), "{status:?}");
    // An owner declaring more examples than a server schedules for one owner: refused.
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let huge = Message::Join { owner: 0, shard: Shard { index: 0, count: 2 }, examples: u32::MAX, scale: 100 };
    rt.block_on(tx.send(Envelope { message: huge.to_bytes() })).unwrap();
    let other = rt.block_on(connect().contribute(tokio_stream::wrappers::ReceiverStream::new(rx))).map(|_| ());
    assert!(other.expect_err("a huge owner was admitted").message().contains("declares 4294967295 examples"));

    std::thread::scope(|s| {
        // Owner 0: a whole owner, to the end of training.
        let (ca_tls, owner_tls) = (client_tls(&owner_id), client_tls(&owner_id));
        let handle = rt.handle().clone();
        let (server_url, authority_url) = (&server_url, &authority_url);
        let owner0 = s.spawn(move || {
            let mut party = owner(0);
            run_owner(&handle, &mut party, server_url, ca_tls, authority_url, owner_tls)
        });
        // Owner 1: its first batch, then it is gone.
        let handle = rt.handle().clone();
        let mut authority = rt.block_on(AuthorityClient::connect(authority_url, client_tls(&owner_id))).unwrap();
        s.spawn(move || {
            let mut party = owner(1);
            let keys = decode(&handle.block_on(authority.exchange(Message::PublicKeysRequest.to_bytes())).unwrap());
            assert!(party.handle(Party::KeyAuthority, &keys).is_empty());
            let request = handle.block_on(inbound1.message()).unwrap().unwrap();
            let reply = party.handle(Party::TrainingServer, &decode(&request.message));
            assert!(matches!(reply[0].1, Message::EncryptedBatch { .. }), "{:?}", reply[0].1.kind());
            handle.block_on(tx1.send(Envelope { message: reply[0].1.to_bytes() })).unwrap();
            // Gone once the next request shows the batch arrived.
            assert!(handle.block_on(inbound1.message()).unwrap().is_some());
            drop((tx1, inbound1, client1));
        });

        let sizes = net.wait_for_owners(Duration::from_secs(60), |_| ()).unwrap();
        assert_eq!(sizes, [24, 24]);
        let cfg = CryptonnConfig { epochs: 1, learning_rate: 2e-3, clip_norm: 5.0, encoding, seed: 7, hardened: None };
        let (local, owner_of) = FixedBatches::sharded(&sizes, BATCH, 11);
        let global = local.mapped(&owner_of, &members);
        let model = Model::init(ArchSpec::builtin("mlp").unwrap(), &mut ChaCha20Rng::seed_from_u64(5)).unwrap();
        let mut fe = Trainer::new(model.clone(), &local, cfg.clone()).unwrap();
        let mut twin = Trainer::new(model, &global, cfg).unwrap();
        let bound = 1 << 23;
        let table = DlogTable::new(bound, (2 * bound + 1) as usize / 8).unwrap();
        let owners = owner_of.iter().map(|&k| k as u32).collect();
        let mut products =
            ServerProducts::new(net, table, local.clone(), owners, 784, 10, encoding, Mode::Faithful, false).unwrap();
        products.start_epoch(0);
        fe.epoch(&local, &mut products, |_, _| ()).unwrap();
        products.link_mut().finish();
        let summary = owner0.join().unwrap().unwrap();
        assert_eq!(summary.batches, 3, "owner 0 has 24 examples: 3 batches");

        // Owner 1's first batch trained; its other two skipped, reported, and the twin equal.
        let skipped: Vec<usize> = fe.skipped().iter().map(|s| s.1).collect();
        assert_eq!(skipped.len(), 2, "{:?}", fe.skipped());
        assert!(skipped.iter().all(|&b| owner_of[b] == 1));
        assert!(products.reports().iter().any(|r| r.contains("data owner 1 dropped")), "{:?}", products.reports());
        let mut plain = PlainProducts::new(&data, &global, encoding, bound, 10);
        plain.set_unavailable(skipped);
        twin.epoch(&global, &mut plain, |_, _| ()).unwrap();
        assert_eq!(fe.first_layer(), twin.first_layer(), "training over the network left the twin");
        let bytes = &products.link().bytes;
        assert_eq!(bytes.len(), 3, "{bytes:?}");
        assert!(bytes.values().all(|&(sent, received)| sent > 0 && received > 0), "{bytes:?}");
    });
}
