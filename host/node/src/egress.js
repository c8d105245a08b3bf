// Egress as the Rust host allows it: a request leaves only for an origin the embedder listed
// (`scheme://host:port`, the port spelled out); any other is refused with
// `HTTP-request-denied` before a connection opens. Timeouts the component asks for are kept
// when shorter than the host's, and the host's apply otherwise.

/** `scheme://host:port` with the port spelled out, as the Rust host compares origins. */
export function origin(url) {
  const u = new URL(url);
  const port = u.port || (u.protocol === 'https:' ? '443' : u.protocol === 'http:' ? '80' : '');
  return `${u.protocol}//${u.hostname}:${port}`;
}

/** Check `allowedOrigins` up front, so a typo fails `openVault` rather than every call. */
export function parseOrigins(allowedOrigins) {
  if (!Array.isArray(allowedOrigins)) throw new TypeError('allowedOrigins must be an array of origins');
  return allowedOrigins.map((o) => {
    let u;
    try {
      u = new URL(o);
    } catch {
      throw new TypeError(`allowedOrigins: ${JSON.stringify(o)} is not a URL such as https://github.com`);
    }
    if ((u.protocol !== 'https:' && u.protocol !== 'http:') || (u.pathname !== '/' && u.pathname !== '')) {
      throw new TypeError(`allowedOrigins: ${JSON.stringify(o)} is not an origin such as https://github.com`);
    }
    return origin(o);
  });
}

const NS_PER_MS = 1_000_000n;

/** `wasi:http/outgoing-handler` over preview2-shim's, behind the allow-list. */
export function allowListedHandler(http, allowedOrigins, timeoutsMs) {
  const allowed = new Set(allowedOrigins);
  // [the option's getter, its setter, the host's limit]
  const limits = [
    ['connectTimeout', 'setConnectTimeout', BigInt(timeoutsMs.connect) * NS_PER_MS],
    ['firstByteTimeout', 'setFirstByteTimeout', BigInt(timeoutsMs.response) * NS_PER_MS],
    ['betweenBytesTimeout', 'setBetweenBytesTimeout', BigInt(timeoutsMs.response) * NS_PER_MS],
  ];
  return {
    handle(request, options) {
      const scheme = request.scheme();
      const schemeName = scheme?.tag === 'other' ? scheme.val : (scheme?.tag ?? 'https').toLowerCase();
      let requested;
      try {
        requested = origin(`${schemeName}://${request.authority()}`);
      } catch {
        requested = undefined;
      }
      if (!requested || !allowed.has(requested)) throw { payload: { tag: 'HTTP-request-denied' } };
      const clamped = options ?? new http.types.RequestOptions();
      for (const [get, set, limit] of limits) {
        const asked = clamped[get]();
        if (asked === undefined || asked > limit) clamped[set](limit);
      }
      return http.outgoingHandler.handle(request, clamped);
    },
  };
}
