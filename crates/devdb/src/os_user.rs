//! Running the server as an unprivileged OS user when this process is root (initdb and postgres refuse root).

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};
use nix::unistd::{geteuid, User};

/// The account a cluster's programs run as when this process is root.
#[derive(Debug, Clone)]
pub(crate) struct RunAs {
    pub(crate) name: String,
    uid: u32,
    gid: u32,
}

impl RunAs {
    /// `None` when not root: then everything runs as the current user. As root: the `postgres` user if
    /// there is one, else `nobody`, else a `jct` system user created with useradd.
    pub(crate) fn for_this_process() -> anyhow::Result<Option<RunAs>> {
        if !geteuid().is_root() {
            return Ok(None);
        }
        for name in ["postgres", "nobody"] {
            if let Some(user) = lookup(name)? {
                return Ok(Some(user));
            }
        }
        let status = Command::new("useradd")
            .args(["--system", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin", "jct"])
            .status()
            .context("running useradd to create a `jct` user for PostgreSQL")?;
        match lookup("jct")? {
            Some(user) => Ok(Some(user)),
            None => bail!("running as root, there is no `postgres` or `nobody` user and useradd failed ({status})"),
        }
    }

    /// Makes `cmd` run as this user; std also drops root's supplementary groups when it does so.
    pub(crate) fn apply(&self, cmd: &mut Command) {
        cmd.uid(self.uid).gid(self.gid);
    }

    /// Gives `path` and everything under it to this user (entries vanishing meanwhile are fine).
    pub(crate) fn chown_tree(&self, path: &Path) -> io::Result<()> {
        let meta = match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            other => other?,
        };
        if meta.uid() != self.uid || meta.gid() != self.gid {
            match std::os::unix::fs::lchown(path, Some(self.uid), Some(self.gid)) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                other => other?,
            }
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(path)? {
                self.chown_tree(&entry?.path())?;
            }
        }
        Ok(())
    }
}

fn lookup(name: &str) -> anyhow::Result<Option<RunAs>> {
    let user = User::from_name(name).with_context(|| format!("looking up OS user {name}"))?;
    Ok(user.filter(|u| !u.uid.is_root()).map(|u| RunAs { name: u.name, uid: u.uid.as_raw(), gid: u.gid.as_raw() }))
}

/// Lets every user traverse (not list) each directory above `path`, so the server's user can reach its
/// data directory: adds the others-execute bit where it is missing, and logs each change.
pub(crate) fn make_ancestors_traversable(path: &Path) -> io::Result<()> {
    for dir in path.ancestors().skip(1) {
        let meta = std::fs::metadata(dir)?;
        let mode = meta.permissions().mode();
        if mode & 0o001 == 0 {
            tracing::warn!(dir = %dir.display(), "adding o+x so the PostgreSQL user can reach its data directory");
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o001))?;
        }
    }
    Ok(())
}
