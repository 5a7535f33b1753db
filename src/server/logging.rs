//! Logging set-up: the `AUTHD_LOG` filter (with the targets that would leak secrets held at INFO)
//! and the process-wide subscriber, as text or JSON.

/// Log targets held at INFO whatever `AUTHD_LOG` asks for: at DEBUG `tokio_postgres` logs every
/// query's parameters, which include password hashes and, without a master key, the signing keys
/// and server secrets.
pub const SECRET_LEAKING_LOG_TARGETS: [&str; 1] = ["tokio_postgres::query"];

/// The log filter for `directives` (`AUTHD_LOG`, `EnvFilter` syntax; `info` if it does not
/// parse), with [`SECRET_LEAKING_LOG_TARGETS`] held at INFO.
pub fn log_filter(directives: &str) -> tracing_subscriber::EnvFilter {
    let mut filter = tracing_subscriber::EnvFilter::try_new(directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    for target in SECRET_LEAKING_LOG_TARGETS {
        if let Ok(directive) = format!("{target}=info").parse() {
            filter = filter.add_directive(directive);
        }
    }
    filter
}

/// Installs the process-wide log subscriber: [`log_filter`] of `directives`, written to `writer`,
/// human-readable for `format` "text", one JSON object per line for "json" (event fields at the top
/// level, the innermost span's fields, e.g. an RPC's `method`, `request_id`, `code` and
/// `latency_ms`, under `span`).
pub fn init_logging<W>(
    directives: &str,
    format: &str,
    writer: W,
) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(log_filter(directives))
        .with_writer(writer);
    if format.eq_ignore_ascii_case("json") {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        // Colours only on a terminal: log collectors store escape codes verbatim.
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init()
    }
}
