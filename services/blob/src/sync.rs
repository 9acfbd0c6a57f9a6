//! Durability of a file store: one `syncfs` of the root's file system,
//! shared by every caller waiting at the time (group commit).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The sync of a file store's root: one `syncfs` of its file system makes
/// every file written, renamed and created under the root before it started
/// durable (data, inodes, directory entries), where a file's own `fsync`
/// covers neither the entry naming it nor any other file. On this machine a
/// `syncfs` shared by 8 files cost about a third of the CPU of a file and
/// directory `fsync` each (see docs/BENCHMARKS.md, "File blob store").
///
/// The root stays open for the life of the process and is opened before
/// the first write a sync covers: a `syncfs` reports the write-back errors
/// of the whole file system since the descriptor's previous report, so an
/// error is never lost to a descriptor opened after it.
pub(crate) struct RootSync {
    dir: std::fs::File,
    group: GroupSync,
}

static ROOT_SYNCS: std::sync::LazyLock<std::sync::Mutex<HashMap<PathBuf, Arc<RootSync>>>> =
    std::sync::LazyLock::new(Default::default);

impl RootSync {
    /// The sync of the store rooted at `root` (created, with the root, at
    /// the first call for it).
    pub(crate) fn of(root: &Path) -> std::io::Result<Arc<RootSync>> {
        let mut syncs = ROOT_SYNCS.lock().expect("root syncs lock");
        if let Some(s) = syncs.get(root) {
            return Ok(s.clone());
        }
        std::fs::create_dir_all(root)?;
        let s = Arc::new(RootSync {
            dir: std::fs::File::open(root)?,
            group: GroupSync::default(),
        });
        syncs.insert(root.to_owned(), s.clone());
        Ok(s)
    }

    /// Returns once a sync that started after this call has finished.
    pub(crate) fn sync(&self) -> std::io::Result<()> {
        self.group.sync(|| syncfs(&self.dir))
    }

    /// Syncs asked for and syncs finished so far.
    #[cfg(test)]
    pub(crate) fn counts(&self) -> (u64, u64) {
        let st = self.group.state.lock().expect("group sync lock");
        (st.requested, st.synced)
    }

    /// Makes the next sync fail with `reason`, as a disk would.
    #[cfg(test)]
    pub(crate) fn fail(&self, reason: &str) {
        let _ = self
            .group
            .sync(|| Err(std::io::Error::other(reason.to_owned())));
    }

    /// Forgets the sync of `root` (a test's store is removed).
    #[cfg(test)]
    pub(crate) fn forget(root: &Path) {
        ROOT_SYNCS.lock().expect("root syncs lock").remove(root);
    }
}

/// Why a sync of a file store failed in this process, if one has: the
/// process can no longer vouch for what it wrote, and `/healthz` says so
/// until it is restarted.
pub fn failed_sync() -> Option<String> {
    let syncs = ROOT_SYNCS.lock().expect("root syncs lock");
    syncs.iter().find_map(|(root, s)| {
        s.group
            .failure()
            .map(|reason| format!("syncing the blob store at {}: {reason}", root.display()))
    })
}

/// Flushes the whole file system holding `dir` to disk and waits for it.
fn syncfs(dir: &std::fs::File) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: `syncfs` only reads the descriptor, which `dir` keeps open.
        if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        // Elsewhere: the directory only (file bytes are then not covered).
        dir.sync_all()
    }
}

/// Group commit: a sync covers every change made before it started, so a
/// caller whose change came while a sync was under way waits for the next
/// one, which one caller runs for all that wait. After a failed sync every
/// caller fails, from then on: a sync that reported an error may have lost
/// any change made before it, and a later sync would not report it again.
#[derive(Default)]
struct GroupSync {
    state: std::sync::Mutex<GroupState>,
    done: std::sync::Condvar,
}

#[derive(Default)]
struct GroupState {
    /// Callers so far; a caller's ticket is the count including itself.
    requested: u64,
    /// Every ticket up to this one is covered by a finished sync.
    synced: u64,
    running: bool,
    /// Why a sync failed, once one has.
    failed: Option<String>,
}

impl GroupSync {
    /// Why a sync failed, once one has.
    fn failure(&self) -> Option<String> {
        self.state.lock().expect("group sync lock").failed.clone()
    }

