//! The stick table's life in the daemon: at start, check that the pin root outlives the
//! process, open the pinned map (adopt, create or migrate it) and take in what it holds; then
//! sweep expired entries. The table itself is
//! [`crate::table`]; its format and lifecycle are described in `docs/TABLE.md`.

use std::{path::Path, sync::Arc, time::Duration};

use lb_common::{SERVER_ADMIN_MAP, STICK_TABLE_MAP};

use super::error::StartError;
use crate::{
    backend::{
        pinned::{PinnedSettings, SettingsError},
        BackendState, SharedSettings,
    },
    config::Config,
    dataplane::{self, BpffsOrigin, Durability},
    table::{
        self,
        pinned::{self, DurableError, DurableTable, Origin},
        ScanMode, Store,
    },
};

/// How often the whole pinned map is read for expired entries (lookups never return one, so
/// this only frees their room; a million entries take a few hundred milliseconds of one CPU).
const SCAN_INTERVAL: Duration = Duration::from_secs(60);

/// Whether the table pinned under `pin_root` outlives this process. When it does not, says so
/// at ERROR level with the ways out, and the daemon runs on: the table works, it is only lost
/// with the process (the monitor shows "durable: no").
pub(super) fn check_durability(pin_root: &Path, origin: BpffsOrigin) -> bool {
    match dataplane::pin_root_durability(pin_root, origin) {
        Durability::Durable => {
            tracing::info!(path = %pin_root.display(), "the pin directory is on the host's bpffs: the stick table outlives restarts");
            true
        }
        Durability::Unverified { init_view, source } => {
            tracing::warn!(
                path = %pin_root.display(),
                "cannot tell whether the stick table outlives restarts: reading {} failed ({source}); \
                 the bpffs was mounted before this process started, so it is taken as the host's",
                init_view.display()
            );
            true
        }
        Durability::Private(why) => {
            tracing::error!(
                path = %pin_root.display(),
                "THE STICK TABLE IS NOT DURABLE: {}. This process pins its maps on a bpf \
                 filesystem that only its own mount namespace sees (as under `ip netns exec`, \
                 which gives the command a fresh /sys, or in a container without the host's \
                 bpffs): the table goes with the process, and a restart or upgrade starts with \
                 an empty one. To fix it, start the daemon with `nsenter --net=/run/netns/NAME` \
                 instead of `ip netns exec NAME` (it joins the network namespace only), or \
                 bind-mount the host's /sys/fs/bpf into the container, or set [instance] pin_dir \
                 to a directory on a bpffs the host shares",
                crate::error_chain(&why)
            );
            false
        }
    }
}

/// Opens the durable table. An upgrade adopts the pinned map as it is, whatever its capacity:
/// the running instance keeps writing to it until it exits, so it must not be migrated away.
pub(super) fn open_durable(
    config: &Config,
    pin_root: &Path,
    upgrading: bool,
) -> Result<DurableTable, StartError> {
    let total: u64 = config
        .backends
        .iter()
        .map(|b| u64::from(b.table_size.get()))
        .sum();
    let capacity = pinned::durable_capacity(total);
    let path = pin_root.join(STICK_TABLE_MAP);
    if upgrading && path.exists() {
        let durable = DurableTable::open_existing(&path)?;
        let pinned = durable.capacity()?;
        if pinned != capacity {
            tracing::warn!(
                pinned,
                wanted = capacity,
                "table_size changed: the pinned table keeps its capacity until the next restart"
            );
        }
        log_origin(Origin::Adopted, &path, pinned);
        return Ok(durable);
    }
    let mut ebpf = dataplane::load(capacity)?;
    let fresh = ebpf
        .take_map(STICK_TABLE_MAP)
        .ok_or(DurableError::MissingMap {
            name: STICK_TABLE_MAP,
        })?;
    let (durable, origin) = DurableTable::open(fresh, &path, capacity)?;
    log_origin(origin, &path, capacity);
    Ok(durable)
}

