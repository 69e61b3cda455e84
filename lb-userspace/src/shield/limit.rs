//! The SYN rate limit's settings: `[shield] syn_rate` and `syn_burst` turned into what the
//! program reads (`lb_common::ShieldConfig`), written to the pinned settings map. The daemon
//! writes them at start, before attaching, and again on a reload that changes them: the
//! program reads the map for every SYN, so a change applies to the next one, and the buckets
//! (one timestamp per source) stay valid under the new rate.

use std::path::{Path, PathBuf};

use aya::maps::{Array, MapData, MapType};
use lb_common::{ShieldConfig, SHIELD_CONFIG_MAP};

use super::error::ShieldError;
use crate::dataplane::{self, MapLayout};

const NANOS_PER_SECOND: u64 = 1_000_000_000;

/// What the pinned settings map must be.
pub fn layout() -> MapLayout {
    MapLayout::of::<u32, ShieldConfig>(MapType::Array)
}

/// A per-source SYN limit: `rate` SYNs per second sustained, `burst` back to back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SynLimit {
    pub rate: u32,
    pub burst: u32,
}

impl SynLimit {
    /// The program's settings: the interval between two SYNs at the sustained rate, and the
    /// window `burst` of them fill. A rate of 0 (which the configuration refuses) would mean
    /// no limit.
    pub fn settings(self) -> ShieldConfig {
        if self.rate == 0 {
            return ShieldConfig::default();
        }
        // At least 1 ns, so that a rate above 1e9/s still limits (it cannot be reached anyway).
        let interval = (NANOS_PER_SECOND / u64::from(self.rate)).max(1);
        ShieldConfig {
            syn_interval_ns: interval,
            syn_window_ns: interval.saturating_mul(u64::from(self.burst)),
        }
    }
}

/// Writes `limit` to the settings map pinned under `root` (`<pin_dir>/<instance>/v1`), which
/// [`super::Shield::load`] created or adopted.
pub fn write_pinned(root: &Path, limit: SynLimit) -> Result<(), ShieldError> {
    let path = root.join(SHIELD_CONFIG_MAP);
    let open_err = |source| ShieldError::OpenPinned {
        path: path.clone(),
        source,
    };
    let data = MapData::from_pin(&path).map_err(open_err)?;
    dataplane::check_layout(&data, &path, "the shield's settings", layout())
        .map_err(open_err)??;
    let mut array =
        Array::<MapData, ShieldConfig>::try_from(aya::maps::Map::Array(data)).map_err(open_err)?;
    array
        .set(0, limit.settings(), 0)
        .map_err(|source| map_err(path.clone(), source))
}

/// The settings in the map pinned under `root`.
pub fn read_pinned(root: &Path) -> Result<ShieldConfig, ShieldError> {
    let path = root.join(SHIELD_CONFIG_MAP);
    let open_err = |source| ShieldError::OpenPinned {
        path: path.clone(),
        source,
    };
    let data = MapData::from_pin(&path).map_err(open_err)?;
    let array =
        Array::<MapData, ShieldConfig>::try_from(aya::maps::Map::Array(data)).map_err(open_err)?;
    array
        .get(&0, 0)
        .map_err(|source| map_err(path.clone(), source))
}

fn map_err(path: PathBuf, source: aya::maps::MapError) -> ShieldError {
    ShieldError::Map { path, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_limit_is_one_syn_every_5_ms_and_400_at_once() {
        let settings = SynLimit {
            rate: 200,
            burst: 400,
        }
        .settings();
        assert_eq!(settings.syn_interval_ns, 5_000_000);
        assert_eq!(settings.syn_window_ns, 2_000_000_000);
    }

    #[test]
    fn extreme_rates_still_limit() {
        let settings = SynLimit {
            rate: u32::MAX,
            burst: u32::MAX,
        }
        .settings();
        assert_eq!(settings.syn_interval_ns, 1);
        assert_eq!(settings.syn_window_ns, u64::from(u32::MAX));
        let settings = SynLimit { rate: 1, burst: 1 }.settings();
        assert_eq!(settings.syn_interval_ns, NANOS_PER_SECOND);
        assert_eq!(settings.syn_window_ns, NANOS_PER_SECOND);
    }
}
