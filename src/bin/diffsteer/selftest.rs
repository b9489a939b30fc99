//! `diffsteer selftest --device cuda`.

use crate::args::SelftestArgs;
use crate::usage_error::CliError;

#[cfg(feature = "cuda")]
pub fn run(args: &SelftestArgs) -> Result<(), CliError> {
    let crate::args::DeviceArg::Cuda(ordinal) = args.device else {
        return Err(crate::usage_error::usage(
            "--device",
            "selftest checks a GPU against the CPU reference (accepted: cuda, cuda:N)",
        ));
    };
    let models: Vec<&std::path::Path> = args.models.iter().map(|p| p.as_path()).collect();
    let results = diffsteer::selftest::cuda(ordinal, &args.dtype, &models, |r| {
        let verdict = match (r.rel_l2, r.tolerance) {
            (Some(e), Some(t)) => format!(
                "rel_l2 {e:.2e} (tol {t:.1e}) {}",
                if r.passed() { "ok  " } else { "FAIL" }
            ),
            _ => String::new(),
        };
        println!("{:<36} {verdict:<32} {}", r.name, r.note);
    })?;
    let failed = results.iter().filter(|r| !r.passed()).count();
    println!("{} checks, {failed} failed", results.len());
    if failed > 0 {
        return Err(CliError::Runtime(diffsteer::Error::Cuda(format!(
            "{failed} check(s) failed"
        ))));
    }
    Ok(())
}

#[cfg(not(feature = "cuda"))]
pub fn run(_args: &SelftestArgs) -> Result<(), CliError> {
    Err(crate::usage_error::usage(
        "--device",
        "this binary was built without CUDA; rebuild with `cargo build --release --features cuda`",
    ))
}
