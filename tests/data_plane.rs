//! The transparent data plane: bad input, limits, client auth, backend faults, h2c and
//! graceful shutdown. Real Chroma where the answer is Chroma's; the fault-injecting backend
//! only where a fault must be forced.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use shift_config::{Config, Secret, Secrets};
use shift_testkit::{http, http_json, Chroma, Fault, FaultyBackend, Hold, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const COLLECTIONS: &str = "/api/v2/tenants/default_tenant/databases/default_database/collections";

/// Asserts a body is in Chroma's error shape and returns its `error` kind.
fn error_kind(body: &Value) -> String {
    assert!(
        body["error"].is_string() && body["message"].is_string(),
        "not in Chroma's error shape: {body}"
    );
    body["error"].as_str().unwrap_or_default().to_owned()
}

/// A body in Chroma's error shape, of `kind`, whose message says `needle`.
fn assert_chroma_error(body: &[u8], kind: &str, needle: &str) -> anyhow::Result<()> {
    let body: Value = serde_json::from_slice(body)?;
    assert_eq!(error_kind(&body), kind);
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains(needle), "{body}");
    Ok(())
}

async fn heartbeat_ok(proxy: &Proxy) -> anyhow::Result<()> {
    let (status, _) = http_json("GET", &format!("{}/api/v2/heartbeat", proxy.url()), None).await?;
    assert_eq!(status, StatusCode::OK, "the proxy stopped serving");
    Ok(())
}

/// A fake Chroma answering 200 `{}` and the proxy in front of it as the old store, with
/// `server` keys in its `[server]` table.
async fn proxy_over_fake(server: &str) -> anyhow::Result<(FaultyBackend, Proxy)> {
    let backend = FaultyBackend::spawn(Fault::ok()).await?;
    let proxy = Proxy::builder()
        .old(backend.url())
        .server_toml(server)
        .spawn()
        .await?;
    Ok((backend, proxy))
}

#[tokio::test]
async fn heartbeat_and_collections_pass_through() -> anyhow::Result<()> {
    let chroma = Chroma::spawn().await?;
    let proxy = Proxy::builder().old(chroma.url()).spawn().await?;
    let (status, body) =
        http_json("GET", &format!("{}/api/v2/heartbeat", proxy.url()), None).await?;
    assert_eq!(status, StatusCode::OK);
    assert!(body["nanosecond heartbeat"].is_u64(), "{body}");
    let (status, created) = http_json(
        "POST",
        &format!("{}{COLLECTIONS}", proxy.url()),
        Some(json!({"name": "through-proxy"})),
    )
    .await?;
    assert_eq!(status, StatusCode::OK, "{created}");
    let (_, direct) = http_json(
        "GET",
        &format!("{}{COLLECTIONS}/through-proxy", chroma.url()),
        None,
    )
    .await?;
    assert_eq!(direct["id"], created["id"]);
    Ok(())
}

const JSON: &[(&str, &str)] = &[("content-type", "application/json")];

/// A request a test sends: method, path, headers, body.
type Case<'a> = (&'a str, String, &'a [(&'a str, &'a str)], &'a str);

/// Malformed JSON, an invalid collection id, a missing collection, an unknown route and a wrong
/// content type get the same status as from Chroma directly, each with a body in Chroma's
/// error shape.
#[tokio::test]
async fn bad_requests_get_chromas_answer_in_chromas_shape() -> anyhow::Result<()> {
    let chroma = Chroma::spawn().await?;
    let proxy = Proxy::builder().old(chroma.url()).spawn().await?;
    let cases: [Case; 5] = [
        ("POST", COLLECTIONS.to_owned(), JSON, "{bad json"),
        (
            "POST",
            format!("{COLLECTIONS}/not-a-uuid/add"),
            JSON,
            r#"{"ids":["a"],"embeddings":[[1,2,3]]}"#,
        ),
        ("GET", format!("{COLLECTIONS}/missing-collection"), &[], ""),
        ("GET", "/api/v2/no-such-route".to_owned(), &[], ""),
        (
            "POST",
            COLLECTIONS.to_owned(),
            &[("content-type", "text/plain")],
            r#"{"name":"wrong-content-type"}"#,
        ),
    ];
    for (method, path, headers, body) in cases {
        let (direct_status, _, _) =
            http(method, &format!("{}{path}", chroma.url()), headers, body).await?;
        let (status, _, answer) =
            http(method, &format!("{}{path}", proxy.url()), headers, body).await?;
        assert_eq!(status, direct_status, "{method} {path}");
        assert!(status.is_client_error(), "{method} {path}: {status}");
        let answer: Value = serde_json::from_slice(&answer)?;
        error_kind(&answer);
    }
    heartbeat_ok(&proxy).await
}

