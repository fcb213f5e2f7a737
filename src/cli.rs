//! The `poziserver` command line.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use actors::RootOutcome;
use clap::{Parser, Subcommand};

use crate::config::{self, Config};
use crate::root::Root;

/// Pozi Server: serves an organisation's internal GIS data to the Pozi web app over HTTPS.
#[derive(Debug, Parser)]
#[command(
    name = "poziserver",
    version,
    about,
    long_about = None,
    disable_help_subcommand = true
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server until SIGINT/SIGTERM. On first start in an empty root, lays the root out
    /// with a config.json, a resource check and sample data.
    Run {
        /// Config file [default: <root>/config.json]
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Installation root: userdata/, state/, logs/, certificates (default: the current
        /// folder)
        #[arg(long, value_name = "DIR", env = "POZI_ROOT", default_value = ".")]
        root: PathBuf,
        /// Address to listen on, overriding the config's `listen` (repeat for several)
        #[arg(long, value_name = "ADDR")]
        listen: Vec<SocketAddr>,
    },
    /// Check a config file: exit 0 with a one-line summary, or non-zero listing every problem.
    CheckConfig {
        /// The file to check (default: config.json in the current folder)
        #[arg(value_name = "FILE", default_value = "config.json")]
        file: PathBuf,
    },
    /// Show the version, git commit, build date and target.
    Version {
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Sync jobs: list them, run one now, read its runs, or put its previous version back.
    Sync {
        /// What to do.
        #[command(subcommand)]
        action: SyncAction,
        /// Where the root and its config are.
        #[command(flatten)]
        place: Place,
    },
    /// The updater: check the release channel, install now, or show what happened.
    Update {
        /// What to do.
        #[command(subcommand)]
        action: UpdateAction,
        /// Where the root and its config are.
        #[command(flatten)]
        place: Place,
    },
    /// Access to the operators' endpoints.
    Admin {
        /// What to do.
        #[command(subcommand)]
        action: AdminAction,
    },
    /// Print the JSON Schema of config.json (committed as docs/config.schema.json).
    ConfigSchema,
    /// Describe the commands, or one command and its flags.
    Help {
        /// The command to describe
        #[arg(value_name = "COMMAND")]
        command: Option<String>,
    },
}

/// The installation root and config file a subcommand works on (`--root`, `--config`, after
/// the subcommand or its action).
#[derive(Debug, clap::Args)]
pub struct Place {
    /// Config file [default: <root>/config.json]
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// Installation root (default: the current folder)
    #[arg(
        long,
        value_name = "DIR",
        env = "POZI_ROOT",
        default_value = ".",
        global = true
    )]
    pub root: PathBuf,
}

/// What `sync` does.
#[derive(Debug, Subcommand)]
pub enum SyncAction {
    /// Each job: its source, schedule, last run and target.
    List,
    /// Run a job now: in the running server when there is one (asked over loopback), else in
    /// this process. Exits non-zero when the run fails.
    Run {
        /// The job's name.
        job: String,
    },
    /// A job's runs, newest first.
    History {
        /// The job's name.
        job: String,
        /// How many runs.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Publish a job's previous version again (a second rollback undoes the first).
    Rollback {
        /// The job's name.
        job: String,
    },
    /// Runs one job handed over on standard input (the server's worker process).
    #[command(hide = true)]
    Worker,
}

/// What `admin` does.
#[derive(Debug, Subcommand)]
pub enum AdminAction {
    /// Make a new bearer token for `/admin/`: prints the token (give it to the operators'
    /// tools) and the `admin.token_hash` line for config.json (only the hash is stored).
    Token,
}

/// What `update` does.
#[derive(Debug, Subcommand)]
pub enum UpdateAction {
    /// Check the channel now and say what it offers (never installs): through the running
    /// server when there is one, else in this process.
    Check,
    /// Check and install what the channel offers, switching the running server to it (the
    /// server must be running: it health-checks the new version and rolls back by itself).
    Apply,
    /// The running and current versions, the channel, and the latest updater events.
    Status {
        /// How many events.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Print the JSON Schema of a release manifest (committed as
    /// docs/update-manifest.schema.json).
    ManifestSchema,
}

/// Parses the command line and runs the command.
#[must_use]
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            config,
            root,
            listen,
        } => run(config.as_deref(), &root, listen),
        Command::CheckConfig { file } => check_config(&file),
        Command::Version { json } => version(json),
        Command::Sync {
            action,
            place: Place { config, root },
        } => {
            use crate::sync::command;
            let config = config.as_deref();
            match action {
                SyncAction::List => command::list(&root, config),
                SyncAction::Run { job } => command::run(&root, config, &job),
                SyncAction::History { job, limit } => command::history(&root, config, &job, limit),
                SyncAction::Rollback { job } => command::rollback(&root, config, &job),
                SyncAction::Worker => crate::sync::worker::child_main(&root),
            }
        }
        Command::Update {
            action,
            place: Place { config, root },
        } => {
            use crate::update::command;
            let config = config.as_deref();
            match action {
                UpdateAction::Check => command::check(&root, config),
                UpdateAction::Apply => command::apply(&root, config),
                UpdateAction::Status { limit } => command::status(&root, config, limit),
                UpdateAction::ManifestSchema => {
                    let text = serde_json::to_string_pretty(&crate::update::manifest::schema())
                        .unwrap_or_default();
                    out(&format!("{text}\n"))
                }
            }
        }
        Command::Admin {
            action: AdminAction::Token,
        } => match crate::api::access::new_token() {
            Some((token, hash)) => out(&format!(
                "token: {token}\n\nPut its hash in config.json (the token itself is not stored):\n  \"admin\": {{\"token_hash\": \"{hash}\"}}\n\nClients send: Authorization: Bearer {token}\n"
            )),
            None => fail("cannot read the system's random number generator"),
        },
        Command::ConfigSchema => {
            let text = serde_json::to_string_pretty(&config::schema()).unwrap_or_default();
            out(&format!("{text}\n"))
        }
        Command::Help { command } => help(command.as_deref()),
    }
}

