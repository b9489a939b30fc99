//! One CUDA device: context, stream, cuBLAS handle and the compiled-module cache.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream};
use cudarc::nvrtc::Ptx;

use super::kernels::{cache_key, compile_options, disk_cache_dir, KernelSource};
use crate::error::{Error, Result};

pub struct CudaDevice {
    ordinal: usize,
    context: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    arch: String,
    compute_capability: (i32, i32),
    modules: Mutex<HashMap<String, Arc<CudaModule>>>,
}

/// Which of the dynamically loaded CUDA libraries can be found.
#[derive(Debug, Clone, Copy)]
pub struct LibraryPresence {
    pub driver: bool,
    pub nvrtc: bool,
    pub cublas: bool,
}

pub fn library_presence() -> LibraryPresence {
    // SAFETY: these only try to dlopen the libraries by name; nothing is called.
    unsafe {
        LibraryPresence {
            driver: cudarc::driver::sys::is_culib_present(),
            nvrtc: cudarc::nvrtc::sys::is_culib_present(),
            cublas: cudarc::cublas::sys::is_culib_present(),
        }
    }
}

/// The oldest GPU generation the kernels are written for (warp-synchronous
/// shuffles without implicit warp convergence, FP32 atomics): Volta, sm_70.
const MIN_COMPUTE_MAJOR: i32 = 7;

fn driver_err(what: &str) -> impl FnOnce(cudarc::driver::DriverError) -> Error + '_ {
    move |e| Error::Cuda(format!("{what}: {e:?}"))
}

/// Makes the device's default memory pool (which serves the stream-ordered
/// allocations of every op's output) keep freed memory instead of returning it to
/// the driver at each synchronisation, so the buffers of one denoising step are
/// reused by the next without new device allocations.
fn keep_freed_memory(context: &CudaContext) -> Result<()> {
    use cudarc::driver::sys;
    if !context.has_async_alloc() {
        return Ok(());
    }
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    let mut threshold = u64::MAX;
    // SAFETY: `pool` receives the device's default pool; the attribute takes a
    // pointer to a u64 that outlives the call.
    unsafe {
        sys::cuDeviceGetDefaultMemPool(&mut pool, context.cu_device())
            .result()
            .map_err(driver_err("reading the default memory pool"))?;
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            &mut threshold as *mut u64 as *mut std::ffi::c_void,
        )
        .result()
        .map_err(driver_err("setting the memory pool's release threshold"))?;
    }
    Ok(())
}

