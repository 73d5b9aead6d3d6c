//! A seeded fuzz run: mutated requests (bodies, paths, headers, methods) sent to chroma-shift in
//! front of two stores (P1 primary, P2 secondary) and to a Chroma directly (D), each request to
//! both in the same order, over raw sockets (so `OPTIONS *`, absolute-form targets and bytes
//! that are not UTF-8 go out as written). Then a full comparison of what the stores hold:
//! P1 against D, and P2 against P1 once the journal has drained (tenants, databases,
//! collections with their metadata, whole records).
//!
//! Asserted: the proxy answers every request with Chroma's status class (so never a 5xx where
//! Chroma answered 2xx or 4xx), it never crashes, and no write lands on one store only. A write
//! the proxy refuses because it could not mirror it (a body Chroma takes but chroma-shift
//! cannot read: invalid UTF-8, a lone surrogate or deep nesting in a field Chroma ignores) is
//! not sent to Chroma; those refusals are counted in the report. The one deliberate
//! difference, Chroma 1.5.9's phantom updates that the proxy clears, is excused and reported
//! (see `fuzz/phantom.rs`).
//!
//! `CHROMA_SHIFT_FUZZ_SEED` replays a run (the seed is printed either way);
//! `CHROMA_SHIFT_FUZZ_REQUESTS` sets the count (default 600); `CHROMA_SHIFT_FUZZ_KINDS`
//! (comma-separated kinds, see [`Kind`]) keeps only those mutations beside the set-up requests,
//! which is how a defect is minimized; `CHROMA_SHIFT_FUZZ_VERBOSE=1` prints every exchange.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use shift_proxy::write_task::UNMIRRORABLE;
use shift_testkit::collection::get_records;
use shift_testkit::stores::get_json;
use shift_testkit::{http_json, Chroma, Proxy, ProxyProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[path = "fuzz/phantom.rs"]
mod phantom;
#[path = "fuzz/requests.rs"]
mod requests;

use phantom::PhantomUpdates;
use requests::{Effect, FuzzRequest, Generator, Kind, Part, TENANTS};

/// Requests in a default run: about a minute against three local Chroma servers.
const DEFAULT_REQUESTS: usize = 600;
/// A bound that only turns a hung exchange into a failure.
const EXCHANGE_LIMIT: Duration = Duration::from_secs(60);
/// One side of the run: the proxy, or Chroma directly.
struct Side {
    addr: SocketAddr,
    /// (tenant, database, name) -> the collection's id as this side answered it.
    ids: HashMap<(String, String, String), String>,
}

impl Side {
    fn render(&self, request: &FuzzRequest) -> Vec<u8> {
        let mut target = String::new();
        for part in &request.target {
            match part {
                Part::Text(text) => target.push_str(text),
                Part::Authority => target.push_str(&self.addr.to_string()),
                Part::Collection {
                    tenant,
                    database,
                    name,
                    spelling,
                } => {
                    // An unknown collection gets the same made-up id on both sides.
                    let id = self
                        .ids
                        .get(&(tenant.clone(), database.clone(), name.clone()))
                        .cloned()
                        .unwrap_or_else(|| "00000000-0000-4000-8000-000000000000".to_owned());
                    target.push_str(&spelling.write(&id, name));
                }
            }
        }
        let mut head = format!(
            "{} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            request.method, target, self.addr
        );
        for (name, value) in &request.headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        if !request.bodiless {
            let _ = write!(head, "Content-Length: {}\r\n", request.body.len());
        }
        head.push_str("\r\n");
        let mut raw = head.into_bytes();
        raw.extend_from_slice(&request.body);
        raw
    }

    /// The id this side knows for the collection the request names, if it knows one.
    fn collection_of(&self, request: &FuzzRequest) -> Option<String> {
        request.target.iter().find_map(|part| match part {
            Part::Collection {
                tenant,
                database,
                name,
                ..
            } => self
                .ids
                .get(&(tenant.clone(), database.clone(), name.clone()))
                .cloned(),
            _ => None,
        })
    }

    fn apply(&mut self, effect: &Effect, answer: &Value) {
        match effect {
            Effect::None => {}
            Effect::Created {
                tenant,
                database,
                name,
            } => {
                if let Some(id) = answer["id"].as_str() {
                    self.ids.insert(
                        (tenant.clone(), database.clone(), name.clone()),
                        id.to_owned(),
                    );
                }
            }
            Effect::Renamed {
                tenant,
                database,
                from,
                to,
            } => {
                if let Some(id) = self
                    .ids
                    .remove(&(tenant.clone(), database.clone(), from.clone()))
                {
                    self.ids
                        .insert((tenant.clone(), database.clone(), to.clone()), id);
                }
            }
            Effect::Deleted {
                tenant,
                database,
                name,
            } => {
                self.ids
                    .remove(&(tenant.clone(), database.clone(), name.clone()));
            }
        }
    }
}

/// An answer: the status (0 when the connection closed without one) and the decoded body.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: Vec<u8>,
}

