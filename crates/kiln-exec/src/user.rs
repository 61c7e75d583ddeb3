//! Resolving a step's `user` against the container image's own account files.
//!
//! Names are looked up in the image's `/etc/passwd` and `/etc/group`, read
//! through the mounted rootfs: the host's accounts are irrelevant to what the
//! process will run as.

use std::path::Path;

use crate::rootpath::read_container_file;

/// The identity the container process runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups listing the user by name in `/etc/group`.
    pub additional_gids: Vec<u32>,
    /// Home directory from `/etc/passwd`, used to default `HOME`.
    pub home: Option<String>,
}

/// Why a user could not be resolved; the reason names the file involved.
#[derive(Debug)]
pub(crate) struct UserError {
    pub reason: String,
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: Option<String>,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

const PASSWD: &str = "/etc/passwd";
const GROUP: &str = "/etc/group";

/// Resolves `user` ("uid", "uid:gid", "name", "name:group", or mixes) inside
/// `rootfs`. `None` means root.
pub(crate) fn resolve(rootfs: &Path, user: Option<&str>) -> Result<ResolvedUser, UserError> {
    let spec = user.unwrap_or("0");
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user_part.is_empty() || group_part == Some("") {
        return Err(UserError {
            reason: format!("malformed user {spec:?}: expected uid, uid:gid, name or name:group"),
        });
    }

    let passwd = read(rootfs, PASSWD)?;
    let (uid, entry) = match user_part.parse::<u32>() {
        // A numeric uid needs no account; the entry only supplies defaults.
        Ok(uid) => (uid, passwd.iter().find(|e| e.uid == uid)),
        Err(_) => {
            let e = passwd
                .iter()
                .find(|e| e.name == user_part)
                .ok_or_else(|| UserError {
                    reason: format!("user {user_part:?} not found in the container's {PASSWD}"),
                })?;
            (e.uid, Some(e))
        }
    };

    let needs_groups = entry.is_some() || group_part.is_some_and(|g| g.parse::<u32>().is_err());
    let groups = if needs_groups {
        read_groups(rootfs)?
    } else {
        Vec::new()
    };
    let gid = match group_part {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups
                .iter()
                .find(|e| e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| UserError {
                    reason: format!(
                        "group {g:?} (of user {spec:?}) not found in the container's {GROUP}"
                    ),
                })?,
        },
        None => entry.map(|e| e.gid).unwrap_or(0),
    };

    let mut additional_gids = Vec::new();
    if let Some(e) = entry {
        for g in &groups {
            if g.gid != gid && g.members.contains(&e.name) && !additional_gids.contains(&g.gid) {
                additional_gids.push(g.gid);
            }
        }
    }

    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
        home: entry.and_then(|e| e.home.clone()),
    })
}

fn read(rootfs: &Path, file: &'static str) -> Result<Vec<PasswdEntry>, UserError> {
    let text = read_container_file(rootfs, file).map_err(|e| UserError {
        reason: format!("reading the container's {file}: {e}"),
    })?;
    Ok(text.as_deref().map(parse_passwd).unwrap_or_default())
}

fn read_groups(rootfs: &Path) -> Result<Vec<GroupEntry>, UserError> {
    let text = read_container_file(rootfs, GROUP).map_err(|e| UserError {
        reason: format!("reading the container's {GROUP}: {e}"),
    })?;
    Ok(text.as_deref().map(parse_group).unwrap_or_default())
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if line.starts_with('#') || fields.len() < 4 {
                return None;
            }
            Some(PasswdEntry {
                name: fields[0].to_string(),
                uid: fields[2].trim().parse().ok()?,
                gid: fields[3].trim().parse().ok()?,
                home: fields
                    .get(5)
                    .filter(|h| !h.is_empty())
                    .map(|h| h.to_string()),
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if line.starts_with('#') || fields.len() < 3 {
                return None;
            }
            Some(GroupEntry {
                name: fields[0].to_string(),
                gid: fields[2].trim().parse().ok()?,
                members: fields
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .map(str::trim)
                            .filter(|m| !m.is_empty())
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\n# comment\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\nbuilder:x:1000:1000::/home/builder:/bin/sh\nbroken\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\nnogroup:x:65534:\nbuilder:x:1000:\ndocker:x:999:builder,other\nwheel:x:10:root\n",
        )
        .unwrap();
        dir
    }

    #[test]
    fn resolves_every_form() {
        let dir = rootfs();
        let r = |u: &str| resolve(dir.path(), Some(u)).unwrap();
        let root = resolve(dir.path(), None).unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert_eq!(root.additional_gids, vec![10]);
        assert_eq!(root.home.as_deref(), Some("/root"));

        assert_eq!((r("1000:1000").uid, r("1000:1000").gid), (1000, 1000));
        // A numeric uid takes its primary group from passwd when listed...
        assert_eq!(r("1000").gid, 1000);
        // ...and gid 0 when not, like Docker.
        assert_eq!((r("4242").uid, r("4242").gid), (4242, 0));
        assert_eq!(r("4242").home, None);

        let nobody = r("nobody");
        assert_eq!((nobody.uid, nobody.gid), (65534, 65534));
        let builder = r("builder");
        assert_eq!(builder.additional_gids, vec![999]);
        assert_eq!(builder.home.as_deref(), Some("/home/builder"));
        assert_eq!(r("builder:nogroup").gid, 65534);
        assert_eq!(r("1000:docker").gid, 999);
    }

    #[test]
    fn unknown_names_are_errors_naming_them() {
        let dir = rootfs();
        let e = resolve(dir.path(), Some("ghost")).unwrap_err();
        assert!(e.reason.contains("\"ghost\""), "{}", e.reason);
        assert!(e.reason.contains("/etc/passwd"), "{}", e.reason);
        let e = resolve(dir.path(), Some("builder:ghosts")).unwrap_err();
        assert!(e.reason.contains("\"ghosts\""), "{}", e.reason);
        assert!(e.reason.contains("/etc/group"), "{}", e.reason);
        assert!(resolve(dir.path(), Some(":1")).is_err());
        assert!(resolve(dir.path(), Some("1:")).is_err());
    }

    #[test]
    fn missing_account_files_only_matter_for_names() {
        let dir = tempfile::tempdir().unwrap();
        let u = resolve(dir.path(), Some("7:8")).unwrap();
        assert_eq!((u.uid, u.gid), (7, 8));
        assert!(resolve(dir.path(), Some("nobody")).is_err());
    }
}
