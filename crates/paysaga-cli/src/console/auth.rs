//! Who uses the console and what they may do: tokens (exchanged at the login form for a
//! session cookie, or sent as `Authorization: Bearer`), or an identity header set by a trusted
//! reverse proxy when configured; roles (`viewer` reads, `operator` acts too); CSRF protection
//! of every state-changing request (a per-session token in every form, and `Origin` /
//! `Sec-Fetch-Site` must say the request comes from the console itself).

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use axum::http::{HeaderMap, Method};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The session cookie's name.
pub const COOKIE: &str = "paysaga_console";
/// How long a session lasts after login.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// What an identity may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Reads every page.
    Viewer,
    /// Reads, and runs the operator actions.
    Operator,
}

impl Role {
    fn parse(s: &str) -> Result<Role> {
        match s.trim() {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            other => bail!("unknown role {other:?}: viewer or operator"),
        }
    }

    /// As written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
        }
    }
}

/// How a request was authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// The session cookie of a login (forms carry the session's CSRF token).
    Session(String),
    /// `Authorization: Bearer` (not sent by browsers on their own: no CSRF token needed).
    Bearer,
    /// The trusted proxy's identity header (forms carry a CSRF token bound to the identity).
    Header,
    /// `--insecure-no-auth`: anyone, as a viewer.
    Anonymous,
}

/// The authenticated user of a request.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The name (recorded as `console:NAME` in history).
    pub name: String,
    /// What they may do.
    pub role: Role,
    /// How they authenticated.
    pub via: Via,
    /// The CSRF token every form of theirs carries.
    pub csrf: String,
}

impl Identity {
    /// The actor recorded in history.
    pub fn actor(&self) -> String {
        format!("console:{}", self.name)
    }
}

/// One configured token (the token itself never printed).
struct TokenEntry {
    name: String,
    role: Role,
    token: SecretString,
}

impl fmt::Debug for TokenEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenEntry")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// The trusted reverse proxy's identity header.
#[derive(Debug, Clone)]
pub struct TrustedHeader {
    /// Header name (e.g. `X-Forwarded-User`).
    pub name: axum::http::HeaderName,
    /// Identities given the operator role (the others are viewers).
    pub operators: Vec<String>,
}

struct Session {
    name: String,
    role: Role,
    expires: Instant,
}

/// The console's authentication: tokens, the trusted header, sessions.
pub struct Auth {
    tokens: Vec<TokenEntry>,
    header: Option<TrustedHeader>,
    anonymous: bool,
    /// The origin (`https://console.example`) browsers send in `Origin`; default: the
    /// request's `Host` on http or https.
    origin: Option<String>,
    /// Signs CSRF tokens; random per process.
    key: [u8; 32],
    sessions: Mutex<HashMap<String, Session>>,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("tokens", &self.tokens)
            .field("header", &self.header)
            .field("anonymous", &self.anonymous)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// Why a request is not served.
#[derive(Debug, PartialEq, Eq)]
pub enum Denied {
    /// No (valid) credentials: 401.
    Unauthenticated,
    /// A state-changing request from another site, or without the form's CSRF token: 403.
    CrossSite(&'static str),
}

/// Parses token entries: `NAME=ROLE:TOKEN`, separated by commas or new lines (`#` comments
/// and blank lines ignored in a file).
fn parse_tokens(text: &str) -> Result<Vec<TokenEntry>> {
    let mut out: Vec<TokenEntry> = Vec::new();
    for (n, entry) in text
        .split([',', '\n'])
        .map(str::trim)
        .enumerate()
        .filter(|(_, e)| !e.is_empty() && !e.starts_with('#'))
    {
        // The entry itself holds the token: errors name the entry's position and name only.
        let (name, rest) = entry
            .split_once('=')
            .with_context(|| format!("console token entry {} is not NAME=ROLE:TOKEN", n + 1))?;
        let (role, token) = rest.split_once(':').with_context(|| {
            format!(
                "console token entry {} ({name}) is not NAME=ROLE:TOKEN",
                n + 1
            )
        })?;
        let name = name.trim();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_graphic()) {
            bail!(
                "console token entry {}: the name must be non-empty printable ASCII",
                n + 1
            );
        }
        let role = Role::parse(role).with_context(|| format!("console token of {name}"))?;
        if token.trim().len() < 16 {
            bail!("console token of {name} is shorter than 16 characters: use a long random token (e.g. `openssl rand -hex 32`)");
        }
        if out.iter().any(|e| e.name == name) {
            bail!("console token entries name {name} twice");
        }
        out.push(TokenEntry {
            name: name.to_string(),
            role,
            token: SecretString::from(token.trim().to_string()),
        });
    }
    Ok(out)
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

fn random_hex() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

impl Auth {
    /// From the configuration; refused when nothing authenticates unless `anonymous`
    /// (`--insecure-no-auth`).
    pub fn new(
        tokens: Option<&SecretString>,
        header: Option<TrustedHeader>,
        origin: Option<String>,
        anonymous: bool,
    ) -> Result<Auth> {
        let tokens = match tokens {
            Some(t) => parse_tokens(t.expose_secret())?,
            None => Vec::new(),
        };
        if tokens.is_empty() && header.is_none() && !anonymous {
            bail!(
                "refusing to start the console without authentication: set PAYSAGA_CONSOLE_TOKENS \
                 (or --tokens-file) to NAME=ROLE:TOKEN entries, or --trusted-identity-header behind \
                 an authenticating proxy; --insecure-no-auth opens it read-only to anyone who reaches it"
            );
        }
        Ok(Auth {
            tokens,
            header,
            anonymous,
            origin: origin.map(|o| o.trim_end_matches('/').to_string()),
            key: rand::random(),
            sessions: Mutex::new(HashMap::new()),
        })
    }