    /// Returns once a sync that started after this call finished
    /// (`sync_once` runs it), or with the error of a failed sync.
    fn sync(&self, mut sync_once: impl FnMut() -> std::io::Result<()>) -> std::io::Result<()> {
        let mut state = self.state.lock().expect("group sync lock");
        state.requested += 1;
        let ticket = state.requested;
        loop {
            if let Some(reason) = &state.failed {
                return Err(std::io::Error::other(format!(
                    "a sync of the blob store failed ({reason}): what was written since the \
                     process started may not be on disk; restart it once the disk is sound"
                )));
            }
            if state.synced >= ticket {
                return Ok(());
            }
            if state.running {
                state = self.done.wait(state).expect("group sync lock");
                continue;
            }
            state.running = true;
            let covers = state.requested;
            drop(state);
            let result = sync_once();
            state = self.state.lock().expect("group sync lock");
            state.running = false;
            match result {
                Ok(()) => state.synced = state.synced.max(covers),
                Err(e) => state.failed = Some(e.to_string()),
            }
            self.done.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sync_covers_every_change_made_before_it_started() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let syncs = Arc::new(GroupSync::default());
        let changes = Arc::new(AtomicU64::new(0));
        let covered = Arc::new(AtomicU64::new(0));
        let count = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (syncs, changes, covered, count) = (
                    syncs.clone(),
                    changes.clone(),
                    covered.clone(),
                    count.clone(),
                );
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        let mine = changes.fetch_add(1, Ordering::SeqCst) + 1;
                        syncs
                            .sync(|| {
                                count.fetch_add(1, Ordering::SeqCst);
                                covered.fetch_max(changes.load(Ordering::SeqCst), Ordering::SeqCst);
                                std::thread::yield_now();
                                Ok(())
                            })
                            .unwrap();
                        assert!(covered.load(Ordering::SeqCst) >= mine);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(count.load(Ordering::SeqCst) <= 400);
        let state = syncs.state.lock().unwrap();
        assert_eq!((state.requested, state.synced), (400, 400));
    }

    #[test]
    fn callers_waiting_on_a_running_sync_share_the_next_one() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let syncs = Arc::new(GroupSync::default());
        let count = Arc::new(AtomicU64::new(0));
        let (release, released) = std::sync::mpsc::channel::<()>();
        let released = Arc::new(std::sync::Mutex::new(released));
        let caller = |syncs: Arc<GroupSync>| {
            let (count, released) = (count.clone(), released.clone());
            std::thread::spawn(move || {
                syncs.sync(|| {
                    // The first sync waits to be released; later ones do not.
                    if count.fetch_add(1, Ordering::SeqCst) == 0 {
                        released.lock().unwrap().recv().unwrap();
                    }
                    Ok(())
                })
            })
        };
        let requested = |syncs: &GroupSync| syncs.state.lock().unwrap().requested;
        let wait_for = |n: u64| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while requested(&syncs) < n {
                assert!(
                    std::time::Instant::now() < deadline,
                    "callers did not arrive"
                );
                std::thread::yield_now();
            }
        };
        let first = caller(syncs.clone());
        wait_for(1);
        let later: Vec<_> = (0..3).map(|_| caller(syncs.clone())).collect();
        wait_for(4);
        release.send(()).unwrap();
        first.join().unwrap().unwrap();
        for t in later {
            t.join().unwrap().unwrap();
        }
        // The first caller's sync, then one for the three that waited.
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn after_a_failed_sync_every_caller_fails_without_syncing() {
        let syncs = GroupSync::default();
        let err = syncs
            .sync(|| Err(std::io::Error::other("disk gone")))
            .unwrap_err();
        assert!(err.to_string().contains("disk gone"), "{err}");
        // A later sync would report nothing: the error was reported once.
        let mut ran = false;
        let err = syncs
            .sync(|| {
                ran = true;
                Ok(())
            })
            .unwrap_err();
        assert!(!ran);
        assert!(err.to_string().contains("disk gone"), "{err}");
        assert!(err.to_string().contains("restart"), "{err}");
    }

    #[test]
    fn a_failed_sync_of_a_store_is_reported_for_the_health_check() {
        let root = std::env::temp_dir().join(format!("blobs-{}", uuid::Uuid::new_v4().simple()));
        let sync = RootSync::of(&root).unwrap();
        assert!(
            failed_sync().is_none_or(|r| !r.contains(&root.display().to_string())),
            "a fresh store has not failed"
        );
        let _ = sync.group.sync(|| Err(std::io::Error::other("disk gone")));
        let reason = failed_sync().expect("the failure is reported");
        assert!(reason.contains("disk gone"), "{reason}");
        assert!(reason.contains(&root.display().to_string()), "{reason}");
        ROOT_SYNCS.lock().unwrap().remove(&root);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
