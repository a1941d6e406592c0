//! Crash safety with --write-back: the daemon is killed with SIGKILL right after a batch
//! of closes returned, or at a random moment while they upload; the next mount of the
//! same cache dir must put every one of those files in S3, byte for byte.

use std::path::Path;
use std::time::Duration;

use crate::common::*;
use rand::{Rng, SeedableRng};

/// The pid of the daemon serving `cache`.
fn daemon_pid(cache: &Path) -> Option<i32> {
    let needle = cache.to_str().unwrap();
    std::fs::read_dir("/proc").ok()?.find_map(|e| {
        let e = e.ok()?;
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        (cmdline.contains(s3mount_bin()) && cmdline.contains(needle)).then_some(pid)
    })
}

#[test]
fn no_committed_file_is_lost_when_the_daemon_is_killed() {
    let bucket = Bucket::new();
    let prefix = unique_prefix("crash");
    let cache_root = tempfile::tempdir().unwrap();
    let cache = cache_root.path().join("cache");
    let mut committed: Vec<(String, Vec<u8>)> = Vec::new();
    // CRASH_CYCLES raises the count for a soak run (scripts/crash-soak.sh).
    let cycles = env_or("CRASH_CYCLES", 6) as usize;
    let seed = env_or("CRASH_SEED", 0x5eed);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for cycle in 0..cycles {
        let m = TestMount::with_cache(
            &prefix,
            &cache,
            &["--write-back", "--part-size", "5MiB"],
            None,
        );
        // Everything committed in earlier lives is there after recovery.
        for (name, data) in &committed {
            assert_eq!(
                bucket.get(&format!("{prefix}{name}")).as_deref(),
                Some(&data[..]),
                "{name} lost (cycle {cycle})"
            );
        }
        let files = rng.random_range(5..15);
        for i in 0..files {
            let size = match rng.random_range(0..10) {
                0 => rng.random_range(6 * MIB..13 * MIB),
                1 => 0,
                _ => rng.random_range(1..200_000),
            };
            let name = format!("c{cycle}/doc-{i}.bin");
            let data = random_bytes(size, (cycle * 1000 + i) as u64);
            std::fs::create_dir_all(m.path(&format!("c{cycle}"))).unwrap();
            std::fs::write(m.path(&name), &data).unwrap(); // close returned: committed
            committed.push((name, data));
        }
        // Kill at once or a little later, while uploads are under way.
        std::thread::sleep(Duration::from_millis(rng.random_range(0..300)));
        let pid = daemon_pid(&cache).expect("the daemon runs");
        // SAFETY: kill has no memory-safety preconditions.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
        wait_daemon_gone(&cache);
        let out = run("fusermount3", &["-uz", m.mountpoint().to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let m = TestMount::with_cache(&prefix, &cache, &["--write-back"], None);
    let mut lost = 0;
    for (name, data) in &committed {
        if bucket.get(&format!("{prefix}{name}")).as_deref() != Some(&data[..]) {
            lost += 1;
        }
    }
    eprintln!(
        "crash test: {cycles} kill -9 cycles, {} documents committed, {lost} lost",
        committed.len()
    );
    assert_eq!(lost, 0, "{lost} of {} documents lost", committed.len());
    // And through a mount.
    for (name, data) in committed.iter().step_by(7) {
        assert_eq!(&std::fs::read(m.path(name)).unwrap(), data, "{name}");
    }
    drop(m);
    assert!(
        !bucket.keys(&prefix).iter().any(|k| k.ends_with(".tmp")),
        "nothing half-written is visible"
    );
}
