//! The ensemble coordinator as a gRPC service. To clients it is a model holder (the same
//! `ModelHolder` RPCs: `Info`, `UploadKeys`, `Evaluate`); behind it, it forwards the client's
//! evaluation keys and each encrypted image to every holder service, waits for each at most a
//! deadline, and combines the encrypted scores that arrived with
//! [`blindfold_protocol::Coordinator`] (the mean: a sum and an exact division, no keys). It
//! holds nothing that decrypts. Holders that fail or miss the deadline are left out and named
//! in the reply's `blindfold-missing` metadata (holder indices, from 0, in `--holders` order).

use crate::proto::model_holder_server::{ModelHolder as ModelHolderRpc, ModelHolderServer};
use crate::proto::{EvaluateReply, EvaluateRequest, InfoReply, InfoRequest, KeysChunk, UploadKeysReply};
use crate::{check_request_len, receive_keys, status, ClientTls, RemoteModelHolder, ReplyStream, KEY_CHUNK, WINDOW};
use blindfold_protocol::{Aggregation, Coordinator, Message, PlanInfo};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::{Request, Response, Status, Streaming};

/// Metadata key of the holders left out of a reply (comma-separated indices).
pub const MISSING_METADATA: &str = "blindfold-missing";

struct State {
    holders: Vec<RemoteModelHolder>,
    info: InfoReply,
    coordinator: Mutex<Coordinator>,
    deadline: Duration,
}

/// The coordinator service.
pub struct CoordinatorService(Arc<State>);

impl CoordinatorService {
    /// Connects to every holder (`urls`, with `tls` for all of them) and checks they serve
    /// the same plan.
    ///
    /// # Errors
    /// `UNAVAILABLE` for a holder that cannot be reached, `FAILED_PRECONDITION` for holders
    /// whose plans differ.
    pub async fn connect(urls: &[String], tls: Option<ClientTls>, deadline: Duration) -> Result<Self, Status> {
        if urls.is_empty() {
            return Err(Status::failed_precondition("an ensemble needs at least one model holder"));
        }
        let mut holders = Vec::with_capacity(urls.len());
        let mut first: Option<(PlanInfo, InfoReply)> = None;
        for url in urls {
            let mut h = RemoteModelHolder::connect(url.clone(), tls.clone()).await?;
            let (plan, info) = h.info().await?;
            match &first {
                Some((p, _)) if *p != plan => {
                    return Err(Status::failed_precondition(format!(
                        "{url} serves another plan than {}: every holder of an ensemble must serve the same \
                         architecture on the same parameters",
                        urls[0]
                    )))
                }
                Some(_) => {}
                None => first = Some((plan, info)),
            }
            holders.push(h);
        }
        let (plan, info) = first.expect("at least one holder");
        let coordinator = Coordinator::new(&plan, urls.len()).map_err(status)?;
        Ok(Self(Arc::new(State { holders, info, coordinator: Mutex::new(coordinator), deadline })))
    }
}

#[tonic::async_trait]
impl ModelHolderRpc for CoordinatorService {
    async fn info(&self, _: Request<InfoRequest>) -> Result<Response<InfoReply>, Status> {
        Ok(Response::new(self.0.info.clone()))
    }

    async fn upload_keys(&self, request: Request<Streaming<KeysChunk>>) -> Result<Response<UploadKeysReply>, Status> {
        let (bytes, _, id) = receive_keys(request.into_inner(), self.0.info.max_keys_bytes as usize).await?;
        // Every holder gets the keys; one that refuses them refuses the upload.
        let bytes = Arc::new(bytes);
        let uploads = self.0.holders.iter().map(|h| {
            let (mut h, bytes) = (h.clone(), bytes.clone());
            async move { h.upload_keys(&bytes).await }
        });
        let mut already = true;
        for (i, r) in futures_join(uploads).await.into_iter().enumerate() {
            match r {
                Ok(present) => already &= present,
                Err(s) if s.code() == tonic::Code::Unavailable => {
                    tracing::warn!(holder = i, "unreachable while keys were uploaded: {}", s.message());
                    already = false;
                }
                Err(s) => return Err(Status::new(s.code(), format!("holder {i}: {}", s.message()))),
            }
        }
        Ok(Response::new(UploadKeysReply { key_id: id.0.to_vec(), already_present: already }))
    }

    async fn evaluate(&self, request: Request<EvaluateRequest>) -> Result<Response<EvaluateReply>, Status> {
        let request = request.into_inner().request;
        check_request_len(request.len(), self.0.info.max_request_bytes as usize)?;
        let request = Arc::new(request);
        let deadline = self.0.deadline;
        let calls = self.0.holders.iter().map(|h| {
            let (mut h, request) = (h.clone(), request.clone());
            async move {
                match tokio::time::timeout(deadline, h.evaluate(request.to_vec())).await {
                    Ok(r) => r,
                    Err(_) => Err(Status::deadline_exceeded(format!("no reply within {} ms", deadline.as_millis()))),
                }
            }
        });
        let replies = futures_join(calls).await;
        // Keys a holder lacks (restarted, evicted): the client uploads again, to all.
        if let Some(s) = replies.iter().filter_map(|r| r.as_ref().err()).find(|s| s.code() == tonic::Code::NotFound) {
            return Err(Status::not_found(s.message().to_string()));
        }
        let limit = self.0.info.max_request_bytes as usize;
        let aggregated = {
            let mut c = self.0.coordinator.lock().unwrap_or_else(|e| e.into_inner());
            for (i, r) in replies.into_iter().enumerate() {
                let received = r.and_then(|bytes| {
                    let msg = Message::from_bytes_limited(&bytes, limit).map_err(status)?;
                    c.receive(i, &msg).map_err(status)
                });
                if let Err(s) = received {
                    tracing::warn!(holder = i, code = ?s.code(), "left out: {}", s.message());
                }
            }
            c.aggregate(Aggregation::Mean)
        }
        .map_err(|e| Status::unavailable(format!("no model holder replied: {e}")))?;
        let mut response = Response::new(EvaluateReply { reply: aggregated.message.to_bytes() });
        let missing: Vec<String> = aggregated.missing.iter().map(ToString::to_string).collect();
        if !missing.is_empty() {
            let value = missing.join(",").parse().map_err(|_| Status::internal("metadata"))?;
            response.metadata_mut().insert(MISSING_METADATA, value);
        }
        Ok(response)
    }

    type EvaluateStreamStream = ReplyStream;

    async fn evaluate_stream(&self, _: Request<Streaming<EvaluateRequest>>) -> Result<Response<ReplyStream>, Status> {
        Err(Status::unimplemented("the coordinator takes one image per Evaluate call"))
    }
}

/// Runs the futures concurrently; their outputs in order.
async fn futures_join<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("a holder call panicked"));
    }
    out
}

/// Serves `service` on `listener` (with TLS when given) until the process ends.
///
/// # Errors
/// A transport error.
pub async fn serve_coordinator(
    service: CoordinatorService,
    listener: tokio::net::TcpListener,
    tls: Option<crate::ServerTls>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let max = service.0.info.max_request_bytes.max(KEY_CHUNK as u64) as usize + 1024;
    let server = ModelHolderServer::new(service).max_decoding_message_size(max).max_encoding_message_size(max);
    crate::server_builder(tls)?
        .initial_stream_window_size(Some(WINDOW))
        .initial_connection_window_size(Some(2 * WINDOW))
        .add_service(server)
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)))
        .await?;
    Ok(())
}
