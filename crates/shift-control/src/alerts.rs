//! Alerts: a JSON body with a `text` field POSTed to a webhook (Slack's incoming webhooks take
//! it as it is), sent in the background so no switch waits on it, and logged either way.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use prometheus::IntCounterVec;
use serde_json::json;
use shift_proxy::backend::ServiceClient;
use url::Url;

/// Where alerts go.
#[derive(Debug, Clone)]
pub struct Alerter {
    /// The webhook, reached with the proxy's one HTTP client; `None`: logs only.
    webhook: Option<Arc<(ServiceClient, String)>>,
    /// Alerts by outcome (`sent`, `failed`, `logged`).
    sent: Option<IntCounterVec>,
}

impl Alerter {
    pub fn new(url: Option<&Url>, sent: Option<IntCounterVec>) -> Alerter {
        let webhook = url.and_then(|url| {
            let mut origin = url.clone();
            origin.set_path("");
            let path = match url.query() {
                Some(q) => format!("{}?{q}", url.path()),
                None => url.path().to_owned(),
            };
            match ServiceClient::new("alert webhook", &origin, Duration::from_secs(10)) {
                Ok(client) => Some(Arc::new((client, path))),
                Err(error) => {
                    tracing::error!(%error, "alert webhook unusable; alerts go to the log only");
                    None
                }
            }
        });
        Alerter { webhook, sent }
    }

    /// An alerter that only logs.
    pub fn log_only() -> Alerter {
        Alerter {
            webhook: None,
            sent: None,
        }
    }

    /// Sends `text` in the background.
    pub fn send(&self, text: &str) {
        tracing::warn!(alert = text, "alert");
        let Some(webhook) = self.webhook.clone() else {
            self.count("logged");
            return;
        };
        let body = json!({ "text": text });
        let sent = self.clone();
        tokio::spawn(async move {
            let (client, path) = &*webhook;
            let outcome = match client.call(Method::POST, path, Some(&body)).await {
                Ok(answer) if answer.status.is_success() => "sent",
                Ok(answer) => {
                    tracing::error!(status = %answer.status, "the alert webhook refused an alert");
                    "failed"
                }
                Err(error) => {
                    tracing::error!(reason = %error.kind, "the alert webhook could not be reached");
                    "failed"
                }
            };
            sent.count(outcome);
        });
    }

    fn count(&self, outcome: &str) {
        if let Some(sent) = &self.sent {
            sent.with_label_values(&[outcome]).inc();
        }
    }
}