async fn exchange(addr: SocketAddr, raw: &[u8]) -> anyhow::Result<Answer> {
    let work = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(raw).await?;
        let mut received = Vec::new();
        // A server may close after answering without reading the whole body: a reset then
        // ends the read, with what arrived before it.
        let _ = stream.read_to_end(&mut received).await;
        anyhow::Ok(received)
    };
    let received = tokio::time::timeout(EXCHANGE_LIMIT, work)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {EXCHANGE_LIMIT:?}"))??;
    Ok(parse_answer(&received))
}

fn parse_answer(received: &[u8]) -> Answer {
    let Some(split) = received.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Answer {
            status: 0,
            body: received.to_vec(),
        };
    };
    let head = String::from_utf8_lossy(&received[..split]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut body = received[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Answer { status, body }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = data.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&data[..end]).to_string();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or(0);
        data = &data[end + 2..];
        if size == 0 || data.len() < size {
            break;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[(size + 2).min(data.len())..];
    }
    out
}

/// A difference between what the proxy and Chroma did.
#[derive(Debug)]
struct Violation {
    index: usize,
    kind: Kind,
    what: String,
}

fn show(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw).replace("\r\n", " | ");
    if text.len() > 400 {
        format!(
            "{}...",
            &text[..text.char_indices().nth(400).map_or(text.len(), |(i, _)| i)]
        )
    } else {
        text
    }
}

/// Everything a store holds in the tenants the run used: tenant -> database -> collection name
/// -> (metadata, records by id).
async fn dump(url: &str, tenants: &BTreeSet<String>) -> anyhow::Result<Value> {
    let mut out = BTreeMap::new();
    for tenant in tenants {
        let (status, _) = http_json("GET", &format!("{url}/api/v2/tenants/{tenant}"), None).await?;
        if !status.is_success() {
            continue;
        }
        let databases = get_json(&format!(
            "{url}/api/v2/tenants/{tenant}/databases?limit=1000"
        ))
        .await?;
        let mut dbs = BTreeMap::new();
        for db in databases.as_array().into_iter().flatten() {
            let db = db["name"].as_str().unwrap_or_default();
            let base = format!("{url}/api/v2/tenants/{tenant}/databases/{db}");
            let list = get_json(&format!("{base}/collections?limit=1000")).await?;
            let mut collections = BTreeMap::new();
            for collection in list.as_array().into_iter().flatten() {
                let id = collection["id"].as_str().unwrap_or_default();
                let records = get_records(&format!("{base}/collections/{id}"), None).await?;
                collections.insert(
                    collection["name"].as_str().unwrap_or_default().to_owned(),
                    json!({"metadata": collection["metadata"], "dimension": collection["dimension"], "records": records}),
                );
            }
            dbs.insert(db.to_owned(), json!(collections));
        }
        out.insert(tenant.clone(), json!(dbs));
    }
    Ok(json!(out))
}

