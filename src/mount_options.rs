//! The fstab form of the command line, `s3mount BUCKET DIR -o name=value,flag`: what
//! mount(8) runs for an fstab entry of type `fuse.s3mount` (through the
//! `mount.fuse.s3mount` link) and for `mount -o remount,ro DIR`.
//!
//! One scanner reads it: [`scan`] finds the option strings (`-o OPTS` or `-oOPTS`) among
//! the arguments and [`parse`] splits each into [`MountOpt`]s. On top of them,
//! [`remount_request`] recognises a remount and [`expand_args`] rewrites every other
//! command line into clap's long options.
//!
//! Invariants: items are separated by `,` and empty items are skipped; a value is
//! everything after the first `=` (it may itself hold `=`); an item is matched by its
//! name, so `user=NAME` is `user`; generic mount(8) options and every `x-*` option are
//! ignored (s3mount mounts are always `nosuid,nodev,default_permissions`); `ro` means `--read-only`, `noexec` `--noexec`; any other `name[=value]`
//! becomes `--name[=value]` (`_` read as `-`), so an unknown option is refused by clap,
//! naming it.
//!
//! Called as mount(8)'s helper (program name `mount.fuse.s3mount` or `mount.s3mount`),
//! the command line is `SOURCE DIR [-s] [-f] [-n] [-v] [-N NS] [-o OPTS] [-t TYPE]`:
//! `-f` (fake) mounts nothing ([`fake_mount_request`]), `-s`, `-n`, `-v` and `-t TYPE`
//! are dropped, `-N` is refused; called under any other name, `-f` is `--foreground`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Generic mount(8) options that s3mount ignores: its mounts are always `nosuid`,
/// `nodev` and `default_permissions`; a read never updates an access time, so the atime
/// options change nothing; the rest speak to mount(8), systemd or the reader of fstab.
const IGNORED_MOUNT_OPTIONS: &[&str] = &[
    "rw",
    "defaults",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "_netdev",
    "nofail",
    "suid",
    "nosuid",
    "dev",
    "nodev",
    "exec",
    "async",
    "atime",
    "noatime",
    "relatime",
    "norelatime",
    "strictatime",
    "nostrictatime",
    "diratime",
    "nodiratime",
    "lazytime",
    "nolazytime",
    "owner",
    "group",
    "comment",
    "default_permissions",
    "silent",
    "loud",
];

/// mount(8)'s own flags to its helper that mean nothing here: sloppy (unknown options
/// are still refused: a mistyped `prefix=` must not mount another place), no mtab,
/// verbose.
const IGNORED_HELPER_FLAGS: &[&str] = &["-s", "-n", "-v"];

/// One item of an option string: `name` or `name=value`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MountOpt<'a> {
    pub name: &'a str,
    pub value: Option<&'a str>,
}

impl MountOpt<'_> {
    /// The flag `name` without a value (`ro`, not `ro=1`).
    fn is_flag(&self, name: &str) -> bool {
        self.name == name && self.value.is_none()
    }
}

/// Splits an option string such as `rw,prefix=docs/,allow_other` into its items.
pub fn parse(options: &str) -> impl Iterator<Item = MountOpt<'_>> {
    options
        .split(',')
        .filter(|item| !item.is_empty())
        .map(|item| match item.split_once('=') {
            Some((name, value)) => MountOpt {
                name,
                value: Some(value),
            },
            None => MountOpt {
                name: item,
                value: None,
            },
        })
}

/// One command-line argument after the program name, as the scanner sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Arg {
    /// The option string of `-o OPTS` or `-oOPTS`.
    Options(String),
    /// Any other argument, unchanged.
    Other(OsString),
}

/// A `-o` at the end of the command line, without its option string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MissingValue;

/// Finds the option strings among `args` (the program name excluded).
pub fn scan(args: &[OsString]) -> Result<Vec<Arg>, MissingValue> {
    let mut out = Vec::with_capacity(args.len());
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let text = arg.to_string_lossy();
        if text == "-o" {
            let value = iter.next().ok_or(MissingValue)?;
            out.push(Arg::Options(value.to_string_lossy().into_owned()));
        } else if let Some(options) = text.strip_prefix("-o") {
            out.push(Arg::Options(options.to_string()));
        } else {
            out.push(Arg::Other(arg.clone()));
        }
    }
    Ok(out)
}

