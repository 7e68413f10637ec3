//! `deepvis merge`: assembles one manifest, the grid sheets and the site of an output folder from
//! the manifest parts its shards wrote (and whatever the folder already held).

use anyhow::{bail, Result};
use clap::Args;
use deepvis_output::{write_gallery, FileLock, Manifest, LOCK_FILE, MANIFEST_FILE};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// The output folder the shards wrote into.
    #[arg(long)]
    pub out: PathBuf,
    /// No summary output.
    #[arg(long, short)]
    pub quiet: bool,
}

pub fn run(a: MergeArgs) -> Result<()> {
    let parts = Manifest::load_parts(&a.out)?;
    let examples = crate::examples::merge_parts(&a.out)?;
    let has_manifest = a.out.join(MANIFEST_FILE).is_file();
    if parts.is_empty() && !has_manifest {
        let Some(model) = examples.first() else {
            bail!(
                "{} holds neither {MANIFEST_FILE} nor manifest or examples parts: nothing to merge (is --out the folder the shards wrote into?)",
                a.out.display()
            );
        };
        // Only dataset examples here: the site shows them alone.
        let m = Manifest::new(
            format!("deepvis {}", env!("CARGO_PKG_VERSION")),
            model,
            None,
            None,
        );
        write_gallery(&m, &a.out)?;
        deepvis_output::write_site(&m, &a.out)?;
    } else {
        let m = publish(&a.out)?;
        if !a.quiet {
            let filters: usize = m.runs.iter().map(|r| r.filters.len()).sum();
            eprintln!(
                "{} parts merged: {} runs, {filters} filters",
                parts.len(),
                m.runs.len()
            );
            eprintln!("manifest: {}", a.out.join(MANIFEST_FILE).display());
        }
    }
    if !a.quiet {
        if !examples.is_empty() {
            eprintln!("dataset examples of {} layers merged", examples.len());
        }
        eprintln!(
            "site:     {}",
            a.out.join(deepvis_output::GALLERY_FILE).display()
        );
    }
    Ok(())
}

/// Merges every shard's part into the folder's manifest (under its lock), redraws the grid
/// sheets of runs that parts added to or that have none, and writes the gallery and site.
/// Idempotent: parts stay, and merging them again changes nothing.
pub fn publish(out: &Path) -> Result<Manifest> {
    let parts = Manifest::load_parts(out)?;
    let manifest = {
        let _lock = FileLock::exclusive(&out.join(LOCK_FILE))?;
        let main = Manifest::load(&out.join(MANIFEST_FILE))?;
        let mut m = match (main, parts.first()) {
            (Some(m), _) => m,
            (None, Some((_, p))) => Manifest {
                runs: Vec::new(),
                ..p.clone()
            },
            (None, None) => bail!("{} holds no {MANIFEST_FILE}", out.display()),
        };
        let mut touched = HashSet::new();
        for (path, part) in &parts {
            if part.model != m.model || part.weights_sha256 != m.weights_sha256 {
                bail!(
                    "manifest part {} is of model '{}' or other weights than {}; move it out of that folder",
                    path.display(),
                    part.model,
                    out.join(MANIFEST_FILE).display()
                );
            }
            m.merge_from(part);
            for r in &part.runs {
                touched.insert((r.layer.clone(), r.settings.to_string(), r.seed));
            }
        }
        for run in &mut m.runs {
            let key = (run.layer.clone(), run.settings.to_string(), run.seed);
            let Some(first) = run.filters.first() else {
                continue;
            };
            if run.grid.is_some() && !touched.contains(&key) {
                continue;
            }
            let dir = Path::new(&first.png)
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default();
            let grid = dir.join("grid.png");
            crate::filters::write_grid_sheet(
                out,
                &grid,
                run.filters
                    .iter()
                    .map(|f| (f.filter, PathBuf::from(&f.png))),
            )?;
            run.grid = Some(grid.to_string_lossy().into_owned());
        }
        m.save(&out.join(MANIFEST_FILE))?;
        m
    };
    write_gallery(&manifest, out)?;
    deepvis_output::write_site(&manifest, out)?;
    Ok(manifest)
}
