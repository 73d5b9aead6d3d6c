//! The one place that knows Chroma's v2 routes.
//!
//! [`classify`] maps a method and a path to a [`Route`]: the [`Operation`] (named after the
//! `operationId` of Chroma's OpenAPI spec), its [`OperationClass`], and the path parameters.
//! Paths the table does not know are [`Operation::Unknown`]: the proxy forwards them to the
//! primary instead of answering them itself, so a newer Chroma keeps working behind us.

use std::borrow::Cow;

use http::Method;
use percent_encoding::percent_decode_str;

/// What a request does, one variant per operation of Chroma 1.5.9's v2 API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    GetUserIdentity,
    Healthcheck,
    Heartbeat,
    PreFlightChecks,
    Version,
    Reset,
    CreateTenant,
    GetTenant,
    UpdateTenant,
    ListDatabases,
    CreateDatabase,
    GetDatabase,
    DeleteDatabase,
    ListCollections,
    CountCollections,
    CreateCollection,
    /// `GET .../collections/{collection_id}`: by id or by name.
    GetCollection,
    GetCollectionById,
    GetCollectionByCrn,
    UpdateCollection,
    DeleteCollection,
    ForkCollection,
    ForkCount,
    IndexingStatus,
    AttachFunction,
    GetAttachedFunction,
    DetachFunction,
    CollectionAdd,
    CollectionUpsert,
    CollectionUpdate,
    CollectionDelete,
    CollectionCount,
    CollectionGet,
    CollectionQuery,
    CollectionSearch,
    /// A path the table does not know; forwarded to the primary as it is.
    Unknown,
}

/// How the proxy treats an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OperationClass {
    /// Liveness and identity: answered by the primary, never mirrored, never compared.
    Passthrough,
    /// Reads data: served by the primary (or a canary), may be shadowed.
    Read,
    /// Writes records of one collection: mirrored and ordered per record id.
    RecordWrite,
    /// Creates, changes or deletes a tenant, database, collection or attached function.
    LifecycleWrite,
    /// Wipes a whole store; only allowed when the config says so.
    DestructiveAdmin,
    /// Not in the table.
    Unknown,
}

impl Operation {
    /// Every known operation, for tests and metric pre-registration.
    pub const ALL: [Operation; 35] = [
        Operation::GetUserIdentity,
        Operation::Healthcheck,
        Operation::Heartbeat,
        Operation::PreFlightChecks,
        Operation::Version,
        Operation::Reset,
        Operation::CreateTenant,
        Operation::GetTenant,
        Operation::UpdateTenant,
        Operation::ListDatabases,
        Operation::CreateDatabase,
        Operation::GetDatabase,
        Operation::DeleteDatabase,
        Operation::ListCollections,
        Operation::CountCollections,
        Operation::CreateCollection,
        Operation::GetCollection,
        Operation::GetCollectionById,
        Operation::GetCollectionByCrn,
        Operation::UpdateCollection,
        Operation::DeleteCollection,
        Operation::ForkCollection,
        Operation::ForkCount,
        Operation::IndexingStatus,
        Operation::AttachFunction,
        Operation::GetAttachedFunction,
        Operation::DetachFunction,
        Operation::CollectionAdd,
        Operation::CollectionUpsert,
        Operation::CollectionUpdate,
        Operation::CollectionDelete,
        Operation::CollectionCount,
        Operation::CollectionGet,
        Operation::CollectionQuery,
        Operation::CollectionSearch,
    ];

    /// How many operations there are, [`Operation::Unknown`] included.
    pub const COUNT: usize = Operation::ALL.len() + 1;

