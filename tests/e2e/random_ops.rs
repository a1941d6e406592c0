//! Data integrity under a seeded random sequence of file operations through the mount:
//! opens (with and without O_TRUNC, O_APPEND, read-only, write-only), pwrite at random
//! offsets (also past the end, leaving holes that must read as zeros), pread at random
//! offsets and lengths, ftruncate up and down, appends, fsync, close and reopen, with several
//! handles open on one file at once. An in-memory model (one `Vec<u8>` per file) is checked
//! on every read and every size (fstat and stat), against the objects in S3 after each
//! close and fsync, and in full after a remount in the middle and at the end.
//!
//! `RANDOM_OPS_SEED` (default fixed) picks the sequence, `RANDOM_OPS_STEPS` its length.
//! A failure prints the seed and the last operations, and writes all of them to
//! `$TMPDIR/random_ops-NAME-SEED.log`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};

use crate::common::*;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

const KIB: usize = 1024;
/// Files stay below this size; above the 5 MiB part size of the mount, so some closes
/// are multipart uploads.
const MAX_SIZE: usize = 7 * MIB;
const FILES: usize = 4;
const MAX_HANDLES: usize = 6;
const DEFAULT_SEED: u64 = 0x5eed_2026;
const DEFAULT_STEPS: u64 = 500;
/// Steps slower than this are reported (not failed): everything here is local.
const SLOW: std::time::Duration = std::time::Duration::from_secs(3);

fn steps() -> usize {
    env_or("RANDOM_OPS_STEPS", DEFAULT_STEPS) as usize
}

struct Handle {
    file: usize,
    f: File,
    read: bool,
    write: bool,
    append: bool,
    /// Something was written or truncated through this handle since it was opened.
    dirty: bool,
    id: usize,
}

struct Run {
    name: &'static str,
    seed: u64,
    rng: StdRng,
    prefix: String,
    mount_args: Vec<&'static str>,
    /// close() and fsync() return only once S3 has the object (not --write-back).
    synchronous: bool,
    mount: Option<TestMount>,
    bucket: Bucket,
    /// None: the file does not exist.
    model: Vec<Option<Vec<u8>>>,
    handles: Vec<Handle>,
    next_id: usize,
    step: usize,
    log: Vec<String>,
}

/// On a panic (the run is dropped while unwinding), says how to replay the run and what it
/// did, and closes the handles before the mount goes away.
impl Drop for Run {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log =
                std::env::temp_dir().join(format!("random_ops-{}-{}.log", self.name, self.seed));
            let _ = std::fs::write(&log, self.log.join("\n") + "\n");
            let from = self.log.len().saturating_sub(40);
            eprintln!(
                "\n[{}] FAILED at step {} - replay with RANDOM_OPS_SEED={} RANDOM_OPS_STEPS={}\n\
                 prefix {}\nall operations: {}\nlast operations:\n  {}\n",
                self.name,
                self.step,
                self.seed,
                steps(),
                self.prefix,
                log.display(),
                self.log[from..].join("\n  ")
            );
        }
        // Open files would keep the mount busy: close them first.
        self.handles.clear();
    }
}

fn name(file: usize) -> String {
    format!("f{file}")
}

fn set_len(v: &mut Vec<u8>, len: usize) {
    v.resize(len, 0);
}

fn write_model(v: &mut Vec<u8>, off: usize, data: &[u8]) {
    if v.len() < off + data.len() {
        v.resize(off + data.len(), 0);
    }
    v[off..off + data.len()].copy_from_slice(data);
}

/// The first index at which `a` and `b` differ (or the shorter length).
fn first_difference(a: &[u8], b: &[u8]) -> usize {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()))
}

fn describe_mismatch(got: &[u8], want: &[u8]) -> String {
    let at = first_difference(got, want);
    let show = |v: &[u8]| {
        let end = (at + 16).min(v.len());
        format!("{:02x?}", &v[at.min(v.len())..end])
    };
    format!(
        "got {} bytes, want {} bytes; first difference at byte {at}: got {} want {}",
        got.len(),
        want.len(),
        show(got),
        show(want)
    )
}

