//! readdir of the core against a model of the listing, with the memory store cutting
//! listings into pages of 7 keys: every offset the kernel and seekdir/telldir/rewinddir
//! can produce (resuming inside or at the end of the last batch, going back to any cookie
//! handed out before, to 0, past the end, or to a cookie not reached yet), and entries
//! added and removed between pages. Random but seeded: a failure names its seed.

use std::collections::{BTreeSet, HashSet};
use std::ffi::OsStr;
use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use s3mount::fs::{DirEntry, Kind, ROOT, S3Fs};
use s3mount::store::ObjectStore;
use s3mount::store::StoreError;
use s3mount::store::memory::{MemoryStore, Op};

use crate::common::core_config;

const PAGE: u64 = 7;

struct Dir {
    store: Arc<MemoryStore>,
    fs: S3Fs<MemoryStore>,
    _cache: tempfile::TempDir,
}

/// A core over prefix `m/` whose store lists pages of [`PAGE`] keys.
fn dir() -> Dir {
    let store = Arc::new(MemoryStore::new());
    store.set_page_size(PAGE);
    let cache = tempfile::tempdir().unwrap();
    let fs = S3Fs::new(store.clone(), core_config("m/", cache.path())).unwrap();
    Dir {
        store,
        fs,
        _cache: cache,
    }
}

/// Files `f000`.. of sizes 1.., directories `d000/` (marker) and `e000/x` (implied),
/// and a name that is both a file and a directory (the directory wins).
fn fill(store: &MemoryStore, files: usize, dirs: usize) -> Vec<(String, Kind, u64)> {
    let mut expected = Vec::new();
    for i in 0..files {
        let name = format!("f{i:03}");
        store.insert(&format!("m/{name}"), &vec![b'x'; i + 1]);
        expected.push((name, Kind::File, i as u64 + 1));
    }
    for i in 0..dirs {
        store.insert(&format!("m/d{i:03}/"), b"");
        store.insert(&format!("m/e{i:03}/x"), b"x");
        expected.push((format!("d{i:03}"), Kind::Dir, 0));
        expected.push((format!("e{i:03}"), Kind::Dir, 0));
    }
    store.insert("m/both", b"file");
    store.insert("m/both/inner", b"x");
    expected.push(("both".into(), Kind::Dir, 0));
    expected
}

/// Reads a whole pass from cookie 0, taking whole batches.
async fn whole_pass(fs: &S3Fs<MemoryStore>, fh: u64) -> Vec<DirEntry> {
    let (mut all, mut offset) = (Vec::new(), 0);
    loop {
        let batch = fs.readdir(fh, offset).await.unwrap();
        let Some(last) = batch.last() else {
            return all;
        };
        offset = last.offset;
        all.extend(batch);
    }
}

/// Reads from cookie `from` to the end of the pass, adding the names to `got`; a read
/// that fails must fail with EIO and is asked again from the same cookie. Returns how
/// many reads failed.
async fn read_through_failures(
    fs: &S3Fs<MemoryStore>,
    fh: u64,
    mut from: u64,
    got: &mut Vec<String>,
) -> u32 {
    let mut failures = 0;
    loop {
        match fs.readdir(fh, from).await {
            Ok(batch) => {
                let Some(last) = batch.last() else {
                    return failures;
                };
                from = last.offset;
                got.extend(batch.into_iter().map(|e| e.name));
            }
            Err(e) => {
                assert_eq!(e.errno(), libc::EIO, "{e}");
                failures += 1;
                assert!(failures < 5, "the listing keeps failing");
            }
        }
    }
}

fn names(entries: &[DirEntry]) -> Vec<&str> {
    entries.iter().map(|e| e.name.as_str()).collect()
}

