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
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::cors::Cors;
use super::host::HostFolders;
use super::listen::{ServerNote, bind, check_free, remove_own_note, taking_over};
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
    /// The command line's token (`state/admin.token`), accepted from loopback besides the
    /// admin rules.
    pub admin_token: Option<String>,
    /// Reloads the config (`POST /admin/reload`, and `/health`'s `config:reload` check).
    pub reloader: Option<Arc<crate::ops::reload::Reloader>>,
}

/// The listener actor.
#[derive(Debug, Clone, Copy)]
pub struct HttpComponent;

/// The connection counts a reload can change.
#[derive(Debug)]
struct Caps {
    connections: Arc<Semaphore>,
    streams: Arc<Semaphore>,
    per_client: Arc<super::serve::PerClient>,
}

/// Makes `semaphore` hand out `new` permits instead of `old`: more at once, fewer as permits
/// come back (those in use are taken out of circulation when they are returned).
fn resize(semaphore: &Arc<Semaphore>, old: usize, new: usize) {
    if new > old {
        semaphore.add_permits(new - old);
    } else if new < old {
        let owed = old - new;
        let forgotten = semaphore.forget_permits(owed);
        if let Some(rest) = owed.checked_sub(forgotten).filter(|r| *r > 0) {
            let semaphore = semaphore.clone();
            tokio::spawn(async move {
                if let Ok(permits) = semaphore
                    .acquire_many_owned(u32::try_from(rest).unwrap_or(u32::MAX))
                    .await
                {
                    permits.forget();
                }
            });
        }
    }
}

impl Caps {
    /// Changes the counts set from `old` to `new`, for connections accepted from now on.
    fn apply(&self, old: &crate::config::Limits, new: &crate::config::Limits) {
        resize(&self.connections, old.max_connections, new.max_connections);
        resize(&self.streams, old.max_open_streams, new.max_open_streams);
        self.per_client.set_cap(new.max_connections_per_client);
    }
}

/// A running listener's handles.
#[derive(Debug)]
pub struct HttpState {
    /// Connection counts a reload changes.
    caps: Caps,
    /// The request pipeline, whose site a reload replaces.
    pipeline: Arc<Pipeline>,
    /// The certificate served.
    cert: Option<Arc<CertStore>>,
    /// The data layer (its limits need a restart).
    catalog: Arc<crate::gis::store::Catalog>,
    /// What the component was started with, and the config in effect (a reload replaces it);
    /// its root's `state/server.json` names this process until the listener stops.
    args: HttpArgs,
    stop: CancellationToken,
    tracker: TaskTracker,
    /// Interrupts the queries still running after the drain.
    queries: CancellationToken,
    /// The same when the state is dropped by a kill.
    _queries_on_drop: tokio_util::sync::DropGuard,
}

/// On trial: once the old version asks (it has seen this one healthy), binds the configured
/// addresses beside it and notes them; a bind that fails is noted for the old version to read.
async fn serve_when_asked(acceptor: Acceptor, mut note: ServerNote, args: HttpArgs) {
    let mut asked = crate::update::public_requested();
    tokio::select! {
        () = acceptor.stop.cancelled() => return,
        _ = asked.wait_for(|yes| *yes) => {}
    }
    let (listeners, redirects) = match bind_configured(&args.config).await {
        Ok(bound) => bound,
        Err(e) => {
            tracing::error!(error = %e, "on trial: cannot listen on the configured address");
            note.bind_error = Some(e);
            note.write(&args.root);
            return;
        }
    };
    let mut bound = note.listen.clone();
    bound.extend(spawn_listeners(
        &acceptor,
        listeners,
        redirects,
        ("on trial: ", " too"),
        &note.scheme,
    ));
    note.listen = bound.clone();
    note.public = true;
    note.write(&args.root);
    args.listening.0.store(Arc::new(bound));
}

/// Binds the configured addresses (`listen`, then `http.redirect_listen`): the listeners and
/// the redirectors, or the first address that cannot be bound and why.
async fn bind_configured(
    config: &Config,
) -> Result<(Vec<tokio::net::TcpListener>, Vec<tokio::net::TcpListener>), String> {
    let mut listeners = Vec::new();
    for address in &config.listen {
        listeners.push(bind(*address).await?);
    }
    let mut redirects = Vec::new();
    for address in &config.http.redirect_listen {
        redirects.push(bind(*address).await?);
    }
    Ok((listeners, redirects))
}

