//! The closed-loop load generator: C clients, each on its own keep-alive connection, send the
//! next request as soon as the last answer's body has arrived. Rounds alternate between the
//! targets in mirrored order (A B C, C B A, ...), so that drift (a collection growing, other
//! work on the machine) falls on all of them alike.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{header, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::proc::{cpu_ticks, total_ticks, with_children};
use crate::proxy::wait_replayed;

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// What one round measured.
pub struct Round {
    /// Latency of each request in microseconds.
    pub latency: Histogram<u64>,
    pub requests: u64,
    pub elapsed: Duration,
    /// CPU ticks of the old Chroma, the new Chroma, the forwarding process (proxy or nginx)
    /// and this process, from the round's start to the end of its replay catch-up.
    pub cpu: [u64; 4],
    /// How long the proxy took after the round to replay its journal to the new store.
    pub catch_up: Duration,
}

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

/// A client that keeps one connection (one per simulated user).
pub fn client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1)
        .build(connector)
}

/// Runs `clients.len()` closed-loop clients against `uri` until `cap` requests were sent or
/// `limit` passed. Request `i` sends `bodies[i % bodies.len()]` (POSTed; an empty body is
/// sent as a GET instead). Any answer that is not a
/// success fails the round.
pub async fn run_round(
    clients: &[HttpClient],
    uri: &Uri,
    bodies: Arc<Vec<Bytes>>,
    cap: usize,
    limit: Duration,
) -> anyhow::Result<(Histogram<u64>, u64, Duration)> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in clients {
        let client = client.clone();
        let uri = uri.clone();
        let bodies = bodies.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut latency = histogram();
            let mut count = 0u64;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= cap || started.elapsed() >= limit {
                    break;
                }
                let body = bodies[i % bodies.len()].clone();
                let request = if body.is_empty() {
                    Request::builder()
                        .method(Method::GET)
                        .uri(uri.clone())
                        .body(Full::new(body))?
                } else {
                    Request::builder()
                        .method(Method::POST)
                        .uri(uri.clone())
                        .header(header::CONTENT_TYPE, "application/json")
                        .body(Full::new(body))?
                };
                let sent = Instant::now();
                let response = client.request(request).await?;
                let status = response.status();
                let body = response.into_body().collect().await?.to_bytes();
                let took = sent.elapsed();
                if !status.is_success() {
                    bail!(
                        "{uri} answered {status}: {}",
                        String::from_utf8_lossy(&body[..body.len().min(500)])
                    );
                }
                latency.saturating_record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
                count += 1;
            }
            anyhow::Ok((latency, count))
        }));
    }
    let mut latency = histogram();
    let mut requests = 0;
    for task in tasks {
        let (h, n) = task.await??;
        latency.add(&h)?;
        requests += n;
    }
    Ok((latency, requests, started.elapsed()))
}

/// One thing to send requests to.
pub struct Target {
    pub name: &'static str,
    pub url: String,
    /// The forwarding process(es), for CPU accounting; `None` for a store reached directly.
    pub forwarder: Option<u32>,
    /// The proxy's admin URL, to wait for its replay after a round.
    pub admin: Option<String>,
    /// One client per simulated user, reused across rounds so connections stay warm.
    pub clients: Vec<HttpClient>,
}

impl Target {
    pub fn new(
        name: &'static str,
        url: String,
        forwarder: Option<u32>,
        admin: Option<String>,
    ) -> Target {
        Target {
            name,
            url,
            forwarder,
            admin,
            clients: Vec::new(),
        }
    }
}

/// The timing of closed-loop rounds, from the environment: `BENCH_ROUND_SECS` (0.1 to 60,
/// default 1), `BENCH_WARMUP_SECS` (0 to 60, default 1), `BENCH_ROUNDS` (1 to 50).
#[derive(Debug, Clone, Copy)]
pub struct RoundTiming {
    /// The length of one round.
    pub round: Duration,
    /// The warm-up before the rounds.
    pub warmup: Duration,
    /// Rounds per target.
    pub rounds: usize,
}

impl RoundTiming {
    /// These rounds with at most `cap` requests each (see [`Plan::cap_from_warmup`]), waiting up
    /// to a minute after each for a proxy's journal to drain.
    pub fn plan(&self, cap: usize, cap_from_warmup: bool) -> Plan {
        Plan {
            rounds: self.rounds,
            round: self.round,
            warmup: self.warmup,
            cap,
            cap_from_warmup,
            catch_up_limit: Duration::from_secs(60),
        }
    }

    /// From the environment, with `default_rounds` rounds when `BENCH_ROUNDS` is unset.
    pub fn from_env(default_rounds: usize) -> anyhow::Result<RoundTiming> {
        let round_secs: f64 = crate::env_var("BENCH_ROUND_SECS", 1.0)?;
        let warmup_secs: f64 = crate::env_var("BENCH_WARMUP_SECS", 1.0)?;
        if !(0.1..=60.0).contains(&round_secs) || !(0.0..=60.0).contains(&warmup_secs) {
            bail!("BENCH_ROUND_SECS must be in 0.1..=60 and BENCH_WARMUP_SECS in 0..=60");
        }
        let rounds: usize = crate::env_var("BENCH_ROUNDS", default_rounds)?;
        if !(1..=50).contains(&rounds) {
            bail!("BENCH_ROUNDS must be in 1..=50");
        }
        Ok(RoundTiming {
            round: Duration::from_secs_f64(round_secs),
            warmup: Duration::from_secs_f64(warmup_secs),
            rounds,
        })
    }
}

