//! Where scmz keeps its files: the platform's user directories (`directories`), each
//! overridable by an environment variable so tests and shared servers can redirect them.

use std::path::PathBuf;

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