#[tokio::test]
async fn every_offset_pattern_matches_the_listing() {
    let d = dir();
    let expected = fill(&d.store, 300, 40);
    let fh = d.fs.opendir(ROOT).await.unwrap();
    let reference = whole_pass(&d.fs, fh).await;

    // The reference pass: `.`, `..`, then every child once, with what the listing says.
    assert_eq!(names(&reference[..2]), [".", ".."]);
    let listed: BTreeSet<&str> = reference[2..].iter().map(|e| e.name.as_str()).collect();
    assert_eq!(listed.len(), reference.len() - 2, "a name listed twice");
    let want: BTreeSet<&str> = expected.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(listed, want);
    for (name, kind, size) in &expected {
        let e = reference.iter().find(|e| &e.name == name).unwrap();
        assert_eq!((e.attr.kind, e.attr.size), (*kind, *size), "{name}");
    }
    // Cookies run 1, 2, … in a directory that does not change.
    for (i, e) in reference.iter().enumerate() {
        assert_eq!(e.offset, i as u64 + 1, "cookie of {}", e.name);
    }
    let total = reference.len() as u64;

    for seed in 0..8u64 {
        let mut rng = SmallRng::seed_from_u64(seed);
        // The reader's position (what the kernel passes as offset), the cookies it was
        // handed (telldir values), and the last batch it got.
        let mut pos = 0u64;
        let mut seen: Vec<u64> = vec![0];
        for step in 0..400 {
            let batch = d.fs.readdir(fh, pos).await.unwrap();
            let from = pos as usize;
            let want = &reference[from.min(reference.len())..];
            assert!(
                batch.len() <= want.len() && (batch.is_empty() == want.is_empty()),
                "seed {seed} step {step}: {} entries from {pos}, {} left",
                batch.len(),
                want.len()
            );
            for (got, want) in batch.iter().zip(want) {
                assert_eq!(
                    (got.name.as_str(), got.offset, got.attr.kind, got.attr.size),
                    (
                        want.name.as_str(),
                        want.offset,
                        want.attr.kind,
                        want.attr.size
                    ),
                    "seed {seed} step {step}: reading from {pos}"
                );
            }
            seen.extend(batch.iter().map(|e| e.offset));
            let last_batch: Vec<u64> = batch.iter().map(|e| e.offset).collect();
            // The kernel takes as many entries as fit in its buffer: 1 up to all.
            let taken = if batch.is_empty() {
                pos
            } else {
                batch[rng.random_range(0..batch.len())].offset
            };
            pos = match rng.random_range(0..10) {
                // Go on where the kernel stopped (most of the time).
                0..=3 => taken,
                // Resume inside or at the end of the last batch.
                4 if !last_batch.is_empty() => last_batch[rng.random_range(0..last_batch.len())],
                5 if !last_batch.is_empty() => *last_batch.last().unwrap(),
                // seekdir to any telldir value handed out before.
                6 => seen[rng.random_range(0..seen.len())],
                // rewinddir.
                7 => 0,
                // Past the end.
                8 => total + rng.random_range(0..5),
                // A cookie not reached yet (or reached), as another handle's telldir.
                _ => rng.random_range(0..=total),
            };
        }
    }
    d.fs.releasedir(fh);
}

#[tokio::test]
async fn a_pass_lists_each_page_once() {
    let d = dir();
    fill(&d.store, 500, 0);
    let fh = d.fs.opendir(ROOT).await.unwrap();
    let mut rng = SmallRng::seed_from_u64(7);
    let (mut offset, mut count) = (0, 0);
    loop {
        let batch = d.fs.readdir(fh, offset).await.unwrap();
        if batch.is_empty() {
            break;
        }
        // The kernel takes part of each batch and asks again from inside it.
        let take = rng.random_range(1..=batch.len());
        offset = batch[take - 1].offset;
        count += take;
    }
    assert_eq!(count, 503, ". and .., 500 files and `both`");
    // 501 keys and the prefix `both/`.
    let pages = 502u64.div_ceil(PAGE);
    assert_eq!(
        d.store.count(Op::List),
        pages,
        "one LIST per page, never from the start again"
    );
    d.fs.releasedir(fh);
}

