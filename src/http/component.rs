//! The `http` component: a supervised actor that owns the listeners. Its start binds every
//! address (a failure is an error the supervisor retries with backoff); its stop stops
//! accepting and drains in-flight requests up to a deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use actors::HealthRegistry;
use arc_swap::ArcSwap;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::cors::Cors;
use super::host::HostFolders;
use super::proxy::Proxy;
use super::routes::Site;
use super::serve::{Acceptor, redirect};
use super::service::Pipeline;
use super::static_files::StaticFiles;
use super::tls::{CertPaths, CertStore, server_config};
use crate::config::Config;
use crate::ops::health::Health;
use crate::root::Root;

/// How often the conversion cache is swept.
const CONVERSION_SWEEP: Duration = Duration::from_secs(60);
/// How long a pooled dataset connection may sit unused before it is closed.
const IDLE_CONNECTIONS: Duration = Duration::from_secs(10);

/// The addresses the current incarnation listens on (empty while it is not listening); tests
/// and logs read the ports actually bound (`127.0.0.1:0` picks a free one).
#[derive(Debug, Clone, Default)]
pub struct Listening(Arc<ArcSwap<Vec<SocketAddr>>>);

impl Listening {
    /// The HTTPS (or plain, in `plain_http` mode) addresses being served.
    #[must_use]
    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.0.load().as_ref().clone()
    }
}

/// What the component is started with.
#[derive(Debug, Clone)]
pub struct HttpArgs {
    /// The configuration.
    pub config: Arc<Config>,
    /// The installation root.
    pub root: Root,
    /// Read by `/health`.
    pub registry: HealthRegistry,
    /// Where the bound addresses are published.
    pub listening: Listening,
    /// The tree's named actors (the admin API finds sync jobs here).
    pub directory: actors::Directory,
    /// The sync journal, when there are jobs.
    pub journal: Option<Arc<crate::sync::journal::Journal>>,
    /// The updater's journal and view, when it is configured.
    pub update: Option<crate::api::admin::UpdateAdmin>,
}

/// The listener actor.
#[derive(Debug, Clone, Copy)]
pub struct HttpComponent;

/// A running listener's handles.
#[derive(Debug)]
pub struct HttpState {
    stop: CancellationToken,
    tracker: TaskTracker,
    drain: Duration,
    listening: Listening,
    /// `state/server.json`, removed when the listener stops.
    note: std::path::PathBuf,
    /// Interrupts the queries still running after the drain.
    queries: CancellationToken,
    /// The same when the state is dropped by a kill.
    _queries_on_drop: tokio_util::sync::DropGuard,
}

/// The file (in `state/`) naming the running server's process and addresses, which the
/// command line reads to reach it (`poziserver sync run` asks a running server to run a job).
pub const SERVER_NOTE: &str = "server.json";

/// A running server's note, as the command line and the updater read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerNote {
    /// Its process id.
    pub pid: u32,
    /// `https` or `http`.
    pub scheme: String,
    /// The addresses it listens on.
    pub listen: Vec<SocketAddr>,
}

impl ServerNote {
    /// Its addresses reachable over loopback (an unspecified address is asked on loopback), with
    /// the scheme.
    #[must_use]
    pub fn loopback(&self) -> Vec<(String, SocketAddr)> {
        self.listen
            .iter()
            .map(|&address| {
                let mut address = address;
                if address.ip().is_unspecified() {
                    address.set_ip(if address.is_ipv4() {
                        std::net::Ipv4Addr::LOCALHOST.into()
                    } else {
                        std::net::Ipv6Addr::LOCALHOST.into()
                    });
                }
                (self.scheme.clone(), address)
            })
            .filter(|(_, a)| a.ip().is_loopback())
            .collect()
    }
}

/// The note of the server running on `root`, when there is one.
#[must_use]
pub fn running_server(root: &crate::root::Root) -> Option<ServerNote> {
    let text = std::fs::read(root.state_dir().join(SERVER_NOTE)).ok()?;
    let value: serde_json::Value = serde_json::from_slice(&text).ok()?;
    Some(ServerNote {
        pid: u32::try_from(value.get("pid")?.as_u64()?).ok()?,
        scheme: value
            .get("scheme")
            .and_then(|s| s.as_str())
            .unwrap_or("https")
            .to_owned(),
        listen: value
            .get("listen")?
            .as_array()?
            .iter()
            .filter_map(|a| a.as_str()?.parse().ok())
            .collect(),
    })
}

/// Writes [`SERVER_NOTE`]; a failure only costs the command line its way to this server.
fn write_server_note(root: &crate::root::Root, scheme: &str, bound: &[SocketAddr]) {
    let note = serde_json::json!({
        "pid": std::process::id(),
        "scheme": scheme,
        "listen": bound,
    });
    let path = root.state_dir().join(SERVER_NOTE);
    let temporary = path.with_extension("json.tmp");
    let written = std::fs::write(&temporary, note.to_string())
        .and_then(|()| std::fs::rename(&temporary, &path));
    if let Err(e) = written {
        tracing::warn!(file = %path.display(), error = %e, "cannot note the listening addresses for the command line");
    }
}

async fn bind(address: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(address).await.map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::AddrInUse => " (another program is using this port)",
            std::io::ErrorKind::PermissionDenied if address.port() < 1024 => {
                " (ports below 1024 need administrator rights or CAP_NET_BIND_SERVICE)"
            }
            _ => "",
        };
        format!("cannot listen on {address}: {e}{hint}")
    })
}

impl Actor for HttpComponent {
    type Msg = ();
    type State = HttpState;
    type Arguments = HttpArgs;

