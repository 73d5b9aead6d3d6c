//! The Grafana dashboard (`deploy/grafana/chroma-shift.json`) against the proxy's real
//! `/metrics`: the proxy in front of two real Chroma servers gets writes, shadowed and canary
//! reads, a body over the limit (shed), a write the new store refuses (a dead letter), writes
//! replayed after the new store was down (retries) and a cutover, so every series the
//! dashboard graphs has samples; then every metric name in every PromQL expression of the
//! dashboard (panels, annotations, variables) must be in the scrape. Also: the dashboard is
//! importable as it is (its data source is a variable) and the compose demo provisions it.

use std::collections::BTreeSet;
use std::time::Duration;

use http::StatusCode;
use serde_json::{json, Value};
use shift_testkit::collection::create_collection;
use shift_testkit::scene::{
    dimension_dead_letter, items, queries, records, restart_new_store, stop_new_store, wait_status,
};
use shift_testkit::scrape::metrics_text;
use shift_testkit::stores::{post_json, two_stores, DEFAULT_DB};
use shift_testkit::wait::wait_until;
use shift_testkit::{http_json, repo_root, Proxy};

/// Bound on a wait: only turns a hang into a failure.
const BOUND: Duration = Duration::from_secs(90);

/// PromQL's aggregation operators and keywords (besides [`LABEL_LISTS`]): never metric names.
const KEYWORDS: &str = "sum min max avg group stddev stdvar count count_values bottomk topk \
     quantile limitk limit_ratio and or unless offset bool atan2 inf nan";
/// Keywords followed by a list of label names in parentheses.
const LABEL_LISTS: &str = "by without on ignoring group_left group_right";

/// Whether `word` is one of the space-separated `words`.
fn one_of(words: &str, word: &str) -> bool {
    words.split_whitespace().any(|w| w == word)
}

#[derive(Debug, PartialEq)]
enum Token {
    Ident(String),
    Open,
    Close,
    Other,
}

/// The expression without string literals, label matchers (`{...}`) and range or subquery
/// selectors (`[...]`).
fn strip_selectors(expr: &str) -> String {
    let mut out = String::new();
    let mut chars = expr.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                let mut escaped = false;
                for d in chars.by_ref() {
                    if escaped {
                        escaped = false;
                    } else if d == '\\' && c != '`' {
                        escaped = true;
                    } else if d == c {
                        break;
                    }
                }
                out.push(' ');
            }
            '{' | '[' => {
                let close = if c == '{' { '}' } else { ']' };
                for d in chars.by_ref() {
                    if d == close {
                        break;
                    }
                }
                out.push(' ');
            }
            c => out.push(c),
        }
    }
    out
}

fn tokens(text: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let word = |first: char, chars: &mut std::iter::Peekable<std::str::Chars<'_>>| {
            let mut word = String::from(first);
            while let Some(&d) = chars.peek() {
                if d.is_ascii_alphanumeric() || d == '_' || d == ':' || d == '.' {
                    word.push(d);
                    chars.next();
                } else {
                    break;
                }
            }
            word
        };
        match c {
            '(' => tokens.push(Token::Open),
            ')' => tokens.push(Token::Close),
            // A dashboard variable ($instance, $__rate_interval) or a number (0.99, 5m, 1e-3).
            '$' => {
                word(c, &mut chars);
                tokens.push(Token::Other);
            }
            c if c.is_ascii_digit() => {
                word(c, &mut chars);
                tokens.push(Token::Other);
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                tokens.push(Token::Ident(word(c, &mut chars)));
            }
            c if c.is_whitespace() => {}
            _ => tokens.push(Token::Other),
        }
    }
    tokens
}

/// The metric names a PromQL expression selects: identifiers that are not functions,
/// operators, keywords, label names of a grouping, label matchers or variables.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let tokens = tokens(&strip_selectors(expr));
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < tokens.len() {
        if let Token::Ident(word) = &tokens[i] {
            let called = tokens.get(i + 1) == Some(&Token::Open);
            if one_of(LABEL_LISTS, word) && called {
                // Skip the label list.
                while i < tokens.len() && tokens[i] != Token::Close {
                    i += 1;
                }
            } else if !called && !one_of(KEYWORDS, word) && !one_of(LABEL_LISTS, word) {
                names.insert(word.clone());
            }
        }
        i += 1;
    }
    names
}