impl CudaDevice {
    /// Opens GPU `ordinal`. A missing driver or library is an `Err`, not a panic.
    pub fn open(ordinal: usize) -> Result<Self> {
        let libs = library_presence();
        let missing: Vec<&str> = [
            (!libs.driver).then_some("libcuda (the NVIDIA driver)"),
            (!libs.nvrtc).then_some("libnvrtc (NVRTC)"),
            (!libs.cublas).then_some("libcublas (cuBLAS)"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !missing.is_empty() {
            return Err(Error::Cuda(format!(
                "cannot use the CUDA backend: {} not found; install them or add their folder to LD_LIBRARY_PATH",
                missing.join(", ")
            )));
        }
        let count = CudaContext::device_count().map_err(driver_err("counting devices"))?;
        if ordinal >= count.max(0) as usize {
            return Err(Error::invalid(
                "device",
                format!("CUDA device {ordinal} requested, but {count} device(s) present"),
            ));
        }
        let context = CudaContext::new(ordinal).map_err(driver_err("creating the context"))?;
        let (major, minor) = context
            .compute_capability()
            .map_err(driver_err("reading the compute capability"))?;
        if major < MIN_COMPUTE_MAJOR {
            return Err(Error::Cuda(format!(
                "GPU {ordinal} has compute capability {major}.{minor}; the kernels need {MIN_COMPUTE_MAJOR}.0 (Volta) or newer"
            )));
        }
        // SAFETY: the backend runs all its work on one stream, so the per-buffer
        // events cudarc would otherwise create (two per allocation) order nothing.
        unsafe { context.disable_event_tracking() };
        keep_freed_memory(&context)?;
        let stream = context.default_stream();
        let blas = CudaBlas::new(stream.clone())
            .map_err(|e| Error::Cuda(format!("creating the cuBLAS handle: {e:?}")))?;
        Ok(CudaDevice {
            ordinal,
            context,
            stream,
            blas,
            arch: format!("sm_{major}{minor}"),
            compute_capability: (major, minor),
            modules: Mutex::new(HashMap::new()),
        })
    }

    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    pub fn name(&self) -> Result<String> {
        self.context
            .name()
            .map_err(driver_err("reading the device name"))
    }

    /// (major, minor), e.g. (9, 0) for an H100/H200.
    pub fn compute_capability(&self) -> (i32, i32) {
        self.compute_capability
    }

    /// The NVRTC target, e.g. `sm_90`.
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// (free, total) device memory in bytes.
    pub fn memory(&self) -> Result<(usize, usize)> {
        self.context
            .mem_get_info()
            .map_err(driver_err("reading memory info"))
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub fn blas(&self) -> &CudaBlas {
        &self.blas
    }

    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(driver_err("synchronizing the stream"))
    }

    /// The compiled module of `kernel` specialised by `defines`, compiling it on
    /// first use (or loading its PTX from the disk cache).
    pub fn module(&self, kernel: &KernelSource, defines: &[String]) -> Result<Arc<CudaModule>> {
        let options = compile_options(&self.arch, defines);
        let key = cache_key(kernel, &options);
        let mut modules = self
            .modules
            .lock()
            .map_err(|_| Error::Cuda("kernel cache lock poisoned".into()))?;
        if let Some(module) = modules.get(&key) {
            return Ok(module.clone());
        }
        let ptx = load_or_compile(kernel, &options, &key)?;
        let module = self.context.load_module(ptx).map_err(|e| {
            Error::Cuda(format!(
                "loading module `{}` for {}: {e:?}",
                kernel.name, self.arch
            ))
        })?;
        modules.insert(key, module.clone());
        Ok(module)
    }

    pub fn function(
        &self,
        kernel: &KernelSource,
        defines: &[String],
        name: &str,
    ) -> Result<CudaFunction> {
        self.module(kernel, defines)?
            .load_function(name)
            .map_err(|e| Error::Cuda(format!("kernel `{name}` in `{}`: {e:?}", kernel.name)))
    }
}

/// Compiles `kernel` with NVRTC, returning the PTX text.
pub fn compile_ptx(kernel: &KernelSource, options: &[String]) -> Result<String> {
    let opts = cudarc::nvrtc::CompileOptions {
        options: options.to_vec(),
        name: Some(format!("{}.cu", kernel.name)),
        ..Default::default()
    };
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(kernel.compiled_text(), opts).map_err(|e| {
        Error::Cuda(format!(
            "NVRTC failed to compile `{}.cu`: {e:?}",
            kernel.name
        ))
    })?;
    Ok(ptx.to_src())
}

fn load_or_compile(kernel: &KernelSource, options: &[String], key: &str) -> Result<Ptx> {
    let cached = disk_cache_dir().map(|dir| dir.join(format!("{key}.ptx")));
    if let Some(path) = &cached {
        if let Ok(text) = std::fs::read_to_string(path) {
            return Ok(Ptx::from_src(text));
        }
    }
    let text = compile_ptx(kernel, options)?;
    if let Some(path) = &cached {
        // The disk cache only saves start-up time; failing to write it is not an error.
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let tmp = path.with_extension(format!("ptx.{}.tmp", std::process::id()));
        if std::fs::write(&tmp, &text).is_ok() {
            let _ = std::fs::rename(&tmp, path);
        }
    }
    Ok(Ptx::from_src(text))
}
