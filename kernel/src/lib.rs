//! The OQL kernel: every operation is a pure function from UTF-8 string(s) to a UTF-8 string.
//!
//! The wasm ABI is built so that the host makes exactly one wasm call per operation:
//! the host writes its input into a buffer the kernel owns (`wb_reserve` is only called
//! when the buffer must grow), then calls the operation with the input length(s). The
//! result is a packed `(ptr << 32) | len` pointing into an output buffer that stays valid
//! until the next call. No imports: the module cannot touch disk, clock or network.

pub mod json;
pub mod headlines;
pub mod tangle;
pub mod validate;
pub mod upgrade;
pub mod render;
pub mod org;

/// One entry point per operation, shared by the wasm exports and the native build.
pub mod ops {
    pub fn parse_headlines(org: &str) -> String {
        crate::headlines::parse_headlines_json(org)
    }
    pub fn tangle_plan(org: &str) -> String {
        crate::tangle::tangle_plan_json(org)
    }
    pub fn validate(org: &str) -> String {
        crate::validate::validate_json(org)
    }
    /// Reserved by the seed contract: always an empty array.
    pub fn lint(_org: &str) -> String {
        String::from("[]")
    }
    pub fn check_upgrade(old: &str, new: &str) -> String {
        crate::upgrade::check_upgrade_json(old, new)
    }
    /// The element tree as JSON (see `org::tree`): offsets are bytes of the UTF-8 input.
    pub fn parse(org: &str) -> String {
        crate::org::tree::parse_json(org)
    }
    pub fn render(org: &str) -> String {
        crate::render::render_html(org, "")
    }
    pub fn render_with(org: &str, options_json: &str) -> String {
        crate::render::render_html(org, options_json)
    }
}

#[cfg(target_arch = "wasm32")]
mod abi {
    use super::ops;

    static mut INPUT: Vec<u8> = Vec::new();
    static mut OUTPUT: String = String::new();

    /// Make the input buffer hold at least `n` bytes and return its address.
    #[no_mangle]
    pub extern "C" fn wb_reserve(n: u32) -> u32 {
        unsafe {
            let n = n as usize;
            if INPUT.capacity() < n {
                INPUT = Vec::with_capacity(n.next_power_of_two());
            }
            INPUT.as_mut_ptr() as u32
        }
    }

    /// Current capacity of the input buffer (so the host can cache it).
    #[no_mangle]
    pub extern "C" fn wb_capacity() -> u32 {
        unsafe { INPUT.capacity() as u32 }
    }

    unsafe fn input(off: u32, len: u32) -> &'static str {
        let slice = core::slice::from_raw_parts(INPUT.as_ptr().add(off as usize), len as usize);
        match core::str::from_utf8(slice) {
            Ok(s) => s,
            Err(_) => core::arch::wasm32::unreachable(),
        }
    }

    unsafe fn finish(out: String) -> u64 {
        OUTPUT = out;
        ((OUTPUT.as_ptr() as u64) << 32) | (OUTPUT.len() as u64)
    }

    unsafe fn release() {
        OUTPUT = String::new();
        OOM = false;
    }

    /// Set when an allocation fails, so the host can tell a memory cap from other traps.
    static mut OOM: bool = false;

    struct GuardedAlloc;

    unsafe impl core::alloc::GlobalAlloc for GuardedAlloc {
        unsafe fn alloc(&self, layout: core::alloc::Layout) -> *mut u8 {
            let p = std::alloc::System.alloc(layout);
            if p.is_null() {
                OOM = true;
            }
            p
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: core::alloc::Layout) {
            std::alloc::System.dealloc(ptr, layout)
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: core::alloc::Layout, new_size: usize) -> *mut u8 {
            let p = std::alloc::System.realloc(ptr, layout, new_size);
            if p.is_null() {
                OOM = true;
            }
            p
        }
    }

    #[global_allocator]
    static ALLOC: GuardedAlloc = GuardedAlloc;

    /// 1 when the last operation ran out of memory (read by the host after a trap).
    #[no_mangle]
    pub extern "C" fn wb_oom() -> u32 {
        unsafe { OOM as u32 }
    }

    #[no_mangle]
    pub extern "C" fn parse_headlines(len: u32) -> u64 {
        unsafe { release(); finish(ops::parse_headlines(input(0, len))) }
    }
    #[no_mangle]
    pub extern "C" fn tangle_plan(len: u32) -> u64 {
        unsafe { release(); finish(ops::tangle_plan(input(0, len))) }
    }
    #[no_mangle]
    pub extern "C" fn validate(len: u32) -> u64 {
        unsafe { release(); finish(ops::validate(input(0, len))) }
    }
    #[no_mangle]
    pub extern "C" fn lint(len: u32) -> u64 {
        unsafe { release(); finish(ops::lint(input(0, len))) }
    }
    #[no_mangle]
    pub extern "C" fn check_upgrade(old_len: u32, new_len: u32) -> u64 {
        unsafe { release(); finish(ops::check_upgrade(input(0, old_len), input(old_len, new_len))) }
    }
    #[no_mangle]
    pub extern "C" fn parse(len: u32) -> u64 {
        unsafe { release(); finish(ops::parse(input(0, len))) }
    }
    #[no_mangle]
    pub extern "C" fn render(len: u32) -> u64 {
        unsafe { release(); finish(ops::render(input(0, len))) }
    }
    #[no_mangle]
    pub extern "C" fn render_with(org_len: u32, opts_len: u32) -> u64 {
        unsafe { release(); finish(ops::render_with(input(0, org_len), input(org_len, opts_len))) }
    }
}
