//! cargo-fuzz target `action_body`: see `stampede_fuzz::action_body` (fuzz/src/lib.rs) for its invariants.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stampede_fuzz::alloc::CountingAlloc;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fuzz_target!(|data: &[u8]| stampede_fuzz::action_body(data));
