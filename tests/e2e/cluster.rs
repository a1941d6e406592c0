//! A bucket on a 3-node Garage cluster (replication factor 3, quorum 2), started by
//! `scripts/local-s3-cluster.sh` for this test alone: a tree of documents copied while a
//! node is killed loses nothing; with two nodes down every close of default mode fails
//! with EIO in bounded time and keeps its data, every close of `--write-back` succeeds and
//! queues; once the nodes return the kept data reaches S3; the restarted node serves every
//! document, also with the node all writes went through gone.
//!
//! The figures (close times, when the kept data reached S3) are printed; run with
//! `--nocapture` to see them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/local-s3-cluster.sh");

/// A running 3-node cluster in a temporary folder; stopped on drop.
struct Cluster {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let base = free_port_base();
        let out = Command::new(SCRIPT)
            .args(["start", dir.path().to_str().unwrap(), &base.to_string()])
            .output()
            .unwrap();
        if !out.status.success() {
            // Stop the nodes that did start.
            let _ = Command::new(SCRIPT)
                .args(["stop", dir.path().to_str().unwrap()])
                .output();
        }
        assert!(
            out.status.success(),
            "the cluster did not start (garage is built by scripts/local-s3.sh install): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let env = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Cluster { dir, env }
    }

    fn var(&self, name: &str) -> String {
        let found = self.env.iter().find(|(k, _)| k == name);
        found
            .unwrap_or_else(|| panic!("{name} not in the cluster's env"))
            .1
            .clone()
    }

    /// The S3 settings of node `n`'s API.
    fn node(&self, n: u8) -> S3Env {
        S3Env {
            endpoint: self.var(&format!("S3MOUNT_CLUSTER_ENDPOINT_{n}")),
            bucket: self.var("S3MOUNT_TEST_BUCKET"),
            access_key: self.var("AWS_ACCESS_KEY_ID"),
            secret_key: self.var("AWS_SECRET_ACCESS_KEY"),
            region: self.var("AWS_REGION"),
        }
    }

