//! The `banter` binary: parse settings, start logging, then either run a command on the history
//! (`backup`, `export`) or bind and serve until a signal.

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = banter::Config::parse();
    config.validate()?;
    banter::ops::telemetry::init(config.log_format);
    if let Some(command) = &config.command {
        return banter::commands::run(command, &config);
    }

    let listener = TcpListener::bind((config.host, config.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", config.host, config.port))?;
    let addr = listener
        .local_addr()
        .context("cannot read the bound address")?;
    // Tools and tests read this line to find the port when PORT=0.
    let scheme = if config.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    println!("banter listening on {scheme}://{addr}");
    tracing::info!(%addr, "listening");

    banter::server::run(listener, config, banter::ops::shutdown::signal()).await
}
