//! The `authd` command: `serve` (the default), `migrate`, and administrative subcommands.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use authd::config::Config;
use authd::server;

#[derive(Debug, Parser)]
#[command(
    name = "authd",
    version,
    long_version = authd::build_info::LONG_VERSION,
    about = "gRPC authentication service"
)]
struct Cli {
    #[command(flatten)]
    config: Config,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gRPC server (the default).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Manage service keys (credentials for ValidateToken).
    #[command(subcommand)]
    ServiceKeys(ServiceKeysCommand),
    /// Manage users directly in the database.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Manage the keys that sign access tokens.
    #[command(subcommand)]
    SigningKeys(SigningKeysCommand),
    /// Work with the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Ask the health service (grpc.health.v1, plaintext) and exit 0 only when it answers
    /// SERVING; otherwise print the reason on stderr and exit 1. Never touches the database.
    Healthcheck {
        /// The health service: "" (readiness, the default), authd.v1.AuthService,
        /// authd.v1.UserService, or liveness.
        #[arg(long, default_value = "")]
        service: String,
        /// HOST:PORT to ask. Default: AUTHD_HEALTH_LISTEN if set, else AUTHD_LISTEN, with 0.0.0.0
        /// and [::] replaced by loopback.
        #[arg(long)]
        addr: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum SigningKeysCommand {
    /// Create a new signing key: published at once, signing after AUTHD_KEY_PUBLISH_DELAY.
    Rotate,
}

#[derive(Debug, Subcommand)]
enum UsersCommand {
    /// Create an admin account. The password is read from standard input, never from the command line.
    CreateAdmin {
        /// The admin's e-mail address.
        #[arg(long)]
        email: String,
        /// Read the password from standard input (one line).
        #[arg(long, required = true)]
        password_stdin: bool,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Print the keyed hash (`hmac:…`) that LOGIN_FAILED events of unknown accounts store instead
    /// of the identifier, for a candidate identifier read from standard input (one line), so it
    /// never appears on a command line.
    IdentifierDigest {
        /// The candidate was sent as a username (default: as an e-mail).
        #[arg(long)]
        username: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ServiceKeysCommand {
    /// Create a service key directly in the database and print it once.
    Create {
        /// A label for the calling service.
        name: String,
        /// A gateway's key: callers presenting it may name their end user's address in
        /// x-forwarded-for (used for limits, throttling, sessions and audit).
        #[arg(long)]
        trusted_proxy: bool,
        /// An IP or CIDR the key may be used from (repeatable); none = anywhere.
        #[arg(long = "allowed-cidr", value_name = "CIDR")]
        allowed_cidrs: Vec<String>,
    },
}

/// One line from standard input, without its line ending.
fn read_password_line() -> std::io::Result<String> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let trimmed = line.strip_suffix('\n').unwrap_or(&line);
    Ok(trimmed.strip_suffix('\r').unwrap_or(trimmed).to_owned())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // AUTHD_LOG_FORMAT=json: one JSON object per line. Lines are written to stderr by a thread of
    // their own; `_log_flush` writes out the last ones when main returns.
    let (logged, _log_flush) = match server::background_writer(std::io::stderr()) {
        Ok((writer, guard)) => (
            server::init_logging(&cli.config.log, &cli.config.log_format, writer),
            Some(guard),
        ),
        Err(e) => {
            eprintln!(
                "authd: cannot start the log writer thread ({e}); logging to stderr directly"
            );
            (
                server::init_logging(&cli.config.log, &cli.config.log_format, std::io::stderr),
                None,
            )
        }
    };
    if let Err(e) = logged {
        eprintln!("authd: cannot install the log subscriber: {e}");
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("authd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(Command::Healthcheck { service, addr }) = &cli.command {
        let answer = runtime.block_on(server::healthcheck_command(
            &cli.config,
            addr.as_deref(),
            service,
        ));
        return match answer {
            Ok(status) => {
                println!("{status}");
                ExitCode::SUCCESS
            }
            Err(reason) => {
                eprintln!("authd healthcheck: {reason}");
                ExitCode::FAILURE
            }
        };
    }
    let config = cli.config;
    let result = runtime.block_on(async move {
        match cli.command.unwrap_or(Command::Serve) {
            Command::Serve => server::run(config).await,
            // Answered above, without the database.
            Command::Healthcheck { .. } => Ok(()),
            Command::Migrate => {
                let n = server::migrate(config).await?;
                println!("{n} migration(s) applied");
                Ok(())
            }
            Command::Users(UsersCommand::CreateAdmin {
                email,
                password_stdin: _,
            }) => {
                let password = read_password_line().map_err(server::StartError::Stdin)?;
                let id = server::create_admin(config, &email, &password).await?;
                println!("{id}");
                Ok(())
            }
            Command::Audit(AuditCommand::IdentifierDigest { username }) => {
                let line = read_password_line().map_err(server::StartError::Stdin)?;
                let identifier = if username {
                    authd::api::LoginIdentifier::Username(line)
                } else {
                    authd::api::LoginIdentifier::Email(line)
                };
                println!("{}", server::identifier_digest(config, identifier).await?);
                Ok(())
            }
            Command::SigningKeys(SigningKeysCommand::Rotate) => {
                let (kid, activate_time) = server::rotate_signing_key(config).await?;
                println!("{kid}");
                eprintln!("new signing key {kid} signs from {activate_time}");
                Ok(())
            }
            Command::ServiceKeys(ServiceKeysCommand::Create {
                name,
                trusted_proxy,
                allowed_cidrs,
            }) => {
                let spec = authd::api::ServiceKeySpec {
                    name,
                    trusted_proxy,
                    allowed_cidrs,
                };
                let (id, key) = server::create_service_key(config, &spec).await?;
                eprintln!("service key {id} created; this is the only time the key is shown:");
                println!("{key}");
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "authd failed");
            eprintln!("authd: {e}");
            ExitCode::FAILURE
        }
    }
}