    /// Whether the login form is of any use (tokens are configured).
    pub fn has_tokens(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// Whether the session cookie must be `Secure` (the console is served over https).
    pub fn secure_cookie(&self) -> bool {
        self.origin
            .as_deref()
            .is_some_and(|o| o.starts_with("https://"))
    }

    fn csrf_for(&self, what: &str) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(what.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// The configured token `presented` is, if any (compared in constant time).
    fn token_owner(&self, presented: &str) -> Option<(&str, Role)> {
        let presented = digest(presented);
        let mut found = None;
        for e in &self.tokens {
            if bool::from(digest(e.token.expose_secret()).ct_eq(&presented)) {
                found = Some((e.name.as_str(), e.role));
            }
        }
        found
    }

    /// Exchanges a token for a new session: its cookie value, or `None` for an unknown token.
    pub fn login(&self, token: &str) -> Option<(String, Identity)> {
        let (name, role) = self.token_owner(token.trim())?;
        let id = random_hex();
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        sessions.insert(
            hex::encode(digest(&id)),
            Session {
                name: name.to_string(),
                role,
                expires: now + SESSION_TTL,
            },
        );
        let identity = Identity {
            name: name.to_string(),
            role,
            csrf: self.csrf_for(&format!("session:{id}")),
            via: Via::Session(id.clone()),
        };
        Some((id, identity))
    }

    /// Ends a session.
    pub fn logout(&self, identity: &Identity) {
        if let Via::Session(id) = &identity.via {
            self.sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&hex::encode(digest(id)));
        }
    }

    /// Who sent the request: bearer token, session cookie, trusted header (in that order).
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Identity, Denied> {
        if let Some(value) = headers.get(axum::http::header::AUTHORIZATION) {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .ok_or(Denied::Unauthenticated)?;
            let (name, role) = self.token_owner(token).ok_or(Denied::Unauthenticated)?;
            return Ok(Identity {
                name: name.to_string(),
                role,
                via: Via::Bearer,
                csrf: String::new(),
            });
        }
        if let Some(id) = cookie(headers, COOKIE) {
            let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(s) = sessions
                .get(&hex::encode(digest(&id)))
                .filter(|s| s.expires > Instant::now())
            {
                return Ok(Identity {
                    name: s.name.clone(),
                    role: s.role,
                    csrf: self.csrf_for(&format!("session:{id}")),
                    via: Via::Session(id),
                });
            }
        }
        if let Some(h) = &self.header {
            if let Some(name) = headers
                .get(&h.name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|n| !n.is_empty())
            {
                let role = if h.operators.iter().any(|o| o == name) {
                    Role::Operator
                } else {
                    Role::Viewer
                };
                return Ok(Identity {
                    name: name.to_string(),
                    role,
                    csrf: self.csrf_for(&format!("header:{name}")),
                    via: Via::Header,
                });
            }
        }
        if self.anonymous {
            return Ok(Identity {
                name: "anonymous".to_string(),
                role: Role::Viewer,
                csrf: self.csrf_for("anonymous"),
                via: Via::Anonymous,
            });
        }
        Err(Denied::Unauthenticated)
    }

    /// A state-changing request must come from the console's own pages: `Sec-Fetch-Site`
    /// (when the browser sends it) says `same-origin`, and `Origin` (when sent) is the
    /// console's.
    pub fn same_origin(&self, method: &Method, headers: &HeaderMap) -> Result<(), Denied> {
        if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
            return Ok(());
        }
        let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
        if let Some(site) = header("sec-fetch-site") {
            if site != "same-origin" {
                return Err(Denied::CrossSite("Sec-Fetch-Site is not same-origin"));
            }
        }
        if let Some(origin) = header("origin") {
            let origin = origin.trim_end_matches('/');
            let ok = match &self.origin {
                Some(expected) => origin == expected,
                None => header("host").is_some_and(|host| {
                    origin == format!("http://{host}") || origin == format!("https://{host}")
                }),
            };
            if !ok {
                return Err(Denied::CrossSite("Origin is not the console's"));
            }
        }
        Ok(())
    }