impl Run {
    fn new(name: &'static str, mount_args: Vec<&'static str>, synchronous: bool) -> Run {
        let seed = env_or("RANDOM_OPS_SEED", DEFAULT_SEED);
        let prefix = unique_prefix(name);
        println!(
            "[{name}] RANDOM_OPS_SEED={seed} RANDOM_OPS_STEPS={} prefix {prefix}",
            steps()
        );
        let mount = TestMount::new(&prefix, &mount_args);
        Run {
            name,
            seed,
            rng: StdRng::seed_from_u64(seed),
            prefix,
            mount_args,
            synchronous,
            mount: Some(mount),
            bucket: Bucket::new(),
            model: vec![None; FILES],
            handles: Vec::new(),
            next_id: 0,
            step: 0,
            log: Vec::new(),
        }
    }

    fn path(&self, file: usize) -> std::path::PathBuf {
        self.mount.as_ref().unwrap().path(&name(file))
    }

    fn key(&self, file: usize) -> String {
        format!("{}{}", self.prefix, name(file))
    }

    fn log(&mut self, what: String) {
        self.log.push(format!("#{} {what}", self.step));
    }

    fn ctx(&self) -> String {
        format!("[{} seed {} step {}]", self.name, self.seed, self.step)
    }

    // -- checks ----------------------------------------------------------------------

    /// fstat of every open handle of `file` and stat of its path match the model.
    fn check_sizes(&self, file: usize, why: &str) {
        let want = self.model[file].as_ref().map(|v| v.len() as u64);
        for h in self.handles.iter().filter(|h| h.file == file) {
            let got = h.f.metadata().unwrap_or_else(|e| {
                panic!("{} fstat {} (handle {}): {e}", self.ctx(), name(file), h.id)
            });
            assert_eq!(
                Some(got.len()),
                want,
                "{} fstat size of {} (handle {}) {why}",
                self.ctx(),
                name(file),
                h.id
            );
        }
        match std::fs::metadata(self.path(file)) {
            Ok(m) => assert_eq!(
                Some(m.len()),
                want,
                "{} stat size of {} {why}",
                self.ctx(),
                name(file)
            ),
            Err(e) => assert!(
                want.is_none() && e.kind() == std::io::ErrorKind::NotFound,
                "{} stat {} {why}: {e} (model: {want:?} bytes)",
                self.ctx(),
                name(file)
            ),
        }
    }

    /// The object in S3 holds exactly the model's bytes.
    fn check_s3(&self, file: usize, why: &str) {
        let got = self.bucket.get(&self.key(file));
        match (&got, &self.model[file]) {
            (Some(g), Some(w)) => assert!(
                g == w,
                "{} S3 object {} after {why}: {}",
                self.ctx(),
                self.key(file),
                describe_mismatch(g, w)
            ),
            (None, None) => {}
            (g, w) => panic!(
                "{} S3 object {} after {why}: got {:?} bytes, want {:?} bytes",
                self.ctx(),
                self.key(file),
                g.as_ref().map(|v| v.len()),
                w.as_ref().map(|v| v.len())
            ),
        }
    }

    /// Every file read whole through the mount (a new open) matches the model.
    fn check_all_through_mount(&self, why: &str) {
        for file in 0..FILES {
            self.check_sizes(file, why);
            match (std::fs::read(self.path(file)), &self.model[file]) {
                (Ok(g), Some(w)) => assert!(
                    &g == w,
                    "{} read of {} {why}: {}",
                    self.ctx(),
                    name(file),
                    describe_mismatch(&g, w)
                ),
                (Err(e), None) if e.kind() == std::io::ErrorKind::NotFound => {}
                (g, w) => panic!(
                    "{} read of {} {why}: got {:?}, want {:?} bytes",
                    self.ctx(),
                    name(file),
                    g.map(|v| v.len()),
                    w.as_ref().map(|v| v.len())
                ),
            }
        }
    }

    // -- operations --------------------------------------------------------------------

