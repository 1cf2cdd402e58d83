//! A kubelet credential-provider plugin for tests: a bash script speaking the real
//! `credentialprovider.kubelet.k8s.io/v1` JSON, installed under the provider's name in a bin
//! dir. Every run appends the request it read on stdin to `runs.log`, so tests count runs.
//!
//! Arguments (the provider's `args`): `MODE CACHE_KEY_TYPE CACHE_DURATION RUNS_FILE`, MODE one of
//! `ok`, `slow` (never answers), `badjson`, `fail` (exit 3). The `auth` map comes from the
//! `TP_AUTH` environment variable (the provider's `env`).

use std::path::{Path, PathBuf};

const SCRIPT: &str = r#"#!/bin/bash
request=$(cat)
printf '%s\n' "$request" >> "$4"
case "$1" in
  slow) exec sleep 30 ;;
  badjson) printf '{"kind": "CredentialProviderResponse", '; exit 0 ;;
  fail) echo "provider failed on purpose" >&2; exit 3 ;;
esac
if [ -n "$3" ]; then duration=",\"cacheDuration\":\"$3\""; else duration=""; fi
printf '{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse","cacheKeyType":"%s"%s,"auth":%s}\n' "$2" "$duration" "$TP_AUTH"
"#;

pub struct Plugins {
    pub dir: tempfile::TempDir,
}

/// One provider entry of a `CredentialProviderConfig`.
pub struct Provider<'a> {
    pub name: &'a str,
    pub match_images: Vec<String>,
    pub mode: &'a str,
    pub cache_key_type: &'a str,
    /// `cacheDuration` in the answer ("" for none: the default applies).
    pub cache_duration: &'a str,
    pub default_cache_duration: &'a str,
    /// The answer's `auth` map, as JSON.
    pub auth: serde_json::Value,
}

impl Plugins {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn bin_dir(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    fn runs_file(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.runs.log"))
    }

    /// Writes the scripts and a YAML `CredentialProviderConfig`; returns the config's path.
    pub fn config(&self, providers: &[Provider]) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::create_dir_all(self.bin_dir()).unwrap();
        let mut yaml = String::from(
            "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders:\n",
        );
        for p in providers {
            let bin = self.bin_dir().join(p.name);
            std::fs::write(&bin, SCRIPT).unwrap();
            std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
            let _ = std::fs::remove_file(self.runs_file(p.name));
            yaml.push_str(&format!(
                "  - name: {}\n    apiVersion: credentialprovider.kubelet.k8s.io/v1\n    defaultCacheDuration: \"{}\"\n    matchImages:\n",
                p.name, p.default_cache_duration
            ));
            for m in &p.match_images {
                yaml.push_str(&format!("      - \"{m}\"\n"));
            }
            yaml.push_str(&format!(
                "    args: [\"{}\", \"{}\", \"{}\", \"{}\"]\n    env:\n      - name: TP_AUTH\n        value: '{}'\n",
                p.mode,
                p.cache_key_type,
                p.cache_duration,
                self.runs_file(p.name).display(),
                p.auth
            ));
        }
        let path = self.dir.path().join("credential-provider-config.yaml");
        std::fs::write(&path, yaml).unwrap();
        path
    }

    /// The requests provider `name` has read, one per run.
    pub fn requests(&self, name: &str) -> Vec<String> {
        std::fs::read_to_string(self.runs_file(name))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// An `auth` map giving `user`/`password` for each of `patterns`.
pub fn auth(patterns: &[&str], user: &str, password: &str) -> serde_json::Value {
    serde_json::Value::Object(
        patterns
            .iter()
            .map(|p| {
                (
                    p.to_string(),
                    serde_json::json!({"username": user, "password": password}),
                )
            })
            .collect(),
    )
}
