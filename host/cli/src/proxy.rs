//! `tokenvault proxy`: call a provider's API with a connection's token, which the
//! component sets; the token never reaches this process's output.

use std::io::{Read, Write};

use tokenvault::{Error, ProxyRequest, Result, Vault};

use crate::ConnectionArgs;

#[derive(clap::Args)]
pub struct ProxyArgs {
    #[command(flatten)]
    connection: ConnectionArgs,
    /// GET, POST, PUT, PATCH, DELETE, ...
    method: String,
    /// The path and query under the provider's API base URL, e.g. /user/repos?per_page=5.
    path: String,
    /// The request body: TEXT, @FILE, or @- for stdin.
    #[arg(long, short = 'd', value_name = "DATA")]
    data: Option<String>,
    /// A request header, 'Name: value'. Repeatable.
    #[arg(long = "header", short = 'H', value_name = "HEADER", value_parser = header)]
    headers: Vec<(String, String)>,
}

fn header(text: &str) -> std::result::Result<(String, String), String> {
    match text.split_once(':') {
        Some((name, value)) if !name.trim().is_empty() => Ok((name.trim().to_owned(), value.trim().to_owned())),
        _ => Err("expected 'Name: value'".into()),
    }
}

/// Prints the provider's status on stderr (`HTTP 200`) and its body on stdout, as it came.
pub async fn run(vault: &Vault, args: ProxyArgs) -> Result<()> {
    let body = match args.data.as_deref() {
        None => Vec::new(),
        Some("@-") => {
            let mut body = Vec::new();
            std::io::stdin()
                .read_to_end(&mut body)
                .map_err(|e| Error::invalid_input(format!("cannot read the body from stdin: {e}")))?;
            body
        }
        Some(data) => match data.strip_prefix('@') {
            Some(file) => std::fs::read(file).map_err(|e| Error::invalid_input(format!("cannot read {file}: {e}")))?,
            None => data.as_bytes().to_vec(),
        },
    };
    let request = ProxyRequest {
        method: args.method.to_ascii_uppercase(),
        path: args.path,
        headers: args.headers.into_iter().map(|(name, value)| (name, value.into_bytes())).collect(),
        body,
    };
    let answer = vault.proxy(&args.connection.key(), &request).await?;
    eprintln!("HTTP {}", answer.status);
    // A reader that went away (`| head`) is not an error worth a panic.
    let _ = std::io::stdout().write_all(&answer.body);
    Ok(())
}
