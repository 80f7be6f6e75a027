//! The portal's pages (L3): HTTPS only, no JavaScript, one form per step. Routes:
//! `GET /m/{token}` (landing), `POST /m/{token}/code`, `POST /m/{token}/verify`,
//! `GET /m/{token}/view`, `GET /m/{token}/attachments/{n}`, `POST /m/{token}/reply`.
//! Ended links answer 410 on every route; pages before verification show nothing of
//! the message (not even whether the address exists). Every response carries a strict
//! CSP, and HTML bodies pass through ammonia before they are shown.

// Handlers return a page for every failure at once; boxing those responses buys nothing.
#![allow(clippy::result_large_err)]

use super::{Client, CodeRequest, Entry, Portal, PortalError, State, Verified};
use crate::https::Conn;
use axum::body::Bytes;
use axum::extract::{Extension, Path, State as AxState};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use mail_parser::MimeHeaders;
use minijinja::{context, AutoEscape, Environment};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

const COOKIE: &str = "phigate_portal";
const CSS: &str = include_str!("pages/portal.css");
const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";

/// What the handlers share.
pub struct WebState {
    portal: Arc<Portal>,
    pages: Environment<'static>,
    logo: Option<(Vec<u8>, &'static str)>,
    /// Requests per client IP in the current minute.
    rate: Mutex<HashMap<IpAddr, (u64, u32)>>,
}

impl WebState {
    pub fn new(portal: Arc<Portal>) -> Result<Arc<WebState>, String> {
        let mut pages = Environment::new();
        pages.set_auto_escape_callback(|_| AutoEscape::Html);
        pages.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        for (name, src) in [
            ("base.html", include_str!("pages/base.html")),
            ("landing.html", include_str!("pages/landing.html")),
            ("message.html", include_str!("pages/message.html")),
            ("notice.html", include_str!("pages/notice.html")),
        ] {
            pages
                .add_template(name, src)
                .map_err(|e| format!("portal page {name}: {e}"))?;
        }
        let logo = match &portal.config().logo_file {
            Some(p) => {
                let bytes = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
                let svg = p.extension().is_some_and(|e| e.eq_ignore_ascii_case("svg"));
                Some((bytes, if svg { "image/svg+xml" } else { "image/png" }))
            }
            None => None,
        };
        Ok(Arc::new(WebState {
            portal,
            pages,
            logo,
            rate: Mutex::new(HashMap::new()),
        }))
    }

    /// One more request from `ip`; false once it is over the per-minute limit.
    fn admit(&self, ip: IpAddr) -> bool {
        let now = self.portal.services().now() / 60;
        let mut map = self.rate.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 10_000 {
            map.retain(|_, (minute, _)| *minute == now);
        }
        let slot = map.entry(ip).or_insert((now, 0));
        if slot.0 != now {
            *slot = (now, 0);
        }
        slot.1 += 1;
        slot.1 <= self.portal.config().requests_per_minute
    }
}

pub fn router(st: Arc<WebState>) -> Router {
    let max = st.portal.config().max_form.0 as usize;
    Router::new()
        .route("/m/{token}", get(landing))
        .route("/m/{token}/code", post(request_code))
        .route("/m/{token}/verify", post(verify))
        .route("/m/{token}/view", get(view))
        .route("/m/{token}/attachments/{n}", get(attachment))
        .route("/m/{token}/reply", post(reply))
        .route("/static/portal.css", get(css))
        .route("/static/logo", get(logo))
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(max))
        .layer(axum::middleware::from_fn_with_state(st.clone(), guard))
        .with_state(st)
}

/// Bind `[portal] listen` and serve until `shutdown`.
pub async fn start(
    st: Arc<WebState>,
    tls: crate::tls::server::ServerTls,
    shutdown: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let addr = st.portal.config().listen;
    let tcp = TcpListener::bind(addr).await?;
    info!(%addr, "portal listening");
    Ok(crate::https::serve(
        tcp,
        tls,
        router(st),
        shutdown,
        "portal",
    ))
}

