//! The run manifest: a JSON record of every filter visualization produced in
//! an output directory, used both to build the gallery and to resume an
//! interrupted run by skipping filters that are already done.

use std::fs;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::lock::FileLock;
use crate::{write_atomic, OutputError};

/// Conventional manifest file name inside an output directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Folder beside the manifest holding one manifest part per shard
/// (`shard-0003-of-0010.json`): a shard writes only its own part, so shards on
/// a shared filesystem never write the same file and need no lock; readers
/// (resuming, `deepvis merge`) see the manifest and every part merged.
pub const PARTS_DIR: &str = "manifest.parts";

/// The lock file guarding read-modify-write of the manifest (see `lock.rs`).
pub const LOCK_FILE: &str = "manifest.json.lock";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Producer, e.g. "deepvis 0.1.0".
    pub tool: String,
    pub model: String,
    /// Weights file path, or "bundled".
    #[serde(default)]
    pub weights: Option<String>,
    #[serde(default)]
    pub weights_sha256: Option<String>,
    #[serde(default)]
    pub runs: Vec<LayerRun>,
}

/// All filters visualized for one layer with one set of settings and seed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerRun {
    pub layer: String,
    /// Everything that affects the output images (steps, lr, size, ...);
    /// a run is only resumed when these match exactly.
    pub settings: Value,
    pub seed: u64,
    /// Grid sheet PNG, relative to the manifest's directory.
    #[serde(default)]
    pub grid: Option<String>,
    /// The input the images were made for, where it is not the zoo's RGB
    /// convention (ONNX models); absent in older manifests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<InputRecord>,
    /// Sorted by `filter`, at most one record per filter.
    #[serde(default)]
    pub filters: Vec<FilterRecord>,
}

/// The model input a run's images are for: its channels and the
/// normalization `(x − mean) / std` applied to values in [0, 1].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InputRecord {
    pub channels: usize,
    /// One value per channel, or one for all.
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FilterRecord {
    pub filter: usize,
    /// PNG path relative to the manifest's directory.
    pub png: String,
    /// The raw float32 values (`[C, H, W]` `.npy`) where the PNG cannot hold
    /// every channel, relative to the manifest's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub npy: Option<String>,
    /// Stored as `null` when not finite: JSON has no NaN/Inf, and a diverged
    /// optimization must not make the whole manifest unsavable.
    #[serde(with = "non_finite_as_null")]
    pub initial_activation: f32,
    #[serde(with = "non_finite_as_null")]
    pub final_activation: f32,
    /// Wall-clock seconds per image of the batches rendered together with this one (its own
    /// and any run side by side), so the sum over filters is the run's time.
    pub seconds: f64,
    /// The step at which the optimization diverged (objective or gradient NaN or infinite)
    /// and this image stopped; absent for images that did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diverged: Option<usize>,
    /// The image's robust score (`deepvis_render::score`); absent where none was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<ScoreRecord>,
    /// Optimization steps taken, where they adapted to the score (absent: the run's `steps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    /// The optimization as an animated GIF (`--frames`), relative to the manifest's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gif: Option<String>,
    /// With `--diversity N`: the N images rendered together and how alike they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diversity: Option<DiversityRecord>,
}

/// The images of one filter rendered with Lucid's diversity term, and their mutual similarity:
/// the cosine similarity of the Gram matrices of their activations at the layer (1: same
/// style of feature; the term pushes it down).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiversityRecord {
    /// PNG paths, the filter's own `png` first.
    pub images: Vec<String>,
    /// `similarity[i][j]` for images i and j.
    pub similarity: Vec<Vec<f32>>,
    /// Mean over pairs i < j.
    pub mean_similarity: f32,
}

/// `"score": {"robust": …, "final": …, "views": n}`: the objective's mean over `views` random
/// views, and its value on the image as it is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScoreRecord {
    #[serde(with = "non_finite_as_null")]
    pub robust: f32,
    #[serde(rename = "final", with = "non_finite_as_null")]
    pub final_value: f32,
    pub views: usize,
}

