//! User lookup from the guest's own `/etc/passwd`.
//!
//! The agent is a static binary, so it cannot rely on NSS (`getpwnam` would try to load shared
//! modules); it parses the passwd file itself.

/// One passwd entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory.
    pub home: String,
    /// Login shell.
    pub shell: String,
}

/// Finds `spec` (a name, or a numeric uid) in passwd-format `contents`.
///
/// A numeric uid that has no entry still resolves, with gid = uid and home `/`.
pub fn lookup(contents: &str, spec: &str) -> Option<User> {
    let numeric = spec.parse::<u32>().ok();
    for line in contents.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 7 || line.starts_with('#') {
            continue;
        }
        let (Ok(uid), Ok(gid)) = (fields[2].parse::<u32>(), fields[3].parse::<u32>()) else {
            continue;
        };
        if fields[0] == spec || numeric == Some(uid) {
            return Some(User {
                name: fields[0].to_owned(),
                uid,
                gid,
                home: fields[5].to_owned(),
                shell: fields[6].to_owned(),
            });
        }
    }
    numeric.map(|uid| User {
        name: uid.to_string(),
        uid,
        gid: uid,
        home: "/".to_owned(),
        shell: "/bin/sh".to_owned(),
    })
}

/// Looks `spec` up in `/etc/passwd`.
pub fn lookup_system(spec: &str) -> Option<User> {
    let contents = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    lookup(&contents, spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n#c:x:1:1::/:/\nbad line\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";

    #[test]
    fn finds_by_name_and_uid() {
        assert_eq!(lookup(PASSWD, "root").unwrap().home, "/root");
        let n = lookup(PASSWD, "65534").unwrap();
        assert_eq!((n.name.as_str(), n.gid), ("nobody", 65534));
        assert_eq!(lookup(PASSWD, "4242").unwrap().gid, 4242);
        assert!(lookup(PASSWD, "ghost").is_none());
    }
}
