//! Overload and body limits against real Chroma servers: stalled bodies cut off, bodies past
//! the budget shed while small requests and heartbeats pass, the in-flight limit, and the
//! copies of a body a mirrored write holds. Memory is read as the proxy process's resident
//! set (`VmRSS`), the number a pod's memory limit is about.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use serde_json::{json, Value};
use shift_config::BackendName;
use shift_testkit::collection::{collection_id, count, create_collection};
use shift_testkit::faulty::two_stores_one_faulty;
use shift_testkit::process::resident_bytes;
use shift_testkit::scrape::{counter, metric};
use shift_testkit::stores::two_stores;
use shift_testkit::wait::wait_until;
use shift_testkit::{http, Fault, Hold, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const COLLECTIONS: &str = "/api/v2/tenants/default_tenant/databases/default_database/collections";
const JSON: &[(&str, &str)] = &[("content-type", "application/json")];

/// How an add body writes its embeddings.
#[derive(Debug, Clone, Copy)]
enum Form {
    /// Arrays of floats (the JS client, curl).
    Floats,
    /// Base64 of little-endian f32 (the Python client).
    Base64,
}

/// An add of `records` records of `dim` dimensions, ids prefixed with `prefix`.
fn add_body(form: Form, prefix: &str, records: usize, dim: usize) -> Bytes {
    let ids: Vec<String> = (0..records).map(|i| format!("{prefix}-{i}")).collect();
    let vector = |i: usize| -> Vec<f32> {
        (0..dim)
            .map(|d| ((i * 31 + d * 7) % 1000) as f32 / 997.0)
            .collect()
    };
    let embeddings: Vec<serde_json::Value> = (0..records)
        .map(|i| match form {
            Form::Floats => json!(vector(i)),
            Form::Base64 => {
                let bytes: Vec<u8> = vector(i).iter().flat_map(|f| f.to_le_bytes()).collect();
                json!(base64(&bytes))
            }
        })
        .collect();
    Bytes::from(serde_json::to_vec(&json!({"ids": ids, "embeddings": embeddings})).unwrap())
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, b| (n << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Copies of an add's body the proxy holds while the primary has the write: the growth of
/// its resident set from before the add to while the primary holds it, over the body's size.
async fn copies_held(form: Form, records: usize) -> anyhow::Result<f64> {
    let (_old, _new, faulty, builder) = two_stores_one_faulty(BackendName::Old).await?;
    let proxy = builder.spawn_process().await?;
    let pid = proxy.pid().ok_or_else(|| anyhow::anyhow!("no pid"))?;
    let id = create_collection(&proxy.url(), json!({"name": "copies"})).await?;
    let url = format!("{}{COLLECTIONS}/{id}/add", proxy.url());
    // A first add of the same shape, so the baseline has the pools and buffers a write uses.
    let (status, _, _) = http("POST", &url, JSON, add_body(form, "warm", 200, 256)).await?;
    anyhow::ensure!(status.is_success(), "warm-up add: {status}");

    let body = add_body(form, "big", records, 256);
    let hold = Hold::new();
    faulty.push_write_faults([Fault::Held(hold.clone(), Box::new(Fault::Forward))]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = resident_bytes(pid)?;
    let send = {
        let (url, body) = (url.clone(), body.clone());
        tokio::spawn(async move { http("POST", &url, JSON, body).await })
    };
    hold.wait_arrived(1, Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let during = resident_bytes(pid)?;
    hold.release();
    let (status, _, answer) = send.await??;
    anyhow::ensure!(
        status.is_success(),
        "{status} {}",
        String::from_utf8_lossy(&answer)
    );
    let copies = during.saturating_sub(before) as f64 / body.len() as f64;
    println!(
        "{form:?}: body {} bytes, proxy RSS {} -> {} bytes while the primary holds the add: {copies:.2} copies",
        body.len(),
        before,
        during
    );
    Ok(copies)
}

/// Before the write path read ids without a parse tree and encoded the journal's copy from
/// the request's bytes when needed, this measured 3.7 copies (floats) and 4.7 (base64).
#[tokio::test]
async fn a_mirrored_add_holds_few_copies_of_its_body() -> anyhow::Result<()> {
    // About 20 MB of floats, 11 MB of base64.
    let floats = copies_held(Form::Floats, 4000).await?;
    let base64 = copies_held(Form::Base64, 8000).await?;
    println!("copies held: floats {floats:.2}, base64 {base64:.2}");
    assert!(floats < 2.0, "{floats:.2} copies of a float body");
    assert!(base64 < 3.5, "{base64:.2} copies of a base64 body");
    Ok(())
}

/// Bounds that only turn a hang into a failure.
const HANG: Duration = Duration::from_secs(60);

/// A client that sends the head of an add declaring `declared` body bytes and then the first
/// `sent` of them, and stalls (the connection stays open).
async fn stalled_add(
    addr: SocketAddr,
    collection: &str,
    declared: usize,
    sent: usize,
) -> anyhow::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr).await?;
    let head = format!(
        "POST {COLLECTIONS}/{collection}/add HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\nContent-Length: {declared}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await?;
    let mut body = br#"{"ids": ["stalled"], "documents": [""#.to_vec();
    body.resize(sent, b'x');
    stream.write_all(&body).await?;
    Ok(stream)
}

/// An answer read off a raw connection.
struct RawAnswer {
    status: u16,
    head: String,
    body: Value,
}

impl RawAnswer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

/// Reads one answer (head, then a body of its Content-Length) and whether the connection is
/// closed after it.
async fn read_answer(stream: &mut TcpStream) -> anyhow::Result<RawAnswer> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = tokio::time::timeout(HANG, stream.read(&mut chunk)).await??;
        anyhow::ensure!(
            n > 0,
            "closed before an answer: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no status in {head}"))?;
    let mut answer = RawAnswer {
        status,
        head,
        body: Value::Null,
    };
    let length: usize = answer
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = tokio::time::timeout(HANG, stream.read(&mut chunk)).await??;
        anyhow::ensure!(n > 0, "closed mid-answer");
        buf.extend_from_slice(&chunk[..n]);
    }
    answer.body = serde_json::from_slice(&buf[head_end..head_end + length])?;
    Ok(answer)
}

/// Whether the peer closed the connection: the next read ends (or fails, when bytes it never
/// read were left) instead of waiting.
async fn closed(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(HANG, stream.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// Asserts the answer is in Chroma's error shape with `status`.
fn assert_refused(answer: &RawAnswer, status: u16) {
    assert_eq!(answer.status, status, "{}{}", answer.head, answer.body);
    assert!(
        answer.body["error"].is_string() && answer.body["message"].is_string(),
        "not in Chroma's error shape: {}",
        answer.body
    );
}

/// The buffered-bytes gauge.
async fn buffered(admin_url: &str) -> anyhow::Result<f64> {
    Ok(metric(admin_url, "chroma_shift_body_bytes_buffered", &[])
        .await?
        .unwrap_or(-1.0))
}

async fn heartbeat_status(url: &str) -> anyhow::Result<StatusCode> {
    let (status, _, _) = http("GET", &format!("{url}/api/v2/heartbeat"), &[], "").await?;
    Ok(status)
}

/// How many records the collection `name` holds on a store.
async fn records_on(url: &str, name: &str) -> anyhow::Result<u64> {
    count(url, &collection_id(url, name).await?).await
}

#[tokio::test]
async fn stalled_bodies_are_answered_408_after_the_read_timeout_and_give_their_bytes_back(
) -> anyhow::Result<()> {
    let (old, new) = two_stores().await?;
    let proxy = Proxy::in_front_of(&old, &new)
        .server_toml("limits.body_read_timeout = \"1s\"")
        .spawn()
        .await?;
    let id = create_collection(&proxy.url(), json!({"name": "stalls"})).await?;
    // Both stores know the collection before the stalls, so their counts below mean something.
    let (status, _, _) = http(
        "POST",
        &format!("{}{COLLECTIONS}/{id}/add", proxy.url()),
        JSON,
        add_body(Form::Floats, "first", 1, 3),
    )
    .await?;
    assert!(status.is_success(), "{status}");

    // Eight clients send most of a 4 MiB add and stop.
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(stalled_add(proxy.addr(), &id, 4 << 20, (4 << 20) - 4096).await?);
    }
    for client in &mut clients {
        let answer = read_answer(client).await?;
        assert_refused(&answer, 408);
        assert_eq!(
            answer.header("connection"),
            Some("close"),
            "{}",
            answer.head
        );
        assert!(
            closed(client).await,
            "the connection of a stalled body stays open"
        );
    }
    assert_eq!(buffered(&proxy.admin_url()).await?, 0.0);
    let timeouts = counter(
        &proxy.admin_url(),
        "chroma_shift_shed_requests_total",
        &[("reason", "body_timeout")],
    )
    .await?;
    assert_eq!(timeouts, 8.0);

    // Nothing of the stalled adds reached a store; the proxy still serves.
    assert_eq!(heartbeat_status(&proxy.url()).await?, StatusCode::OK);
    let new_url = new.url();
    wait_until("the first add on the secondary", HANG, || async {
        Ok(records_on(&new_url, "stalls").await.unwrap_or(0) == 1)
    })
    .await?;
    assert_eq!(records_on(&old.url(), "stalls").await?, 1);
    assert_eq!(records_on(&new.url(), "stalls").await?, 1);
    Ok(())
}

#[tokio::test]
async fn bodies_past_the_budget_get_503_while_small_requests_and_heartbeats_pass(
) -> anyhow::Result<()> {
    const MIB: usize = 1 << 20;
    let (old, new) = two_stores().await?;
    let proxy = Proxy::in_front_of(&old, &new)
        .server_toml("max_body = \"16MiB\"\nlimits.body_budget = \"32MiB\"")
        .spawn_process()
        .await?;
    let pid = proxy.pid().ok_or_else(|| anyhow::anyhow!("no pid"))?;
    let addr: SocketAddr = proxy.url().trim_start_matches("http://").parse()?;
    let id = create_collection(&proxy.url(), json!({"name": "flood"})).await?;
    let add_url = format!("{}{COLLECTIONS}/{id}/add", proxy.url());
    let small_add = |i: usize| add_body(Form::Floats, &format!("small-{i}"), 10, 3);
    let (status, _, _) = http("POST", &add_url, JSON, small_add(0)).await?;
    assert!(status.is_success(), "{status}");
    let baseline = resident_bytes(pid)?;

    // Two clients each send 11 of a declared 12 MiB and hold: 24 MiB of the 32 MiB budget.
    let mut holding = Vec::new();
    for _ in 0..2 {
        holding.push(stalled_add(addr, &id, 12 * MIB, 11 * MIB).await?);
    }
    let admin = proxy.admin_url();
    wait_until("the two bodies held", HANG, || async {
        Ok(buffered(&admin).await? == (24 * MIB) as f64)
    })
    .await?;

    // Six more large bodies do not fit: refused at once, before any byte is read.
    let mut refused = Vec::new();
    for _ in 0..6 {
        refused.push(stalled_add(addr, &id, 12 * MIB, 0).await?);
    }
    // Small writes and heartbeats pass meanwhile.
    for i in 1..=5 {
        let (status, _, answer) = http("POST", &add_url, JSON, small_add(i)).await?;
        assert!(status.is_success(), "{status} {answer:?}");
        assert_eq!(heartbeat_status(&proxy.url()).await?, StatusCode::OK);
    }
    for client in &mut refused {
        let answer = read_answer(client).await?;
        assert_refused(&answer, 503);
        assert_eq!(answer.header("retry-after"), Some("1"), "{}", answer.head);
        assert_eq!(answer.body["error"], "RateLimitError");
    }
    let during = resident_bytes(pid)?;
    println!(
        "proxy RSS: {baseline} bytes before, {during} bytes with 24 MiB of bodies held and 6 refused (budget 32 MiB)"
    );
    assert!(
        during <= baseline + (32 * MIB) as u64,
        "RSS {during} above the baseline {baseline} plus the budget"
    );
    assert_eq!(
        counter(
            &admin,
            "chroma_shift_shed_requests_total",
            &[("reason", "body_budget")]
        )
        .await?,
        6.0
    );

    // The clients that held go away: the budget is given back.
    drop(holding);
    drop(refused);
    wait_until("the budget given back", HANG, || async {
        Ok(buffered(&admin).await? == 0.0)
    })
    .await?;
    // Only the small adds reached the stores.
    let new_url = new.url();
    wait_until("the small adds on the secondary", HANG, || async {
        Ok(records_on(&new_url, "flood").await.unwrap_or(0) == 60)
    })
    .await?;
    assert_eq!(records_on(&old.url(), "flood").await?, 60);
    Ok(())
}

#[tokio::test]
async fn requests_past_the_in_flight_limit_get_503_while_heartbeats_answer() -> anyhow::Result<()> {
    let (old, new, faulty, builder) = two_stores_one_faulty(BackendName::Old).await?;
    let proxy = builder
        .server_toml("limits.max_in_flight = 4")
        .spawn()
        .await?;
    let id = create_collection(&proxy.url(), json!({"name": "slow"})).await?;
    let collection = format!("{}{COLLECTIONS}/{id}", proxy.url());

    // The primary holds every request but heartbeats: four counts fill the limit.
    let hold = Hold::new();
    faulty.set_default(Fault::Held(hold.clone(), Box::new(Fault::Forward)));
    let mut counts = Vec::new();
    for _ in 0..4 {
        let url = format!("{collection}/count");
        counts.push(tokio::spawn(
            async move { http("GET", &url, &[], "").await },
        ));
    }
    hold.wait_arrived(4, HANG).await?;

    // A fifth request, a write, is shed; heartbeats still answer.
    let (status, headers, body) = http(
        "POST",
        &format!("{collection}/add"),
        JSON,
        add_body(Form::Floats, "shed", 3, 3),
    )
    .await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        headers.get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    let body: Value = serde_json::from_slice(&body)?;
    assert_eq!(body["error"], "RateLimitError", "{body}");
    for _ in 0..3 {
        assert_eq!(heartbeat_status(&proxy.url()).await?, StatusCode::OK);
    }
    assert_eq!(
        counter(
            &proxy.admin_url(),
            "chroma_shift_shed_requests_total",
            &[("reason", "in_flight")]
        )
        .await?,
        1.0
    );

    // Released, the four finish and the limit admits again.
    hold.release();
    faulty.set_default(Fault::Forward);
    for count in counts {
        let (status, _, _) = count.await??;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, _, _) = http(
        "POST",
        &format!("{collection}/add"),
        JSON,
        add_body(Form::Floats, "admitted", 2, 3),
    )
    .await?;
    assert!(status.is_success(), "{status}");
    // The shed write reached neither store.
    let new_url = new.url();
    wait_until("the admitted add on the secondary", HANG, || async {
        Ok(records_on(&new_url, "slow").await.unwrap_or(0) == 2)
    })
    .await?;
    assert_eq!(records_on(&old.url(), "slow").await?, 2);
    Ok(())
}

/// Chroma 1.5.9 ignores a body on a route that takes none (a heartbeat with 50 MB answered
/// 200 without reading it). The proxy takes a stray one of at most 1 KiB and passes it on, and
/// refuses a larger one with 413 before reading it.
#[tokio::test]
async fn routes_that_take_no_body_refuse_a_large_one_before_reading_it() -> anyhow::Result<()> {
    let (old, new) = two_stores().await?;
    let proxy = Proxy::in_front_of(&old, &new).spawn().await?;
    let id = create_collection(&proxy.url(), json!({"name": "no-body"})).await?;
    let heartbeat = format!("{}/api/v2/heartbeat", proxy.url());
    let (status, _, _) = http("GET", &heartbeat, JSON, "{}").await?;
    assert_eq!(
        status,
        StatusCode::OK,
        "a stray body is taken, as Chroma takes it"
    );
    let (status, _, _) = http(
        "GET",
        &format!("{}{COLLECTIONS}/{id}/count", proxy.url()),
        JSON,
        "{}",
    )
    .await?;
    assert_eq!(status, StatusCode::OK);

    // A declared 50 MB on a heartbeat: refused on its head, the body never sent.
    let mut stream = TcpStream::connect(proxy.addr()).await?;
    stream
        .write_all(
            b"GET /api/v2/heartbeat HTTP/1.1\r\nHost: proxy\r\nContent-Length: 50000000\r\n\r\n",
        )
        .await?;
    let answer = read_answer(&mut stream).await?;
    assert_refused(&answer, 413);
    assert!(
        answer.body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("takes no request body"),
        "{}",
        answer.body
    );
    // Chunked, no declared length: refused once past the allowance.
    let mut stream = TcpStream::connect(proxy.addr()).await?;
    stream
        .write_all(format!("DELETE {COLLECTIONS}/no-body HTTP/1.1\r\nHost: proxy\r\nTransfer-Encoding: chunked\r\n\r\n").as_bytes())
        .await?;
    // The proxy may answer and close before the last chunks are written: a write refused
    // then (broken pipe, reset) ends the sending, and the answer already sent is read.
    let sent: std::io::Result<()> = async {
        for _ in 0..4 {
            stream.write_all(b"200\r\n").await?;
            stream.write_all(&[b' '; 512]).await?;
            stream.write_all(b"\r\n").await?;
        }
        Ok(())
    }
    .await;
    if let Err(error) = sent {
        eprintln!("the proxy closed the stream while it was sent: {error}");
    }
    let answer = read_answer(&mut stream).await?;
    assert_refused(&answer, 413);
    assert_eq!(
        counter(
            &proxy.admin_url(),
            "chroma_shift_shed_requests_total",
            &[("reason", "unexpected_body")]
        )
        .await?,
        2.0
    );
    // The delete was refused: the collection is still on both stores.
    assert!(collection_id(&old.url(), "no-body").await.is_ok());
    assert_eq!(heartbeat_status(&proxy.url()).await?, StatusCode::OK);
    Ok(())
}

/// A write belongs to its own task once its locks are taken: its body stays counted in the
/// budget after the client hung up, until the write settled.
#[tokio::test]
async fn a_write_keeps_its_share_of_the_budget_until_it_settles() -> anyhow::Result<()> {
    let (_old, _new, faulty, builder) = two_stores_one_faulty(BackendName::Old).await?;
    let proxy = builder.spawn().await?;
    let id = create_collection(&proxy.url(), json!({"name": "settling"})).await?;
    let body = add_body(Form::Base64, "held", 1000, 64);
    let hold = Hold::new();
    faulty.push_write_faults([Fault::Held(hold.clone(), Box::new(Fault::Forward))]);
    let send = {
        let (url, body) = (
            format!("{}{COLLECTIONS}/{id}/add", proxy.url()),
            body.clone(),
        );
        tokio::spawn(async move { http("POST", &url, JSON, body).await })
    };
    hold.wait_arrived(1, HANG).await?;
    // The client gives up; the primary still has the write.
    send.abort();
    let _ = send.await;
    let admin = proxy.admin_url();
    // The client's request is over for the proxy (its connection gone) ...
    wait_until("the client's request to end", HANG, || async {
        Ok(metric(&admin, "chroma_shift_requests_in_flight", &[]).await? == Some(0.0))
    })
    .await?;
    // ... and the write still holds its body.
    assert_eq!(buffered(&admin).await?, body.len() as f64);
    hold.release();
    wait_until("the settled write's bytes given back", HANG, || async {
        Ok(buffered(&admin).await? == 0.0)
    })
    .await?;
    Ok(())
}
