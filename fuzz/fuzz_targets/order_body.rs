//! cargo-fuzz target `order_body`: see `stampede_fuzz::order_body` (fuzz/src/lib.rs) for its invariants.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stampede_fuzz::alloc::CountingAlloc;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fuzz_target!(|data: &[u8]| stampede_fuzz::order_body(data));
