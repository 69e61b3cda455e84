//! Configuration: a TOML file read in two stages. `raw` mirrors the file with serde (unknown keys
//! are errors); `validate` turns it into the typed [`Config`] below, collecting every problem with
//! the key and line it concerns.

mod cidr;
mod duration;
#[cfg(test)]
mod peers_tests;
mod raw;
#[cfg(test)]
mod server_tls_tests;
#[cfg(test)]
mod shield_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tls_tests;
mod validate;

use std::{
    net::SocketAddr,
    num::NonZeroU32,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

pub use cidr::{Cidr, CidrError};
pub use duration::{parse_duration, DurationError};
pub use validate::{ConfigError, Problem};

/// A validated configuration. Construct it with [`Config::from_toml`] or [`Config::load`].
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub instance: Instance,
    pub frontends: Vec<Frontend>,
    pub backends: Vec<Backend>,
    pub monitor: Option<Monitor>,
    pub timeouts: Timeouts,
    /// `[peers]`: the load balancers this one mirrors its stick tables with.
    pub peers: Option<Peers>,
    /// `[fastpath]`: when a connection is handed to the kernel (frontends that splice).
    pub fastpath: FastPathPolicy,
    /// `[shield]`: the XDP deny list in front of the frontends (docs/SHIELD.md).
    pub shield: Shield,
}

impl Config {
    /// Parses and validates a configuration file's text. Every semantic problem is reported; of
    /// syntax, unknown-key and type errors only the first (serde stops there).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        validate::from_toml_with(text, validate::host_name, None)
    }

    /// Reads `path` and validates it as [`Config::from_toml`] does.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml(&text)
    }

    /// Reads `path` as [`Config::load`] does, with `name` (when given) as the instance name in
    /// place of the file's or the host name: how one shared file serves several instances on
    /// one host, like HAProxy's `-L`.
    pub fn load_as(path: &Path, name: Option<&str>) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        validate::from_toml_with(&text, validate::host_name, name)
    }
}

/// The id of the backend named `name` in kernel maps and stick keys: FNV-1a (32 bit) of the
/// name's bytes. [`Config`] validation refuses two backends whose ids collide.
pub fn backend_id(name: &str) -> u32 {
    name.bytes().fold(0x811c_9dc5, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    })
}

#[derive(Clone, Debug, PartialEq)]
pub struct Instance {
    /// Peer name; defaults to the host name.
    pub name: String,
    /// Pinned maps live under `<pin_dir>/<name>/`. Default `/sys/fs/bpf/stickylb`.
    pub pin_dir: PathBuf,
    /// Unix socket for `stickylb reload` and upgrades. Default `/run/stickylb/<name>.sock`.
    pub control_socket: PathBuf,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Frontend {
    pub name: String,
    pub bind: SocketAddr,
    /// Name of a backend that exists in [`Config::backends`] (validated).
    pub backend: String,
    /// Whether keep-alive connections that show they live long are handed to the kernel
    /// ([`FastPathPolicy`]).
    /// Default [`FastPathMode::DEFAULT`] on an IPv4 bind, `off` on an IPv6 one.
    pub fastpath: FastPathMode,
    /// Interfaces the splice program is attached to. Empty (the default): the interfaces of the
    /// routes to the servers, and the one each accepted connection came in on.
    pub fastpath_interfaces: Vec<String>,
    /// `tls`: the frontend serves HTTPS (HTTP/1.1 and HTTP/2) with these certificates; its
    /// fast path is then off. `None`: cleartext HTTP/1.1.
    pub tls: Option<Tls>,
    /// `redirect_http_to` (cleartext frontends only): every request is answered with a
    /// permanent redirect to this `https://` origin (and optional path prefix, without a
    /// trailing `/`) followed by the request's path and query; nothing is routed.
    pub redirect_http_to: Option<String>,
    /// `hsts` (TLS frontends only): responses get `Strict-Transport-Security: max-age=` this
    /// many seconds, unless the server sent one.
    pub hsts: Option<Duration>,
}

/// A TLS frontend's certificates, read and checked when the configuration is loaded.
#[derive(Clone, Debug, PartialEq)]
pub struct Tls {
    /// Not empty. A client's SNI picks the first whose names match it; the first is the
    /// default (no SNI, or a name none matches).
    pub certificates: Vec<TlsCertificate>,
}

/// A certificate chain and its private key, as files and as rustls uses them.
#[derive(Clone)]
pub struct TlsCertificate {
    /// Absolute path of the PEM chain, end entity first.
    pub cert: PathBuf,
    /// Absolute path of the PEM private key (PKCS#8, PKCS#1 or SEC1), matching the chain.
    pub key: PathBuf,
    /// The chain and the signing key, parsed and checked to match.
    pub loaded: Arc<rustls::sign::CertifiedKey>,
}

/// Compared by files: what a reload compares (the contents are read at start and on upgrade).
impl PartialEq for TlsCertificate {
    fn eq(&self, other: &Self) -> bool {
        self.cert == other.cert && self.key == other.key
    }
}

/// The files only: the key itself is never printed.
impl std::fmt::Debug for TlsCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsCertificate")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// `fastpath = "splice" | "off"`: the kernel fast path of a frontend (`docs/FASTPATH.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FastPathMode {
    /// A keep-alive HTTP/1.1 connection to a sticky server is spliced by the TC program once
    /// it shows it lives long ([`FastPathPolicy`]: its 8th request, a pause, a large body or a
    /// tunnel); later requests skip L7.
    Splice,
    /// Every request goes through the userspace proxy.
    Off,
}