/// `help [COMMAND]`: the same text as `--help` (exit 0), or an error for an unknown command.
fn help(command: Option<&str>) -> ExitCode {
    use clap::CommandFactory;
    let mut cli = Cli::command();
    let text = match command {
        None => cli.render_long_help(),
        Some(name) => match cli.find_subcommand_mut(name) {
            Some(sub) => sub.render_long_help(),
            None => {
                let _ = writeln!(
                    std::io::stderr().lock(),
                    "error: no command {name:?}; `poziserver help` lists them"
                );
                return ExitCode::from(2);
            }
        },
    };
    out(&text.to_string())
}

/// Prints `text` to standard output: success, or failure when it cannot be written.
pub(crate) fn out(text: &str) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

/// Prints `error: <text>` to standard error and returns failure.
pub(crate) fn fail(text: &str) -> ExitCode {
    let _ = writeln!(std::io::stderr().lock(), "error: {text}");
    ExitCode::FAILURE
}

fn check_config(file: &Path) -> ExitCode {
    match Config::load(file) {
        Ok(config) => out(&format!("{}: {}\n", file.display(), config.summary())),
        Err(e) => fail(&e.to_string()),
    }
}

fn version(json: bool) -> ExitCode {
    if json {
        out(&format!(
            "{}\n",
            serde_json::to_string(crate::version::current()).unwrap_or_default()
        ))
    } else {
        let v = crate::version::current();
        out(&format!(
            "poziserver {} (commit {}, built {}, {}, {})\n",
            v.version, v.commit, v.build_date, v.target, v.platform
        ))
    }
}

/// The update journal, for the switch's events (`None` when it cannot be opened).
fn update_journal(root: &Root) -> Option<crate::update::journal::Journal> {
    crate::update::journal::Journal::open_in(root).ok()
}

/// A passed trial, being handed over.
struct Handover {
    /// The switch.
    plan: crate::update::SwitchPlan,
    /// The trial process, still serving.
    trial: tokio::process::Child,
    /// A stop signal came while the tree drained.
    signalled: bool,
    /// How the tree stopped.
    result: Result<RootOutcome, crate::runtime::RuntimeError>,
}

/// How a run of the tree ended.
enum Ending {
    /// The tree ended by itself or on a signal.
    Tree(Result<RootOutcome, crate::runtime::RuntimeError>),
    /// A new version passed its trial and listens beside this one; the tree has stopped.
    Passed(Box<Handover>),
    /// This re-executed version did not take over; the executable to go back to.
    Fallback(Option<PathBuf>),
}