/// How the rounds of one scenario run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub rounds: usize,
    pub round: Duration,
    pub warmup: Duration,
    /// Requests per round at most.
    pub cap: usize,
    /// Bodies are made per round (adds with new ids): warm-up sends at most 400, and a round
    /// gets 1.5 times what the fastest target managed in warm-up, since building bodies is not
    /// free. Otherwise every round may send `cap` requests from the same bodies.
    pub cap_from_warmup: bool,
    /// Longest wait after a round for a proxy's journal to drain.
    pub catch_up_limit: Duration,
}

/// Runs a warm-up per target, then `plan.rounds` rounds per target, alternating targets in
/// mirrored order, with `concurrency` clients; `uris[t]` is where target `t` gets its requests
/// and `bodies(n)` gives the bodies of a round of at most `n` requests. After each round it
/// waits until the target's journal is empty (when it is a proxy). `chroma_pids` (old, new)
/// and each target's forwarder are the processes whose CPU each round records. The rounds,
/// per target in `targets` order.
pub async fn alternate_rounds(
    targets: &mut [Target],
    uris: &[Uri],
    concurrency: usize,
    plan: &Plan,
    chroma_pids: [Option<u32>; 2],
    mut bodies: impl FnMut(usize) -> anyhow::Result<Arc<Vec<Bytes>>>,
) -> anyhow::Result<Vec<Vec<Round>>> {
    let own_pid = std::process::id();
    for target in targets.iter_mut() {
        target.clients.resize_with(concurrency, client);
    }
    let mut rounds: Vec<Vec<Round>> = targets.iter().map(|_| Vec::new()).collect();
    let warm_cap = if plan.cap_from_warmup {
        plan.cap.min(400)
    } else {
        plan.cap
    };
    let mut fastest = 0f64;
    for (target, uri) in targets.iter().zip(uris) {
        let (_, requests, elapsed) = run_round(
            &target.clients,
            uri,
            bodies(warm_cap)?,
            warm_cap,
            plan.warmup,
        )
        .await
        .with_context(|| format!("warm-up of {}", target.name))?;
        fastest = fastest.max(requests as f64 / elapsed.as_secs_f64().max(1e-9));
        wait_replayed(target.admin.as_deref(), plan.catch_up_limit).await;
    }
    let cap = if plan.cap_from_warmup {
        plan.cap
            .min((fastest * plan.round.as_secs_f64() * 1.5) as usize + 4 * concurrency)
    } else {
        plan.cap
    };
    for round in 0..plan.rounds {
        let mut order: Vec<usize> = (0..targets.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for t in order {
            let target = &targets[t];
            let round_bodies = bodies(cap)?;
            let forwarder: Vec<u32> = target.forwarder.map(with_children).unwrap_or_default();
            let ticks = || {
                [
                    chroma_pids[0].and_then(cpu_ticks).unwrap_or(0),
                    chroma_pids[1].and_then(cpu_ticks).unwrap_or(0),
                    total_ticks(&forwarder),
                    cpu_ticks(own_pid).unwrap_or(0),
                ]
            };
            let before = ticks();
            let (latency, requests, elapsed) =
                run_round(&target.clients, &uris[t], round_bodies, cap, plan.round)
                    .await
                    .with_context(|| format!("{} round {round}", target.name))?;
            let catch_up = wait_replayed(target.admin.as_deref(), plan.catch_up_limit).await;
            let after = ticks();
            let mut cpu = [0u64; 4];
            for i in 0..4 {
                cpu[i] = after[i].saturating_sub(before[i]);
            }
            rounds[t].push(Round {
                latency,
                requests,
                elapsed,
                cpu,
                catch_up,
            });
        }
    }
    Ok(rounds)
}

/// One target's rounds merged.
pub struct Summary {
    pub requests: u64,
    pub p50: f64,
    pub p99: f64,
    pub throughput: f64,
    /// Microseconds of CPU per request: old Chroma, new Chroma, the forwarder, the load
    /// generator.
    pub cpu_per_request: [f64; 4],
    /// Mean wait after a round for the proxy's replay to the new store.
    pub catch_up: Duration,
}

pub fn summarize(rounds: &[Round], ticks_per_second: u64) -> Summary {
    let mut latency = histogram();
    let mut requests = 0;
    let mut elapsed = Duration::ZERO;
    let mut cpu = [0u64; 4];
    let mut catch_up = Duration::ZERO;
    for round in rounds {
        catch_up += round.catch_up;
        latency.add(&round.latency).expect("same bounds");
        requests += round.requests;
        elapsed += round.elapsed;
        for (total, c) in cpu.iter_mut().zip(round.cpu) {
            *total += c;
        }
    }
    let per_request =
        |ticks: u64| ticks as f64 * 1e6 / ticks_per_second as f64 / requests.max(1) as f64;
    Summary {
        requests,
        p50: latency.value_at_quantile(0.50) as f64 / 1000.0,
        p99: latency.value_at_quantile(0.99) as f64 / 1000.0,
        throughput: requests as f64 / elapsed.as_secs_f64().max(1e-9),
        cpu_per_request: cpu.map(per_request),
        catch_up: catch_up / u32::try_from(rounds.len().max(1)).unwrap_or(1),
    }
}

/// The per-round throughput ratios to `baseline` (each round paired with the baseline round of
/// the same index): their median, smallest and largest.
pub fn throughput_ratios(baseline: &[Round], other: &[Round]) -> (f64, f64, f64) {
    let rate = |r: &Round| r.requests as f64 / r.elapsed.as_secs_f64().max(1e-9);
    let ratios: Vec<f64> = baseline
        .iter()
        .zip(other)
        .map(|(d, o)| rate(o) / rate(d))
        .collect();
    median_min_max(ratios)
}

/// The median, smallest and largest of `values` (NaN for none).
pub fn median_min_max(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let median = if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    };
    (median, values[0], values[n - 1])
}
