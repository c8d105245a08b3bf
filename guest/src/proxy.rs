//! The proxy: a call to a provider's API with a connection's access token, which the
//! component sets on the request itself, so whoever asks never holds the token.
//!
//! The path is checked before anything is sent: it must stay under the provider's API
//! base URL however a server might decode it. The caller's headers pass except those that
//! carry credentials or belong to one connection; the provider's pass except hop-by-hop
//! headers and cookies. Should a provider echo the token, it is redacted from the answer.

use std::borrow::Cow;

use http::{HeaderName, HeaderValue, Method, StatusCode, header};
use percent_encoding::percent_decode_str;

use crate::model::*;
use crate::oauth;
use crate::platform::Platform;
use crate::record;
use crate::refresh::Wanted;
use crate::tokens::ensure_active;
use crate::vault::Vault;

/// What stands in for the token, should a provider send it back.
const REDACTED: &[u8] = b"[redacted]";

/// Hop-by-hop headers (RFC 9110 §7.6.1) and those a client library sets per connection.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-connection",
    "http2-settings",
    // Recomputed for the body that is actually sent (or returned, redacted).
    "content-length",
];

impl<P: Platform> Vault<P> {
    /// Send `request` to the connection's provider API with its access token (refreshed
    /// first when due). An upstream 401 refreshes once, single-flight as `get`, and
    /// retries once; the second answer is returned whatever it is. Audited as `proxy`.
    pub fn proxy(&self, key: &ConnectionKey, request: ProxyRequest) -> Result<ProxyResponse> {
        let result = self.proxy_inner(key, request);
        self.audit_token(AuditAction::Proxy, key, AuditOutcome::from(&result));
        result
    }

    fn proxy_inner(&self, key: &ConnectionKey, request: ProxyRequest) -> Result<ProxyResponse> {
        record::validate_key(key)?;
        let method = proxy_method(&request.method)?;
        let headers = forwarded_headers(&request.headers)?;
        let provider = self.load_provider(key)?;
        let base = provider.api_base_url.as_deref().ok_or_else(|| {
            VaultError::InvalidInput(format!("provider {:?} has no API base URL to proxy to", key.provider))
        })?;
        let url = target_url(base, &request.path)?;
        let send = |access_token: &str| {
            let mut outgoing = http::Request::builder().method(method.clone()).uri(&url);
            for (name, value) in &headers {
                outgoing = outgoing.header(name, value);
            }
            let bearer = HeaderValue::from_str(&format!("Bearer {access_token}"))
                .map_err(|_| VaultError::Integrity("the stored access token cannot be sent in a header".into()))?;
            let outgoing = outgoing
                .header(header::AUTHORIZATION, bearer)
                .body(request.body.clone())
                .map_err(|_| VaultError::InvalidInput("the proxied request is not a valid HTTP request".into()))?;
            self.platform().http(outgoing).map_err(|err| oauth::http_failure(err, "provider API"))
        };

        let token = self.get_inner(key)?;
        let first = send(&token.access_token)?;
        if first.status() != StatusCode::UNAUTHORIZED {
            return Ok(answer(first, &[&token.access_token]));
        }
        // Rejected: renew once, unless another caller already did since this token was read.
        let (current, version) = self.load_token(key)?;
        ensure_active(&current)?;
        let renewed = if current.access_token != token.access_token {
            current.token_set()
        } else if current.renewable() {
            self.refresh_coordinated(key, current, version, Wanted::Renewed)?
        } else {
            return Ok(answer(first, &[&token.access_token]));
        };
        let second = send(&renewed.access_token)?;
        Ok(answer(second, &[&renewed.access_token, &token.access_token]))
    }
}

fn invalid(why: &str) -> VaultError {
    // Never quotes the path: its query may carry values.
    VaultError::InvalidInput(format!("the proxied path {why}"))
}

/// The method, as RFC 9110 allows it; CONNECT (a tunnel) and TRACE (which would echo the
/// token) are refused.
fn proxy_method(method: &str) -> Result<Method> {
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| VaultError::InvalidInput("the proxied method is not an HTTP method".into()))?;
    if method == Method::CONNECT || method == Method::TRACE {
        return Err(VaultError::InvalidInput(format!("{method} cannot be proxied")));
    }
    Ok(method)
}