/// Every response: rate limit first, then the security headers and the metric.
async fn guard(
    AxState(st): AxState<Arc<WebState>>,
    Extension(conn): Extension<Conn>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let mut res = if st.admit(conn.peer) {
        next.run(req).await
    } else {
        let mut r = page(
            &st,
            StatusCode::TOO_MANY_REQUESTS,
            "Too many requests",
            "Too many requests from your network. Please wait a minute and try again.",
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
        r
    };
    let h = res.headers_mut();
    for (k, v) in [
        ("content-security-policy", CSP),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
        ("strict-transport-security", "max-age=31536000"),
        ("cross-origin-opener-policy", "same-origin"),
        ("cross-origin-resource-policy", "same-origin"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    let code = res.status().as_u16().to_string();
    (st.portal.services().metrics).inc(crate::metrics::PORTAL_REQUESTS, &[("status", &code)]);
    res
}

fn client(conn: &Conn, headers: &HeaderMap) -> Client {
    Client {
        ip: conn.peer.to_string(),
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string(),
    }
}

fn render(st: &WebState, status: StatusCode, name: &str, ctx: minijinja::Value) -> Response {
    let base = context! {
        organization => st.portal.config().organization.clone(),
        logo => st.logo.is_some(),
    };
    let ctx = context! { ..ctx, ..base };
    match st.pages.get_template(name).and_then(|t| t.render(ctx)) {
        Ok(html) => (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            html,
        )
            .into_response(),
        Err(e) => {
            warn!(page = name, error = %e.kind(), "portal page failed to render");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
    }
}

/// A page with one sentence (errors and confirmations).
fn page(st: &WebState, status: StatusCode, title: &str, text: &str) -> Response {
    let kind = if status.is_success() { "note" } else { "error" };
    render(
        st,
        status,
        "notice.html",
        context! { title => title, text => text, kind => kind, back => () },
    )
}

fn not_found_page(st: &WebState) -> Response {
    page(
        st,
        StatusCode::NOT_FOUND,
        "Link not valid",
        "This link is not valid. Check that you copied the whole link from the notification.",
    )
}

fn gone(st: &WebState) -> Response {
    page(
        st,
        StatusCode::GONE,
        "Message no longer available",
        "This secure message has expired or was withdrawn, and its content has been deleted. \
         Please contact the sender if you still need it.",
    )
}

fn internal(st: &WebState, e: &PortalError) -> Response {
    warn!(error = %e, "portal request failed");
    page(
        st,
        StatusCode::INTERNAL_SERVER_ERROR,
        "Something went wrong",
        "The secure portal could not complete this request. Please try again later.",
    )
}

async fn not_found(AxState(st): AxState<Arc<WebState>>) -> Response {
    not_found_page(&st)
}

/// The entry `token` names, or the page to answer instead (404 unknown, 410 ended).
fn entry(st: &WebState, token: &str) -> Result<Entry, Response> {
    match st.portal.by_token(token) {
        // Past its expiry and not yet swept: already gone for the recipient.
        Ok(Some(e)) if e.state == State::Active && e.expires_at > st.portal.services().now() => {
            Ok(e)
        }
        Ok(Some(_)) => Err(gone(st)),
        Ok(None) => Err(not_found_page(st)),
        Err(e) => Err(internal(st, &e)),
    }
}

/// Map an error from a portal call: an entry that ended meanwhile is 410.
fn failed(st: &WebState, e: PortalError) -> Response {
    match e {
        PortalError::Ended(..) | PortalError::Spool(crate::spool::SpoolError::Shredded(_)) => {
            gone(st)
        }
        e => internal(st, &e),
    }
}

fn cookie_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

/// The session cookie, if it is a live session of `e`.
async fn session(
    st: &WebState,
    e: &Entry,
    headers: &HeaderMap,
) -> Result<Option<String>, Response> {
    let Some(c) = cookie_of(headers) else {
        return Ok(None);
    };
    match st.portal.session(&e.id, &c).await {
        Ok(true) => Ok(Some(c)),
        Ok(false) => Ok(None),
        Err(err) => Err(failed(st, err)),
    }
}

fn csrf_before(st: &WebState, e: &Entry) -> String {
    st.portal.csrf(&["pre", &e.id.to_string(), &e.token_hash])
}

fn csrf_after(st: &WebState, e: &Entry, cookie: &str) -> String {
    st.portal
        .csrf(&["post", &e.id.to_string(), &super::record::hash(cookie)])
}

fn date(ts: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ts as i64)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute] UTC"
            ))
            .ok()
        })
        .unwrap_or_default()
}

