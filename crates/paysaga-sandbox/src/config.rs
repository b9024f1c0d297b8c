//! Credentials the sandbox checks and signs with, and the timing of its scripted progress.

use std::time::Duration;

use secrecy::SecretString;

use crate::Error;

/// An OAuth2 client-credentials pair.
#[derive(Debug, Clone)]
pub struct ClientCredentials {
    /// `client_id` clients must send.
    pub client_id: String,
    /// `client_secret` clients must send.
    pub client_secret: SecretString,
}

/// Lumanu credentials.
#[derive(Debug, Clone)]
pub struct LumanuCredentials {
    /// OAuth2 client credentials (the only way to authenticate).
    pub client: ClientCredentials,
    /// If set, token requests must carry this `audience`.
    pub audience: Option<String>,
    /// Key of the `X-Signature` HMAC-SHA256 on webhooks.
    pub webhook_secret: SecretString,
}

/// Blaaiz credentials (OAuth2 client credentials and/or the legacy API key).
#[derive(Debug, Clone)]
pub struct BlaaizCredentials {
    /// OAuth2 client credentials for `POST /oauth/token`.
    pub client: Option<ClientCredentials>,
    /// Legacy `x-blaaiz-api-key` value.
    pub api_key: Option<SecretString>,
    /// Key of the `x-blaaiz-signature` HMAC-SHA256 on webhooks.
    pub webhook_secret: SecretString,
}

/// Lean credentials (OAuth2 client credentials and/or the `lean-app-token`).
#[derive(Debug, Clone)]
pub struct LeanCredentials {
    /// OAuth2 client credentials for `POST /oauth2/token`.
    pub client: Option<ClientCredentials>,
    /// Legacy `lean-app-token` header value.
    pub app_token: Option<SecretString>,
    /// Key of the `lean-signature` HMAC-SHA512 on webhooks.
    pub webhook_secret: SecretString,
}

/// Per-provider credentials. Secrets are [`SecretString`]s: never logged, redacted in `Debug`.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// Lumanu.
    pub lumanu: LumanuCredentials,
    /// Blaaiz.
    pub blaaiz: BlaaizCredentials,
    /// Lean.
    pub lean: LeanCredentials,
}

impl Credentials {
    /// Reads the `PAYSAGA_*` variables of `docs/PROVIDER-CONTRACTS.md`; each may instead be
    /// given as `NAME_FILE`, the path of a file holding the value (trailing newline ignored).
    ///
    /// Required: `PAYSAGA_LUMANU_CLIENT_ID`, `PAYSAGA_LUMANU_CLIENT_SECRET` and the three
    /// `PAYSAGA_*_WEBHOOK_SECRET`s; for Blaaiz a client id + secret and/or
    /// `PAYSAGA_BLAAIZ_API_KEY`; for Lean a client id + secret and/or `PAYSAGA_LEAN_APP_TOKEN`.
    /// Optional: `PAYSAGA_LUMANU_AUDIENCE`.
    pub fn from_env() -> Result<Self, Error> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Well-known development credentials, for tests and local runs only; never use them
    /// anywhere reachable. Values (also listed in the "Sandbox decisions" of
    /// `docs/PROVIDER-CONTRACTS.md`): client ids `sandbox-{provider}-client`, client secrets
    /// `sandbox-{provider}-secret`, webhook secrets `sandbox-{provider}-webhook-secret`,
    /// Blaaiz API key `sandbox-blaaiz-api-key`, Lean app token `sandbox-lean-app-token`.
    pub fn dev() -> Self {
        fn client(p: &str) -> ClientCredentials {
            ClientCredentials {
                client_id: format!("sandbox-{p}-client"),
                client_secret: SecretString::from(format!("sandbox-{p}-secret")),
            }
        }
        fn hook(p: &str) -> SecretString {
            SecretString::from(format!("sandbox-{p}-webhook-secret"))
        }
        Self {
            lumanu: LumanuCredentials {
                client: client("lumanu"),
                audience: None,
                webhook_secret: hook("lumanu"),
            },
            blaaiz: BlaaizCredentials {
                client: Some(client("blaaiz")),
                api_key: Some(SecretString::from("sandbox-blaaiz-api-key")),
                webhook_secret: hook("blaaiz"),
            },
            lean: LeanCredentials {
                client: Some(client("lean")),
                app_token: Some(SecretString::from("sandbox-lean-app-token")),
                webhook_secret: hook("lean"),
            },
        }
    }