#[tokio::test]
async fn unknown_routes_are_forwarded_not_answered_by_the_proxy() -> anyhow::Result<()> {
    let backend = FaultyBackend::spawn(Fault::Status(
        StatusCode::IM_A_TEAPOT,
        r#"{"from":"backend"}"#.into(),
    ))
    .await?;
    let proxy = Proxy::builder().old(backend.url()).spawn().await?;
    let (status, body) =
        http_json("GET", &format!("{}/api/v3/future?x=1", proxy.url()), None).await?;
    assert_eq!(status, StatusCode::IM_A_TEAPOT);
    assert_eq!(body, json!({"from": "backend"}));
    assert!(backend
        .received()
        .iter()
        .any(|r| r.path_and_query == "/api/v3/future?x=1"));
    Ok(())
}

#[tokio::test]
async fn oversized_bodies_get_413_and_reach_no_backend() -> anyhow::Result<()> {
    let (backend, proxy) = proxy_over_fake("max_body = \"1KiB\"").await?;
    let big = format!(r#"{{"ids":["a"],"documents":["{}"]}}"#, "x".repeat(2048));
    let url = format!(
        "{}{COLLECTIONS}/4f8c7c6e-0d7e-4f0a-9a53-2d0c2b8f2f11/add",
        proxy.url()
    );

    // Declared length over the limit: refused before reading.
    let (status, _, body) = http(
        "POST",
        &url,
        &[("content-type", "application/json")],
        big.clone(),
    )
    .await?;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_chroma_error(&body, "InvalidArgumentError", "1024")?;

    // Chunked, no declared length: refused once the stream passes the limit.
    let mut stream = tokio::net::TcpStream::connect(proxy.addr()).await?;
    let path = url.trim_start_matches(&proxy.url()).to_owned();
    stream
        .write_all(format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").as_bytes())
        .await?;
    // The proxy may answer and close as soon as the stream passes the limit, before the
    // last chunks are written: a write refused then (broken pipe, reset) ends the sending,
    // and the answer already sent is read below.
    let sent: std::io::Result<()> = async {
        for chunk in big.as_bytes().chunks(256) {
            stream
                .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .await?;
            stream.write_all(chunk).await?;
            stream.write_all(b"\r\n").await?;
        }
        stream.write_all(b"0\r\n\r\n").await
    }
    .await;
    if let Err(error) = sent {
        eprintln!("the proxy closed the stream while it was sent: {error}");
    }
    // Read until the error body arrived or the proxy closed the connection (the bound only
    // turns a hang into a failure).
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(60), async {
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&answer).contains("InvalidArgumentError") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("InvalidArgumentError"), "{answer}");

    // A body under the limit goes through; the oversized ones never reached the backend.
    let (status, _, _) = http(
        "POST",
        &url,
        &[("content-type", "application/json")],
        r#"{"ids":["a"]}"#,
    )
    .await?;
    assert_eq!(status, StatusCode::OK);
    let adds: Vec<_> = backend
        .received()
        .into_iter()
        .filter(|r| r.path_and_query.ends_with("/add"))
        .collect();
    assert_eq!(adds.len(), 1);
    assert!(adds[0].body.len() < 1024);
    heartbeat_ok(&proxy).await
}

#[tokio::test]
async fn client_auth_refuses_missing_and_wrong_tokens() -> anyhow::Result<()> {
    let chroma = Chroma::spawn().await?;
    let proxy = Proxy::builder()
        .old(chroma.url())
        .client_tokens(&["tok-alpha", "tok-beta"])
        .spawn()
        .await?;
    let list = format!("{}{COLLECTIONS}", proxy.url());
    let (status, _, body) = http("GET", &list, &[], "").await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_kind(&serde_json::from_slice(&body)?), "AuthError");
    let (status, _, body) =
        http("GET", &list, &[("authorization", "Bearer tok-gamma")], "").await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_kind(&serde_json::from_slice(&body)?), "AuthError");
    let (status, _, _) = http("GET", &list, &[("authorization", "Bearer tok-beta")], "").await?;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = http("GET", &list, &[("x-chroma-token", "tok-alpha")], "").await?;
    assert_eq!(status, StatusCode::OK);
    // Liveness stays open for load balancers without a token.
    heartbeat_ok(&proxy).await
}