#[tokio::test]
async fn entries_added_and_removed_between_pages() {
    for seed in 0..6u64 {
        let d = dir();
        let mut rng = SmallRng::seed_from_u64(seed);
        // Stable names are never touched; volatile ones come and go.
        let stable: BTreeSet<String> = (0..150).map(|i| format!("s{:03}", i * 2)).collect();
        for name in &stable {
            d.store.insert(&format!("m/{name}"), b"s");
        }
        let mut present: BTreeSet<String> = BTreeSet::new();
        let mut ever: HashSet<String> = HashSet::new();
        for i in 0..60 {
            let name = format!("s{:03}", i * 5 + 1);
            d.store.insert(&format!("m/{name}"), b"v");
            present.insert(name.clone());
            ever.insert(name);
        }
        let fh = d.fs.opendir(ROOT).await.unwrap();
        for pass in 0..4 {
            let mut got: Vec<String> = Vec::new();
            let mut offset = 0;
            loop {
                // Between pages another client adds and removes volatile names.
                for _ in 0..rng.random_range(0..4) {
                    let name = format!("s{:03}", rng.random_range(0..300) * 2 + 1);
                    let key = format!("m/{name}");
                    if present.remove(&name) {
                        d.store.delete(&key).await.unwrap();
                    } else {
                        d.store.insert(&key, b"v");
                        present.insert(name.clone());
                        ever.insert(name);
                    }
                }
                let batch = match d.fs.readdir(fh, offset).await {
                    Ok(batch) => batch,
                    Err(e) => panic!("seed {seed} pass {pass}: readdir from {offset}: {e}"),
                };
                if batch.is_empty() {
                    break;
                }
                let take = rng.random_range(1..=batch.len());
                offset = batch[take - 1].offset;
                got.extend(batch.into_iter().take(take).map(|e| e.name));
            }
            let mut unique = HashSet::new();
            for name in &got {
                assert!(unique.insert(name), "seed {seed} pass {pass}: {name} twice");
                assert!(
                    [".", ".."].contains(&name.as_str())
                        || stable.contains(name)
                        || ever.contains(name),
                    "seed {seed} pass {pass}: {name} never existed"
                );
            }
            for name in &stable {
                assert!(
                    unique.contains(name),
                    "seed {seed} pass {pass}: {name} missing"
                );
            }
        }
        // Once nothing changes, a pass from 0 (rewinddir) is exactly what S3 has.
        let all = whole_pass(&d.fs, fh).await;
        let listed: BTreeSet<String> = all[2..].iter().map(|e| e.name.clone()).collect();
        let want: BTreeSet<String> = stable.union(&present).cloned().collect();
        assert_eq!(listed, want, "seed {seed}");
        assert_eq!(listed.len(), all.len() - 2, "seed {seed}: a name twice");
        d.fs.releasedir(fh);
    }
}

#[tokio::test]
async fn a_failed_batch_is_listed_again_from_the_same_cookie() {
    let d = dir();
    fill(&d.store, 600, 0);
    let fh = d.fs.opendir(ROOT).await.unwrap();
    let first = d.fs.readdir(fh, 0).await.unwrap();
    let offset = first[first.len() / 2].offset;
    // The HEADs that complete the next batch fail: the read fails, nothing is skipped.
    d.store
        .fail_next(Op::Head, 3, StoreError::Transient("injected".into()));
    let err = match d.fs.readdir(fh, first.last().unwrap().offset).await {
        Err(e) => e,
        Ok(batch) => panic!("{} entries although their HEADs failed", batch.len()),
    };
    assert_eq!(err.errno(), libc::EIO, "{err}");
    let mut got: Vec<String> = first
        .iter()
        .take_while(|e| e.offset <= offset)
        .map(|e| e.name.clone())
        .collect();
    let mut from = offset;
    loop {
        let batch = d.fs.readdir(fh, from).await.unwrap();
        let Some(last) = batch.last() else { break };
        from = last.offset;
        got.extend(batch.into_iter().map(|e| e.name));
    }
    assert_eq!(got.len(), 603, "every entry once after the failure");
    let unique: HashSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), 603);
    d.fs.releasedir(fh);
}

