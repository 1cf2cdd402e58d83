//! Command line: every flag also reads a `TAGPIN_<FLAG>` environment variable. Turns flags into
//! the plain settings structs the library takes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::admission::AdmissionConfig;
use crate::cluster::ClusterOptions;
use crate::logging::LogFormat;
use crate::metrics::Metrics;
use crate::resolve::credentials::{CredentialError, CredentialSet};
use crate::resolve::http::RegistryOptions;
use crate::resolve::netpolicy::{AddressPolicy, Cidr};
use crate::resolve::provider::{ProviderError, Providers};
use crate::resolve::ResolverConfig;
use crate::server::ServeConfig;

#[derive(Parser, Debug)]
#[command(
    name = "tagpin",
    version,
    about = "Pin container image tags to digests: a Kubernetes mutating admission webhook and a CLI"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once at start; the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the admission webhook (POST /mutate, POST /enforce) over HTTPS.
    Serve(ServeArgs),
    /// Resolve images to pinned references: prints "<input> <pinned>" per image; exit 1 if any fails.
    Resolve(ResolveArgs),
    /// Pin every image in Kubernetes YAML (Pods, workload templates, List items).
    ///
    /// Exit 0: all pinned (or, with --check, all pinned and current). Exit 1: some image left
    /// unpinned, or --check found one unpinned or moved. Exit 2: unreadable input (nothing written).
    Pin(PinArgs),
    /// Report running pods that are not what their tags say (read-only).
    ///
    /// Findings: unpinned (a tag in the spec), stale (the node runs another build than the tag
    /// names now), mixed (a controller's pods run several builds of one container), moved (a
    /// pinned image whose recorded tag moved: a rollout is waiting), mismatch (the node runs
    /// another digest than the spec pins), latest (:latest or no tag), unknown (the registry did
    /// not answer). Exit 0: nothing in --fail-on found; 1: found; 2: the audit could not run.
    /// Also answers `kubectl tagpin audit` when installed as `kubectl-tagpin`.
    Audit(AuditArgs),
}

/// The command line, parsed. Invoked as `kubectl-tagpin` (a kubectl plugin: `kubectl tagpin
/// audit ...`), help and errors name it `kubectl tagpin`.
pub fn parse() -> Cli {
    use clap::{CommandFactory as _, FromArgMatches as _};
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let mut cmd = Cli::command();
    if is_kubectl_plugin(args.first().map(std::path::Path::new)) {
        cmd = cmd.bin_name("kubectl tagpin");
    }
    let matches = cmd.get_matches_from(args);
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// Whether argv[0] is the kubectl plugin name (`kubectl-tagpin`, also through a symlink).
pub fn is_kubectl_plugin(argv0: Option<&std::path::Path>) -> bool {
    argv0
        .and_then(|p| p.file_name())
        .is_some_and(|n| n.to_string_lossy().starts_with("kubectl-tagpin"))
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 5s, 2m, 24h)"))
}

fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n > 0 && n <= u32::MAX as usize => Ok(n),
        _ => Err("expected a whole number from 1 to 4294967295".into()),
    }
}

