//! Where scmz keeps its files: the platform's user directories (`directories`), each
//! overridable by an environment variable so tests and shared servers can redirect them.

use std::path::{Path, PathBuf};

fn project() -> Option<directories::ProjectDirs> {
    directories::ProjectDirs::from("", "", "scmz")
}

fn from_env_or(var: &str, default: impl FnOnce(&directories::ProjectDirs) -> PathBuf) -> PathBuf {
    match std::env::var_os(var) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => project()
            .map(|p| default(&p))
            .unwrap_or_else(|| std::env::temp_dir().join("scmz")),
    }
}

/// Caches that can be rebuilt at any time (`SCMZ_CACHE_DIR`).
pub fn cache_dir() -> PathBuf {
    from_env_or("SCMZ_CACHE_DIR", |p| p.cache_dir().to_path_buf())
}

/// Data that must persist: the zoo (`SCMZ_DATA_DIR`).
pub fn data_dir() -> PathBuf {
    from_env_or("SCMZ_DATA_DIR", |p| p.data_dir().to_path_buf())
}

/// Job records and logs (`SCMZ_STATE_DIR`; the user state directory, else the data directory).
pub fn state_dir() -> PathBuf {
    from_env_or("SCMZ_STATE_DIR", |p| {
        p.state_dir().unwrap_or(p.data_dir()).to_path_buf()
    })
}

/// ("network" | "local", name) of the filesystem holding `path`, from statfs's magic number; None
/// when statfs fails or the filesystem is not one of these.
pub fn filesystem_kind(path: &Path) -> Option<(&'static str, &'static str)> {
    let st = rustix::fs::statfs(path).ok()?;
    // An i64 or a u32, by libc and backend.
    #[allow(clippy::unnecessary_cast)]
    let magic = st.f_type as u64;
    Some(match magic {
        0x6969 => ("network", "nfs"),
        0x0bd0_0bd0 => ("network", "lustre"),
        0x4750_4653 => ("network", "gpfs"),
        0x00c3_6400 => ("network", "cephfs"),
        0x1983_0326 => ("network", "beegfs"),
        0xff53_4d42 | 0xfe53_4d42 => ("network", "cifs/smb"),
        0xef53 => ("local", "ext4"),
        0x5846_5342 => ("local", "xfs"),
        0x9123_683e => ("local", "btrfs"),
        0x0102_1994 => ("local", "tmpfs"),
        0x794c_7630 => ("local", "overlayfs"),
        0x2fc1_2fc1 => ("local", "zfs"),
        _ => return None,
    })
}
