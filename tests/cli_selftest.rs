//! `diffsteer selftest` and `--device cuda` on a machine without the CUDA driver
//! (CI): a one-line error naming the missing library and exit code 1, never a panic.
#![cfg(feature = "cuda")]

use std::process::Command;

fn driver_present() -> bool {
    // SAFETY: only checks whether libcuda can be loaded.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

#[test]
fn without_a_driver_selftest_and_cuda_generation_fail_cleanly() {
    if driver_present() {
        eprintln!("a CUDA driver is present: the no-driver path is not checked here");
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("never");
    let runs: [Vec<&str>; 3] = [
        vec!["selftest"],
        vec!["selftest", "--device", "cuda:1", "--dtype", "f16"],
        vec![
            "generate",
            "--device",
            "cuda",
            "--dtype",
            "bf16",
            "--count",
            "1",
            "--quiet",
            "--out",
            out.to_str().expect("utf-8 path"),
        ],
    ];
    for args in runs {
        let result = Command::new(env!("CARGO_BIN_EXE_diffsteer"))
            .args(&args)
            .output()
            .expect("runs");
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert_eq!(result.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(
            stderr.contains("libcuda (the NVIDIA driver)") && stderr.contains("not found"),
            "{args:?}: {stderr}"
        );
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
    }
    assert!(!out.exists(), "a failed GPU run must not create --out");
}