/// Serves `listeners` through `acceptor`, each logged as `listening on {scheme}://{address}`
/// between `(before, after)`, and `redirects` pointing at the first of them; returns the
/// addresses served.
fn spawn_listeners(
    acceptor: &Acceptor,
    listeners: Vec<tokio::net::TcpListener>,
    redirects: Vec<tokio::net::TcpListener>,
    (before, after): (&str, &str),
    scheme: &str,
) -> Vec<SocketAddr> {
    let mut bound = Vec::new();
    for listener in listeners {
        if let Ok(address) = listener.local_addr() {
            tracing::info!(address = %address, "{before}listening on {scheme}://{address}{after}");
            bound.push(address);
        }
        acceptor.tracker.spawn(acceptor.clone().run(listener));
    }
    let https_port = bound.first().map(SocketAddr::port);
    for listener in redirects {
        if let Ok(address) = listener.local_addr() {
            tracing::info!(address = %address, "redirecting plain HTTP to HTTPS");
        }
        acceptor.tracker.spawn(redirect(
            listener,
            https_port,
            acceptor.stop.clone(),
            acceptor.tracker.clone(),
        ));
    }
    bound
}

/// What the routes serve, from `config` (at start, and again at each config reload).
fn build_site(
    args: &HttpArgs,
    config: &Arc<Config>,
    cert: Option<&Arc<CertStore>>,
    catalog: &Arc<crate::gis::store::Catalog>,
    gdal: &Arc<crate::api::ogr2ogr::gdal::Gdal>,
) -> Result<Site, ActorProcessingErr> {
    Ok(Site {
        access_log: config.http.access_log.clone(),
        trusted: super::forwarded::Trusted::new(&config.http.trusted_proxies),
        limits: config.http.limits.clone(),
        status: crate::ops::status::StatusPage {
            registry: args.registry.clone(),
            config: config.clone(),
            root: args.root.path().to_owned(),
            cert: cert.cloned(),
            journal: args.journal.clone(),
            update: args.update.as_ref().map(|u| u.view.clone()),
            folders: crate::ops::status::FolderCounts::default(),
        },
        metrics: config.metrics,
        hosts: HostFolders::new(&args.root.path().join("userdata"), &config.http.hosts),
        files: StaticFiles::new(&config.http.cache_control),
        cors: Cors::new(&config.http.cors),
        proxy: Proxy::new(
            &config.http.proxy,
            config.http.limits.body_limit_bytes,
            &config.http.host_names,
        )?,
        health: Health::new(args.registry.clone(), cert.cloned())
            .with_root(args.root.path())
            .with_checks(
                [
                    args.update
                        .as_ref()
                        .map(|u| crate::update::component::health_check(u.view.clone())),
                    Some(crate::ops::checks::caches(catalog.clone())),
                    args.reloader
                        .as_ref()
                        .map(crate::ops::reload::Reloader::health_check),
                    Some(crate::ops::checks::disk(
                        args.root.path().to_owned(),
                        config.health.disk_warn_mb,
                    )),
                    args.journal.as_ref().map(|journal| {
                        crate::ops::checks::sync_jobs(
                            config.clone(),
                            journal.clone(),
                            args.root.path().to_owned(),
                        )
                    }),
                ]
                .into_iter()
                .flatten(),
            ),
        catalog: catalog.clone(),
        gdal: gdal.clone(),
        search_index: args.root.state_dir().join("search.sqlite"),
        admin: crate::api::admin::Admin {
            config: config.clone(),
            journal: args.journal.clone(),
            directory: args.directory.clone(),
            update: args.update.clone(),
            access: crate::api::access::AdminAccess::new(
                &config.admin,
                &config.http.host_names,
                args.admin_token.as_deref(),
            ),
            reloader: args.reloader.clone(),
            root: args.root.path().to_owned(),
        },
        refused: config
            .http
            .refused_extensions
            .iter()
            .map(|e| e.trim_start_matches('.').to_ascii_lowercase())
            .collect(),
    })
}

/// Messages to the listener.
#[derive(Debug)]
pub enum HttpMsg {
    /// Serve from now on what `config` says (CORS, host folders, cache rules, proxies, refused
    /// extensions, the access log, admin rules, the status page, `/metrics` access); requests
    /// under way finish as they began. The reply says why a config could not be applied.
    Reload(Arc<Config>, ractor::RpcReplyPort<Result<(), String>>),
}

/// The listener's name in the actor directory (a config reload finds it there).
pub const ACTOR_NAME: &str = "http";

impl Actor for HttpComponent {
    type Msg = HttpMsg;
    type State = HttpState;
    type Arguments = HttpArgs;

