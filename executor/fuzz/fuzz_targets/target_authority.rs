#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    pysandbox_executor::fuzzing::target_authority(text);
});
