//! Typed records and query results, as Chroma's `get` and `query` answer them.
//!
//! Every record field is a column that is `None` when the request did not include it (Chroma
//! answers `null` or leaves it out), so "not asked for" and "the record has no value" stay
//! apart: [`RecordRef`] shows one record as `Option<Option<_>>` per field. Embeddings and
//! distances are `f32`, as Chroma stores them, so reading an answer loses nothing.

use serde::Deserialize;
use serde_json::{json, Value};

/// A column of a `get` answer: one cell per record.
type Column<T> = Option<Vec<Option<T>>>;

/// A column of a `query` answer: one list of cells per query embedding.
type Nested<T> = Option<Vec<Vec<Option<T>>>>;

/// Records as `get` answers them.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Records {
    pub ids: Vec<String>,
    #[serde(default)]
    pub embeddings: Column<Vec<f32>>,
    #[serde(default)]
    pub metadatas: Column<Value>,
    #[serde(default)]
    pub documents: Column<String>,
    #[serde(default)]
    pub uris: Column<String>,
}

impl Records {
    /// The record at `index`.
    pub fn record(&self, index: usize) -> RecordRef<'_> {
        RecordRef {
            id: self.ids.get(index).map_or("", String::as_str),
            embedding: cell(&self.embeddings, index).map(|e| e.map(Vec::as_slice)),
            metadata: cell(&self.metadatas, index),
            document: cell(&self.documents, index).map(|d| d.map(String::as_str)),
            uri: cell(&self.uris, index).map(|u| u.map(String::as_str)),
        }
    }

    /// The upsert body for these records.
    pub fn upsert_body(&self) -> Value {
        let mut body = json!({ "ids": self.ids });
        if let Some(e) = &self.embeddings {
            body["embeddings"] = json!(e);
        }
        if let Some(m) = &self.metadatas {
            body["metadatas"] = json!(m);
        }
        if let Some(d) = &self.documents {
            body["documents"] = json!(d);
        }
        if let Some(u) = &self.uris {
            body["uris"] = json!(u);
        }
        body
    }
}

/// A `query` answer: one result list per query embedding, nearest first.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct QueryResult {
    pub ids: Vec<Vec<String>>,
    #[serde(default)]
    pub distances: Nested<f32>,
    #[serde(default)]
    pub embeddings: Nested<Vec<f32>>,
    #[serde(default)]
    pub metadatas: Nested<Value>,
    #[serde(default)]
    pub documents: Nested<String>,
    #[serde(default)]
    pub uris: Nested<String>,
}

impl QueryResult {
    /// The result list of the query embedding at `index` (empty past the end).
    pub fn list(&self, index: usize) -> ResultList<'_> {
        ResultList {
            result: self,
            index,
        }
    }
}

/// One query embedding's results, a view into a [`QueryResult`].
#[derive(Debug, Clone, Copy)]
pub struct ResultList<'a> {
    result: &'a QueryResult,
    index: usize,
}

impl<'a> ResultList<'a> {
    /// The ids, nearest first.
    pub fn ids(&self) -> &'a [String] {
        self.result.ids.get(self.index).map_or(&[], Vec::as_slice)
    }

    /// The distances, one per id; `None` when the request did not include them.
    pub fn distances(&self) -> Option<&'a [Option<f32>]> {
        self.result
            .distances
            .as_ref()
            .map(|d| d.get(self.index).map_or(&[][..], Vec::as_slice))
    }

    /// The record at `position` in this list.
    pub fn record(&self, position: usize) -> RecordRef<'a> {
        let (r, list) = (self.result, self.index);
        RecordRef {
            id: self.ids().get(position).map_or("", String::as_str),
            embedding: nested_cell(&r.embeddings, list, position).map(|e| e.map(Vec::as_slice)),
            metadata: nested_cell(&r.metadatas, list, position),
            document: nested_cell(&r.documents, list, position).map(|d| d.map(String::as_str)),
            uri: nested_cell(&r.uris, list, position).map(|u| u.map(String::as_str)),
        }
    }
}

/// One record of an answer. Each field is `None` when the answer did not include it, and
/// `Some(None)` when the record has no value for it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RecordRef<'a> {
    pub id: &'a str,
    pub embedding: Option<Option<&'a [f32]>>,
    pub metadata: Option<Option<&'a Value>>,
    pub document: Option<Option<&'a str>>,
    pub uri: Option<Option<&'a str>>,
}

fn cell<T>(column: &Column<T>, index: usize) -> Option<Option<&T>> {
    column
        .as_ref()
        .and_then(|c| c.get(index))
        .map(Option::as_ref)
}

fn nested_cell<T>(column: &Nested<T>, list: usize, position: usize) -> Option<Option<&T>> {
    column
        .as_ref()
        .and_then(|c| c.get(list))
        .and_then(|l| l.get(position))
        .map(Option::as_ref)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_null_and_empty_columns_read_apart() {
        let records: Records = serde_json::from_value(json!({
            "ids": ["a", "b"],
            "embeddings": null,
            "documents": ["one", null],
        }))
        .unwrap();
        assert_eq!(records.record(0).embedding, None, "not included");
        assert_eq!(records.record(0).metadata, None, "left out");
        assert_eq!(records.record(0).document, Some(Some("one")));
        assert_eq!(records.record(1).document, Some(None), "no value");
        assert_eq!(records.record(2).id, "", "past the end");
        assert_eq!(records.record(2).document, None);
    }

    #[test]
    fn a_query_answer_reads_list_by_list() {
        let result: QueryResult = serde_json::from_value(json!({
            "ids": [["a", "b"], ["c"]],
            "distances": [[0.5, 1.5], [null]],
            "metadatas": [[{"k": 1}, null], [{}]],
        }))
        .unwrap();
        let second = result.list(1);
        assert_eq!(second.ids(), ["c"]);
        assert_eq!(second.distances(), Some(&[None][..]));
        assert_eq!(result.list(0).record(1).metadata, Some(None));
        assert_eq!(result.list(0).record(0).document, None);
        assert_eq!(result.list(2).ids(), [] as [String; 0]);
        assert!(serde_json::from_value::<QueryResult>(json!({"error": "x"})).is_err());
    }

    #[test]
    fn the_upsert_body_carries_the_included_columns() {
        let records = Records {
            ids: vec!["a".into()],
            documents: Some(vec![Some("d".into())]),
            ..Records::default()
        };
        assert_eq!(
            records.upsert_body(),
            json!({"ids": ["a"], "documents": ["d"]})
        );
    }
}
