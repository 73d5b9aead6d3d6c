//! The status page, `/ui` on the admin listener: one HTML page, its stylesheet and its script,
//! compiled into the binary (`ui/`), with no external asset.
//!
//! The page holds no data: it asks for the admin token (a login form), keeps it in the tab's
//! `sessionStorage` and sends it as `Authorization: Bearer` on every call to the admin JSON
//! API (`/admin/status` and `/admin/audit`, polled every 2 s; `/admin/cutover` and
//! `/admin/rollback`, always a dry run first, then the real call after a typed confirmation).
//! The token is never put in a URL. So the page itself is served without a token, as the
//! probes are, and every answer carries a strict Content-Security-Policy (this origin only, no
//! inline script or style, no form submission, no framing).
//!
//! With the admin API off (`[admin] enabled = false`) the `/admin` routes are not mounted, and
//! the page is not either: `/ui` answers the admin listener's 404, saying why.

use axum::extract::State;
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::admin::{error, AdminState};
use crate::api::ErrorKind;

/// The page: the skeleton the script fills.
const PAGE: &str = include_str!("ui/index.html");
/// Its stylesheet.
const STYLE: &str = include_str!("ui/style.css");
/// Its script: login, polling, rendering, the switch dialog.
const SCRIPT: &str = include_str!("ui/app.js");

/// Same origin only; no inline script or style, no plugin, no form submission (the login form
/// is handled by the script, so a token can never be submitted into a URL), no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The page's routes, merged into the admin router.
pub fn routes() -> Router<AdminState> {
    Router::new()
        .route("/ui", get(page))
        .route("/ui/", get(page))
        .route("/ui/style.css", get(style))
        .route("/ui/app.js", get(script))
}

async fn page(State(state): State<AdminState>) -> Response {
    asset(&state, "text/html; charset=utf-8", PAGE)
}

async fn style(State(state): State<AdminState>) -> Response {
    asset(&state, "text/css; charset=utf-8", STYLE)
}

async fn script(State(state): State<AdminState>) -> Response {
    asset(&state, "text/javascript; charset=utf-8", SCRIPT)
}

/// One of the page's files with the headers that keep it to itself, or the admin API's 404
/// when the API is off.
fn asset(state: &AdminState, content_type: &'static str, body: &'static str) -> Response {
    if state.auth.is_none() {
        return error(
            StatusCode::NOT_FOUND,
            ErrorKind::NotFoundError,
            "the status page needs the admin API: set [admin] enabled = true and its token",
        );
    }
    let headers: [(HeaderName, HeaderValue); 6] = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        // The files change with the binary; a browser revalidates instead of keeping an old one.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ];
    (headers, body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_files() {
        for (name, text) in [
            ("index.html", PAGE),
            ("app.js", SCRIPT),
            ("style.css", STYLE),
        ] {
            for external in ["http://", "https://", "//cdn", "@import"] {
                assert!(
                    !text.contains(external),
                    "{name} refers to an external asset ({external})"
                );
            }
        }
        assert!(PAGE.contains("src=\"/ui/app.js\""));
        assert!(PAGE.contains("href=\"/ui/style.css\""));
        // The CSP forbids inline script and style: the page has none.
        assert!(!PAGE.contains("<script>"));
        assert!(!PAGE.contains("<style"));
        assert!(!PAGE.contains(" style=\""));
        assert!(!PAGE.contains(" onclick="));
    }

    #[test]
    fn the_token_field_cannot_be_submitted() {
        // No `name` on the token's input: a form submitted without the script (which the CSP's
        // form-action forbids anyway) would carry no token.
        let input = PAGE
            .split("<input")
            .find(|tag| tag.contains("id=\"token\""))
            .expect("the token input");
        let tag = input.split('>').next().unwrap_or_default();
        assert!(!tag.contains("name="), "{tag}");
        assert!(tag.contains("type=\"password\""), "{tag}");
    }

    #[test]
    fn the_script_sends_the_token_only_as_a_header() {
        assert!(SCRIPT.contains("Authorization"));
        assert!(SCRIPT.contains("sessionStorage"));
        assert!(!SCRIPT.contains("localStorage"));
        assert!(!SCRIPT.contains("?token"));
        assert!(!SCRIPT.contains("innerHTML"));
    }
}
