use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("selftest") {
        return selftest();
    }
    eprintln!("usage: diffsteer selftest --device cuda");
    ExitCode::from(2)
}

#[cfg(feature = "cuda")]
fn selftest() -> ExitCode {
    use diffsteer::backend::cuda::{selftest, CudaDevice};
    let device = match CudaDevice::open(0) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match selftest::run(&device, |r| {
        let verdict = match r.rel_l2 {
            Some(e) => format!("rel_l2 {e:.2e} (tol {:.0e}) {}", r.tolerance.unwrap_or(0.0), if r.passed() { "ok" } else { "FAIL" }),
            None => String::new(),
        };
        println!("{:<22} {verdict} {}", r.name, r.note);
    }) {
        Ok(results) if results.iter().all(|r| r.passed()) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(not(feature = "cuda"))]
fn selftest() -> ExitCode {
    eprintln!("error: this binary was built without the `cuda` feature");
    ExitCode::from(2)
}
