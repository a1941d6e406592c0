//! Interop with the real s3fs-fuse (Debian package `s3fs`): one side writes through its
//! mount, the other mounts the same prefix afterwards and must show the same files, modes,
//! owners, times, directories, symbolic links and `user.*` extended attributes (SPEC §3:
//! attributes are stored the way s3fs stores them).
//!
//! Every test writes one scenario under its own prefix, through s3fs (`s3fs_to_s3mount_*`)
//! or through s3mount (`s3mount_to_s3fs_*`), then mounts the other side (the `edits`
//! scenario then changes things through it while the first mount stays up) and compares
//! `lstat`/`readlink`/`listxattr`/content/listing of every entry on both mounts against the
//! expected values, allowing `SETTLE` for caches to expire. A failure lists every mismatch
//! and dumps the raw objects under the prefix (Content-Type, size, every `x-amz-meta-*`
//! header, and the body of small objects). Run with `--nocapture` to see that dump for
//! passing tests too.
//!
//! Needs root (mounts, chown) and `/usr/bin/s3fs` (`scripts/common.sh` installs it).

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// How long the reading side may take to show what the writer did.
const SETTLE: Duration = Duration::from_secs(10);

/// A live s3fs-fuse mount of `BUCKET:/PREFIX` (`s3fs -f` as a child); unmounted on drop.
struct S3fs {
    dir: tempfile::TempDir,
    work: tempfile::TempDir,
    child: Option<Child>,
}

