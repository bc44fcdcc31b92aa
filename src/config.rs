//! The user's configuration file: `config.toml` in the user config directory (or the file named
//! by `SCMZ_CONFIG`). Every key is optional; environment variables and command-line flags win
//! over it. An unknown key or a value of the wrong type is an error naming the file and the key,
//! so a typo never silently falls back to a default.
//!
//! ```toml
//! [jobs]
//! backend = "local"      # or "slurm"
//! max_gpu_jobs = 1       # local jobs running at once on the GPU (SCMZ_MAX_GPU_JOBS wins)
//! max_cpu_jobs = 1       # and on the CPU (SCMZ_MAX_CPU_JOBS wins)
//!
//! [slurm]
//! partition = "gpu"
//! time = "12:00:00"
//! mem = "64G"
//! gpus = 1
//! extra = ["--account=mylab"]
//!
//! [tui]
//! theme = "dark"         # a name in themes/ or a path to a theme file
//! ascii = false
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub jobs: JobsConfig,
    pub slurm: SlurmConfig,
    pub tui: TuiConfig,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    pub backend: Option<String>,
    pub max_gpu_jobs: Option<usize>,
    pub max_cpu_jobs: Option<usize>,
}

/// Defaults for `--backend slurm` submissions.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlurmConfig {
    pub partition: Option<String>,
    pub time: Option<String>,
    pub mem: Option<String>,
    pub gpus: Option<u32>,
    /// More `#SBATCH` options, verbatim (e.g. `--account=lab`).
    pub extra: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TuiConfig {
    pub theme: Option<String>,
    pub ascii: Option<bool>,
}

#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

/// `SCMZ_CONFIG`, else `config.toml` in the user config directory.
pub fn path() -> PathBuf {
    match std::env::var_os("SCMZ_CONFIG") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => directories::ProjectDirs::from("", "", "scmz")
            .map(|p| p.config_dir().join("config.toml"))
            .unwrap_or_else(|| PathBuf::from("scmz-config.toml")),
    }
}

impl Config {
    /// The user's configuration; an absent file is the default configuration.
    pub fn load() -> Result<Config, ConfigError> {
        Self::load_from(&path())
    }

    pub fn load_from(path: &Path) -> Result<Config, ConfigError> {
        // A FIFO or a device would be waited on or read without end.
        if std::fs::metadata(path).is_ok() {
            crate::files::require_regular(path).map_err(|e| ConfigError {
                path: path.display().to_string(),
                message: e.message,
            })?;
        }
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text).map_err(|message| ConfigError {
                path: path.display().to_string(),
                message,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(e) => Err(ConfigError {
                path: path.display().to_string(),
                message: e.to_string(),
            }),
        }
    }

    /// Parses TOML text; the error is one line naming the key.
    pub fn parse(text: &str) -> Result<Config, String> {
        let c: Config = toml::from_str(text).map_err(|e| one_line_toml_error(&e, text))?;
        for (key, n) in [
            ("max_gpu_jobs", c.jobs.max_gpu_jobs),
            ("max_cpu_jobs", c.jobs.max_cpu_jobs),
        ] {
            if n == Some(0) {
                // 0 would queue every job for ever.
                return Err(format!(
                    "[jobs] {key} = 0: at least 1 job must be able to run; fix or remove that key"
                ));
            }
        }
        Ok(c)
    }
}

/// A TOML error as one line: the line it comes from (which names the key) and the message.
pub fn one_line_toml_error(e: &toml::de::Error, text: &str) -> String {
    let msg = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) if span.start < text.len() => {
            let line_no = text[..span.start].matches('\n').count() + 1;
            let line = text.lines().nth(line_no - 1).unwrap_or("").trim();
            format!("line {line_no} `{line}`: {msg}; fix or remove that key")
        }
        _ => format!("{msg}; fix or remove that key"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_and_unknown_keys_are_named() {
        let c = Config::parse("[jobs]\nmax_cpu_jobs = 3\nbackend = \"slurm\"\n[slurm]\npartition = \"gpu\"\n").unwrap();
        assert_eq!(c.jobs.max_cpu_jobs, Some(3));
        assert_eq!(c.jobs.backend.as_deref(), Some("slurm"));
        assert_eq!(c.slurm.partition.as_deref(), Some("gpu"));
        let e = Config::parse("[jobs]\nmax_cpu_job = 3\n").unwrap_err();
        assert!(e.contains("max_cpu_job"), "{e}");
        let e = Config::parse("[jobs]\nmax_cpu_jobs = \"three\"\n").unwrap_err();
        assert!(e.contains("invalid type"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            Config::load_from(&dir.path().join("none.toml")).unwrap(),
            Config::default()
        );
    }
}
