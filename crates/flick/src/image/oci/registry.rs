//! A small client for the OCI distribution API: manifests, the authentication dance, blob URLs.
//!
//! Requests go out anonymously first. A `401` carries a `WWW-Authenticate` challenge:
//! - `Basic realm=..`: the configured credentials are sent as HTTP basic auth;
//! - `Bearer realm=..,service=..,scope=..`: a token is fetched from `realm` (with basic auth when
//!   credentials are configured, anonymously otherwise) and sent as `Authorization: Bearer`.
//!
//! The resulting header is kept for the rest of the pull and handed to the
//! [`Downloader`](crate::image::Downloader) for blobs.

use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use super::reference::Reference;
use super::{PullOptions, RegistryAuth};
use crate::error::{Error, ErrorCode, Result};

/// Largest manifest or token response accepted.
const MAX_DOC: usize = 4 << 20;

/// Manifest media types flick understands, in preference order.
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

fn pull_failed(reference: &Reference, msg: impl Into<String>) -> Error {
    Error::new(ErrorCode::ImagePullFailed, msg)
        .with_details(json!({ "reference": reference.to_string() }))
}

/// Minimal standard base64 (for the basic-auth header).
pub(crate) fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

fn basic_header(auth: &RegistryAuth) -> String {
    format!(
        "Basic {}",
        base64(format!("{}:{}", auth.username, auth.password).as_bytes())
    )
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Challenge {
    pub scheme: String,
    pub params: Vec<(String, String)>,
}

impl Challenge {
    fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }
}

/// Parses `Scheme k="v", k2=v2` (quoted values may contain commas).
pub(crate) fn parse_challenge(text: &str) -> Option<Challenge> {
    let text = text.trim();
    let (scheme, rest) = text.split_once(' ').unwrap_or((text, ""));
    if scheme.is_empty() {
        return None;
    }
    let mut params = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() || chars.next() != Some('=') {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        params.push((key.trim().to_owned(), value.trim().to_owned()));
    }
    Some(Challenge {
        scheme: scheme.to_owned(),
        params,
    })
}

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
}

/// A fetched manifest document.
#[derive(Debug, Clone)]
pub(crate) struct Fetched {
    pub body: Vec<u8>,
    pub media_type: Option<String>,
}

/// One repository on one registry, with the credentials resolved so far.
pub(crate) struct Registry {
    client: reqwest::Client,
    base: String,
    reference: Reference,
    auth: Option<RegistryAuth>,
    header: Mutex<Option<String>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Registry {
    pub(crate) fn new(reference: &Reference, options: &PullOptions) -> Result<Self> {
        let scheme = if options.allow_http && reference.is_loopback() {
            "http"
        } else {
            "https"
        };
        let client = reqwest::Client::builder()
            .user_agent(concat!("flick/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| {
                Error::new(ErrorCode::Internal, "building the HTTP client").with_source(e)
            })?;
        Ok(Self {
            client,
            base: format!("{scheme}://{}", reference.api_host()),
            reference: reference.clone(),
            auth: options.auth.clone(),
            header: Mutex::new(None),
        })
    }

    fn current_header(&self) -> Option<String> {
        self.header.lock().map_or(None, |h| h.clone())
    }

    /// Headers to send with blob requests.
    pub(crate) fn auth_headers(&self) -> Vec<(&'static str, String)> {
        self.current_header()
            .map(|h| vec![("authorization", h)])
            .unwrap_or_default()
    }

    /// The URL of a blob.
    pub(crate) fn blob_url(&self, digest: &str) -> String {
        format!(
            "{}/v2/{}/blobs/{digest}",
            self.base, self.reference.repository
        )
    }

    async fn send(&self, url: &str, accept: Option<&str>) -> Result<reqwest::Response> {
        let mut req = self.client.get(url);
        if let Some(accept) = accept {
            req = req.header("accept", accept);
        }
        if let Some(h) = self.current_header() {
            req = req.header("authorization", h);
        }
        req.send().await.map_err(|e| {
            pull_failed(
                &self.reference,
                format!("connecting to {} for {}", self.base, self.reference),
            )
            .with_source(e)
        })
    }

    /// GETs `url`, answering one authentication challenge.
    async fn get(&self, url: &str, accept: Option<&str>) -> Result<reqwest::Response> {
        let resp = self.send(url, accept).await?;
        if resp.status() != reqwest::StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let challenge = resp
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_challenge)
            .ok_or_else(|| {
                pull_failed(
                    &self.reference,
                    format!("{url} answered 401 without a usable WWW-Authenticate challenge"),
                )
                .with_status(401)
            })?;
        self.authenticate(&challenge).await?;
        let resp = self.send(url, accept).await?;
        if resp.status() == reqwest::StatusCode::UNAUTHORIZED {
            return Err(pull_failed(
                &self.reference,
                format!(
                    "{} refused the credentials for {}{}",
                    self.base,
                    self.reference,
                    if self.auth.is_none() {
                        " (none were given)"
                    } else {
                        ""
                    }
                ),
            )
            .with_status(401));
        }
        Ok(resp)
    }

