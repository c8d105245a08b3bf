//! Outgoing HTTP for the component, behind the operator's allow-list.
//!
//! A request to an origin that is not listed is refused with `HTTP-request-denied` before
//! any connection opens. Allowed requests get clamped timeouts (wasmtime's default is
//! 600 s) and a response body cap.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Limited};
use wasmtime_wasi_http::{RequestOptions, WasiBody, WasiHttpHooks};

/// One allowed destination: `scheme://host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub scheme: String,
    pub host: String,
    pub port: u16,
}

impl FromStr for Origin {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| format!("allowed outbound host {s:?} {why}; expected scheme://host[:port]");
        let uri: http::Uri = s.parse().map_err(|_| bad("is not a URL"))?;
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(bad("must not contain credentials"));
        }
        if !matches!(uri.path_and_query().map(|p| p.as_str()), None | Some("/") | Some("")) {
            return Err(bad("must not have a path"));
        }
        Origin::of(&uri).ok_or_else(|| bad("must be an http or https URL with a host"))
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

impl Origin {
    /// The origin a request goes to; none unless http(s) with a host.
    fn of(uri: &http::Uri) -> Option<Origin> {
        let scheme = uri.scheme_str()?.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "https" => 443,
            "http" => 80,
            _ => return None,
        };
        let authority = uri.authority()?;
        Some(Origin {
            scheme,
            host: authority.host().to_ascii_lowercase(),
            port: authority.port_u16().unwrap_or(default_port),
        })
    }
}

#[derive(Debug, Clone)]
pub struct EgressPolicy {
    pub allowed: Vec<Origin>,
    pub connect_timeout: Duration,
    /// Time to the response head, and the longest pause between body chunks.
    pub response_timeout: Duration,
    pub max_response_bytes: usize,
}

impl Default for EgressPolicy {
    fn default() -> Self {
        EgressPolicy {
            allowed: Vec::new(),
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(15),
            max_response_bytes: 1 << 20,
        }
    }
}

impl EgressPolicy {
    pub fn allows(&self, uri: &http::Uri) -> bool {
        Origin::of(uri).is_some_and(|origin| self.allowed.contains(&origin))
    }

    fn clamp(&self, options: Option<RequestOptions>) -> RequestOptions {
        let options = options.unwrap_or_default();
        let clamp = |asked: Option<Duration>, limit: Duration| Some(asked.map_or(limit, |d| d.min(limit)));
        RequestOptions {
            connect_timeout: clamp(options.connect_timeout, self.connect_timeout),
            first_byte_timeout: clamp(options.first_byte_timeout, self.response_timeout),
            between_bytes_timeout: clamp(options.between_bytes_timeout, self.response_timeout),
        }
    }
}

/// The wasi:http hooks of one store.
pub(crate) struct EgressHooks(pub Arc<EgressPolicy>);

type SendResult = wasmtime_wasi_http::Result<(
    http::Response<WasiBody>,
    Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
)>;

impl WasiHttpHooks for EgressHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        let policy = self.0.clone();
        Box::new(async move {
            if !policy.allows(request.uri()) {
                // Only the origin is logged: a query string could carry a value.
                let origin = Origin::of(request.uri()).map(|o| o.to_string()).unwrap_or_else(|| "<invalid>".into());
                tracing::warn!(%origin, "outbound request denied: origin not in allowed_outbound_hosts");
                return Err(wasmtime_wasi_http::Error::HttpRequestDenied);
            }
            let options = policy.clamp(options);
            let (mut response, io) = wasmtime_wasi_http::default_send_request(request, Some(options)).await?;
            drop_named_by_connection(response.headers_mut());
            let max = policy.max_response_bytes;
            if response
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .is_some_and(|len| len > max as u64)
            {
                return Err(wasmtime_wasi_http::Error::HttpResponseBodySize(Some(max as u64)));
            }
            let response = response.map(|body| {
                Limited::new(body, max)
                    .map_err(move |err| match err.downcast::<wasmtime_wasi_http::Error>() {
                        Ok(inner) => *inner,
                        Err(_) => wasmtime_wasi_http::Error::HttpResponseBodySize(Some(max as u64)),
                    })
                    .boxed_unsync()
            });
            Ok((response, Box::new(io) as Box<dyn Future<Output = _> + Send>))
        })
    }
}

/// Remove the headers a response's `Connection` header names: they were for the hop that
/// ends here (RFC 9110 §7.6.1). wasmtime hides `Connection` itself from the component, so
/// it could not tell them apart.
fn drop_named_by_connection(headers: &mut http::HeaderMap) {
    let named: Vec<http::HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| http::HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_parse_with_default_ports() {
        let o: Origin = "https://Accounts.Example.com".parse().unwrap();
        assert_eq!(o, Origin { scheme: "https".into(), host: "accounts.example.com".into(), port: 443 });
        assert_eq!("http://127.0.0.1:8080/".parse::<Origin>().unwrap().port, 8080);
        for bad in ["example.com", "ftp://x", "https://x/path", "https://u:p@x", "https://"] {
            assert!(bad.parse::<Origin>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn allow_list_matches_scheme_host_and_port_exactly() {
        let policy = EgressPolicy { allowed: vec!["https://idp.example".parse().unwrap()], ..Default::default() };
        let ok = |u: &str| policy.allows(&u.parse().unwrap());
        assert!(ok("https://idp.example/token"));
        assert!(ok("https://IDP.example:443/token?x=1"));
        assert!(!ok("http://idp.example/token"), "scheme");
        assert!(!ok("https://idp.example:8443/token"), "port");
        assert!(!ok("https://evil.idp.example/token"), "subdomain");
        assert!(!ok("https://idp.example.evil/token"), "suffix");
    }

    #[test]
    fn headers_named_by_connection_end_here() {
        let mut headers = http::HeaderMap::new();
        headers.insert("connection", "x-hop, Keep-Alive".parse().unwrap());
        headers.insert("x-hop", "1".parse().unwrap());
        headers.insert("keep-alive", "timeout=5".parse().unwrap());
        headers.insert("x-api", "yes".parse().unwrap());
        drop_named_by_connection(&mut headers);
        let left: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["connection", "x-api"]);
    }

    #[test]
    fn timeouts_are_clamped() {
        let policy = EgressPolicy::default();
        let asked = RequestOptions {
            connect_timeout: Some(Duration::from_secs(600)),
            first_byte_timeout: Some(Duration::from_secs(1)),
            between_bytes_timeout: None,
        };
        let got = policy.clamp(Some(asked));
        assert_eq!(got.connect_timeout, Some(policy.connect_timeout));
        assert_eq!(got.first_byte_timeout, Some(Duration::from_secs(1)));
        assert_eq!(got.between_bytes_timeout, Some(policy.response_timeout));
    }
}
