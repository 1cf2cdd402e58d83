//! The name grammar of an image reference (the distribution project's `reference` grammar, as
//! oci-client's `Reference` applies it), for a name without tag or digest: whether it is one, and
//! which registry and repository it names. One pass over the bytes, where `Reference` runs a
//! backtracking regex that clears its visited set on every parse (the first admission of every
//! new image string paid for it, issue 25). `tests/reference_props.rs` holds the two to the same
//! answers on generated strings.

use std::borrow::Cow;

/// The repository path may be at most this long (with Docker Hub's `library/` added).
const MAX_REPOSITORY: usize = 255;

/// Why a name is not one; the texts are `Reference`'s, so messages read as they did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum NameError {
    #[error("invalid reference format")]
    Format,
    #[error("repository name must not be more than {MAX_REPOSITORY} characters")]
    TooLong,
}

/// A name split as a registry is asked: the host its HTTP API is reached at (`index.docker.io`
/// for Docker Hub) and the repository path (`library/nginx` for `nginx`).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Name<'a> {
    pub registry: &'a str,
    pub repository: Cow<'a, str>,
}

/// `name` (no tag, no digest) split into registry and repository, or why it is not a name.
pub(super) fn split(name: &str) -> Result<Name<'_>, NameError> {
    if !valid(name) {
        return Err(NameError::Format);
    }
    // As the distribution project normalizes: the first component names a registry only if it
    // has a `.` or a `:` or is `localhost` (and more follows); anything else is on Docker Hub.
    let (registry, rest) = match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => (first, rest),
        _ => ("docker.io", name),
    };
    let registry = match registry {
        "docker.io" | "index.docker.io" => "index.docker.io",
        other => other,
    };
    let repository = if registry == "index.docker.io" && !rest.contains('/') {
        Cow::Owned(format!("library/{rest}"))
    } else {
        Cow::Borrowed(rest)
    };
    if repository.len() > MAX_REPOSITORY {
        return Err(NameError::TooLong);
    }
    Ok(Name {
        registry,
        repository,
    })
}

/// `[domain "/"] path-component ("/" path-component)*`: every component after the first is a
/// path component; the first is one too, or (when more follows) a domain.
fn valid(name: &str) -> bool {
    let mut components = name.split('/');
    let Some(first) = components.next() else {
        return false;
    };
    let mut more = false;
    for c in components {
        if !path_component(c) {
            return false;
        }
        more = true;
    }
    path_component(first) || (more && domain(first))
}

/// `[a-z0-9]+ (separator [a-z0-9]+)*`, a separator being `.`, `_`, `__` or one or more `-`.
fn path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    let (Some(&first), Some(&last)) = (b.first(), b.last()) else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run, between two alphanumerics (the ends are alphanumeric).
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let ok = match &b[start..i] {
            b"." | b"_" | b"__" => true,
            run => run.iter().all(|&x| x == b'-'),
        };
        if !ok {
            return false;
        }
    }
    true
}

/// `domain-component ("." domain-component)* [":" [0-9]+]`.
fn domain(d: &str) -> bool {
    let (host, port) = match d.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    if let Some(p) = port {
        if p.is_empty() || !p.bytes().all(|x| x.is_ascii_digit()) {
            return false;
        }
    }
    host.split('.').all(domain_component)
}

/// `[a-zA-Z0-9]` or `[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]`.
fn domain_component(c: &str) -> bool {
    let b = c.as_bytes();
    match (b.first(), b.last()) {
        (Some(f), Some(l)) => {
            f.is_ascii_alphanumeric()
                && l.is_ascii_alphanumeric()
                && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(name: &str) -> (String, String) {
        let n = split(name).unwrap_or_else(|e| panic!("{name:?}: {e}"));
        (n.registry.to_string(), n.repository.into_owned())
    }

    fn pair(r: &str, p: &str) -> (String, String) {
        (r.to_string(), p.to_string())
    }

    #[test]
    fn names_split_as_the_distribution_project_normalizes_them() {
        assert_eq!(ok("nginx"), pair("index.docker.io", "library/nginx"));
        assert_eq!(ok("team/app"), pair("index.docker.io", "team/app"));
        assert_eq!(
            ok("docker.io/nginx"),
            pair("index.docker.io", "library/nginx")
        );
        assert_eq!(ok("index.docker.io/a/b"), pair("index.docker.io", "a/b"));
        assert_eq!(ok("localhost/app"), pair("localhost", "app"));
        assert_eq!(
            ok("localhost"),
            pair("index.docker.io", "library/localhost")
        );
        assert_eq!(ok("r.example:5000/a/b"), pair("r.example:5000", "a/b"));
        assert_eq!(ok("host:5000/app"), pair("host:5000", "app"));
        // Valid only as a path component, yet it has a `.`: a registry all the same.
        assert_eq!(ok("a_b.c/d"), pair("a_b.c", "d"));
        // A domain may have capitals; a path may not.
        assert_eq!(ok("Reg.Example/app"), pair("Reg.Example", "app"));
        assert_eq!(ok("Team/app"), pair("index.docker.io", "Team/app"));
        assert_eq!(ok("a.b__c---d/e-f"), pair("a.b__c---d", "e-f"));
    }

    #[test]
    fn what_the_grammar_refuses() {
        for bad in [
            "",
            "/",
            "a/",
            "/a",
            "a//b",
            "App",
            "team/App",
            "a..b",
            "a._b",
            "a___b",
            "-a",
            "a-",
            "a/b-",
            "_a",
            "host:/a",
            "host:50a/a",
            "ho_st:5000/a",
            "-host.x/a",
            "host-.x/a",
            "a:b",
            "a/b:c",
            "é",
            "a/é",
            "a.b/c/Dd",
        ] {
            assert_eq!(split(bad), Err(NameError::Format), "{bad:?}");
        }
        let long = format!("r.example/{}", "a".repeat(256));
        assert_eq!(split(&long), Err(NameError::TooLong));
        // Docker Hub's `library/` counts toward the length.
        assert_eq!(split(&"a".repeat(250)), Err(NameError::TooLong));
        assert!(split(&"a".repeat(247)).is_ok());
    }
}
