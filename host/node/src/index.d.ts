/** Identifies one stored connection; `name` is "default" when not given. */
export interface ConnectionKey {
  tenant: string;
  user: string;
  provider: string;
  name?: string;
}

/** A provider's token response as it arrives (RFC 6749 §5.1). */
export interface TokenGrant {
  access_token: string;
  token_type?: string;
  /** Seconds from now; absent: the token does not expire. */
  expires_in?: number;
  refresh_token?: string;
  scope?: string;
}

export interface TokenSet {
  accessToken: string;
  tokenType: string;
  /** Unix seconds. */
  expiresAt?: number;
  scope?: string;
  refreshToken?: string;
}

export interface ConnectionInfo {
  provider: string;
  name: string;
  kind: 'user' | 'client';
  scopes: string[];
  expiresAt?: number;
  hasRefreshToken: boolean;
  status: 'active' | 'reconnect-required';
  /** Unix seconds. */
  updatedAt: number;
}

export type VaultErrorCase =
  | { tag: 'not-found' | 'invalid-input' | 'reconnect-required' | 'storage' | 'integrity' | 'egress-denied'; val: string }
  | { tag: 'provider-error'; val: ProviderFailure };

export interface RemovalReceipt {
  provider: string;
  name: string;
  upstream: { tag: 'revoked' } | { tag: 'unsupported' } | { tag: 'failed'; val: VaultErrorCase };
}

export interface ConnectLink {
  code: string;
  /** Unix seconds. */
  expiresAt: number;
}

export type TokenOrLink = { tag: 'token'; val: TokenSet } | { tag: 'link'; val: ConnectLink };

export interface AuthorizationRequest {
  /** Where to send the user's browser. */
  url: string;
  state: string;
  /** Unix seconds. */
  expiresAt: number;
}

export interface Connected {
  key: Required<ConnectionKey>;
  info: ConnectionInfo;
}

export type ClientAuth = 'client-secret-basic' | 'client-secret-post';

export interface ProviderConfig {
  name: string;
  /** A built-in template: github, google, microsoft, slack, discord or gitlab. */
  template?: { name: string; tenant?: string };
  issuer?: string;
  authorizationUrl?: string;
  tokenUrl?: string;
  revocationUrl?: string;
  deviceAuthorizationUrl?: string;
  clientId: string;
  /** Sealed inside the component; never returned. */
  clientSecret?: string;
  clientAuth?: ClientAuth;
  scopes?: string[];
  authorizationParams?: Record<string, string> | [string, string][];
  refreshBufferSecs?: number;
  apiBaseUrl?: string;
}

export interface ProviderInfo {
  name: string;
  /** A tenant's own; absent: the vault's. */
  tenant?: string;
  template?: string;
  issuer?: string;
  authorizationUrl?: string;
  tokenUrl: string;
  revocationUrl?: string;
  deviceAuthorizationUrl?: string;
  clientId: string;
  hasClientSecret: boolean;
  clientAuth: ClientAuth;
  scopes: string[];
  authorizationParams: [string, string][];
  refreshBufferSecs: number;
  apiBaseUrl?: string;
  updatedAt: number;
}

export interface ProviderFailure {
  status?: number;
  code?: string;
  message: string;
  timedOut: boolean;
}

export type ErrorKind =
  | 'not-found'
  | 'invalid-input'
  | 'reconnect-required'
  | 'provider-error'
  | 'storage'
  | 'integrity'
  | 'egress-denied'
  | 'sandbox'
  | 'config';

export class TokenvaultError extends Error {
  readonly kind: ErrorKind;
  /** For `provider-error`: how the provider failed. */
  readonly detail?: ProviderFailure;
}

export interface VaultOptions {
  /** `sqlite://PATH`, `postgres://…` (`?schema=NAME`), `redis://…`/`rediss://…` (`?namespace=NAME`) or `memory:`. Default: `sqlite://DATA_DIR/vault.db`. */
  storage?: string;
  /** Where `vault.db` and `master.key` live by default. */
  dataDir?: string;
  /** Base64 of 32 bytes; else `TOKENVAULT_MASTER_KEY`, else `masterKeyFile`, else `DATA_DIR/master.key`. */
  masterKey?: string;
  masterKeyFile?: string;
  /** Origins the component may reach (`https://github.com`); every other request is refused. */
  allowedOrigins?: string[];
  /** Linear memory one call may grow to (default 64). */
  memoryLimitMib?: number;
  /** How long one call may run before it is stopped (default 30000). */
  callDeadlineMs?: number;
  /** Outgoing HTTP: connecting (default 5000) and waiting for the response (default 15000). */
  connectTimeoutMs?: number;
  responseTimeoutMs?: number;
  /** Calls run at once, each in a worker thread (default: min(4, cores)). */
  workers?: number;
  /** Who asks, as audit entries name them (default `node:USER`). */
  actor?: string;
  /** A directory holding another transpiled component to run instead of this package's (`node build.mjs COMPONENT.wasm --out DIR` in the package's source makes one). */
  componentDir?: string;
}

export interface TenantOption {
  /** A tenant's own provider registry; absent: the vault's. */
  tenant?: string;
}

export interface Vault {
  store(key: ConnectionKey, grant: TokenGrant): Promise<ConnectionInfo>;
  get(key: ConnectionKey): Promise<TokenSet>;
  refresh(key: ConnectionKey): Promise<TokenSet>;
  getOrLink(key: ConnectionKey, scopes?: string[]): Promise<TokenOrLink>;
  list(tenant: string, user: string): Promise<ConnectionInfo[]>;
  remove(key: ConnectionKey): Promise<RemovalReceipt>;
  revokeAll(tenant: string, user: string): Promise<RemovalReceipt[]>;
  providers: {
    put(config: ProviderConfig, options?: TenantOption): Promise<ProviderInfo>;
    get(name: string, options?: TenantOption): Promise<ProviderInfo>;
    list(options?: TenantOption): Promise<ProviderInfo[]>;
    remove(name: string, options?: TenantOption): Promise<void>;
  };
  begin(key: ConnectionKey, redirectUri: string, scopes?: string[], browser?: string): Promise<AuthorizationRequest>;
  complete(callbackQuery: string, browser?: string): Promise<Connected>;
  describe(): string;
  close(): Promise<void>;
}

export function openVault(options?: VaultOptions): Promise<Vault>;
