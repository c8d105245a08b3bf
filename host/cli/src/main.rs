//! The `tokenvault` command line. Output is JSON on stdout; an error is one line on
//! stderr whose first word is its kind, and a non-zero exit.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;
use tokenvault::audit::Actor;
use tokenvault::keys::{MASTER_KEY_ENV, MasterKeySource};
use tokenvault::storage::StorageUrl;
use tokenvault::{ClientAuth, ConnectionKey, Error, Options, ProviderConfig, Result, TemplateRef, TokenGrant, Vault};
use tokenvault_serve::ApiKeys;

mod audit;
mod connect;
mod inspect;
mod keys;
mod proxy;
mod serve;
mod tenant;

#[derive(Parser)]
#[command(name = "tokenvault", version, about = "OAuth token custody in a WebAssembly sandbox")]
struct Cli {
    /// Where the vault keeps its database, keyring, audit log and tokenvault.toml.
    #[arg(long, global = true, env = "TOKENVAULT_DATA_DIR", default_value = "./tokenvault-data")]
    data_dir: PathBuf,
    /// Let the component reach this origin (scheme://host[:port]); adds to the
    /// allowed_outbound_hosts of tokenvault.toml. Repeatable.
    #[arg(long = "allow-outbound", value_name = "URL", global = true)]
    allow_outbound: Vec<String>,
    /// Storage URL: sqlite://PATH, postgres://…[?schema=NAME], redis://…[?namespace=NAME&cache=RECORDS]
    /// or memory: (default: SQLite in the data directory). Hosts sharing one PostgreSQL or
    /// Redis share the vault.
    #[arg(long, global = true, env = "TOKENVAULT_STORAGE")]
    storage: Option<String>,
    /// The master key that wraps the keyring (a file holding base64 of 32 bytes); or set
    /// TOKENVAULT_MASTER_KEY, or master_key_file in tokenvault.toml [default: master.key in
    /// the data directory, made on first use over SQLite]. Hosts sharing PostgreSQL or
    /// Redis must all be given the same one.
    #[arg(long, global = true, env = "TOKENVAULT_MASTER_KEY_FILE", value_name = "FILE")]
    master_key_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Manage the OAuth providers the vault refreshes tokens with.
    #[command(subcommand)]
    Provider(ProviderCommand),
    /// Store, read, refresh and remove users' tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Connect a user's account: prints the provider's authorization URL, waits for the
    /// browser to come back to a loopback redirect URI (RFC 8252), and stores the tokens.
    /// With --device, prints a code to enter on any device instead (RFC 8628); with
    /// --client, obtains the client's own token (client-credentials grant).
    Connect {
        #[command(flatten)]
        connection: ConnectionArgs,
        /// Request this scope instead of the provider's configured ones. Repeatable.
        #[arg(long = "scope", value_name = "S")]
        scopes: Vec<String>,
        /// Run the device authorization flow: no browser on this machine needed.
        #[arg(long, conflicts_with_all = ["client", "port"])]
        device: bool,
        /// Obtain the client's own token with the client-credentials grant; the vault
        /// renews it itself.
        #[arg(long, conflicts_with = "port")]
        client: bool,
        #[command(flatten)]
        redirect: RedirectArgs,
    },
    /// Make a one-time connect link (valid fifteen minutes) to hand a user; prints its
    /// code. `tokenvault open-link CODE` (or `serve`) turns it into the provider's page.
    Link {
        #[command(flatten)]
        connection: ConnectionArgs,
        /// Request this scope instead of the provider's configured ones. Repeatable.
        #[arg(long = "scope", value_name = "S")]
        scopes: Vec<String>,
    },
    /// Connect the account a connect link names (from `link` or `token get --link`),
    /// like `connect` does; the link is spent.
    OpenLink {
        /// The link's code. It may begin with `-` (codes are base64url).
        #[arg(allow_hyphen_values = true)]
        code: String,
        #[command(flatten)]
        redirect: RedirectArgs,
    },
    /// Call the provider's API for a connection: the vault sets the token (refreshed when
    /// due, and once more on a 401), so it never reaches this output. Prints the status on
    /// stderr and the body on stdout.
    Proxy(proxy::ProxyArgs),
    /// Remove every connection of a user, revoking each at its provider; prints a
    /// receipt per connection.
    RevokeAll { tenant: String, user: String },
    /// A guided tour: store, list and read back a token, and look at the sealed record.
    Demo,
    /// Run the HTTP service for backends: the token API under /v1 (OpenAPI at
    /// /openapi.json), the connect pages for end users, the console (/console: end users'
    /// connections; admins sign in with an API key or OpenID Connect), background refresh,
    /// /healthz and /readyz. On first start it prints an operator API key.
    Serve {
        /// Address to listen on.
        #[arg(long, env = "TOKENVAULT_LISTEN", default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Where browsers reach this service, e.g. https://vault.example.com: connect links
        /// point there, and PUBLIC_URL/oauth/callback is the redirect URI [default: http://LISTEN].
        #[arg(long, env = "TOKENVAULT_PUBLIC_URL", value_name = "URL")]
        public_url: Option<String>,
        /// Background refresh: look for tokens to renew every this many seconds (0: never).
        #[arg(long, value_name = "SECS", default_value_t = 60)]
        refresh_every: u64,
        /// Background refresh renews tokens that expire within this many seconds.
        #[arg(long, value_name = "SECS", default_value_t = 300)]
        refresh_within: u64,
        /// Background refresh sends at most this many refreshes a minute to one provider.
        #[arg(long, value_name = "N", default_value_t = 120)]
        refresh_rate: u32,
        /// After each background pass, delete audit entries older than this many days
        /// (the trail still verifies from its checkpoint) [default: keep them all].
        #[arg(long, value_name = "DAYS", value_parser = clap::value_parser!(u64).range(1..))]
        audit_retention_days: Option<u64>,
        /// Also accept JWTs signed by a key of this key set (with --jwt-issuer and
        /// --jwt-audience); the tenant they act for is in --jwt-tenant-claim.
        #[arg(long, value_name = "URL", requires_all = ["jwt_issuer", "jwt_audience"])]
        jwks_url: Option<String>,
        #[arg(long, value_name = "ISS", requires = "jwks_url")]
        jwt_issuer: Option<String>,
        #[arg(long, value_name = "AUD", requires = "jwks_url")]
        jwt_audience: Option<String>,
        #[arg(long, value_name = "CLAIM", default_value = "tenant")]
        jwt_tenant_claim: String,
        /// Console sign-in through this OpenID Connect provider (with --console-oidc-client-id
        /// and the client's secret); register PUBLIC_URL/console/oidc/callback as its
        /// redirect URI. The ID token's --console-oidc-tenant-claim names the tenant the
        /// person administers.
        #[arg(long, env = "TOKENVAULT_CONSOLE_OIDC_ISSUER", value_name = "URL", requires = "console_oidc_client_id")]
        console_oidc_issuer: Option<String>,
        #[arg(long, env = "TOKENVAULT_CONSOLE_OIDC_CLIENT_ID", value_name = "ID", requires = "console_oidc_issuer")]
        console_oidc_client_id: Option<String>,
        /// The console client's secret (better in the environment than on a command line).
        #[arg(long, env = "TOKENVAULT_CONSOLE_OIDC_CLIENT_SECRET", value_name = "SECRET", hide_env_values = true)]
        console_oidc_client_secret: Option<String>,
        #[arg(long, value_name = "CLAIM", default_value = "tenant")]
        console_oidc_tenant_claim: String,
        /// The longest lifetime of a proxy access token, and the one it gets by default.
        #[arg(long, value_name = "SECS", default_value_t = tokenvault_serve::access_tokens::DEFAULT_MAX_LIFETIME_SECS,
            value_parser = clap::value_parser!(u64).range(1..))]
        access_token_max_lifetime: u64,
        /// Tenants' webhooks may point to this origin (scheme://host[:port]), besides the
        /// allowed_webhook_origins of tokenvault.toml. Repeatable. None: no webhook can be set.
        #[arg(long = "allow-webhook", value_name = "ORIGIN")]
        allow_webhook: Vec<String>,
        /// Try a failed webhook delivery again after this many milliseconds, twice as long
        /// after each further failure (at most an hour).
        #[arg(long, value_name = "MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..))]
        webhook_first_retry_ms: u64,
        /// Give up on an event not delivered within this many seconds of it happening; the
        /// console lists it.
        #[arg(long, value_name = "SECS", default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(1..))]
        webhook_give_up_after: u64,
    },
    /// The audit trail every host on the store writes: read it, verify its chain, prune it.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// A tenant as a whole: erase it when it leaves.
    #[command(subcommand)]
    Tenant(tenant::TenantCommand),
    /// Manage the API keys that callers of `serve` present.
    #[command(subcommand)]
    Apikey(ApikeyCommand),
    /// The data keys records are sealed with: list, rotate, re-encrypt, retire.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// The master key that wraps the data keys: make one, rotate it.
    #[command(subcommand)]
    MasterKey(keys::MasterKeyCommand),
    /// Show what the component exports and imports, what this host grants each import
    /// (egress, storage, keyring, audit, limits; never environment, arguments, files,
    /// sockets or stdin), and its SHA-256 for pinning.
    Inspect {
        /// Inspect this .wasm component instead of the one built into this host.
        #[arg(long, value_name = "FILE")]
        component: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ApikeyCommand {
    /// Make a key for one tenant's connections (or, with --operator, for every tenant and
    /// the provider registry). Prints it once; only its hash is kept.
    Create {
        #[arg(required_unless_present = "operator", conflicts_with = "operator")]
        tenant: Option<String>,
        #[arg(long)]
        operator: bool,
    },
    /// List keys: id, scope and creation time (never a key).
    Ls,
    /// Revoke a key by its id: requests presenting it fail from now on.
    Revoke { id: String },
}

#[derive(Subcommand)]
enum ProviderCommand {
    /// Register a provider, or replace one of the same name. Endpoints come from
    /// --template or --issuer (discovery), or are given; a given one overrides the others.
    Add(Box<ProviderAdd>),
    /// List providers (never their secrets): the vault's, or with --for-tenant those the
    /// tenant's connections use (its own, and the vault's of other names), each saying whose.
    Ls {
        #[arg(long, value_name = "TENANT")]
        for_tenant: Option<String>,
    },
    /// Show one provider: the vault's, or with --for-tenant the one the tenant's
    /// connections use.
    Show {
        name: String,
        #[arg(long, value_name = "TENANT")]
        for_tenant: Option<String>,
    },
    /// Remove a provider: the vault's, or with --for-tenant that tenant's own.
    Rm {
        name: String,
        #[arg(long, value_name = "TENANT")]
        for_tenant: Option<String>,
    },
}

#[derive(clap::Args)]
struct ProviderAdd {
    name: String,
    /// Register it as this tenant's own (its own OAuth app): the tenant's connections use
    /// it instead of the vault's of the same name; no other tenant sees it.
    #[arg(long, value_name = "TENANT")]
    for_tenant: Option<String>,
    /// A built-in template: its endpoints, default scopes and quirks.
    #[arg(long, value_enum, conflicts_with = "issuer")]
    template: Option<Template>,
    /// With --template microsoft: the directory tenant (id or domain) [default: common].
    #[arg(long, requires = "template")]
    tenant: Option<String>,
    /// Discover the endpoints from this issuer's metadata (RFC 8414, then OpenID
    /// Connect discovery). Its origin must be allowed outbound.
    #[arg(long, value_name = "URL")]
    issuer: Option<String>,
    #[arg(long, value_name = "URL")]
    authorization_url: Option<String>,
    #[arg(long, value_name = "URL")]
    token_url: Option<String>,
    #[arg(long, value_name = "URL")]
    revocation_url: Option<String>,
    #[arg(long, value_name = "URL")]
    device_authorization_url: Option<String>,
    #[arg(long)]
    client_id: String,
    /// Name of an environment variable holding the client secret (secrets are never
    /// taken from arguments, which other users can see). None: a public client.
    #[arg(long, value_name = "VAR")]
    client_secret_env: Option<String>,
    /// [default: the template's, else what the metadata lists first, else basic]
    #[arg(long, value_enum)]
    client_auth: Option<AuthMethod>,
    /// A scope to request when connecting [default: the template's]. Repeatable.
    #[arg(long = "scope", value_name = "S")]
    scopes: Vec<String>,
    /// An extra parameter of the authorization request, e.g. prompt=consent. Repeatable.
    #[arg(long = "auth-param", value_name = "NAME=VALUE", value_parser = name_value)]
    authorization_params: Vec<(String, String)>,
    /// Refresh this many seconds before expiry [default: 60; capped at half a token's lifetime].
    #[arg(long, value_name = "SECS")]
    refresh_buffer: Option<u32>,
    /// Where the provider's API lives, for `proxy` [default: the template's].
    #[arg(long, value_name = "URL")]
    api_base_url: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Template {
    Github,
    Google,
    Microsoft,
    Slack,
    Discord,
    Gitlab,
}

fn name_value(text: &str) -> std::result::Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err("expected NAME=VALUE".into()),
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum AuthMethod {
    /// client_secret_basic: HTTP Basic authentication.
    Basic,
    /// client_secret_post: credentials in the form body.
    Post,
}

#[derive(clap::Args)]
struct RedirectArgs {
    /// Port of the redirect URI http://127.0.0.1:PORT/callback [default: any free port;
    /// providers accept any port for native clients, others need the exact URI registered].
    #[arg(long, default_value_t = 0)]
    port: u16,
}

#[derive(clap::Args)]
struct ConnectionArgs {
    tenant: String,
    user: String,
    provider: String,
    /// Which of the user's connections to this provider.
    #[arg(long, default_value = tokenvault::DEFAULT_CONNECTION_NAME)]
    name: String,
}

impl ConnectionArgs {
    fn key(&self) -> ConnectionKey {
        ConnectionKey::new(&self.tenant, &self.user, &self.provider, &self.name)
    }
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Store a token: reads an OAuth token response (JSON) on stdin.
    Put(ConnectionArgs),
    /// Print a fresh token set (refreshed first when it is about to expire).
    Get {
        #[command(flatten)]
        connection: ConnectionArgs,
        /// When there is no usable connection, print a connect link for it instead of an
        /// error: {"link": {"code", "expires_at"}}; a token comes as {"token": {…}}.
        #[arg(long)]
        link: bool,
    },
    /// Refresh now and print the new token set.
    Refresh(ConnectionArgs),
    /// Remove a connection, revoking its tokens at the provider (RFC 7009) first; prints
    /// what happened upstream.
    Rm(ConnectionArgs),
    /// List a user's connections: metadata only.
    Ls { tenant: String, user: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A service logs its requests by default; a command logs only when asked.
    let default_filter = matches!(cli.command, Command::Serve { .. }).then(|| "info".to_owned());
    let mut log_writer = None;
    if let Some(mut filter) = std::env::var("TOKENVAULT_LOG").ok().or(default_filter) {
        // The compiler traces every instruction it emits: millions of lines, minutes of
        // work. Keep it quiet unless asked for by name.
        if !filter.contains("cranelift") && !filter.contains("regalloc") {
            filter.push_str(
                ",cranelift_codegen=info,cranelift_frontend=info,wasmtime_internal_cranelift=info,regalloc2=info",
            );
        }
        // Lines go to stderr from a thread of their own, in one write for all that arrived
        // meanwhile: a request does not wait on a write (a service logs each one). Never
        // dropped: a full queue makes the logging caller wait.
        let (writer, flushed_on_drop) = tracing_appender::non_blocking::NonBlockingBuilder::default()
            .lossy(false)
            .thread_name("tokenvault-log")
            .finish(std::io::BufWriter::new(std::io::stderr()));
        log_writer = Some(flushed_on_drop);
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(writer)
            .init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let outcome = runtime.block_on(run(cli));
    drop(log_writer); // every line logged is written before the outcome is
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{}", err.to_string().replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

fn options(cli: &Cli) -> Result<Options> {
    let mut options = Options::from_data_dir(&cli.data_dir)?;
    options.allow_outbound(&cli.allow_outbound)?;
    if let Some(url) = &cli.storage {
        options.storage = StorageUrl::parse(url).map_err(Error::Config)?;
    }
    if let Some(file) = &cli.master_key_file {
        if matches!(options.master_key, MasterKeySource::Given(_)) {
            return Err(Error::Config(format!(
                "both {MASTER_KEY_ENV} and --master-key-file are set: give the master key one way"
            )));
        }
        options.master_key = MasterKeySource::File(file.clone());
    }
    Ok(options)
}

fn print_json(value: &impl Serialize) {
    use std::io::Write;
    let text = serde_json::to_string_pretty(value).expect("output serializes");
    // A reader that went away (`| head`) is not an error worth a panic.
    let _ = writeln!(std::io::stdout(), "{text}");
}

async fn run(cli: Cli) -> Result<()> {
    let options = options(&cli)?;
    match &cli.command {
        Command::Inspect { component, json } => return inspect::run(&options, component.as_deref(), *json).await,
        Command::MasterKey(keys::MasterKeyCommand::New { file }) => return keys::new_master_key(file),
        _ => {}
    }
    let vault = Vault::open(&options).await?;
    // The service names each request's caller; everything else is this user at the CLI.
    let vault = if matches!(cli.command, Command::Serve { .. }) { vault } else { vault.acting_as(Actor::cli()) };
    match cli.command {
        Command::Provider(command) => provider(&vault, command).await,
        Command::Token(command) => token(&vault, command).await,
        Command::Connect { connection, scopes, device, client, redirect } => {
            let key = connection.key();
            let scopes = (!scopes.is_empty()).then_some(scopes);
            let connected = if device {
                connect::device(&vault, &key, scopes.as_deref()).await?
            } else if client {
                tokenvault::Connected { info: vault.connect_client(&key, scopes.as_deref()).await?, key }
            } else {
                let what = format!("{}'s {} account", key.user, key.provider);
                connect::browser(&vault, &what, redirect.port, |redirect_uri| {
                    let (vault, key, scopes) = (&vault, &key, scopes.as_deref());
                    async move { vault.begin(key, &redirect_uri, scopes, None).await }
                })
                .await?
            };
            print_json(&connected);
            Ok(())
        }
        Command::Link { connection, scopes } => {
            let scopes = (!scopes.is_empty()).then_some(scopes);
            print_json(&vault.link(&connection.key(), scopes.as_deref()).await?);
            Ok(())
        }
        Command::OpenLink { code, redirect } => {
            let connected = connect::browser(&vault, "the account", redirect.port, |redirect_uri| {
                let (vault, code) = (&vault, &code);
                async move { vault.open_link(code, &redirect_uri, None).await }
            })
            .await?;
            print_json(&connected);
            Ok(())
        }
        Command::Proxy(args) => proxy::run(&vault, args).await,
        Command::RevokeAll { tenant, user } => {
            print_json(&vault.revoke_all(&tenant, &user).await?);
            Ok(())
        }
        Command::Demo => demo(&vault, &cli.data_dir).await,
        Command::Serve {
            listen,
            public_url,
            refresh_every,
            refresh_within,
            refresh_rate,
            audit_retention_days,
            jwks_url,
            jwt_issuer,
            jwt_audience,
            jwt_tenant_claim,
            console_oidc_issuer,
            console_oidc_client_id,
            console_oidc_client_secret,
            console_oidc_tenant_claim,
            access_token_max_lifetime,
            allow_webhook,
            webhook_first_retry_ms,
            webhook_give_up_after,
        } => {
            let mut options = options;
            options.allow_webhooks(&allow_webhook)?;
            let retry = tokenvault::outbox::RetryPolicy {
                first_backoff: std::time::Duration::from_millis(webhook_first_retry_ms),
                give_up_after: std::time::Duration::from_secs(webhook_give_up_after),
                ..Default::default()
            };
            let webhooks = tokenvault_serve::webhooks::Webhooks::new(options.webhook_origins, retry)?;
            let oidc = match (console_oidc_issuer, console_oidc_client_id) {
                (Some(issuer), Some(client_id)) => Some(tokenvault_serve::console::oidc::OidcConfig {
                    issuer,
                    client_id,
                    client_secret: console_oidc_client_secret.ok_or_else(|| {
                        Error::Config("--console-oidc-issuer needs the client's secret: set TOKENVAULT_CONSOLE_OIDC_CLIENT_SECRET".into())
                    })?,
                    tenant_claim: console_oidc_tenant_claim,
                }),
                _ => None,
            };
            let jwt = jwks_url.map(|jwks_url| tokenvault_serve::jwt::JwtConfig {
                jwks_url,
                issuer: jwt_issuer.unwrap_or_default(),
                audience: jwt_audience.unwrap_or_default(),
                tenant_claim: jwt_tenant_claim,
            });
            let schedule = (refresh_every > 0).then(|| tokenvault_serve::scheduler::Schedule {
                interval: std::time::Duration::from_secs(refresh_every),
                horizon: std::time::Duration::from_secs(refresh_within),
                per_provider_per_minute: refresh_rate,
                audit_retention: audit_retention_days.map(|days| std::time::Duration::from_secs(days * 86_400)),
            });
            let args =
                serve::ServeArgs { listen, public_url, jwt, oidc, schedule, access_token_max_lifetime, webhooks };
            serve::run(vault, args).await
        }
        Command::Apikey(ApikeyCommand::Create { tenant, operator: _ }) => serve::create_key(&vault, tenant).await,
        Command::Apikey(ApikeyCommand::Ls) => {
            print_json(&ApiKeys::of(&vault).list().await?);
            Ok(())
        }
        Command::Apikey(ApikeyCommand::Revoke { id }) => {
            ApiKeys::of(&vault).revoke(&id).await?;
            print_json(&serde_json::json!({ "revoked": id }));
            Ok(())
        }
        Command::Audit(command) => audit::run(&vault, command).await,
        Command::Tenant(command) => tenant::run(&vault, command).await,
        Command::Keys(command) => keys::keys(&vault, command).await,
        Command::MasterKey(command) => keys::master_key(&vault, command).await,
        Command::Inspect { .. } => unreachable!("handled before the vault opens"),
    }
}

async fn provider(vault: &Vault, command: ProviderCommand) -> Result<()> {
    match command {
        ProviderCommand::Add(add) => {
            let ProviderAdd {
                name,
                for_tenant,
                template,
                tenant,
                issuer,
                authorization_url,
                token_url,
                revocation_url,
                device_authorization_url,
                client_id,
                client_secret_env,
                client_auth,
                scopes,
                authorization_params,
                refresh_buffer,
                api_base_url,
            } = *add;
            let client_secret = match client_secret_env {
                Some(var) => Some(
                    std::env::var(&var)
                        .map_err(|_| Error::invalid_input(format!("environment variable {var} is not set")))?,
                ),
                None => None,
            };
            let template = template.map(|t| TemplateRef {
                name: t.to_possible_value().expect("no skipped variants").get_name().to_owned(),
                tenant,
            });
            let config = ProviderConfig {
                name,
                template,
                issuer,
                authorization_url,
                token_url,
                revocation_url,
                device_authorization_url,
                client_id,
                client_secret,
                client_auth: client_auth.map(|auth| match auth {
                    AuthMethod::Basic => ClientAuth::ClientSecretBasic,
                    AuthMethod::Post => ClientAuth::ClientSecretPost,
                }),
                scopes,
                authorization_params,
                refresh_buffer_secs: refresh_buffer,
                api_base_url,
            };
            print_json(&vault.put_provider_of(for_tenant.as_deref(), &config).await?);
        }
        ProviderCommand::Ls { for_tenant } => print_json(&vault.providers_of(for_tenant.as_deref()).await?),
        ProviderCommand::Show { name, for_tenant } => {
            print_json(&vault.provider_of(for_tenant.as_deref(), &name).await?)
        }
        ProviderCommand::Rm { name, for_tenant } => {
            vault.remove_provider_of(for_tenant.as_deref(), &name).await?;
            print_json(&serde_json::json!({ "removed": name }));
        }
    }
    Ok(())
}

async fn token(vault: &Vault, command: TokenCommand) -> Result<()> {
    match command {
        TokenCommand::Put(args) => {
            let mut input = Vec::new();
            std::io::stdin()
                .read_to_end(&mut input)
                .map_err(|e| Error::invalid_input(format!("cannot read the token response from stdin: {e}")))?;
            let grant = TokenGrant::from_json(&input)?;
            print_json(&vault.store(&args.key(), &grant).await?);
        }
        TokenCommand::Get { connection, link: false } => print_json(&vault.get(&connection.key()).await?),
        TokenCommand::Get { connection, link: true } => print_json(&vault.get_or_link(&connection.key(), None).await?),
        TokenCommand::Refresh(args) => print_json(&vault.refresh(&args.key()).await?),
        TokenCommand::Rm(args) => print_json(&vault.remove(&args.key()).await?),
        TokenCommand::Ls { tenant, user } => print_json(&vault.list(&tenant, &user).await?),
    }
    Ok(())
}

/// The guided tour. It uses a provider on a reserved `.invalid` host that is not in the
/// allow-list, so nothing leaves the machine: the refresh at the end shows the sandbox
/// refusing it.
async fn demo(vault: &Vault, data_dir: &std::path::Path) -> Result<()> {
    let random = |prefix: &str| -> Result<String> {
        let mut bytes = [0u8; 12];
        getrandom::fill(&mut bytes).map_err(|e| Error::Config(format!("no randomness: {e}")))?;
        Ok(format!("{prefix}{}", hex::encode(bytes)))
    };
    let bold = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let step = |n: u32, text: &str| {
        if bold {
            println!("\n\x1b[1m{n}. {text}\x1b[0m");
        } else {
            println!("\n{n}. {text}");
        }
    };

    println!("tokenvault demo, data directory {}", data_dir.display());
    step(1, "Register a provider (its client secret is sealed by the component)");
    let provider = vault
        .put_provider(&ProviderConfig {
            name: "demo".into(),
            token_url: Some("https://demo.tokenvault.invalid/oauth/token".into()),
            client_id: "demo-client".into(),
            client_secret: Some(random("demo-secret-")?),
            scopes: vec!["read".into()],
            ..ProviderConfig::default()
        })
        .await?;
    print_json(&provider);

    step(2, "Store a token for user alice of tenant acme (as `token put` would from stdin)");
    let key = ConnectionKey::new("acme", "alice", "demo", "default");
    let access_token = random("demo-at-")?;
    let grant = TokenGrant {
        access_token: access_token.clone(),
        token_type: "Bearer".into(),
        expires_in: Some(3600),
        refresh_token: Some(random("demo-rt-")?),
        scope: Some("read write".into()),
    };
    print_json(&vault.store(&key, &grant).await?);

    step(3, "List alice's connections: metadata only, never a value");
    print_json(&vault.list("acme", "alice").await?);

    step(4, "Read the token back (`token get`)");
    let token = vault.get(&key).await?;
    println!(
        "access_token {} (the value stored in step 2: {})",
        token.access_token,
        token.access_token == access_token
    );

    step(5, "What storage actually holds");
    let storage = &vault.services().storage;
    println!("storage: {}", storage.describe());
    for storage_key in storage.list("tok/acme/alice/", None, 10).await?.keys {
        if let Some(entry) = storage.get(&storage_key).await? {
            let preview: String = hex::encode(&entry.value[..entry.value.len().min(48)]);
            let leaked = entry.value.windows(access_token.len()).any(|w| w == access_token.as_bytes());
            println!(
                "key     {storage_key}\nversion {}\nbytes   {} (AES-256-GCM-SIV sealed)\nstart   {preview}…",
                entry.version,
                entry.value.len()
            );
            println!("access token visible in the stored bytes: {leaked}");
        }
    }

    step(6, "Force a refresh: the provider's host is not in the allow-list, so the sandbox refuses");
    match vault.refresh(&key).await {
        Err(err) => println!("{err}"),
        Ok(_) => println!("unexpected: the refresh went through"),
    }
    println!("(the stored token is untouched: `token get` still returns it)");

    step(7, "The audit trail records every operation and who asked, without values");
    let newest = tokenvault::audit::AuditQuery { filter: Default::default(), after_ms: None, cursor: None, limit: 5 };
    if let Some(page) = vault.services().audit.read(&newest).await? {
        for entry in page.events.iter().rev() {
            println!("{}", serde_json::to_string(entry).expect("an entry serializes"));
        }
    }
    println!(
        "\nTry next:\n  tokenvault --data-dir {dir} token ls acme alice\n  tokenvault --data-dir {dir} token get acme alice demo\n  tokenvault --data-dir {dir} audit verify",
        dir = data_dir.display()
    );
    Ok(())
}
