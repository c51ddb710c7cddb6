//! cargo-fuzz target `recovery`: see `stampede_fuzz::recovery` (fuzz/src/lib.rs) for its invariants.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stampede_fuzz::alloc::CountingAlloc;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fuzz_target!(|data: &[u8]| stampede_fuzz::recovery(data));