    fn open(&mut self) {
        if self.handles.len() >= MAX_HANDLES {
            let i = self.rng.random_range(0..self.handles.len());
            self.close(i);
        }
        let file = self.rng.random_range(0..FILES);
        let exists = self.model[file].is_some();
        // Read-only opens only of existing files; O_TRUNC and O_APPEND now and then.
        let (read, write) = match self.rng.random_range(0..10) {
            0..=1 if exists => (true, false),
            2 => (false, true),
            _ => (true, true),
        };
        let truncate = write && self.rng.random_bool(0.2);
        let append = write && !truncate && self.rng.random_bool(0.25);
        let id = self.next_id;
        self.next_id += 1;
        self.log(format!(
            "open {} h{id} read={read} write={write} trunc={truncate} append={append}",
            name(file)
        ));
        let mut o = OpenOptions::new();
        o.read(read).write(write).truncate(truncate);
        if write {
            o.create(true);
        }
        if append {
            o.custom_flags(libc::O_APPEND);
        }
        let f = o
            .open(self.path(file))
            .unwrap_or_else(|e| panic!("{} open {}: {e}", self.ctx(), name(file)));
        let m = self.model[file].get_or_insert_with(Vec::new);
        if truncate {
            m.clear();
        }
        self.handles.push(Handle {
            file,
            f,
            read,
            write,
            append,
            dirty: truncate,
            id,
        });
        self.check_sizes(file, "after open");
    }

    fn random_data(&mut self, max: usize) -> Vec<u8> {
        let len = match self.rng.random_range(0..10) {
            0..=5 => self.rng.random_range(1..=4 * KIB),
            6..=8 => self.rng.random_range(4 * KIB..=256 * KIB),
            _ => self.rng.random_range(256 * KIB..=1536 * KIB),
        }
        .min(max)
        .max(1);
        let mut v = vec![0u8; len];
        self.rng.fill_bytes(&mut v);
        v
    }

    fn pick(&mut self, want: impl Fn(&Handle) -> bool) -> Option<usize> {
        let candidates: Vec<usize> = (0..self.handles.len())
            .filter(|&i| want(&self.handles[i]))
            .collect();
        if candidates.is_empty() {
            None
        } else {
            Some(candidates[self.rng.random_range(0..candidates.len())])
        }
    }

    fn pwrite(&mut self) {
        let Some(i) = self.pick(|h| h.write && !h.append) else {
            return self.open();
        };
        let file = self.handles[i].file;
        let len = self.model[file].as_ref().unwrap().len();
        let data = self.random_data(MAX_SIZE / 2);
        let off = match self.rng.random_range(0..10) {
            // Inside the file or at its end.
            0..=3 => self.rng.random_range(0..=len),
            // Just past the end: a small hole.
            4..=5 => len + self.rng.random_range(1..=64 * KIB),
            // Far past the end: a large hole.
            6 => len + self.rng.random_range(64 * KIB..=2 * MIB),
            // Anywhere in the first half of the size limit.
            _ => self.rng.random_range(0..MAX_SIZE / 2),
        }
        .min(MAX_SIZE - data.len());
        let id = self.handles[i].id;
        self.log(format!(
            "pwrite {} h{id} off={off} len={} (size {len})",
            name(file),
            data.len()
        ));
        self.handles[i]
            .f
            .write_all_at(&data, off as u64)
            .unwrap_or_else(|e| panic!("{} pwrite {}: {e}", self.ctx(), name(file)));
        self.handles[i].dirty = true;
        write_model(self.model[file].as_mut().unwrap(), off, &data);
        self.check_sizes(file, "after pwrite");
    }

    fn append(&mut self) {
        let Some(i) = self.pick(|h| h.append) else {
            return self.open();
        };
        let file = self.handles[i].file;
        let len = self.model[file].as_ref().unwrap().len();
        if len >= MAX_SIZE - 1 {
            let new_len = self.rng.random_range(0..MAX_SIZE / 2);
            return self.truncate_handle(i, new_len);
        }
        let data = self.random_data(MAX_SIZE - len);
        let id = self.handles[i].id;
        self.log(format!(
            "append {} h{id} len={} (size {len})",
            name(file),
            data.len()
        ));
        self.handles[i]
            .f
            .write_all(&data)
            .unwrap_or_else(|e| panic!("{} append {}: {e}", self.ctx(), name(file)));
        self.handles[i].dirty = true;
        self.model[file].as_mut().unwrap().extend_from_slice(&data);
        self.check_sizes(file, "after append");
    }