/// Flags shared by every command that talks to registries.
#[derive(Args, Debug, Clone)]
pub struct RegistryArgs {
    /// Registry (HOST[:PORT], as in the image) spoken to over plain HTTP. Repeatable.
    #[arg(
        long = "insecure-registry",
        env = "TAGPIN_INSECURE_REGISTRY",
        value_delimiter = ',',
        value_name = "HOST[:PORT]"
    )]
    pub insecure_registry: Vec<String>,
    /// Extra CA bundle (PEM) trusted for registries, besides the system's.
    #[arg(long, env = "TAGPIN_REGISTRY_CA", value_name = "FILE")]
    pub registry_ca: Option<PathBuf>,
    /// Docker config.json with static registry credentials ("auths").
    #[arg(long, env = "TAGPIN_DOCKER_CONFIG", value_name = "FILE")]
    pub docker_config: Option<PathBuf>,
    /// Kubelet credential-provider config (CredentialProviderConfig, kubelet.config.k8s.io/v1; YAML or JSON).
    #[arg(
        long,
        env = "TAGPIN_IMAGE_CREDENTIAL_PROVIDER_CONFIG",
        value_name = "FILE",
        requires = "image_credential_provider_bin_dir"
    )]
    pub image_credential_provider_config: Option<PathBuf>,
    /// Directory holding the credential-provider plugin binaries named in the config.
    #[arg(
        long,
        env = "TAGPIN_IMAGE_CREDENTIAL_PROVIDER_BIN_DIR",
        value_name = "DIR",
        requires = "image_credential_provider_config"
    )]
    pub image_credential_provider_bin_dir: Option<PathBuf>,
    /// Bound on one credential-provider plugin run (it also never outlasts an admission's budget for that admission).
    #[arg(long, env = "TAGPIN_IMAGE_CREDENTIAL_PROVIDER_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub image_credential_provider_timeout: Duration,
    /// How long a resolved digest is reused before the registry is asked again.
    #[arg(long, env = "TAGPIN_CACHE_TTL", default_value = "30s", value_parser = duration)]
    pub cache_ttl: Duration,
    /// Most digests kept in the cache.
    #[arg(long, env = "TAGPIN_CACHE_CAPACITY", default_value_t = 10_000)]
    pub cache_capacity: u64,
    /// Budget for resolving all images of one admission (or one `resolve` run).
    #[arg(long, env = "TAGPIN_RESOLVE_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub resolve_timeout: Duration,
    /// Bound on one registry lookup; a lookup outliving an admission goes on in the background this long and fills the cache.
    #[arg(long, env = "TAGPIN_LOOKUP_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub lookup_timeout: Duration,
    /// How long the last known digest of each tag is kept for stale-on-error.
    #[arg(long, env = "TAGPIN_STALE_TTL", default_value = "24h", value_parser = duration)]
    pub stale_ttl: Duration,
    /// Never pin to a last known digest when the registry fails (leave the image unpinned instead).
    #[arg(long, env = "TAGPIN_NO_STALE_ON_ERROR")]
    pub no_stale_on_error: bool,
    /// Consecutive failures to one registry that open its circuit breaker.
    #[arg(long, env = "TAGPIN_BREAKER_THRESHOLD", default_value_t = 5)]
    pub breaker_threshold: u32,
    /// How long an open breaker fails lookups fast (a 429's Retry-After overrides it).
    #[arg(long, env = "TAGPIN_BREAKER_COOLDOWN", default_value = "30s", value_parser = duration)]
    pub breaker_cooldown: Duration,
    /// Images starting with this are never resolved (e.g. kind.local/). Repeatable.
    #[arg(
        long = "skip-prefix",
        env = "TAGPIN_SKIP_PREFIX",
        value_delimiter = ',',
        value_name = "PREFIX"
    )]
    pub skip_prefix: Vec<String>,
    /// Write repo:tag@sha256:… instead of repo@sha256:….
    #[arg(long, env = "TAGPIN_KEEP_TAG")]
    pub keep_tag: bool,
    /// Registry lookups in flight at once; more wait (within their deadline).
    #[arg(long, env = "TAGPIN_MAX_CONCURRENT_LOOKUPS", default_value_t = 256)]
    pub max_concurrent_lookups: usize,
    /// Registry lookups in flight at once to one registry host; more wait.
    #[arg(long, env = "TAGPIN_MAX_LOOKUPS_PER_REGISTRY", default_value_t = 16)]
    pub max_lookups_per_registry: usize,
    /// Never call the Kubernetes API (pull secrets and service accounts are not read).
    #[arg(long, env = "TAGPIN_NO_KUBE")]
    pub no_kube: bool,
    /// Log format.
    #[arg(long, env = "TAGPIN_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// Where the commands that read pod specs (`serve`, `audit`) may connect: pod specs are written by
/// whoever creates pods, so loopback, link-local and metadata addresses are refused unless allowed.
#[derive(Args, Debug, Clone)]
pub struct AddressArgs {
    /// Address range tagpin may connect to although it is loopback, link-local or otherwise
    /// refused (e.g. 127.0.0.0/8 for a registry on the node). Repeatable.
    #[arg(
        long = "allow-registry-cidr",
        env = "TAGPIN_ALLOW_REGISTRY_CIDR",
        value_delimiter = ',',
        value_name = "CIDR"
    )]
    pub allow_registry_cidr: Vec<Cidr>,
}