/// The caller's headers that go on: not credentials, cookies, the host, proxy or
/// hop-by-hop headers (nor any the caller's `Connection` names), nor tokenvault's own.
fn forwarded_headers(headers: &[(String, Vec<u8>)]) -> Result<Vec<(HeaderName, HeaderValue)>> {
    let mut parsed = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| VaultError::InvalidInput("a proxied header name is not valid".into()))?;
        let value = HeaderValue::from_bytes(value)
            .map_err(|_| VaultError::InvalidInput(format!("the value of proxied header {name} is not valid")))?;
        parsed.push((name, value));
    }
    let named_by_connection = connection_tokens(parsed.iter().map(|(n, v)| (n.as_str(), v.as_bytes())));
    parsed.retain(|(name, _)| {
        let name = name.as_str();
        !(matches!(name, "authorization" | "cookie" | "host")
            || name.starts_with("proxy-")
            || name.starts_with("tokenvault-")
            || HOP_BY_HOP.contains(&name)
            || named_by_connection.iter().any(|named| named == name))
    });
    Ok(parsed)
}

/// The header names a `Connection` header lists (hop-by-hop for this message), lower case.
fn connection_tokens<'a>(headers: impl Iterator<Item = (&'a str, &'a [u8])>) -> Vec<String> {
    headers
        .filter(|(name, _)| name.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, value)| {
            String::from_utf8_lossy(value).split(',').map(|t| t.trim().to_ascii_lowercase()).collect::<Vec<_>>()
        })
        .filter(|token| !token.is_empty())
        .collect()
}

/// `base` joined with the caller's path and query, or why not. The path must start with
/// `/` and contain only visible ASCII (percent-encode the rest). No segment may climb or
/// stand still (`.`, `..`), raw or percent-encoded, even hidden behind an encoded slash or
/// backslash; raw backslashes and `@` are refused, as is anything encoded twice (`%252e`)
/// or a fragment. Finally the joined URL must keep the base's scheme, host and port and
/// stay under its path.
pub(crate) fn target_url(base: &str, path: &str) -> Result<String> {
    if !path.starts_with('/') {
        return Err(invalid("must start with /"));
    }
    if path.bytes().any(|b| !(0x21..=0x7e).contains(&b)) {
        return Err(invalid("must be visible ASCII: percent-encode spaces, controls and other characters"));
    }
    if path.contains('#') {
        return Err(invalid("must not have a fragment"));
    }
    let (route, _query) = path.split_once('?').unwrap_or((path, ""));
    if route.contains('\\') {
        return Err(invalid("must not contain a backslash"));
    }
    if route.contains('@') {
        return Err(invalid("must not contain @"));
    }
    for segment in route[1..].split('/') {
        if segment.is_empty() && route.len() > 1 {
            return Err(invalid("must not have empty segments (//)"));
        }
        if !well_encoded(segment) {
            return Err(invalid("has a malformed percent-encoding"));
        }
        let decoded = percent_decode_str(segment).decode_utf8_lossy();
        if decoded.chars().any(|c| c.is_control()) {
            return Err(invalid("must not encode control characters"));
        }
        if decoded.contains('\\') {
            return Err(invalid("must not encode a backslash"));
        }
        if decoded.split('/').any(|piece| piece == "." || piece == "..") {
            return Err(invalid("must not climb out of the API base URL (dot segments)"));
        }
        if decoded.contains('%') && percent_decode_str(&decoded).collect::<Vec<u8>>() != decoded.as_bytes() {
            return Err(invalid("must not be percent-encoded twice"));
        }
    }
    let joined = format!("{base}{path}");
    let (base_url, target) = (oauth2::url::Url::parse(base), oauth2::url::Url::parse(&joined));
    let (Ok(base_url), Ok(target)) = (base_url, target) else {
        return Err(invalid("does not make a valid URL with the API base URL"));
    };
    let base_path = base_url.path().trim_end_matches('/');
    let under_base = target.path() == base_path || target.path().starts_with(&format!("{base_path}/"));
    if target.origin() != base_url.origin() || !under_base {
        return Err(invalid("must stay under the API base URL"));
    }
    if joined.parse::<http::Uri>().is_err() {
        return Err(invalid("has characters a URL cannot hold"));
    }
    Ok(joined)
}