/// The paths where two dumps differ (at most `limit`).
fn differences(a: &Value, b: &Value, path: &str, out: &mut Vec<String>, limit: usize) {
    if out.len() >= limit || a == b {
        return;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for key in keys {
                let (va, vb) = (
                    x.get(key).unwrap_or(&Value::Null),
                    y.get(key).unwrap_or(&Value::Null),
                );
                if !x.contains_key(key) || !y.contains_key(key) {
                    if out.len() < limit {
                        out.push(format!(
                            "{path}/{key}: {} vs {}",
                            if x.contains_key(key) {
                                "present"
                            } else {
                                "absent"
                            },
                            if y.contains_key(key) {
                                "present"
                            } else {
                                "absent"
                            }
                        ));
                    }
                    continue;
                }
                differences(va, vb, &format!("{path}/{key}"), out, limit);
            }
        }
        _ => out.push(format!("{path}: {a} vs {b}")),
    }
}

fn env_parse<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

async fn journal_left(proxy: &ProxyProcess) -> anyhow::Result<(u64, u64, Vec<String>)> {
    let (status, body) = shift_testkit::admin_call(
        &proxy.admin_url(),
        shift_testkit::ADMIN_TOKEN,
        "GET",
        "/admin/status",
        None,
    )
    .await?;
    anyhow::ensure!(
        status.is_success(),
        "/admin/status answered {status}: {body}"
    );
    let secondary = body["topology"]["secondary"]
        .as_str()
        .unwrap_or("new")
        .to_owned();
    Ok((
        body["journal"][&secondary]["entries"].as_u64().unwrap_or(0),
        body["dead_letters"]["count"].as_u64().unwrap_or(0),
        body["dead_letters"]["first"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|d| format!("{} {}", d["collection"], d["reason"]))
            .collect(),
    ))
}

/// Every kind of request, in CI: 600 requests, well under a minute. Scripts and a longer run:
/// `CHROMA_SHIFT_FUZZ_REQUESTS` (`scripts/fuzz.sh`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzed_requests_leave_the_proxy_and_chroma_alike() -> anyhow::Result<()> {
    let all = Kind::SETUP.iter().chain(Kind::MUTATIONS.iter()).copied();
    fuzz(all.collect(), DEFAULT_REQUESTS).await
}

