//! Several processes on one output folder: concurrent runs keep every record, and sharded runs
//! (flag, Slurm or Kubernetes environment) give the same bytes as one process.

mod common;
use common::{deepvis, fails_clearly, ok, stderr};
use std::path::Path;
use std::process::{Command, Stdio};

const TINY: &[&str] = &[
    "--layer",
    "_blocks.2",
    "--size",
    "32",
    "--steps",
    "2",
    "--batch",
    "2",
    "-q",
];

fn spawn(args: &[&str], env: &[(&str, &str)]) -> std::process::Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_deepvis"));
    c.args(args)
        .env(
            "DEEPVIS_CACHE",
            std::env::temp_dir().join("deepvis-test-empty-cache"),
        )
        .env_remove("DEEPVIS_OFFLINE")
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("SLURM_ARRAY_TASK_COUNT")
        .env_remove("JOB_COMPLETION_INDEX")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().expect("the binary starts")
}

fn wait_all(children: Vec<std::process::Child>) {
    for c in children {
        let o = c.wait_with_output().expect("wait");
        assert!(o.status.success(), "failed: {}", stderr(&o));
    }
}

fn manifest(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("manifest.json")).expect("manifest");
    serde_json::from_str(&text).expect("json")
}

fn recorded(dir: &Path) -> Vec<u64> {
    let m = manifest(dir);
    let runs = m["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 1, "one run: {m}");
    runs[0]["filters"]
        .as_array()
        .expect("filters")
        .iter()
        .map(|f| f["filter"].as_u64().expect("filter"))
        .collect()
}

fn png(dir: &Path, f: usize) -> Vec<u8> {
    std::fs::read(dir.join(format!("efficientnet_lite0/_blocks.2/filter_{f:04}.png")))
        .unwrap_or_else(|e| panic!("filter {f} in {}: {e}", dir.display()))
}

#[test]
fn concurrent_runs_into_one_folder_keep_every_filter() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().to_str().expect("utf-8");
    // Six processes started together, each writing the manifest after every batch: without the
    // lock their read-modify-writes overwrite each other (the issue saw half the filters lost).
    let children: Vec<_> = (0..6)
        .map(|k| {
            let spec = format!("{}..{}", 2 * k, 2 * k + 2);
            let mut args = vec!["filters", "--filters", &spec, "--out", out];
            args.extend_from_slice(TINY);
            spawn(&args, &[])
        })
        .collect();
    wait_all(children);
    assert_eq!(recorded(tmp.path()), (0..12).collect::<Vec<u64>>());
    let gallery = std::fs::read_to_string(tmp.path().join("index.html")).expect("gallery");
    for f in 0..12 {
        assert!(
            gallery.contains(&format!("filter_{f:04}.png")),
            "gallery lacks {f}"
        );
    }
}

#[test]
fn any_shard_layout_gives_the_same_bytes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let single = tmp.path().join("single");
    let s = single.to_str().expect("utf-8");
    let mut args = vec!["filters", "--filters", "0..10", "--out", s];
    args.extend_from_slice(TINY);
    ok(deepvis(&args));

    // Three shards by flag, two by a Slurm array (ids 1..2), four by a Kubernetes Indexed Job.
    // Per layout, per shard: extra flags and environment.
    type Shards = Vec<(Vec<String>, Vec<(&'static str, String)>)>;
    let layouts: Vec<(&str, Shards)> = vec![
        (
            "flag3",
            (0..3)
                .map(|i| (vec!["--shard".into(), format!("{i}/3")], vec![]))
                .collect(),
        ),
        (
            "slurm2",
            (1..=2)
                .map(|id| {
                    (
                        vec![],
                        vec![
                            ("SLURM_ARRAY_TASK_ID", id.to_string()),
                            ("SLURM_ARRAY_TASK_COUNT", "2".to_string()),
                            ("SLURM_ARRAY_TASK_MIN", "1".to_string()),
                        ],
                    )
                })
                .collect(),
        ),
        (
            "k8s4",
            (0..4)
                .map(|i| {
                    (
                        vec!["--shard-count".into(), "4".into()],
                        vec![("JOB_COMPLETION_INDEX", i.to_string())],
                    )
                })
                .collect(),
        ),
    ];
    for (name, shards) in layouts {
        let dir = tmp.path().join(name);
        let d = dir.to_str().expect("utf-8").to_string();
        let run = |some: &[(Vec<String>, Vec<(&'static str, String)>)]| {
            let children: Vec<_> = some
                .iter()
                .map(|(extra, env)| {
                    let mut args: Vec<&str> = vec!["filters", "--filters", "0..10", "--out", &d];
                    args.extend_from_slice(TINY);
                    args.extend(extra.iter().map(String::as_str));
                    let env: Vec<(&str, &str)> =
                        env.iter().map(|(k, v)| (*k, v.as_str())).collect();
                    spawn(&args, &env)
                })
                .collect();
            wait_all(children);
        };
        // Every shard but the last, side by side: each writes only its own part, so there is
        // no shared manifest, gallery or grid yet.
        let (last, rest) = shards.split_last().expect("shards");
        run(rest);
        assert!(!dir.join("manifest.json").exists(), "{name}");
        assert!(!dir.join("index.html").exists(), "{name}");
        let parts = |ext: &str| {
            std::fs::read_dir(dir.join("manifest.parts"))
                .expect("parts")
                .filter(|e| {
                    e.as_ref()
                        .is_ok_and(|e| e.path().extension().is_some_and(|x| x == ext))
                })
                .count()
        };
        assert_eq!(parts("json"), rest.len(), "{name}");
        assert_eq!(parts("done"), rest.len(), "{name}");
        // The last shard to finish finds every shard done and assembles the rest.
        run(std::slice::from_ref(last));
        assert_eq!(parts("json"), shards.len(), "{name}");
        assert_eq!(recorded(&dir), (0..10).collect::<Vec<u64>>(), "{name}");
        for f in 0..10 {
            assert!(
                png(&single, f) == png(&dir, f),
                "{name}: filter {f} differs"
            );
        }
        assert!(dir.join("efficientnet_lite0/_blocks.2/grid.png").is_file());
        assert!(dir.join("efficientnet_lite0/_blocks.2/9.html").is_file());
        assert!(dir.join("index.html").is_file());
        // Merging again changes nothing.
        let before = manifest(&dir);
        ok(deepvis(&["merge", "--out", &d, "-q"]));
        assert_eq!(before, manifest(&dir), "{name}");
    }
}

#[test]
fn bad_shards_fail_clearly() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().to_str().expect("utf-8");
    fails_clearly(
        &[
            "filters",
            "--shard",
            "3/3",
            "--out",
            out,
            "--layer",
            "_blocks.2",
        ],
        "not below the shard count",
    );
    fails_clearly(
        &[
            "filters",
            "--shard",
            "x",
            "--out",
            out,
            "--layer",
            "_blocks.2",
        ],
        "is not I/N",
    );
    fails_clearly(
        &[
            "filters",
            "--shard-count",
            "4",
            "--out",
            out,
            "--layer",
            "_blocks.2",
        ],
        "JOB_COMPLETION_INDEX",
    );
    fails_clearly(&["merge", "--out", out], "nothing to merge");
}