fn landing_page(
    st: &WebState,
    status: StatusCode,
    token: &str,
    e: &Entry,
    note: Option<&str>,
    error: Option<&str>,
) -> Response {
    render(
        st,
        status,
        "landing.html",
        context! {
            title => "You have a secure message",
            token => token,
            csrf => csrf_before(st, e),
            note => note,
            error => error,
            expires => date(e.expires_at),
            code_minutes => st.portal.config().code_ttl.0.div_ceil(60),
        },
    )
}

async fn landing(AxState(st): AxState<Arc<WebState>>, Path(token): Path<String>) -> Response {
    match entry(&st, &token) {
        Ok(e) => landing_page(&st, StatusCode::OK, &token, &e, None, None),
        Err(r) => r,
    }
}

/// The fields of a form body, or None when it is not UTF-8 (the caller's 400 page).
pub fn parse_form(body: &[u8]) -> Option<HashMap<String, String>> {
    std::str::from_utf8(body).ok()?;
    Some(form_urlencoded::parse(body).into_owned().collect())
}

/// The form fields of a POST; a body that is not a form is a 400 page.
fn form(st: &WebState, body: &Bytes) -> Result<HashMap<String, String>, Response> {
    parse_form(body).ok_or_else(|| {
        page(
            st,
            StatusCode::BAD_REQUEST,
            "Bad request",
            "The form could not be read.",
        )
    })
}

fn csrf_refused(st: &WebState) -> Response {
    page(
        st,
        StatusCode::FORBIDDEN,
        "Form expired",
        "This form is no longer valid. Go back, reload the page and try again.",
    )
}

/// A form posted before verification: the live entry and its fields, once the CSRF
/// field (bound to the link) checks out.
fn pre_form(
    st: &WebState,
    token: &str,
    body: &Bytes,
) -> Result<(Entry, HashMap<String, String>), Response> {
    let e = entry(st, token)?;
    let fields = form(st, body)?;
    let csrf = fields.get("csrf").map(String::as_str).unwrap_or("");
    if !st
        .portal
        .csrf_ok(&["pre", &e.id.to_string(), &e.token_hash], csrf)
    {
        return Err(csrf_refused(st));
    }
    Ok((e, fields))
}

async fn request_code(
    AxState(st): AxState<Arc<WebState>>,
    Extension(conn): Extension<Conn>,
    headers: HeaderMap,
    Path(token): Path<String>,
    body: Bytes,
) -> Response {
    let (e, _) = match pre_form(&st, &token, &body) {
        Ok(x) => x,
        Err(r) => return r,
    };
    match st
        .portal
        .request_code(&e.id, &client(&conn, &headers))
        .await
    {
        Ok(CodeRequest::Sent) => landing_page(
            &st,
            StatusCode::OK,
            &token,
            &e,
            Some("A code is on its way to the address this link was sent to. Enter it below."),
            None,
        ),
        Ok(CodeRequest::RateLimited) => landing_page(
            &st,
            StatusCode::TOO_MANY_REQUESTS,
            &token,
            &e,
            None,
            Some(
                "Several codes were sent in the last hour. Use the latest one, or try again later.",
            ),
        ),
        Ok(CodeRequest::Locked { until }) => locked(&st, &token, &e, until),
        Err(err) => failed(&st, err),
    }
}

fn locked(st: &WebState, token: &str, e: &Entry, until: u64) -> Response {
    let msg = format!(
        "Too many wrong codes. The link is locked until {}; then ask for a new code.",
        date(until)
    );
    landing_page(
        st,
        StatusCode::TOO_MANY_REQUESTS,
        token,
        e,
        None,
        Some(&msg),
    )
}

