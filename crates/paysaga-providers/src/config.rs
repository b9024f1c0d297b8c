//! Provider configuration from `PAYSAGA_*` environment variables.
//!
//! Every variable may instead be given as `NAME_FILE`, the path of a file holding the value
//! (a trailing newline is removed): use that for secrets mounted from a secret store. Setting
//! both `NAME` and `NAME_FILE` is an error.
//!
//! A provider none of whose variables is set is not configured (`None`). A provider with some
//! of them set must have all it needs, or [`ProvidersConfig::from_env`] fails naming the first
//! missing variable:
//!
//! | provider | required | optional |
//! |---|---|---|
//! | Lumanu | `PAYSAGA_LUMANU_BASE_URL`, `_AUTH_URL`, `_CLIENT_ID`, `_CLIENT_SECRET`, `_WEBHOOK_SECRET` | `_AUDIENCE` |
//! | Blaaiz | `PAYSAGA_BLAAIZ_BASE_URL`, `_WEBHOOK_SECRET`, and `_CLIENT_ID` + `_CLIENT_SECRET` or `_API_KEY` | `_SCOPE` |
//! | Lean | `PAYSAGA_LEAN_BASE_URL`, `_WEBHOOK_SECRET`, and `_CLIENT_ID` + `_CLIENT_SECRET` or `_APP_TOKEN` | `_TOKEN_URL` |
//!
//! `PAYSAGA_PROVIDER_CONNECT_TIMEOUT_SECS` (default 5) and
//! `PAYSAGA_PROVIDER_REQUEST_TIMEOUT_SECS` (default 30) apply to all three.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;

use crate::blaaiz::{BlaaizAuth, BlaaizClient, BlaaizConfig, DEFAULT_SCOPE};
use crate::lean::{LeanAuth, LeanClient, LeanConfig};
use crate::lumanu::{LumanuClient, LumanuConfig};
use crate::observe::CallObserver;
use crate::Provider;

/// Timeouts applied to every HTTP call of a client.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HttpOptions {
    /// Time allowed to establish a connection (default 5 s).
    pub connect_timeout: Duration,
    /// Time allowed for a whole request, from sending to the end of the body (default 30 s).
    pub request_timeout: Duration,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
        }
    }
}

impl HttpOptions {
    pub(crate) fn build_client(&self) -> reqwest::Client {
        let builder = reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .timeout(self.request_timeout)
            .user_agent(concat!("paysaga/", env!("CARGO_PKG_VERSION")));
        match builder.build() {
            Ok(client) => client,
            // Only fails if the TLS backend cannot initialise; fall back to defaults.
            Err(_) => reqwest::Client::new(),
        }
    }
}

/// A provider's client configuration plus the secret its webhooks are signed with.
#[derive(Debug, Clone)]
pub struct ProviderSettings<C> {
    /// What the API client needs.
    pub client: C,
    /// The webhook signing secret (`PAYSAGA_<PROVIDER>_WEBHOOK_SECRET`).
    pub webhook_secret: SecretString,
}

/// Configuration of the three providers; `None` for a provider that is not configured.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ProvidersConfig {
    /// Lumanu, if configured.
    pub lumanu: Option<ProviderSettings<LumanuConfig>>,
    /// Blaaiz, if configured.
    pub blaaiz: Option<ProviderSettings<BlaaizConfig>>,
    /// Lean, if configured.
    pub lean: Option<ProviderSettings<LeanConfig>>,
}

/// The clients of the configured providers (see [`ProvidersConfig::clients`]). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Clients {
    /// Lumanu, if configured.
    pub lumanu: Option<LumanuClient>,
    /// Blaaiz, if configured.
    pub blaaiz: Option<BlaaizClient>,
    /// Lean, if configured.
    pub lean: Option<LeanClient>,
}

/// Why the configuration could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The provider is partly configured and this variable is missing.
    #[error("{provider} is partly configured but {variable} is not set")]
    Missing {
        /// Provider concerned.
        provider: Provider,
        /// The variable to set (or its `_FILE` variant).
        variable: String,
    },
    /// `NAME` and `NAME_FILE` are both set.
    #[error("both {variable} and {variable}_FILE are set; set only one")]
    Ambiguous {
        /// The variable.
        variable: String,
    },
    /// `NAME_FILE` names a file that cannot be read.
    #[error("cannot read {variable}_FILE ({path}): {source}")]
    Unreadable {
        /// The variable.
        variable: String,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The value is not valid.
    #[error("{variable} is invalid: {reason}")]
    Invalid {
        /// The variable.
        variable: String,
        /// Why.
        reason: String,
    },
}

