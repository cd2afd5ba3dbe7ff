//! Rates as people write them (`"3/minute"`, `"50/s"`, `"1000"`, `"0.05"`):
//! no text makes the parser panic; a rate that parses displays as text that
//! parses back to the same rate, and its JSON and TOML forms (the state
//! file's, the API's, the configuration's) read back as it too. The same
//! text read as a JSON string goes through the deserializer the API and the
//! file use, which takes exactly what `FromStr` takes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use throttle::policy::Rate;

/// A rate as the value of a TOML key.
#[derive(serde::Serialize, serde::Deserialize)]
struct InToml {
    rate: Rate,
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = text.parse::<Rate>();
    let as_json_string = serde_json::from_value::<Rate>(serde_json::Value::String(text.to_owned()));
    assert_eq!(
        parsed.as_ref().ok(),
        as_json_string.as_ref().ok(),
        "{text:?}: FromStr and the deserializer disagree ({parsed:?}, {as_json_string:?})"
    );
    // The text as a JSON document (a number, say): never a panic.
    let _ = serde_json::from_str::<Rate>(text);

    let Ok(rate) = parsed else {
        return;
    };
    assert!(Rate::new(rate.count, rate.period).is_some(), "{text:?} gave {rate:?}, out of bounds");

    let shown = rate.to_string();
    assert_eq!(shown.parse::<Rate>(), Ok(rate), "{text:?} displays as {shown:?}");

    let json = serde_json::to_string(&rate).expect("a rate serialises to JSON");
    let from_json: Rate = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{json}: {e}"));
    assert_eq!(from_json, rate, "{text:?} as JSON {json}");

    let toml_text = toml::to_string(&InToml { rate }).expect("a rate serialises to TOML");
    let from_toml: InToml = toml::from_str(&toml_text).unwrap_or_else(|e| panic!("{toml_text}: {e}"));
    assert_eq!(from_toml.rate, rate, "{text:?} as TOML {toml_text:?}");

    // What the data path and the controller make of it: no panic, and a
    // rate within bounds.
    let interval = rate.interval_ticks();
    assert!(interval >= 1);
    let read_back = Rate::from_interval_ticks(interval);
    assert!(read_back.count >= 1, "{rate:?}: the interval reads back as {read_back:?}");
    for scale in [1.0, 0.999, 0.5, 0.1, 0.01, 0.001] {
        let scaled = rate.scaled(scale);
        assert!(scaled.count >= 1, "{rate:?} * {scale} = {scaled:?}");
    }
});