/// Every PromQL expression of the dashboard, with where it is: panel targets, annotations, and
/// the metric of each `label_values(metric, label)` variable (as a selector).
fn expressions(dashboard: &Value) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for panel in items(&dashboard["panels"]) {
        let title = panel["title"].as_str().unwrap_or_default();
        for target in items(&panel["targets"]) {
            let expr = target["expr"].as_str().unwrap_or_default();
            found.push((format!("panel {title:?}"), expr.to_owned()));
        }
    }
    for annotation in items(&dashboard["annotations"]["list"]) {
        if let Some(expr) = annotation["expr"].as_str() {
            let name = annotation["name"].as_str().unwrap_or_default();
            found.push((format!("annotation {name:?}"), expr.to_owned()));
        }
    }
    for variable in items(&dashboard["templating"]["list"]) {
        if let Some(definition) = variable["definition"].as_str() {
            let metric = definition
                .strip_prefix("label_values(")
                .and_then(|rest| rest.split(',').next())
                .unwrap_or(definition);
            let name = variable["name"].as_str().unwrap_or_default();
            found.push((format!("variable {name:?}"), metric.trim().to_owned()));
        }
    }
    found
}

/// The metric names with samples in a `/metrics` text.
fn scraped_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

fn dashboard() -> anyhow::Result<Value> {
    let path = repo_root().join("deploy/grafana/chroma-shift.json");
    Ok(serde_json::from_str(&std::fs::read_to_string(path)?)?)
}

#[test]
fn the_parser_finds_metric_names_and_nothing_else() {
    let expr = r#"histogram_quantile(0.99, sum by (le, backend) (rate(a_bucket{instance=~"$instance", x="y z"}[$__rate_interval]))) / on(instance) group_left(backend) b:recorded offset 5m > bool 0 and c unless max without (job) (d)"#;
    let names: Vec<String> = metric_names(expr).into_iter().collect();
    assert_eq!(names, ["a_bucket", "b:recorded", "c", "d"]);
    assert!(metric_names("sum(rate(x_total[5m])) / 2").contains("x_total"));
    assert!(metric_names("1 + 2").is_empty());
}

/// Importable as it is: the data source is a variable everywhere, ids are unique, and the
/// compose demo provisions the file with a Prometheus data source.
#[test]
fn the_dashboard_is_importable_and_provisioned() -> anyhow::Result<()> {
    let dashboard = dashboard()?;
    assert_eq!(dashboard["uid"], "chroma-shift");
    let variables: Vec<&Value> = items(&dashboard["templating"]["list"]).collect();
    assert!(
        variables.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "no data source variable"
    );
    let source = json!({"type": "prometheus", "uid": "${datasource}"});
    let mut ids = BTreeSet::new();
    let mut graphs = 0;
    for panel in items(&dashboard["panels"]) {
        assert!(
            ids.insert(panel["id"].to_string()),
            "a second panel id {}",
            panel["id"]
        );
        if panel["type"] == "row" {
            continue;
        }
        graphs += 1;
        assert_eq!(panel["datasource"], source, "{}", panel["title"]);
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        assert!(!targets.is_empty(), "{} has no query", panel["title"]);
        for target in targets {
            assert_eq!(target["datasource"], source, "{}", panel["title"]);
        }
    }
    assert!(graphs >= 20, "{graphs} panels");
    let annotations = dashboard["annotations"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        annotations.iter().any(|a| a["datasource"] == source
            && a["enable"] == true
            && a["expr"]
                .as_str()
                .unwrap_or_default()
                .contains("chroma_shift_primary")),
        "no switch annotation"
    );

    let deploy = repo_root().join("deploy");
    let compose = std::fs::read_to_string(deploy.join("compose/docker-compose.yml"))?;
    assert!(compose
        .contains("../grafana/chroma-shift.json:/var/lib/grafana/dashboards/chroma-shift.json"));
    assert!(compose.contains("../grafana/provisioning:/etc/grafana/provisioning"));
    let provider =
        std::fs::read_to_string(deploy.join("grafana/provisioning/dashboards/chroma-shift.yml"))?;
    assert!(provider.contains("path: /var/lib/grafana/dashboards"));
    let datasource =
        std::fs::read_to_string(deploy.join("grafana/provisioning/datasources/prometheus.yml"))?;
    assert!(datasource.contains("url: http://prometheus:9090"));
    Ok(())
}