/// A value read from the environment; secrets are wrapped before they leave the reader.
struct Value(String);

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Value(..)")
    }
}

struct Reader<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl Reader<'_> {
    fn get(&self, name: &str) -> Result<Option<Value>, ConfigError> {
        let direct = (self.lookup)(name).filter(|v| !v.is_empty());
        let file_var = format!("{name}_FILE");
        let file = (self.lookup)(&file_var).filter(|v| !v.is_empty());
        match (direct, file) {
            (Some(_), Some(_)) => Err(ConfigError::Ambiguous {
                variable: name.to_owned(),
            }),
            (Some(v), None) => Ok(Some(Value(v))),
            (None, Some(path)) => {
                let path = PathBuf::from(path);
                let mut text =
                    std::fs::read_to_string(&path).map_err(|source| ConfigError::Unreadable {
                        variable: name.to_owned(),
                        path: path.clone(),
                        source,
                    })?;
                while text.ends_with('\n') || text.ends_with('\r') {
                    text.pop();
                }
                Ok(Some(Value(text)))
            }
            (None, None) => Ok(None),
        }
    }

    fn any_set(&self, names: &[&str]) -> Result<bool, ConfigError> {
        for name in names {
            if self.get(name)?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn require(&self, provider: Provider, name: &str) -> Result<Value, ConfigError> {
        self.get(name)?.ok_or_else(|| ConfigError::Missing {
            provider,
            variable: name.to_owned(),
        })
    }

    fn url(&self, provider: Provider, name: &str) -> Result<String, ConfigError> {
        let v = self.require(provider, name)?.0;
        check_url(name, &v)?;
        Ok(v.trim_end_matches('/').to_owned())
    }

    fn secs(&self, name: &str, default: u64) -> Result<Duration, ConfigError> {
        match self.get(name)? {
            None => Ok(Duration::from_secs(default)),
            Some(v) => {
                v.0.trim()
                    .parse::<u64>()
                    .map(Duration::from_secs)
                    .map_err(|_| ConfigError::Invalid {
                        variable: name.to_owned(),
                        reason: "expected a whole number of seconds".to_owned(),
                    })
            }
        }
    }
}

fn check_url(name: &str, value: &str) -> Result<(), ConfigError> {
    match reqwest::Url::parse(value) {
        Ok(url) if url.scheme() == "http" || url.scheme() == "https" => Ok(()),
        _ => Err(ConfigError::Invalid {
            variable: name.to_owned(),
            reason: "expected an http(s) URL".to_owned(),
        }),
    }
}

fn secret(v: Value) -> SecretString {
    SecretString::from(v.0)
}

const LUMANU_VARS: &[&str] = &[
    "PAYSAGA_LUMANU_BASE_URL",
    "PAYSAGA_LUMANU_AUTH_URL",
    "PAYSAGA_LUMANU_CLIENT_ID",
    "PAYSAGA_LUMANU_CLIENT_SECRET",
    "PAYSAGA_LUMANU_AUDIENCE",
    "PAYSAGA_LUMANU_WEBHOOK_SECRET",
];
const BLAAIZ_VARS: &[&str] = &[
    "PAYSAGA_BLAAIZ_BASE_URL",
    "PAYSAGA_BLAAIZ_CLIENT_ID",
    "PAYSAGA_BLAAIZ_CLIENT_SECRET",
    "PAYSAGA_BLAAIZ_SCOPE",
    "PAYSAGA_BLAAIZ_API_KEY",
    "PAYSAGA_BLAAIZ_WEBHOOK_SECRET",
];
const LEAN_VARS: &[&str] = &[
    "PAYSAGA_LEAN_BASE_URL",
    "PAYSAGA_LEAN_APP_TOKEN",
    "PAYSAGA_LEAN_CLIENT_ID",
    "PAYSAGA_LEAN_CLIENT_SECRET",
    "PAYSAGA_LEAN_TOKEN_URL",
    "PAYSAGA_LEAN_WEBHOOK_SECRET",
];

/// The sandbox's well-known development secrets (`paysaga sandbox --dev-credentials`,
/// [`sandbox_env`]): public, so a worker holding one talks to a fake provider or is exposed.
const DEVELOPMENT_SECRETS: &[&str] = &[
    "sandbox-lumanu-secret",
    "sandbox-lumanu-webhook-secret",
    "sandbox-blaaiz-secret",
    "sandbox-blaaiz-api-key",
    "sandbox-blaaiz-webhook-secret",
    "sandbox-lean-secret",
    "sandbox-lean-app-token",
    "sandbox-lean-webhook-secret",
];

/// The `PAYSAGA_*` variables (directly or through `NAME_FILE`) that hold one of the sandbox's
/// well-known development secrets. A production build's worker refuses to start when this is
/// not empty. Unreadable files are left to [`ProvidersConfig::from_lookup`] to report.
pub fn development_credentials(lookup: impl Fn(&str) -> Option<String>) -> Vec<&'static str> {
    let r = Reader { lookup: &lookup };
    LUMANU_VARS
        .iter()
        .chain(BLAAIZ_VARS)
        .chain(LEAN_VARS)
        .copied()
        .filter(|name| {
            matches!(r.get(name), Ok(Some(Value(v))) if DEVELOPMENT_SECRETS.contains(&v.as_str()))
        })
        .collect()
}

