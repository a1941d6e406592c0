//! Large files through a real mount on the local S3 server, at a size CI affords
//! (`scripts/bigfile.sh` does the same past the 5 GiB copy limit): a file written front
//! to back is cut in growing parts (`--max-parts` low, so that they grow early), its
//! part bodies stay within `--upload-memory` although parts are far larger, it reads
//! back byte for byte and renames whole, and a size beyond the largest object is EFBIG.

use std::io::{Read, Write};

use crate::common::*;

/// The ETag S3 gives a multipart upload of `data` cut in parts of `lens` bytes.
fn multipart_etag_of(data: &[u8], lens: &[usize]) -> String {
    use md5::{Digest, Md5};
    let (mut all, mut at) = (Vec::new(), 0);
    for &len in lens {
        all.extend_from_slice(&Md5::digest(&data[at..at + len]));
        at += len;
    }
    assert_eq!(at, data.len());
    format!("{:x}-{}", Md5::digest(&all), lens.len())
}

/// The peak resident memory (VmHWM) of the daemon serving `mountpoint`, in bytes.
fn daemon_peak_rss(mountpoint: &std::path::Path) -> u64 {
    let mnt = mountpoint.to_str().unwrap();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        if args.iter().any(|a| a.ends_with(b"s3mount")) && args.contains(&mnt.as_bytes()) {
            let status = std::fs::read_to_string(entry.path().join("status")).unwrap();
            let kib: u64 = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap();
            return kib * 1024;
        }
    }
    panic!("no s3mount daemon serves {mnt}");
}

#[test]
fn a_file_written_front_to_back_grows_its_parts_within_the_memory_bound() {
    let bucket = Bucket::new();
    let prefix = unique_prefix("bigfile");
    let opts = [
        "--part-size",
        "5MiB",
        "--max-parts",
        "100",
        "--upload-memory",
        "4MiB",
    ];
    let m = TestMount::new(&prefix, &opts);
    let data = random_bytes(300 * MIB, 14);
    {
        let mut f = std::fs::File::create(m.path("scan.tiff")).unwrap();
        for chunk in data.chunks(MIB) {
            f.write_all(chunk).unwrap();
        }
        close_file(f).expect("close returns once S3 has the file");
    }
    // 100 parts at most: the size doubles with every part (5 MiB parts at first).
    let lens = [5, 10, 20, 40, 80, 145].map(|n| n * MIB);
    assert_eq!(
        bucket.etag(&format!("{prefix}scan.tiff")),
        multipart_etag_of(&data, &lens),
        "parts of 5, 10, 20, 40, 80 and 145 MiB"
    );
    // Parts of up to 145 MiB went through 4 MiB of bodies (plus the block cache and
    // the runtime): before, one part alone was held whole.
    let rss = daemon_peak_rss(m.mountpoint());
    assert!(rss < 120 * MIB as u64, "daemon peak RSS {} MiB", rss >> 20);

    let mut back = Vec::with_capacity(data.len());
    let mut f = std::fs::File::open(m.path("scan.tiff")).unwrap();
    f.read_to_end(&mut back).unwrap();
    assert!(back == data, "read back differs");
    drop((f, back));

    std::fs::rename(m.path("scan.tiff"), m.path("archive.tiff")).unwrap();
    assert_eq!(bucket.get(&format!("{prefix}scan.tiff")), None);
    let moved = bucket.get(&format!("{prefix}archive.tiff")).unwrap();
    assert!(moved == data, "the renamed object differs");

    // The largest file 100 parts can hold: 5 MiB × (1 + 2 + … + 512) + 90 × 5 GiB.
    let largest = (5 * 1023 + 90 * 5 * 1024) * MIB as u64;
    let f = std::fs::File::create(m.path("huge.bin")).unwrap();
    let err = f.set_len(largest + 1).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EFBIG), "{err}");
    assert_eq!(f.metadata().unwrap().len(), 0);
    close_file(f).unwrap();
}