#[tokio::test]
async fn every_metric_of_the_dashboard_is_in_the_real_metrics() -> anyhow::Result<()> {
    let (old, mut new) = two_stores().await?;
    let proxy = Proxy::in_front_of(&old, &new)
        .server_toml("max_body = \"64KiB\"")
        .toml("[mirror]\nretry_initial = \"50ms\"\nretry_max = \"1s\"\n[reads]\nshadow_percent = 100.0\n")
        .spawn()
        .await?;
    let docs = create_collection(&proxy.url(), json!({"name": "docs"})).await?;
    let docs_url = format!("{}{DEFAULT_DB}/collections/{docs}", proxy.url());
    post_json(format!("{docs_url}/add"), records("doc", 8)).await?;
    wait_status(&proxy, "the journal drained", |s| {
        s["journal"]["new"]["entries"] == 0
    })
    .await?;

    // Shadowed queries: recall and drift.
    queries(&docs_url, 4).await?;
    wait_status(&proxy, "the shadows compared", |s| {
        s["shadow"]["totals"]["match"].as_u64().unwrap_or(0) >= 4
    })
    .await?;

    // A body over the limit: shed, and rejected.
    let big = json!({"ids": ["big"], "embeddings": [[0.0, 0.0, 0.0]], "documents": ["x".repeat(100_000)]});
    let (code, _) = http_json("POST", &format!("{docs_url}/add"), Some(big)).await?;
    assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE);

    // A write the new store refuses for good.
    dimension_dead_letter(&proxy, &new).await?;

    // The new store down for a while: the replay retries, then applies.
    stop_new_store(&proxy, &mut new).await?;
    post_json(format!("{docs_url}/add"), records("late", 2)).await?;
    wait_until("a replay retry", BOUND, || async {
        let text = metrics_text(&proxy.admin_url()).await?;
        Ok(text.contains("chroma_shift_replay_retries_total{"))
    })
    .await?;
    restart_new_store(&proxy, &mut new).await?;

    // A cutover (forced past the dead letter), then canary reads from the new secondary.
    let (code, report) = proxy
        .admin("POST", "/admin/cutover", Some(json!({"force": true})))
        .await?;
    assert_eq!(code, StatusCode::OK, "{report}");
    let (code, policy) = proxy
        .admin(
            "POST",
            "/admin/read-policy",
            Some(json!({"canary_percent": 100.0, "shadow_percent": 0.0})),
        )
        .await?;
    assert_eq!(code, StatusCode::OK, "{policy}");
    queries(&docs_url, 3).await?;

    let text = metrics_text(&proxy.admin_url()).await?;
    let scraped = scraped_names(&text);
    let dashboard = dashboard()?;
    let mut used = BTreeSet::new();
    let mut missing = Vec::new();
    for (place, expr) in expressions(&dashboard) {
        let names = metric_names(&expr);
        assert!(!names.is_empty(), "{place} names no metric: {expr}");
        for name in names {
            if !scraped.contains(&name) {
                missing.push(format!("{place}: {name} (in {expr})"));
            }
            used.insert(name);
        }
    }
    assert!(
        missing.is_empty(),
        "metrics the dashboard uses that /metrics does not have:\n{}",
        missing.join("\n")
    );
    // What the dashboard must show, by the issue's list.
    for name in [
        "chroma_shift_requests_total",
        "chroma_shift_request_duration_seconds_bucket",
        "chroma_shift_upstream_duration_seconds_bucket",
        "chroma_shift_journal_depth",
        "chroma_shift_journal_oldest_age_seconds",
        "chroma_shift_replay_applied_total",
        "chroma_shift_dead_letters",
        "chroma_shift_dead_letters_total",
        "chroma_shift_shadow_recall_bucket",
        "chroma_shift_shadow_distance_drift_bucket",
        "chroma_shift_backend_up",
        "chroma_shift_primary",
        "chroma_shift_topology_epoch",
    ] {
        assert!(used.contains(name), "the dashboard does not use {name}");
    }
    // The annotation's metrics moved with the cutover.
    assert!(text.contains("chroma_shift_topology_epoch 2\n"), "{text}");
    assert!(text.contains("chroma_shift_primary{backend=\"new\"} 1\n"));
    Ok(())
}
