#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = pysandbox_shared::codec::decode::<pysandbox_shared::Request>(data);
});
