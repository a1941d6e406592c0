//! The integration tests, in one test binary (`cargo test --release --test e2e`): every
//! module here used to be a test binary of its own, and each of them linked s3mount with
//! the whole AWS SDK; one binary is linked once.
//!
//! Test names keep the old file names as module paths, so `--test e2e random_ops` runs
//! what `--test random_ops` ran, and `--test e2e mount_e2e::close_fails -- --exact` one
//! test. All modules share one process now: a test must not change the process
//! environment (`std::env::set_var`) or other process-wide state; `credentials` runs its
//! check in a child process for that reason.
//!
//! Every module but `core_fs` (the file-system core against the in-memory store) needs
//! the local S3 server that `scripts/test.sh` starts, and most need root for mounts.

mod common;

mod big_files;
mod check;
mod cli;
mod cluster;
mod conformance;
mod core_fs;
mod crash;
mod credentials;
mod durability;
mod fd_bound;
mod lookups;
mod meta_index;
mod migrate;
mod mount_e2e;
mod object_options;
mod observability;
mod odd_keys;
mod quick_closes;
mod random_ops;
mod readdir_model;
mod s3fs_interop;
mod scale;
mod server_ops;
mod tools_roundtrip;
mod trash;
mod two_hosts;
