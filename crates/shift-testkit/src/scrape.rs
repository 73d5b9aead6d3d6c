//! Reading the proxy's Prometheus metrics in tests.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::http;

/// The value of the sample `name{labels}` on the admin listener's `/metrics`, where `labels`
/// are `key="value"` pairs in any order; `None` when there is no such sample.
pub async fn metric(
    admin_url: &str,
    name: &str,
    labels: &[(&str, &str)],
) -> anyhow::Result<Option<f64>> {
    let (_, _, body) = http("GET", &format!("{admin_url}/metrics"), &[], "").await?;
    let text = String::from_utf8_lossy(&body);
    Ok(text.lines().find_map(|line| sample(line, name, labels)))
}

/// [`metric`] for a counter: 0 when it has no sample yet.
pub async fn counter(admin_url: &str, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<f64> {
    Ok(metric(admin_url, name, labels).await?.unwrap_or(0.0))
}

/// The admin listener's whole `/metrics` text.
pub async fn metrics_text(admin_url: &str) -> anyhow::Result<String> {
    let (status, _, body) = http("GET", &format!("{admin_url}/metrics"), &[], "").await?;
    anyhow::ensure!(status.is_success(), "GET /metrics answered {status}");
    Ok(String::from_utf8(body.to_vec())?)
}

/// Every sample of the metric `name` in a `/metrics` text: its labels and its value. Our label
/// values hold no commas or quotes.
pub fn samples(text: &str, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, labels) = match series.split_once('{') {
                Some((metric, rest)) => (metric, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter_map(|pair| pair.split_once('='))
                .map(|(k, v)| (k.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
                .collect();
            (metric == name)
                .then(|| Some((labels, value.trim().parse::<f64>().ok()?)))
                .flatten()
        })
        .collect()
}

/// The sum of the samples of `name` whose labels include `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples(text, name)
        .into_iter()
        .filter(|(found, _)| {
            labels
                .iter()
                .all(|(k, v)| found.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, value)| value)
        .sum()
}

fn sample(line: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let (series, value) = line.rsplit_once(' ')?;
    let (series_name, series_labels) = match series.split_once('{') {
        Some((n, rest)) => (n, rest.trim_end_matches('}')),
        None => (series, ""),
    };
    if series_name != name {
        return None;
    }
    let present: Vec<&str> = series_labels.split(',').filter(|l| !l.is_empty()).collect();
    let all_match = labels
        .iter()
        .all(|(k, v)| present.contains(&format!("{k}=\"{v}\"").as_str()));
    if !all_match {
        return None;
    }
    value.parse().ok()
}

/// Waits until the journal for `target` is empty (every queued write applied or parked).
pub async fn wait_drained(admin_url: &str, target: &str, limit: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let depth = metric(
            admin_url,
            "chroma_shift_journal_depth",
            &[("target", target), ("collection", "")],
        )
        .await?;
        if depth == Some(0.0) {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < limit,
            "the journal for {target} did not drain within {limit:?} (depth {depth:?})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_found_by_name_and_labels() {
        let line = r#"chroma_shift_journal_depth{collection="",target="new"} 7"#;
        assert_eq!(
            sample(
                line,
                "chroma_shift_journal_depth",
                &[("target", "new"), ("collection", "")]
            ),
            Some(7.0)
        );
        assert_eq!(
            sample(line, "chroma_shift_journal_depth", &[("target", "old")]),
            None
        );
        assert_eq!(
            sample(
                "chroma_shift_dead_letters 0",
                "chroma_shift_dead_letters",
                &[]
            ),
            Some(0.0)
        );
    }
}
