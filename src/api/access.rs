//! Who may use the API. On the unix socket, whoever can open it (file
//! permissions: root and the group cohort) may do anything. On TCP every
//! write needs the bearer token of `api.token_file`, and so does every read
//! when the API listens beyond loopback, except `GET /v1/health` (load
//! balancers probe it without credentials) and the web page's own files
//! (no data; a browser's navigation cannot carry a token, the page sends
//! it with its API calls). A refused request gets 401 and nothing else: it
//! never reaches a handler. See docs/api-access.md.

use std::fmt;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use sha2::{Digest, Sha256};
use tracing::{debug, warn};

use super::ApiError;

/// Shorter tokens are refused: a token is a password that scripts keep.
pub const MIN_TOKEN_LEN: usize = 16;

/// The one read anyone may make of an exposed API.
pub const HEALTH_PATH: &str = "/v1/health";

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the API token file {}: {}", path.display(), crate::storage::describe(source))]
    Read { path: PathBuf, source: io::Error },
    #[error("the API token file {} {problem}", path.display())]
    Invalid { path: PathBuf, problem: String },
}

/// The token a token file holds, checked: one line of printable ASCII
/// without spaces (it travels in an HTTP header), at least
/// `MIN_TOKEN_LEN` long. Surrounding whitespace and the newline are not
/// part of it. The CLI sends this text; the agent keeps only its digest.
pub fn read_token(path: &Path) -> Result<String, TokenError> {
    let bytes = std::fs::read(path).map_err(|source| TokenError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let invalid = |problem: String| TokenError::Invalid {
        path: path.to_path_buf(),
        problem,
    };
    let text = String::from_utf8(bytes)
        .map_err(|_| invalid("is not text: write the token as one line".into()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(invalid(
            "is empty: write one line, e.g. `openssl rand -hex 32 > FILE`".into(),
        ));
    }
    if token.lines().count() > 1 {
        return Err(invalid(
            "holds more than one line: write the token alone on one line".into(),
        ));
    }
    if !token.chars().all(|c| c.is_ascii_graphic()) {
        return Err(invalid(
            "holds spaces or characters other than printable ASCII: a token travels in an HTTP header".into(),
        ));
    }
    if token.len() < MIN_TOKEN_LEN {
        return Err(invalid(format!(
            "holds a token of {} characters; use at least {MIN_TOKEN_LEN}, e.g. `openssl rand -hex 32 > FILE`",
            token.len()
        )));
    }
    Ok(token.to_string())
}

/// The agent's token. Only its SHA-256 digest is kept, so nothing can
/// print or log the token itself, and comparing digests takes the same
/// time however much of a guess was right.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    digest: [u8; 32],
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    pub fn new(token: &str) -> Token {
        Token {
            digest: Sha256::digest(token.as_bytes()).into(),
        }
    }

    /// Reads and checks the agent's token file; a file that other users
    /// may read is taken with a warning.
    pub fn read(path: &Path) -> Result<Token, TokenError> {
        let token = Token::new(&read_token(path)?);
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o004 != 0 {
                warn!(
                    file = %path.display(),
                    "the API token file is readable by every user: make it 0640, owner root, group cohort"
                );
            }
        }
        Ok(token)
    }

    /// Whether `presented` is this token, in constant time.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        // Every byte is looked at whatever the first difference.
        let difference = digest
            .iter()
            .zip(&self.digest)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(difference) == 0
    }
}

/// The TCP side's rules, shared by every connection; the token can be
/// replaced while the agent runs (SIGHUP).
#[derive(Clone, Debug)]
pub struct Access(Arc<Policy>);

#[derive(Debug)]
struct Policy {
    token: RwLock<Option<Token>>,
    /// The API listens beyond loopback: reads need the token too.
    exposed: bool,
    /// The unix socket this agent serves, named in the advice of a 401.
    socket: Option<PathBuf>,
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denied {
    /// It needs the token and the agent has none.
    NoToken,
    /// It needs the token and carried none.
    Missing,
    /// It carried a token that is not the agent's.
    Wrong,
}

impl Access {
    pub fn new(exposed: bool, token: Option<Token>, socket: Option<PathBuf>) -> Access {
        Access(Arc::new(Policy {
            token: RwLock::new(token),
            exposed,
            socket,
        }))
    }

    /// Puts `token` in force for the next request; true when it differs.
    pub fn replace_token(&self, token: Token) -> bool {
        let mut current = self.0.token.write().unwrap_or_else(|p| p.into_inner());
        let changed = current.as_ref() != Some(&token);
        *current = Some(token);
        changed
    }