/// `s3mount SOURCE DIR -o ...,remount,ro|rw,...` as mount(8) runs it for
/// `mount -o remount,ro DIR` on a mount of type `fuse.s3mount`: the mount point and
/// whether it becomes read-only. None for every other command line.
pub fn remount_request(args: &[OsString]) -> Option<(PathBuf, bool)> {
    let scanned = scan(args.get(1..).unwrap_or_default()).ok()?;
    let mut remount = false;
    let mut read_only = false;
    let mut positional = Vec::new();
    for arg in &scanned {
        match arg {
            Arg::Options(options) => {
                for opt in parse(options) {
                    remount |= opt.is_flag("remount");
                    // The last of ro/rw wins, as in mount(8).
                    if opt.is_flag("ro") || opt.is_flag("rw") {
                        read_only = opt.is_flag("ro");
                    }
                }
            }
            Arg::Other(other) => {
                let other = other.to_string_lossy();
                if !other.starts_with('-') {
                    positional.push(other.into_owned());
                }
            }
        }
    }
    if !remount {
        return None;
    }
    let dir = positional.into_iter().rfind(|p| p != "mount")?;
    Some((PathBuf::from(dir), read_only))
}

/// The long option that an fstab item stands for; None for the ignored ones.
fn long_option(opt: MountOpt) -> Option<OsString> {
    if IGNORED_MOUNT_OPTIONS.contains(&opt.name) || opt.name.starts_with("x-") {
        return None;
    }
    let name = match opt.name {
        "ro" => "read-only",
        other => other,
    };

    let long = format!("--{}", name.replace('_', "-"));
    Some(match opt.value {
        Some(value) => format!("{long}={value}").into(),
        None => long.into(),
    })
}

/// Is `name` a subcommand of the command line (`mount`, `check`, ...)?
fn is_subcommand(name: &str) -> bool {
    use clap::CommandFactory;
    crate::cli::Cli::command().find_subcommand(name).is_some()
}

/// Whether the program runs as mount(8)'s helper: `mount.fuse.s3mount` or `mount.s3mount`.
fn is_mount_helper(program: &OsString) -> bool {
    Path::new(program)
        .file_name()
        .is_some_and(|name| name.to_string_lossy().starts_with("mount."))
}

/// `mount -f` (fake) of an fstab entry: mount(8) runs the helper with `-f` and expects
/// it to check nothing and mount nothing.
pub fn fake_mount_request(args: &[OsString]) -> bool {
    match args.split_first() {
        Some((program, rest)) => is_mount_helper(program) && rest.iter().any(|a| a == "-f"),
        None => false,
    }
}

/// Drops mount(8)'s own flags from a helper's command line (`-t TYPE` with its value).
fn strip_helper_flags(args: &[OsString]) -> Result<Vec<OsString>, String> {
    let mut out = Vec::with_capacity(args.len());
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let text = arg.to_string_lossy();
        if IGNORED_HELPER_FLAGS.contains(&text.as_ref()) {
            continue;
        }
        match text.as_ref() {
            "-t" => {
                iter.next();
            }
            // Fake mounts never get here (`fake_mount_request`); it is not --foreground.
            "-f" => {}
            "-N" => {
                return Err("mount -N (another mount namespace) is not supported; run mount inside that namespace".into());
            }
            _ => out.push(arg.clone()),
        }
    }
    Ok(out)
}