    #[tracing::instrument(name = "component", fields(component = "http"), skip_all)]
    async fn pre_start(
        &self,
        _myself: ActorRef<HttpMsg>,
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
        let catalog = Arc::new(
            crate::gis::store::Catalog::with_limits(&args.config.data)
                .with_cache(args.root.state_dir().join("cache"), &args.config.data),
        );
        let metrics = args.config.metrics;
        if metrics.enabled
            && let Some(global) = crate::ops::metrics::global()
        {
            global.set_sources(crate::ops::metrics::Sources {
                registry: Some(args.registry.clone()),
                catalog: Some(catalog.clone()),
                userdata: Some(args.root.path().join("userdata")),
                cert: cert.clone(),
            });
        }
        let gdal = Arc::new(crate::api::ogr2ogr::gdal::Gdal::new(&args.config.data.gdal));
        let site = Arc::new(build_site(
            &args,
            &args.config,
            cert.as_ref(),
            &catalog,
            &gdal,
        )?);
        let tls = match &cert {
            Some(store) => Some(TlsAcceptor::from(server_config(store.clone())?)),
            None => None,
        };

        // A new version on trial listens on a private loopback port until it is asked to serve.
        let on_trial = crate::update::on_trial();
        let (listeners, redirects) = if on_trial {
            (
                vec![bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?],
                Vec::new(),
            )
        } else {
            if !taking_over() {
                for address in args.config.listen.iter().chain(&http.redirect_listen) {
                    check_free(*address)?;
                }
            }
            bind_configured(&args.config).await?
        };

        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        let queries = site.catalog.queries.stop.clone();
        let site_catalog = site.catalog.clone();
        let pipeline = Arc::new(Pipeline {
            metrics: metrics.enabled,
            site: arc_swap::ArcSwap::new(site),
            dispatch: super::service::routes,
            counter: AtomicU64::new(0),
        });
        let caps = Caps {
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            streams: Arc::new(Semaphore::new(limits.max_open_streams)),
            per_client: super::serve::PerClient::new(limits.max_connections_per_client),
        };
        let acceptor = Acceptor {
            pipeline: pipeline.clone(),
            tls,
            permits: caps.connections.clone(),
            open_streams: caps.streams.clone(),
            per_client: caps.per_client.clone(),
            stop: stop.clone(),
            tracker: tracker.clone(),
        };
        let scheme = if http.plain_http { "http" } else { "https" };
        let bound = spawn_listeners(&acceptor, listeners, redirects, ("", ""), scheme);
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
        if let Some(store) = cert.clone() {
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
        let note = ServerNote {
            pid: std::process::id(),
            scheme: scheme.to_owned(),
            listen: bound.clone(),
            public: !on_trial,
            bind_error: None,
        };
        note.write(&args.root);
        args.listening.0.store(Arc::new(bound));
        if on_trial {
            tokio::spawn(serve_when_asked(acceptor.clone(), note, args.clone()));
        }
        Ok(HttpState {
            caps,
            pipeline,
            cert,
            catalog,
            args,
            stop,
            tracker,
            _queries_on_drop: queries.clone().drop_guard(),
            queries,
        })
    }

    #[tracing::instrument(name = "component", fields(component = "http"), skip_all)]
    async fn handle(
        &self,
        _myself: ActorRef<HttpMsg>,
        message: HttpMsg,
        state: &mut HttpState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            HttpMsg::Reload(config, reply) => {
                let gdal = state.pipeline.site.load().gdal.clone();
                let built = build_site(
                    &state.args,
                    &config,
                    state.cert.as_ref(),
                    &state.catalog,
                    &gdal,
                );
                let result = match built {
                    Ok(site) => {
                        state
                            .caps
                            .apply(&state.args.config.http.limits, &config.http.limits);
                        state.args.config = config.clone();
                        state.pipeline.site.store(Arc::new(site));
                        tracing::info!("listener serving the reloaded config");
                        Ok(())
                    }
                    Err(e) => Err(e.to_string()),
                };
                let _ = reply.send(result);
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<HttpMsg>,
        state: &mut HttpState,
    ) -> Result<(), ActorProcessingErr> {
        state.args.listening.0.store(Arc::new(Vec::new()));
        remove_own_note(&state.args.root);
        state.stop.cancel();
        state.tracker.close();
        let drain = Duration::from_secs(state.args.config.http.limits.drain_timeout_secs);
        if tokio::time::timeout(drain, state.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                connections = state.tracker.len(),
                drain_secs = drain.as_secs(),
                "connections still open after the drain deadline; closing them"
            );
        } else {
            tracing::info!("stopped accepting; in-flight requests finished");
        }
        state.queries.cancel();
        Ok(())
    }
}