impl S3fs {
    fn mount(prefix: &str) -> S3fs {
        let env = S3Env::get();
        let work = tempfile::tempdir().unwrap();
        let passwd = work.path().join("passwd");
        std::fs::write(&passwd, format!("{}:{}\n", env.access_key, env.secret_key)).unwrap();
        std::fs::set_permissions(&passwd, std::fs::Permissions::from_mode(0o600)).unwrap();
        let log = File::create(work.path().join("s3fs.log")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let source = format!("{}:/{}", env.bucket, prefix.trim_end_matches('/'));
        let opts = [
            format!("url={}", env.endpoint),
            "use_path_request_style".into(),
            format!("passwd_file={}", passwd.display()),
            // the signature V4 region (Garage: s3_region in scripts/local-s3.sh)
            format!("endpoint={}", env.region),
            "use_xattr".into(),
            // s3fs trusts its stat cache for 900 s by default
            "stat_cache_expire=1".into(),
            "dbglevel=warn".into(),
        ];
        let mut cmd = Command::new("s3fs");
        cmd.arg(&source).arg(dir.path()).arg("-f");
        for o in &opts {
            cmd.arg("-o").arg(o);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run s3fs (apt-get install s3fs): {e}"));
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut m = S3fs {
            dir,
            work,
            child: None,
        };
        while !is_mounted(m.dir.path()) {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("s3fs exited ({status}) before mounting:\n{}", m.log());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("s3fs did not mount within 20 s:\n{}", m.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        m.child = Some(child);
        m
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    /// The last lines of s3fs's output.
    fn log(&self) -> String {
        let text = std::fs::read_to_string(self.work.path().join("s3fs.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for S3fs {
    fn drop(&mut self) {
        if let Err(e) = fuse_unmount(self.dir.path()) {
            eprintln!("s3fs: {e}");
            let _ = crate::common::run("fusermount3", &["-uz", self.dir.path().to_str().unwrap()]);
        }
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    S3fs,
    S3mount,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::S3fs => "s3fs",
            Side::S3mount => "s3mount",
        }
    }

    fn other(self) -> Side {
        match self {
            Side::S3fs => Side::S3mount,
            Side::S3mount => Side::S3fs,
        }
    }
}

enum Mount {
    S3fs(S3fs),
    S3mount(TestMount),
}

impl Mount {
    fn new(side: Side, prefix: &str) -> Mount {
        match side {
            Side::S3fs => Mount::S3fs(S3fs::mount(prefix)),
            Side::S3mount => Mount::S3mount(TestMount::new(prefix, &[])),
        }
    }

    fn root(&self) -> &Path {
        match self {
            Mount::S3fs(m) => m.root(),
            Mount::S3mount(m) => m.mountpoint(),
        }
    }
}

fn cpath(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).unwrap()
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// utimensat(2) with the same atime and mtime, like `touch -d`.
fn set_times(path: &Path, sec: i64, nsec: u32, follow: bool) -> io::Result<()> {
    let ts = libc::timespec {
        tv_sec: sec as libc::time_t,
        tv_nsec: nsec as libc::c_long,
    };
    let times = [ts, ts];
    let flags = if follow { 0 } else { libc::AT_SYMLINK_NOFOLLOW };
    let p = cpath(path);
    // SAFETY: p is a NUL-terminated path and times points to two timespecs.
    check(unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), times.as_ptr(), flags) })
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let (p, n) = (cpath(path), CString::new(name).unwrap());
    // SAFETY: valid C strings and a buffer of value.len() bytes.
    check(unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
}

type ListFn =
    unsafe extern "C" fn(*const libc::c_char, *mut libc::c_char, libc::size_t) -> libc::ssize_t;
type GetFn = unsafe extern "C" fn(
    *const libc::c_char,
    *const libc::c_char,
    *mut libc::c_void,
    libc::size_t,
) -> libc::ssize_t;

fn remove_xattr(path: &Path, name: &str) -> io::Result<()> {
    let (p, n) = (cpath(path), CString::new(name).unwrap());
    // SAFETY: valid C strings.
    check(unsafe { libc::lremovexattr(p.as_ptr(), n.as_ptr()) })
}

/// The `user.*` attributes of `path` (not s3mount's virtual read-only `user.s3.*`), of the
/// link's target if `follow`.
fn user_xattrs(path: &Path, follow: bool) -> io::Result<BTreeMap<String, Vec<u8>>> {
    let (list, get) = if follow {
        (libc::listxattr as ListFn, libc::getxattr as GetFn)
    } else {
        (libc::llistxattr as ListFn, libc::lgetxattr as GetFn)
    };
    let p = cpath(path);
    // SAFETY: a size query with a null buffer.
    let len = unsafe { list(p.as_ptr(), std::ptr::null_mut(), 0) };
    if len < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut names = vec![0u8; len as usize + 1];
    // SAFETY: names has names.len() writable bytes.
    let len = unsafe { list(p.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if len < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = BTreeMap::new();
    for name in names[..len as usize].split(|&b| b == 0) {
        let name = String::from_utf8_lossy(name).into_owned();
        if !name.starts_with("user.") || name.starts_with("user.s3.") {
            continue;
        }
        let n = CString::new(name.clone()).unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        // SAFETY: valid C strings and a buffer of buf.len() bytes.
        let got = unsafe { get(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        buf.truncate(got as usize);
        out.insert(name, buf);
    }
    Ok(out)
}

fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

fn render_xattrs(attrs: &[(&str, &[u8])]) -> String {
    let sorted: BTreeMap<&str, &[u8]> = attrs.iter().copied().collect();
    if sorted.is_empty() {
        return "(none)".into();
    }
    let parts: Vec<String> = sorted
        .iter()
        .map(|(k, v)| format!("{k}=0x{}", hex(v)))
        .collect();
    parts.join(" ")
}

fn render_content(data: &[u8]) -> String {
    if data.len() <= 40 {
        format!("{} bytes \"{}\"", data.len(), data.escape_ascii())
    } else {
        format!("{} bytes md5 {}", data.len(), md5_hex(data))
    }
}

fn owner() -> (u32, u32) {
    // SAFETY: getters without arguments.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

/// What one mount shows for one entry, field by field, rendered for comparison.
fn observe(path: &Path, follow: bool) -> BTreeMap<&'static str, String> {
    let mut v = BTreeMap::new();
    let md = if follow {
        std::fs::metadata(path)
    } else {
        std::fs::symlink_metadata(path)
    };
    let md = match md {
        Ok(md) => md,
        Err(e) => {
            v.insert("stat", format!("error: {e}"));
            return v;
        }
    };
    let ft = md.file_type();
    let kind = if ft.is_symlink() {
        "symlink"
    } else if ft.is_dir() {
        "dir"
    } else if ft.is_file() {
        "file"
    } else {
        "other"
    };
    v.insert("type", kind.to_string());
    v.insert("perm", format!("{:04o}", md.mode() & 0o7777));
    v.insert("owner", format!("{}:{}", md.uid(), md.gid()));
    v.insert("mtime", format!("{}.{:09}", md.mtime(), md.mtime_nsec()));
    if kind != "dir" {
        v.insert("size", md.size().to_string());
    }
    match kind {
        "file" => {
            let c = match std::fs::read(path) {
                Ok(data) => render_content(&data),
                Err(e) => format!("error: {e}"),
            };
            v.insert("content", c);
        }
        "symlink" => {
            let t = match std::fs::read_link(path) {
                Ok(t) => t.display().to_string(),
                Err(e) => format!("error: {e}"),
            };
            v.insert("target", t);
        }
        "dir" => {
            let e = match std::fs::read_dir(path) {
                Ok(rd) => {
                    let mut names: Vec<String> = rd
                        .map(|e| match e {
                            Ok(e) => e.file_name().to_string_lossy().into_owned(),
                            Err(e) => format!("error: {e}"),
                        })
                        .collect();
                    names.sort();
                    names.join(" ")
                }
                Err(e) => format!("error: {e}"),
            };
            v.insert("entries", e);
        }
        _ => {}
    }
    if kind != "symlink" {
        let x = match user_xattrs(path, follow) {
            Ok(m) => {
                let pairs: Vec<(&str, &[u8])> =
                    m.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
                render_xattrs(&pairs)
            }
            Err(e) => format!("error: {e}"),
        };
        v.insert("xattrs", x);
    }
    v
}

/// What an entry must look like on both mounts (only the listed fields are compared).
struct Want {
    path: String,
    follow: bool,
    fields: BTreeMap<&'static str, String>,
}

impl Want {
    fn base(path: &str, kind: &str, perm: u32) -> Want {
        let (uid, gid) = owner();
        let mut fields = BTreeMap::new();
        fields.insert("type", kind.to_string());
        fields.insert("perm", format!("{perm:04o}"));
        fields.insert("owner", format!("{uid}:{gid}"));
        Want {
            path: path.into(),
            follow: false,
            fields,
        }
    }

    fn file(path: &str, content: &[u8]) -> Want {
        Want::base(path, "file", 0o644)
            .set("size", content.len().to_string())
            .set("content", render_content(content))
            .set("xattrs", "(none)".into())
    }

    fn dir(path: &str, entries: &[&str]) -> Want {
        let mut names = entries.to_vec();
        names.sort();
        Want::base(path, "dir", 0o755)
            .set("entries", names.join(" "))
            .set("xattrs", "(none)".into())
    }

    fn symlink(path: &str, target: &str) -> Want {
        Want::base(path, "symlink", 0o777)
            .set("size", target.len().to_string())
            .set("target", target.into())
    }

    /// Only the listing (the mount's root has no attributes of its own in S3).
    fn listing(path: &str, entries: &[&str]) -> Want {
        let mut names = entries.to_vec();
        names.sort();
        let mut fields = BTreeMap::new();
        fields.insert("entries", names.join(" "));
        Want {
            path: path.into(),
            follow: false,
            fields,
        }
    }

    fn set(mut self, field: &'static str, value: String) -> Want {
        self.fields.insert(field, value);
        self
    }

    fn perm(self, perm: u32) -> Want {
        self.set("perm", format!("{perm:04o}"))
    }

    fn owner(self, uid: u32, gid: u32) -> Want {
        self.set("owner", format!("{uid}:{gid}"))
    }

    fn mtime(self, sec: i64, nsec: u32) -> Want {
        self.set("mtime", format!("{sec}.{nsec:09}"))
    }

    fn xattrs(self, attrs: &[(&str, &[u8])]) -> Want {
        self.set("xattrs", render_xattrs(attrs))
    }

    /// Stat through the link (the target's attributes).
    fn followed(mut self) -> Want {
        self.follow = true;
        self
    }
}

/// Writes through one mount; a failing step is recorded and the rest still runs.
struct Writer<'a> {
    root: &'a Path,
    side: Side,
    errors: Vec<String>,
}

impl Writer<'_> {
    fn p(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn note(&mut self, what: String, r: io::Result<()>) {
        if self.side == Side::S3fs {
            // s3fs makes each metadata change a CopyObject right after the write before
            // it, and Garage orders two versions of one millisecond at random when the
            // later is a copy: a chown or a second setxattr was lost now and then (s3mount
            // spaces its own copies, `store/s3/spacing.rs`). What is compared here is what
            // each side reads of the other's writes, not s3fs's ordering, so its writes
            // are spaced by hand.
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        if let Err(e) = r {
            self.errors
                .push(format!("write through {}: {what}: {e}", self.side.name()));
        }
    }

    fn file(&mut self, rel: &str, data: &[u8]) {
        let r = std::fs::write(self.p(rel), data);
        self.note(format!("write {rel}"), r);
    }

    fn mkdir(&mut self, rel: &str) {
        let r = std::fs::create_dir(self.p(rel));
        self.note(format!("mkdir {rel}"), r);
    }

    fn chmod(&mut self, rel: &str, mode: u32) {
        let r = std::fs::set_permissions(self.p(rel), std::fs::Permissions::from_mode(mode));
        self.note(format!("chmod {mode:04o} {rel}"), r);
    }

    fn chown(&mut self, rel: &str, uid: Option<u32>, gid: Option<u32>) {
        let r = std::os::unix::fs::lchown(self.p(rel), uid, gid);
        self.note(format!("chown {uid:?}:{gid:?} {rel}"), r);
    }

    fn times(&mut self, rel: &str, sec: i64, nsec: u32) {
        let r = set_times(&self.p(rel), sec, nsec, true);
        self.note(format!("utimensat {rel} {sec}.{nsec:09}"), r);
    }

    fn ltimes(&mut self, rel: &str, sec: i64, nsec: u32) {
        let r = set_times(&self.p(rel), sec, nsec, false);
        self.note(
            format!("utimensat(AT_SYMLINK_NOFOLLOW) {rel} {sec}.{nsec:09}"),
            r,
        );
    }

    fn symlink(&mut self, target: &str, rel: &str) {
        let r = std::os::unix::fs::symlink(target, self.p(rel));
        self.note(format!("symlink {rel} -> {target}"), r);
    }

    fn setxattr(&mut self, rel: &str, name: &str, value: &[u8]) {
        let r = set_xattr(&self.p(rel), name, value);
        self.note(format!("setxattr {rel} {name}"), r);
    }

    fn rmxattr(&mut self, rel: &str, name: &str) {
        let r = remove_xattr(&self.p(rel), name);
        self.note(format!("removexattr {rel} {name}"), r);
    }
}

/// Raw S3 view of the objects, for failure messages.
struct Raw {
    client: aws_sdk_s3::Client,
    bucket: String,
    rt: tokio::runtime::Runtime,
}

impl Raw {
    fn new() -> Raw {
        let env = S3Env::get();
        Raw {
            client: env.client(),
            bucket: env.bucket,
            rt: runtime(),
        }
    }

    fn keys(&self, prefix: &str) -> Vec<String> {
        self.rt.block_on(async {
            let out = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .send()
                .await
                .unwrap();
            out.contents()
                .iter()
                .filter_map(|o| o.key().map(String::from))
                .collect()
        })
    }

    fn exists(&self, key: &str) -> bool {
        self.rt.block_on(async {
            self.client
                .head_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
                .is_ok()
        })
    }

    /// `KEY: Content-Type, size, x-amz-meta-* headers, body of a small object`.
    fn describe(&self, key: &str) -> String {
        self.rt.block_on(async {
            let head = match self
                .client
                .head_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
            {
                Ok(h) => h,
                Err(e) => return format!("{key}: HEAD failed: {e}"),
            };
            let len = head.content_length().unwrap_or(-1);
            let mut s = format!(
                "{key}\n    Content-Type: {}\n    Content-Length: {len}\n",
                head.content_type().unwrap_or("(none)")
            );
            let meta: BTreeMap<_, _> = head
                .metadata()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .collect();
            for (k, v) in &meta {
                s.push_str(&format!("    x-amz-meta-{k}: {v}\n"));
            }
            if (1..=200).contains(&len)
                && let Ok(out) = self
                    .client
                    .get_object()
                    .bucket(&self.bucket)
                    .key(key)
                    .send()
                    .await
                && let Ok(body) = out.body.collect().await
            {
                s.push_str(&format!("    body: \"{}\"\n", body.to_vec().escape_ascii()));
            }
            s
        })
    }

    fn dump(&self, prefix: &str) -> String {
        let keys = self.keys(prefix);
        if keys.is_empty() {
            return format!("(no objects under {prefix})\n");
        }
        keys.iter().map(|k| self.describe(k)).collect()
    }
}

/// One interop case: what to write (through the writing side), what to change then
/// through the reading side, what both mounts must then show, and which keys (relative to
/// the prefix) must exist in S3.
struct Scenario {
    name: &'static str,
    write: fn(&mut Writer),
    edit: fn(&mut Writer),
    wants: fn() -> Vec<Want>,
    keys: &'static [&'static str],
}

fn run(writer: Side, sc: &Scenario) {
    // SAFETY: umask only sets the process's file mode creation mask.
    unsafe { libc::umask(0o022) };
    let reader = writer.other();
    let prefix = unique_prefix(&format!("{}-{}", writer.name(), sc.name));
    let raw = Raw::new();

    let wmount = Mount::new(writer, &prefix);
    let mut w = Writer {
        root: wmount.root(),
        side: writer,
        errors: Vec::new(),
    };
    (sc.write)(&mut w);
    let mut write_errors = w.errors;
    let rmount = Mount::new(reader, &prefix);
    let mut e = Writer {
        root: rmount.root(),
        side: reader,
        errors: Vec::new(),
    };
    (sc.edit)(&mut e);
    write_errors.append(&mut e.errors);

    let wants = (sc.wants)();
    let deadline = Instant::now() + SETTLE;
    let problems = loop {
        let mut problems = Vec::new();
        for want in &wants {
            let wv = observe(&wmount.root().join(&want.path), want.follow);
            let rv = observe(&rmount.root().join(&want.path), want.follow);
            let name = if want.path.is_empty() {
                "(root)"
            } else {
                &want.path
            };
            let shown = |v: &BTreeMap<&str, String>, field: &str| -> String {
                v.get(field)
                    .or_else(|| v.get("stat"))
                    .cloned()
                    .unwrap_or_else(|| "(n/a)".into())
            };
            for (field, expected) in &want.fields {
                let (a, b) = (shown(&wv, field), shown(&rv, field));
                if &a != expected || &b != expected {
                    problems.push(format!(
                        "{name}{}: {field}: expected {expected:?}; writer {} shows {a:?}{}; reader {} shows {b:?}{}",
                        if want.follow { " (followed)" } else { "" },
                        writer.name(),
                        if &a == expected { "" } else { " (WRONG)" },
                        reader.name(),
                        if &b == expected { "" } else { " (WRONG)" },
                    ));
                }
            }
        }
        for key in sc.keys {
            let full = format!("{prefix}{key}");
            if !raw.exists(&full) {
                problems.push(format!("object {full} is missing in S3"));
            }
        }
        if problems.is_empty() || Instant::now() > deadline {
            break problems;
        }
        std::thread::sleep(Duration::from_millis(500));
    };

    let dump = raw.dump(&prefix);
    println!(
        "=== {} -> {}: {} (prefix {prefix})\n{dump}",
        writer.name(),
        reader.name(),
        sc.name
    );
    if write_errors.is_empty() && problems.is_empty() {
        return;
    }
    let s3fs_log = [&wmount, &rmount]
        .iter()
        .find_map(|m| match m {
            Mount::S3fs(m) => Some(m.log()),
            Mount::S3mount(_) => None,
        })
        .unwrap_or_default();
    panic!(
        "{} -> {} ({}): {} write errors, {} mismatches\n{}\n{}\n\nobjects under {prefix}:\n{dump}\ns3fs output:\n{s3fs_log}",
        writer.name(),
        reader.name(),
        sc.name,
        write_errors.len(),
        problems.len(),
        write_errors.join("\n"),
        problems.join("\n"),
    );
}

// 2021-03-04T05:06:07.123456789Z, 2020-09-13T12:26:40Z, 2019-01-02T03:04:05Z,
// 2020-01-02T03:04:05.5Z
const T_FRAC: (i64, u32) = (1_614_834_367, 123_456_789);
const T_WHOLE: (i64, u32) = (1_600_000_000, 0);
const T_DIR: (i64, u32) = (1_546_398_245, 0);
const T_LINK: (i64, u32) = (1_577_934_245, 500_000_000);

const XATTR_BIN: &[u8] = &[0x00, 0x01, 0xff, 0xfe, b'=', b'%'];
const XATTR_ODD: &[u8] = br#"a "quoted" value, with {json} & %25 = signs/+"#;

fn big() -> Vec<u8> {
    random_bytes(300_000, 7)
}

const FILES: Scenario = Scenario {
    name: "files",
    write: |w| {
        w.file("hello.txt", b"hello, s3fs\n");
        w.file("empty", b"");
        w.file("big.bin", &big());
        w.file("name with spaces & +%.txt", b"odd name");
    },
    edit: |_| {},
    wants: || {
        vec![
            Want::listing(
                "",
                &["hello.txt", "empty", "big.bin", "name with spaces & +%.txt"],
            ),
            Want::file("hello.txt", b"hello, s3fs\n"),
            Want::file("empty", b""),
            Want::file("big.bin", &big()),
            Want::file("name with spaces & +%.txt", b"odd name"),
        ]
    },
    keys: &["hello.txt", "empty", "big.bin", "name with spaces & +%.txt"],
};

const MODES: Scenario = Scenario {
    name: "modes",
    write: |w| {
        for (name, mode) in [
            ("m600", 0o600),
            ("m755", 0o755),
            ("m640", 0o640),
            ("m444", 0o444),
        ] {
            w.file(name, name.as_bytes());
            w.chmod(name, mode);
        }
        w.file("m644", b"m644");
        w.mkdir("d700");
        w.chmod("d700", 0o700);
        w.mkdir("d750");
        w.chmod("d750", 0o750);
        w.mkdir("d755");
    },
    edit: |_| {},
    wants: || {
        vec![
            Want::file("m600", b"m600").perm(0o600),
            Want::file("m755", b"m755").perm(0o755),
            Want::file("m640", b"m640").perm(0o640),
            Want::file("m444", b"m444").perm(0o444),
            Want::file("m644", b"m644"),
            Want::dir("d700", &[]).perm(0o700),
            Want::dir("d750", &[]).perm(0o750),
            Want::dir("d755", &[]),
        ]
    },
    keys: &["m600", "d700/", "d750/", "d755/"],
};

const OWNERS: Scenario = Scenario {
    name: "owners",
    write: |w| {
        w.file("owned", b"owned");
        w.chown("owned", Some(1234), Some(5678));
        w.file("group_only", b"group");
        w.chown("group_only", None, Some(4321));
        w.mkdir("owned_dir");
        w.chown("owned_dir", Some(1234), Some(5678));
    },
    edit: |_| {},
    wants: || {
        let (uid, _) = owner();
        vec![
            Want::file("owned", b"owned").owner(1234, 5678),
            Want::file("group_only", b"group").owner(uid, 4321),
            Want::dir("owned_dir", &[]).owner(1234, 5678),
        ]
    },
    keys: &["owned", "group_only", "owned_dir/"],
};

const MTIMES: Scenario = Scenario {
    name: "mtimes",
    write: |w| {
        w.file("frac", b"fractional");
        w.times("frac", T_FRAC.0, T_FRAC.1);
        w.file("whole", b"whole seconds");
        w.times("whole", T_WHOLE.0, T_WHOLE.1);
        w.mkdir("olddir");
        w.times("olddir", T_DIR.0, T_DIR.1);
    },
    edit: |_| {},
    wants: || {
        vec![
            Want::file("frac", b"fractional").mtime(T_FRAC.0, T_FRAC.1),
            Want::file("whole", b"whole seconds").mtime(T_WHOLE.0, T_WHOLE.1),
            Want::dir("olddir", &[]).mtime(T_DIR.0, T_DIR.1),
        ]
    },
    keys: &["frac", "whole", "olddir/"],
};

const DIRS: Scenario = Scenario {
    name: "dirs",
    write: |w| {
        w.mkdir("a");
        w.mkdir("a/b");
        w.mkdir("a/b/c");
        w.file("a/b/f.txt", b"nested");
        w.mkdir("empty_dir");
        w.mkdir("a/sibling");
    },
    edit: |_| {},
    wants: || {
        vec![
            Want::listing("", &["a", "empty_dir"]),
            Want::dir("a", &["b", "sibling"]),
            Want::dir("a/b", &["c", "f.txt"]),
            Want::dir("a/b/c", &[]),
            Want::dir("a/sibling", &[]),
            Want::dir("empty_dir", &[]),
            Want::file("a/b/f.txt", b"nested"),
        ]
    },
    keys: &[
        "a/",
        "a/b/",
        "a/b/c/",
        "a/sibling/",
        "empty_dir/",
        "a/b/f.txt",
    ],
};

const SYMLINKS: Scenario = Scenario {
    name: "symlinks",
    write: |w| {
        w.file("target.txt", b"x");
        w.mkdir("subdir");
        w.symlink("../some/where", "dangling");
        w.symlink("/etc/hostname", "absolute");
        w.symlink("target.txt", "to_file");
        w.symlink("subdir", "to_dir");
        w.symlink("to_file", "to_link");
        w.chown("absolute", Some(1234), Some(5678));
        w.ltimes("dangling", T_LINK.0, T_LINK.1);
    },
    edit: |_| {},
    wants: || {
        vec![
            Want::listing(
                "",
                &[
                    "target.txt",
                    "subdir",
                    "dangling",
                    "absolute",
                    "to_file",
                    "to_dir",
                    "to_link",
                ],
            ),
            Want::symlink("dangling", "../some/where").mtime(T_LINK.0, T_LINK.1),
            Want::symlink("absolute", "/etc/hostname").owner(1234, 5678),
            Want::symlink("to_file", "target.txt"),
            Want::symlink("to_dir", "subdir"),
            Want::symlink("to_link", "to_file"),
            Want::file("to_file", b"x").followed(),
            Want::file("to_link", b"x").followed(),
            Want::dir("to_dir", &[]).followed(),
        ]
    },
    keys: &["dangling", "absolute", "to_file", "to_dir", "to_link"],
};

const XATTRS: Scenario = Scenario {
    name: "xattrs",
    write: |w| {
        w.file("xf", b"with attributes");
        w.setxattr("xf", "user.foo", b"bar");
        w.setxattr("xf", "user.bin", XATTR_BIN);
        w.setxattr("xf", "user.odd", XATTR_ODD);
        w.setxattr("xf", "user.gone", b"removed again");
        w.rmxattr("xf", "user.gone");
        w.mkdir("xd");
        w.setxattr("xd", "user.dirattr", b"dv");
        w.file("plain", b"no attributes");
    },
    edit: |_| {},
    wants: || {
        vec![
            Want::file("xf", b"with attributes").xattrs(&[
                ("user.foo", b"bar"),
                ("user.bin", XATTR_BIN),
                ("user.odd", XATTR_ODD),
            ]),
            Want::dir("xd", &[]).xattrs(&[("user.dirattr", b"dv")]),
            Want::file("plain", b"no attributes"),
        ]
    },
    keys: &["xf", "xd/", "plain"],
};

/// Attributes survive changes made through the other side: chmod, a new attribute, and a
/// rewrite of the content keep the owner, the mtime (unless rewritten) and the attributes
/// the first side stored.
const EDITS: Scenario = Scenario {
    name: "edits",
    write: |w| {
        for f in ["e", "r"] {
            w.file(f, b"original");
            w.chmod(f, 0o640);
            w.chown(f, Some(1234), Some(5678));
            w.setxattr(f, "user.keep", b"kept");
        }
        w.times("e", T_FRAC.0, T_FRAC.1);
        w.mkdir("ed");
        w.chmod("ed", 0o750);
        w.chown("ed", Some(1234), Some(5678));
        w.setxattr("ed", "user.d", b"1");
        w.symlink("e", "el");
        w.chown("el", Some(1234), Some(5678));
    },
    edit: |w| {
        w.chmod("e", 0o600);
        w.setxattr("e", "user.added", b"new");
        w.file("r", b"rewritten");
        w.setxattr("ed", "user.d2", b"2");
        w.chown("el", Some(4321), None);
    },
    wants: || {
        vec![
            Want::file("e", b"original")
                .perm(0o600)
                .owner(1234, 5678)
                .mtime(T_FRAC.0, T_FRAC.1)
                .xattrs(&[("user.keep", b"kept"), ("user.added", b"new")]),
            Want::file("r", b"rewritten")
                .perm(0o640)
                .owner(1234, 5678)
                .xattrs(&[("user.keep", b"kept")]),
            Want::dir("ed", &[])
                .perm(0o750)
                .owner(1234, 5678)
                .xattrs(&[("user.d", b"1"), ("user.d2", b"2")]),
            Want::symlink("el", "e").owner(4321, 5678),
        ]
    },
    keys: &["e", "r", "ed/", "el"],
};

#[test]
fn s3fs_to_s3mount_files() {
    run(Side::S3fs, &FILES);
}

#[test]
fn s3fs_to_s3mount_modes() {
    run(Side::S3fs, &MODES);
}

#[test]
fn s3fs_to_s3mount_owners() {
    run(Side::S3fs, &OWNERS);
}

#[test]
fn s3fs_to_s3mount_mtimes() {
    run(Side::S3fs, &MTIMES);
}

#[test]
fn s3fs_to_s3mount_dirs() {
    run(Side::S3fs, &DIRS);
}

#[test]
fn s3fs_to_s3mount_symlinks() {
    run(Side::S3fs, &SYMLINKS);
}

#[test]
fn s3fs_to_s3mount_xattrs() {
    run(Side::S3fs, &XATTRS);
}

#[test]
fn s3mount_to_s3fs_files() {
    run(Side::S3mount, &FILES);
}

#[test]
fn s3mount_to_s3fs_modes() {
    run(Side::S3mount, &MODES);
}

#[test]
fn s3mount_to_s3fs_owners() {
    run(Side::S3mount, &OWNERS);
}

#[test]
fn s3mount_to_s3fs_mtimes() {
    run(Side::S3mount, &MTIMES);
}

#[test]
fn s3mount_to_s3fs_dirs() {
    run(Side::S3mount, &DIRS);
}

#[test]
fn s3mount_to_s3fs_symlinks() {
    run(Side::S3mount, &SYMLINKS);
}

#[test]
fn s3mount_to_s3fs_xattrs() {
    run(Side::S3mount, &XATTRS);
}

#[test]
fn s3fs_to_s3mount_edits() {
    run(Side::S3fs, &EDITS);
}

#[test]
fn s3mount_to_s3fs_edits() {
    run(Side::S3mount, &EDITS);
}