    /// The form's CSRF token must be the identity's (bearer requests need none: a browser
    /// never sends that header on its own).
    pub fn check_csrf(&self, identity: &Identity, presented: Option<&str>) -> Result<(), Denied> {
        if identity.via == Via::Bearer {
            return Ok(());
        }
        let presented = presented.unwrap_or_default();
        if !presented.is_empty() && bool::from(presented.as_bytes().ct_eq(identity.csrf.as_bytes()))
        {
            Ok(())
        } else {
            Err(Denied::CrossSite(
                "the form's CSRF token is missing or not this session's",
            ))
        }
    }
}

/// A cookie's value from the `Cookie` headers.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        let tokens = SecretString::from(
            "alice=operator:aaaaaaaaaaaaaaaaaaaa, victor=viewer:vvvvvvvvvvvvvvvvvvvv".to_string(),
        );
        Auth::new(Some(&tokens), None, None, false).unwrap_or_else(|e| panic!("{e:#}"))
    }

    #[test]
    fn tokens_map_to_their_identity_and_role_and_never_show_in_debug() {
        let a = auth();
        assert_eq!(
            a.token_owner("aaaaaaaaaaaaaaaaaaaa"),
            Some(("alice", Role::Operator))
        );
        assert_eq!(
            a.token_owner("vvvvvvvvvvvvvvvvvvvv"),
            Some(("victor", Role::Viewer))
        );
        assert_eq!(a.token_owner("aaaaaaaaaaaaaaaaaaab"), None);
        let debug = format!("{a:?}");
        assert!(
            debug.contains("alice") && !debug.contains("aaaaaaaa"),
            "{debug}"
        );
    }

    #[test]
    fn a_console_without_authentication_refuses_to_start() {
        let err = Auth::new(None, None, None, false)
            .err()
            .map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("without authentication")),
            "{err:?}"
        );
        let short = SecretString::from("bob=operator:short".to_string());
        assert!(Auth::new(Some(&short), None, None, false).is_err());
    }

    #[test]
    fn sessions_carry_their_own_csrf_token() {
        let a = auth();
        let (cookie_value, who) = a
            .login("aaaaaaaaaaaaaaaaaaaa")
            .unwrap_or_else(|| panic!("login refused"));
        let mut headers = HeaderMap::new();
        headers.insert(
            axum::http::header::COOKIE,
            format!("other=1; {COOKIE}={cookie_value}")
                .parse()
                .unwrap_or_else(|_| panic!("header")),
        );
        let seen = a.authenticate(&headers).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(seen.name, "alice");
        assert_eq!(seen.csrf, who.csrf);
        assert!(a.check_csrf(&seen, Some(&who.csrf)).is_ok());
        assert!(a.check_csrf(&seen, None).is_err());
        let (_, other) = a
            .login("aaaaaaaaaaaaaaaaaaaa")
            .unwrap_or_else(|| panic!("login refused"));
        assert!(a.check_csrf(&seen, Some(&other.csrf)).is_err());
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap_or_else(|_| panic!("header {k}")));
        }
        h
    }

    #[test]
    fn the_trusted_header_is_an_identity_only_when_configured_and_maps_operators() {
        assert_eq!(
            auth()
                .authenticate(&headers(&[("x-forwarded-user", "mallory")]))
                .err(),
            Some(Denied::Unauthenticated)
        );
        let proxied = Auth::new(
            None,
            Some(TrustedHeader {
                name: axum::http::HeaderName::from_static("x-forwarded-user"),
                operators: vec!["alice".into()],
            }),
            Some("https://console.example/".into()),
            false,
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        let alice = proxied
            .authenticate(&headers(&[("x-forwarded-user", "alice")]))
            .unwrap_or_else(|e| panic!("{e:?}"));
        let bob = proxied
            .authenticate(&headers(&[("x-forwarded-user", "bob")]))
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!((alice.role, bob.role), (Role::Operator, Role::Viewer));
        assert_eq!(alice.actor(), "console:alice");
        // Each identity's forms carry its own token.
        assert!(proxied.check_csrf(&alice, Some(&bob.csrf)).is_err());
        assert!(proxied.check_csrf(&alice, Some(&alice.csrf)).is_ok());
        assert!(proxied.secure_cookie());
        // Only the configured origin may post.
        let post = Method::POST;
        assert!(proxied
            .same_origin(&post, &headers(&[("origin", "https://console.example")]))
            .is_ok());
        assert!(proxied
            .same_origin(&post, &headers(&[("origin", "https://evil.example")]))
            .is_err());
        assert!(proxied
            .same_origin(&post, &headers(&[("sec-fetch-site", "same-site")]))
            .is_err());
        assert!(proxied
            .same_origin(&Method::GET, &headers(&[("sec-fetch-site", "cross-site")]))
            .is_ok());
    }
}
