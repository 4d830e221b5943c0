//! The `bff` command line: `serve` (default), `check-config`, and `demo`.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;

use bff::config::Config;
#[cfg(feature = "demo")]
use bff::config::LogFormat;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "bff", version, about = "A Backend-for-Frontend for single-page apps (OAuth 2.0 / OpenID Connect)")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Configuration file (TOML); also `BFF_CONFIG`.
    #[arg(long, global = true, env = "BFF_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve,
    /// Load and validate the configuration, print it with secrets redacted; exit 2 on problems.
    CheckConfig {
        /// Also fetch the provider's metadata and report what does not match the configuration.
        #[arg(long)]
        online: bool,
    },
    /// Run a demo identity provider, a demo API and bff with the demo SPA, all on loopback.
    #[cfg(feature = "demo")]
    Demo(bff::demo::DemoArgs),
    /// Run the demo API alone, accepting access tokens of the given provider.
    #[cfg(feature = "demo")]
    DemoApi(bff::demo::DemoApiArgs),
}

fn load_config(path: Option<&std::path::Path>) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|errors| {
        eprintln!("bff: the configuration has {} problem(s):", errors.0.len());
        for e in &errors.0 {
            eprintln!("  {e}");
        }
        ExitCode::from(2)
    })
}

/// `check-config --online`: discovery as `serve` does it, a test of bff's client authentication,
/// and what the provider lacks that the configuration relies on; one `key: message` line each on
/// stderr. Exit 2 when anything would make sign-ins or refreshes fail.
async fn check_provider(config: &Config) -> ExitCode {
    let mut fails = false;
    let several = !config.frontends.is_empty();
    for view in config.views() {
        if several {
            eprintln!("frontend {:?}:", view.frontend.name);
        }
        fails |= !check_one_provider(&view).await;
    }
    if fails { ExitCode::from(2) } else { ExitCode::SUCCESS }
}

/// One frontend's provider; whether it works as configured.
async fn check_one_provider(config: &Config) -> bool {
    let oidc = match bff::oidc::Oidc::new(config) {
        Ok(oidc) => oidc,
        Err(e) => {
            eprintln!("bff: {e:#}");
            return false;
        }
    };
    let findings = oidc.check_online().await;
    for finding in &findings {
        eprintln!("{finding}");
    }
    if findings.iter().any(|f| f.severity == bff::oidc::Severity::Error) {
        eprintln!("bff: the provider at {} will not work as configured", config.oidc.issuer);
        false
    } else {
        eprintln!("bff: the provider at {} answers as configured", config.oidc.issuer);
        true
    }
}

#[actix_web::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig { online } => match load_config(cli.config.as_deref()) {
            Ok(config) => {
                print!("{}", config.to_redacted_toml());
                if online { check_provider(&config).await } else { ExitCode::SUCCESS }
            }
            Err(code) => code,
        },
        Command::Serve => {
            let config = match load_config(cli.config.as_deref()) {
                Ok(config) => config,
                Err(code) => return code,
            };
            let telemetry = bff::telemetry::init_with_traces(config.log.format, &config.log.level, &config.telemetry);
            let _flushed_at_exit = match telemetry {
                Ok(telemetry) => telemetry,
                Err(e) => {
                    eprintln!("bff: cannot export traces ([telemetry]): {e:#}");
                    return ExitCode::from(2);
                }
            };
            exit_code("bff", serve(config, cli.config).await)
        }
        #[cfg(feature = "demo")]
        Command::Demo(args) => {
            bff::telemetry::init(LogFormat::Text, "warn,bff=info,bff::http=warn");
            exit_code("bff demo", bff::demo::run(args).await)
        }
        #[cfg(feature = "demo")]
        Command::DemoApi(args) => {
            bff::telemetry::init(LogFormat::Text, "info");
            exit_code("bff demo-api", bff::demo::run_api(args).await)
        }
    }
}

fn exit_code(what: &str, result: Result<(), anyhow::Error>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // A mistake in the configuration only found on trying it (a Redis CA that does not
        // verify the server): reported like the loader's, with exit 2.
        Err(e) if e.downcast_ref::<bff::config::ConfigErrors>().is_some() => {
            eprintln!("{what}: the configuration has a problem:\n  {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("{what}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config, file: Option<PathBuf>) -> Result<(), anyhow::Error> {
    let listener = TcpListener::bind(config.server.listen)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.server.listen))?;
    for view in config.views() {
        tracing::info!(
            frontend = %view.frontend.name,
            public_url = %view.server.public_url,
            hosts = ?view.frontend.hosts,
            path = %view.frontend.path,
            "frontend"
        );
    }
    tracing::info!(listen = %config.server.listen, "bff listening");
    // Before anything else can take time: a SIGHUP's default action ends the process.
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    let app = bff::Application::build(config, listener).await?;
    app.set_config_file(file.clone());
    match hangups {
        Ok(hangups) => {
            tokio::spawn(reload_on_hangup(app.reloader(), file, hangups));
        }
        Err(e) => tracing::warn!("cannot listen for SIGHUP ({e}); a configuration change needs a restart"),
    }
    app.run_until_stopped().await?;
    Ok(())
}

/// `SIGHUP`: the configuration file (and the `BFF_*` variables, as at start) read again and
/// applied, or refused with every problem logged.
async fn reload_on_hangup(
    reloader: bff::runtime::Reloader,
    file: Option<PathBuf>,
    mut hangups: tokio::signal::unix::Signal,
) {
    while hangups.recv().await.is_some() {
        tracing::info!("SIGHUP: reading the configuration again");
        let _ = reloader.reload(Config::load(file.as_deref())).await;
    }
}