/// The client's credentials stay at the proxy; the backend gets the configured token only.
#[tokio::test]
async fn backends_get_their_own_credentials_not_the_clients() -> anyhow::Result<()> {
    let backend = FaultyBackend::spawn(Fault::ok()).await?;
    let config = Config::from_toml(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[server.client_auth]\nenabled = true\n\
         [backends.old]\nurl = \"{}\"\n[backends.old.auth]\ntoken_env = \"UNUSED_IN_TEST\"\nheader = \"x-chroma-token\"\n\
         [backends.new]\nurl = \"http://127.0.0.1:10\"\n",
        backend.url()
    ))?;
    let secrets = Secrets {
        old: Some(Secret::new("backend-secret".into())),
        new: None,
        client_tokens: vec![Secret::new("client-secret".into())],
        ..Secrets::default()
    };
    let proxy = Proxy::start_fresh(config, secrets).await?;
    let (status, _, _) = http(
        "GET",
        &format!("{}/api/v2/version", proxy.url()),
        &[("authorization", "Bearer client-secret")],
        "",
    )
    .await?;
    assert_eq!(status, StatusCode::OK);
    let request = backend
        .received()
        .into_iter()
        .find(|r| r.path_and_query == "/api/v2/version")
        .expect("the request reached the backend");
    assert!(request.headers.get("authorization").is_none());
    assert_eq!(request.headers["x-chroma-token"], "backend-secret");

    let (_, _, metrics) = http("GET", &format!("{}/metrics", proxy.admin_url()), &[], "").await?;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(!metrics.contains("secret"), "a secret reached /metrics");
    Ok(())
}

#[tokio::test]
async fn backend_faults_are_answered_in_chromas_shape_and_the_proxy_keeps_serving(
) -> anyhow::Result<()> {
    let (backend, proxy) = proxy_over_fake("").await?;
    let url = format!("{}/api/v2/version", proxy.url());

    backend.push([Fault::Reset]);
    let (status, _, body) = http("GET", &url, &[], "").await?;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_chroma_error(&body, "InternalError", "old store")?;

    // A 500 or 429 from the backend is the backend's answer: passed through as it is.
    backend.push([Fault::TooManyRequests {
        retry_after_secs: 3,
    }]);
    let (status, headers, _) = http("GET", &url, &[], "").await?;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["retry-after"], "3");

    heartbeat_ok(&proxy).await?;
    let (_, _, metrics) = http("GET", &format!("{}/metrics", proxy.admin_url()), &[], "").await?;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains(r#"chroma_shift_backend_errors_total{backend="old",kind="transport"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"chroma_shift_requests_total{backend="old",operation="version",status="429"} 1"#
        ),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn a_slow_backend_gets_504_after_the_request_timeout() -> anyhow::Result<()> {
    let backend = FaultyBackend::spawn(Fault::ok()).await?;
    let mut config = Proxy::builder().old(backend.url()).config()?;
    config.backends.old.request_timeout = Duration::from_millis(300);
    let proxy = Proxy::start_fresh(config, Secrets::default()).await?;
    // The backend holds the request until the test lets it go: the 504 can only come from the
    // proxy's timeout, not from the backend answering.
    let hold = Hold::new();
    backend.push([Fault::Held(hold.clone(), Box::new(Fault::ok()))]);
    let (status, _, body) =
        http("GET", &format!("{}/api/v2/version", proxy.url()), &[], "").await?;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(error_kind(&serde_json::from_slice(&body)?), "InternalError");
    assert_eq!(hold.arrived(), 1, "the request never reached the backend");
    hold.release();
    heartbeat_ok(&proxy).await
}

#[tokio::test]
async fn a_down_backend_gets_502_and_readyz_says_not_ready() -> anyhow::Result<()> {
    // Nothing listens on the default backend addresses of the builder.
    let proxy = Proxy::builder().spawn().await?;
    let (status, body) = http_json("GET", &format!("{}/api/v2/version", proxy.url()), None).await?;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("unreachable"),
        "{body}"
    );
    let (status, ready) = http_json("GET", &format!("{}/readyz", proxy.admin_url()), None).await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready["ready"], false);
    let (status, _) = http_json("GET", &format!("{}/healthz", proxy.admin_url()), None).await?;
    assert_eq!(status, StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn admin_routes_are_not_on_the_data_port() -> anyhow::Result<()> {
    let chroma = Chroma::spawn().await?;
    let proxy = Proxy::builder().old(chroma.url()).spawn().await?;
    let (status, ready) = http_json("GET", &format!("{}/readyz", proxy.admin_url()), None).await?;
    assert_eq!(status, StatusCode::OK, "{ready}");
    assert_eq!(ready["backends"]["old"]["up"], true);
    for path in ["/metrics", "/readyz", "/healthz"] {
        let (status, _, body) = http("GET", &format!("{}{path}", proxy.url()), &[], "").await?;
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "{path} answered on the data port"
        );
        assert!(!String::from_utf8_lossy(&body).contains("chroma_shift_"));
    }
    Ok(())
}