impl FastPathMode {
    /// The default of a frontend bound to an IPv4 address (an IPv6 one defaults to `off`: the
    /// program splices IPv4 only).
    pub const DEFAULT: FastPathMode = FastPathMode::Splice;

    pub fn as_str(self) -> &'static str {
        match self {
            FastPathMode::Splice => "splice",
            FastPathMode::Off => "off",
        }
    }
}

impl Config {
    /// Whether any frontend splices: the daemon then loads and attaches the fast path.
    pub fn splices(&self) -> bool {
        self.frontends
            .iter()
            .any(|f| f.fastpath == FastPathMode::Splice)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastConn,
    /// Power of two random choices (by in-flight requests).
    Random,
    /// Weighted rendezvous hashing of the cookie (else the client's address): every node
    /// chooses alike with no word from the others (docs/PEERS.md, "A cluster").
    Consistent,
}

/// The highest weight a server may have (HAProxy's bound too).
pub const MAX_WEIGHT: u16 = 256;

#[derive(Clone, Debug, PartialEq)]
pub struct Backend {
    pub name: String,
    pub balance: Balance,
    /// Cookie name whose value is the stickiness key. Default `JSESSIONID`.
    pub stick_cookie: String,
    /// Maximum entries; the least recently used are evicted beyond it. Default 1048576.
    pub table_size: NonZeroU32,
    /// Idle time after which an entry is forgotten. Default 30 minutes.
    pub expire: Duration,
    /// The key length announced to peers, HAProxy's `stick-table type string len N`: peers
    /// only sync tables whose lengths agree. Cookies longer than this stay local. Default 32
    /// (HAProxy's `len 32` in the original demo); up to 43, which shares every cookie between stickylb nodes (longer
    /// ones are keyed by a 33-byte digest).
    pub peer_key_len: u8,
    pub health_check: HealthCheck,
    /// How long a server that comes back (health check, or `stickylb server ... ready`) takes
    /// to reach its full weight. Zero (the default) is off.
    pub slowstart: Duration,
    /// How long a request waits for a server below its `maxconn` before it is answered 503.
    /// Default 5 s.
    pub queue_timeout: Duration,
    /// Unique names, non-empty list.
    pub servers: Vec<Server>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct HealthCheck {
    /// Whether checks run at all. Default true.
    pub enabled: bool,
    /// Request path, starts with `/`. Default `/`.
    pub path: String,
    /// Default 2 s.
    pub interval: Duration,
    /// Default 1 s.
    pub timeout: Duration,
    /// Consecutive successes to go up. Default 2.
    pub rise: NonZeroU32,
    /// Consecutive failures to go down. Default 3.
    pub fall: NonZeroU32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Server {
    /// Stable identity of the server: what stick entries point at. At most 31 bytes.
    pub name: String,
    pub addr: SocketAddr,
    /// Share of new sessions relative to the other servers, 0..=256 (0: none). Default 1.
    pub weight: u16,
    /// Requests in flight at most; the others wait in the backend's queue. 0 (the default):
    /// no limit.
    pub maxconn: u32,
    /// `tls = true`: the server is reached over TLS (and its connections are never spliced).
    /// `None` (the default): cleartext HTTP/1.1.
    pub tls: Option<ServerTls>,
}

/// How a server reached over TLS is verified, read and built when the configuration is
/// loaded: every connection to it, the proxy's and the health checks', uses [`Self::client`].
#[derive(Clone)]
pub struct ServerTls {
    /// `sni`: the name sent in the handshake and verified in the server's certificate.
    /// `None`: no SNI, and the server's IP address is verified against an IP SAN.
    pub sni: Option<String>,
    /// `ca`: the PEM bundle of the CAs the server's chain must lead to (absolute; default
    /// [`ServerTls::SYSTEM_CA`]).
    pub ca: PathBuf,
    /// The identity verified: `sni`, or the address's IP.
    pub name: rustls_pki_types::ServerName<'static>,
    /// rustls' client settings: the CAs of `ca`, TLS 1.2 and 1.3, ALPN `http/1.1`. One per
    /// server, so that its sessions are resumed.
    pub client: Arc<rustls::ClientConfig>,
    /// The CAs read from `ca`: a reload that finds other CAs in the same file applies them.
    pub roots: Arc<rustls::RootCertStore>,
}

impl ServerTls {
    /// The CA bundle a server is verified with when it has no `ca`: Debian's system bundle.
    pub const SYSTEM_CA: &'static str = "/etc/ssl/certs/ca-certificates.crt";
}

/// Compared by settings and CA contents: what a reload compares.
impl PartialEq for ServerTls {
    fn eq(&self, other: &Self) -> bool {
        self.sni == other.sni && self.ca == other.ca && self.roots.roots == other.roots.roots
    }
}

impl Eq for ServerTls {}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("sni", &self.sni)
            .field("ca", &self.ca)
            .finish_non_exhaustive()
    }
}

/// `[peers]`. The same section is meant for every node: the member named like the instance is
/// this node, the others are dialled.
#[derive(Clone, Debug, PartialEq)]
pub struct Peers {
    /// Where peers connect to us.
    pub bind: SocketAddr,
    /// Every member, this node included (validated).
    pub members: Vec<PeerMember>,
    /// Sessions over mutual TLS (docs/PEERS.md, "Peers over TLS"); cleartext when `None`.
    pub tls: Option<PeersTls>,
    /// Sources that may connect to the peers port; the others are closed before the handshake.
    /// Not empty: defaults to each member's address.
    pub allow: Vec<Cidr>,
}

/// `[peers] tls`: our certificate, and the CA every member's certificate must be signed by.
#[derive(Clone, Debug)]
pub struct PeersTls {
    /// What we present, dialling and answering.
    pub certificate: TlsCertificate,
    /// Absolute path of the PEM CA certificate(s).
    pub ca: PathBuf,
    /// The certificates in `ca`, as rustls takes them.
    pub roots: Arc<rustls::RootCertStore>,
}

/// The files, as for [`TlsCertificate`]: what a reload compares.
impl PartialEq for PeersTls {
    fn eq(&self, other: &Self) -> bool {
        self.certificate == other.certificate && self.ca == other.ca
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerMember {
    pub name: String,
    pub addr: SocketAddr,
}

/// `[shield]`: the program (XDP or TC) that drops packets from denied sources, and SYNs beyond a
/// per-source rate, before the stack sees them (docs/SHIELD.md). Turning it on or off and its
/// interfaces need an upgrade; the SYN limit is applied in place by a reload. On by default beyond
/// loopback (see `enabled`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shield {
    /// `enabled`; default on when a frontend binds an address that is not loopback, a wildcard
    /// included (`validate::shield::on_by_default`).
    pub enabled: bool,
    /// On because the file did not say (`enabled` absent): a shield that cannot start then
    /// leaves the daemon serving without it, with a warning.
    pub by_default: bool,
    /// Where it is attached; empty: the interfaces that own the frontends' bind addresses
    /// (found at start).
    pub interfaces: Vec<String>,
    /// TCP SYNs (without ACK) per second a source (/32, or /64 for IPv6) may send, sustained.
    pub syn_rate: u32,
    /// SYNs a source may send back to back.
    pub syn_burst: u32,
    /// `hook`: where the shield's program runs on each interface.
    pub hook: ShieldHook,
}

impl Default for Shield {
    fn default() -> Self {
        Self {
            enabled: false,
            by_default: false,
            interfaces: Vec::new(),
            syn_rate: validate::DEFAULT_SYN_RATE,
            syn_burst: validate::DEFAULT_SYN_BURST,
            hook: ShieldHook::Auto,
        }
    }
}

/// `[shield] hook`: where the shield's program runs (docs/SHIELD.md, "Where it runs").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShieldHook {
    /// XDP in the driver where the driver runs XDP on its own receive buffers; TC ingress on a
    /// veth and where the driver has no native XDP (its frames are socket buffers before any
    /// XDP program sees them). XDP on every interface while the fast path translates at XDP
    /// (`[fastpath] xdp = "auto"`): the shield's program then translates too.
    Auto,
    /// XDP everywhere: native where the driver has it, generic otherwise.
    Xdp,
    /// TC ingress everywhere (the fast path's XDP translation, if on, stays its own program).
    Tc,
}

impl ShieldHook {
    /// The value as the file spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Xdp => "xdp",
            Self::Tc => "tc",
        }
    }
}

