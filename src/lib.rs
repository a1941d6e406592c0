//! s3mount: mount an S3 bucket prefix as a file system for applications that write
//! documents to a local disk.
//!
//! ```text
//!  kernel ─ fuse (adapter) ─ fs::S3Fs (POSIX rules, inode table, handles)
//!                              ├─ read   (block cache, read-ahead)  ─┐
//!                              ├─ stage  (write-back cache, journal) ├─ store::ObjectStore ─ S3
//!                              └─ upload (PUT / multipart)          ─┘
//! ```
//!
//! Write path: create/open stages the file in the cache dir (journaled beside it),
//! writes land there, close (flush) uploads it and returns once S3 acknowledged it;
//! large files written front to back upload their parts while writing continues. With
//! `--write-back`, close makes the stage durable, journals it as committed and leaves
//! the upload to a background queue; recovery uploads committed stages before a mount
//! serves.
//! Read path: ranged GETs with If-Match into a bounded LRU of blocks, with growing
//! read-ahead windows for sequential readers. `ARCHITECTURE.md` walks both paths file by
//! file; `error` is where every errno is chosen.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod check;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod error;
pub mod fs;
pub mod fuse;
pub mod layout;
pub mod logging;
pub mod meta_index;
pub mod metrics;
pub mod migrate;
pub mod mount_options;
pub mod read;
pub mod shared_index;
pub mod stage;
pub mod status;
pub mod store;
pub mod sysmount;
pub mod systemd;
pub mod trash;
pub mod upload;
