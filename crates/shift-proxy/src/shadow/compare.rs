//! A shadow's two answers, parsed into typed records and query results and compared by
//! [`shift_chroma::compare`]; what disagrees above the noise floor is described for the
//! mismatch samples ("recall@10 0.80, missing [a, b]", "count 10 vs 8").

use serde::de::DeserializeOwned;
use serde_json::Value;
use shift_chroma::compare::{self as chroma, Field, DRIFT_EPSILON};
use shift_chroma::records::{QueryResult, Records};

use super::types::ShadowedRead;

/// Ids named in a mismatch description, at most: enough to look one up, short enough for a log.
const LISTED_IDS: usize = 5;

/// What comparing two answers found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Comparison {
    /// Why the answers disagree (above the noise floor); `None` when they agree.
    pub mismatch: Option<String>,
    /// Queries: recall at k of the secondary's ids against the primary's, pooled over all the
    /// request's query embeddings (see [`shift_chroma::compare`]).
    pub recall: Option<f64>,
    /// Queries: k, the most results the primary returned for one query embedding.
    pub k: usize,
    /// Queries: the largest distance drift ([`shift_chroma::compare::distance_drift`]) of a
    /// record both stores returned.
    pub drift: Option<f64>,
}

/// An answer that cannot be compared (not the shape Chroma answers with).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Uncomparable(String);

fn list(ids: &[&str]) -> String {
    let shown: Vec<&str> = ids.iter().take(LISTED_IDS).copied().collect();
    if ids.len() > LISTED_IDS {
        format!("[{}, ...]", shown.join(", "))
    } else {
        format!("[{}]", shown.join(", "))
    }
}

/// "1 id", "2 ids".
fn ids_count(n: usize) -> String {
    if n == 1 {
        "1 id".to_owned()
    } else {
        format!("{n} ids")
    }
}

/// "1 differs in content [b] (documents)".
fn content_problem(ids: &[&str], fields: &[Field]) -> String {
    let columns: Vec<&str> = fields.iter().map(|f| f.column()).collect();
    let differ = if ids.len() == 1 {
        "1 differs".to_owned()
    } else {
        format!("{} differ", ids.len())
    };
    format!("{differ} in content {} ({})", list(ids), columns.join(", "))
}

/// `x` cut (not rounded) to two decimals, so a recall just under 1 never reads "1.00".
fn two_decimals(x: f64) -> String {
    format!("{:.2}", (x * 100.0).floor() / 100.0)
}

/// Compares two answers to the same query: recall at k of the secondary's ids against the
/// primary's (ties at the k-th distance are hits), the largest distance drift of the records
/// both returned, and their content.
pub fn compare_query(primary: &QueryResult, secondary: &QueryResult) -> Comparison {
    let lists = primary.ids.len();
    if lists != secondary.ids.len() {
        return Comparison {
            mismatch: Some(format!(
                "query: {lists} result lists on the primary, {} on the secondary",
                secondary.ids.len()
            )),
            ..Comparison::default()
        };
    }
    let c = chroma::compare_query(primary, secondary);
    let (k, drift) = (c.k(), c.drift());
    let recall = c.recall().unwrap_or(1.0);
    let mut problems = Vec::new();
    if recall < 1.0 {
        let over = if lists > 1 {
            format!(" over {lists} queries")
        } else {
            String::new()
        };
        problems.push(format!(
            "recall@{k} {}{over}, missing {}",
            two_decimals(recall),
            list(&c.missing())
        ));
    }
    let surplus = c.surplus();
    if surplus > 0 {
        problems.push(format!(
            "{surplus} more result{} on the secondary than on the primary",
            if surplus == 1 { "" } else { "s" }
        ));
    }
    if let Some(d) = drift.filter(|d| *d > DRIFT_EPSILON) {
        problems.push(format!("distance drift {d:.4} (above {DRIFT_EPSILON})"));
    }
    let (changed, fields) = c.changed();
    if !changed.is_empty() {
        problems.push(content_problem(&changed, &fields));
    }
    Comparison {
        mismatch: (!problems.is_empty()).then(|| problems.join("; ")),
        recall: Some(recall),
        k,
        drift,
    }
}

/// Whether a get's answer is all the records it selects, so the id sets must be equal. A page
/// (an offset, or a limit the primary filled) is cut from an order that is each store's own
/// insertion order, so two correct stores may answer different pages: only the content of the
/// records both returned is compared then.
pub fn get_is_complete(request: &Value, primary_records: usize) -> bool {
    let offset = request.get("offset").and_then(Value::as_u64).unwrap_or(0);
    let limit = request.get("limit").and_then(Value::as_u64);
    offset == 0 && limit.is_none_or(|limit| (primary_records as u64) < limit)
}

/// Compares two answers to the same get: the id sets (when `complete`, see
/// [`get_is_complete`]) and the content of the records both returned.
pub fn compare_get(primary: &Records, secondary: &Records, complete: bool) -> Comparison {
    let c = chroma::compare_records(primary, secondary);
    let mut problems = Vec::new();
    if complete && !c.only_primary.is_empty() {
        problems.push(format!(
            "{} only on primary {}",
            ids_count(c.only_primary.len()),
            list(&c.only_primary)
        ));
    }
    if complete && !c.only_secondary.is_empty() {
        problems.push(format!(
            "{} only on secondary {}",
            ids_count(c.only_secondary.len()),
            list(&c.only_secondary)
        ));
    }
    if !c.changed.is_empty() {
        let ids: Vec<&str> = c.changed.iter().map(|r| r.id).collect();
        let fields = chroma::unique(c.changed.iter().flat_map(|r| r.fields.iter().copied()));
        problems.push(content_problem(&ids, &fields));
    }
    Comparison {
        mismatch: (!problems.is_empty()).then(|| format!("get: {}", problems.join("; "))),
        ..Comparison::default()
    }
}

/// Compares two counts.
pub fn compare_count(primary: u64, secondary: u64) -> Comparison {
    Comparison {
        mismatch: (primary != secondary).then(|| format!("count {primary} vs {secondary}")),
        ..Comparison::default()
    }
}

/// One side's answer, read as `what`.
fn parse<T: DeserializeOwned>(bytes: &[u8], side: &str, what: &str) -> Result<T, Uncomparable> {
    serde_json::from_slice(bytes)
        .map_err(|e| Uncomparable(format!("the {side} answer is not {what}: {e}")))
}

/// Compares the two answers to `read`, given the client's request body.
pub fn compare(
    read: ShadowedRead,
    request: &[u8],
    primary: &[u8],
    secondary: &[u8],
) -> Result<Comparison, Uncomparable> {
    fn both<T: DeserializeOwned>(
        primary: &[u8],
        secondary: &[u8],
        what: &str,
    ) -> Result<(T, T), Uncomparable> {
        Ok((
            parse(primary, "primary", what)?,
            parse(secondary, "secondary", what)?,
        ))
    }
    match read {
        ShadowedRead::Query => {
            let (p, s) = both::<QueryResult>(primary, secondary, "a query answer")?;
            Ok(compare_query(&p, &s))
        }
        ShadowedRead::Count => {
            let (p, s) = both::<u64>(primary, secondary, "a count")?;
            Ok(compare_count(p, s))
        }
        ShadowedRead::Get => {
            let (p, s) = both::<Records>(primary, secondary, "a get answer")?;
            let request = serde_json::from_slice::<Value>(request).unwrap_or(Value::Null);
            let complete = get_is_complete(&request, p.ids.len());
            Ok(compare_get(&p, &s, complete))
        }
    }
}

#[cfg(test)]
#[path = "compare_tests.rs"]
mod tests;