    /// `from_env` over an arbitrary variable lookup (testable without touching the process env).
    pub(crate) fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let env = Env { lookup: &lookup };
        let lumanu = LumanuCredentials {
            client: env
                .client("PAYSAGA_LUMANU")?
                .ok_or_else(|| Error::MissingEnv("PAYSAGA_LUMANU_CLIENT_ID".into()))?,
            audience: env.get("PAYSAGA_LUMANU_AUDIENCE")?,
            webhook_secret: env.secret_required("PAYSAGA_LUMANU_WEBHOOK_SECRET")?,
        };
        let blaaiz = BlaaizCredentials {
            client: env.client("PAYSAGA_BLAAIZ")?,
            api_key: env.secret("PAYSAGA_BLAAIZ_API_KEY")?,
            webhook_secret: env.secret_required("PAYSAGA_BLAAIZ_WEBHOOK_SECRET")?,
        };
        if blaaiz.client.is_none() && blaaiz.api_key.is_none() {
            return Err(Error::MissingEnv(
                "PAYSAGA_BLAAIZ_CLIENT_ID/_CLIENT_SECRET or PAYSAGA_BLAAIZ_API_KEY".into(),
            ));
        }
        let lean = LeanCredentials {
            client: env.client("PAYSAGA_LEAN")?,
            app_token: env.secret("PAYSAGA_LEAN_APP_TOKEN")?,
            webhook_secret: env.secret_required("PAYSAGA_LEAN_WEBHOOK_SECRET")?,
        };
        if lean.client.is_none() && lean.app_token.is_none() {
            return Err(Error::MissingEnv(
                "PAYSAGA_LEAN_CLIENT_ID/_CLIENT_SECRET or PAYSAGA_LEAN_APP_TOKEN".into(),
            ));
        }
        Ok(Self {
            lumanu,
            blaaiz,
            lean,
        })
    }
}

struct Env<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl Env<'_> {
    /// `NAME`, else the content of the file named by `NAME_FILE`; empty counts as unset.
    fn get(&self, name: &str) -> Result<Option<String>, Error> {
        if let Some(v) = (self.lookup)(name).filter(|v| !v.is_empty()) {
            return Ok(Some(v));
        }
        let file_var = format!("{name}_FILE");
        let Some(path) = (self.lookup)(&file_var).filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        let content = std::fs::read_to_string(&path).map_err(|source| Error::EnvFile {
            var: file_var,
            path,
            source,
        })?;
        let value = content.trim_end_matches(['\n', '\r']).to_owned();
        Ok((!value.is_empty()).then_some(value))
    }

    fn secret(&self, name: &str) -> Result<Option<SecretString>, Error> {
        Ok(self.get(name)?.map(SecretString::from))
    }

    fn secret_required(&self, name: &str) -> Result<SecretString, Error> {
        self.secret(name)?
            .ok_or_else(|| Error::MissingEnv(name.to_owned()))
    }

    fn client(&self, prefix: &str) -> Result<Option<ClientCredentials>, Error> {
        let id = self.get(&format!("{prefix}_CLIENT_ID"))?;
        let secret = self.secret(&format!("{prefix}_CLIENT_SECRET"))?;
        match (id, secret) {
            (Some(client_id), Some(client_secret)) => Ok(Some(ClientCredentials {
                client_id,
                client_secret,
            })),
            (None, None) => Ok(None),
            (Some(_), None) => Err(Error::Credentials(format!(
                "{prefix}_CLIENT_ID is set but {prefix}_CLIENT_SECRET is not"
            ))),
            (None, Some(_)) => Err(Error::Credentials(format!(
                "{prefix}_CLIENT_SECRET is set but {prefix}_CLIENT_ID is not"
            ))),
        }
    }
}

