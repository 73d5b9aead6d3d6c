//! A seeded fuzz run: mutated requests (bodies, paths, headers, methods) sent to chroma-shift in
//! front of two stores (P1 primary, P2 secondary) and to a Chroma directly (D), each request to
//! both in the same order, over raw sockets (so `OPTIONS *`, absolute-form targets and bytes
//! that are not UTF-8 go out as written). Then a full comparison of what the stores hold:
//! P1 against D, and P2 against P1 once the journal has drained (tenants, databases,
//! collections with their metadata, whole records).
//!
//! Asserted: the proxy answers every request with Chroma's status class (so never a 5xx where
//! Chroma answered 2xx or 4xx), it never crashes, and no write lands on one store only.
//!
//! Two tests: every mutation kind (ignored while the defects in FINDINGS.md stand), and the
//! kinds without an open defect (in CI, 600 requests, about half a minute).
//!
//! `CHROMA_SHIFT_FUZZ_SEED` replays a run (the seed is printed either way);
//! `CHROMA_SHIFT_FUZZ_REQUESTS` sets the count (default 1500); `CHROMA_SHIFT_FUZZ_KINDS`
//! (comma-separated kinds, see [`Kind`]) keeps only those mutations beside the set-up requests,
//! which is how a defect is minimized; `CHROMA_SHIFT_FUZZ_VERBOSE=1` prints every exchange.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use shift_testkit::{http_json, Chroma, Proxy, ProxyProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Requests in a default run: about a minute against three local Chroma servers.
const DEFAULT_REQUESTS: usize = 1500;
/// A bound that only turns a hung exchange into a failure.
const EXCHANGE_LIMIT: Duration = Duration::from_secs(60);
const TENANTS: [&str; 3] = ["default_tenant", "fuzz_t0", "fuzz_t1"];
const DATABASES: [&str; 3] = ["default_database", "fuzz_db0", "fuzz_db1"];
const COLLECTIONS: [&str; 5] = ["fz_a", "fz_b", "fz_c", "fz_d", "fz_e"];

/// What a request exercises; violations are grouped by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Kind {
    // Set-up and well-formed traffic.
    CreateTenant,
    CreateDatabase,
    CreateCollection,
    Add,
    Upsert,
    Update,
    DeleteRecords,
    DeleteWhere,
    Read,
    Rename,
    ModifyMetadata,
    DeleteCollection,
    DeleteDatabase,
    // Mutations.
    WrongDimension,
    NonObjectMetadata,
    DuplicateKeys,
    InvalidUtf8,
    LoneSurrogate,
    DeepNesting,
    BadJson,
    IdSpelling,
    UpperCaseTenant,
    RenameToExisting,
    DeleteByUuid,
    Fork,
    FunctionAttach,
    FunctionDetach,
    OptionsStar,
    AbsoluteForm,
    UnknownRoute,
    WrongMethod,
    OddHeaders,
}

impl Kind {
    const SETUP: [Kind; 13] = [
        Kind::CreateTenant,
        Kind::CreateDatabase,
        Kind::CreateCollection,
        Kind::Add,
        Kind::Upsert,
        Kind::Update,
        Kind::DeleteRecords,
        Kind::DeleteWhere,
        Kind::Read,
        Kind::Rename,
        Kind::ModifyMetadata,
        Kind::DeleteCollection,
        Kind::DeleteDatabase,
    ];
    const MUTATIONS: [Kind; 19] = [
        Kind::WrongDimension,
        Kind::NonObjectMetadata,
        Kind::DuplicateKeys,
        Kind::InvalidUtf8,
        Kind::LoneSurrogate,
        Kind::DeepNesting,
        Kind::BadJson,
        Kind::IdSpelling,
        Kind::UpperCaseTenant,
        Kind::RenameToExisting,
        Kind::DeleteByUuid,
        Kind::Fork,
        Kind::FunctionAttach,
        Kind::FunctionDetach,
        Kind::OptionsStar,
        Kind::AbsoluteForm,
        Kind::UnknownRoute,
        Kind::WrongMethod,
        Kind::OddHeaders,
    ];

    fn name(self) -> String {
        // CamelCase to snake_case, the spelling CHROMA_SHIFT_FUZZ_KINDS takes.
        let mut out = String::new();
        for (i, c) in format!("{self:?}").chars().enumerate() {
            if c.is_ascii_uppercase() && i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        }
        out
    }
}

