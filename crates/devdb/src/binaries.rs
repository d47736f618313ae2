//! Finding the PostgreSQL server programs (initdb, pg_ctl, postgres) installed on the machine.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::bail;

/// The programs a managed cluster needs, all from one directory.
const PROGRAMS: [&str; 3] = ["initdb", "pg_ctl", "postgres"];

/// What to tell someone who has no PostgreSQL installed.
const NOT_INSTALLED: &str = "\
PostgreSQL's server programs (initdb, pg_ctl, postgres) were not found: looked in `pg_config --bindir`, \
/usr/lib/postgresql/<version>/bin, /usr/pgsql-<version>/bin, Homebrew's postgresql@<version> and PATH.
Do one of these:
  - install PostgreSQL: `sudo apt-get install postgresql` (Debian/Ubuntu), `brew install postgresql@15` (macOS),
    `sudo dnf install postgresql-server` (Fedora/RHEL); then run the command again;
  - or point at a server you already have: DATABASE_URL=postgres://postgres@127.0.0.1:5432/jct;
  - or run everything in containers: `docker compose up`.";

/// Finds the directory holding initdb, pg_ctl and postgres.
///
/// Looks, in order: at the version that created an existing data directory (`wanted_major`, from its
/// PG_VERSION file), at `pg_config --bindir`, at the highest versioned install in the usual places,
/// and at PATH.
pub(crate) fn find_bindir(wanted_major: Option<u32>) -> anyhow::Result<PathBuf> {
    let versioned = versioned_dirs();
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(major) = wanted_major {
        candidates.extend(versioned.iter().filter(|(v, _)| *v == major).map(|(_, d)| d.clone()));
    }
    candidates.extend(pg_config_bindir());
    candidates.extend(versioned.into_iter().map(|(_, d)| d));
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path));
    }
    match candidates.into_iter().find(|dir| has_programs(dir)) {
        Some(dir) => Ok(dir),
        None => bail!("{NOT_INSTALLED}"),
    }
}

fn has_programs(dir: &Path) -> bool {
    PROGRAMS.iter().all(|p| dir.join(p).is_file())
}

/// `pg_config --bindir`, if pg_config is on PATH and answers.
fn pg_config_bindir() -> Option<PathBuf> {
    let out = Command::new("pg_config").arg("--bindir").output().ok()?;
    let dir = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !dir.trim().is_empty()).then(|| PathBuf::from(dir.trim()))
}

/// Versioned installs (Debian/Ubuntu, PGDG RPMs, Homebrew), highest version first.
fn versioned_dirs() -> Vec<(u32, PathBuf)> {
    // (parent directory, prefix of the versioned entry, path from the entry to the programs)
    let layouts = [
        ("/usr/lib/postgresql", "", "bin"),
        ("/usr", "pgsql-", "bin"),
        ("/opt/homebrew/opt", "postgresql@", "bin"),
        ("/usr/local/opt", "postgresql@", "bin"),
    ];
    let mut found = Vec::new();
    for (parent, prefix, bin) in layouts {
        let Ok(entries) = std::fs::read_dir(parent) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let version = name.to_str().and_then(|n| n.strip_prefix(prefix));
            // "15" or "9.6": the major version is what comes before any dot.
            if let Some(Ok(major)) = version.map(|v| v.split('.').next().unwrap_or(v).parse::<u32>()) {
                found.push((major, entry.path().join(bin)));
            }
        }
    }
    found.sort_by_key(|(major, _)| std::cmp::Reverse(*major));
    found
}

/// The major version recorded in an existing data directory, if any.
pub(crate) fn data_dir_major(data_dir: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(data_dir.join("PG_VERSION")).ok()?;
    text.trim().split('.').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_installed_server() {
        let dir = find_bindir(None).expect("PostgreSQL is installed on the development machines");
        assert!(has_programs(&dir), "{}", dir.display());
    }

    #[test]
    fn the_error_says_what_to_do() {
        for hint in ["apt-get install postgresql", "brew install postgresql@15", "DATABASE_URL", "docker compose up"] {
            assert!(NOT_INSTALLED.contains(hint), "{hint}");
        }
    }
}