/// Delays of the sandbox's scripted progress. The defaults are short, for tests.
#[derive(Debug, Clone)]
pub struct Timing {
    /// Lumanu: funding invoice created -> deposit arrives (`transfer.created`). Default 200 ms.
    pub invoice_paid: Duration,
    /// Blaaiz: `id_file` attached -> review outcome (`VERIFIED`/`REJECTED`). Default 300 ms.
    pub kyc_review: Duration,
    /// Lean: customer or destination created -> the simulated LinkSDK adds the payment source
    /// or beneficiary. Default 200 ms.
    pub lean_link: Duration,
    /// Lean: beneficiary `AWAITING_BENEFICIARY_COOL_OFF` -> `ACTIVE`. Default 300 ms.
    pub cool_off: Duration,
    /// Each step of a payment's progress: Lumanu payable awaiting_payment -> paid, Blaaiz payout
    /// PENDING -> final, Lean intent -> payment.created -> payment.updated. Default 200 ms.
    pub bank_settlement: Duration,
    /// First webhook retry delay; doubles each attempt. Default 100 ms.
    pub webhook_retry_base: Duration,
    /// Delivery attempts per webhook. Default 5.
    pub webhook_attempts: u32,
    /// Per-attempt webhook timeout. Default 10 s (Lean's documented limit).
    pub webhook_timeout: Duration,
    /// Lumanu access-token lifetime. Default 1 h.
    pub lumanu_token_ttl: Duration,
    /// Blaaiz access-token lifetime. Default 900 s (documented).
    pub blaaiz_token_ttl: Duration,
    /// Lean access-token lifetime. Default 1 h.
    pub lean_token_ttl: Duration,
    /// Validity of a Blaaiz pre-signed upload URL. Default 15 min.
    pub upload_url_ttl: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            invoice_paid: Duration::from_millis(200),
            kyc_review: Duration::from_millis(300),
            lean_link: Duration::from_millis(200),
            cool_off: Duration::from_millis(300),
            bank_settlement: Duration::from_millis(200),
            webhook_retry_base: Duration::from_millis(100),
            webhook_attempts: 5,
            webhook_timeout: Duration::from_secs(10),
            lumanu_token_ttl: Duration::from_secs(3600),
            blaaiz_token_ttl: Duration::from_secs(900),
            lean_token_ttl: Duration::from_secs(3600),
            upload_url_ttl: Duration::from_secs(900),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use std::collections::HashMap;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    const BASE: &[(&str, &str)] = &[
        ("PAYSAGA_LUMANU_CLIENT_ID", "lc"),
        ("PAYSAGA_LUMANU_CLIENT_SECRET", "ls"),
        ("PAYSAGA_LUMANU_WEBHOOK_SECRET", "lw"),
        ("PAYSAGA_BLAAIZ_API_KEY", "bk"),
        ("PAYSAGA_BLAAIZ_WEBHOOK_SECRET", "bw"),
        ("PAYSAGA_LEAN_APP_TOKEN", "lt"),
        ("PAYSAGA_LEAN_WEBHOOK_SECRET", "nw"),
    ];

    #[test]
    fn reads_env_and_file_variants() {
        let dir = std::env::temp_dir().join(format!("paysaga-sandbox-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let file = dir.join("secret");
        std::fs::write(&file, "from-file\n").expect("write secret");
        let path = file.to_string_lossy().into_owned();
        let mut vars = BASE.to_vec();
        vars.retain(|(k, _)| *k != "PAYSAGA_LUMANU_CLIENT_SECRET");
        vars.push(("PAYSAGA_LUMANU_CLIENT_SECRET_FILE", &path));
        let creds = Credentials::from_lookup(lookup(&vars)).expect("credentials");
        assert_eq!(
            creds.lumanu.client.client_secret.expose_secret(),
            "from-file"
        );
        assert!(creds.blaaiz.client.is_none());
        assert_eq!(
            creds.blaaiz.api_key.as_ref().map(|k| k.expose_secret()),
            Some("bk")
        );
        let debug = format!("{creds:?}");
        assert!(
            !debug.contains("from-file") && !debug.contains("bk\""),
            "{debug}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn missing_values_are_errors() {
        let mut vars = BASE.to_vec();
        vars.retain(|(k, _)| *k != "PAYSAGA_LEAN_WEBHOOK_SECRET");
        assert!(matches!(
            Credentials::from_lookup(lookup(&vars)),
            Err(Error::MissingEnv(v)) if v == "PAYSAGA_LEAN_WEBHOOK_SECRET"
        ));
        let mut vars = BASE.to_vec();
        vars.push(("PAYSAGA_LEAN_CLIENT_ID", "x"));
        assert!(matches!(
            Credentials::from_lookup(lookup(&vars)),
            Err(Error::Credentials(_))
        ));
    }
}