/// How a collection id is written in a path: Chroma parses all of these as the same UUID.
#[derive(Debug, Clone, Copy)]
enum Spelling {
    Canonical,
    Upper,
    Braces,
    Simple,
    Urn,
    /// The collection's name where the id would be.
    Name,
}

impl Spelling {
    fn write(self, id: &str, name: &str) -> String {
        match self {
            Spelling::Canonical => id.to_owned(),
            Spelling::Upper => id.to_ascii_uppercase(),
            Spelling::Braces => format!("{{{id}}}"),
            Spelling::Simple => id.replace('-', ""),
            Spelling::Urn => format!("urn:uuid:{id}"),
            Spelling::Name => name.to_owned(),
        }
    }
}

/// A piece of a request target.
#[derive(Debug, Clone)]
enum Part {
    Text(String),
    /// The id of a collection as this target knows it (each store assigns its own).
    Collection {
        tenant: String,
        database: String,
        name: String,
        spelling: Spelling,
    },
    /// `127.0.0.1:PORT` of the target (for absolute-form request targets).
    Authority,
}

/// What a successful answer changes in the model of a target.
#[derive(Debug, Clone)]
enum Effect {
    None,
    Created {
        tenant: String,
        database: String,
        name: String,
    },
    Renamed {
        tenant: String,
        database: String,
        from: String,
        to: String,
    },
    Deleted {
        tenant: String,
        database: String,
        name: String,
    },
}

#[derive(Debug, Clone)]
struct FuzzRequest {
    kind: Kind,
    method: String,
    target: Vec<Part>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// No `Content-Length` (for `OPTIONS *` and bodiless GETs).
    bodiless: bool,
    effect: Effect,
}

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

/// Builds the requests from the seed, following what Chroma directly answered.
struct Generator {
    rng: fastrand::Rng,
    kinds: Vec<Kind>,
    /// Tenants and databases Chroma created (so later requests mostly aim at real ones).
    tenants: BTreeSet<String>,
    databases: BTreeSet<(String, String)>,
    /// Collections Chroma holds, by (tenant, database, name).
    collections: BTreeSet<(String, String, String)>,
}

fn pick<'a, T>(rng: &mut fastrand::Rng, items: &'a [T]) -> &'a T {
    &items[rng.usize(..items.len())]
}

impl Generator {
    fn new(seed: u64, kinds: Vec<Kind>) -> Generator {
        Generator {
            rng: fastrand::Rng::with_seed(seed),
            kinds,
            tenants: BTreeSet::from(["default_tenant".to_owned()]),
            databases: BTreeSet::from([(
                "default_tenant".to_owned(),
                "default_database".to_owned(),
            )]),
            collections: BTreeSet::new(),
        }
    }

    /// Follows Chroma's own answer to a request (the direct side is the reference).
    fn observe(&mut self, request: &FuzzRequest, direct: &Answer) {
        if !(200..300).contains(&direct.status) {
            return;
        }
        match &request.effect {
            Effect::Created {
                tenant,
                database,
                name,
            } => {
                self.collections
                    .insert((tenant.clone(), database.clone(), name.clone()));
            }
            Effect::Renamed {
                tenant,
                database,
                from,
                to,
            } => {
                self.collections
                    .remove(&(tenant.clone(), database.clone(), from.clone()));
                self.collections
                    .insert((tenant.clone(), database.clone(), to.clone()));
            }
            Effect::Deleted {
                tenant,
                database,
                name,
            } => {
                self.collections
                    .remove(&(tenant.clone(), database.clone(), name.clone()));
            }
            Effect::None => {}
        }
        let path = request
            .target
            .iter()
            .map(|p| match p {
                Part::Text(t) => t.as_str(),
                _ => "",
            })
            .collect::<String>();
        if request.kind == Kind::CreateTenant {
            if let Ok(body) = serde_json::from_slice::<Value>(&request.body) {
                if let Some(name) = body["name"].as_str() {
                    self.tenants.insert(name.to_owned());
                }
            }
        }
        if request.kind == Kind::CreateDatabase {
            if let Ok(body) = serde_json::from_slice::<Value>(&request.body) {
                if let (Some(name), Some(tenant)) = (
                    body["name"].as_str(),
                    path.strip_prefix("/api/v2/tenants/")
                        .and_then(|rest| rest.split('/').next()),
                ) {
                    self.databases.insert((tenant.to_owned(), name.to_owned()));
                }
            }
        }
        if request.kind == Kind::DeleteDatabase {
            let parts: Vec<&str> = path.split('/').collect();
            if let (Some(tenant), Some(database)) = (parts.get(4), parts.get(6)) {
                let key = ((*tenant).to_owned(), (*database).to_owned());
                self.databases.remove(&key);
                self.collections
                    .retain(|(t, d, _)| !(t == &key.0 && d == &key.1));
            }
        }
    }