    /// `router` behind these rules: what the TCP listener serves. The
    /// rules wrap the whole router (its routing included), so a refusal is
    /// the same whatever the path and method, and says nothing of them.
    pub fn guard(&self, router: Router) -> Router {
        Router::new()
            .fallback_service(router)
            .layer(axum::middleware::from_fn_with_state(self.clone(), check))
    }

    /// The rules themselves.
    pub fn decide(&self, method: &Method, path: &str, headers: &HeaderMap) -> Result<(), Denied> {
        let read = method == Method::GET || method == Method::HEAD;
        if read && (!self.0.exposed || is_open(path)) {
            return Ok(());
        }
        let token = self.0.token.read().unwrap_or_else(|p| p.into_inner());
        let Some(token) = token.as_ref() else {
            return Err(Denied::NoToken);
        };
        match bearer(headers) {
            None => Err(Denied::Missing),
            Some(presented) if token.matches(presented) => Ok(()),
            Some(_) => Err(Denied::Wrong),
        }
    }

    /// The 401: the JSON error with advice, and the challenge.
    pub fn refusal(&self, denied: Denied) -> Response {
        let socket = self.0.socket.as_ref().map(|p| p.display().to_string());
        let message = match (denied, socket) {
            (Denied::NoToken, Some(socket)) => format!(
                "this agent has no API token (api.token_file), so over TCP it takes no writes: use its unix socket (cohort --socket {socket}), or set api.token_file in its node config"
            ),
            (Denied::NoToken, None) => "this agent has no API token (api.token_file), so over TCP it takes no writes: set api.token_file in its node config".to_string(),
            (Denied::Missing, socket) => format!(
                "this request needs the API token (Authorization: Bearer TOKEN, the token of the agent's api.token_file): give cohort --token-file FILE or set COHORT_TOKEN_FILE{}",
                socket.map_or(String::new(), |s| format!(", or use its unix socket (cohort --socket {s})"))
            ),
            (Denied::Wrong, _) => "the API token sent is not this agent's (api.token_file): give cohort --token-file a copy of that file".to_string(),
        };
        let challenge = match denied {
            Denied::Wrong => r#"Bearer realm="cohort", error="invalid_token""#,
            Denied::NoToken | Denied::Missing => r#"Bearer realm="cohort""#,
        };
        let mut response = (
            StatusCode::UNAUTHORIZED,
            Json(ApiError {
                code: "unauthorized".into(),
                message,
            }),
        )
            .into_response();
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
        response
    }
}

/// What an exposed API lets anyone read.
fn is_open(path: &str) -> bool {
    path == HEALTH_PATH || super::ui::PATHS.contains(&path)
}

async fn check(State(access): State<Access>, request: Request, next: Next) -> Response {
    match access.decide(request.method(), request.uri().path(), request.headers()) {
        Ok(()) => next.run(request).await,
        Err(denied) => {
            debug!(method = %request.method(), path = request.uri().path(), ?denied, "API request refused");
            access.refusal(denied)
        }
    }
}

/// The credentials of `Authorization: Bearer TOKEN`, if that is what the
/// request carries (the scheme is case-insensitive).
fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    let space = value.iter().position(|b| *b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let start = rest.iter().position(|b| *b != b' ')?;
    Some(&rest[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123";

    fn headers(authorization: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(value) = authorization {
            headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    fn access(exposed: bool, token: bool) -> Access {
        Access::new(
            exposed,
            token.then(|| Token::new(TOKEN)),
            Some("/run/cohort/api.sock".into()),
        )
    }

    #[test]
    fn on_loopback_reads_are_open_and_writes_need_the_token() {
        let access = access(false, true);
        let none = headers(None);
        let right = headers(Some(&format!("Bearer {TOKEN}")));
        let wrong = headers(Some("Bearer 0123456789abcdef0124"));
        for method in [Method::GET, Method::HEAD] {
            assert_eq!(access.decide(&method, "/v1/status", &none), Ok(()));
        }
        for method in [Method::PUT, Method::POST, Method::DELETE, Method::OPTIONS] {
            assert_eq!(
                access.decide(&method, "/v1/topology", &none),
                Err(Denied::Missing)
            );
            assert_eq!(
                access.decide(&method, "/v1/topology", &wrong),
                Err(Denied::Wrong)
            );
            assert_eq!(access.decide(&method, "/v1/topology", &right), Ok(()));
        }
    }

    #[test]
    fn beyond_loopback_reads_need_it_too_but_health() {
        let access = access(true, true);
        let none = headers(None);
        assert_eq!(
            access.decide(&Method::GET, "/v1/members", &none),
            Err(Denied::Missing)
        );
        assert_eq!(
            access.decide(&Method::GET, "/metrics", &none),
            Err(Denied::Missing)
        );
        assert_eq!(access.decide(&Method::GET, HEALTH_PATH, &none), Ok(()));
        assert_eq!(access.decide(&Method::HEAD, HEALTH_PATH, &none), Ok(()));
        for page in ["/", "/ui", "/ui/app.js"] {
            assert_eq!(access.decide(&Method::GET, page, &none), Ok(()), "{page}");
        }
        assert_eq!(
            access.decide(&Method::GET, "/ui/anything-else", &none),
            Err(Denied::Missing)
        );
        assert_eq!(
            access.decide(&Method::POST, HEALTH_PATH, &none),
            Err(Denied::Missing),
            "only reads of health are open"
        );
        let right = headers(Some(&format!("Bearer {TOKEN}")));
        assert_eq!(access.decide(&Method::GET, "/v1/members", &right), Ok(()));
    }

    #[test]
    fn without_a_token_no_write_passes() {
        let access = access(false, false);
        let any = headers(Some(&format!("Bearer {TOKEN}")));
        assert_eq!(access.decide(&Method::GET, "/v1/status", &any), Ok(()));
        assert_eq!(
            access.decide(&Method::PUT, "/v1/topology", &any),
            Err(Denied::NoToken)
        );
    }

    #[test]
    fn the_scheme_is_bearer_in_any_case_and_nothing_else() {
        let access = access(false, true);
        for ok in [
            format!("Bearer {TOKEN}"),
            format!("bearer {TOKEN}"),
            format!("BEARER   {TOKEN}"),
        ] {
            assert_eq!(
                access.decide(&Method::POST, "/v1/leave", &headers(Some(&ok))),
                Ok(()),
                "{ok}"
            );
        }
        for missing in [
            format!("Basic {TOKEN}"),
            format!("Bearer{TOKEN}"),
            "Bearer ".into(),
        ] {
            assert_eq!(
                access.decide(&Method::POST, "/v1/leave", &headers(Some(&missing))),
                Err(Denied::Missing),
                "{missing}"
            );
        }
        assert_eq!(
            access.decide(
                &Method::POST,
                "/v1/leave",
                &headers(Some(&format!("Bearer {TOKEN} ")))
            ),
            Err(Denied::Wrong),
            "the token is compared as sent"
        );
    }

    #[test]
    fn a_new_token_replaces_the_old_one() {
        let access = access(false, true);
        let old = headers(Some(&format!("Bearer {TOKEN}")));
        assert!(!access.replace_token(Token::new(TOKEN)), "unchanged");
        assert!(access.replace_token(Token::new("fedcba9876543210fedc")));
        assert_eq!(
            access.decide(&Method::POST, "/v1/leave", &old),
            Err(Denied::Wrong)
        );
    }

    #[test]
    fn a_refusal_is_json_with_a_bearer_challenge_and_never_the_token() {
        let access = access(false, true);
        for denied in [Denied::NoToken, Denied::Missing, Denied::Wrong] {
            let response = access.refusal(denied);
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
            let challenge = response.headers()[header::WWW_AUTHENTICATE]
                .to_str()
                .unwrap();
            assert!(challenge.starts_with("Bearer "), "{challenge}");
        }
        assert!(!format!("{:?}", Token::new(TOKEN)).contains(TOKEN));
        assert!(!format!("{access:?}").contains(TOKEN));
    }

    #[test]
    fn a_token_file_holds_one_line_of_enough_printable_ascii() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        let check = |text: &str| {
            std::fs::write(&file, text).unwrap();
            read_token(&file).map_err(|e| e.to_string())
        };
        assert_eq!(check(&format!("{TOKEN}\n")).unwrap(), TOKEN);
        assert_eq!(check(&format!("  {TOKEN}\r\n\n")).unwrap(), TOKEN);
        for (text, problem) in [
            ("", "is empty"),
            ("\n", "is empty"),
            ("short\n", "holds a token of 5 characters; use at least 16"),
            (
                "0123456789abcdef\n0123456789abcdef\n",
                "holds more than one line",
            ),
            ("0123456789 abcdef\n", "holds spaces"),
            (
                "0123456789abcdéf\n",
                "holds spaces or characters other than printable ASCII",
            ),
        ] {
            let e = check(text).unwrap_err();
            assert!(
                e.starts_with(&format!("the API token file {} {problem}", file.display())),
                "{text:?}: {e}"
            );
        }
        let missing = dir.path().join("absent");
        assert_eq!(
            read_token(&missing).unwrap_err().to_string(),
            format!(
                "cannot read the API token file {}: No such file or directory",
                missing.display()
            )
        );
    }
}