    async fn authenticate(&self, challenge: &Challenge) -> Result<()> {
        let header = if challenge.scheme.eq_ignore_ascii_case("basic") {
            let auth = self.auth.as_ref().ok_or_else(|| {
                pull_failed(
                    &self.reference,
                    format!("{} requires credentials for {}", self.base, self.reference),
                )
                .with_status(401)
            })?;
            basic_header(auth)
        } else if challenge.scheme.eq_ignore_ascii_case("bearer") {
            let realm = challenge.param("realm").ok_or_else(|| {
                pull_failed(&self.reference, "the bearer challenge names no realm")
            })?;
            let mut url = reqwest::Url::parse(realm).map_err(|e| {
                pull_failed(
                    &self.reference,
                    format!("the token realm {realm:?} is not a URL"),
                )
                .with_source(e)
            })?;
            let default_scope = format!("repository:{}:pull", self.reference.repository);
            {
                let mut q = url.query_pairs_mut();
                if let Some(service) = challenge.param("service") {
                    q.append_pair("service", service);
                }
                q.append_pair("scope", challenge.param("scope").unwrap_or(&default_scope));
            }
            let mut req = self.client.get(url.clone());
            if let Some(auth) = &self.auth {
                req = req.header("authorization", basic_header(auth));
            }
            let resp = req.send().await.map_err(|e| {
                pull_failed(&self.reference, format!("requesting a token from {realm}"))
                    .with_source(e)
            })?;
            let status = resp.status();
            if !status.is_success() {
                return Err(pull_failed(
                    &self.reference,
                    format!("the token service {realm} answered HTTP {status}"),
                )
                .with_status(status.as_u16()));
            }
            let body = read_limited(resp, &self.reference, "token response").await?;
            let token: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
                pull_failed(
                    &self.reference,
                    format!("the token from {realm} is not JSON"),
                )
                .with_source(e)
            })?;
            let token = token.token.or(token.access_token).ok_or_else(|| {
                pull_failed(&self.reference, format!("{realm} returned no token"))
            })?;
            format!("Bearer {token}")
        } else {
            return Err(pull_failed(
                &self.reference,
                format!(
                    "unsupported authentication scheme {:?} at {}",
                    challenge.scheme, self.base
                ),
            ));
        };
        if let Ok(mut h) = self.header.lock() {
            *h = Some(header);
        }
        Ok(())
    }

    /// Fetches the manifest (or index) `reference` (a tag or a digest).
    pub(crate) async fn manifest(&self, reference: &str) -> Result<Fetched> {
        let url = format!(
            "{}/v2/{}/manifests/{reference}",
            self.base, self.reference.repository
        );
        let resp = self.get(&url, Some(ACCEPT)).await?;
        let status = resp.status();
        if !status.is_success() {
            let msg = if status == reqwest::StatusCode::NOT_FOUND {
                format!("{} has no manifest {reference}", self.reference)
            } else {
                format!(
                    "fetching manifest {reference} of {}: HTTP {status}",
                    self.reference
                )
            };
            return Err(pull_failed(&self.reference, msg).with_status(status.as_u16()));
        }
        let media_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned());
        let body = read_limited(resp, &self.reference, "manifest").await?;
        Ok(Fetched { body, media_type })
    }
}

async fn read_limited(
    resp: reqwest::Response,
    reference: &Reference,
    what: &str,
) -> Result<Vec<u8>> {
    use futures_util::StreamExt as _;
    if resp.content_length().is_some_and(|l| l > MAX_DOC as u64) {
        return Err(pull_failed(
            reference,
            format!("the {what} is larger than 4 MiB"),
        ));
    }
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            pull_failed(reference, format!("reading the {what} of {reference}")).with_source(e)
        })?;
        body.extend_from_slice(&chunk);
        if body.len() > MAX_DOC {
            return Err(pull_failed(
                reference,
                format!("the {what} is larger than 4 MiB"),
            ));
        }
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "Bearer");
        assert_eq!(c.param("realm"), Some("https://auth.example/token"));
        assert_eq!(c.param("service"), Some("reg"));
        assert_eq!(c.param("scope"), Some("repository:a/b:pull,push"));
        let b = parse_challenge(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!(b.scheme, "Basic");
        assert_eq!(b.param("realm"), Some("Registry Realm"));
        assert!(parse_challenge("").is_none());
    }

    #[test]
    fn base64_matches_rfc4648() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want);
        }
    }
}