    /// SIGKILL to node `n`, as a crash would; returns once it is gone. Sent from here, not
    /// by the script: starting a process copies the test's open files, and their close at
    /// exec would flush (upload) the documents the test holds open.
    fn kill_node(&self, n: u8) {
        let pid_file = self.dir.path().join(format!("node{n}/garage.pid"));
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // SAFETY: plain kill(2) of the node's pid.
        assert_eq!(
            unsafe { libc::kill(pid, libc::SIGKILL) },
            0,
            "kill node {n}"
        );
        let gone = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
                stat.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .starts_with('Z')
            })
        };
        assert!(
            eventually(Duration::from_secs(10), gone),
            "node {n} still runs"
        );
        std::fs::remove_file(pid_file).unwrap();
    }

    /// `local-s3-cluster.sh SUB DIR N`, e.g. start-node.
    fn node_command(&self, sub: &str, n: u8) {
        let out = Command::new(SCRIPT)
            .args([sub, self.dir.path().to_str().unwrap(), &n.to_string()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{sub} {n}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn mount(&self, n: u8, prefix: &str, cache: &Path, extra: &[&str]) -> TestMount {
        let env = self.node(n);
        TestMount::of_server(&env, &env.bucket, prefix, cache, extra, None)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(SCRIPT)
            .args(["stop", self.dir.path().to_str().unwrap()])
            .output();
    }
}

/// A port base whose S3, RPC and admin ports of all three nodes are free (the test
/// server of scripts/test.sh sits at 3910 and up).
fn free_port_base() -> u16 {
    let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
    (0..40)
        .map(|i| 4600 + 40 * i)
        .find(|&base| (0..3).all(|n| [0, 1, 3].iter().all(|off| free(base + 10 * n + off))))
        .expect("no free port base for the cluster")
}

/// A document of the tree: its path under the mount and its bytes.
struct Doc {
    path: String,
    data: Vec<u8>,
}

/// 200 documents in folders, 0 bytes to 400 KB, and three of 12 MiB (multipart with
/// 5 MiB parts). Fresh random bytes each (Garage deduplicates identical blocks).
fn document_tree(seed: u64) -> Vec<Doc> {
    const SIZES: [usize; 8] = [1_000, 17_000, 65_536, 65_537, 150_000, 400_000, 3_000, 0];
    (0..200)
        .map(|i| {
            let size = match i {
                60 | 103 | 150 => 12 * MIB,
                _ => SIZES[i % SIZES.len()],
            };
            let kind = ["scans", "mail", "contracts"][i % 3];
            Doc {
                path: format!("case-{:02}/{kind}/doc-{i:03}.pdf", i % 10),
                data: random_bytes(size, seed + i as u64),
            }
        })
        .collect()
}

/// Writes `doc` under `root` in 1 MiB writes; calls `halfway` once past 6 MiB.
fn save(root: &Path, doc: &Doc, halfway: &dyn Fn()) -> std::io::Result<()> {
    let path = root.join(&doc.path);
    std::fs::create_dir_all(path.parent().unwrap())?;
    let mut f = std::fs::File::create(&path)?;
    for (n, chunk) in doc.data.chunks(MIB).enumerate() {
        f.write_all(chunk)?;
        if n == 6 {
            halfway();
        }
    }
    close_file(f)
}

/// Every document of `docs` is in S3 under `prefix` with exactly its bytes.
fn assert_all_in_s3(bucket: &Bucket, prefix: &str, docs: &[Doc]) {
    for doc in docs {
        let got = bucket.get(&format!("{prefix}{}", doc.path));
        assert!(
            got.as_deref() == Some(&doc.data[..]),
            "{}: S3 has {:?} bytes, not the {} written",
            doc.path,
            got.map(|g| g.len()),
            doc.data.len()
        );
    }
}

/// Every document reads back through the mount `root` byte for byte.
fn assert_all_read(root: &Path, docs: &[Doc], through: &str) {
    for doc in docs {
        let got = std::fs::read(root.join(&doc.path))
            .unwrap_or_else(|e| panic!("{} through {through}: {e}", doc.path));
        assert!(
            got == doc.data,
            "{} through {through}: other bytes",
            doc.path
        );
    }
}

/// Files opened (and half written) before the quorum is lost, closed after.
struct Open {
    doc: Doc,
    file: std::fs::File,
}

fn open_half_written(root: &Path, docs: Vec<Doc>) -> Vec<Open> {
    docs.into_iter()
        .map(|doc| {
            let path = root.join(&doc.path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            let mut file = std::fs::File::create(&path).unwrap();
            file.write_all(&doc.data[..doc.data.len() / 2]).unwrap();
            Open { doc, file }
        })
        .collect()
}

/// Writes the second halves, then closes each; what each close returned and how long it
/// took.
fn finish_and_close(open: Vec<Open>) -> Vec<(Doc, std::io::Result<()>, Duration)> {
    open.into_iter()
        .map(|mut o| {
            let rest = &o.doc.data[o.doc.data.len() / 2..];
            let started = Instant::now();
            let result = o.file.write_all(rest).and_then(|()| close_file(o.file));
            (o.doc, result, started.elapsed())
        })
        .collect()
}

fn outage_docs(tag: &str, seed: u64) -> Vec<Doc> {
    [100_000, 3_000, 12 * MIB, 250_000]
        .iter()
        .enumerate()
        .map(|(i, &size)| Doc {
            path: format!("outage/{tag}-{i}.pdf"),
            data: random_bytes(size, seed + i as u64),
        })
        .collect()
}

#[test]
fn a_bucket_on_three_nodes_keeps_every_document_while_nodes_fail() {
    let started = Instant::now();
    let cluster = Cluster::start();
    let bucket = Bucket::with_env(cluster.node(1));
    let base = unique_prefix("cluster");
    let prefix = format!("{base}default/");
    let wb_prefix = format!("{base}write-back/");
    let caches = tempfile::tempdir().unwrap();
    let cache = |name: &str| -> PathBuf { caches.path().join(name) };
    let opts = ["--part-size", "5MiB", "--metadata-ttl", "1"];
    let a = cluster.mount(1, &prefix, &cache("a"), &opts);
    let wb_opts = [&opts[..], &["--write-back"]].concat();
    let b = cluster.mount(1, &wb_prefix, &cache("b"), &wb_opts);
    eprintln!(
        "cluster up and mounted in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // 1. Copy a tree of 200 documents with 4 writers; node 2 is killed while the
    //    12 MiB document #103 is being written (its first parts are uploading).
    let tree = Arc::new(document_tree(1000));
    let next = Arc::new(AtomicUsize::new(0));
    let kill_now = Arc::new(AtomicBool::new(false));
    let results = Arc::new(Mutex::new(Vec::new()));
    let copy_all = Instant::now();
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let (tree, next, kill_now, results) = (
                tree.clone(),
                next.clone(),
                kill_now.clone(),
                results.clone(),
            );
            let root = a.mountpoint().to_path_buf();
            std::thread::spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(doc) = tree.get(i) else { break };
                    let halfway = || {
                        if i == 103 {
                            kill_now.store(true, Ordering::SeqCst);
                        }
                    };
                    let result = save(&root, doc, &halfway);
                    results.lock().unwrap().push((i, result));
                }
            })
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(120), || kill_now.load(Ordering::SeqCst)),
        "document #103 was never half written"
    );
    let copy_started = Instant::now();
    cluster.kill_node(2);
    eprintln!(
        "node 2 killed with {} documents closed",
        results.lock().unwrap().len()
    );
    for w in writers {
        w.join().unwrap();
    }
    let results = std::mem::take(&mut *results.lock().unwrap());
    assert_eq!(results.len(), tree.len());
    for (i, result) in &results {
        if let Err(e) = result {
            panic!("{}: close failed with one node down: {e}", tree[*i].path);
        }
    }
    eprintln!(
        "every close of the 200 documents succeeded ({:.1} s, the last {:.1} s with node 2 down)",
        copy_all.elapsed().as_secs_f64(),
        copy_started.elapsed().as_secs_f64()
    );
    assert_all_in_s3(&bucket, &prefix, &tree);
    let mut listed = bucket.keys(&prefix);
    listed.retain(|k| !k.ends_with('/'));
    assert_eq!(
        listed.len(),
        tree.len(),
        "exactly the documents, nothing else"
    );

    // 2. Quorum lost: node 3 goes too while documents are half written on both mounts.
    let default_docs = outage_docs("default", 5000);
    let queued_docs = outage_docs("queued", 6000);
    let default_open = open_half_written(a.mountpoint(), default_docs);
    let queued_open = open_half_written(b.mountpoint(), queued_docs);
    cluster.kill_node(3);
    let outage = Instant::now();
    let default_closed = finish_and_close(default_open);
    let queued_closed = finish_and_close(queued_open);
    for (doc, result, took) in &default_closed {
        eprintln!(
            "quorum lost, default mode: close of {} ({} bytes) returned {:?} after {:.2} s",
            doc.path,
            doc.data.len(),
            result.as_ref().map_err(|e| e.raw_os_error()),
            took.as_secs_f64()
        );
        let err = result.as_ref().expect_err("close succeeded without quorum");
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{}: {err}", doc.path);
        assert!(
            *took < Duration::from_secs(30),
            "{}: EIO took {took:?}",
            doc.path
        );
    }
    for (doc, result, took) in &queued_closed {
        eprintln!(
            "quorum lost, --write-back: close of {} returned {:?} after {:.3} s",
            doc.path,
            result.as_ref().map_err(|e| e.raw_os_error()),
            took.as_secs_f64()
        );
        assert!(result.is_ok(), "{}: {:?}", doc.path, result);
    }
    // The data is kept: staged in each cache dir, and read back through the mounts.
    let kept = |m: &TestMount| m.staged_files();
    assert!(
        kept(&a) >= default_closed.len(),
        "failed closes keep their stages"
    );
    assert!(
        kept(&b) >= queued_closed.len(),
        "queued closes keep their stages"
    );
    for (closed, m) in [(&default_closed, &a), (&queued_closed, &b)] {
        for (doc, _, _) in closed {
            let got = std::fs::read(m.path(&doc.path))
                .unwrap_or_else(|e| panic!("{} kept, but reading it: {e}", doc.path));
            assert!(
                got == doc.data,
                "{}: the mount no longer shows it",
                doc.path
            );
        }
    }
    // A new document while the quorum is lost: refused at open or at close in default mode,
    // never reported saved.
    let new_doc = Doc {
        path: "outage/new-while-down.pdf".into(),
        data: random_bytes(20_000, 7000),
    };
    let new_started = Instant::now();
    let new_result = save(a.mountpoint(), &new_doc, &|| {});
    eprintln!(
        "quorum lost, default mode: a new document's save returned {:?} after {:.2} s",
        new_result.as_ref().map_err(|e| e.raw_os_error()),
        new_started.elapsed().as_secs_f64()
    );
    assert!(
        new_result.is_err(),
        "a new document was reported saved without quorum"
    );

    // 3. The nodes return; the kept data reaches S3 (default: the retry of failed closes,
    //    every 30 s; write-back: the queue's backoff).
    let down_for = outage.elapsed();
    cluster.node_command("start-node", 2);
    cluster.node_command("start-node", 3);
    let back = Instant::now();
    let mut pending: Vec<(&str, &Doc)> = (default_closed.iter().map(|c| (prefix.as_str(), &c.0)))
        .chain(queued_closed.iter().map(|c| (wb_prefix.as_str(), &c.0)))
        .collect();
    let deadline = back + Duration::from_secs(120);
    while !pending.is_empty() {
        pending.retain(|(p, doc)| {
            let got = bucket.try_get(&format!("{p}{}", doc.path));
            let arrived = matches!(&got, Ok(Some(data)) if *data == doc.data);
            if arrived {
                eprintln!(
                    "{}{} reached S3 {:.1} s after the nodes returned",
                    if p == &prefix { "" } else { "(write-back) " },
                    doc.path,
                    back.elapsed().as_secs_f64()
                );
            }
            !arrived
        });
        let left: Vec<_> = pending.iter().map(|(_, d)| &d.path).collect();
        assert!(Instant::now() < deadline, "never reached S3: {left:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!(
        "quorum was lost for {:.1} s; all kept data in S3 {:.1} s after the nodes returned",
        down_for.as_secs_f64(),
        back.elapsed().as_secs_f64()
    );
    assert!(
        eventually(Duration::from_secs(10), || kept(&a) == 0 && kept(&b) == 0),
        "stages left after the uploads: {} and {}",
        kept(&a),
        kept(&b)
    );
    let default_docs: Vec<Doc> = default_closed.into_iter().map(|c| c.0).collect();
    let queued_docs: Vec<Doc> = queued_closed.into_iter().map(|c| c.0).collect();
    assert_all_in_s3(&bucket, &prefix, &tree);
    a.unmount();
    b.unmount();

    // 4. The restarted nodes serve everything: with node 1 (which every write went
    //    through) killed, a mount through node 2 reads every document.
    let phase = Instant::now();
    cluster.kill_node(1);
    let m = cluster.mount(2, &base, &cache("read"), &["--read-only"]);
    let through = "node 2 with node 1 killed";
    assert_all_read(&m.path("default"), &tree, through);
    assert_all_read(&m.path("default"), &default_docs, through);
    assert_all_read(&m.path("write-back"), &queued_docs, through);
    eprintln!(
        "every document read back through node 2 with node 1 down in {:.1} s",
        phase.elapsed().as_secs_f64()
    );
    eprintln!(
        "cluster test done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
