//! Building Chroma v2 paths: rewriting the tenant, database and collection segments of a
//! client's path for a backend, and the paths the mirror sends on its own.

use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};

/// Characters escaped in a path segment.
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

fn encode(segment: &str) -> String {
    utf8_percent_encode(segment, SEGMENT).to_string()
}

/// Replacements for the segments of a `/api/v2/tenants/{tenant}/databases/{database}/
/// collections/{collection}/...` path; `None` keeps the client's segment.
#[derive(Debug, Clone, Copy, Default)]
pub struct SegmentRewrite<'a> {
    pub tenant: Option<&'a str>,
    pub database: Option<&'a str>,
    pub collection: Option<&'a str>,
}

/// The client's path and query with the tenant, database and collection segments replaced.
/// Paths of another shape come back unchanged.
pub fn rewrite(path_and_query: &str, rewrite: SegmentRewrite<'_>) -> String {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let mut segments: Vec<String> = path.split('/').map(str::to_owned).collect();
    // ["", "api", "v2", "tenants", T, "databases", D, "collections", C, ...]
    let is = |segments: &[String], i: usize, word: &str| segments.get(i).is_some_and(|s| s == word);
    if is(&segments, 1, "api") && is(&segments, 2, "v2") && is(&segments, 3, "tenants") {
        if let (Some(t), true) = (rewrite.tenant, segments.len() > 4) {
            segments[4] = encode(t);
        }
        if is(&segments, 5, "databases") {
            if let (Some(d), true) = (rewrite.database, segments.len() > 6) {
                segments[6] = encode(d);
            }
            if is(&segments, 7, "collections") {
                // `collections/by-id/{id}` keeps its id one segment further. Told apart by
                // shape alone: a record route naming a collection id "by-id" would read the same,
                // but that is not a UUID, so the proxy never asks to replace its segment.
                let by_id = is(&segments, 8, "by-id") && segments.len() == 10;
                let index = if by_id { 9 } else { 8 };
                if let (Some(c), true) = (rewrite.collection, segments.len() > index) {
                    segments[index] = encode(c);
                }
            }
        }
    }
    let mut out = segments.join("/");
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// `/api/v2/tenants`.
pub fn tenants() -> String {
    "/api/v2/tenants".to_owned()
}

/// `/api/v2/tenants/{tenant}`.
pub fn tenant(tenant: &str) -> String {
    format!("/api/v2/tenants/{}", encode(tenant))
}

/// `/api/v2/tenants/{tenant}/databases`.
pub fn databases(tenant: &str) -> String {
    format!("/api/v2/tenants/{}/databases", encode(tenant))
}

/// `/api/v2/tenants/{tenant}/databases/{database}`.
pub fn database(tenant: &str, database: &str) -> String {
    format!("{}/{}", databases(tenant), encode(database))
}

/// `.../databases/{database}/collections`.
pub fn collections(tenant: &str, database_: &str) -> String {
    format!("{}/collections", database(tenant, database_))
}

/// `.../collections/{collection}` (an id, or a name where Chroma accepts one).
pub fn collection(tenant: &str, database: &str, collection: &str) -> String {
    format!("{}/{}", collections(tenant, database), encode(collection))
}

/// `.../collections/by-id/{id}`: a collection looked up by its id. (`.../collections/{x}` takes
/// `x` as a name in Chroma 1.5.9, even when it is shaped like a UUID.)
pub fn collection_by_id(tenant: &str, database: &str, id: &str) -> String {
    format!("{}/by-id/{}", collections(tenant, database), encode(id))
}

/// The canonical spelling (lower-case, hyphenated) of a collection id in any spelling Chroma
/// accepts (upper case, braces, 32 hex digits, `urn:uuid:`); `None` when it is no UUID.
pub fn canonical_id(segment: &str) -> Option<String> {
    uuid::Uuid::parse_str(segment)
        .ok()
        .map(|id| id.hyphenated().to_string())
}

/// `.../collections/{id}/{verb}`: `add`, `get`, `delete`, `fork`, `count` ...
pub fn collection_verb(tenant: &str, database: &str, id: &str, verb: &str) -> String {
    format!("{}/{verb}", collection(tenant, database, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_replaced_and_the_rest_kept() {
        let path = "/api/v2/tenants/t/databases/d/collections/c/count?read_level=index_and_wal";
        let out = rewrite(
            path,
            SegmentRewrite {
                tenant: Some("acme corp"),
                database: Some("prod"),
                collection: Some("7f0c"),
            },
        );
        assert_eq!(
            out,
            "/api/v2/tenants/acme%20corp/databases/prod/collections/7f0c/count?read_level=index_and_wal"
        );
        let by_id = rewrite(
            "/api/v2/tenants/t/databases/d/collections/by-id/c",
            SegmentRewrite {
                collection: Some("x"),
                ..Default::default()
            },
        );
        assert_eq!(by_id, "/api/v2/tenants/t/databases/d/collections/by-id/x");
        assert_eq!(
            rewrite("/api/v2/heartbeat", SegmentRewrite::default()),
            "/api/v2/heartbeat"
        );
        assert_eq!(
            rewrite(
                "/api/v2/tenants/t",
                SegmentRewrite {
                    tenant: Some("u"),
                    ..Default::default()
                }
            ),
            "/api/v2/tenants/u"
        );
    }

    #[test]
    fn built_paths_escape_their_segments() {
        assert_eq!(
            collection_verb("t", "d b", "id", "add"),
            "/api/v2/tenants/t/databases/d%20b/collections/id/add"
        );
    }
}