    fn database(&mut self) -> (String, String) {
        let known: Vec<_> = self.databases.iter().cloned().collect();
        // Mostly the default database, where most collections live.
        if self.rng.u8(..10) < 6 {
            return ("default_tenant".to_owned(), "default_database".to_owned());
        }
        pick(&mut self.rng, &known).clone()
    }

    /// A collection Chroma holds (or, now and then, a name it does not hold).
    fn collection(&mut self) -> (String, String, String) {
        let known: Vec<_> = self.collections.iter().cloned().collect();
        if known.is_empty() || self.rng.u8(..20) == 0 {
            let (t, d) = self.database();
            return (t, d, pick(&mut self.rng, &COLLECTIONS).to_string());
        }
        pick(&mut self.rng, &known).clone()
    }

    fn db_path(tenant: &str, database: &str) -> String {
        format!("/api/v2/tenants/{tenant}/databases/{database}")
    }

    fn collection_target(
        &mut self,
        spelling: Spelling,
        suffix: &str,
    ) -> (Vec<Part>, (String, String, String)) {
        let (tenant, database, name) = self.collection();
        let parts = vec![
            Part::Text(format!(
                "{}/collections/",
                Self::db_path(&tenant, &database)
            )),
            Part::Collection {
                tenant: tenant.clone(),
                database: database.clone(),
                name: name.clone(),
                spelling,
            },
            Part::Text(suffix.to_owned()),
        ];
        (parts, (tenant, database, name))
    }

    fn ids(&mut self) -> Vec<String> {
        let n = self.rng.usize(1..=4);
        (0..n).map(|_| format!("r{}", self.rng.u8(..16))).collect()
    }

    fn embedding(&mut self, dim: usize) -> Vec<f32> {
        (0..dim)
            .map(|_| f32::from(self.rng.u8(..100)) / 10.0)
            .collect()
    }

    fn metadata(&mut self) -> Value {
        match self.rng.u8(..4) {
            0 => json!({"k": self.rng.u8(..5)}),
            1 => json!({"k": self.rng.u8(..5), "s": format!("v{}", self.rng.u8(..3))}),
            2 => json!({"f": f64::from(self.rng.u8(..10)) / 4.0, "b": self.rng.bool()}),
            _ => Value::Null,
        }
    }

    fn records_body(&mut self, with_embeddings: bool) -> Value {
        let ids = self.ids();
        let n = ids.len();
        let mut body = json!({"ids": ids});
        if with_embeddings || self.rng.bool() {
            body["embeddings"] = json!((0..n).map(|_| self.embedding(3)).collect::<Vec<_>>());
        }
        if self.rng.bool() {
            body["metadatas"] = json!((0..n).map(|_| self.metadata()).collect::<Vec<_>>());
        }
        if self.rng.bool() {
            body["documents"] = json!((0..n)
                .map(|i| format!("doc {} {}", i, self.rng.u8(..9)))
                .collect::<Vec<_>>());
        }
        body
    }

    fn post(kind: Kind, target: Vec<Part>, body: Vec<u8>, effect: Effect) -> FuzzRequest {
        FuzzRequest {
            kind,
            method: "POST".to_owned(),
            target,
            headers: vec![("Content-Type".to_owned(), "application/json".to_owned())],
            body,
            bodiless: false,
            effect,
        }
    }

    fn get(kind: Kind, target: Vec<Part>) -> FuzzRequest {
        FuzzRequest {
            kind,
            method: "GET".to_owned(),
            target,
            headers: Vec::new(),
            body: Vec::new(),
            bodiless: true,
            effect: Effect::None,
        }
    }