impl AddressArgs {
    /// The policy: refused ranges except those allowed; registries named `--insecure-registry`.
    pub fn policy(&self, registry: &RegistryArgs) -> AddressPolicy {
        AddressPolicy::serve(
            self.allow_registry_cidr.clone(),
            &registry.insecure_registry,
        )
    }
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// HTTPS address for admission reviews.
    #[arg(long, env = "TAGPIN_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Serving certificate (PEM; may hold a chain). Reloaded when it changes.
    #[arg(
        long,
        env = "TAGPIN_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// Serving key (PEM). Reloaded when it changes.
    #[arg(
        long,
        env = "TAGPIN_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// How often the certificate files are checked for a change.
    #[arg(long, env = "TAGPIN_TLS_RELOAD_INTERVAL", default_value = "10s", value_parser = duration)]
    pub tls_reload_interval: Duration,
    /// Plain-HTTP address for /metrics, /healthz and /readyz.
    #[arg(long, env = "TAGPIN_METRICS_LISTEN", default_value = "0.0.0.0:9090")]
    pub metrics_listen: SocketAddr,
    /// Kubeconfig used to read pull secrets and service accounts (default: the in-cluster service account).
    #[arg(long, env = "TAGPIN_KUBECONFIG", value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Bound on one Kubernetes API read (a Secret or a ServiceAccount).
    #[arg(long, env = "TAGPIN_KUBE_TIMEOUT", default_value = "2s", value_parser = duration)]
    pub kube_timeout: Duration,
    /// How long a read Secret or ServiceAccount is reused ("not found" and "forbidden": at most 5s).
    #[arg(long, env = "TAGPIN_KUBE_CACHE_TTL", default_value = "30s", value_parser = duration)]
    pub kube_cache_ttl: Duration,
    #[command(flatten)]
    pub addresses: AddressArgs,
    /// Most distinct images resolved for one review; the rest are left unpinned with one warning
    /// (/mutate) or denied (/enforce).
    #[arg(long, env = "TAGPIN_MAX_IMAGES_PER_REVIEW", default_value_t = 64)]
    pub max_images_per_review: usize,
    /// Registry hosts with a label value of their own in /metrics; the others are "other".
    #[arg(long, env = "TAGPIN_METRICS_MAX_REGISTRIES", default_value_t = crate::metrics::DEFAULT_MAX_REGISTRY_LABELS)]
    pub metrics_max_registries: usize,
    /// After SIGTERM, how long in-flight requests may take to finish.
    #[arg(long, env = "TAGPIN_SHUTDOWN_GRACE", default_value = "20s", value_parser = duration)]
    pub shutdown_grace: Duration,
    /// Largest AdmissionReview body in bytes; larger ones get 413 (the API server's own limit is 3 MiB).
    #[arg(long, env = "TAGPIN_MAX_BODY", default_value_t = crate::server::DEFAULT_MAX_BODY, value_name = "BYTES")]
    pub max_body: usize,
    /// Reviews answered at once; more wait for a slot within their --resolve-timeout, then are
    /// answered without being looked at (allowed with a warning on /mutate, denied on /enforce).
    #[arg(long, env = "TAGPIN_MAX_CONCURRENT_REVIEWS", default_value_t = crate::server::DEFAULT_MAX_CONCURRENT_REVIEWS, value_parser = positive)]
    pub max_concurrent_reviews: usize,
    /// Open connections on the review listener (lowered to fit the open-file limit); more wait to be accepted.
    #[arg(long, env = "TAGPIN_MAX_CONNECTIONS", default_value_t = crate::server::DEFAULT_MAX_CONNECTIONS, value_parser = positive)]
    pub max_connections: usize,
    /// Threads serving review connections, each with a runtime of its own (a connection stays on
    /// one; HTTP/2 streams are spread over all). Default: one per CPU the process may use.
    #[arg(long, env = "TAGPIN_REVIEW_THREADS", value_parser = positive, value_name = "N")]
    pub review_threads: Option<usize>,
    /// CA bundle (PEM): the review listener then requires a client certificate signed by it
    /// (the API server presents one when its AdmissionConfiguration names a kubeconfig for the webhook).
    #[arg(long, env = "TAGPIN_CLIENT_CA", value_name = "FILE")]
    pub client_ca: Option<PathBuf>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Args, Debug)]
pub struct ResolveArgs {
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Images to resolve.
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<String>,
}