#[tokio::test]
async fn lookup_in_a_large_directory_asks_about_the_name_alone() {
    let d = dir();
    fill(&d.store, 200, 0);
    // Once a listing showed the directory is large, a lookup miss is a HEAD of the key
    // and a one-key LIST of `name/`, not a listing.
    let fh = d.fs.opendir(ROOT).await.unwrap();
    whole_pass(&d.fs, fh).await;
    d.fs.releasedir(fh);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await; // past the TTL
    let count = |s: &MemoryStore| s.count(Op::List) + s.count(Op::Head) + s.count(Op::Get);
    let before = count(&d.store);
    let attr = d.fs.lookup(ROOT, OsStr::new("f123")).await.unwrap();
    assert_eq!(attr.size, 124);
    let requests = count(&d.store) - before;
    assert!(requests <= 2, "{requests} requests for one name");
}

#[tokio::test]
async fn a_failed_listing_page_fails_one_read_and_the_next_goes_on_from_its_cookie() {
    let d = dir();
    fill(&d.store, 600, 0);
    let fh = d.fs.opendir(ROOT).await.unwrap();
    let first = d.fs.readdir(fh, 0).await.unwrap();
    // A page the cursor's lister asks for later fails (whichever it is: it lists ahead).
    d.store
        .fail_next(Op::List, 1, StoreError::Transient("injected".into()));
    let mut got: Vec<String> = first.iter().map(|e| e.name.clone()).collect();
    let failures = read_through_failures(&d.fs, fh, first.last().unwrap().offset, &mut got).await;
    assert_eq!(failures, 1, "one read failed");
    assert_eq!(got.len(), 603, "every entry once after the failure");
    let unique: HashSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), 603);
    d.fs.releasedir(fh);
}

/// A whole pass over a directory of thousands of names records where its listing can
/// be cut; the next pass, and the first of the next mount of the same cache dir, list
/// those spans in parallel. Whatever changed in between (names added inside a span,
/// names deleted around a cut, a directory whose keys straddle a cut), every pass shows
/// each name once, exactly what the store holds.
#[tokio::test]
async fn a_large_directory_listed_before_is_listed_in_parallel_spans() {
    let store = Arc::new(MemoryStore::new());
    let cache = tempfile::tempdir().unwrap();
    let mut want: BTreeSet<String> = BTreeSet::new();
    let mut put = |name: String, key: String| {
        store.insert(&format!("m/{key}"), b"x");
        want.insert(name);
    };
    for i in 0..899 {
        put(format!("f{i:04}"), format!("f{i:04}"));
    }
    // The 900th entry is a directory: its cut lies past its keys, but one key sorts
    // after the cut (the highest character), so the next span lists it again.
    put("g".into(), "g/a".into());
    put("g".into(), "g/\u{10FFFF}z".into());
    for i in 0..2500 {
        put(format!("h{i:04}"), format!("h{i:04}"));
    }
    for i in 0..30 {
        put(format!("k{i:02}"), format!("k{i:02}/x"));
    }
    async fn listed(fs: &S3Fs<MemoryStore>) -> BTreeSet<String> {
        let fh = fs.opendir(ROOT).await.unwrap();
        let all = whole_pass(fs, fh).await;
        fs.releasedir(fh);
        let names: BTreeSet<String> = all[2..].iter().map(|e| e.name.clone()).collect();
        assert_eq!(names.len(), all.len() - 2, "a name twice");
        names
    }

    let fs = S3Fs::new(store.clone(), core_config("m/", cache.path())).unwrap();
    assert_eq!(listed(&fs).await, want, "first pass");
    let pages = (899 + 1 + 2500 + 30u64).div_ceil(1000);
    assert_eq!(store.count(Op::List), pages);

    // Unchanged: one request per span (3,430 entries: 3 cuts), several at once.
    store.delay(Op::List, std::time::Duration::from_millis(50));
    let before = store.count(Op::List);
    assert_eq!(listed(&fs).await, want, "second pass");
    assert_eq!(store.count(Op::List) - before, 4);
    assert!(store.peak_in_flight(Op::List) > 1, "spans listed at once");

    // 400 names inside the first span (it now needs two pages), 60 deleted around the
    // second cut, and the directory `g` gone.
    for i in 0..400 {
        let name = format!("f0100x{i:03}");
        store.insert(&format!("m/{name}"), b"x");
        want.insert(name);
    }
    for i in 760..820 {
        let name = format!("h{i:04}");
        store.delete(&format!("m/{name}")).await.unwrap();
        want.remove(&name);
    }
    store.delete("m/g/a").await.unwrap();
    store.delete("m/g/\u{10FFFF}z").await.unwrap();
    want.remove("g");
    assert_eq!(listed(&fs).await, want, "after changes");
    fs.shutdown().await;
    drop(fs);

    // The next mount of the cache dir knows the cuts of the last pass.
    let fs = S3Fs::new(store.clone(), core_config("m/", cache.path())).unwrap();
    let before = store.count(Op::List);
    assert_eq!(listed(&fs).await, want, "after a remount");
    let spans = (want.len() as u64).div_ceil(900);
    assert_eq!(
        store.count(Op::List) - before,
        spans,
        "one request per span"
    );
    fs.shutdown().await;
}