/// Every `%` starts two hex digits.
fn well_encoded(segment: &str) -> bool {
    let bytes = segment.as_bytes();
    bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'%')
        .all(|(i, _)| bytes.get(i + 1..i + 3).is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)))
}

/// The provider's answer as the caller gets it: less hop-by-hop headers (and those its
/// `Connection` names) and `set-cookie`, with any of `tokens` redacted.
fn answer(response: http::Response<Vec<u8>>, tokens: &[&str]) -> ProxyResponse {
    let (parts, body) = response.into_parts();
    let named_by_connection = connection_tokens(parts.headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())));
    let headers = parts
        .headers
        .iter()
        .filter(|(name, _)| {
            let name = name.as_str();
            !(name == "set-cookie"
                || name.starts_with("proxy-")
                || HOP_BY_HOP.contains(&name)
                || named_by_connection.iter().any(|named| named == name))
        })
        .map(|(name, value)| (name.as_str().to_owned(), redact(value.as_bytes(), tokens).into_owned()))
        .collect();
    ProxyResponse { status: parts.status.as_u16(), headers, body: redact(&body, tokens).into_owned() }
}

/// `bytes` with every occurrence of each token replaced.
fn redact<'a>(bytes: &'a [u8], tokens: &[&str]) -> Cow<'a, [u8]> {
    let mut out = Cow::Borrowed(bytes);
    for token in tokens.iter().map(|t| t.as_bytes()).filter(|t| !t.is_empty()) {
        if !out.windows(token.len()).any(|w| w == token) {
            continue;
        }
        let mut replaced = Vec::with_capacity(out.len());
        let mut rest: &[u8] = &out;
        while let Some(at) = rest.windows(token.len()).position(|w| w == token) {
            replaced.extend_from_slice(&rest[..at]);
            replaced.extend_from_slice(REDACTED);
            rest = &rest[at + token.len()..];
        }
        replaced.extend_from_slice(rest);
        out = Cow::Owned(replaced);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::HttpError;
    use crate::vault::fixtures::{grant, key, vault};
    use std::cell::RefCell;
    use std::rc::Rc;

    const BASE: &str = "https://api.example/v1";

    #[test]
    fn paths_under_the_base_are_joined_as_given() {
        for path in [
            "/user",
            "/repos/o/r/issues?state=open&per_page=5",
            "/projects/group%2Fproject/issues",
            "/search?q=a@b.example",
            "/files/a.b/..c/.d",
            "/",
        ] {
            assert_eq!(target_url(BASE, path).unwrap(), format!("{BASE}{path}"), "{path}");
        }
    }

    #[test]
    fn every_escape_from_the_base_is_refused() {
        for path in [
            "user",
            "",
            "//evil.example/x",
            "/../admin",
            "/a/../../admin",
            "/./user",
            "/%2e%2e/admin",
            "/%2E%2e/admin",
            "/.%2e/admin",
            "/a%2f..%2f..%2fadmin",
            "/a%2F%2E%2E%2Fadmin",
            "/a%5c..%5cadmin",
            "/a\\..\\admin",
            "/a/..\\admin",
            "/%252e%252e/admin",
            "/@evil.example/x",
            "/user@evil.example",
            "/a b",
            "/a\tb",
            "/a%00b",
            "/a%0d%0aHost:%20evil",
            "/x#frag",
            "/%zz",
            "/a%2",
            "/é",
            "/a//b",
        ] {
            assert!(matches!(target_url(BASE, path), Err(VaultError::InvalidInput(_))), "{path:?} accepted");
        }
        assert!(target_url("https://api.example", "/../x").is_err());
    }

    #[test]
    fn credentials_cookies_and_hop_by_hop_headers_stop_here() {
        let given: Vec<(String, Vec<u8>)> = [
            ("Authorization", "Bearer caller"),
            ("Cookie", "a=b"),
            ("Host", "evil.example"),
            ("Proxy-Authorization", "x"),
            ("Connection", "keep-alive, X-Hop"),
            ("X-Hop", "1"),
            ("Transfer-Encoding", "chunked"),
            ("Content-Length", "3"),
            ("Tokenvault-Connection", "work"),
            ("Accept", "application/json"),
            ("X-GitHub-Api-Version", "2022-11-28"),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
        .collect();
        let kept: Vec<String> = forwarded_headers(&given).unwrap().iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(kept, ["accept", "x-github-api-version"]);
        assert!(forwarded_headers(&[("bad name".into(), b"v".to_vec())]).is_err());
        assert!(forwarded_headers(&[("x".into(), b"a\r\nb".to_vec())]).is_err());
    }

    #[test]
    fn tunnels_and_echoes_are_not_proxied() {
        assert!(proxy_method("CONNECT").is_err());
        assert!(proxy_method("TRACE").is_err());
        assert!(proxy_method("GE T").is_err());
        assert_eq!(proxy_method("PATCH").unwrap(), Method::PATCH);
    }

    #[test]
    fn an_echoed_token_is_redacted() {
        assert_eq!(&*redact(b"a tok b tok", &["tok"]), b"a [redacted] b [redacted]");
        assert!(matches!(redact(b"nothing here", &["tok"]), Cow::Borrowed(_)));
        assert_eq!(&*redact(b"old new", &["new", "old"]), b"[redacted] [redacted]");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// `s` percent-decoded until it stops changing (at most four times).
        fn fully_decoded(s: &str) -> String {
            let mut s = s.to_owned();
            for _ in 0..4 {
                let next = percent_decode_str(&s).decode_utf8_lossy().into_owned();
                if next == s {
                    break;
                }
                s = next;
            }
            s
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4000))]

            // Paths made of the pieces escapes are built from: whatever is accepted stays
            // under the base however often a server decodes it.
            #[test]
            fn an_accepted_path_never_leaves_the_base(
                pieces in proptest::collection::vec(
                    prop_oneof![
                        Just("/"), Just("."), Just(".."), Just("%2e"), Just("%2E"), Just("%2f"), Just("%2F"),
                        Just("%5c"), Just("\\"), Just("%25"), Just("@"), Just("?"), Just("#"), Just(":"),
                        Just("a"), Just("user"), Just("%41"), Just("%"), Just("~"), Just("2e"), Just("2f"), Just("5c"),
                    ],
                    1..12,
                )
            ) {
                let path = format!("/{}", pieces.concat());
                if let Ok(url) = target_url(BASE, &path) {
                    prop_assert!(url.starts_with(&format!("{BASE}/")), "{url}");
                    let route = url[BASE.len()..].split('?').next().unwrap().to_owned();
                    let decoded = fully_decoded(&route);
                    prop_assert!(
                        !decoded.split(['/', '\\']).any(|s| s == ".." || s == "."),
                        "{path} decodes to {decoded}"
                    );
                    prop_assert!(!route.contains('@') && !route.contains('\\') && !url.contains('#'));
                }
            }

            #[test]
            fn credentials_never_go_out_whatever_their_case(
                name in prop_oneof![Just("authorization"), Just("cookie"), Just("host"), Just("proxy-authorization")],
                upper in proptest::collection::vec(any::<bool>(), 20),
            ) {
                let name: String = name
                    .chars()
                    .zip(upper.iter().cycle())
                    .map(|(c, up)| if *up { c.to_ascii_uppercase() } else { c })
                    .collect();
                let kept = forwarded_headers(&[(name, b"x".to_vec())]).unwrap();
                prop_assert!(kept.is_empty());
            }
        }
    }

    /// What the API was sent: the URL and the authorization header.
    type Seen = Rc<RefCell<Vec<(String, String)>>>;

    /// A provider API that records what it was sent and answers with each of `statuses`
    /// in turn; its token endpoint renews `at-1` as `at-2`.
    fn api(vault: &Vault<crate::memory::MemoryPlatform>, statuses: Vec<u16>) -> Seen {
        let seen = Rc::new(RefCell::new(Vec::new()));
        let (log, statuses) = (seen.clone(), RefCell::new(statuses));
        vault.platform().respond(move |request| {
            if request.uri().path().ends_with("/token") {
                let body = r#"{"access_token":"at-2","token_type":"Bearer","expires_in":3600,"refresh_token":"rt-2"}"#;
                return Ok(http::Response::builder().status(200).body(body.as_bytes().to_vec()).unwrap());
            }
            let auth = request.headers().get("authorization").unwrap().to_str().unwrap().to_owned();
            log.borrow_mut().push((request.uri().to_string(), auth.clone()));
            let status = statuses.borrow_mut().remove(0);
            Ok(http::Response::builder()
                .status(status)
                .header("set-cookie", "s=1")
                .header("x-echo", &auth)
                .body(format!("seen {auth}").into_bytes())
                .unwrap())
        });
        seen
    }

    fn with_api_base(vault: &Vault<crate::memory::MemoryPlatform>) {
        let mut config = crate::vault::fixtures::provider_config();
        config.api_base_url = Some(format!("{BASE}/"));
        vault.put_provider(None, config).unwrap();
    }

    fn get_user() -> ProxyRequest {
        ProxyRequest { method: "GET".into(), path: "/user?x=1".into(), ..ProxyRequest::default() }
    }

    #[test]
    fn the_token_is_set_by_the_vault_and_redacted_from_the_answer() {
        let vault = vault();
        with_api_base(&vault);
        vault.store(&key(), grant("at-1", Some("rt-1"), Some(3600))).unwrap();
        let seen = api(&vault, vec![200]);
        let answer = vault.proxy(&key(), get_user()).unwrap();
        assert_eq!(seen.borrow()[0], (format!("{BASE}/user?x=1"), "Bearer at-1".to_owned()));
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, b"seen Bearer [redacted]");
        let names: Vec<_> = answer.headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect();
        assert_eq!(names, [("x-echo", b"Bearer [redacted]".as_slice())]);
        let last = vault.platform().events.borrow().last().cloned().unwrap();
        assert_eq!((last.action, last.outcome), (AuditAction::Proxy, AuditOutcome::Ok));
    }

    #[test]
    fn a_rejected_token_is_renewed_once_and_a_second_rejection_returned() {
        let vault = vault();
        with_api_base(&vault);
        vault.store(&key(), grant("at-1", Some("rt-1"), Some(3600))).unwrap();
        let seen = api(&vault, vec![401, 200]);
        assert_eq!(vault.proxy(&key(), get_user()).unwrap().status, 200);
        let sent: Vec<_> = seen.borrow().iter().map(|(_, auth)| auth.clone()).collect();
        assert_eq!(sent, ["Bearer at-1", "Bearer at-2"]);
        assert_eq!(vault.get(&key()).unwrap().refresh_token.as_deref(), Some("rt-2"));

        let seen = api(&vault, vec![401, 401]);
        let answer = vault.proxy(&key(), get_user()).unwrap();
        assert_eq!((answer.status, seen.borrow().len()), (401, 2));
    }

    #[test]
    fn a_connection_without_a_refresh_token_returns_the_rejection() {
        let vault = vault();
        with_api_base(&vault);
        vault.store(&key(), grant("at-1", None, Some(3600))).unwrap();
        let seen = api(&vault, vec![401]);
        assert_eq!(vault.proxy(&key(), get_user()).unwrap().status, 401);
        assert_eq!(seen.borrow().len(), 1);
    }

    #[test]
    fn nothing_is_sent_for_a_bad_path_or_a_provider_without_an_api() {
        let vault = vault(); // its provider has no API base URL
        vault.store(&key(), grant("at-1", Some("rt-1"), Some(3600))).unwrap();
        let seen = api(&vault, vec![]);
        let err = vault.proxy(&key(), get_user()).unwrap_err();
        assert!(err.to_string().contains("no API base URL"), "{err}");
        with_api_base(&vault);
        let escape = ProxyRequest { path: "/%2e%2e/admin?secret=1".into(), ..get_user() };
        let err = vault.proxy(&key(), escape).unwrap_err().to_string();
        assert!(!err.contains("secret"), "{err}");
        assert!(seen.borrow().is_empty());
        let last = vault.platform().events.borrow().last().cloned().unwrap();
        assert_eq!(last.outcome, AuditOutcome::InvalidInput);
    }

    #[test]
    fn no_answer_in_time_is_a_timed_out_provider_error() {
        let vault = vault();
        with_api_base(&vault);
        vault.store(&key(), grant("at-1", Some("rt-1"), Some(3600))).unwrap();
        vault.platform().respond(|_| Err(HttpError::Timeout));
        match vault.proxy(&key(), get_user()) {
            Err(VaultError::Provider(failure)) => assert!(failure.timed_out),
            other => panic!("{other:?}"),
        }
        vault.platform().respond(|_| Err(HttpError::Denied));
        assert!(matches!(vault.proxy(&key(), get_user()), Err(VaultError::EgressDenied(_))));
    }
}