    /// A record write (add, upsert or update) with one field replaced by raw bytes.
    fn record_write_with(&mut self, kind: Kind, field_json: &[u8]) -> FuzzRequest {
        let op = *pick(&mut self.rng, &["add", "upsert", "update"]);
        let (target, _) = self.collection_target(Spelling::Canonical, &format!("/{op}"));
        let id = format!("r{}", self.rng.u8(..16));
        let mut body = format!(
            r#"{{"ids":["{id}"],"embeddings":[[1.0,2.0,3.0]],"metadatas":[{{"k":1}}],"documents":"#
        )
        .into_bytes();
        body.extend_from_slice(b"[");
        body.extend_from_slice(field_json);
        body.extend_from_slice(b"]}");
        Self::post(kind, target, body, Effect::None)
    }

    fn next(&mut self) -> FuzzRequest {
        // Collections first: most kinds need one to aim at.
        let kind = if self.collections.len() < 2 && self.rng.bool() {
            Kind::CreateCollection
        } else {
            *pick(&mut self.rng, &self.kinds.clone())
        };
        match kind {
            Kind::CreateTenant => {
                let name = pick(&mut self.rng, &TENANTS[1..]).to_string();
                Self::post(
                    kind,
                    vec![Part::Text("/api/v2/tenants".to_owned())],
                    serde_json::to_vec(&json!({"name": name})).unwrap_or_default(),
                    Effect::None,
                )
            }
            Kind::CreateDatabase => {
                let tenants: Vec<String> = self.tenants.iter().cloned().collect();
                let tenant = pick(&mut self.rng, &tenants).clone();
                let name = pick(&mut self.rng, &DATABASES[1..]).to_string();
                Self::post(
                    kind,
                    vec![Part::Text(format!("/api/v2/tenants/{tenant}/databases"))],
                    serde_json::to_vec(&json!({"name": name})).unwrap_or_default(),
                    Effect::None,
                )
            }
            Kind::DeleteDatabase => {
                let known: Vec<_> = self
                    .databases
                    .iter()
                    .filter(|(_, d)| d != "default_database")
                    .cloned()
                    .collect();
                if known.is_empty() || self.rng.u8(..4) != 0 {
                    return self.next();
                }
                let (tenant, database) = pick(&mut self.rng, &known).clone();
                FuzzRequest {
                    kind,
                    method: "DELETE".to_owned(),
                    target: vec![Part::Text(Self::db_path(&tenant, &database))],
                    headers: Vec::new(),
                    body: Vec::new(),
                    bodiless: false,
                    effect: Effect::None,
                }
            }
            Kind::CreateCollection => {
                let (tenant, database) = self.database();
                let name = pick(&mut self.rng, &COLLECTIONS).to_string();
                let mut body = json!({"name": name, "get_or_create": self.rng.u8(..3) == 0});
                let metadata = self.metadata();
                if !metadata.is_null() {
                    body["metadata"] = metadata;
                }
                Self::post(
                    kind,
                    vec![Part::Text(format!(
                        "{}/collections",
                        Self::db_path(&tenant, &database)
                    ))],
                    serde_json::to_vec(&body).unwrap_or_default(),
                    Effect::Created {
                        tenant,
                        database,
                        name,
                    },
                )
            }
            Kind::Add | Kind::Upsert | Kind::Update => {
                let op = match kind {
                    Kind::Add => "add",
                    Kind::Upsert => "upsert",
                    _ => "update",
                };
                let (target, _) = self.collection_target(Spelling::Canonical, &format!("/{op}"));
                let body = self.records_body(kind != Kind::Update);
                Self::post(
                    kind,
                    target,
                    serde_json::to_vec(&body).unwrap_or_default(),
                    Effect::None,
                )
            }
            Kind::DeleteRecords => {
                let (target, _) = self.collection_target(Spelling::Canonical, "/delete");
                let ids = self.ids();
                Self::post(
                    kind,
                    target,
                    serde_json::to_vec(&json!({"ids": ids})).unwrap_or_default(),
                    Effect::None,
                )
            }
            Kind::DeleteWhere => {
                let (target, _) = self.collection_target(Spelling::Canonical, "/delete");
                let k = self.rng.u8(..5);
                Self::post(
                    kind,
                    target,
                    serde_json::to_vec(&json!({"where": {"k": k}})).unwrap_or_default(),
                    Effect::None,
                )
            }
            Kind::Read => match self.rng.u8(..5) {
                0 => {
                    let (target, _) = self.collection_target(Spelling::Canonical, "/count");
                    Self::get(kind, target)
                }
                1 => {
                    let (target, _) = self.collection_target(Spelling::Canonical, "/get");
                    Self::post(
                        kind,
                        target,
                        br#"{"include":["metadatas","documents"]}"#.to_vec(),
                        Effect::None,
                    )
                }
                2 => {
                    let (target, _) = self.collection_target(Spelling::Canonical, "/query");
                    let e = self.embedding(3);
                    Self::post(
                        kind,
                        target,
                        serde_json::to_vec(&json!({"query_embeddings": [e], "n_results": 3}))
                            .unwrap_or_default(),
                        Effect::None,
                    )
                }
                3 => {
                    let (t, d) = self.database();
                    Self::get(
                        kind,
                        vec![Part::Text(format!("{}/collections", Self::db_path(&t, &d)))],
                    )
                }
                _ => {
                    let (target, _) = self.collection_target(Spelling::Name, "");
                    Self::get(kind, target)
                }
            },
            Kind::Rename | Kind::RenameToExisting => {
                let (target, (tenant, database, name)) =
                    self.collection_target(Spelling::Canonical, "");
                let to = if kind == Kind::RenameToExisting {
                    let others: Vec<String> = self
                        .collections
                        .iter()
                        .filter(|(t, d, n)| t == &tenant && d == &database && n != &name)
                        .map(|(_, _, n)| n.clone())
                        .collect();
                    if others.is_empty() {
                        return self.next();
                    }
                    pick(&mut self.rng, &others).clone()
                } else {
                    // A name free in that database (a taken one is RenameToExisting's).
                    let free: Vec<String> = COLLECTIONS
                        .iter()
                        .filter(|n| {
                            !self.collections.contains(&(
                                tenant.clone(),
                                database.clone(),
                                (**n).to_owned(),
                            ))
                        })
                        .map(|n| (*n).to_owned())
                        .collect();
                    if free.is_empty() {
                        return self.next();
                    }
                    pick(&mut self.rng, &free).clone()
                };
                FuzzRequest {
                    kind,
                    method: "PUT".to_owned(),
                    target,
                    headers: vec![("Content-Type".to_owned(), "application/json".to_owned())],
                    body: serde_json::to_vec(&json!({"new_name": to})).unwrap_or_default(),
                    bodiless: false,
                    effect: Effect::Renamed {
                        tenant,
                        database,
                        from: name,
                        to,
                    },
                }
            }
            Kind::ModifyMetadata => {
                let (target, _) = self.collection_target(Spelling::Canonical, "");
                let metadata = match self.metadata() {
                    Value::Null => json!({"m": 1}),
                    m => m,
                };
                FuzzRequest {
                    kind,
                    method: "PUT".to_owned(),
                    target,
                    headers: vec![("Content-Type".to_owned(), "application/json".to_owned())],
                    body: serde_json::to_vec(&json!({"new_metadata": metadata}))
                        .unwrap_or_default(),
                    bodiless: false,
                    effect: Effect::None,
                }
            }
            Kind::DeleteCollection | Kind::DeleteByUuid => {
                let spelling = if kind == Kind::DeleteByUuid {
                    Spelling::Canonical
                } else {
                    Spelling::Name
                };
                let (target, (tenant, database, name)) = self.collection_target(spelling, "");
                FuzzRequest {
                    kind,
                    method: "DELETE".to_owned(),
                    target,
                    headers: Vec::new(),
                    body: Vec::new(),
                    bodiless: false,
                    effect: Effect::Deleted {
                        tenant,
                        database,
                        name,
                    },
                }
            }
            Kind::WrongDimension => {
                let op = *pick(&mut self.rng, &["add", "upsert", "update"]);
                let (target, _) = self.collection_target(Spelling::Canonical, &format!("/{op}"));
                let ids = self.ids();
                let dim = *pick(&mut self.rng, &[1usize, 2, 4]);
                let embeddings: Vec<Vec<f32>> = ids.iter().map(|_| self.embedding(dim)).collect();
                Self::post(
                    kind,
                    target,
                    serde_json::to_vec(&json!({"ids": ids, "embeddings": embeddings}))
                        .unwrap_or_default(),
                    Effect::None,
                )
            }
            Kind::NonObjectMetadata => {
                let op = *pick(&mut self.rng, &["add", "upsert", "update"]);
                let (target, _) = self.collection_target(Spelling::Canonical, &format!("/{op}"));
                let bad = pick(
                    &mut self.rng,
                    &[json!(5), json!("text"), json!([1, 2]), json!(true)],
                )
                .clone();
                Self::post(
                    kind,
                    target,
                    serde_json::to_vec(&json!({"ids": ["r1"], "embeddings": [[1.0, 2.0, 3.0]], "metadatas": [bad]}))
                        .unwrap_or_default(),
                    Effect::None,
                )
            }
            Kind::DuplicateKeys => {
                let op = *pick(&mut self.rng, &["add", "upsert", "update"]);
                let (target, _) = self.collection_target(Spelling::Canonical, &format!("/{op}"));
                let a = self.rng.u8(..16);
                let b = self.rng.u8(..16);
                let body =
                    format!(r#"{{"ids":["r{a}"],"embeddings":[[1.0,2.0,3.0]],"ids":["r{b}"]}}"#);
                Self::post(kind, target, body.into_bytes(), Effect::None)
            }
            Kind::InvalidUtf8 => self.record_write_with(kind, b"\"bad \xff\xfe bytes\""),
            Kind::LoneSurrogate => self.record_write_with(kind, br#""lone \ud800 surrogate""#),
            Kind::DeepNesting => {
                let depth = 129 + self.rng.usize(..100);
                let (target, _) = self.collection_target(Spelling::Canonical, "/upsert");
                let id = format!("r{}", self.rng.u8(..16));
                let body = format!(
                    r#"{{"ids":["{id}"],"embeddings":[[1.0,2.0,3.0]],"documents":["deep"],"uris":["u"],"x":{}1{}}}"#,
                    "[".repeat(depth),
                    "]".repeat(depth)
                );
                Self::post(kind, target, body.into_bytes(), Effect::None)
            }
            Kind::BadJson => {
                let (target, _) = self.collection_target(Spelling::Canonical, "/add");
                let body = pick(
                    &mut self.rng,
                    &[
                        &b"{"[..],
                        b"",
                        b"null",
                        b"[]",
                        br#"{"ids": "r1"}"#,
                        br#"{"ids": ["r1"], "embeddings": "AAAA"}"#,
                    ],
                )
                .to_vec();
                Self::post(kind, target, body, Effect::None)
            }
            Kind::IdSpelling => {
                let spelling = *pick(
                    &mut self.rng,
                    &[
                        Spelling::Upper,
                        Spelling::Braces,
                        Spelling::Simple,
                        Spelling::Urn,
                    ],
                );
                let op = *pick(&mut self.rng, &["add", "upsert", "delete", "get", ""]);
                let suffix = if op.is_empty() {
                    String::new()
                } else {
                    format!("/{op}")
                };
                let (target, _) = self.collection_target(spelling, &suffix);
                if op.is_empty() {
                    return Self::get(kind, target);
                }
                let body = if op == "get" || op == "delete" {
                    json!({"ids": self.ids()})
                } else {
                    self.records_body(true)
                };
                Self::post(
                    kind,
                    target,
                    serde_json::to_vec(&body).unwrap_or_default(),
                    Effect::None,
                )
            }
            Kind::UpperCaseTenant => {
                let tenant = pick(&mut self.rng, &["FUZZ_T0", "Fuzz_T1", "DEFAULT_TENANT"]);
                match self.rng.u8(..3) {
                    0 => Self::post(
                        kind,
                        vec![Part::Text("/api/v2/tenants".to_owned())],
                        serde_json::to_vec(&json!({"name": tenant})).unwrap_or_default(),
                        Effect::None,
                    ),
                    1 => Self::post(
                        kind,
                        vec![Part::Text(format!("/api/v2/tenants/{tenant}/databases"))],
                        serde_json::to_vec(&json!({"name": "fuzz_db0"})).unwrap_or_default(),
                        Effect::None,
                    ),
                    _ => {
                        let name = pick(&mut self.rng, &COLLECTIONS).to_string();
                        Self::post(
                            kind,
                            vec![Part::Text(format!(
                                "/api/v2/tenants/{tenant}/databases/default_database/collections"
                            ))],
                            serde_json::to_vec(&json!({"name": name})).unwrap_or_default(),
                            Effect::None,
                        )
                    }
                }
            }
            Kind::Fork => {
                let (target, _) = self.collection_target(Spelling::Canonical, "/fork");
                let name = pick(&mut self.rng, &COLLECTIONS).to_string();
                Self::post(
                    kind,
                    target,
                    serde_json::to_vec(&json!({"new_name": name})).unwrap_or_default(),
                    Effect::None,
                )
            }
            Kind::FunctionAttach => {
                let (target, _) = self.collection_target(Spelling::Canonical, "/functions/attach");
                Self::post(
                    kind,
                    target,
                    serde_json::to_vec(&json!({"name": "fz_fn", "function_id": "record_counter", "output_collection": "fz_out", "params": {}}))
                        .unwrap_or_default(),
                    Effect::None,
                )
            }
            Kind::FunctionDetach => {
                let (target, _) =
                    self.collection_target(Spelling::Canonical, "/attached_functions/fz_fn/detach");
                Self::post(
                    kind,
                    target,
                    serde_json::to_vec(&json!({"delete_output": true})).unwrap_or_default(),
                    Effect::None,
                )
            }
            Kind::OptionsStar => FuzzRequest {
                kind,
                method: "OPTIONS".to_owned(),
                target: vec![Part::Text("*".to_owned())],
                headers: Vec::new(),
                body: Vec::new(),
                bodiless: true,
                effect: Effect::None,
            },
            Kind::AbsoluteForm => {
                let path = if self.rng.bool() {
                    "/api/v2/heartbeat".to_owned()
                } else {
                    format!(
                        "{}/collections",
                        Self::db_path("default_tenant", "default_database")
                    )
                };
                let mut request = Self::get(
                    kind,
                    vec![
                        Part::Text("http://".to_owned()),
                        Part::Authority,
                        Part::Text(path),
                    ],
                );
                if self.rng.bool() {
                    // A write in absolute form: Chroma routes it by its path.
                    let (_, (t, d, _)) = self.collection_target(Spelling::Canonical, "");
                    let name = pick(&mut self.rng, &COLLECTIONS).to_string();
                    request = Self::post(
                        kind,
                        vec![
                            Part::Text("http://".to_owned()),
                            Part::Authority,
                            Part::Text(format!("{}/collections", Self::db_path(&t, &d))),
                        ],
                        serde_json::to_vec(&json!({"name": name, "get_or_create": true}))
                            .unwrap_or_default(),
                        Effect::Created {
                            tenant: t,
                            database: d,
                            name,
                        },
                    );
                }
                request
            }
            Kind::UnknownRoute => {
                let method = pick(&mut self.rng, &["POST", "PUT", "PATCH", "DELETE"]).to_string();
                let (mut target, _) = self.collection_target(Spelling::Canonical, "");
                let tail = pick(
                    &mut self.rng,
                    &["/frobnicate", "/add/extra", "/records", "/compact"],
                );
                target.push(Part::Text(tail.to_string()));
                let mut request = Self::post(
                    kind,
                    target,
                    serde_json::to_vec(&json!({"ids": ["r1"], "embeddings": [[1.0, 2.0, 3.0]]}))
                        .unwrap_or_default(),
                    Effect::None,
                );
                request.method = method;
                request
            }
            Kind::WrongMethod => {
                let method = pick(&mut self.rng, &["GET", "PUT", "PATCH", "DELETE"]).to_string();
                let op = *pick(&mut self.rng, &["add", "upsert", "count", "get"]);
                let (target, _) = self.collection_target(Spelling::Canonical, &format!("/{op}"));
                let mut request = Self::post(
                    kind,
                    target,
                    serde_json::to_vec(&json!({"ids": ["r1"], "embeddings": [[1.0, 2.0, 3.0]]}))
                        .unwrap_or_default(),
                    Effect::None,
                );
                request.method = method;
                request
            }
            Kind::OddHeaders => {
                let mut request = {
                    let (target, _) = self.collection_target(Spelling::Canonical, "/upsert");
                    let body = self.records_body(true);
                    Self::post(
                        kind,
                        target,
                        serde_json::to_vec(&body).unwrap_or_default(),
                        Effect::None,
                    )
                };
                let header = pick(
                    &mut self.rng,
                    &[
                        ("Content-Type", "text/plain"),
                        ("Content-Type", "application/json; charset=latin1"),
                        ("Content-Encoding", "gzip"),
                        ("Expect", "100-continue"),
                        ("X-Chroma-Token", "whatever"),
                        ("Accept", "application/xml"),
                    ],
                );
                request.headers = vec![(header.0.to_owned(), header.1.to_owned())];
                request
            }
        }
    }
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
        let (status, databases) = http_json(
            "GET",
            &format!("{url}/api/v2/tenants/{tenant}/databases?limit=1000"),
            None,
        )
        .await?;
        anyhow::ensure!(
            status.is_success(),
            "databases of {tenant}: {status} {databases}"
        );
        let mut dbs = BTreeMap::new();
        for database in databases.as_array().cloned().unwrap_or_default() {
            let db = database["name"].as_str().unwrap_or_default().to_owned();
            let base = format!("{url}/api/v2/tenants/{tenant}/databases/{db}");
            let (status, list) =
                http_json("GET", &format!("{base}/collections?limit=1000"), None).await?;
            anyhow::ensure!(
                status.is_success(),
                "collections of {tenant}/{db}: {status} {list}"
            );
            let mut collections = BTreeMap::new();
            for collection in list.as_array().cloned().unwrap_or_default() {
                let name = collection["name"].as_str().unwrap_or_default().to_owned();
                let id = collection["id"].as_str().unwrap_or_default();
                let (status, got) = http_json(
                    "POST",
                    &format!("{base}/collections/{id}/get"),
                    Some(json!({"include": ["embeddings", "metadatas", "documents", "uris"]})),
                )
                .await?;
                anyhow::ensure!(status.is_success(), "records of {name}: {status} {got}");
                let mut records = BTreeMap::new();
                for (i, rid) in got["ids"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .enumerate()
                {
                    records.insert(
                        rid.as_str().unwrap_or_default().to_owned(),
                        json!({
                            "embedding": got["embeddings"][i],
                            "metadata": got["metadatas"][i],
                            "document": got["documents"][i],
                            "uri": got["uris"][i],
                        }),
                    );
                }
                collections.insert(
                    name,
                    json!({"metadata": collection["metadata"], "dimension": collection["dimension"], "records": records}),
                );
            }
            dbs.insert(db, json!(collections));
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

/// The kinds with no open defect (FINDINGS.md): the fuzz run CI keeps green. Every set-up kind
/// but `Update` (an update of missing ids fixes an empty collection's dimension on Chroma, not
/// through the proxy: B8) and `DeleteDatabase` (the collection map keeps the deleted
/// database's entries: B10), and the mutations below. Move a kind here once its defect is
/// fixed; when all are, the full run needs no `#[ignore]`.
const KINDS_WITHOUT_OPEN_DEFECTS: [Kind; 17] = [
    Kind::CreateTenant,
    Kind::CreateDatabase,
    Kind::CreateCollection,
    Kind::Add,
    Kind::Upsert,
    Kind::DeleteRecords,
    Kind::DeleteWhere,
    Kind::Read,
    Kind::Rename,
    Kind::ModifyMetadata,
    Kind::DeleteCollection,
    Kind::BadJson,
    Kind::WrongMethod,
    Kind::OddHeaders,
    Kind::AbsoluteForm,
    Kind::UnknownRoute,
    Kind::UpperCaseTenant,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fails on product defects listed in FINDINGS.md (issue 8); run with --run-ignored"]
async fn fuzzed_requests_leave_the_proxy_and_chroma_alike() -> anyhow::Result<()> {
    let all = Kind::SETUP.iter().chain(Kind::MUTATIONS.iter()).copied();
    fuzz(all.collect(), DEFAULT_REQUESTS).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzed_requests_of_kinds_without_open_defects_leave_the_proxy_and_chroma_alike(
) -> anyhow::Result<()> {
    fuzz(KINDS_WITHOUT_OPEN_DEFECTS.to_vec(), 600).await
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
    let mut proxy = Proxy::builder()
        .old(old.url())
        .new_store(new.url())
        .spawn_process()
        .await?;

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
        let started = std::time::Instant::now();
        let d = exchange(to_direct.addr, &raw_direct).await?;
        direct_time += started.elapsed();
        let started = std::time::Instant::now();
        let p = match exchange(to_proxy.addr, &raw_proxy).await {
            Ok(answer) => answer,
            Err(error) => Answer {
                status: 0,
                body: error.to_string().into_bytes(),
            },
        };
        proxy_time += started.elapsed();
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
    let (d_dump, p1_dump, p2_dump) = (d_dump?, p1_dump?, p2_dump?);
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
