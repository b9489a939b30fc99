//! Every CUDA kernel compiles with NVRTC for sm_90 (H100/H200) and sm_80 (A100)
//! (no GPU needed, only libnvrtc) in every element type (f32, f16, bf16),
//! including both attention kernels at every head dimension they are specialised
//! for, and ptxas reports no spills. CI installs NVRTC and sets DIFFSTEER_REQUIRE_NVRTC=1,
//! so there a missing library fails the test instead of skipping it.
#![cfg(feature = "cuda")]

use diffsteer::backend::cuda::kernels::{
    causal_attention_defines, compile_with_report, elem_define, head_dim_define, KernelSource, ALL,
    ATTENTION, ATTENTION_HEAD_DIMS, ATTENTION_MMA, ATTENTION_MMA_HEAD_DIMS,
    CAUSAL_ATTENTION_HEAD_DIMS, TENSOR_CORE_ONLY,
};
use diffsteer::tensor::Precision;

#[test]
fn every_kernel_compiles_for_sm90_and_sm80_without_spills() {
    // SAFETY: only checks whether libnvrtc can be loaded.
    let present = unsafe { cudarc::nvrtc::sys::is_culib_present() };
    if !present {
        assert!(
            std::env::var_os("DIFFSTEER_REQUIRE_NVRTC").is_none(),
            "DIFFSTEER_REQUIRE_NVRTC is set but libnvrtc cannot be loaded (check LD_LIBRARY_PATH)"
        );
        eprintln!("libnvrtc not found: kernel compilation not checked on this machine");
        return;
    }
    let with_elem = |mut defines: Vec<String>, p: Precision| {
        defines.push(elem_define(p));
        defines
    };
    let mut builds: Vec<(&KernelSource, Vec<String>)> = Vec::new();
    for p in Precision::ALL {
        builds.extend(ALL.iter().map(|k| (k, with_elem(Vec::new(), p))));
        builds.extend(
            ATTENTION_HEAD_DIMS
                .iter()
                .map(|&d| (&ATTENTION, with_elem(head_dim_define(d), p))),
        );
        // The text encoder's causal attention build.
        builds.extend(
            CAUSAL_ATTENTION_HEAD_DIMS
                .iter()
                .map(|&d| (&ATTENTION, with_elem(causal_attention_defines(d), p))),
        );
        if p != Precision::F32 {
            builds.extend(
                TENSOR_CORE_ONLY
                    .iter()
                    .map(|k| (k, with_elem(Vec::new(), p))),
            );
            builds.extend(
                ATTENTION_MMA_HEAD_DIMS
                    .iter()
                    .map(|&d| (&ATTENTION_MMA, with_elem(head_dim_define(d), p))),
            );
        }
    }
    for (arch, (kernel, defines)) in ["sm_90", "sm_80"]
        .into_iter()
        .flat_map(|arch| builds.iter().map(move |b| (arch, b)))
    {
        let report =
            compile_with_report(kernel, arch, defines).unwrap_or_else(|e| panic!("{arch}: {e}"));
        eprintln!(
            "{}.cu {defines:?} for {arch}: {} B PTX, {} B CUBIN",
            kernel.name, report.ptx_bytes, report.cubin_bytes
        );
        for line in report.resource_lines() {
            eprintln!("  {line}");
        }
        assert!(
            report.cubin_bytes > 0,
            "{}.cu produced no CUBIN for {arch}",
            kernel.name
        );
        // ptxas must report on every kernel of the file: a missing report fails
        // rather than passing as "no spills".
        let what = format!("{}.cu {defines:?} for {arch}", kernel.name);
        let entries = report.entry_resources();
        let mut reported: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        let mut expected = kernel.entry_points();
        assert!(
            !expected.is_empty(),
            "{what}: no kernels found in the source"
        );
        reported.sort_unstable();
        expected.sort_unstable();
        assert_eq!(
            reported, expected,
            "{what}: ptxas reported on other kernels than the file defines; log:\n{}",
            report.log
        );
        for e in &entries {
            assert_eq!(e.arch, arch, "{what}: {e:?}");
            let registers = e.registers.unwrap_or_else(|| {
                panic!(
                    "{what}: no register count for {}; log:\n{}",
                    e.name, report.log
                )
            });
            assert!(
                (1..=255).contains(&registers),
                "{what}: {} uses {registers} registers",
                e.name
            );
            let (Some(stores), Some(loads)) = (e.spill_stores, e.spill_loads) else {
                panic!(
                    "{what}: no spill figures for {}; log:\n{}",
                    e.name, report.log
                );
            };
            assert!(
                stores == 0 && loads == 0,
                "{what}: {} spills registers ({stores} bytes stored, {loads} loaded)",
                e.name
            );
        }
    }
}

/// The report parser against a log in ptxas' format, and a log without the figures.
#[test]
fn the_ptxas_report_is_parsed_and_required() {
    let log = "ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'geglu' for 'sm_90'
ptxas info    : Function properties for geglu
    0 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 30 registers, used 0 barriers, 380 bytes cmem[0]
ptxas info    : Compiling entry function 'fill_rows' for 'sm_90'
ptxas info    : Used 12 registers, 372 bytes cmem[0]
";
    let report = diffsteer::backend::cuda::kernels::CompileReport {
        ptx_bytes: 1,
        cubin_bytes: 1,
        log: log.to_string(),
    };
    let entries = report.entry_resources();
    assert_eq!(entries.len(), 2);
    assert_eq!(
        (
            entries[0].name.as_str(),
            entries[0].arch.as_str(),
            entries[0].registers,
            entries[0].spill_stores,
            entries[0].spill_loads
        ),
        ("geglu", "sm_90", Some(30), Some(8), Some(4))
    );
    // No "Function properties" block: the spill figures are unknown, not zero.
    assert_eq!(entries[1].registers, Some(12));
    assert_eq!(
        (entries[1].spill_stores, entries[1].spill_loads),
        (None, None)
    );
    let empty = diffsteer::backend::cuda::kernels::CompileReport {
        log: String::new(),
        ..report
    };
    assert!(empty.entry_resources().is_empty());
}

#[test]
fn entry_points_are_read_from_the_sources() {
    use diffsteer::backend::cuda::kernels::{ATTENTION, NORM, POOL};
    assert_eq!(ATTENTION.entry_points(), ["attention_scalar"]);
    assert_eq!(ATTENTION_MMA.entry_points(), ["attention_mma"]);
    assert_eq!(
        NORM.entry_points(),
        ["group_norm_affine", "apply_affine", "layer_norm"]
    );
    assert_eq!(POOL.entry_points(), ["avg_pool", "avg_pool_backward"]);
    let all: usize = ALL
        .iter()
        .chain(TENSOR_CORE_ONLY)
        .map(|k| k.entry_points().len())
        .sum();
    // elementwise 16 (with the GELU family's four), conv 2, norm 3, attention 1, pool 2,
    // guided_step 1, conv_mma 1.
    assert_eq!(all, 26);
}
