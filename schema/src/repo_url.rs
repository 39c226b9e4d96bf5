//! One spelling per repository: `git@github.com:org/app.git`, `ssh://git@github.com/org/app`
//! and `https://github.com/org/app.git` all normalize to `https://github.com/org/app`.

/// Normalizes a git remote URL to `https://host/path` without credentials, port, trailing
/// `.git` or trailing slash. Local paths and `file://` URLs are returned trimmed, unchanged
/// otherwise, since they name no host.
pub fn normalize(url: &str) -> String {
    let url = url.trim();
    let (host, path) = if let Some((scheme, rest)) = url.split_once("://") {
        if scheme.eq_ignore_ascii_case("file") {
            return url.to_string();
        }
        match rest.split_once('/') {
            Some((authority, path)) => (authority, path),
            None => (rest, ""),
        }
    } else if let Some((authority, path)) = scp_like(url) {
        (authority, path)
    } else {
        return url.to_string();
    };
    let host = host.rsplit_once('@').map_or(host, |(_, host)| host);
    let host = host.split_once(':').map_or(host, |(host, _port)| host).to_ascii_lowercase();
    let path = path.trim_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path);
    format!("https://{host}/{path}")
}

/// `user@host:path` (scp syntax), which git accepts when there is no `/` before the colon.
fn scp_like(url: &str) -> Option<(&str, &str)> {
    let (authority, path) = url.split_once(':')?;
    if authority.is_empty() || authority.contains('/') || path.starts_with("//") {
        return None;
    }
    Some((authority, path))
}

#[cfg(test)]
mod tests {
    use super::normalize;

    fn check(input: &str, expected: &str) {
        assert_eq!(normalize(input), expected, "normalize({input:?})");
    }

    #[test]
    fn remote_spellings_of_one_repository_agree() {
        check("git@github.com:org/app.git", "https://github.com/org/app");
        check("https://github.com/org/app.git", "https://github.com/org/app");
        check("https://github.com/org/app/", "https://github.com/org/app");
        check("ssh://git@github.com/org/app", "https://github.com/org/app");
        check("ssh://git@GitHub.com:22/org/app.git", "https://github.com/org/app");
        check(
            "https://user:secret@gitlab.example.com/group/sub/app.git",
            "https://gitlab.example.com/group/sub/app",
        );
    }

    #[test]
    fn local_paths_are_kept() {
        check("/srv/git/app.git", "/srv/git/app.git");
        check("file:///srv/git/app.git", "file:///srv/git/app.git");
        check("../app", "../app");
    }
}