    fn pread(&mut self) {
        let Some(i) = self.pick(|h| h.read) else {
            return self.open();
        };
        let file = self.handles[i].file;
        let size = self.model[file].as_ref().unwrap().len();
        let off = match self.rng.random_range(0..10) {
            0..=6 => self.rng.random_range(0..=size),
            7 => size.saturating_sub(self.rng.random_range(0..=4 * KIB)),
            8 => 0,
            _ => size + self.rng.random_range(0..=8 * KIB),
        };
        let len = match self.rng.random_range(0..10) {
            0..=5 => self.rng.random_range(0..=8 * KIB),
            6..=8 => self.rng.random_range(8 * KIB..=512 * KIB),
            _ => self.rng.random_range(512 * KIB..=3 * MIB),
        };
        let id = self.handles[i].id;
        self.log(format!(
            "pread {} h{id} off={off} len={len} (size {size})",
            name(file)
        ));
        let mut buf = vec![0u8; len];
        let mut got = 0;
        while got < len {
            match self.handles[i]
                .f
                .read_at(&mut buf[got..], (off + got) as u64)
            {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => panic!(
                    "{} pread {} off={} len={}: {e}",
                    self.ctx(),
                    name(file),
                    off + got,
                    len - got
                ),
            }
        }
        let m = self.model[file].as_ref().unwrap();
        let want = &m[off.min(size)..(off + len).min(size)];
        assert!(
            &buf[..got] == want,
            "{} pread {} h{id} off={off} len={len} (model size {size}): {}",
            self.ctx(),
            name(file),
            describe_mismatch(&buf[..got], want)
        );
    }

    fn truncate_handle(&mut self, i: usize, new_len: usize) {
        let file = self.handles[i].file;
        let id = self.handles[i].id;
        let len = self.model[file].as_ref().unwrap().len();
        self.log(format!("ftruncate {} h{id} {len} -> {new_len}", name(file)));
        self.handles[i]
            .f
            .set_len(new_len as u64)
            .unwrap_or_else(|e| panic!("{} ftruncate {}: {e}", self.ctx(), name(file)));
        self.handles[i].dirty = true;
        set_len(self.model[file].as_mut().unwrap(), new_len);
        self.check_sizes(file, "after ftruncate");
    }

    fn ftruncate(&mut self) {
        let Some(i) = self.pick(|h| h.write) else {
            return self.open();
        };
        let len = self.model[self.handles[i].file].as_ref().unwrap().len();
        let new_len = match self.rng.random_range(0..6) {
            0 => 0,
            1..=2 => self.rng.random_range(0..=len),
            3 => len + self.rng.random_range(1..=64 * KIB),
            4 => (len + self.rng.random_range(1..=3 * MIB)).min(MAX_SIZE),
            _ => self.rng.random_range(0..MAX_SIZE),
        };
        self.truncate_handle(i, new_len);
    }

    fn fsync(&mut self) {
        let Some(i) = self.pick(|h| h.write) else {
            return self.open();
        };
        let file = self.handles[i].file;
        let id = self.handles[i].id;
        self.log(format!("fsync {} h{id}", name(file)));
        self.handles[i]
            .f
            .sync_all()
            .unwrap_or_else(|e| panic!("{} fsync {}: {e}", self.ctx(), name(file)));
        if self.synchronous {
            self.check_s3(file, "fsync");
        }
    }

    fn close(&mut self, i: usize) {
        let h = self.handles.swap_remove(i);
        let (file, id, dirty) = (h.file, h.id, h.dirty);
        self.log(format!("close {} h{id} dirty={dirty}", name(file)));
        // close(2) through libc, so that an error of the flush is seen, not swallowed.
        if let Err(e) = close_file(h.f) {
            panic!("{} close {} h{id}: {e}", self.ctx(), name(file));
        }
        let last = !self.handles.iter().any(|h| h.file == file);
        // A close that follows writes through the handle, and the last close of a file,
        // leave the object complete in S3.
        if self.synchronous && (dirty || last) {
            self.check_s3(file, if last { "last close" } else { "close" });
        }
        self.check_sizes(file, "after close");
    }