async fn verify(
    AxState(st): AxState<Arc<WebState>>,
    Extension(conn): Extension<Conn>,
    headers: HeaderMap,
    Path(token): Path<String>,
    body: Bytes,
) -> Response {
    let (e, fields) = match pre_form(&st, &token, &body) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let code = fields.get("code").map(String::as_str).unwrap_or("");
    match st
        .portal
        .verify(&e.id, code, &client(&conn, &headers))
        .await
    {
        Ok(Verified::Session(cookie)) => {
            let set = format!(
                "{COOKIE}={cookie}; Path=/m/{token}; Max-Age={}; HttpOnly; Secure; SameSite=Strict",
                st.portal.config().session_idle.0
            );
            let mut r = (
                StatusCode::SEE_OTHER,
                [(header::LOCATION, format!("/m/{token}/view"))],
            )
                .into_response();
            if let Ok(v) = HeaderValue::from_str(&set) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        Ok(Verified::Wrong { left }) => {
            let msg = format!("That code is not right. {left} attempt(s) left.");
            landing_page(&st, StatusCode::UNAUTHORIZED, &token, &e, None, Some(&msg))
        }
        Ok(Verified::Locked { until }) => locked(&st, &token, &e, until),
        Ok(Verified::NoCode) => landing_page(
            &st,
            StatusCode::BAD_REQUEST,
            &token,
            &e,
            None,
            Some("There is no valid code for this link: ask for a new one."),
        ),
        Err(err) => failed(&st, err),
    }
}

fn need_code(st: &WebState, token: &str, e: &Entry) -> Response {
    landing_page(
        st,
        StatusCode::UNAUTHORIZED,
        token,
        e,
        None,
        Some("Your session has ended. Ask for a new code to open the message again."),
    )
}

/// The sanitised HTML of a message body: no scripts, styles, images or remote content,
/// links only to http(s) and mailto, and never able to leave the page's CSP.
pub fn sanitize(html: &str) -> String {
    let mut b = ammonia::Builder::default();
    b.rm_tags([
        "img", "picture", "source", "video", "audio", "track", "map", "area",
    ]);
    b.url_schemes(["http", "https", "mailto"].into_iter().collect());
    b.url_relative(ammonia::UrlRelative::Deny);
    b.link_rel(Some("noopener noreferrer nofollow"));
    b.clean(html).to_string()
}

fn human_size(n: usize) -> String {
    if n >= 1024 * 1024 {
        format!("{:.1} MB", n as f64 / (1024.0 * 1024.0))
    } else if n >= 1024 {
        format!("{} KB", n / 1024)
    } else {
        format!("{n} bytes")
    }
}

async fn view(
    AxState(st): AxState<Arc<WebState>>,
    Extension(conn): Extension<Conn>,
    headers: HeaderMap,
    Path(token): Path<String>,
) -> Response {
    let e = match entry(&st, &token) {
        Ok(e) => e,
        Err(r) => return r,
    };
    let cookie = match session(&st, &e, &headers).await {
        Ok(Some(c)) => c,
        Ok(None) => return need_code(&st, &token, &e),
        Err(r) => return r,
    };
    message_page(&st, &conn, &headers, &token, &e, &cookie, None).await
}

async fn message_page(
    st: &WebState,
    conn: &Conn,
    headers: &HeaderMap,
    token: &str,
    e: &Entry,
    cookie: &str,
    note: Option<&str>,
) -> Response {
    let (env, content) = match st.portal.content(e) {
        Ok(x) => x,
        Err(err) => return failed(st, err),
    };
    let msg = crate::message::parse(&content);
    let subject = msg
        .as_ref()
        .and_then(|m| m.subject())
        .unwrap_or("")
        .to_string();
    let from = msg
        .as_ref()
        .and_then(|m| m.from())
        .and_then(|f| f.first())
        .map(|a| match (a.name(), a.address()) {
            (Some(n), Some(ad)) => format!("{n} <{ad}>"),
            (None, Some(ad)) => ad.to_string(),
            (Some(n), None) => n.to_string(),
            (None, None) => String::new(),
        })
        .unwrap_or_else(|| env.mail_from.clone());
    let date = msg
        .as_ref()
        .and_then(|m| m.date())
        .map(|d| d.to_rfc822())
        .unwrap_or_default();
    let html = msg
        .as_ref()
        .and_then(|m| m.body_html(0))
        .map(|h| sanitize(&h));
    let text = msg
        .as_ref()
        .and_then(|m| m.body_text(0))
        .map(|t| t.to_string())
        .unwrap_or_default();
    let attachments: Vec<minijinja::Value> = msg
        .as_ref()
        .map(|m| {
            m.attachments()
                .enumerate()
                .map(|(n, a)| {
                    context! {
                        n => n,
                        name => a.attachment_name().unwrap_or("attachment").to_string(),
                        size => human_size(a.contents().len()),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let res = render(
        st,
        StatusCode::OK,
        "message.html",
        context! {
            title => "Secure message",
            token => token,
            csrf => csrf_after(st, e, cookie),
            note => note,
            from => from,
            date => date,
            subject => subject,
            html => html,
            text => text,
            attachments => attachments,
            max_reply => st.portal.config().max_form.0,
        },
    );
    drop(msg);
    if let Err(err) = st.portal.viewed(&e.id, &client(conn, headers)).await {
        return failed(st, err);
    }
    res
}

/// A download name that is safe in a header and on any file system.
pub fn safe_filename(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ' ') {
                c
            } else {
                '_'
            }
        })
        .take(120)
        .collect();
    let cleaned = cleaned.trim_matches(|c| c == '.' || c == ' ').to_string();
    if cleaned.is_empty() {
        "attachment".into()
    } else {
        cleaned
    }
}

async fn attachment(
    AxState(st): AxState<Arc<WebState>>,
    Extension(conn): Extension<Conn>,
    headers: HeaderMap,
    Path((token, n)): Path<(String, String)>,
) -> Response {
    let e = match entry(&st, &token) {
        Ok(e) => e,
        Err(r) => return r,
    };
    match session(&st, &e, &headers).await {
        Ok(Some(_)) => {}
        Ok(None) => return need_code(&st, &token, &e),
        Err(r) => return r,
    }
    let Ok(n) = n.parse::<usize>() else {
        return not_found_page(&st);
    };
    let (_, content) = match st.portal.content(&e) {
        Ok(x) => x,
        Err(err) => return failed(&st, err),
    };
    let found = crate::message::parse(&content).and_then(|m| {
        m.attachments().nth(n).map(|a| {
            (
                safe_filename(a.attachment_name().unwrap_or("attachment")),
                a.contents().to_vec(),
            )
        })
    });
    let Some((name, bytes)) = found else {
        return not_found_page(&st);
    };
    if let Err(err) = st
        .portal
        .downloaded(&e.id, n, &client(&conn, &headers))
        .await
    {
        return failed(&st, err);
    }
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        bytes,
    )
        .into_response()
}

async fn reply(
    AxState(st): AxState<Arc<WebState>>,
    Extension(conn): Extension<Conn>,
    headers: HeaderMap,
    Path(token): Path<String>,
    body: Bytes,
) -> Response {
    let e = match entry(&st, &token) {
        Ok(e) => e,
        Err(r) => return r,
    };
    let cookie = match session(&st, &e, &headers).await {
        Ok(Some(c)) => c,
        Ok(None) => return need_code(&st, &token, &e),
        Err(r) => return r,
    };
    let fields = match form(&st, &body) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let csrf = fields.get("csrf").map(String::as_str).unwrap_or("");
    let bound = ["post", &e.id.to_string(), &super::record::hash(&cookie)];
    if !st.portal.csrf_ok(&bound, csrf) {
        return csrf_refused(&st);
    }
    let text = fields.get("text").map(|t| t.trim()).unwrap_or("");
    if text.is_empty() {
        return page(
            &st,
            StatusCode::BAD_REQUEST,
            "Empty reply",
            "Write a reply before sending it.",
        );
    }
    match st.portal.reply(&e.id, text, &client(&conn, &headers)).await {
        Ok(_) => {
            message_page(
                &st,
                &conn,
                &headers,
                &token,
                &e,
                &cookie,
                Some("Your reply was sent securely to the sender."),
            )
            .await
        }
        Err(err) => failed(&st, err),
    }
}

async fn css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS).into_response()
}

