//! Prints the tensors of a weights file: `cargo run -p deepvis-weights --example inspect -- FILE`.

use std::path::PathBuf;

fn main() {
    let Some(path) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: inspect WEIGHTS_FILE");
        std::process::exit(2);
    };
    let start = std::time::Instant::now();
    match deepvis_weights::load(&path) {
        Ok(dict) => {
            let params: usize = dict.iter().map(|(_, t)| t.data.len()).sum();
            println!(
                "{} tensors, {params} values, loaded in {:.2?}",
                dict.len(),
                start.elapsed()
            );
            for (name, t) in dict.iter() {
                let sum: f64 = t.data.iter().map(|&v| f64::from(v)).sum();
                println!("{name}\t{}\t{:?}\tsum={sum:.6e}", t.dtype, t.shape);
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