/// `[fastpath]`: the hand-off policy (see `fastpath::policy`). Changing it needs an upgrade.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FastPathPolicy {
    /// The request (counting from 1) with whose answer a connection is handed over. Default 8.
    pub after_requests: u32,
    /// A client that sends nothing for this long after an answer has its connection handed
    /// over. Default 50 ms.
    pub after_pause: Duration,
    /// How long the source port of a spliced connection that ended (with TCP timestamps) rests
    /// before a new connection to the same server may use it. Default 1 s, Linux's own
    /// `tcp_tw_reuse` rule.
    pub port_reuse: Duration,
    /// The source ports of server connections that may be spliced, allocated by the daemon and
    /// reserved with `ip_local_reserved_ports`. Default 61000-64999 (above Linux's default
    /// ephemeral range).
    pub source_ports: PortRange,
    /// Whether spliced flows are also translated at XDP (docs/SPLICE.md, "At XDP"). Default
    /// off: on this project's measurements XDP did not win (see there).
    pub xdp: FastPathXdp,
}

/// `[fastpath] xdp`: where the splice translation runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FastPathXdp {
    /// TC only.
    Off,
    /// XDP (native mode) on every fast path interface whose driver has it and that no other
    /// XDP program holds, in front of TC; redirecting only to interfaces that can transmit
    /// redirected frames. TC handles everything else.
    Auto,
}

