//! The `deepvis` command line: a thin layer over the library crates.

/// `println!` that returns an error instead of panicking when stdout is closed (`| head`).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?
    }};
}

mod atlas;
mod bench;
mod examples;
mod filters;
mod inspect;
mod merge;
mod outcome;
mod quality;
mod render_cmd;
mod score_cmd;
mod settings;
mod shard;
mod source;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "deepvis",
    version,
    about = "See what each filter of a CNN has learned: optimize images that excite chosen filters.",
    long_about = "See what each filter of a CNN has learned: optimize images that excite chosen filters.\n\n\
        Without a subcommand, the arguments are those of `deepvis filters` with the original \
        method (--preset seed unless given), so the original tool's flags work verbatim:\n  deepvis --img_size 512 --layer_num 28 --filter_start 0 --filter_end 100 \
        --step_size 3 --model_name vgg16"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Render filters (channels) of a layer as images, a grid sheet, a gallery and a manifest.
    Filters(filters::FiltersArgs),
    /// Render every channel of a model's block outputs (or chosen layers) and build its atlas site.
    Atlas(atlas::AtlasArgs),
    /// Find the images of a folder that excite each channel of a layer most, with patches.
    Examples(examples::ExamplesArgs),
    /// Assemble the manifest, grid sheets and site of a folder that sharded runs wrote into.
    Merge(merge::MergeArgs),
    /// Render any objective: channels, neurons, classes, directions, sums, diversity.
    Render(render_cmd::RenderCmdArgs),
    /// DeepDream: amplify what a layer sees in a photo, at the photo's size.
    Dream(render_cmd::DreamArgs),
    /// List every addressable layer of a model: name, op, output shape.
    Layers(inspect::LayersArgs),
    /// Classify a photo and print the top-5 ImageNet classes (checks that weights loaded right).
    Predict(inspect::PredictArgs),
    /// Write a layer's activation (and a channel's input gradient) to a safetensors file.
    Probe(inspect::ProbeArgs),
    /// Convert a weight file (.pth zip or legacy, safetensors) to safetensors.
    Convert(inspect::ConvertArgs),
    /// Download a zoo model's weights into the cache (checksum-verified).
    Download(inspect::DownloadArgs),
    /// Robust score of images (any PNGs, Lucent's too) for channels of a layer or an objective.
    Score(score_cmd::ScoreArgs),
    /// Time one optimization step (forward to a layer + input gradient) per image.
    Bench(bench::BenchArgs),
    /// List the models of the zoo.
    Models,
}

/// `deepvis --flag …` means `deepvis filters --flag …`, as the original tool had no subcommands.
fn with_default_subcommand(mut args: Vec<String>) -> Vec<String> {
    let first = args.get(1).map(String::as_str);
    let is_flag = first.is_some_and(|a| a.starts_with('-'));
    let is_meta = matches!(first, Some("-h" | "--help" | "-V" | "--version"));
    if is_flag && !is_meta {
        args.insert(1, "filters".to_string());
        // The original tool's invocation gets the original tool's method unless told otherwise.
        if !args
            .iter()
            .any(|a| a == "--preset" || a.starts_with("--preset="))
        {
            args.extend(["--preset".to_string(), "seed".to_string()]);
        }
    }
    args
}

fn main() -> ExitCode {
    deepvis_engine::retain_freed_memory();
    let cli = match Cli::try_parse_from(with_default_subcommand(std::env::args().collect())) {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version: print as clap formats them.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line, like every other error: clap's first line names the problem.
            let text = e.to_string();
            let problem: Vec<&str> = text
                .lines()
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with("tip:"))
                .collect();
            eprintln!("{} (see `deepvis --help`)", problem.join(" "));
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Filters(a) => filters::run(a),
        Command::Merge(a) => merge::run(a),
        Command::Examples(a) => examples::run(a),
        Command::Atlas(a) => atlas::run(a),
        Command::Render(a) => render_cmd::render(a),
        Command::Dream(a) => render_cmd::dream(a),
        Command::Layers(a) => inspect::layers(a),
        Command::Predict(a) => inspect::predict(a),
        Command::Probe(a) => inspect::probe(a),
        Command::Convert(a) => inspect::convert(a),
        Command::Download(a) => inspect::download(a),
        Command::Bench(a) => bench::run(a),
        Command::Score(a) => score_cmd::run(a),
        Command::Models => inspect::models(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the chain of causes joined, so a user sees what failed and why; a cause
            // whose text a wrapper already printed (`#[error("{0}")]` over its source) once.
            let mut msg = String::new();
            // Causes are compared as they are shown: on one line (a decoder's message may end
            // in a newline that its wrapper's one-line text does not have).
            let one_line = |s: String| {
                s.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            for cause in e.chain().map(|c| one_line(c.to_string())) {
                if msg.contains(&cause) {
                    continue;
                }
                if !msg.is_empty() {
                    msg.push_str(": ");
                }
                msg.push_str(&cause);
            }
            eprintln!("error: {}", msg.replace('\n', " "));
            if e.downcast_ref::<outcome::Interrupted>().is_some() {
                ExitCode::from(outcome::EXIT_INTERRUPTED)
            } else if e.downcast_ref::<outcome::Diverged>().is_some() {
                ExitCode::from(outcome::EXIT_DIVERGED)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// A reader that stopped reading (`deepvis layers | head`) is not an error.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<std::io::Error>())
        .any(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}
