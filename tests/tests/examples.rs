#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Every Envoy configuration under `examples/envoy/` passes `envoy --mode validate`.

use suite_tests::envoy::Envoy;
use suite_tests::root;

#[test]
fn every_example_envoy_config_validates() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = root().join("examples/envoy");
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let yaml = std::fs::read_to_string(&path).unwrap();
            if let Err(out) = Envoy::validate(tmp.path(), &yaml) {
                panic!("{} does not validate:\n{out}", path.display());
            }
            checked.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    checked.sort();
    assert!(
        checked.contains(&"credential-injector.yaml".to_owned())
            && checked.contains(&"vm-mtls.yaml".to_owned()),
        "examples found: {checked:?}"
    );
}
