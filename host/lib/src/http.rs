//! Outgoing HTTP for the component, behind the operator's allow-list.
//!
//! A request to an origin that is not listed is refused with `HTTP-request-denied` before
//! any connection opens. Allowed requests get clamped timeouts (wasmtime's default is
//! 600 s) and a response body cap, and go through one pool of connections per host, kept
//! per origin: a provider called recently (a refresh, a proxied call) costs no new TCP or
//! TLS handshake. wasmtime-wasi-http's own sender would open a connection per request.

use std::fmt;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use wasmtime_wasi_http::{RequestOptions, WasiBody, WasiHttpHooks};

use crate::error::Error;
use crate::metrics::Metrics;

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
        let bad = |why: &str| format!("allowed origin {s:?} {why}; expected scheme://host[:port]");
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
    pub fn of(uri: &http::Uri) -> Option<Origin> {
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
    /// CA certificates (PEM files) trusted for outgoing HTTPS besides the Mozilla roots:
    /// for providers behind a private CA.
    pub ca_files: Vec<std::path::PathBuf>,
}

impl Default for EgressPolicy {
    fn default() -> Self {
        EgressPolicy {
            allowed: Vec::new(),
            ca_files: Vec::new(),
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

/// The policy, and the connections it lets out: one per host, shared by its calls.
pub(crate) struct Egress {
    pub(crate) policy: EgressPolicy,
    metrics: Arc<Metrics>,
    pool: Client<hyper_rustls::HttpsConnector<HttpConnector>, WasiBody>,
}

/// How long an unused connection is kept for the next request to its origin.
const IDLE_CONNECTION: Duration = Duration::from_secs(60);
/// Idle connections kept per origin.
const IDLE_PER_ORIGIN: usize = 64;

impl Egress {
    pub(crate) fn new(policy: EgressPolicy, metrics: Arc<Metrics>) -> Result<Self, Error> {
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(policy.connect_timeout));
        let tls = crate::tls::client_config(&policy.ca_files)
            .map_err(|e| Error::Config(format!("outgoing requests: {e}")))?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        let pool = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(IDLE_CONNECTION)
            .pool_max_idle_per_host(IDLE_PER_ORIGIN)
            .build(connector);
        Ok(Egress { policy, metrics, pool })
    }

    /// Send through the pool: the response head within `first_byte_timeout`, then each
    /// body chunk within `between_bytes_timeout` of the last.
    async fn send(&self, request: http::Request<WasiBody>, options: RequestOptions) -> SendResult {
        let first_byte = options.first_byte_timeout.unwrap_or(self.policy.response_timeout);
        let between_bytes = options.between_bytes_timeout.unwrap_or(self.policy.response_timeout);
        let response = match tokio::time::timeout(first_byte, self.pool.request(request)).await {
            Err(_) => return Err(wasmtime_wasi_http::Error::ConnectionReadTimeout),
            Ok(Err(err)) => return Err(send_error(err)),
            Ok(Ok(response)) => response,
        };
        let response = response.map(|body| TimedBody::new(body, between_bytes).boxed_unsync());
        // The pool drives each connection on its own task: nothing for the caller to poll.
        Ok((response, Box::new(async { Ok(()) })))
    }
}

/// What a pooled request's failure is to the component.
fn send_error(err: hyper_util::client::legacy::Error) -> wasmtime_wasi_http::Error {
    use std::error::Error as _;
    let mut source = err.source();
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::TimedOut => wasmtime_wasi_http::Error::ConnectionTimeout,
                std::io::ErrorKind::ConnectionRefused => wasmtime_wasi_http::Error::ConnectionRefused,
                _ if io.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) => {
                    wasmtime_wasi_http::Error::TlsProtocolError
                }
                kind => wasmtime_wasi_http::Error::Connect(std::io::Error::new(kind, io.to_string())),
            };
        }
        if cause.is::<rustls::Error>() {
            return wasmtime_wasi_http::Error::TlsProtocolError;
        }
        source = cause.source();
    }
    if err.is_connect() {
        wasmtime_wasi_http::Error::ConnectionRefused
    } else {
        wasmtime_wasi_http::Error::ConnectionTerminated
    }
}

/// A response body that fails once no chunk came for `between` since the last.
struct TimedBody {
    inner: hyper::body::Incoming,
    between: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl TimedBody {
    fn new(inner: hyper::body::Incoming, between: Duration) -> Self {
        TimedBody { inner, between, deadline: Box::pin(tokio::time::sleep(between)) }
    }
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let next = tokio::time::Instant::now() + self.between;
                self.deadline.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(err.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(wasmtime_wasi_http::Error::ConnectionReadTimeout))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The wasi:http hooks of one store.
pub(crate) struct EgressHooks(pub Arc<Egress>);

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
        let egress = self.0.clone();
        Box::new(async move {
            let policy = &egress.policy;
            if !policy.allows(request.uri()) {
                // Only the origin is logged: a query string could carry a value.
                let origin = Origin::of(request.uri()).map(|o| o.to_string()).unwrap_or_else(|| "<invalid>".into());
                tracing::warn!(%origin, "outbound request denied: origin not in allowed_outbound_hosts");
                return Err(wasmtime_wasi_http::Error::HttpRequestDenied);
            }
            let options = policy.clamp(options);
            let sent = std::time::Instant::now();
            let answered = egress.send(request, options).await;
            egress.metrics.upstream(answered.is_ok().then(|| sent.elapsed().as_secs_f64()));
            let (mut response, io) = answered?;
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
            Ok((response, io))
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