/// A mount of `m/` holding `f0000` to `f2999`, listed whole once (so its next pass lists
/// in spans cut after f0899, f1799 and f2699), with its cache dir.
async fn three_thousand_listed_once() -> (Arc<MemoryStore>, S3Fs<MemoryStore>, tempfile::TempDir) {
    let store = Arc::new(MemoryStore::new());
    let cache = tempfile::tempdir().unwrap();
    for i in 0..3000 {
        store.insert(&format!("m/f{i:04}"), b"x");
    }
    let fs = S3Fs::new(store.clone(), core_config("m/", cache.path())).unwrap();
    let fh = fs.opendir(ROOT).await.unwrap();
    assert_eq!(whole_pass(&fs, fh).await.len(), 3002);
    fs.releasedir(fh);
    (store, fs, cache)
}

/// A span of a parallel listing that fails fails one read (EIO); the next read from the
/// same cookie lists again and the pass ends with every name once.
#[tokio::test]
async fn a_failed_span_fails_one_read_and_the_next_goes_on_from_its_cookie() {
    let (store, fs, _cache) = three_thousand_listed_once().await;

    // The second pass lists 4 spans at once; the third request fails.
    store.fail_after(Op::List, 2, 1, StoreError::Transient("injected".into()));
    let fh = fs.opendir(ROOT).await.unwrap();
    let mut got = Vec::new();
    let failures = read_through_failures(&fs, fh, 0, &mut got).await;
    assert_eq!(failures, 1, "one read failed");
    let unique: HashSet<&String> = got.iter().collect();
    assert_eq!((got.len(), unique.len()), (3002, 3002), "every entry once");
    fs.releasedir(fh);
}

/// A span whose every name was deleted since the cuts were recorded ends at once; the
/// pass goes on with the next span.
#[tokio::test]
async fn a_span_emptied_since_the_last_listing_is_skipped() {
    let (store, fs, _cache) = three_thousand_listed_once().await;
    // Cuts after f0899, f1799 and f2699: the second span is emptied.
    for i in 900..1800 {
        store.delete(&format!("m/f{i:04}")).await.unwrap();
    }
    let fh = fs.opendir(ROOT).await.unwrap();
    let names: Vec<String> = whole_pass(&fs, fh).await[2..]
        .iter()
        .map(|e| e.name.clone())
        .collect();
    fs.releasedir(fh);
    let want: Vec<String> = (0..900)
        .chain(1800..3000)
        .map(|i| format!("f{i:04}"))
        .collect();
    assert_eq!(names, want);
}
