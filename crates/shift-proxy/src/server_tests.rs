//! The listener over real sockets: the connection cap, the HTTP/2 stream limit, the idle
//! timeout, the bounded TLS handshake and ALPN. Real time, with bounds that only catch a hang.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use super::*;
use crate::tls::testing::Pki;
use crate::tls::TlsFiles;

/// Answers `ok`; `/slow` after a while.
async fn answer(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.uri().path() == "/slow" {
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    Ok(Response::new(Full::new(Bytes::from_static(b"ok"))))
}

fn options(max_connections: usize, tls: Option<ListenerTls>) -> ServeOptions {
    ServeOptions {
        listener: "data",
        header_read_timeout: Duration::from_millis(300),
        http2: true,
        shutdown_grace: Duration::from_secs(5),
        connections: ConnectionsConfig {
            max_connections,
            idle_timeout: Duration::from_millis(200),
            ..ConnectionsConfig::default()
        },
        tls,
        metrics: ConnectionMetrics::new().unwrap(),
    }
}

struct Running {
    addr: SocketAddr,
    metrics: ConnectionMetrics,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Drained>,
}

impl Running {
    fn refused(&self, reason: &str) -> u64 {
        self.metrics
            .refused
            .with_label_values(&["data", reason])
            .get()
    }

    fn open(&self) -> i64 {
        self.metrics.open.with_label_values(&["data"]).get()
    }

    async fn stop(mut self) -> Drained {
        let _ = self.stop.take().map(|stop| stop.send(()));
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the listener drains")
            .unwrap()
    }
}

async fn start(options: ServeOptions) -> Running {
    start_with(options, tower::service_fn(answer)).await
}

async fn start_with(options: ServeOptions, service: impl ListenerService) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics = options.metrics.clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, service, options, async move {
        let _ = stopped.await;
    }));
    Running {
        addr,
        metrics,
        stop: Some(stop),
        task,
    }
}

/// An HTTP/1.1 keep-alive connection; the task ends when the connection does.
async fn h1<I>(io: I) -> (http1::SendRequest<Full<Bytes>>, tokio::task::JoinHandle<()>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = http1::handshake(TokioIo::new(io)).await.unwrap();
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    (sender, task)
}

async fn get(sender: &mut http1::SendRequest<Full<Bytes>>) -> Result<String, hyper::Error> {
    let request = Request::get("/").body(Full::new(Bytes::new())).unwrap();
    let response = sender.send_request(request).await?;
    let body = response.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// Polls `condition` every 10 ms for up to 10 s (a bound that only catches a hang).
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    for _ in 0..1000 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what}: not reached within 10s");
}

#[tokio::test]
async fn connections_past_the_cap_are_closed_until_one_ends() {
    let mut options = options(2, None);
    // Long enough that neither kept connection is closed while the test looks at the cap.
    options.header_read_timeout = Duration::from_secs(30);
    options.connections.idle_timeout = Duration::from_secs(30);
    let running = start(options).await;
    let (mut first, first_task) = h1(TcpStream::connect(running.addr).await.unwrap()).await;
    let (mut second, _second_task) = h1(TcpStream::connect(running.addr).await.unwrap()).await;
    assert_eq!(get(&mut first).await.unwrap(), "ok");
    assert_eq!(get(&mut second).await.unwrap(), "ok");
    assert_eq!(running.open(), 2);

    // The third is accepted and closed at once: no answer, one refusal.
    let mut third = TcpStream::connect(running.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(10), third.read(&mut buf))
        .await
        .expect("closed, not left hanging");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert_eq!(running.refused("at_capacity"), 1);

    // One kept connection ends: its slot is free again and a new connection is served.
    drop(first);
    let _ = first_task.await;
    eventually("the slot is given back", || running.open() == 1).await;
    let (mut fourth, _fourth_task) = h1(TcpStream::connect(running.addr).await.unwrap()).await;
    assert_eq!(get(&mut fourth).await.unwrap(), "ok");
    assert_eq!(
        get(&mut second).await.unwrap(),
        "ok",
        "kept connections go on"
    );
    assert_eq!(running.refused("at_capacity"), 1);
    drop((second, fourth));
    assert_eq!(running.stop().await, Drained::Clean);
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_but_not_while_a_request_runs() {
    let running = start(options(8, None)).await;
    let io = TokioIo::new(TcpStream::connect(running.addr).await.unwrap());
    let (mut sender, connection) = http2::handshake(TokioExecutor::new(), io).await.unwrap();
    let ended = tokio::spawn(connection);
    // The request outlives the idle timeout (600 ms against 200 ms) and is answered.
    let request = Request::get("http://localhost/slow")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"ok");
    // Then, with nothing in flight, the server ends the connection by itself.
    tokio::time::timeout(Duration::from_secs(10), ended)
        .await
        .expect("the idle connection is closed by the server")
        .unwrap()
        .unwrap();
    eventually("the slot is given back", || running.open() == 0).await;
    assert_eq!(running.stop().await, Drained::Clean);
}

