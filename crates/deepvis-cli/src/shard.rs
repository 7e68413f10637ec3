//! Splitting a run's work over several processes: `--shard I/N`, a Slurm job array's
//! environment, or a Kubernetes Indexed Job's.
//!
//! The split is deterministic and independent of what is already done: work units (batches of
//! filters, in a fixed order over the whole run) go round-robin, unit k to shard k mod N. Each
//! unit is rendered exactly as a single-process run would render it (same filters together, same
//! seed), so the images are the same bytes whatever the shard layout.

use anyhow::{bail, Context, Result};
use clap::Args;

#[derive(Args, Clone, Debug, Default)]
pub struct ShardArgs {
    /// Render only shard I of N (0-based, I < N) of the work, writing only its own files and its
    /// own manifest part (manifest.parts/); `deepvis merge --out DIR` assembles the manifest,
    /// grids and site once every shard is done. Default: from a Slurm job array's
    /// SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT, or with --shard-count from a Kubernetes Indexed
    /// Job's JOB_COMPLETION_INDEX; else the whole run.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,
    /// Number of shards where the index comes from JOB_COMPLETION_INDEX (a Kubernetes Indexed
    /// Job's completions).
    #[arg(long, value_name = "N", conflicts_with = "shard")]
    pub shard_count: Option<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// Whether work unit `k` (in the run's fixed order) belongs to this shard.
    pub fn owns(&self, k: usize) -> bool {
        k % self.count == self.index
    }

    /// The file name of this shard's manifest part.
    pub fn part_name(&self) -> String {
        format!("shard-{:04}-of-{:04}.json", self.index, self.count)
    }

    /// The file name of the marker this shard leaves once its share is finished.
    pub fn done_name(&self) -> String {
        format!("shard-{:04}-of-{:04}.done", self.index, self.count)
    }

    fn new(index: usize, count: usize, from: &str) -> Result<Shard> {
        if count == 0 {
            bail!("{from}: the shard count must be at least 1");
        }
        if index >= count {
            bail!("{from}: shard index {index} is not below the shard count {count} (indices are 0-based)");
        }
        Ok(Shard { index, count })
    }
}

/// `I/N` as --shard takes it.
pub fn parse_shard(text: &str) -> Result<Shard> {
    let (i, n) = text
        .split_once('/')
        .with_context(|| format!("--shard '{text}' is not I/N; write e.g. --shard 0/4"))?;
    let num = |s: &str| -> Result<usize> {
        s.trim()
            .parse()
            .with_context(|| format!("--shard '{text}': '{s}' is not a whole number"))
    };
    Shard::new(num(i)?, num(n)?, "--shard")
}

impl ShardArgs {
    /// The shard of this process, or None for the whole run; `env` reads the environment (a
    /// parameter so tests need not set process-wide variables).
    pub fn resolve_with(&self, env: impl Fn(&str) -> Option<String>) -> Result<Option<Shard>> {
        if let Some(text) = &self.shard {
            return parse_shard(text).map(Some);
        }
        let num = |var: &str| -> Result<Option<usize>> {
            env(var)
                .map(|v| {
                    v.trim()
                        .parse::<usize>()
                        .with_context(|| format!("${var} is '{v}', not a whole number"))
                })
                .transpose()
        };
        if let Some(count) = self.shard_count {
            let Some(index) = num("JOB_COMPLETION_INDEX")? else {
                bail!("--shard-count needs JOB_COMPLETION_INDEX (set by a Kubernetes Indexed Job); elsewhere use --shard I/N");
            };
            return Shard::new(index, count, "JOB_COMPLETION_INDEX/--shard-count").map(Some);
        }
        if let (Some(id), Some(count)) =
            (num("SLURM_ARRAY_TASK_ID")?, num("SLURM_ARRAY_TASK_COUNT")?)
        {
            // Arrays may start at any index (--array=1-8): the shard is the offset from the first.
            let min = num("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let Some(index) = id.checked_sub(min) else {
                bail!("$SLURM_ARRAY_TASK_ID {id} is below $SLURM_ARRAY_TASK_MIN {min}");
            };
            let shard = Shard::new(index, count, "the Slurm job array")?;
            return Ok(Some(shard));
        }
        Ok(None)
    }

    pub fn resolve(&self) -> Result<Option<Shard>> {
        self.resolve_with(|v| std::env::var(v).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(shard: Option<&str>, count: Option<usize>) -> ShardArgs {
        ShardArgs {
            shard: shard.map(str::to_string),
            shard_count: count,
        }
    }

    #[test]
    fn flag_and_environments() {
        let none = |_: &str| None;
        assert_eq!(args(None, None).resolve_with(none).unwrap(), None);
        assert_eq!(
            args(Some("2/5"), None).resolve_with(none).unwrap(),
            Some(Shard { index: 2, count: 5 })
        );
        for bad in ["5/5", "1/0", "a/2", "3", "-1/2"] {
            assert!(args(Some(bad), None).resolve_with(none).is_err(), "{bad}");
        }
        let slurm = |v: &str| match v {
            "SLURM_ARRAY_TASK_ID" => Some("4".into()),
            "SLURM_ARRAY_TASK_COUNT" => Some("4".into()),
            "SLURM_ARRAY_TASK_MIN" => Some("1".into()),
            _ => None,
        };
        assert_eq!(
            args(None, None).resolve_with(slurm).unwrap(),
            Some(Shard { index: 3, count: 4 })
        );
        let k8s = |v: &str| (v == "JOB_COMPLETION_INDEX").then(|| "7".to_string());
        assert_eq!(
            args(None, Some(8)).resolve_with(k8s).unwrap(),
            Some(Shard { index: 7, count: 8 })
        );
        let err = args(None, Some(8))
            .resolve_with(none)
            .unwrap_err()
            .to_string();
        assert!(err.contains("JOB_COMPLETION_INDEX"), "{err}");
        assert!(args(None, Some(7)).resolve_with(k8s).is_err());
    }

    #[test]
    fn every_unit_has_exactly_one_shard() {
        for n in 1..6 {
            for k in 0..40 {
                let owners = (0..n)
                    .filter(|&i| Shard { index: i, count: n }.owns(k))
                    .count();
                assert_eq!(owners, 1);
            }
        }
    }
}