/// Rewrites the fstab form into long options, and inserts the `mount` subcommand when
/// invoked by mount(8) as `s3mount BUCKET DIR -o opts`.
pub fn expand_args(args: Vec<OsString>) -> Result<Vec<OsString>, String> {
    let mut out: Vec<OsString> = Vec::with_capacity(args.len());
    let Some((program, rest)) = args.split_first() else {
        return Ok(out);
    };
    let helper_args;
    let rest = if is_mount_helper(program) {
        helper_args = strip_helper_flags(rest)?;
        &helper_args[..]
    } else {
        rest
    };
    out.push(program.clone());
    if let Some(first) = rest.first().and_then(|a| a.to_str()) {
        let is_flag = first.starts_with('-');
        if !is_flag && first != "help" && !is_subcommand(first) {
            out.push("mount".into());
        }
    }
    let scanned = scan(rest).map_err(|MissingValue| "-o needs a value (-o name=value,flag)")?;
    for arg in scanned {
        match arg {
            Arg::Options(options) => out.extend(parse(&options).filter_map(long_option)),
            Arg::Other(other) => out.push(other),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    fn opt<'a>(name: &'a str, value: Option<&'a str>) -> MountOpt<'a> {
        MountOpt { name, value }
    }

    #[test]
    fn items_are_flags_or_name_value_pairs() {
        let items: Vec<_> = parse("allow_other,prefix=docs/,ro").collect();
        assert_eq!(
            items,
            [
                opt("allow_other", None),
                opt("prefix", Some("docs/")),
                opt("ro", None)
            ]
        );
    }

    #[test]
    fn empty_items_are_skipped() {
        let items: Vec<_> = parse(",,ro,,prefix=a,").collect();
        assert_eq!(items, [opt("ro", None), opt("prefix", Some("a"))]);
        assert_eq!(parse("").count(), 0);
        assert_eq!(parse(",").count(), 0);
    }

    #[test]
    fn a_value_is_everything_after_the_first_equals_sign() {
        let items: Vec<_> = parse("endpoint-url=http://h:3900/?a=b,prefix=,x=").collect();
        assert_eq!(
            items,
            [
                opt("endpoint-url", Some("http://h:3900/?a=b")),
                opt("prefix", Some("")),
                opt("x", Some(""))
            ]
        );
    }

    #[test]
    fn scan_finds_both_spellings_of_dash_o() {
        let scanned = scan(&args(&[
            "b",
            "-o",
            "ro,a=1",
            "/m",
            "-oprefix=p/",
            "--nonempty",
        ]));
        assert_eq!(
            scanned,
            Ok(vec![
                Arg::Other("b".into()),
                Arg::Options("ro,a=1".into()),
                Arg::Other("/m".into()),
                Arg::Options("prefix=p/".into()),
                Arg::Other("--nonempty".into()),
            ])
        );
        assert_eq!(scan(&args(&["b", "/m", "-o"])), Err(MissingValue));
        assert_eq!(scan(&args(&[])), Ok(vec![]));
    }

    #[test]
    fn fstab_form_becomes_long_options() {
        let out = expand_args(args(&[
            "s3mount",
            "bucket",
            "/mnt",
            "-o",
            "rw,_netdev,prefix=docs/,allow_other,ro,x-systemd.automount",
        ]))
        .unwrap();
        assert_eq!(
            out,
            args(&[
                "s3mount",
                "mount",
                "bucket",
                "/mnt",
                "--prefix=docs/",
                "--allow-other",
                "--read-only"
            ])
        );
        let out = expand_args(args(&["s3mount", "mount", "b", "/m", "-opart-size=16MiB"])).unwrap();
        assert_eq!(
            out,
            args(&["s3mount", "mount", "b", "/m", "--part-size=16MiB"])
        );
    }

    #[test]
    fn what_mount8_passes_to_a_helper_is_ignored() {
        let generic = "rw,defaults,auto,noauto,user,user=joe,nouser,users,_netdev,nofail,\
                       suid,nosuid,dev,nodev,exec,async,atime,noatime,relatime,\
                       norelatime,strictatime,nodiratime,lazytime,owner,group,comment=x,\
                       default_permissions,x-systemd.automount,x-systemd.mount-timeout=30,\
                       x-systemd.requires=network-online.target,x-gvfs-hide";
        let out = expand_args(args(&["s3mount", "b", "/m", "-o", generic])).unwrap();
        assert_eq!(out, args(&["s3mount", "mount", "b", "/m"]));
        let out = expand_args(args(&["s3mount", "b", "/m", "-o", "noexec,ro"])).unwrap();
        assert_eq!(
            out,
            args(&["s3mount", "mount", "b", "/m", "--noexec", "--read-only"])
        );
    }

    #[test]
    fn mount8s_own_flags_to_its_helper_are_dropped() {
        let line = "rw,noatime,noexec,nosuid,nodev,default_permissions,allow_other,prefix=d/";
        for program in ["/sbin/mount.fuse.s3mount", "mount.s3mount"] {
            let out = expand_args(args(&[
                program,
                "b",
                "/m",
                "-s",
                "-n",
                "-v",
                "-o",
                line,
                "-t",
                "fuse.s3mount",
            ]))
            .unwrap();
            assert_eq!(
                out,
                args(&[
                    program,
                    "mount",
                    "b",
                    "/m",
                    "--noexec",
                    "--allow-other",
                    "--prefix=d/"
                ])
            );
        }
        let err = expand_args(args(&["mount.fuse.s3mount", "b", "/m", "-N", "1"])).unwrap_err();
        assert!(err.contains("-N"), "{err}");
    }

    #[test]
    fn dash_f_is_fake_for_the_helper_and_foreground_otherwise() {
        let helper = args(&["/usr/sbin/mount.fuse.s3mount", "b", "/m", "-f", "-o", "rw"]);
        assert!(fake_mount_request(&helper));
        assert_eq!(
            expand_args(helper).unwrap(),
            args(&["/usr/sbin/mount.fuse.s3mount", "mount", "b", "/m"])
        );
        let direct = args(&["s3mount", "b", "/m", "-f"]);
        assert!(!fake_mount_request(&direct));
        assert_eq!(
            expand_args(direct).unwrap(),
            args(&["s3mount", "mount", "b", "/m", "-f"])
        );
        assert!(!fake_mount_request(&args(&[
            "mount.fuse.s3mount",
            "b",
            "/m"
        ])));
        assert!(!fake_mount_request(&[]));
    }

    #[test]
    fn unknown_options_become_long_options_for_clap_to_refuse() {
        let out = expand_args(args(&["s3mount", "b", "/m", "-o", "sync,no_such=1"])).unwrap();
        assert_eq!(
            out,
            args(&["s3mount", "mount", "b", "/m", "--sync", "--no-such=1"])
        );
    }

    #[test]
    fn values_keep_equals_signs_and_commas_separate_items() {
        let out = expand_args(args(&[
            "s3mount",
            "b",
            "/m",
            "-o",
            "endpoint_url=http://h/?x=1,,cache-size=8MiB",
        ]))
        .unwrap();
        assert_eq!(
            out,
            args(&[
                "s3mount",
                "mount",
                "b",
                "/m",
                "--endpoint-url=http://h/?x=1",
                "--cache-size=8MiB"
            ])
        );
    }

    #[test]
    fn the_mount_subcommand_is_inserted_only_for_the_fstab_form() {
        let out = expand_args(args(&["s3mount", "--help"])).unwrap();
        assert_eq!(out, args(&["s3mount", "--help"]));
        let out = expand_args(args(&["s3mount", "help"])).unwrap();
        assert_eq!(out, args(&["s3mount", "help"]));
        let out = expand_args(args(&["s3mount", "mount", "b", "/m", "-f"])).unwrap();
        assert_eq!(out, args(&["s3mount", "mount", "b", "/m", "-f"]));
        let out = expand_args(args(&["s3mount", "check", "b", "-o", "sse=AES256"])).unwrap();
        assert_eq!(out, args(&["s3mount", "check", "b", "--sse=AES256"]));
        assert_eq!(expand_args(args(&["s3mount"])), Ok(args(&["s3mount"])));
        assert_eq!(expand_args(vec![]), Ok(vec![]));
    }

    #[test]
    fn a_final_dash_o_without_options_is_an_error() {
        let err = expand_args(args(&["s3mount", "b", "/m", "-o"])).unwrap_err();
        assert!(err.contains("-o needs a value"), "{err}");
    }

    #[test]
    fn remount_requests_are_recognised() {
        assert_eq!(
            remount_request(&args(&[
                "s3mount",
                "s3mount:b/p/",
                "/mnt/x",
                "-o",
                "rw,remount,ro"
            ])),
            Some((PathBuf::from("/mnt/x"), true))
        );
        assert_eq!(
            remount_request(&args(&["s3mount", "src", "/mnt/x", "-oremount,rw"])),
            Some((PathBuf::from("/mnt/x"), false))
        );
        assert_eq!(
            remount_request(&args(&["s3mount", "mount", "/mnt/x", "-o", "ro,remount"])),
            Some((PathBuf::from("/mnt/x"), true))
        );
        assert_eq!(
            remount_request(&args(&["s3mount", "b", "/mnt/x", "-o", "ro"])),
            None
        );
    }

    #[test]
    fn remount_needs_the_flag_itself_and_a_mount_point() {
        // A remount with neither ro nor rw makes the mount read-write.
        assert_eq!(
            remount_request(&args(&["s3mount", "b", "/m", "-o", "remount,_netdev"])),
            Some((PathBuf::from("/m"), false))
        );
        assert_eq!(
            remount_request(&args(&["s3mount", "b", "/m", "-o", "remount=1,ro"])),
            None
        );
        assert_eq!(
            remount_request(&args(&["s3mount", "b", "/m", "-o", "remount,ro=1"])),
            Some((PathBuf::from("/m"), false))
        );
        assert_eq!(
            remount_request(&args(&["s3mount", "-o", "remount,ro"])),
            None
        );
        assert_eq!(remount_request(&args(&["s3mount", "b", "/m", "-o"])), None);
    }
}