#[tokio::test]
async fn a_silent_tls_client_loses_its_slot_and_alpn_offers_h2() {
    let pki = Pki::new();
    let (cert, key) = pki.issue("localhost");
    let files = TlsFiles {
        cert,
        key,
        client_ca: None,
    };
    let tls = ServerTls::load(&files, &[b"h2", b"http/1.1"]).unwrap();
    let running = start(options(
        1,
        Some(ListenerTls {
            tls,
            reload_interval: Duration::from_secs(60),
        }),
    ))
    .await;

    // Opens TCP and says nothing: holds the only slot until the handshake timeout.
    let mut silent = TcpStream::connect(running.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf))
        .await
        .expect("the silent client is cut off");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert_eq!(running.refused("handshake_timeout"), 1);
    eventually("the slot is given back", || running.open() == 0).await;

    // A plain-HTTP client fails the handshake.
    let (mut plain, plain_task) = h1(TcpStream::connect(running.addr).await.unwrap()).await;
    assert!(get(&mut plain).await.is_err());
    let _ = plain_task.await;
    eventually("the failed handshake is counted", || {
        running.refused("tls_handshake") == 1
    })
    .await;
    eventually("the slot is given back", || running.open() == 0).await;

    // A TLS client offering h2 gets HTTP/2.
    let mut config = pki.client_config(None);
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(running.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let stream = connector.connect(name, tcp).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = Request::get("https://localhost/")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    drop(sender);
    assert_eq!(running.stop().await, Drained::Clean);
}

#[tokio::test]
async fn http2_streams_past_the_limit_wait_for_a_free_one() {
    // Counts the requests being handled at once, and the most seen.
    let running_now = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let service = {
        let (running_now, most) = (running_now.clone(), most.clone());
        tower::service_fn(move |request: Request<Incoming>| {
            let (running_now, most) = (running_now.clone(), most.clone());
            async move {
                let now = running_now.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                let answer = answer(request).await;
                running_now.fetch_sub(1, Ordering::SeqCst);
                answer
            }
        })
    };
    let mut options = options(8, None);
    options.connections.http2_max_concurrent_streams = 1;
    options.connections.idle_timeout = Duration::from_secs(30);
    let running = start_with(options, service).await;
    let io = TokioIo::new(TcpStream::connect(running.addr).await.unwrap());
    let (sender, connection) = http2::handshake(TokioExecutor::new(), io).await.unwrap();
    tokio::spawn(connection);
    // One request first, so the client has the server's SETTINGS (a stream opened before
    // them, past the limit, is refused with REFUSED_STREAM, which a client may retry).
    let request = Request::get("http://localhost/")
        .body(Full::new(Bytes::new()))
        .unwrap();
    sender.clone().send_request(request).await.unwrap();
    // Two slow requests on one connection: the second waits for the first's stream.
    let calls = (0..2).map(|_| {
        let mut sender = sender.clone();
        tokio::spawn(async move {
            let request = Request::get("http://localhost/slow")
                .body(Full::new(Bytes::new()))
                .unwrap();
            sender.send_request(request).await.map(|r| r.status())
        })
    });
    for call in calls.collect::<Vec<_>>() {
        assert_eq!(call.await.unwrap().unwrap(), http::StatusCode::OK);
    }
    assert_eq!(most.load(Ordering::SeqCst), 1, "one stream at a time");
    drop(sender);
    assert_eq!(running.stop().await, Drained::Clean);
}

/// Answers with the data-plane slot of the thread that served the request (0: not one).
async fn answer_slot(_: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let slot = crate::data_threads::slot().to_string();
    Ok(Response::new(Full::new(Bytes::from(slot))))
}

#[tokio::test]
async fn data_plane_threads_serve_their_listeners_under_one_connection_cap() {
    let threads = crate::data_threads::DataPlaneThreads::start(2).unwrap();
    let mut listeners =
        crate::data_threads::bind_reuseport("127.0.0.1:0".parse().unwrap(), 2).unwrap();
    assert_eq!(listeners.len(), 2);
    let addr = listeners[0].local_addr().unwrap();
    assert_eq!(listeners[1].local_addr().unwrap(), addr);
    let first = TcpListener::from_std(listeners.remove(0)).unwrap();
    let mut options = options(2, None);
    options.header_read_timeout = Duration::from_secs(30);
    options.connections.idle_timeout = Duration::from_secs(30);
    let metrics = options.metrics.clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = serve_data_plane(
        DataListeners {
            threads: Some(&threads),
            listener: first,
            others: listeners,
        },
        tower::service_fn(answer_slot),
        options,
        async move {
            let _ = stopped.await;
        },
    );
    let client = async move {
        let (mut first, _first_task) = h1(TcpStream::connect(addr).await.unwrap()).await;
        let (mut second, _second_task) = h1(TcpStream::connect(addr).await.unwrap()).await;
        for sender in [&mut first, &mut second] {
            let slot: usize = get(sender).await.unwrap().parse().unwrap();
            assert!((1..=2).contains(&slot), "served on slot {slot}");
        }
        // The cap is the listener's, whichever thread accepts: the third is closed at once.
        let mut third = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(10), third.read(&mut buf))
            .await
            .expect("closed, not left hanging");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        assert_eq!(
            metrics
                .refused
                .with_label_values(&["data", "at_capacity"])
                .get(),
            1
        );
        assert_eq!(metrics.open.with_label_values(&["data"]).get(), 2);
        drop((first, second));
        let _ = stop.send(());
    };
    let (drained, ()) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(serving, client)
    })
    .await
    .expect("served and drained");
    assert_eq!(drained, Drained::Clean);
}
