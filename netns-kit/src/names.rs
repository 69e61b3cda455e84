//! Naming namespaces after the process that made them, and removing what a process that is
//! gone left behind (killed, or crashed before its guards ran).

use std::{
    fs,
    path::Path,
    sync::atomic::{AtomicU32, Ordering},
};

use crate::{netns::NETNS_DIR, remove};

/// Counts the names [`Names::unique`] gives in this process.
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Names `<prefix><pid>-...` for one user of the kit (the tests, the bench). The prefix tells
/// users apart, the pid runs apart: two runs never share a namespace, and a later run knows
/// which ones an earlier run left.
#[derive(Clone, Copy, Debug)]
pub struct Names {
    prefix: &'static str,
}

/// A namespace [`Names::remove_stale`] found and removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stale {
    pub name: String,
    /// The process that made it, gone now.
    pub pid: u32,
}

impl Names {
    /// `prefix` must end in a character that no other user's prefix continues with (`slb-`,
    /// `slbbench-`): a name is this user's when it starts with the prefix and then the pid.
    pub const fn new(prefix: &'static str) -> Names {
        Names { prefix }
    }

    /// `<prefix><pid>-<tag>`: unique while `tag` is unique in this process.
    pub fn name(&self, tag: &str) -> String {
        format!("{}{}-{tag}", self.prefix, std::process::id())
    }

    /// `<prefix><pid>-<n>-<tag>`, n counting the names given so far: unique even when tags
    /// repeat (tests running side by side).
    pub fn unique(&self, tag: &str) -> String {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        self.name(&format!("{n}-{tag}"))
    }

    /// Removes (as [`remove`] does) every namespace named by this prefix whose process no
    /// longer exists; best effort: a namespace that resists is left, and not listed.
    pub fn remove_stale(&self) -> Vec<Stale> {
        let Ok(entries) = fs::read_dir(NETNS_DIR) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                let pid = self.owner(&name)?;
                let gone = !Path::new("/proc").join(pid.to_string()).exists();
                (gone && remove(&name).is_ok()).then_some(Stale { name, pid })
            })
            .collect()
    }

    /// The pid in a name of this prefix.
    fn owner(&self, name: &str) -> Option<u32> {
        let (pid, _) = name.strip_prefix(self.prefix)?.split_once('-')?;
        pid.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::Names;

    #[test]
    fn names_carry_the_pid_and_only_their_prefix_owns_them() {
        let names = Names::new("slbbench-");
        let me = std::process::id();
        assert_eq!(names.name("lb"), format!("slbbench-{me}-lb"));
        assert_eq!(names.owner(&names.name("lb")), Some(me));
        assert_eq!(names.owner("slb-1-0-e2e"), None);
        assert_eq!(names.owner("slbbench-x-lb"), None);
        assert_eq!(names.owner("slbbench-12"), None);
        assert_eq!(Names::new("slb-").owner("slbbench-12-lb"), None);
        let tests = Names::new("slb-");
        assert_ne!(tests.unique("a"), tests.unique("a"));
        assert_eq!(tests.owner(&tests.unique("fpv-lb")), Some(me));
    }
}