/// One run of `count` requests of `kinds`, unless CHROMA_SHIFT_FUZZ_REQUESTS says otherwise or
/// CHROMA_SHIFT_FUZZ_KINDS names mutation kinds (then: those beside every set-up kind).
async fn fuzz(kinds: Vec<Kind>, count: usize) -> anyhow::Result<()> {
    let seed: u64 = env_parse("CHROMA_SHIFT_FUZZ_SEED").unwrap_or_else(|| fastrand::u64(..));
    let count: usize = env_parse("CHROMA_SHIFT_FUZZ_REQUESTS").unwrap_or(count);
    let kinds: Vec<Kind> = match std::env::var("CHROMA_SHIFT_FUZZ_KINDS") {
        Ok(list) => Kind::SETUP
            .iter()
            .copied()
            .chain(
                Kind::MUTATIONS
                    .iter()
                    .copied()
                    .filter(|k| list.split(',').any(|w| w.trim() == k.name())),
            )
            .collect(),
        Err(_) => kinds,
    };
    let verbose = std::env::var("CHROMA_SHIFT_FUZZ_VERBOSE").is_ok_and(|v| v == "1");
    eprintln!(
        "fuzz: seed {seed} (CHROMA_SHIFT_FUZZ_SEED={seed}), {count} requests, kinds {kinds:?}",
    );

    let (direct, old, new) = tokio::join!(Chroma::spawn(), Chroma::spawn(), Chroma::spawn());
    let (direct, old, new) = (direct?, old?, new?);
    let mut proxy = Proxy::in_front_of(&old, &new).spawn_process().await?;

    let mut generator = Generator::new(seed, kinds);
    let mut to_direct = Side {
        addr: direct.addr(),
        ids: HashMap::new(),
    };
    let mut to_proxy = Side {
        addr: proxy.url().trim_start_matches("http://").parse()?,
        ids: HashMap::new(),
    };
    let mut violations: Vec<Violation> = Vec::new();
    let mut statuses: BTreeMap<(Kind, u16, u16), usize> = BTreeMap::new();
    let mut unmirrorable: BTreeMap<Kind, usize> = BTreeMap::new();
    let mut phantoms = PhantomUpdates::default();
    let mut tenants: BTreeSet<String> = TENANTS.iter().map(|t| (*t).to_owned()).collect();
    for t in ["FUZZ_T0", "Fuzz_T1", "DEFAULT_TENANT"] {
        tenants.insert(t.to_owned());
    }

    // Time spent waiting on each side, reported (never asserted).
    let (mut direct_time, mut proxy_time) = (Duration::ZERO, Duration::ZERO);
    for index in 0..count {
        let request = generator.next();
        let raw_direct = to_direct.render(&request);
        let raw_proxy = to_proxy.render(&request);
        // The proxy first: a write it refuses because it could not mirror it (a body Chroma
        // would take but chroma-shift cannot read) is not sent to Chroma either, so the
        // stores stay comparable; such refusals are counted and printed.
        let started = std::time::Instant::now();
        let p = match exchange(to_proxy.addr, &raw_proxy).await {
            Ok(answer) => answer,
            Err(error) => Answer {
                status: 0,
                body: error.to_string().into_bytes(),
            },
        };
        proxy_time += started.elapsed();
        if p.status == 400 && String::from_utf8_lossy(&p.body).contains(UNMIRRORABLE) {
            *unmirrorable.entry(request.kind).or_default() += 1;
            generator.observe(&request, &p);
            continue;
        }
        let update = PhantomUpdates::before(
            &request,
            &old.url(),
            to_proxy.collection_of(&request),
            to_direct.collection_of(&request),
        )
        .await;
        let started = std::time::Instant::now();
        let d = exchange(to_direct.addr, &raw_direct).await?;
        direct_time += started.elapsed();
        if verbose {
            eprintln!(
                "#{index} {:?}: {} -> direct {} {} / proxy {} {}",
                request.kind,
                show(&raw_direct),
                d.status,
                show(&d.body),
                p.status,
                show(&p.body)
            );
        }
        *statuses
            .entry((request.kind, d.status, p.status))
            .or_default() += 1;
        if d.status / 100 != p.status / 100 {
            violations.push(Violation {
                index,
                kind: request.kind,
                what: format!(
                    "status class differs: Chroma {} {}; proxy {} {}\n    request: {}",
                    d.status,
                    show(&d.body),
                    p.status,
                    show(&p.body),
                    show(&raw_proxy)
                ),
            });
        }
        generator.observe(&request, &d);
        if let Some(update) = update.filter(|_| (200..300).contains(&d.status)) {
            phantoms.applied(update, &request.body);
        }
        if (200..300).contains(&d.status) {
            to_direct.apply(
                &request.effect,
                &serde_json::from_slice(&d.body).unwrap_or(Value::Null),
            );
        }
        if (200..300).contains(&p.status) {
            to_proxy.apply(
                &request.effect,
                &serde_json::from_slice(&p.body).unwrap_or(Value::Null),
            );
        }
        if let Some(pid) = proxy.pid() {
            // A crash shows as a process that is gone.
            anyhow::ensure!(
                std::path::Path::new(&format!("/proc/{pid}")).exists(),
                "the proxy process died at request #{index} (seed {seed}); its log ends with:\n{}",
                proxy.log_tail(40)
            );
        }
    }

    // The journal drains (or says why not) before the stores are compared.
    let mut drained = false;
    let mut last = (0, 0, Vec::new());
    for _ in 0..300 {
        last = journal_left(&proxy).await?;
        if last.0 == 0 {
            drained = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // What the journal says after the run: entries that never drain and writes parked on
    // the secondary are both writes on one store only.
    let mut after_run = Vec::new();
    if !drained {
        after_run.push(format!(
            "the journal still holds {} entries for the secondary after 60 s",
            last.0
        ));
    }
    if last.1 > 0 {
        after_run.push(format!(
            "{} writes parked as dead letters (applied on the primary only), the first:\n    {}",
            last.1,
            last.2
                .iter()
                .take(8)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n    ")
        ));
    }

    let (d_url, p1_url, p2_url) = (direct.url(), old.url(), new.url());
    let (d_dump, p1_dump, p2_dump) = tokio::join!(
        dump(&d_url, &tenants),
        dump(&p1_url, &tenants),
        dump(&p2_url, &tenants)
    );
    let (mut d_dump, p1_dump, p2_dump) = (d_dump?, p1_dump?, p2_dump?);
    let excused = phantoms.excuse(&mut d_dump, &p1_dump, &to_direct.ids);
    let mut store_diffs = Vec::new();
    differences(&d_dump, &p1_dump, "direct~primary", &mut store_diffs, 20);
    differences(
        &p1_dump,
        &p2_dump,
        "primary~secondary",
        &mut store_diffs,
        40,
    );
    let alive = proxy
        .pid()
        .is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
    proxy.stop().await?;

    let mut report = String::new();
    let _ = writeln!(
        report,
        "fuzz: seed {seed}, {count} requests; time in answers: Chroma {direct_time:?}, proxy {proxy_time:?}"
    );
    if let Some(first) = violations.first() {
        let _ = writeln!(
            report,
            "first difference at #{} ({}); later ones may follow from it: replay one kind alone with CHROMA_SHIFT_FUZZ_KINDS={} CHROMA_SHIFT_FUZZ_SEED={seed}",
            first.index,
            first.kind.name(),
            first.kind.name()
        );
    }
    let _ = writeln!(
        report,
        "answers by kind (Chroma status, proxy status: count):"
    );
    for ((kind, d, p), n) in &statuses {
        let _ = writeln!(
            report,
            "  {kind:?} {d} {p}: {n}{}",
            if d / 100 != p / 100 {
                "  <-- differs"
            } else {
                ""
            }
        );
    }
    for (kind, n) in &unmirrorable {
        let _ = writeln!(
            report,
            "  {kind:?}: {n} refused by the proxy as unmirrorable (not sent to Chroma)"
        );
    }
    let mut by_kind: BTreeMap<Kind, Vec<&Violation>> = BTreeMap::new();
    for v in &violations {
        by_kind.entry(v.kind).or_default().push(v);
    }
    for (kind, list) in &by_kind {
        let _ = writeln!(
            report,
            "\n{} violations of kind {} (first: #{}):\n  {}",
            list.len(),
            kind.name(),
            list[0].index,
            list[0].what
        );
    }
    if !excused.is_empty() {
        let _ = writeln!(
            report,
            "\nChroma's phantom updates (an update of a missing id that Chroma brings back later; the proxy clears it on its primary), not counted as differences:"
        );
        for line in &excused {
            let _ = writeln!(report, "  {line}");
        }
    }
    for line in &after_run {
        let _ = writeln!(report, "\nafter the run: {line}");
    }
    if !store_diffs.is_empty() {
        let _ = writeln!(report, "\nstores differ:");
        for d in &store_diffs {
            let _ = writeln!(report, "  {d}");
        }
    }
    eprintln!("{report}");
    assert!(alive, "the proxy process died (seed {seed})");
    assert!(
        violations.is_empty() && after_run.is_empty() && store_diffs.is_empty(),
        "fuzz found {} answer differences, {} journal problems and {} store differences (seed {seed}); see the report above",
        violations.len(),
        after_run.len(),
        store_diffs.len()
    );
    Ok(())
}