impl ProvidersConfig {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `lookup` (a variable name to its value), e.g. a map in
    /// tests.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let r = Reader { lookup: &lookup };
        let http = HttpOptions {
            connect_timeout: r.secs("PAYSAGA_PROVIDER_CONNECT_TIMEOUT_SECS", 5)?,
            request_timeout: r.secs("PAYSAGA_PROVIDER_REQUEST_TIMEOUT_SECS", 30)?,
        };
        Ok(ProvidersConfig {
            lumanu: lumanu(&r, &http)?,
            blaaiz: blaaiz(&r, &http)?,
            lean: lean(&r, &http)?,
        })
    }

    /// The webhook signing secret of `provider`, if that provider is configured.
    pub fn webhook_secret(&self, provider: Provider) -> Option<&SecretString> {
        match provider {
            Provider::Lumanu => self.lumanu.as_ref().map(|s| &s.webhook_secret),
            Provider::Blaaiz => self.blaaiz.as_ref().map(|s| &s.webhook_secret),
            Provider::Lean => self.lean.as_ref().map(|s| &s.webhook_secret),
        }
    }

    /// Builds the API clients of the configured providers.
    pub fn clients(&self) -> Clients {
        Clients {
            lumanu: self
                .lumanu
                .as_ref()
                .map(|s| LumanuClient::new(s.client.clone())),
            blaaiz: self
                .blaaiz
                .as_ref()
                .map(|s| BlaaizClient::new(s.client.clone())),
            lean: self
                .lean
                .as_ref()
                .map(|s| LeanClient::new(s.client.clone())),
        }
    }

    /// Like [`ProvidersConfig::clients`], the clients (and their clones) reporting every HTTP
    /// attempt, token fetches included, to `observer` (see [`crate::observe`]).
    pub fn clients_observed(&self, observer: Arc<dyn CallObserver>) -> Clients {
        crate::observe::with_observer(observer, || self.clients())
    }

    /// Like [`ProvidersConfig::clients_observed`], the clients also asking `budget` for a slot
    /// before every request and telling it of every `429` (see [`crate::budget`]).
    pub fn clients_budgeted(
        &self,
        observer: Arc<dyn CallObserver>,
        budget: Arc<dyn crate::budget::RequestBudget>,
    ) -> Clients {
        crate::budget::with_budget(budget, || self.clients_observed(observer))
    }

    /// The providers that are configured.
    pub fn configured(&self) -> Vec<Provider> {
        Provider::ALL
            .into_iter()
            .filter(|p| self.webhook_secret(*p).is_some())
            .collect()
    }

    /// The longest whole-request timeout of the configured providers (the default when none
    /// is configured): how long a request may still be in flight after it was sent.
    pub fn longest_request_timeout(&self) -> Duration {
        [
            self.lumanu.as_ref().map(|p| p.client.http.request_timeout),
            self.blaaiz.as_ref().map(|p| p.client.http.request_timeout),
            self.lean.as_ref().map(|p| p.client.http.request_timeout),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(HttpOptions::default().request_timeout)
    }
}

