//! `authd-bench`: a closed-loop gRPC load generator for authd, in the spirit of pgbench and
//! redis-benchmark. See `authd-bench --help` and `scripts/benchmarks.sh`.
//!
//! This file owns the order of a run and the process: parse the options, raise the open-files
//! limit, build the async runtime, open the connections, set up users and keys, time bcrypt,
//! run the load, print the report, clean up and pick the exit code. The modules own the rest:
//!
//! * [`cli`]: options, `--mix` and duration parsing, the run's worker groups;
//! * [`client`]: endpoint settings and eager connections (RLIMIT_NOFILE and status code names
//!   come from `authd_proto`, which the server shares);
//! * [`setup`]: bench users, sessions and the service key, through the API, with retries;
//! * [`load`]: the closed-loop workers and the reply checks;
//! * [`report`]: merging histograms, the JSON and text reports, the error-rate verdict;
//! * [`bcrypt_probe`]: the in-process bcrypt verify timing;
//! * [`wait`]: `--wait-serving`, the start-up probe;
//! * [`watch`]: `--watch-streams`, the scale of WatchRevocations.

mod bcrypt_probe;
mod cli;
mod client;
mod load;
mod report;
mod setup;
mod wait;
mod watch;

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Parser;

use crate::cli::{Cli, Rpc};
use crate::report::{LoginRatio, Report, RunInfo};
use crate::setup::SetupOptions;

const EXIT_FAILURE: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_ERROR_RATE: u8 = 3;
const EXIT_NOT_SERVING: u8 = 4;

