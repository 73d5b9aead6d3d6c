use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Response};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::auth::Caller;
use crate::backend::Backend;
use crate::driven::DrivenBody;
use crate::error::{BackendError, BackendErrorKind};

/// What the test server does after answering a request.
#[derive(Clone, Copy)]
enum After {
    /// Waits for the next request on the connection.
    KeepAlive,
    /// Closes the connection (without saying so in the answer) and reports it.
    Close,
}

/// A server answering `ok` to each request; counts the connections it accepted, and reports
/// each connection it closed on `closed`.
struct TestServer {
    url: String,
    accepted: Arc<AtomicUsize>,
    closed: mpsc::UnboundedReceiver<()>,
}

async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

async fn server(after: After) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let (report, closed) = mpsc::unbounded_channel();
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let report = report.clone();
            tokio::spawn(async move {
                while let Some(head) = read_head(&mut stream).await {
                    assert!(
                        head.starts_with("GET /api/v2/heartbeat HTTP/1.1\r\n"),
                        "{head}"
                    );
                    assert!(
                        head.to_ascii_lowercase().contains("\r\nhost: 127.0.0.1:"),
                        "{head}"
                    );
                    let answer = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if stream.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                    if let After::Close = after {
                        drop(stream);
                        let _ = report.send(());
                        return;
                    }
                }
            });
        }
    });
    TestServer {
        url,
        accepted,
        closed,
    }
}

fn backend(url: &str) -> Backend {
    crate::forward::tests::backend_timing_out(url, "2s")
}

/// Sends a heartbeat on a driven connection and waits for the answer's head.
async fn send_heartbeat(backend: &Backend) -> Result<Response<DrivenBody>, BackendError> {
    backend
        .send_driven_as(
            &Caller::Operator,
            Method::GET,
            "/api/v2/heartbeat",
            HeaderMap::new(),
            Bytes::new(),
        )
        .await
}

async fn heartbeat(backend: &Backend) -> Result<Bytes, BackendError> {
    let response = send_heartbeat(backend).await?;
    assert_eq!(response.status(), 200);
    Ok(response.into_body().collect().await.unwrap().to_bytes())
}

#[tokio::test]
async fn requests_reuse_one_connection_once_their_bodies_are_read() {
    let server = server(After::KeepAlive).await;
    let backend = backend(&server.url);
    for _ in 0..5 {
        assert_eq!(heartbeat(&backend).await.unwrap(), "ok");
    }
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_body_dropped_unread_closes_its_connection() {
    let server = server(After::KeepAlive).await;
    let backend = backend(&server.url);
    drop(send_heartbeat(&backend).await.unwrap());
    assert_eq!(heartbeat(&backend).await.unwrap(), "ok");
    assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_pooled_connection_the_server_closed_is_replaced() {
    let mut server = server(After::Close).await;
    let backend = backend(&server.url);
    for round in 1..=3 {
        assert_eq!(heartbeat(&backend).await.unwrap(), "ok");
        // The server has closed the connection that went back to the pool.
        server.closed.recv().await.unwrap();
        assert_eq!(server.accepted.load(Ordering::SeqCst), round);
    }
}

#[tokio::test]
async fn a_backend_that_is_not_there_is_a_connect_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let error = heartbeat(&backend(&url)).await.unwrap_err();
    assert!(
        matches!(error.kind, BackendErrorKind::Connect(_)),
        "{error:?}"
    );
}

#[tokio::test]
async fn an_answer_head_that_never_comes_is_a_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let error = tokio::time::timeout(Duration::from_secs(60), heartbeat(&backend(&url)))
        .await
        .expect("a request hung on a backend that never answers")
        .unwrap_err();
    assert!(
        matches!(error.kind, BackendErrorKind::Timeout(_)),
        "{error:?}"
    );
}