mod non_finite_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f32, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f32(*v)
        } else {
            s.serialize_none()
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
        Ok(Option::<f32>::deserialize(d)?.unwrap_or(f32::NAN))
    }
}

impl Manifest {
    /// An empty manifest.
    pub fn new(
        tool: impl Into<String>,
        model: impl Into<String>,
        weights: Option<String>,
        weights_sha256: Option<String>,
    ) -> Self {
        Manifest {
            tool: tool.into(),
            model: model.into(),
            weights,
            weights_sha256,
            runs: Vec::new(),
        }
    }

    /// Reads a manifest. A missing file is `Ok(None)` (a fresh output
    /// directory); an unreadable or malformed one is an error rather than
    /// silently starting over, which would orphan the existing results.
    pub fn load(path: &Path) -> Result<Option<Self>, OutputError> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(OutputError::io("read", path, e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| OutputError::CorruptManifest {
                path: path.to_path_buf(),
                source,
            })
    }

    /// Writes the manifest as pretty JSON, atomically.
    pub fn save(&self, path: &Path) -> Result<(), OutputError> {
        let mut bytes =
            serde_json::to_vec_pretty(self).map_err(|source| OutputError::Serialize {
                path: path.to_path_buf(),
                source,
            })?;
        bytes.push(b'\n');
        write_atomic(path, &bytes)
    }

    /// Adds every record of `other` (same model) to this manifest: filters
    /// this one lacks are inserted, and a filter both hold takes `other`'s
    /// record (the later write). Grid and input are taken where `other` has
    /// them. Merging is idempotent, so parts may be merged any number of times.
    pub fn merge_from(&mut self, other: &Manifest) {
        for run in &other.runs {
            let mine = self.run_mut(&run.layer, &run.settings, run.seed);
            if run.grid.is_some() {
                mine.grid.clone_from(&run.grid);
            }
            if run.input.is_some() {
                mine.input.clone_from(&run.input);
            }
            for rec in &run.filters {
                match mine.filters.binary_search_by_key(&rec.filter, |f| f.filter) {
                    Ok(i) => mine.filters[i] = rec.clone(),
                    Err(i) => mine.filters.insert(i, rec.clone()),
                }
            }
        }
    }

    /// Read-modify-write of the manifest at `path` under its lock: re-reads
    /// what other processes recorded meanwhile (or starts from `fresh`),
    /// applies `change`, writes it back atomically and returns it. Every
    /// writer goes through here, so concurrent runs into one folder never
    /// drop each other's records.
    pub fn update(
        path: &Path,
        fresh: &Manifest,
        change: impl FnOnce(&mut Manifest),
    ) -> Result<Manifest, OutputError> {
        let _lock = FileLock::exclusive(&path.with_file_name(LOCK_FILE))?;
        let mut m = Manifest::load(path)?.unwrap_or_else(|| fresh.clone());
        change(&mut m);
        m.save(path)?;
        Ok(m)
    }