fn lumanu(
    r: &Reader<'_>,
    http: &HttpOptions,
) -> Result<Option<ProviderSettings<LumanuConfig>>, ConfigError> {
    if !r.any_set(LUMANU_VARS)? {
        return Ok(None);
    }
    let p = Provider::Lumanu;
    let client = LumanuConfig {
        base_url: r.url(p, "PAYSAGA_LUMANU_BASE_URL")?,
        auth_url: r.url(p, "PAYSAGA_LUMANU_AUTH_URL")?,
        client_id: r.require(p, "PAYSAGA_LUMANU_CLIENT_ID")?.0,
        client_secret: secret(r.require(p, "PAYSAGA_LUMANU_CLIENT_SECRET")?),
        audience: r.get("PAYSAGA_LUMANU_AUDIENCE")?.map(|v| v.0),
        http: http.clone(),
    };
    let webhook_secret = secret(r.require(p, "PAYSAGA_LUMANU_WEBHOOK_SECRET")?);
    Ok(Some(ProviderSettings {
        client,
        webhook_secret,
    }))
}

fn blaaiz(
    r: &Reader<'_>,
    http: &HttpOptions,
) -> Result<Option<ProviderSettings<BlaaizConfig>>, ConfigError> {
    if !r.any_set(BLAAIZ_VARS)? {
        return Ok(None);
    }
    let p = Provider::Blaaiz;
    let base_url = r.url(p, "PAYSAGA_BLAAIZ_BASE_URL")?;
    let client_id = r.get("PAYSAGA_BLAAIZ_CLIENT_ID")?;
    let client_secret = r.get("PAYSAGA_BLAAIZ_CLIENT_SECRET")?;
    let api_key = r.get("PAYSAGA_BLAAIZ_API_KEY")?;
    let auth = match (client_id, client_secret, api_key) {
        (Some(id), Some(sec), _) => BlaaizAuth::OAuth {
            client_id: id.0,
            client_secret: secret(sec),
            scope: r
                .get("PAYSAGA_BLAAIZ_SCOPE")?
                .map(|v| v.0)
                .unwrap_or_else(|| DEFAULT_SCOPE.to_owned()),
        },
        (Some(_), None, _) => return Err(missing(p, "PAYSAGA_BLAAIZ_CLIENT_SECRET")),
        (None, Some(_), _) => return Err(missing(p, "PAYSAGA_BLAAIZ_CLIENT_ID")),
        (None, None, Some(key)) => BlaaizAuth::ApiKey(secret(key)),
        (None, None, None) => return Err(missing(p, "PAYSAGA_BLAAIZ_CLIENT_ID")),
    };
    let webhook_secret = secret(r.require(p, "PAYSAGA_BLAAIZ_WEBHOOK_SECRET")?);
    Ok(Some(ProviderSettings {
        client: BlaaizConfig {
            base_url,
            auth,
            http: http.clone(),
        },
        webhook_secret,
    }))
}

fn lean(
    r: &Reader<'_>,
    http: &HttpOptions,
) -> Result<Option<ProviderSettings<LeanConfig>>, ConfigError> {
    if !r.any_set(LEAN_VARS)? {
        return Ok(None);
    }
    let p = Provider::Lean;
    let base_url = r.url(p, "PAYSAGA_LEAN_BASE_URL")?;
    let client_id = r.get("PAYSAGA_LEAN_CLIENT_ID")?;
    let client_secret = r.get("PAYSAGA_LEAN_CLIENT_SECRET")?;
    let app_token = r.get("PAYSAGA_LEAN_APP_TOKEN")?;
    let auth = match (client_id, client_secret, app_token) {
        (Some(id), Some(sec), _) => {
            let token_url = match r.get("PAYSAGA_LEAN_TOKEN_URL")? {
                Some(v) => {
                    check_url("PAYSAGA_LEAN_TOKEN_URL", &v.0)?;
                    v.0
                }
                None => format!("{base_url}/oauth2/token"),
            };
            LeanAuth::OAuth {
                client_id: id.0,
                client_secret: secret(sec),
                token_url,
            }
        }
        (Some(_), None, _) => return Err(missing(p, "PAYSAGA_LEAN_CLIENT_SECRET")),
        (None, Some(_), _) => return Err(missing(p, "PAYSAGA_LEAN_CLIENT_ID")),
        (None, None, Some(token)) => LeanAuth::AppToken(secret(token)),
        (None, None, None) => return Err(missing(p, "PAYSAGA_LEAN_APP_TOKEN")),
    };
    let webhook_secret = secret(r.require(p, "PAYSAGA_LEAN_WEBHOOK_SECRET")?);
    Ok(Some(ProviderSettings {
        client: LeanConfig {
            base_url,
            auth,
            http: http.clone(),
        },
        webhook_secret,
    }))
}

fn missing(provider: Provider, variable: &str) -> ConfigError {
    ConfigError::Missing {
        provider,
        variable: variable.to_owned(),
    }
}