    #[tracing::instrument(name = "component", fields(component = "http"), skip_all)]
    async fn pre_start(
        &self,
        _myself: ActorRef<()>,
        args: HttpArgs,
    ) -> Result<HttpState, ActorProcessingErr> {
        let http = &args.config.http;
        let limits = http.limits.clone();
        let cert = if http.plain_http {
            None
        } else {
            let paths = CertPaths::in_root(args.root.path());
            let names = http.host_names.clone();
            let store =
                tokio::task::spawn_blocking(move || CertStore::open(paths, &names)).await??;
            Some(store)
        };
        let site = Arc::new(Site {
            hosts: HostFolders::new(&args.root.path().join("userdata"), &http.hosts),
            files: StaticFiles::new(&http.cache_control),
            cors: Cors::new(&http.cors),
            proxy: Proxy::new(&http.proxy, limits.body_limit_bytes)?,
            health: Health::new(args.registry.clone(), cert.clone())
                .with_root(args.root.path())
                .with_update(
                    args.update
                        .as_ref()
                        .map(|u| crate::update::component::health_check(u.view.clone())),
                ),
            catalog: Arc::new(
                crate::gis::store::Catalog::with_limits(&args.config.data)
                    .with_cache(args.root.state_dir().join("cache"), &args.config.data),
            ),
            gdal: crate::api::ogr2ogr::gdal::Gdal::new(&args.config.data.gdal),
            search_index: args.root.state_dir().join("search.sqlite"),
            admin: crate::api::admin::Admin {
                config: args.config.clone(),
                journal: args.journal.clone(),
                directory: args.directory.clone(),
                update: args.update.clone(),
            },
            refused: http
                .refused_extensions
                .iter()
                .map(|e| e.trim_start_matches('.').to_ascii_lowercase())
                .collect(),
        });
        let tls = match &cert {
            Some(store) => Some(TlsAcceptor::from(server_config(store.clone())?)),
            None => None,
        };

        let mut listeners = Vec::new();
        for address in &args.config.listen {
            listeners.push(bind(*address).await?);
        }
        let mut redirects = Vec::new();
        for address in &http.redirect_listen {
            redirects.push(bind(*address).await?);
        }

        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        let queries = site.catalog.queries.stop.clone();
        let site_catalog = site.catalog.clone();
        let acceptor = Acceptor {
            pipeline: Arc::new(Pipeline {
                site,
                dispatch: super::service::routes,
                access_log: http.access_log.clone(),
                counter: AtomicU64::new(0),
                max_header_bytes: limits.max_header_bytes,
            }),
            tls,
            limits: limits.clone(),
            permits: Arc::new(Semaphore::new(limits.max_connections)),
            open_streams: Arc::new(Semaphore::new(limits.max_open_streams)),
            per_client: super::serve::PerClient::new(limits.max_connections_per_client),
            stop: stop.clone(),
            tracker: tracker.clone(),
        };
        let scheme = if http.plain_http { "http" } else { "https" };
        let mut bound = Vec::new();
        for listener in listeners {
            let address = listener.local_addr()?;
            tracing::info!(address = %address, "listening on {scheme}://{address}");
            bound.push(address);
            tracker.spawn(acceptor.clone().run(listener));
        }
        let https_port = bound.first().map(SocketAddr::port);
        for listener in redirects {
            tracing::info!(address = %listener.local_addr()?, "redirecting plain HTTP to HTTPS");
            tracker.spawn(redirect(
                listener,
                https_port,
                stop.clone(),
                tracker.clone(),
            ));
        }
        // Conversions whose sources were deleted or changed are removed, and the cache kept
        // within its budget.
        {
            let (catalog, stop) = (site_catalog, stop.clone());
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(CONVERSION_SWEEP);
                // Connections idle for a while are closed, and their page caches freed.
                let mut trims = tokio::time::interval(IDLE_CONNECTIONS);
                loop {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        _ = ticks.tick() => {
                            let catalog = catalog.clone();
                            let _ = tokio::task::spawn_blocking(move || catalog.sweep_conversions()).await;
                        }
                        _ = trims.tick() => {
                            let catalog = catalog.clone();
                            let _ = tokio::task::spawn_blocking(move || catalog.datasets.trim_idle(IDLE_CONNECTIONS)).await;
                        }
                    }
                }
            });
        }
        if let Some(store) = cert {
            let every = Duration::from_secs(http.certificate_check_secs.max(1));
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(every);
                loop {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        _ = ticks.tick() => {
                            let store = store.clone();
                            let _ = tokio::task::spawn_blocking(move || store.reload_if_changed()).await;
                        }
                    }
                }
            });
        }
        write_server_note(&args.root, scheme, &bound);
        args.listening.0.store(Arc::new(bound));
        Ok(HttpState {
            stop,
            tracker,
            drain: Duration::from_secs(limits.drain_timeout_secs),
            listening: args.listening,
            note: args.root.state_dir().join(SERVER_NOTE),
            _queries_on_drop: queries.clone().drop_guard(),
            queries,
        })
    }

    #[tracing::instrument(name = "component", fields(component = "http"), skip_all)]
    async fn post_stop(
        &self,
        _myself: ActorRef<()>,
        state: &mut HttpState,
    ) -> Result<(), ActorProcessingErr> {
        state.listening.0.store(Arc::new(Vec::new()));
        let _ = std::fs::remove_file(state.note.as_path());
        state.stop.cancel();
        state.tracker.close();
        if tokio::time::timeout(state.drain, state.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                connections = state.tracker.len(),
                drain_secs = state.drain.as_secs(),
                "connections still open after the drain deadline; closing them"
            );
        } else {
            tracing::info!("stopped accepting; in-flight requests finished");
        }
        state.queries.cancel();
        Ok(())
    }
}
