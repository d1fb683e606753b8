//! One client connection: handshake, then requests one at a time.

use crate::server::Shared;
use crate::wire::{FrameReader, FrameWriter, ReadError};
use crate::{exec, files, system};
use flick_proto::{ErrorBody, Hello, HelloOk, Message, PROTOCOL_VERSION, Request, codes};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// The client must authenticate within this time.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The connection cannot continue (the peer left, or broke the protocol).
#[derive(Debug)]
pub struct Closed;

/// Sends an error frame for a protocol violation; the caller then closes.
pub async fn bad_frame<W: AsyncWrite + Unpin>(wr: &mut FrameWriter<W>, err: &ReadError) -> Closed {
    if let ReadError::Proto(e) = err {
        let _ = wr
            .send(&Message::Error(ErrorBody::new(
                codes::BAD_FRAME,
                e.to_string(),
            )))
            .await;
    }
    Closed
}

/// Serves one connection until the client leaves or breaks the protocol.
pub async fn serve<S>(stream: S, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (r, w) = tokio::io::split(stream);
    let mut rd = FrameReader::new(r);
    let mut wr = FrameWriter::new(w);
    if handshake(&mut rd, &mut wr, &shared).await.is_err() {
        return;
    }
    loop {
        let req = match rd.read_frame().await {
            Ok(None) => return,
            Ok(Some(Message::Request(req))) => req,
            // Late frames of an exec that already ended are harmless.
            Ok(Some(
                Message::Stdin(_) | Message::StdinEof | Message::Signal(_) | Message::Resize(_),
            )) => continue,
            Ok(Some(other)) => {
                let _ = wr
                    .send(&Message::Error(ErrorBody::new(
                        codes::BAD_FRAME,
                        format!("expected a request, got a {:?} frame", other.kind()),
                    )))
                    .await;
                return;
            }
            Err(e) => {
                bad_frame(&mut wr, &e).await;
                return;
            }
        };
        if dispatch(req, &mut rd, &mut wr, &shared).await.is_err() {
            return;
        }
    }
}

async fn handshake<R, W>(
    rd: &mut FrameReader<R>,
    wr: &mut FrameWriter<W>,
    shared: &Shared,
) -> Result<(), Closed>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let first = match tokio::time::timeout(HANDSHAKE_TIMEOUT, rd.read_frame()).await {
        Err(_) | Ok(Ok(None)) => return Err(Closed),
        Ok(Err(e)) => return Err(bad_frame(wr, &e).await),
        Ok(Ok(Some(m))) => m,
    };
    let Message::Hello(Hello { version, token }) = first else {
        let _ = wr
            .send(&Message::Error(ErrorBody::new(
                codes::BAD_FRAME,
                "the first frame must be a hello",
            )))
            .await;
        return Err(Closed);
    };
    let token_ok = flick_proto::constant_time_eq(token.as_bytes(), &shared.config.token);
    if !token_ok || version != PROTOCOL_VERSION {
        let message = if token_ok {
            format!("protocol version {version} is not supported (agent speaks {PROTOCOL_VERSION})")
        } else {
            "invalid token".to_owned()
        };
        let _ = wr
            .send(&Message::Error(ErrorBody::new(
                codes::UNAUTHORIZED,
                message,
            )))
            .await;
        return Err(Closed);
    }
    wr.send(&Message::HelloOk(HelloOk {
        version: PROTOCOL_VERSION,
        agent_version: crate::AGENT_VERSION.to_owned(),
    }))
    .await
    .map_err(|_| Closed)
}

async fn dispatch<R, W>(
    req: Request,
    rd: &mut FrameReader<R>,
    wr: &mut FrameWriter<W>,
    shared: &Arc<Shared>,
) -> Result<(), Closed>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let answer = match req {
        Request::Exec(req) => return exec::run(req, rd, wr, shared).await,
        Request::Upload(req) => return files::upload(req, rd, wr).await,
        Request::Download {
            path,
            skip_checksum,
        } => return files::download(&path, !skip_checksum, wr).await,
        Request::Health => Ok(system::health(shared)),
        Request::Version => Ok(system::version()),
        Request::Stat { path, follow } => files::stat(&path, follow),
        Request::Mkdir {
            path,
            mode,
            parents,
        } => files::mkdir(&path, mode.unwrap_or(0o755), parents),
        Request::List { path } => files::list(&path),
        Request::Remove { path, recursive } => files::remove(&path, recursive),
        Request::SetClock { secs, nanos } => system::set_clock(secs, nanos),
        Request::Sync => {
            system::sync();
            Ok(flick_proto::Response::Ok)
        }
        Request::Shutdown { action } => {
            wr.send(&Message::Response(flick_proto::Response::Ok))
                .await
                .map_err(|_| Closed)?;
            let _ = wr.flush().await;
            system::shutdown(shared.config.shutdown, action);
            return Err(Closed);
        }
    };
    let msg = match answer {
        Ok(resp) => Message::Response(resp),
        Err(body) => Message::Error(body),
    };
    wr.send(&msg).await.map_err(|_| Closed)
}