#[tokio::test]
async fn h2c_clients_are_served() -> anyhow::Result<()> {
    let chroma = Chroma::spawn().await?;
    let proxy = Proxy::builder().old(chroma.url()).spawn().await?;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let request = http::Request::get(format!("{}/api/v2/heartbeat", proxy.url()))
        .body(Full::new(Bytes::new()))?;
    let response = client.request(request).await?;
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = serde_json::from_slice(&response.into_body().collect().await?.to_bytes())?;
    assert!(body["nanosecond heartbeat"].is_u64());
    Ok(())
}

/// On shutdown the proxy stops accepting, and a request already in flight still gets its answer.
#[tokio::test]
async fn shutdown_drains_in_flight_requests() -> anyhow::Result<()> {
    let (backend, proxy) = proxy_over_fake("").await?;
    // The backend holds the request until the shutdown has begun.
    let hold = Hold::new();
    backend.push([Fault::Held(hold.clone(), Box::new(Fault::ok()))]);
    let url = format!("{}/api/v2/version", proxy.url());
    let addr = proxy.addr();
    let in_flight = tokio::spawn(async move { http("GET", &url, &[], "").await });
    hold.wait_arrived(1, Duration::from_secs(60)).await?;
    let shutdown = tokio::spawn(proxy.shutdown());
    // Released once the proxy has stopped accepting: the answer comes during the drain.
    let waited = Instant::now();
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        anyhow::ensure!(
            waited.elapsed() < Duration::from_secs(60),
            "the proxy kept accepting after shutdown began"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    hold.release();
    let drained = shutdown.await??;
    assert_eq!(drained, shift_proxy::Drained::Clean);
    let (status, _, _) = in_flight.await??;
    assert_eq!(status, StatusCode::OK, "the in-flight request was cut");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
    Ok(())
}

/// `https://` backends are reached over rustls, trusting the configured `ca_file`.
#[tokio::test]
async fn tls_backends_are_reached_with_the_configured_root() -> anyhow::Result<()> {
    let backend = FaultyBackend::spawn_tls(Fault::ok()).await?;
    let dir = tempfile::tempdir()?;
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, backend.ca_pem().unwrap_or_default())?;
    let config = Config::from_toml(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         [backends.old]\nurl = \"{}\"\nca_file = \"{}\"\n[backends.new]\nurl = \"http://127.0.0.1:10\"\n",
        backend.url(),
        ca.display()
    ))?;
    let proxy = Proxy::start_fresh(config, Secrets::default()).await?;
    let (status, _, _) = http("GET", &format!("{}/api/v2/version", proxy.url()), &[], "").await?;
    assert_eq!(status, StatusCode::OK);
    assert!(backend
        .received()
        .iter()
        .any(|r| r.path_and_query == "/api/v2/version"));

    // Without the root, the same backend is refused: the certificate really is checked.
    let config = Proxy::builder().old(backend.url()).config()?;
    let untrusting = Proxy::start_fresh(config, Secrets::default()).await?;
    let (status, _, body) = http(
        "GET",
        &format!("{}/api/v2/version", untrusting.url()),
        &[],
        "",
    )
    .await?;
    assert_eq!(
        status,
        StatusCode::BAD_GATEWAY,
        "{}",
        String::from_utf8_lossy(&body)
    );
    Ok(())
}

/// A client that never finishes its request head is disconnected after the header-read timeout.
#[tokio::test]
async fn slow_request_heads_are_cut_off() -> anyhow::Result<()> {
    let (_backend, proxy) = proxy_over_fake("header_read_timeout = \"300ms\"").await?;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr()).await?;
    stream
        .write_all(b"GET /api/v2/heartbeat HTTP/1.1\r\nHost: x\r\n")
        .await?;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the connection stayed open");
    heartbeat_ok(&proxy).await
}