    /// A dense index in `0..Operation::COUNT` (the order of [`Operation::ALL`], then
    /// `Unknown`), for tables indexed by operation.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The `operationId` of Chroma's OpenAPI spec; also the `operation` label in metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Operation::GetUserIdentity => "get_user_identity",
            Operation::Healthcheck => "healthcheck",
            Operation::Heartbeat => "heartbeat",
            Operation::PreFlightChecks => "pre_flight_checks",
            Operation::Version => "version",
            Operation::Reset => "reset",
            Operation::CreateTenant => "create_tenant",
            Operation::GetTenant => "get_tenant",
            Operation::UpdateTenant => "update_tenant",
            Operation::ListDatabases => "list_databases",
            Operation::CreateDatabase => "create_database",
            Operation::GetDatabase => "get_database",
            Operation::DeleteDatabase => "delete_database",
            Operation::ListCollections => "list_collections",
            Operation::CountCollections => "count_collections",
            Operation::CreateCollection => "create_collection",
            Operation::GetCollection => "get_collection",
            Operation::GetCollectionById => "get_collection_by_id",
            Operation::GetCollectionByCrn => "get_collection_by_crn",
            Operation::UpdateCollection => "update_collection",
            Operation::DeleteCollection => "delete_collection",
            Operation::ForkCollection => "fork_collection",
            Operation::ForkCount => "fork_count",
            Operation::IndexingStatus => "indexing_status",
            Operation::AttachFunction => "attach_function",
            Operation::GetAttachedFunction => "get_attached_function",
            Operation::DetachFunction => "detach_function",
            Operation::CollectionAdd => "collection_add",
            Operation::CollectionUpsert => "collection_upsert",
            Operation::CollectionUpdate => "collection_update",
            Operation::CollectionDelete => "collection_delete",
            Operation::CollectionCount => "collection_count",
            Operation::CollectionGet => "collection_get",
            Operation::CollectionQuery => "collection_query",
            Operation::CollectionSearch => "collection_search",
            Operation::Unknown => "unknown",
        }
    }

    pub fn class(self) -> OperationClass {
        use Operation::*;
        match self {
            GetUserIdentity | Healthcheck | Heartbeat | PreFlightChecks | Version => {
                OperationClass::Passthrough
            }
            GetTenant | ListDatabases | GetDatabase | ListCollections | CountCollections
            | GetCollection | GetCollectionById | GetCollectionByCrn | ForkCount
            | IndexingStatus | GetAttachedFunction | CollectionCount | CollectionGet
            | CollectionQuery | CollectionSearch => OperationClass::Read,
            CollectionAdd | CollectionUpsert | CollectionUpdate | CollectionDelete => {
                OperationClass::RecordWrite
            }
            CreateTenant | UpdateTenant | CreateDatabase | DeleteDatabase | CreateCollection
            | UpdateCollection | DeleteCollection | ForkCollection | AttachFunction
            | DetachFunction => OperationClass::LifecycleWrite,
            Reset => OperationClass::DestructiveAdmin,
            Unknown => OperationClass::Unknown,
        }
    }

    /// Whether the request carries a JSON body.
    pub fn has_json_body(self) -> bool {
        use Operation::*;
        matches!(
            self,
            CreateTenant
                | UpdateTenant
                | CreateDatabase
                | CreateCollection
                | UpdateCollection
                | ForkCollection
                | AttachFunction
                | DetachFunction
                | CollectionAdd
                | CollectionUpsert
                | CollectionUpdate
                | CollectionDelete
                | CollectionGet
                | CollectionQuery
                | CollectionSearch
        )
    }

    /// Liveness routes that leak nothing and stay open when client auth is on, as a load
    /// balancer's probe has no token.
    pub fn is_liveness(self) -> bool {
        matches!(
            self,
            Operation::Heartbeat | Operation::Healthcheck | Operation::Version
        )
    }
}

/// The path parameters of a request, percent-decoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathParams {
    pub tenant: Option<Segment>,
    pub database: Option<Segment>,
    /// The `{collection_id}` segment: an id on most routes, an id or a name on `GetCollection`.
    pub collection: Option<Segment>,
    /// The function name of the attached-function routes.
    pub function: Option<Segment>,
    /// `tenant:database:collection` of `GetCollectionByCrn`.
    pub crn: Option<Segment>,
}

/// A path segment, percent-decoded: kept inline when it is short (every default name, a UUID),
/// so classifying a request allocates nothing; a longer one goes to the heap. Reads as a `str`.
#[derive(Clone)]
pub struct Segment(SegmentRepr);

/// Bytes a [`Segment`] holds without allocating: a hyphenated UUID (36) and Chroma's default
/// names fit.
const INLINE: usize = 46;

#[derive(Clone)]
enum SegmentRepr {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<str>),
}

