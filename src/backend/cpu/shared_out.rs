//! A raw output pointer that rayon tasks writing disjoint regions of one buffer can
//! share, for outputs whose per-task regions are not contiguous slices.

#[derive(Clone, Copy)]
pub struct SharedOut(*mut f32, usize);

// SAFETY: users guarantee that concurrent tasks write disjoint elements.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    pub fn new(buffer: &mut [f32]) -> Self {
        SharedOut(buffer.as_mut_ptr(), buffer.len())
    }

    // Methods (not field access) so closures capture the whole Send + Sync wrapper.
    pub fn ptr(&self) -> *mut f32 {
        self.0
    }

    pub fn len(&self) -> usize {
        self.1
    }
}
