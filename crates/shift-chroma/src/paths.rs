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

/// Slots [`rewrite`] splits a path into: the segments up to a collection's verb, then the rest.
const REWRITE_SLOTS: usize = 11;

/// The client's path and query with the tenant, database and collection segments replaced.
/// Paths of another shape come back unchanged.
pub fn rewrite(path_and_query: &str, rewrite: SegmentRewrite<'_>) -> String {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    // ["", "api", "v2", "tenants", T, "databases", D, "collections", C, ...], on the stack:
    // the last slot holds the rest of the path, which is never replaced. `count` is the number
    // of segments, or REWRITE_SLOTS when there are more.
    let mut segments = [""; REWRITE_SLOTS];
    let mut count = 0;
    for (slot, segment) in segments.iter_mut().zip(path.splitn(REWRITE_SLOTS, '/')) {
        *slot = segment;
        count += 1;
    }
    let segments = &segments[..count];
    let is = |i: usize, word: &str| segments.get(i) == Some(&word);
    let mut replace: [Option<&str>; REWRITE_SLOTS] = [None; REWRITE_SLOTS];
    if is(1, "api") && is(2, "v2") && is(3, "tenants") {
        if count > 4 {
            replace[4] = rewrite.tenant;
        }
        if is(5, "databases") {
            if count > 6 {
                replace[6] = rewrite.database;
            }
            if is(7, "collections") {
                // `collections/by-id/{id}` keeps its id one segment further. Told apart by
                // shape alone: a record route naming a collection id "by-id" would read the same,
                // but that is not a UUID, so the proxy never asks to replace its segment.
                let by_id = is(8, "by-id") && count == 10;
                let index = if by_id { 9 } else { 8 };
                if count > index {
                    replace[index] = rewrite.collection;
                }
            }
        }
    }
    if replace.iter().all(Option::is_none) {
        return path_and_query.to_owned();
    }
    let mut out = String::with_capacity(path_and_query.len() + 32);
    for (i, (segment, with)) in segments.iter().zip(replace).enumerate() {
        if i > 0 {
            out.push('/');
        }
        match with {
            Some(with) => out.extend(utf8_percent_encode(with, SEGMENT)),
            None => out.push_str(segment),
        }
    }
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
