#![no_main]

use libfuzzer_sys::fuzz_target;
use pysandbox_executor::proxy::target::Target;

fuzz_target!(|text: &str| {
    if let Ok(target) = Target::parse_authority(text, Some(80)) {
        // A parsed target prints as text that parses back to itself.
        let again = Target::parse_authority(&target.to_string(), None);
        assert_eq!(again.ok(), Some(target));
    }
});
