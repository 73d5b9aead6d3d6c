//! What the fuzz run sends: the request kinds, how a collection id is spelled in a path, and the
//! seeded generator that builds each request from what Chroma answered so far.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use crate::Answer;

pub(crate) const TENANTS: [&str; 3] = ["default_tenant", "fuzz_t0", "fuzz_t1"];
pub(crate) const DATABASES: [&str; 3] = ["default_database", "fuzz_db0", "fuzz_db1"];
pub(crate) const COLLECTIONS: [&str; 5] = ["fz_a", "fz_b", "fz_c", "fz_d", "fz_e"];

/// What a request exercises; violations are grouped by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Kind {
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
    pub(crate) const SETUP: [Kind; 13] = [
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
    pub(crate) const MUTATIONS: [Kind; 19] = [
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

    pub(crate) fn name(self) -> String {
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
pub(crate) enum Spelling {
    Canonical,
    Upper,
    Braces,
    Simple,
    Urn,
    /// The collection's name where the id would be.
    Name,
}

impl Spelling {
    pub(crate) fn write(self, id: &str, name: &str) -> String {
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
pub(crate) enum Part {
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
pub(crate) enum Effect {
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
pub(crate) struct FuzzRequest {
    pub(crate) kind: Kind,
    pub(crate) method: String,
    pub(crate) target: Vec<Part>,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
    /// No `Content-Length` (for `OPTIONS *` and bodiless GETs).
    pub(crate) bodiless: bool,
    pub(crate) effect: Effect,
}

/// Builds the requests from the seed, following what Chroma directly answered.
pub(crate) struct Generator {
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
    pub(crate) fn new(seed: u64, kinds: Vec<Kind>) -> Generator {
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
    pub(crate) fn observe(&mut self, request: &FuzzRequest, direct: &Answer) {
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

    /// A one-record add body sent with `method` to `target`, which Chroma does not route as a
    /// write: it changes nothing.
    fn small_add_as(kind: Kind, target: Vec<Part>, method: String) -> FuzzRequest {
        let body = json!({"ids": ["r1"], "embeddings": [[1.0, 2.0, 3.0]]});
        let mut request = Self::post(
            kind,
            target,
            serde_json::to_vec(&body).unwrap_or_default(),
            Effect::None,
        );
        request.method = method;
        request
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

    pub(crate) fn next(&mut self) -> FuzzRequest {
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
                Self::small_add_as(kind, target, method)
            }
            Kind::WrongMethod => {
                let method = pick(&mut self.rng, &["GET", "PUT", "PATCH", "DELETE"]).to_string();
                let op = *pick(&mut self.rng, &["add", "upsert", "count", "get"]);
                let (target, _) = self.collection_target(Spelling::Canonical, &format!("/{op}"));
                Self::small_add_as(kind, target, method)
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