#[derive(Args, Debug)]
pub struct PinArgs {
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Write the result to this file instead of stdout.
    #[arg(short = 'o', long = "output", value_name = "OUT", conflicts_with_all = ["in_place", "check"])]
    pub output: Option<PathBuf>,
    /// Rewrite each input file that changes, in place.
    #[arg(long, conflicts_with = "check")]
    pub in_place: bool,
    /// Change nothing; exit 1 listing every image not pinned, or pinned to a digest its
    /// recorded tag (tagpin.io/pinned, or repo:tag@digest) no longer points to.
    #[arg(long)]
    pub check: bool,
    /// When some inputs cannot be read (invalid YAML, duplicate keys, Helm templates), pin the
    /// rest and exit 1 naming what was skipped, instead of writing nothing (exit 2).
    #[arg(long)]
    pub skip_invalid: bool,
    /// Count image fields outside pod specs, fields the pod-spec rule cannot decide about, and
    /// objects too deep or large to search as problems (exit 1), in pin and --check alike;
    /// without it they are notes.
    #[arg(long)]
    pub strict: bool,
    /// YAML files, directories (searched recursively for *.yaml and *.yml), or - for stdin.
    /// None: stdin.
    #[arg(value_name = "FILE|DIR|-")]
    pub inputs: Vec<PathBuf>,
}

impl PinArgs {
    pub fn options(&self) -> crate::pin::Options {
        crate::pin::Options {
            mode: if self.check {
                crate::pin::Action::Check
            } else {
                crate::pin::Action::Pin
            },
            keep_tag: self.registry.keep_tag,
            skip_prefixes: self.registry.skip_prefix.clone(),
            lookup_timeout: self.registry.lookup_timeout,
            skip_invalid: self.skip_invalid,
            strict: self.strict,
        }
    }

    pub fn output(&self) -> crate::pin::Output {
        match (&self.output, self.in_place) {
            (_, true) => crate::pin::Output::InPlace,
            (Some(p), _) => crate::pin::Output::File(p.clone()),
            (None, false) => crate::pin::Output::Stdout,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum AuditOutput {
    Table,
    Json,
}

#[derive(Args, Debug)]
pub struct AuditArgs {
    /// Kubeconfig to read pods with (default: $KUBECONFIG, ~/.kube/config, else the in-cluster
    /// service account).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
    /// Audit this namespace (default: the context's namespace, else `default`).
    #[arg(
        short = 'n',
        long,
        value_name = "NAMESPACE",
        conflicts_with = "all_namespaces"
    )]
    pub namespace: Option<String>,
    /// Audit every namespace (one paged list of all pods).
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Only pods matching this label selector (e.g. app=web,tier!=cache).
    #[arg(short = 'l', long, value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: AuditOutput,
    /// Findings that make the exit code 1.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "stale,mixed,mismatch",
        value_name = "KIND,..."
    )]
    pub fail_on: Vec<crate::audit::Kind>,
    /// Pods per list request (the API server pages the list).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    pub chunk_size: u32,
    /// Bound on one Kubernetes API request (one page of pods, one namespace read).
    #[arg(long, default_value = "30s", value_parser = duration)]
    pub kube_timeout: Duration,
    #[command(flatten)]
    pub addresses: AddressArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

impl AuditArgs {
    /// Where audit may connect: as `serve` (pod specs are written by whoever creates pods).
    pub fn address_policy(&self) -> AddressPolicy {
        self.addresses.policy(&self.registry)
    }

    pub fn cluster_options(&self) -> ClusterOptions {
        ClusterOptions {
            timeout: self.kube_timeout,
            ..ClusterOptions::default()
        }
    }

    pub fn scope(&self, context_namespace: &str) -> crate::audit::run::Scope {
        crate::audit::run::Scope {
            namespace: (!self.all_namespaces).then(|| {
                self.namespace
                    .clone()
                    .unwrap_or_else(|| context_namespace.to_string())
            }),
            selector: self.selector.clone(),
            chunk_size: self.chunk_size,
        }
    }