impl FastPathXdp {
    /// The value as the file spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Auto => "auto",
        }
    }
}

impl Default for FastPathPolicy {
    fn default() -> Self {
        Self {
            after_requests: 8,
            after_pause: Duration::from_millis(50),
            port_reuse: Duration::from_secs(1),
            source_ports: PortRange {
                first: 61000,
                last: 64999,
            },
            xdp: FastPathXdp::Off,
        }
    }
}

/// An inclusive range of TCP ports, `first-last` in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn range(self) -> std::ops::RangeInclusive<u16> {
        self.first..=self.last
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Monitor {
    pub bind: SocketAddr,
    /// `auth`: HTTP basic credentials every route asks for. Default none.
    pub auth: Option<MonitorAuth>,
}

/// `[monitor] auth`: the user and the password read from `password_file` when the
/// configuration is loaded (at start and on every reload).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MonitorAuth {
    /// Not empty, no `:` (RFC 7617), no control characters.
    pub user: String,
    /// Absolute.
    pub password_file: PathBuf,
    /// The file's first line, without its line ending; not empty.
    pub password: Password,
}

/// A password: compared and cloned like a string, never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn new(password: String) -> Self {
        Self(password)
    }

    /// The password itself, for the one place that checks credentials.
    pub fn reveal(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(..)")
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Connecting to a server. Default 5 s.
    pub connect: Duration,
    /// Waiting for a client's request headers, and idle keep-alive client connections;
    /// a client slower than this gets 408. Default 50 s (HAProxy's `timeout client` in the original demo).
    pub client: Duration,
    /// Waiting for a server's response headers. Default 50 s.
    pub server: Duration,
    /// How long a stopping daemon lets in-flight requests finish. Default 10 s.
    pub drain: Duration,
    /// Largest request head accepted; larger gets 431. Default 16 KiB, at least 8 KiB (the
    /// floor of hyper's read buffer).
    pub max_header_bytes: usize,
    /// How long the fast path keeps translating a spliced connection after FIN in both
    /// directions (retransmitted FINs and last ACKs). Default 60 s, TIME_WAIT's length; less
    /// risks an RST to a peer that retransmits its last ACK.
    pub splice_fin_grace: Duration,
    /// A spliced connection that carried nothing for this long is forgotten (its next packet
    /// meets the stack, which resets it). Default 2 h.
    pub splice_idle: Duration,
}