async fn logo(AxState(st): AxState<Arc<WebState>>) -> Response {
    match &st.logo {
        Some((bytes, ct)) => ([(header::CONTENT_TYPE, *ct)], bytes.clone()).into_response(),
        None => not_found_page(&st),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitizer_removes_active_and_remote_content() {
        let out = sanitize(
            r#"<p onclick="x()">Hi<script>window.__pwned=1</script></p>
<a href="javascript:alert(1)">j</a><img src="https://evil.example/t.png">
<style>body{background:url(https://evil.example/c)}</style><a href="https://ok.example/">ok</a>
<div style="background:url(https://evil.example/s)">s</div><iframe src="https://evil.example"></iframe>"#,
        );
        for bad in [
            "script",
            "javascript:",
            "evil.example",
            "onclick",
            "<img",
            "<iframe",
            "style",
        ] {
            assert!(!out.contains(bad), "{bad} survived: {out}");
        }
        assert!(out.contains(r#"href="https://ok.example/""#), "{out}");
        assert!(out.contains("noopener"), "{out}");
    }

    #[test]
    fn filenames_are_made_safe() {
        assert_eq!(safe_filename("../../etc/passwd"), "_.._etc_passwd");
        assert_eq!(safe_filename("report \"x\".pdf"), "report _x_.pdf");
        assert_eq!(safe_filename("..."), "attachment");
    }
}
