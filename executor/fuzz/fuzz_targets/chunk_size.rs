#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    pysandbox_executor::fuzzing::chunk_size(data);
});
