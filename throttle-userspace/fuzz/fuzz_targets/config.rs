//! The configuration file, as `throttle daemon --config` reads it:
//! `FileConfig::parse`, then `Settings::merge` under no flags. No text makes
//! either panic. A file that is accepted:
//!
//! - serialises to TOML that parses and merges again to the same file and
//!   the same settings;
//! - starts: its policy goes through the daemon's start over an in-memory
//!   kernel (restored, compiled to a plan and written), its sets empty (their
//!   files are not read here), and its `[adaptive]` section makes a
//!   controller. A file the validation accepts and the start refuses would
//!   be a daemon that does not start on a file `throttle` said was good.

#![no_main]

use libfuzzer_sys::fuzz_target;
use throttle::{
    control::{fake::FakeKernel, Control},
    controller::Controller,
    settings::{DaemonArgs, FileConfig, Settings},
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(file) = FileConfig::parse(text) else {
        return;
    };
    let Ok(settings) = Settings::merge(file.clone(), &DaemonArgs::default()) else {
        return;
    };

    let written = toml::to_string(&file).unwrap_or_else(|e| panic!("{file:?} does not serialise: {e}"));
    let again =
        FileConfig::parse(&written).unwrap_or_else(|e| panic!("{written}\ndoes not parse again: {e}"));
    assert_eq!(again, file, "{written}\nparses as another file");
    let merged = Settings::merge(again, &DaemonArgs::default())
        .unwrap_or_else(|e| panic!("{written}\nis refused once written: {e}"));
    assert_eq!(merged, settings, "{written}\nmerges into other settings");

    let mut policy = settings.policy;
    for set in &mut policy.sets {
        set.file = None;
    }
    if let Err(err) = Control::new(Box::new(FakeKernel::default()), policy, None) {
        panic!("an accepted file does not start: {err}\n{text}");
    }
    if let Some(adaptive) = settings.adaptive {
        if let Err(err) = Controller::new(adaptive) {
            panic!("an accepted [adaptive] section makes no controller: {err}\n{text}");
        }
    }
});