impl Segment {
    /// A segment holding `text` (inline when it fits, else on the heap).
    pub fn new(text: &str) -> Segment {
        let mut bytes = [0u8; INLINE];
        match bytes.get_mut(..text.len()) {
            Some(head) => {
                head.copy_from_slice(text.as_bytes());
                Segment(SegmentRepr::Inline {
                    len: text.len() as u8,
                    bytes,
                })
            }
            None => Segment(SegmentRepr::Heap(text.into())),
        }
    }

    /// The segment's text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            // Always whole characters: the bytes were a `str`.
            SegmentRepr::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            SegmentRepr::Heap(text) => text,
        }
    }
}

impl From<String> for Segment {
    fn from(text: String) -> Segment {
        if text.len() <= INLINE {
            Segment::new(&text)
        } else {
            Segment(SegmentRepr::Heap(text.into_boxed_str()))
        }
    }
}

impl std::ops::Deref for Segment {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Segment {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for Segment {
    fn eq(&self, other: &Segment) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Segment {}

impl PartialEq<str> for Segment {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Segment {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A classified request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub operation: Operation,
    pub params: PathParams,
}

impl Route {
    pub fn class(&self) -> OperationClass {
        self.operation.class()
    }

    fn unknown() -> Route {
        Route {
            operation: Operation::Unknown,
            params: PathParams::default(),
        }
    }
}

/// Classifies a request by method and path (the query string, if any, is ignored).
pub fn classify(method: &Method, path: &str) -> Route {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let Some(rest) = path.strip_prefix("/api/v2/") else {
        return Route::unknown();
    };
    // On the stack: no route has more segments than this.
    let mut segments = [""; MAX_SEGMENTS];
    let mut count = 0;
    for segment in rest.split('/') {
        if segment.is_empty() || count == MAX_SEGMENTS {
            return Route::unknown();
        }
        segments[count] = segment;
        count += 1;
    }
    classify_segments(method, &segments[..count]).unwrap_or_else(Route::unknown)
}

/// More segments after `/api/v2/` than any route has
/// (`tenants/{t}/databases/{d}/collections/{c}/attached_functions/{name}/detach` has 9).
const MAX_SEGMENTS: usize = 10;

fn classify_segments(method: &Method, segments: &[&str]) -> Option<Route> {
    use Operation::*;
    let m = method;
    let mut params = PathParams::default();
    let operation = match segments {
        ["auth", "identity"] if *m == Method::GET => GetUserIdentity,
        ["healthcheck"] if *m == Method::GET => Healthcheck,
        ["heartbeat"] if *m == Method::GET => Heartbeat,
        ["pre-flight-checks"] if *m == Method::GET => PreFlightChecks,
        ["version"] if *m == Method::GET => Version,
        ["reset"] if *m == Method::POST => Reset,
        ["collections", crn] if *m == Method::GET => {
            params.crn = Some(decode(crn));
            GetCollectionByCrn
        }
        ["tenants"] if *m == Method::POST => CreateTenant,
        ["tenants", tenant] => {
            params.tenant = Some(decode(tenant));
            match *m {
                Method::GET => GetTenant,
                Method::PATCH => UpdateTenant,
                _ => return None,
            }
        }
        ["tenants", tenant, "databases", tail @ ..] => {
            params.tenant = Some(decode(tenant));
            classify_database(m, tail, &mut params)?
        }
        _ => return None,
    };
    Some(Route { operation, params })
}

/// Classifies what follows `/tenants/{tenant}/databases`.
fn classify_database(m: &Method, tail: &[&str], params: &mut PathParams) -> Option<Operation> {
    use Operation::*;
    let op = match tail {
        [] => match *m {
            Method::GET => ListDatabases,
            Method::POST => CreateDatabase,
            _ => return None,
        },
        [database, rest @ ..] => {
            params.database = Some(decode(database));
            match rest {
                [] => match *m {
                    Method::GET => GetDatabase,
                    Method::DELETE => DeleteDatabase,
                    _ => return None,
                },
                ["collections_count"] if *m == Method::GET => CountCollections,
                ["collections"] => match *m {
                    Method::GET => ListCollections,
                    Method::POST => CreateCollection,
                    _ => return None,
                },
                ["collections", "by-id", id] if *m == Method::GET => {
                    params.collection = Some(decode(id));
                    GetCollectionById
                }
                ["collections", collection, tail @ ..] => {
                    params.collection = Some(decode(collection));
                    classify_collection(m, tail, params)?
                }
                _ => return None,
            }
        }
    };
    Some(op)
}

/// Classifies what follows `/collections/{collection_id}`.
fn classify_collection(m: &Method, tail: &[&str], params: &mut PathParams) -> Option<Operation> {
    use Operation::*;
    let op = match tail {
        [] => match *m {
            Method::GET => GetCollection,
            Method::PUT => UpdateCollection,
            Method::DELETE => DeleteCollection,
            _ => return None,
        },
        [verb] if *m == Method::POST => match *verb {
            "add" => CollectionAdd,
            "upsert" => CollectionUpsert,
            "update" => CollectionUpdate,
            "delete" => CollectionDelete,
            "get" => CollectionGet,
            "query" => CollectionQuery,
            "search" => CollectionSearch,
            "fork" => ForkCollection,
            _ => return None,
        },
        [verb] if *m == Method::GET => match *verb {
            "count" => CollectionCount,
            "fork_count" => ForkCount,
            "indexing_status" => IndexingStatus,
            _ => return None,
        },
        ["functions", "attach"] if *m == Method::POST => AttachFunction,
        ["functions", name] if *m == Method::GET => {
            params.function = Some(decode(name));
            GetAttachedFunction
        }
        ["attached_functions", name, "detach"] if *m == Method::POST => {
            params.function = Some(decode(name));
            DetachFunction
        }
        _ => return None,
    };
    Some(op)
}

fn decode(segment: &str) -> Segment {
    match percent_decode_str(segment).decode_utf8() {
        Ok(Cow::Borrowed(s)) => Segment::new(s),
        Ok(Cow::Owned(s)) => Segment::from(s),
        // Not UTF-8 once decoded: keep the raw segment, the backend will refuse it.
        Err(_) => Segment::new(segment),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = include_str!("../spec/chroma-1.5.9-openapi.json");

    /// Every operation of the spec classifies to the operation of the same `operationId`,
    /// with its path parameters read back.
    #[test]
    fn every_operation_of_the_spec_is_classified() {
        let spec: serde_json::Value = serde_json::from_str(SPEC).unwrap();
        let mut seen = std::collections::HashSet::new();
        for (template, methods) in spec["paths"].as_object().unwrap() {
            for (method, op) in methods.as_object().unwrap() {
                let operation_id = op["operationId"].as_str().unwrap();
                let path = template
                    .replace("{tenant_name}", "t%201")
                    .replace("{tenant}", "t%201")
                    .replace("{database}", "db")
                    .replace("{collection_id}", "c-1")
                    .replace("{function_name}", "fn")
                    .replace("{name}", "fn")
                    .replace("{crn}", "t:db:c");
                let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                let route = classify(&method, &path);
                assert_eq!(
                    route.operation.name(),
                    operation_id,
                    "{method} {template} classified as {:?}",
                    route.operation
                );
                if template.contains("{tenant") {
                    assert_eq!(route.params.tenant.as_deref(), Some("t 1"), "{template}");
                }
                if template.contains("{database}") {
                    assert_eq!(route.params.database.as_deref(), Some("db"), "{template}");
                }
                if template.contains("{collection_id}") {
                    assert_eq!(
                        route.params.collection.as_deref(),
                        Some("c-1"),
                        "{template}"
                    );
                }
                if template.contains("{crn}") {
                    assert_eq!(route.params.crn.as_deref(), Some("t:db:c"));
                }
                if template.contains("{function_name}") || template.contains("{name}") {
                    assert_eq!(route.params.function.as_deref(), Some("fn"), "{template}");
                }
                seen.insert(route.operation);
            }
        }
        for op in Operation::ALL {
            assert!(seen.contains(&op), "{op:?} is not in the spec");
        }
        assert_eq!(seen.len(), Operation::ALL.len());
    }

    #[test]
    fn operation_indexes_are_dense() {
        for (i, op) in Operation::ALL.into_iter().enumerate() {
            assert_eq!(op.index(), i, "{op:?}");
        }
        assert_eq!(Operation::Unknown.index(), Operation::COUNT - 1);
    }

    /// Segments read back as they were, short (inline) or long (on the heap), decoded or not.
    #[test]
    fn segments_read_back_whatever_their_length() {
        let long = "c".repeat(200);
        for name in [
            "",
            "a",
            "default_database",
            &"x".repeat(INLINE),
            &"y".repeat(INLINE + 1),
            &long,
        ] {
            let path =
                format!("/api/v2/tenants/{name}%20t/databases/{name}/collections/{name}/count");
            let route = classify(&Method::GET, &path);
            if name.is_empty() {
                assert_eq!(route.operation, Operation::Unknown);
                continue;
            }
            assert_eq!(route.operation, Operation::CollectionCount, "{path}");
            assert_eq!(
                route.params.tenant.as_deref(),
                Some(format!("{name} t").as_str())
            );
            assert_eq!(route.params.database.as_deref(), Some(name));
            assert_eq!(
                route.params.collection.as_ref().map(|c| c.to_string()),
                Some(name.to_owned())
            );
            assert_eq!(route.clone(), route);
        }
        assert_ne!(Segment::new("a"), Segment::new("ab"));
        assert_eq!(Segment::from("z".repeat(3)), Segment::new("zzz"));
        assert_eq!(format!("{:?}", Segment::new("q\"")), format!("{:?}", "q\""));
    }

    #[test]
    fn more_segments_than_any_route_are_unknown() {
        let path = format!(
            "/api/v2/tenants/t/databases/d/collections/c{}",
            "/x".repeat(20)
        );
        assert_eq!(classify(&Method::POST, &path).operation, Operation::Unknown);
    }

    #[test]
    fn classes_follow_what_an_operation_does() {
        let cases = [
            (Operation::Heartbeat, OperationClass::Passthrough),
            (Operation::CollectionQuery, OperationClass::Read),
            (Operation::CollectionGet, OperationClass::Read),
            (Operation::CollectionCount, OperationClass::Read),
            (Operation::CollectionAdd, OperationClass::RecordWrite),
            (Operation::CollectionDelete, OperationClass::RecordWrite),
            (Operation::CreateCollection, OperationClass::LifecycleWrite),
            (Operation::ForkCollection, OperationClass::LifecycleWrite),
            (Operation::DeleteDatabase, OperationClass::LifecycleWrite),
            (Operation::Reset, OperationClass::DestructiveAdmin),
        ];
        for (op, class) in cases {
            assert_eq!(op.class(), class, "{op:?}");
        }
    }

    #[test]
    fn unknown_paths_and_methods_are_unknown() {
        for (method, path) in [
            (Method::GET, "/api/v1/heartbeat"),
            (Method::GET, "/api/v2/nope"),
            (Method::POST, "/api/v2/heartbeat"),
            (Method::GET, "/api/v2/heartbeat/"),
            (Method::GET, "/"),
            (
                Method::PATCH,
                "/api/v2/tenants/t/databases/d/collections/c/add",
            ),
            (Method::GET, "/api/v2/tenants//databases"),
        ] {
            assert_eq!(
                classify(&method, path).operation,
                Operation::Unknown,
                "{method} {path}"
            );
        }
    }

    #[test]
    fn query_strings_do_not_change_the_route() {
        let route = classify(
            &Method::GET,
            "/api/v2/tenants/default_tenant/databases/default_database/collections/abc/count?read_level=index_and_wal",
        );
        assert_eq!(route.operation, Operation::CollectionCount);
        assert_eq!(route.params.collection.as_deref(), Some("abc"));
    }

    #[test]
    fn json_bodies_are_declared_for_body_carrying_operations() {
        let spec: serde_json::Value = serde_json::from_str(SPEC).unwrap();
        for (template, methods) in spec["paths"].as_object().unwrap() {
            for (method, op) in methods.as_object().unwrap() {
                let path = template.replace(['{', '}'], "").replace("tenant_name", "t");
                let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                let operation = classify(&method, &path).operation;
                let has_body = op.get("requestBody").is_some();
                assert_eq!(operation.has_json_body(), has_body, "{operation:?}");
            }
        }
    }
}