/// Opens the servers' operator settings pinned beside the table, or creates and pins them.
pub(super) fn open_settings(pin_root: &Path) -> Result<SharedSettings, StartError> {
    let path = pin_root.join(SERVER_ADMIN_MAP);
    if path.exists() {
        let settings = PinnedSettings::open_existing(&path)?;
        tracing::info!(path = %path.display(), "adopted the pinned server settings");
        return Ok(Arc::new(settings));
    }
    // The object's stick table is made with one entry: only the settings map is taken.
    let mut ebpf = dataplane::load(1)?;
    let fresh = ebpf
        .take_map(SERVER_ADMIN_MAP)
        .ok_or(SettingsError::MissingMap {
            name: SERVER_ADMIN_MAP,
        })?;
    let settings = PinnedSettings::open(fresh, &path)?;
    tracing::info!(path = %path.display(), "created the pinned server settings");
    Ok(Arc::new(settings))
}

/// Forgets the settings of servers whose backend is gone from the configuration (each backend
/// forgets those of its own servers that are gone when it builds them).
pub(super) fn forget_orphaned_settings(settings: &SharedSettings, backends: &[Arc<BackendState>]) {
    for (backend_id, server) in settings.servers() {
        if !backends.iter().any(|b| b.id == backend_id) {
            tracing::info!(backend_id = format_args!("{backend_id:08x}"), %server, "backend removed from the configuration: forgetting its server's admin state and weight");
            settings.forget(backend_id, &server);
        }
    }
}

fn log_origin(origin: Origin, path: &std::path::Path, capacity: u32) {
    match origin {
        Origin::Created => {
            tracing::info!(path = %path.display(), capacity, "created the durable stick table")
        }
        Origin::Adopted => {
            tracing::info!(path = %path.display(), capacity, "adopted the pinned stick table")
        }
        Origin::Migrated { from_capacity } => tracing::info!(
            path = %path.display(),
            from_capacity,
            capacity,
            "migrated the pinned stick table to a new capacity"
        ),
    }
}

/// Takes the pinned table as it is: counts each backend's entries, forgets the ones that
/// expired meanwhile or whose backend is gone from the configuration, and brings each
/// backend's most recently used entries into memory.
pub(super) fn adopt_table(store: &Store, backends: &[Arc<BackendState>]) -> Result<(), StartError> {
    let tables: Vec<&table::StickTable> = backends.iter().map(|b| &b.table).collect();
    let report = table::scan(store, &tables, table::now_ms(), ScanMode::Start)
        .map_err(DurableError::Read)?;
    tracing::info!(
        adopted = report.live,
        expired = report.expired,
        orphaned = report.orphaned,
        "adopted the stick table in the pinned map"
    );
    Ok(())
}

/// Every second, forgets the recent entries that expired; every [`SCAN_INTERVAL`], the stored
/// ones (a read of the whole map, off the runtime's threads).
pub(super) async fn sweep_expired(
    store: Store,
    backends: Vec<Arc<BackendState>>,
    map_capacity: u32,
) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let mut last_scan = tokio::time::Instant::now();
    loop {
        ticker.tick().await;
        let now = table::now_ms();
        for backend in &backends {
            let expired = backend.table.sweep_expired(now);
            if expired > 0 {
                tracing::debug!(backend = %backend.name, expired, "expired idle sessions");
            }
        }
        if last_scan.elapsed() < SCAN_INTERVAL {
            continue;
        }
        last_scan = tokio::time::Instant::now();
        let (store, backends) = (store.clone(), backends.clone());
        let scanned = tokio::task::spawn_blocking(move || {
            let tables: Vec<&table::StickTable> = backends.iter().map(|b| &b.table).collect();
            let mode = ScanMode::Periodic {
                capacity: map_capacity,
            };
            table::scan(&store, &tables, table::now_ms(), mode)
        })
        .await;
        match scanned {
            Ok(Ok(report)) if report.expired + report.orphaned > 0 => {
                tracing::debug!(?report, "expired idle sessions in the pinned map")
            }
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::error!(%error, "reading the stick table failed"),
            Err(error) => tracing::error!(%error, "the stick table scan panicked"),
        }
    }
}