/// Runs the tree until a signal or a give-up, beside the switch driver (a passed trial stops
/// the tree) and, in a re-executed version, the confirmation of its takeover.
async fn serve(
    config: &Config,
    root: &Root,
    handles: crate::runtime::Handles,
    switch: &crate::update::SwitchRequest,
    args: &[std::ffi::OsString],
    takeover: Option<crate::update::install::TrialMarker>,
) -> Ending {
    let tree_stop = tokio_util::sync::CancellationToken::new();
    let stop = {
        let tree_stop = tree_stop.clone();
        async move {
            tokio::select! {
                () = stop_signal(root) => {}
                () = tree_stop.cancelled() => tracing::info!("stopping for a switch of version"),
            }
        }
    };
    let tree = crate::runtime::run(config, root, handles, stop);
    tokio::pin!(tree);
    let health_timeout = std::time::Duration::from_secs(config.update.health_timeout_secs);
    let confirmation = async {
        match takeover {
            Some(marker) => {
                let drain = std::time::Duration::from_secs(config.supervisor.shutdown_timeout_secs);
                match crate::update::switch::confirm_takeover(root, marker, drain, health_timeout)
                    .await
                {
                    Ok(()) => std::future::pending().await,
                    Err(binary) => binary,
                }
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        result = &mut tree => Ending::Tree(result),
        (plan, trial) = drive_switches(switch, root, args) => {
            tree_stop.cancel();
            let signal = crate::runtime::shutdown_signal();
            tokio::pin!(signal);
            let (result, signalled) = tokio::select! {
                result = &mut tree => (result, false),
                () = &mut signal => (tree.await, true),
            };
            Ending::Passed(Box::new(Handover { plan, trial, signalled, result }))
        }
        binary = confirmation => {
            tree_stop.cancel();
            let _ = tree.await;
            Ending::Fallback(binary)
        }
    }
}

/// Carries out each switch the updater asks for while the tree serves on: the new version's
/// trial, then, when it fails, the rollback (and waiting for the next request); returns the plan
/// and the trial process once one passes.
async fn drive_switches(
    switch: &crate::update::SwitchRequest,
    root: &Root,
    args: &[std::ffi::OsString],
) -> (crate::update::SwitchPlan, tokio::process::Child) {
    use crate::update::switch::{Trial, conclude, trial};
    loop {
        switch.asked().await;
        let Some(plan) = switch.take() else {
            continue;
        };
        let (outcome, child) = trial(&plan, root, args).await;
        conclude(&plan, root, update_journal(root).as_ref(), &outcome);
        if let (Trial::Healthy { .. }, Some(child)) = (outcome, child) {
            return (plan, child);
        }
        switch.failed();
    }
}

/// How long a trial process that was handed over serves on while its successor starts.
const HANDOVER: std::time::Duration = std::time::Duration::from_secs(30);

/// Completes on SIGINT or SIGTERM; for a new version on trial, also on `stop` from the process
/// that started it, or, when that process is gone (it re-executed into this version, or died),
/// once a successor has taken over the listeners or [`HANDOVER`] has passed. A `serve` line
/// makes it listen on the configured addresses.
async fn stop_signal(root: &Root) {
    if !crate::update::on_trial() {
        return crate::runtime::shutdown_signal().await;
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut line = String::new();
        let mut stdin = std::io::stdin().lock();
        loop {
            line.clear();
            match stdin.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) if line.trim() == "serve" => crate::update::request_public(),
                Ok(_) if line.trim() == "stop" => {
                    let _ = tx.send(true);
                    return;
                }
                Ok(_) => {}
            }
        }
        let _ = tx.send(false);
    });
    tokio::select! {
        () = crate::runtime::shutdown_signal() => {}
        told = rx => {
            if told.unwrap_or(false) {
                tracing::info!("on trial: told to stop");
                return;
            }
            tracing::info!("on trial: the old version is gone; serving until a successor listens");
            let me = std::process::id();
            let deadline = std::time::Instant::now() + HANDOVER;
            while std::time::Instant::now() < deadline
                && !crate::http::running_server(root).is_some_and(|n| n.pid != me && n.public)
            {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

/// How long blocking work may run on after the supervision tree has stopped.
const RUNTIME_SHUTDOWN: std::time::Duration = std::time::Duration::from_secs(2);

fn run(config_file: Option<&Path>, root: &Path, listen: Vec<SocketAddr>) -> ExitCode {
    // Uptime counts from here.
    let _ = crate::ops::health::started();
    let root = match Root::new(root) {
        Ok(root) => root,
        Err(e) => return fail(&e.to_string()),
    };
    let written = match root.lay_out() {
        Ok(written) => written,
        Err(e) => return fail(&e.to_string()),
    };
    // Held until the process ends or re-executes (the descriptor closes on exec).
    let _lock = if crate::update::on_trial() {
        None
    } else {
        match root.lock_for_server() {
            Ok(lock) => Some(lock),
            Err(e) => return fail(&e),
        }
    };
    let config_file = config_file.map_or_else(|| root.config_file(), Path::to_owned);
    let mut config = match Config::load(&config_file) {
        Ok(config) => config,
        // Exactly what `check-config` reports.
        Err(e) => return fail(&e.to_string()),
    };
    let listen_override = (!listen.is_empty()).then_some(listen);
    if let Some(listen) = &listen_override {
        config.listen.clone_from(listen);
    }
    let log_dir = root.resolve(&config.log.directory);
    if let Err(e) = std::fs::create_dir_all(&log_dir) {
        return fail(&format!(
            "cannot create log folder {}: {e}",
            log_dir.display()
        ));
    }
    let guard = match crate::logging::init(&config.log, &log_dir) {
        Ok(guard) => guard,
        Err(e) => return fail(&e.to_string()),
    };
    for file in &written {
        tracing::info!(file = %file.display(), "laid out sample file in new root");
    }
    if !crate::update::on_trial()
        && let Some(current) = crate::update::switch::boot(&root)
    {
        tracing::info!(binary = %current.display(), "versions/current names another binary: running it");
        drop(guard);
        let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
        let error = crate::update::switch::exec(&current, &args, None);
        return fail(&format!(
            "cannot execute the current version {}: {error}",
            current.display()
        ));
    }
    tracing::info!(version = crate::version::current().version, commit = crate::version::current().commit, config = %config_file.display(), "starting");
    // On one core (a small VM, or pinned with taskset) a single-threaded scheduler avoids the
    // work-stealing machinery; otherwise one worker per core.
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let mut builder = if cores == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder
        .enable_all()
        .on_thread_park(crate::memory::going_idle)
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    match crate::version::misbehaviour() {
        Some(crate::version::Misbehaviour::Exit) => {
            tracing::error!("test copy built to exit at once: exiting");
            return ExitCode::from(3);
        }
        Some(crate::version::Misbehaviour::NoBind) => {
            tracing::warn!("test copy built never to bind: waiting to be stopped");
            runtime.block_on(stop_signal(&root));
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    crate::update::switch::reap_predecessor();
    let switch = crate::update::SwitchRequest::default();
    let handles = crate::runtime::Handles {
        switch: switch.clone(),
        config_file: Some(config_file.clone()),
        listen_override,
        ..crate::runtime::Handles::default()
    };
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    // The tree runs until a signal, a give-up, or a new version passes its trial (the switch
    // driver then stops the tree and hands the still-running trial process back).
    let takeover = crate::update::switch::pending_takeover(&root);
    let ending = runtime.block_on(serve(&config, &root, handles, &switch, &args, takeover));
    let result = match ending {
        Ending::Tree(result) => {
            crate::update::switch::after_stop(&root);
            result
        }
        Ending::Passed(handover) if handover.signalled => {
            let Handover {
                plan,
                trial,
                result,
                ..
            } = *handover;
            runtime.block_on(crate::update::switch::stopped_during_handover(
                &plan, &root, trial,
            ));
            result
        }
        Ending::Passed(handover) => {
            let Handover { plan, trial, .. } = *handover;
            tracing::info!(version = %plan.version, "re-executing as the new version");
            runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
            // Flushes the log before the process image is replaced.
            drop(guard);
            let error = crate::update::switch::exec(&plan.binary, &args, trial.id());
            // Only reached when the new binary could not be executed after its trial: put the
            // previous version back (the trial process is killed as its handle drops) and exit
            // non-zero so that the service manager starts it.
            drop(trial);
            crate::update::switch::conclude(
                &plan,
                &root,
                update_journal(&root).as_ref(),
                &crate::update::switch::Trial::Failed(format!(
                    "cannot execute it after its trial: {error}"
                )),
            );
            return fail(&format!(
                "cannot execute {}: {error}",
                plan.binary.display()
            ));
        }
        Ending::Fallback(binary) => {
            runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
            drop(guard);
            let Some(binary) = binary else {
                return fail(
                    "the new version did not take over; exiting so the service manager starts the previous one",
                );
            };
            let error = crate::update::switch::exec(&binary, &args, None);
            return fail(&format!("cannot go back to {}: {error}", binary.display()));
        }
    };
    // Work still on blocking threads (a query being interrupted, a file being read) gets a
    // moment to end; the process does not wait on it longer.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    match result {
        Ok(RootOutcome::Stopped) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Ok(RootOutcome::Failed(reason)) => {
            tracing::error!(%reason, "root supervisor gave up; exiting so the service manager can take over");
            ExitCode::FAILURE
        }
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            ExitCode::FAILURE
        }
    }
}