fn log(msg: &str) {
    eprintln!("authd-bench: {msg}");
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let plan = match cli.plan() {
        Ok(p) => p,
        Err(e) => {
            log(&e);
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match authd_proto::rlimit::raise_open_file_limit() {
        Ok((old, new)) if old != new => log(&format!("raised the open-files limit {old} -> {new}")),
        Ok(_) => {}
        Err(e) => log(&format!("cannot raise the open-files limit: {e}")),
    }
    let client_cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = cli.threads.map_or(client_cores, |t| t as usize);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            log(&format!("cannot start the async runtime: {e}"));
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    if let Some(limit) = cli.wait_serving {
        return runtime.block_on(wait_mode(&cli, limit));
    }
    if let Some(streams) = cli.watch_streams {
        return runtime.block_on(watch_mode(&cli, streams));
    }
    match runtime.block_on(bench(&cli, plan, client_cores, threads)) {
        Ok(code) => code,
        Err(e) => {
            log(&e);
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

async fn watch_mode(cli: &Cli, streams: u32) -> ExitCode {
    match watch::run(cli, streams, &log).await {
        Ok(report) => {
            match serde_json::to_string_pretty(&report) {
                Ok(j) => println!("{j}"),
                Err(e) => log(&format!("JSON: {e}")),
            }
            if report.incomplete_streams > 0 {
                log(&format!(
                    "{} stream(s) did not receive the whole burst",
                    report.incomplete_streams
                ));
                return ExitCode::from(EXIT_FAILURE);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            log(&e);
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

async fn wait_mode(cli: &Cli, limit: std::time::Duration) -> ExitCode {
    let endpoint = match client::endpoint(&cli.addr) {
        Ok(e) => e,
        Err(e) => {
            log(&e);
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let waited = wait::wait_serving(endpoint, limit, cli.poll_interval, cli.since_unix_ns).await;
    if cli.json {
        match serde_json::to_string(&waited) {
            Ok(j) => println!("{j}"),
            Err(e) => log(&format!("JSON: {e}")),
        }
    } else if waited.serving {
        println!(
            "SERVING after {:.3} s ({} attempts)",
            waited.elapsed_s, waited.attempts
        );
    }
    if waited.serving {
        ExitCode::SUCCESS
    } else {
        log(&format!(
            "{} was not SERVING within {:.1} s; last: {}",
            cli.addr,
            limit.as_secs_f64(),
            waited.last_error.as_deref().unwrap_or("no answer")
        ));
        ExitCode::from(EXIT_NOT_SERVING)
    }
}

async fn bench(
    cli: &Cli,
    plan: cli::Plan,
    client_cores: usize,
    threads: usize,
) -> Result<ExitCode, String> {
    let endpoint = client::endpoint(&cli.addr)?;
    log(&format!(
        "opening {} connection(s) to {}",
        cli.connections, cli.addr
    ));
    let channels = client::connect_all(&endpoint, cli.connections).await?;
    let setup_channel = channels
        .first()
        .cloned()
        .ok_or("no connection was opened")?;

    let opts = SetupOptions {
        admin_email: cli.admin_email.clone(),
        admin_password: cli.admin_password.clone(),
        service_key: cli.service_key.clone(),
        parallelism: cli.setup_parallelism,
        retry_for: cli.setup_retry_for,
        refresh_tokens_given: cli.refresh_tokens.is_some(),
    };
    let prepared = setup::prepare(setup_channel.clone(), &plan, &opts, &log)
        .await
        .map_err(|e| e.to_string())?;
    let addresses = load::Addresses {
        flood: cli.flood_addresses,
        login: cli.login_addresses,
    };
    let mut jobs = match &cli.refresh_tokens {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("--refresh-tokens {}: {e}", path.display()))?;
            let tokens: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect();
            log(&format!(
                "refresh workers rotate {} seeded session(s) from {}",
                tokens.len(),
                path.display()
            ));
            load::jobs_with_refresh_tokens(&plan, &prepared, addresses, tokens)
        }
        None => load::jobs(&plan, &prepared, addresses),
    }
    .map_err(|e| e.to_string())?;
    load::preflight(&mut jobs, &setup_channel, cli.timeout).await?;

    let verify = if plan.has(Rpc::Login) {
        log(&format!(
            "timing bcrypt verify at cost {} ({} samples)",
            cli.bcrypt_cost,
            bcrypt_probe::SAMPLES
        ));
        Some(bcrypt_probe::verify_time(cli.bcrypt_cost).await?)
    } else {
        None
    };

    let groups_desc: Vec<String> = plan
        .groups
        .iter()
        .map(|g| format!("{}={}", g.rpc, g.workers))
        .collect();
    log(&format!(
        "running {} for {:.1} s after {:.1} s warm-up",
        groups_desc.join(","),
        cli.duration.as_secs_f64(),
        cli.warmup.as_secs_f64()
    ));
    let started_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + cli.warmup.as_secs();
    let timing = load::Timing {
        warmup: cli.warmup,
        duration: cli.duration,
        timeout: cli.timeout,
    };
    let workers = load::run(jobs, &channels, timing).await?;

    let order: Vec<(Rpc, u32)> = plan.groups.iter().map(|g| (g.rpc, g.workers)).collect();
    let groups = report::groups(&order, workers, cli.duration)?;
    let login = verify.map(|v| {
        let rps = groups
            .iter()
            .find(|g| g.rpc == Rpc::Login.name())
            .map_or(0.0, |g| g.rps);
        LoginRatio::new(cli.bcrypt_cost, v, cli.server_cores, rps)
    });
    let info = RunInfo {
        addr: cli.addr.clone(),
        mode: plan.mode,
        duration: cli.duration,
        warmup: cli.warmup,
        timeout: cli.timeout,
        connections: cli.connections,
        client_cores,
        client_threads: threads,
        run_id: prepared.run_id.clone(),
        users: plan.users,
        started_at,
    };
    let report = Report::new(info, groups, login);

    if let Err(e) = setup::cleanup(setup_channel, &prepared, cli.setup_retry_for).await {
        log(&format!("could not revoke the bench's service key: {e}"));
    }
    drop(channels);

    if cli.json {
        println!("{}", report.to_json()?);
    } else {
        print!("{}", report.to_text());
    }
    match report.check_error_rate(cli.max_error_rate) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            log(&e);
            Ok(ExitCode::from(EXIT_ERROR_RATE))
        }
    }
}