/// The `PAYSAGA_*` variables that point the three clients at a provider sandbox
/// (`paysaga sandbox --dev-credentials`) listening at `base`, with the sandbox's well-known,
/// public development credentials (Lean by app token). For demos and tests only: these values
/// open nothing at a real provider. Add `PAYSAGA_PROVIDER_REQUEST_TIMEOUT_SECS` as needed.
pub fn sandbox_env(base: &str) -> Vec<(&'static str, String)> {
    let base = base.trim_end_matches('/');
    vec![
        ("PAYSAGA_LUMANU_BASE_URL", format!("{base}/lumanu/api/rest")),
        ("PAYSAGA_LUMANU_AUTH_URL", format!("{base}/lumanu")),
        ("PAYSAGA_LUMANU_CLIENT_ID", "sandbox-lumanu-client".into()),
        (
            "PAYSAGA_LUMANU_CLIENT_SECRET",
            "sandbox-lumanu-secret".into(),
        ),
        (
            "PAYSAGA_LUMANU_WEBHOOK_SECRET",
            "sandbox-lumanu-webhook-secret".into(),
        ),
        ("PAYSAGA_BLAAIZ_BASE_URL", format!("{base}/blaaiz")),
        ("PAYSAGA_BLAAIZ_CLIENT_ID", "sandbox-blaaiz-client".into()),
        (
            "PAYSAGA_BLAAIZ_CLIENT_SECRET",
            "sandbox-blaaiz-secret".into(),
        ),
        (
            "PAYSAGA_BLAAIZ_WEBHOOK_SECRET",
            "sandbox-blaaiz-webhook-secret".into(),
        ),
        ("PAYSAGA_LEAN_BASE_URL", format!("{base}/lean")),
        ("PAYSAGA_LEAN_APP_TOKEN", "sandbox-lean-app-token".into()),
        (
            "PAYSAGA_LEAN_WEBHOOK_SECRET",
            "sandbox-lean-webhook-secret".into(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use std::collections::HashMap;

    #[test]
    fn the_sandbox_development_credentials_are_recognised_and_real_ones_are_not() {
        let dev: HashMap<&str, String> = sandbox_env("http://127.0.0.1:8099").into_iter().collect();
        let found = development_credentials(|n| dev.get(n).cloned());
        for name in [
            "PAYSAGA_LUMANU_CLIENT_SECRET",
            "PAYSAGA_LUMANU_WEBHOOK_SECRET",
            "PAYSAGA_BLAAIZ_CLIENT_SECRET",
            "PAYSAGA_BLAAIZ_WEBHOOK_SECRET",
            "PAYSAGA_LEAN_APP_TOKEN",
            "PAYSAGA_LEAN_WEBHOOK_SECRET",
        ] {
            assert!(found.contains(&name), "{name} not recognised: {found:?}");
        }
        let real: HashMap<&str, String> = dev
            .iter()
            .map(|(k, v)| (*k, v.replace("sandbox-", "prod-")))
            .collect();
        assert!(development_credentials(|n| real.get(n).cloned()).is_empty());
    }

    fn cfg(vars: &[(&str, &str)]) -> Result<ProvidersConfig, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        ProvidersConfig::from_lookup(move |k| map.get(k).cloned())
    }

    #[test]
    fn nothing_set_means_nothing_configured() {
        let c = cfg(&[]).map_err(|e| e.to_string());
        let c = c
            .as_ref()
            .map(|c| (c.lumanu.is_none(), c.blaaiz.is_none(), c.lean.is_none()));
        assert_eq!(c, Ok((true, true, true)));
    }

    #[test]
    fn full_lumanu_and_half_blaaiz() {
        let lumanu = [
            (
                "PAYSAGA_LUMANU_BASE_URL",
                "http://127.0.0.1:9/lumanu/api/rest/",
            ),
            ("PAYSAGA_LUMANU_AUTH_URL", "http://127.0.0.1:9/lumanu"),
            ("PAYSAGA_LUMANU_CLIENT_ID", "id"),
            ("PAYSAGA_LUMANU_CLIENT_SECRET", "s3cr3t"),
            ("PAYSAGA_LUMANU_AUDIENCE", "aud"),
            ("PAYSAGA_LUMANU_WEBHOOK_SECRET", "wh"),
        ];
        let c = cfg(&lumanu);
        assert!(c.is_ok(), "{c:?}");
        if let Ok(c) = c {
            let l = c.lumanu.as_ref().map(|l| {
                (
                    l.client.base_url.clone(),
                    l.client.client_secret.expose_secret().to_owned(),
                )
            });
            assert_eq!(
                l,
                Some((
                    "http://127.0.0.1:9/lumanu/api/rest".to_owned(),
                    "s3cr3t".to_owned()
                ))
            );
            assert_eq!(c.configured(), vec![Provider::Lumanu]);
            assert!(!format!("{c:?}").contains("s3cr3t"));
        }
        let mut half = lumanu.to_vec();
        half.push(("PAYSAGA_BLAAIZ_BASE_URL", "http://127.0.0.1:9/blaaiz"));
        half.push(("PAYSAGA_BLAAIZ_CLIENT_ID", "id"));
        match cfg(&half) {
            Err(ConfigError::Missing {
                provider: Provider::Blaaiz,
                variable,
            }) => {
                assert_eq!(variable, "PAYSAGA_BLAAIZ_CLIENT_SECRET")
            }
            other => panic!("unexpected {other:?}"),
        }
        let mut half = lumanu.to_vec();
        half.retain(|(k, _)| *k != "PAYSAGA_LUMANU_AUTH_URL");
        match cfg(&half) {
            Err(e @ ConfigError::Missing { .. }) => {
                assert!(e.to_string().contains("PAYSAGA_LUMANU_AUTH_URL"))
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn file_variants_and_auth_modes() {
        let dir = std::env::temp_dir().join(format!("paysaga-config-test-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let key_file = dir.join("blaaiz-key");
        let wh_file = dir.join("wh");
        assert!(std::fs::write(&key_file, "legacy-key\n").is_ok());
        assert!(std::fs::write(&wh_file, "whsec\r\n").is_ok());
        let key_path = key_file.to_string_lossy().into_owned();
        let wh_path = wh_file.to_string_lossy().into_owned();
        let c = cfg(&[
            ("PAYSAGA_BLAAIZ_BASE_URL", "http://127.0.0.1:9/blaaiz"),
            ("PAYSAGA_BLAAIZ_API_KEY_FILE", &key_path),
            ("PAYSAGA_BLAAIZ_WEBHOOK_SECRET_FILE", &wh_path),
            ("PAYSAGA_LEAN_BASE_URL", "http://127.0.0.1:9/lean"),
            ("PAYSAGA_LEAN_CLIENT_ID", "lean-id"),
            ("PAYSAGA_LEAN_CLIENT_SECRET", "lean-secret"),
            ("PAYSAGA_LEAN_WEBHOOK_SECRET", "lean-wh"),
            ("PAYSAGA_PROVIDER_REQUEST_TIMEOUT_SECS", "12"),
        ]);
        let c = match c {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        let b = c.blaaiz.as_ref().map(|b| match &b.client.auth {
            BlaaizAuth::ApiKey(k) => (
                k.expose_secret().to_owned(),
                b.webhook_secret.expose_secret().to_owned(),
            ),
            BlaaizAuth::OAuth { .. } => (String::new(), String::new()),
        });
        assert_eq!(b, Some(("legacy-key".to_owned(), "whsec".to_owned())));
        let l = c.lean.as_ref().map(|l| match &l.client.auth {
            LeanAuth::OAuth { token_url, .. } => token_url.clone(),
            LeanAuth::AppToken(_) => String::new(),
        });
        assert_eq!(l.as_deref(), Some("http://127.0.0.1:9/lean/oauth2/token"));
        assert_eq!(
            c.lean.as_ref().map(|l| l.client.http.request_timeout),
            Some(Duration::from_secs(12))
        );
        assert!(!format!("{c:?}").contains("legacy-key"));
        assert!(!format!("{c:?}").contains("lean-secret"));

        let both = cfg(&[
            ("PAYSAGA_LEAN_APP_TOKEN", "x"),
            ("PAYSAGA_LEAN_APP_TOKEN_FILE", &key_path),
        ]);
        assert!(matches!(both, Err(ConfigError::Ambiguous { .. })));
        let unreadable = cfg(&[("PAYSAGA_LEAN_APP_TOKEN_FILE", "/nonexistent/paysaga/token")]);
        assert!(matches!(unreadable, Err(ConfigError::Unreadable { .. })));
        let bad_url = cfg(&[
            ("PAYSAGA_LEAN_BASE_URL", "not a url"),
            ("PAYSAGA_LEAN_APP_TOKEN", "t"),
        ]);
        assert!(matches!(bad_url, Err(ConfigError::Invalid { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