    pub fn options(&self) -> crate::audit::run::Options {
        crate::audit::run::Options {
            skip_prefixes: self.registry.skip_prefix.clone(),
            lookup_timeout: self.registry.lookup_timeout,
            lookups_per_registry: self.registry.max_lookups_per_registry,
            concurrency: 8,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Credentials(#[from] CredentialError),
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error("cannot read --registry-ca {path}: {source}")]
    Ca {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl RegistryArgs {
    /// The resolver's settings; plugins count their runs in `metrics`.
    pub fn resolver_config(
        &self,
        metrics: &std::sync::Arc<Metrics>,
    ) -> Result<ResolverConfig, ConfigError> {
        let docker_config = match &self.docker_config {
            Some(p) => CredentialSet::from_docker_config_file(p)?,
            None => CredentialSet::default(),
        };
        let extra_ca_pem = match &self.registry_ca {
            Some(p) => Some(std::fs::read(p).map_err(|source| ConfigError::Ca {
                path: p.clone(),
                source,
            })?),
            None => None,
        };
        let providers = match (
            &self.image_credential_provider_config,
            &self.image_credential_provider_bin_dir,
        ) {
            (Some(cfg), Some(dir)) => Some(std::sync::Arc::new(Providers::load(
                cfg,
                dir,
                self.image_credential_provider_timeout,
                metrics.clone(),
            )?)),
            _ => None,
        };
        Ok(ResolverConfig {
            registry: RegistryOptions {
                insecure: self.insecure_registry.clone(),
                extra_ca_pem,
                connect_timeout: self.lookup_timeout.min(Duration::from_secs(5)),
                request_timeout: self.lookup_timeout,
                policy: Default::default(),
            },
            docker_config,
            skip_prefixes: self.skip_prefix.clone(),
            cache_ttl: self.cache_ttl,
            cache_capacity: self.cache_capacity,
            stale_ttl: (!self.no_stale_on_error).then_some(self.stale_ttl),
            lookup_timeout: self.lookup_timeout,
            breaker_threshold: self.breaker_threshold,
            breaker_cooldown: self.breaker_cooldown,
            cluster: None,
            providers,
            max_images_per_batch: None,
            max_lookups: self.max_concurrent_lookups,
            max_lookups_per_registry: self.max_lookups_per_registry,
        })
    }

    pub fn admission_config(&self) -> AdmissionConfig {
        AdmissionConfig {
            keep_tag: self.keep_tag,
            resolve_timeout: self.resolve_timeout,
            stale_on_error: !self.no_stale_on_error,
        }
    }
}

impl ServeArgs {
    /// Where `serve` may connect: no loopback, link-local or metadata addresses unless allowed.
    pub fn address_policy(&self) -> AddressPolicy {
        self.addresses.policy(&self.registry)
    }

    pub fn cluster_options(&self) -> ClusterOptions {
        ClusterOptions {
            timeout: self.kube_timeout,
            cache_ttl: self.kube_cache_ttl,
            ..ClusterOptions::default()
        }
    }

    pub fn serve_config(&self) -> ServeConfig {
        ServeConfig {
            listen: self.listen,
            metrics_listen: self.metrics_listen,
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            tls_reload_interval: self.tls_reload_interval,
            shutdown_grace: self.shutdown_grace,
            max_body: self.max_body,
            max_concurrent_reviews: self.max_concurrent_reviews,
            max_connections: self.max_connections,
            client_ca: self.client_ca.clone(),
            review_threads: self.review_threads.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_repeatable_flags() {
        let cli = Cli::try_parse_from([
            "tagpin",
            "serve",
            "--insecure-registry",
            "a:5000",
            "--insecure-registry",
            "b",
            "--skip-prefix",
            "kind.local/",
            "--cache-ttl",
            "2m",
        ])
        .unwrap();
        let Command::Serve(s) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(s.listen, "0.0.0.0:8443".parse().unwrap());
        assert_eq!(s.registry.insecure_registry, vec!["a:5000", "b"]);
        assert_eq!(s.registry.cache_ttl, Duration::from_secs(120));
        assert_eq!(s.registry.resolve_timeout, Duration::from_secs(5));
        let rc = s
            .registry
            .resolver_config(&std::sync::Arc::new(Metrics::new()))
            .unwrap();
        assert_eq!(rc.stale_ttl, Some(Duration::from_secs(86_400)));
    }

    #[test]
    fn half_a_tls_pair_is_refused_and_bad_durations_explained() {
        assert!(Cli::try_parse_from(["tagpin", "serve", "--tls-cert", "c.pem"]).is_err());
        let e = Cli::try_parse_from(["tagpin", "serve", "--cache-ttl", "soon"]).unwrap_err();
        assert!(e.to_string().contains("examples"), "{e}");
        assert!(Cli::try_parse_from(["tagpin", "resolve"]).is_err());
    }
}