    fn close_random(&mut self) {
        if self.handles.is_empty() {
            return self.open();
        }
        let i = self.rng.random_range(0..self.handles.len());
        self.close(i);
    }

    fn close_all(&mut self) {
        while !self.handles.is_empty() {
            let i = self.rng.random_range(0..self.handles.len());
            self.close(i);
        }
    }

    /// Closes everything, unmounts (pending uploads finish), checks S3, mounts the prefix
    /// afresh and checks every file through the new mount.
    fn remount(&mut self, why: &str) {
        self.close_all();
        self.check_all_through_mount(&format!("before the {why} remount"));
        self.log(format!("remount ({why})"));
        let old = self.mount.take().unwrap();
        old.unmount();
        assert_eq!(
            old.staged_files(),
            0,
            "{} files still staged after unmount",
            self.ctx()
        );
        drop(old);
        for file in 0..FILES {
            self.check_s3(file, &format!("the {why} unmount"));
        }
        self.mount = Some(TestMount::new(&self.prefix, &self.mount_args));
        self.check_all_through_mount(&format!("after the {why} remount"));
    }

    fn random_step(&mut self) {
        let op = self.rng.random_range(0..100);
        match op {
            0..=14 => self.open(),
            15..=24 => self.close_random(),
            25..=49 => self.pwrite(),
            50..=57 => self.append(),
            58..=81 => self.pread(),
            82..=92 => self.ftruncate(),
            93..=95 => self.fsync(),
            // Reopen: close a handle and open its file again the same way.
            _ => {
                if self.handles.is_empty() {
                    return self.open();
                }
                let i = self.rng.random_range(0..self.handles.len());
                let (file, read, write, append) = {
                    let h = &self.handles[i];
                    (h.file, h.read, h.write, h.append)
                };
                self.close(i);
                let id = self.next_id;
                self.next_id += 1;
                self.log(format!(
                    "reopen {} h{id} read={read} write={write} append={append}",
                    name(file)
                ));
                let mut o = OpenOptions::new();
                o.read(read).write(write);
                if append {
                    o.custom_flags(libc::O_APPEND);
                }
                let f = o
                    .open(self.path(file))
                    .unwrap_or_else(|e| panic!("{} reopen {}: {e}", self.ctx(), name(file)));
                self.handles.push(Handle {
                    file,
                    f,
                    read,
                    write,
                    append,
                    dirty: false,
                    id,
                });
                self.check_sizes(file, "after reopen");
            }
        }
    }
}

fn random_ops(name: &'static str, mount_args: Vec<&'static str>, synchronous: bool) {
    let steps = steps();
    let mut run = Run::new(name, mount_args, synchronous);
    let started = std::time::Instant::now();
    let mut slow = Vec::new();
    for step in 0..steps {
        run.step = step;
        let logged = run.log.len();
        let t = std::time::Instant::now();
        run.random_step();
        if step == steps / 2 {
            run.remount("middle");
        }
        if t.elapsed() > SLOW {
            slow.push(format!(
                "{:.1} s: {}",
                t.elapsed().as_secs_f64(),
                run.log[logged..].join("; ")
            ));
        }
    }
    run.step = steps;
    let t = std::time::Instant::now();
    run.remount("final");
    if t.elapsed() > SLOW {
        slow.push(format!("{:.1} s: final remount", t.elapsed().as_secs_f64()));
    }
    if !slow.is_empty() {
        eprintln!(
            "[{name}] slow steps (over {} s, seed {}):\n  {}",
            SLOW.as_secs(),
            run.seed,
            slow.join("\n  ")
        );
    }
    println!(
        "[{name}] {steps} steps in {:.1} s, {} handles opened, final sizes {:?}",
        started.elapsed().as_secs_f64(),
        run.next_id,
        run.model
            .iter()
            .map(|m| m.as_ref().map(|v| v.len()))
            .collect::<Vec<_>>()
    );
}

#[test]
fn random_operations_keep_every_byte_in_place() {
    random_ops("rops", vec!["--part-size", "5MiB"], true);
}

#[test]
fn random_operations_with_write_back_keep_every_byte_in_place() {
    random_ops("ropswb", vec!["--part-size", "5MiB", "--write-back"], false);
}
