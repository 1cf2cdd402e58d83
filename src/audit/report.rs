//! What `tagpin audit` prints: a table sorted by namespace and owner with a summary line, or
//! JSON with stable field names; and its exit code. Pure.

use serde::Serialize;

use super::{Finding, Kind};

/// Counts of what was audited and found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub namespaces: usize,
    pub pods: usize,
    pub containers: usize,
    pub unpinned: usize,
    pub stale: usize,
    pub mixed: usize,
    pub moved: usize,
    pub mismatch: usize,
    pub latest: usize,
    pub unknown: usize,
}

impl Summary {
    pub fn count(&mut self, kind: Kind) {
        *match kind {
            Kind::Unpinned => &mut self.unpinned,
            Kind::Stale => &mut self.stale,
            Kind::Mixed => &mut self.mixed,
            Kind::Moved => &mut self.moved,
            Kind::Mismatch => &mut self.mismatch,
            Kind::Latest => &mut self.latest,
            Kind::Unknown => &mut self.unknown,
        } += 1;
    }

    pub fn of(&self, kind: Kind) -> usize {
        match kind {
            Kind::Unpinned => self.unpinned,
            Kind::Stale => self.stale,
            Kind::Mixed => self.mixed,
            Kind::Moved => self.moved,
            Kind::Mismatch => self.mismatch,
            Kind::Latest => self.latest,
            Kind::Unknown => self.unknown,
        }
    }
}

/// A registry that did not answer, named once however many rows needed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Unreachable {
    pub registry: String,
    pub error: String,
}

/// The requests the run made: pod list pages, namespace reads, distinct tags resolved.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Requests {
    pub pod_list_pages: usize,
    pub namespace_reads: usize,
    pub tags_resolved: usize,
}

/// The whole audit.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub findings: Vec<Finding>,
    pub summary: Summary,
    pub registries_unreachable: Vec<Unreachable>,
    pub warnings: Vec<String>,
    pub requests: Requests,
}

impl Report {
    /// 1 when a finding of a kind in `fail_on` is there, else 0.
    pub fn exit_code(&self, fail_on: &[Kind]) -> u8 {
        u8::from(self.findings.iter().any(|f| fail_on.contains(&f.kind)))
    }

    /// The summary line: what was audited and how many findings of each kind.
    pub fn summary_line(&self) -> String {
        let s = &self.summary;
        let counts = Kind::ALL
            .iter()
            .map(|k| format!("{} {}", s.of(*k), k.as_str()))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "{} pod{} ({} container{}) in {} namespace{}: {counts}",
            s.pods,
            plural(s.pods),
            s.containers,
            plural(s.containers),
            s.namespaces,
            plural(s.namespaces)
        )
    }

    /// The table: a header, one row per finding, then the summary line.
    pub fn table(&self) -> String {
        const HEADER: [&str; 6] = [
            "NAMESPACE",
            "OWNER",
            "POD",
            "CONTAINER",
            "FINDING",
            "DETAIL",
        ];
        let rows: Vec<[String; 6]> = self
            .findings
            .iter()
            .map(|f| {
                [
                    f.namespace.clone(),
                    f.owner.as_ref().map_or("-".into(), ToString::to_string),
                    f.pod.clone().unwrap_or_else(|| "-".into()),
                    f.container.clone(),
                    f.kind.as_str().to_string(),
                    f.detail.clone(),
                ]
            })
            .collect();
        let mut width = HEADER.map(str::len);
        for r in &rows {
            for (w, cell) in width.iter_mut().zip(r) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let mut line = |cells: &[&str]| {
            let last = cells.len() - 1;
            for (i, cell) in cells.iter().enumerate() {
                out.push_str(cell);
                if i < last {
                    let pad = width[i] - cell.chars().count() + 3;
                    out.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push('\n');
        };
        if !rows.is_empty() {
            line(&HEADER);
            for r in &rows {
                line(&r.each_ref().map(String::as_str));
            }
        }
        for u in &self.registries_unreachable {
            out.push_str(&format!(
                "registry {} did not answer ({}): the rows that needed it say unknown\n",
                u.registry, u.error
            ));
        }
        out.push_str(&self.summary_line());
        out.push('\n');
        out
    }

    /// JSON with the field names of [`Finding`], [`Summary`] and [`Requests`].
    pub fn json(&self) -> String {
        // Plain data of strings, numbers and options always serializes.
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