    /// The manifest parts of shards in `dir` (the output folder), in name order.
    pub fn load_parts(dir: &Path) -> Result<Vec<(std::path::PathBuf, Manifest)>, OutputError> {
        let parts = dir.join(PARTS_DIR);
        let entries = match fs::read_dir(&parts) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(OutputError::io("read", &parts, e)),
        };
        let mut paths: Vec<std::path::PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().is_some_and(|x| x == "json")
                    && !p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        paths.sort();
        let mut out = Vec::with_capacity(paths.len());
        for p in paths {
            if let Some(m) = Manifest::load(&p)? {
                out.push((p, m));
            }
        }
        Ok(out)
    }

    /// What an output folder holds: its manifest with every shard's part
    /// merged in; `None` when there is neither.
    pub fn load_dir(dir: &Path) -> Result<Option<Manifest>, OutputError> {
        let mut main = Manifest::load(&dir.join(MANIFEST_FILE))?;
        for (path, part) in Manifest::load_parts(dir)? {
            match &mut main {
                Some(m) => {
                    if m.model != part.model || m.weights_sha256 != part.weights_sha256 {
                        return Err(OutputError::ForeignPart {
                            path,
                            model: part.model,
                        });
                    }
                    m.merge_from(&part)
                }
                None => main = Some(part),
            }
        }
        Ok(main)
    }

    /// The run with exactly this layer, settings and seed.
    pub fn run(&self, layer: &str, settings: &Value, seed: u64) -> Option<&LayerRun> {
        self.runs
            .iter()
            .find(|r| r.layer == layer && r.seed == seed && &r.settings == settings)
    }

    /// Like [`Self::run`], creating an empty run at the end if absent.
    pub fn run_mut(&mut self, layer: &str, settings: &Value, seed: u64) -> &mut LayerRun {
        let idx = match self
            .runs
            .iter()
            .position(|r| r.layer == layer && r.seed == seed && &r.settings == settings)
        {
            Some(i) => i,
            None => {
                self.runs.push(LayerRun {
                    layer: layer.to_string(),
                    settings: settings.clone(),
                    seed,
                    grid: None,
                    input: None,
                    filters: Vec::new(),
                });
                self.runs.len() - 1
            }
        };
        &mut self.runs[idx]
    }

    /// Records a finished filter: replaces the record for the same filter in
    /// the matching run, or inserts it in filter order (creating the run if
    /// needed).
    pub fn upsert_filter(&mut self, layer: &str, settings: &Value, seed: u64, rec: FilterRecord) {
        let filters = &mut self.run_mut(layer, settings, seed).filters;
        match filters.binary_search_by_key(&rec.filter, |f| f.filter) {
            Ok(i) => filters[i] = rec,
            Err(i) => filters.insert(i, rec),
        }
    }

    /// Records the input of a run (creating the run if needed).
    pub fn set_input(&mut self, layer: &str, settings: &Value, seed: u64, input: InputRecord) {
        self.run_mut(layer, settings, seed).input = Some(input);
    }

    /// Records the grid sheet path of a run (creating the run if needed).
    pub fn set_grid(&mut self, layer: &str, settings: &Value, seed: u64, grid: impl Into<String>) {
        self.run_mut(layer, settings, seed).grid = Some(grid.into());
    }

    /// The record of a filter already done with exactly these parameters.
    pub fn find(
        &self,
        layer: &str,
        settings: &Value,
        seed: u64,
        filter: usize,
    ) -> Option<&FilterRecord> {
        let filters = &self.run(layer, settings, seed)?.filters;
        filters
            .binary_search_by_key(&filter, |f| f.filter)
            .ok()
            .map(|i| &filters[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(filter: usize, png: &str, final_activation: f32) -> FilterRecord {
        FilterRecord {
            filter,
            png: png.to_string(),
            npy: None,
            initial_activation: 0.125,
            final_activation,
            seconds: 1.5,
            diverged: None,
            score: None,
            steps: None,
            gif: None,
            diversity: None,
        }
    }

    fn settings() -> Value {
        // Awkward floats on purpose: they must survive a JSON round trip
        // exactly or resuming would never match.
        json!({"steps": 200, "lr": 0.05f32 as f64, "decay": 0.1 + 0.2, "size": 224})
    }

    #[test]
    fn save_load_round_trip() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join(MANIFEST_FILE);
        assert_eq!(Manifest::load(&path).expect("load missing"), None);

        let mut m = Manifest::new("deepvis 0.1.0", "vgg16", Some("bundled".into()), None);
        m.upsert_filter("conv5_1", &settings(), 7, rec(3, "conv5_1/f3.png", 9.25));
        m.upsert_filter(
            "conv5_1",
            &settings(),
            7,
            rec(1, "conv5_1/f1.png", f32::NAN),
        );
        m.set_grid("conv5_1", &settings(), 7, "conv5_1/grid.png");
        m.upsert_filter(
            "conv3_1",
            &json!({"steps": 10}),
            u64::MAX,
            rec(0, "a.png", 1.0),
        );
        m.save(&path).expect("save");

        let loaded = Manifest::load(&path).expect("load").expect("present");
        assert_eq!(loaded.tool, m.tool);
        assert_eq!(loaded.runs.len(), 2);
        assert_eq!(loaded.runs[0].settings, settings());
        assert_eq!(loaded.runs[1].seed, u64::MAX);
        assert_eq!(loaded.runs[0].grid.as_deref(), Some("conv5_1/grid.png"));
        // NaN is stored as null and comes back as NaN.
        let f1 = loaded.find("conv5_1", &settings(), 7, 1).expect("f1");
        assert!(f1.final_activation.is_nan());
        let f3 = loaded.find("conv5_1", &settings(), 7, 3).expect("f3");
        assert_eq!(f3, &rec(3, "conv5_1/f3.png", 9.25));
        let text = fs::read_to_string(&path).expect("read");
        assert!(text.contains("\"final_activation\": null"), "{text}");
    }

    #[test]
    fn upsert_replaces_and_keeps_sorted() {
        let mut m = Manifest::new("deepvis", "m", None, None);
        let s = settings();
        for f in [5, 2, 9] {
            m.upsert_filter("l", &s, 1, rec(f, "old.png", 0.0));
        }
        m.upsert_filter("l", &s, 1, rec(2, "new.png", 4.0));
        assert_eq!(m.runs.len(), 1);
        let run = &m.runs[0];
        let order: Vec<usize> = run.filters.iter().map(|f| f.filter).collect();
        assert_eq!(order, vec![2, 5, 9]);
        assert_eq!(run.filters[0].png, "new.png");

        // Different seed, settings or layer make separate runs.
        m.upsert_filter("l", &s, 2, rec(2, "x.png", 0.0));
        m.upsert_filter("l", &json!({"steps": 1}), 1, rec(2, "x.png", 0.0));
        m.upsert_filter("other", &s, 1, rec(2, "x.png", 0.0));
        assert_eq!(m.runs.len(), 4);
        assert_eq!(m.runs[0].filters.len(), 3);
    }

    #[test]
    fn find_matches_all_keys() {
        let mut m = Manifest::new("deepvis", "m", None, None);
        m.upsert_filter("l", &settings(), 1, rec(4, "f4.png", 2.0));
        assert_eq!(
            m.find("l", &settings(), 1, 4).map(|r| r.png.as_str()),
            Some("f4.png")
        );
        assert!(m.find("l", &settings(), 1, 3).is_none());
        assert!(m.find("l", &settings(), 2, 4).is_none());
        assert!(m.find("x", &settings(), 1, 4).is_none());
        assert!(m.find("l", &json!({}), 1, 4).is_none());
    }

    #[test]
    fn merge_keeps_both_sides_and_is_idempotent() {
        let s = settings();
        let mut a = Manifest::new("deepvis", "m", None, None);
        a.upsert_filter("l", &s, 1, rec(0, "a0.png", 1.0));
        a.upsert_filter("l", &s, 1, rec(4, "a4.png", 1.0));
        let mut b = Manifest::new("deepvis", "m", None, None);
        b.upsert_filter("l", &s, 1, rec(2, "b2.png", 2.0));
        b.upsert_filter("l", &s, 1, rec(4, "b4.png", 2.0));
        b.set_grid("l", &s, 1, "g.png");
        b.upsert_filter("k", &s, 1, rec(7, "k7.png", 3.0));
        a.merge_from(&b);
        let once = a.clone();
        a.merge_from(&b);
        assert_eq!(a, once);
        let order: Vec<&str> = a.runs[0].filters.iter().map(|f| f.png.as_str()).collect();
        assert_eq!(order, ["a0.png", "b2.png", "b4.png"]);
        assert_eq!(a.runs[0].grid.as_deref(), Some("g.png"));
        assert_eq!(a.find("k", &s, 1, 7).map(|r| r.final_activation), Some(3.0));
    }

    #[test]
    fn threads_updating_one_manifest_lose_nothing() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join(MANIFEST_FILE);
        let fresh = Manifest::new("deepvis", "m", None, None);
        // Each update re-reads under the lock: without it most of these records would be lost
        // (every writer replaces the whole file).
        std::thread::scope(|sc| {
            for t in 0..8usize {
                let (path, fresh) = (&path, &fresh);
                sc.spawn(move || {
                    for k in 0..10 {
                        let f = t * 10 + k;
                        Manifest::update(path, fresh, |m| {
                            m.upsert_filter("l", &settings(), 0, rec(f, "x.png", 0.0))
                        })
                        .expect("update");
                    }
                });
            }
        });
        let m = Manifest::load(&path).expect("load").expect("present");
        let got: Vec<usize> = m.runs[0].filters.iter().map(|f| f.filter).collect();
        assert_eq!(got, (0..80).collect::<Vec<_>>());
    }

    #[test]
    fn parts_are_merged_on_read() {
        let tmp = tempfile::tempdir().expect("tempdir");
        assert_eq!(Manifest::load_dir(tmp.path()).expect("empty"), None);
        let s = settings();
        let mut p0 = Manifest::new("deepvis", "m", None, None);
        p0.upsert_filter("l", &s, 0, rec(0, "0.png", 0.0));
        let mut p1 = Manifest::new("deepvis", "m", None, None);
        p1.upsert_filter("l", &s, 0, rec(1, "1.png", 0.0));
        let parts = tmp.path().join(PARTS_DIR);
        p0.save(&parts.join("shard-0000-of-0002.json")).expect("p0");
        p1.save(&parts.join("shard-0001-of-0002.json")).expect("p1");
        let m = Manifest::load_dir(tmp.path()).expect("load").expect("some");
        assert_eq!(m.runs[0].filters.len(), 2);
        // A part of another model is refused rather than mixed in.
        let other = Manifest::new("deepvis", "other", None, None);
        other
            .save(&parts.join("shard-0002-of-0002.json"))
            .expect("p2");
        let err = Manifest::load_dir(tmp.path()).expect_err("foreign part");
        assert!(err.to_string().contains("other"), "{err}");
    }

    #[test]
    fn corrupt_manifest_is_an_error() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join(MANIFEST_FILE);
        for bad in [&b"{\"tool\": \"deepvis\", "[..], b"", b"[1, 2, 3]"] {
            fs::write(&path, bad).expect("write");
            let err = Manifest::load(&path).expect_err("corrupt must fail");
            assert!(matches!(err, OutputError::CorruptManifest { .. }), "{err}");
            assert!(err.to_string().contains(MANIFEST_FILE), "{err}");
        }
    }

    #[test]
    fn input_and_npy_are_recorded_and_omitted_when_absent() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join(MANIFEST_FILE);
        let mut m = Manifest::new("deepvis", "gray28", None, None);
        m.upsert_filter("l", &settings(), 0, rec(0, "f0.png", 1.0));
        m.save(&path).expect("save");
        let text = fs::read_to_string(&path).expect("read");
        assert!(!text.contains("input") && !text.contains("npy"), "{text}");
        let input = InputRecord {
            channels: 1,
            mean: vec![0.5],
            std: vec![0.25],
        };
        m.set_input("l", &settings(), 0, input.clone());
        let mut r = rec(1, "f1.png", 2.0);
        r.npy = Some("f1.npy".into());
        m.upsert_filter("l", &settings(), 0, r.clone());
        m.save(&path).expect("save");
        let loaded = Manifest::load(&path).expect("load").expect("present");
        assert_eq!(loaded.runs[0].input.as_ref(), Some(&input));
        assert_eq!(loaded.find("l", &settings(), 0, 1), Some(&r));
        let v: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(v["runs"][0]["input"]["mean"], json!([0.5]));
        assert_eq!(v["runs"][0]["input"]["channels"], 1);
    }

    #[test]
    fn optional_fields_may_be_absent() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join(MANIFEST_FILE);
        fs::write(&path, br#"{"tool": "deepvis 0.1.0", "model": "vgg16"}"#).expect("write");
        let m = Manifest::load(&path).expect("load").expect("present");
        assert!(m.runs.is_empty() && m.weights.is_none());
    }
}
